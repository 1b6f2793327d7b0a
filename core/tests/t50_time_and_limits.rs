//! The replicated clock, rebasing after a leader change, bounded expiry per entry, and
//! every limit refused with an error that names it.

mod common;

use bytes::Bytes;
use common::*;
use fencelock_core::{CampaignRequest, Command, Error, Event, Holding, Limit, Limits, Reply, StateMachine, Wait};

#[test]
fn clock_is_the_largest_stamp_and_never_goes_back() {
    let mut sm = StateMachine::default();
    sm.apply(1, 5_000, Command::Tick);
    sm.apply(2, 4_000, Command::Tick);
    assert_eq!(sm.clock_ms(), 5_000);
    sm.apply(3, 7_000, Command::Tick);
    assert_eq!(sm.clock_ms(), 7_000);
}

#[test]
#[should_panic(expected = "not after")]
fn log_index_must_increase() {
    let mut sm = StateMachine::default();
    sm.apply(5, 0, Command::Tick);
    sm.apply(5, 0, Command::Tick);
}

#[test]
fn rebase_restarts_remaining_time_from_the_new_leaders_clock() {
    // The old leader's monotonic clock reads 1_000_000.
    let mut d = Driver { now_ms: 1_000_000, ..Driver::default() };
    d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
    d.now_ms = 1_004_000; // 4 s in: 6 s left
    d.run(Command::Tick);
    // The new leader's monotonic clock reads 50; far behind the old one's.
    d.now_ms = 50;
    d.run(Command::Rebase);
    assert_eq!(d.sm.clock_ms(), 1_004_000, "rebasing never moves the clock back");
    // 5.999 s on the new leader's clock: still held.
    d.now_ms = 50 + 6_000;
    assert!(d.run(Command::Tick).events.is_empty());
    d.now_ms = 50 + 6_001;
    assert_eq!(d.run(Command::Tick).events, vec![Event::Expired { name: b("a"), of: Holding::Lock, fence: 1 }]);
}

#[test]
fn rebase_to_a_clock_far_ahead_expires_nothing_early() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
    // The new leader's clock is a day ahead: without the rebase every lease would end.
    d.now_ms = 86_400_000;
    let out = d.run(Command::Rebase);
    assert!(out.events.is_empty(), "{:?}", out.events);
    d.now_ms += 10_000;
    assert!(d.run(Command::Tick).events.is_empty());
    d.now_ms += 1;
    assert_eq!(d.run(Command::Tick).events.len(), 1);
}

#[test]
fn expirations_per_entry_are_bounded_and_the_rest_read_as_expired() {
    let limits = Limits { expirations_per_apply_max: 3, ..Limits::default() };
    let mut d = Driver::with(StateMachine::new(limits));
    for i in 0..10 {
        d.ok(Command::Lock(lock(&[&format!("l{i}")], "o", 100)));
    }
    let mut expired = d.advance(101);
    assert_eq!(expired.len(), 3, "one entry expires at most 3");
    // Not yet swept, but a read or acquire already treats them as expired.
    assert_eq!(d.read(Command::Fence { name: b("l9") }), Reply::Nil);
    let out = d.run(Command::Lock(lock(&["l9"], "other", 100)));
    grant(out.reply.unwrap());
    assert_eq!(out.events.len(), 4, "3 swept at the start of the entry, then l9 on access");
    expired.extend(out.events);
    assert_eq!(d.sm.next_deadline_ms(), Some(1_100));
    while d.sm.next_deadline_ms() == Some(1_100) {
        expired.extend(d.run(Command::Tick).events);
    }
    let mut names: Vec<Bytes> =
        expired.into_iter().map(|e| if let Event::Expired { name, .. } = e { name } else { panic!("{e:?}") }).collect();
    names.sort();
    let mut want: Vec<Bytes> = (0..10).map(|i| b(&format!("l{i}"))).collect();
    want.sort();
    assert_eq!(names, want, "each lease expired exactly once");
}

fn limit_of(e: Error) -> Limit {
    match e {
        Error::LimitExceeded { limit, .. } => limit,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn every_limit_is_refused_with_its_name() {
    let limits = Limits {
        key_bytes_max: 8,
        value_bytes_max: 8,
        metadata_bytes_max: 4,
        owner_bytes_max: 8,
        ttl_ms_max: 1_000,
        waiters_per_lock_max: 1,
        locks_per_session_max: 1,
        group_size_max: 2,
        permits_max: 5,
        queue_length_max: 2,
        barrier_parties_max: 2,
        sessions_max: 1,
        entries_max: 3,
        expirations_per_apply_max: 100,
    };
    let mut d = Driver::with(StateMachine::new(limits));
    assert_eq!(limit_of(d.err(Command::Lock(lock(&["too-long-name"], "o", 100)))), Limit::KeyBytes);
    assert_eq!(limit_of(d.err(Command::Set(set("k", "too-long-value")))), Limit::ValueBytes);
    let mut meta = lock(&["a"], "o", 100);
    meta.metadata = b("12345");
    assert_eq!(limit_of(d.err(Command::Lock(meta))), Limit::MetadataBytes);
    assert_eq!(limit_of(d.err(Command::Lock(lock(&["a"], "long-owner", 100)))), Limit::OwnerBytes);
    assert_eq!(limit_of(d.err(Command::Lock(lock(&["a"], "o", 1_001)))), Limit::TtlMs);
    assert_eq!(limit_of(d.err(Command::PExpire { key: b("k"), ttl_ms: 1_001 })), Limit::TtlMs);
    assert_eq!(limit_of(d.err(Command::Lock(lock(&["a", "b", "c"], "o", 100)))), Limit::GroupSize);
    assert_eq!(limit_of(d.err(Command::SemAcquire(sem("s", 6, 1, "o", 100)))), Limit::Permits);
    assert_eq!(
        limit_of(d.err(Command::Push { key: b("l"), values: vec![b("1"), b("2"), b("3")], left: true })),
        Limit::QueueLength
    );
    assert_eq!(
        limit_of(d.err(Command::QueuePush {
            name: b("q"),
            values: vec![b("1"), b("2"), b("3")],
            priority: 0,
            session: None
        })),
        Limit::QueueLength
    );
    assert_eq!(
        limit_of(d.err(Command::BarrierWait { name: b("b"), parties: 3, participant: b("p"), wait_ms: None })),
        Limit::BarrierParties
    );
    // Waiters per lock: one waiter fits, the second is refused.
    d.ok(Command::Lock(lock(&["a"], "o", 100)));
    d.ok(Command::Lock(queued(lock(&["a"], "w1", 100), None, 0)));
    assert_eq!(limit_of(d.err(Command::Lock(queued(lock(&["a"], "w2", 100), None, 0)))), Limit::WaitersPerLock);
    // Sessions, and resources per session.
    let s = int(d.ok(Command::SessionOpen { ttl_ms: 1_000 })) as u64;
    assert_eq!(limit_of(d.err(Command::SessionOpen { ttl_ms: 1_000 })), Limit::Sessions);
    let mut l1 = lock(&["x"], "o", 0);
    l1.session = Some(s);
    d.ok(Command::Lock(l1));
    let mut l2 = lock(&["y"], "o", 0);
    l2.session = Some(s);
    assert_eq!(limit_of(d.err(Command::Lock(l2))), Limit::LocksPerSession);
    // Entries: locks a and x plus one key fill the table of 3.
    d.ok(Command::Set(set("k1", "v")));
    assert_eq!(limit_of(d.err(Command::Set(set("k2", "v")))), Limit::Entries);
    assert_eq!(limit_of(d.err(Command::Lock(lock(&["z"], "o", 100)))), Limit::Entries);
    // Overwriting an existing key is not a new entry.
    d.ok(Command::Set(set("k1", "v2")));
    // Every other table's names count too: none can be created past the bound.
    let full = [
        Command::CounterAdd { name: b("c"), delta: 1 },
        Command::QueuePush { name: b("q"), values: vec![b("1")], priority: 0, session: None },
        Command::QueuePop { name: b("q"), wait: Wait::Queue { wait_ms: Some(100), priority: 0 } },
        Command::SemAcquire(sem("s", 2, 1, "o", 100)),
        Command::Campaign(CampaignRequest { value: Bytes::new(), ..campaign("e", "o", 100) }),
        Command::BarrierWait { name: b("b"), parties: 2, participant: b("p"), wait_ms: None },
    ];
    for command in full {
        assert_eq!(limit_of(d.err(command.clone())), Limit::Entries, "{command:?}");
    }
    // A counter back at zero is no entry (so adding 0 to a new one creates nothing).
    assert_eq!(d.ok(Command::CounterAdd { name: b("c"), delta: 0 }), Reply::Int(0));
    // The error text names the limit and its value.
    let text = d.err(Command::Set(set("k2", "v"))).to_string();
    assert_eq!(text, "entries limit exceeded (max 3)");
    // Wait bounds share the TTL limit.
    let mut long_wait = lock(&["a"], "w3", 100);
    long_wait.wait = Wait::Queue { wait_ms: Some(1_001), priority: 0 };
    assert_eq!(limit_of(d.err(Command::Lock(long_wait))), Limit::TtlMs);
    // A refused command changed nothing: the state still passes every invariant and
    // the refused names hold nothing.
    assert_eq!(d.read(Command::Fence { name: b("z") }), Reply::Nil);
    assert_eq!(d.read(Command::Get { key: Bytes::from_static(b"k2") }), Reply::Nil);
}

#[test]
fn rebase_method_equals_the_rebase_command() {
    let mut by_command = Driver::default();
    let mut by_method = Driver::default();
    for d in [&mut by_command, &mut by_method] {
        d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
        d.now_ms = 7;
    }
    by_command.run(Command::Rebase);
    by_method.sm.rebase(7);
    by_method.run(Command::Tick);
    assert_eq!(by_command.sm.snapshot(), by_method.sm.snapshot());
}

#[test]
fn read_at_counts_down_between_writes_but_never_before_the_log() {
    let mut d = Driver::default();
    d.ok(set_nx_px("k", "v", 1_000));
    assert_eq!(d.sm.read_at(&Command::PTtl { key: b("k") }, d.now_ms + 400), Ok(Reply::Int(600)));
    assert_eq!(d.sm.read_at(&Command::PTtl { key: b("k") }, 0), Ok(Reply::Int(1_000)), "clamped to the clock");
    // The state itself did not move.
    assert_eq!(d.read(Command::PTtl { key: b("k") }), Reply::Int(1_000));
}

/// A read past a deadline the log has not reached yet must not report the expiry: a
/// later read on a follower, or on the next leader (whose time starts where the log
/// left it), would find the key alive again. So the key stays until an entry's stamp
/// passes its deadline; only its TTL shown counts down, to 0.
#[test]
fn read_at_never_reports_an_expiry_the_log_does_not_hold() {
    let mut d = Driver::default();
    d.ok(set_nx_px("k", "v", 1_000));
    d.ok(Command::Lock(lock(&["L"], "t", 1_000)));
    let late = d.now_ms + 5_000;
    assert_eq!(d.sm.read_at(&Command::Get { key: b("k") }, late), Ok(Reply::Bulk(b("v"))));
    assert_eq!(d.sm.read_at(&Command::PTtl { key: b("k") }, late), Ok(Reply::Int(0)));
    let Ok(Reply::Int(fence)) = d.sm.read_at(&Command::Fence { name: b("L") }, late) else { panic!("held") };
    assert_eq!(d.sm.read(&Command::Fence { name: b("L") }), Ok(Reply::Int(fence)), "the same answer as a follower's");
    // Once an entry's stamp passes the deadline, every read agrees it is gone.
    d.now_ms += 1_001;
    d.run(Command::Tick);
    assert_eq!(d.sm.read_at(&Command::Get { key: b("k") }, d.now_ms), Ok(Reply::Nil));
    assert_eq!(d.read(Command::Get { key: b("k") }), Reply::Nil);
    assert_eq!(d.read(Command::Fence { name: b("L") }), Reply::Nil);
}

#[test]
fn a_session_that_expires_counts_every_thing_it_owns_against_the_entry_budget() {
    let limits = Limits { expirations_per_apply_max: 5, ..Limits::default() };
    let mut d = Driver::with(StateMachine::new(limits));
    // Three sessions of four locks each, all ending at the same instant.
    let mut sessions = Vec::new();
    for s in 0..3 {
        let id = int(d.ok(Command::SessionOpen { ttl_ms: 100 })) as u64;
        for l in 0..4 {
            let mut request = lock(&[&format!("s{s}-l{l}")], "o", 0);
            request.session = Some(id);
            d.ok(Command::Lock(request));
        }
        sessions.push(id);
    }
    // One session and its four locks fill the budget of 5: one entry ends one session,
    // not all three with their twelve locks.
    let events = d.advance(101);
    let ended = |events: &[Event]| events.iter().filter(|e| matches!(e, Event::SessionEnded { .. })).count();
    assert_eq!(ended(&events), 1, "{events:?}");
    let mut total = ended(&events);
    for _ in 0..5 {
        total += ended(&d.run(Command::Tick).events);
    }
    assert_eq!(total, 3, "the others end in the entries after");
    for s in 0..3 {
        assert_eq!(d.read(Command::Fence { name: b(&format!("s{s}-l0")) }), Reply::Nil);
    }
}

/// When more expirations are due than one entry may apply, a session past its deadline
/// can outlive that entry; a renewal of a lock, permit or leadership it owns must not
/// extend a lease whose session is already gone.
#[test]
fn what_a_session_past_its_deadline_owns_cannot_be_renewed_while_expirations_back_up() {
    let limits = Limits { expirations_per_apply_max: 1, ..Limits::default() };
    let mut d = Driver::with(StateMachine::new(limits));
    let ids: Vec<u64> = (0..7).map(|_| int(d.ok(Command::SessionOpen { ttl_ms: 100 })) as u64).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "they end in this order");
    let mut request = lock(&["L"], "t", 60_000);
    request.session = Some(ids[4]);
    d.ok(Command::Lock(request));
    let mut permit = sem("S", 2, 1, "p", 60_000);
    permit.session = Some(ids[5]);
    d.ok(Command::SemAcquire(permit));
    let mut candidacy = campaign("E", "c", 60_000);
    candidacy.session = Some(ids[6]);
    d.ok(Command::Campaign(candidacy));
    // A budget of 1 per entry: the Tick ends session 0, and each renewal's own entry one
    // more of the first four; the owners are past their deadlines and not yet ended.
    let events = d.advance(101);
    assert!(events.contains(&Event::SessionEnded { session: ids[0], expired: true }), "{events:?}");
    assert_eq!(d.err(renew(&["L"], "t", 60_000)), Error::NotHolder { name: "L".into() });
    let renew_permit = Command::SemRenew { name: b("S"), token: b("p-token"), ttl_ms: 60_000 };
    assert_eq!(d.err(renew_permit), Error::NotHolder { name: "S".into() });
    let renew_leader = Command::ElectionRenew { name: b("E"), token: b("c-token"), ttl_ms: 60_000 };
    assert_eq!(d.err(renew_leader), Error::NotHolder { name: "E".into() });
    assert_eq!(d.read(Command::Fence { name: b("L") }), Reply::Nil, "ended with its session");
}
