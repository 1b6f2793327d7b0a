//! Semaphores, counters, queues, barriers and leader election.

mod common;

use common::*;
use fencelock_core::{
    Command, Error, Event, Holding, Limits, PutBackTo, Reply, SnapshotError, StateMachine, Wait, WaitEnd,
};

#[test]
fn semaphore_permits_are_fenced_bounded_and_fifo() {
    let mut d = Driver::default();
    let a = grant(d.ok(Command::SemAcquire(sem("pool", 3, 2, "a", 10_000))));
    assert_eq!(a.holds, 2);
    assert_eq!(d.err(Command::SemAcquire(sem("pool", 3, 2, "b", 10_000))), Error::Locked);
    let mut big = sem("pool", 3, 2, "b", 10_000);
    big.wait = Wait::Queue { wait_ms: None, priority: 0 };
    let wb = waiter(d.ok(Command::SemAcquire(big)));
    // One permit is free, but the head of the queue (b, 2 permits) is not overtaken.
    assert_eq!(d.err(Command::SemAcquire(sem("pool", 3, 1, "c", 10_000))), Error::Locked);
    assert!(matches!(d.err(Command::SemAcquire(sem("pool", 4, 1, "c", 10_000))), Error::Invalid(_)));
    let out = d.run(Command::SemRelease { name: b("pool"), token: b("a-token") });
    assert_eq!(out.reply, Ok(Reply::Int(2)));
    let Some(Event::Granted { waiter, grant: g }) =
        out.events.iter().find(|e| matches!(e, Event::Granted { .. })).cloned()
    else {
        panic!("{:?}", out.events)
    };
    assert_eq!(waiter, wb);
    assert!(g.fence > a.fence);
    assert_eq!(
        d.read(Command::SemInfo { name: b("pool") }),
        Reply::Array(vec![Reply::Int(3), Reply::Int(2), Reply::Int(0)])
    );
    assert_eq!(
        d.err(Command::SemRelease { name: b("pool"), token: b("a-token") }),
        Error::NotHolder { name: "pool".into() }
    );
    let renewed = grant(d.ok(Command::SemRenew { name: b("pool"), token: b("b-token"), ttl_ms: 20_000 }));
    assert_eq!(renewed.deadline_ms, d.now_ms + 20_000);
    assert_eq!(d.advance(20_001), vec![Event::Expired { name: b("pool"), of: Holding::Permit, fence: g.fence }]);
    assert!(matches!(d.err(Command::SemAcquire(sem("pool", 3, 0, "c", 10_000))), Error::Invalid(_)));
}

#[test]
fn counters_add_and_overflow() {
    let mut d = Driver::default();
    assert_eq!(d.ok(Command::CounterAdd { name: b("c"), delta: 5 }), Reply::Int(5));
    assert_eq!(d.ok(Command::CounterAdd { name: b("c"), delta: -2 }), Reply::Int(3));
    assert_eq!(d.read(Command::CounterGet { name: b("c") }), Reply::Int(3));
    assert_eq!(d.read(Command::CounterGet { name: b("none") }), Reply::Int(0));
    d.ok(Command::CounterAdd { name: b("big"), delta: i64::MAX });
    assert_eq!(d.err(Command::CounterAdd { name: b("big"), delta: 1 }), Error::Overflow);
}

#[test]
fn queues_are_priority_then_fifo_with_blocking_pop() {
    let mut d = Driver::default();
    d.ok(Command::QueuePush { name: b("q"), values: vec![b("low1"), b("low2")], priority: 0, session: None });
    assert_eq!(
        d.ok(Command::QueuePush { name: b("q"), values: vec![b("high")], priority: 9, session: None }),
        Reply::Int(3)
    );
    let pop = |d: &mut Driver| d.ok(Command::QueuePop { name: b("q"), wait: Wait::Try });
    assert_eq!(pop(&mut d), Reply::Bulk(b("high")));
    assert_eq!(pop(&mut d), Reply::Bulk(b("low1")));
    assert_eq!(pop(&mut d), Reply::Bulk(b("low2")));
    assert_eq!(pop(&mut d), Reply::Nil);
    let w = waiter(d.ok(Command::QueuePop { name: b("q"), wait: Wait::Queue { wait_ms: Some(1_000), priority: 0 } }));
    let out = d.run(Command::QueuePush { name: b("q"), values: vec![b("job")], priority: 0, session: None });
    assert!(out.events.contains(&popped(w, "q", "job")));
    assert_eq!(d.read(Command::QueueLen { name: b("q") }), Reply::Int(0));
    // The event carries the item's priority and session: a server whose client went
    // away pushes it back with them.
    let s = int(d.ok(Command::SessionOpen { ttl_ms: 10_000 })) as u64;
    let w = waiter(d.ok(Command::QueuePop { name: b("q"), wait: Wait::Queue { wait_ms: Some(1_000), priority: 0 } }));
    let out = d.run(Command::QueuePush { name: b("q"), values: vec![b("vip")], priority: -7, session: Some(s) });
    let popped = Event::Popped { waiter: w, key: b("q"), value: b("vip"), priority: -7, session: s, seq: 0 };
    assert!(out.events.contains(&popped), "{:?}", out.events);
    let w2 = waiter(d.ok(Command::QueuePop { name: b("q"), wait: Wait::Queue { wait_ms: Some(1_000), priority: 0 } }));
    assert_eq!(d.advance(1_001), vec![Event::WaitEnded { waiter: w2, reason: WaitEnd::TimedOut }]);
}

#[test]
fn counting_barrier_releases_everyone_exactly_once_and_resets() {
    let mut d = Driver::default();
    let arrive = |p: &str| Command::BarrierWait { name: b("start"), parties: 3, participant: b(p), wait_ms: None };
    let w1 = waiter(d.ok(arrive("p1")));
    assert!(matches!(d.err(arrive("p1")), Error::Invalid(_)), "one arrival per participant per round");
    let w2 = waiter(d.ok(arrive("p2")));
    let out = d.run(arrive("p3"));
    assert_eq!(out.reply, Ok(Reply::Ok));
    assert_eq!(out.events, vec![Event::BarrierPassed { waiter: w1 }, Event::BarrierPassed { waiter: w2 }]);
    // The next round starts empty.
    assert!(matches!(d.ok(arrive("p1")), Reply::Queued(_)));
    let wrong = Command::BarrierWait { name: b("start"), parties: 4, participant: b("p9"), wait_ms: None };
    assert!(matches!(d.err(wrong), Error::Invalid(_)));
}

#[test]
fn barrier_waiter_that_times_out_is_withdrawn() {
    let mut d = Driver::default();
    let w1 = waiter(d.ok(Command::BarrierWait { name: b("b"), parties: 2, participant: b("p1"), wait_ms: Some(100) }));
    assert_eq!(d.advance(101), vec![Event::WaitEnded { waiter: w1, reason: WaitEnd::TimedOut }]);
    // p1 gave up, so p2 alone does not complete the barrier.
    assert!(matches!(
        d.ok(Command::BarrierWait { name: b("b"), parties: 2, participant: b("p2"), wait_ms: None }),
        Reply::Queued(_)
    ));
}

#[test]
fn double_barrier_enter_then_leave() {
    let mut d = Driver::default();
    let enter = |p: &str| Command::BarrierEnter { name: b("job"), parties: 2, participant: b(p), wait_ms: None };
    let leave = |p: &str| Command::BarrierLeave { name: b("job"), participant: b(p), wait_ms: None };
    let w1 = waiter(d.ok(enter("p1")));
    let out = d.run(enter("p2"));
    assert_eq!(out.reply, Ok(Reply::Ok));
    assert_eq!(out.events, vec![Event::BarrierPassed { waiter: w1 }]);
    assert!(matches!(d.err(enter("p3")), Error::Invalid(_)), "no entering while the barrier is being left");
    let l1 = waiter(d.ok(leave("p1")));
    assert_eq!(d.err(leave("p1")), Error::NotHolder { name: "job".into() });
    let out = d.run(leave("p2"));
    assert_eq!(out.reply, Ok(Reply::Ok));
    assert_eq!(out.events, vec![Event::BarrierPassed { waiter: l1 }]);
    // Gone: a new round can start.
    assert!(matches!(d.ok(enter("p1")), Reply::Queued(_)));
}

fn session(d: &mut Driver, ttl_ms: u64) -> u64 {
    int(d.ok(Command::SessionOpen { ttl_ms })) as u64
}

fn owned_count(d: &Driver, session: u64) -> Reply {
    let Reply::Array(info) = d.read(Command::SessionInfo { session }) else { panic!("session info") };
    info[2].clone()
}

#[test]
fn a_double_barrier_member_owned_by_a_session_leaves_when_it_ends() {
    let mut d = Driver::default();
    let enter = |p: &str, session: Option<u64>| match session {
        Some(session) => {
            Command::BarrierEnterSession { name: b("job"), parties: 3, participant: b(p), wait_ms: None, session }
        }
        None => Command::BarrierEnter { name: b("job"), parties: 3, participant: b(p), wait_ms: None },
    };
    let leave = |p: &str| Command::BarrierLeave { name: b("job"), participant: b(p), wait_ms: None };
    assert_eq!(d.err(enter("a", Some(999))), Error::NoSuchSession(999));
    let s = session(&mut d, 5_000);
    let wa = waiter(d.ok(enter("a", Some(s))));
    assert_eq!(owned_count(&d, s), Reply::Int(1));
    let wb = waiter(d.ok(enter("b", None)));
    let out = d.run(enter("c", None));
    assert_eq!(out.reply, Ok(Reply::Ok));
    assert_eq!(out.events, vec![Event::BarrierPassed { waiter: wa }, Event::BarrierPassed { waiter: wb }]);
    // a crashes inside: without the session, b and c would wait for it forever. Its
    // session expires and it leaves.
    let lb = waiter(d.ok(leave("b")));
    let events = d.advance(5_001);
    assert!(events.contains(&Event::SessionEnded { session: s, expired: true }), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::BarrierPassed { .. })), "c is still inside: {events:?}");
    let out = d.run(leave("c"));
    assert_eq!(out.reply, Ok(Reply::Ok));
    assert_eq!(out.events, vec![Event::BarrierPassed { waiter: lb }]);
    assert_eq!(d.err(leave("a")), Error::NotHolder { name: "job".into() });

    // The last one inside is the one whose session ends: the leavers go on.
    let s = session(&mut d, 5_000);
    let wa = waiter(d.ok(enter("a", Some(s))));
    let wb = waiter(d.ok(enter("b", None)));
    d.ok(enter("c", None));
    let lb = waiter(d.ok(leave("b")));
    let lc = waiter(d.ok(leave("c")));
    let out = d.run(Command::SessionClose { session: s });
    assert!(out.events.contains(&Event::BarrierPassed { waiter: lb }), "{:?}", out.events);
    assert!(out.events.contains(&Event::BarrierPassed { waiter: lc }), "{:?}", out.events);
    let _ = (wa, wb);

    // A participant blocked on entry whose session ends gives up its place.
    let s = session(&mut d, 5_000);
    let wa = waiter(d.ok(enter("a", Some(s))));
    let out = d.run(Command::SessionClose { session: s });
    assert!(out.events.contains(&Event::WaitEnded { waiter: wa, reason: WaitEnd::SessionEnded }), "{:?}", out.events);
    let wb = waiter(d.ok(enter("b", None)));
    let wc = waiter(d.ok(enter("c", None)));
    assert!(matches!(d.ok(enter("a", None)), Reply::Ok), "a's earlier entry no longer counts");
    let _ = (wb, wc);

    // Leaving as usual ends the session's hold on the member; ending the session
    // afterwards changes nothing.
    for p in ["a", "b", "c"] {
        d.ok(leave(p));
    }
    let s = session(&mut d, 5_000);
    waiter(d.ok(enter("a", Some(s))));
    assert_eq!(d.ok(leave("a")), Reply::Ok);
    assert_eq!(owned_count(&d, s), Reply::Int(0));
    let out = d.run(Command::SessionClose { session: s });
    assert_eq!(out.events, vec![Event::SessionEnded { session: s, expired: false }]);
    assert_eq!(d.sm.snapshot(), StateMachine::restore(Limits::default(), &d.sm.snapshot()).unwrap().snapshot());
}

#[test]
fn owned_barrier_members_survive_a_snapshot_and_only_then_change_its_bytes() {
    let mut d = Driver::default();
    let s = session(&mut d, 60_000);
    d.ok(Command::BarrierEnter { name: b("plain"), parties: 2, participant: b("x"), wait_ms: None });
    let plain = d.sm.snapshot();
    let enter =
        Command::BarrierEnterSession { name: b("job"), parties: 2, participant: b("a"), wait_ms: None, session: s };
    waiter(d.ok(enter));
    let bytes = d.sm.snapshot();
    // The owned member is a section after the state; without one nothing follows.
    assert!(bytes.len() > plain.len());
    let restored = StateMachine::restore(Limits::default(), &bytes).expect("restores");
    assert_eq!(restored.snapshot(), bytes);
    let mut d = Driver::with(restored);
    d.index = 100;
    let out = d.run(Command::SessionClose { session: s });
    assert!(out.events.iter().any(|e| matches!(e, Event::WaitEnded { reason: WaitEnd::SessionEnded, .. })));
    // A section that does not decode is a corrupt snapshot, not an empty one.
    let mut broken = bytes.clone();
    broken.push(0xff);
    assert!(StateMachine::restore(Limits::default(), &broken).is_err());
    // Only what a snapshot writes reads back: after a state without sections, a zero
    // byte decodes as an empty section list and [1, 0, 0] as one empty section; both
    // would restore to a state whose snapshot is other bytes (the snapshot property
    // test found the first).
    for tail in [&[0u8][..], &[1, 0, 0]] {
        let mut extra = plain.clone();
        extra.extend_from_slice(tail);
        let restored = StateMachine::restore(Limits::default(), &extra);
        assert!(matches!(restored, Err(SnapshotError::Corrupt(_))), "{tail:?}: {:?}", restored.map(|_| ()));
    }
}

#[test]
fn a_popped_item_put_back_returns_to_its_place_past_the_length_limit() {
    let limits = Limits { queue_length_max: 3, ..Limits::default() };
    let mut d = Driver::with(StateMachine::new(limits));
    let put_back = |value: &str, seq: u64, session: u64| Command::PutBack {
        key: b("q"),
        value: b(value),
        to: PutBackTo::Queue { priority: 0, seq, session },
    };
    d.ok(Command::QueuePush { name: b("q"), values: vec![b("a"), b("b")], priority: 0, session: None });
    assert_eq!(d.ok(Command::QueuePop { name: b("q"), wait: Wait::Try }), Reply::Bulk(b("a")));
    d.ok(Command::QueuePush { name: b("q"), values: vec![b("c"), b("d")], priority: 0, session: None });
    assert!(matches!(
        d.err(Command::QueuePush { name: b("q"), values: vec![b("e")], priority: 0, session: None }),
        Error::LimitExceeded { .. }
    ));
    // Full, and the popped "a" still goes back, ahead of what was pushed after it.
    assert_eq!(d.ok(put_back("a", 0, 0)), Reply::Int(1));
    assert_eq!(d.read(Command::QueueLen { name: b("q") }), Reply::Int(4));
    let pop = |d: &mut Driver| d.ok(Command::QueuePop { name: b("q"), wait: Wait::Try });
    assert_eq!(pop(&mut d), Reply::Bulk(b("a")));
    // Its slot taken meanwhile (it cannot be: sequences are not reused) or the queue
    // gone and made again: behind the items of its priority.
    for _ in 0..3 {
        pop(&mut d);
    }
    d.ok(Command::QueuePush { name: b("q"), values: vec![b("new")], priority: 0, session: None });
    assert_eq!(d.ok(put_back("old", 7, 0)), Reply::Int(1));
    assert_eq!(pop(&mut d), Reply::Bulk(b("new")));
    assert_eq!(pop(&mut d), Reply::Bulk(b("old")));
    // An item whose session ended meanwhile goes, as it would have with the session.
    let s = session(&mut d, 1_000);
    assert_eq!(d.ok(put_back("gone", 0, s + 1_000)), Reply::Int(0));
    assert_eq!(d.ok(put_back("kept", 0, s)), Reply::Int(1));
    assert_eq!(owned_count(&d, s), Reply::Int(1));
    d.ok(Command::SessionClose { session: s });
    assert_eq!(d.read(Command::QueueLen { name: b("q") }), Reply::Int(0));

    // A list element goes back to the end it came from, past the limit as well.
    d.ok(Command::Push { key: b("l"), values: vec![b("1"), b("2"), b("3")], left: false });
    let back = |left: bool| Command::PutBack { key: b("l"), value: b("0"), to: PutBackTo::List { left } };
    assert_eq!(d.ok(back(true)), Reply::Int(1));
    assert_eq!(d.ok(Command::Pop { key: b("l"), count: None, left: true }), Reply::Bulk(b("0")));
    // A key that now holds another type drops it.
    d.ok(Command::Set(set("s", "v")));
    assert_eq!(
        d.ok(Command::PutBack { key: b("s"), value: b("0"), to: PutBackTo::List { left: true } }),
        Reply::Int(0)
    );
    assert_eq!(d.read(Command::Get { key: b("s") }), Reply::Bulk(b("v")));
}

#[test]
fn election_campaign_proclaim_resign_and_observe() {
    let mut d = Driver::default();
    let out = d.run(Command::Campaign(campaign("ctl", "n1", 10_000)));
    let g1 = grant(out.reply.unwrap());
    assert!(
        matches!(&out.events[..], [Event::LeaderChanged { leader: Some(l), .. }] if l.owner == b("n1") && l.metadata == b("n1-addr"))
    );
    // Campaigning again as the leader is idempotent.
    assert_eq!(grant(d.ok(Command::Campaign(campaign("ctl", "n1", 10_000)))).fence, g1.fence);
    let w2 = waiter(d.ok(Command::Campaign(campaign("ctl", "n2", 10_000))));
    let w3 = waiter(d.ok(Command::Campaign(campaign("ctl", "n3", 10_000))));
    assert!(matches!(d.err(Command::Campaign(campaign("ctl", "n2", 10_000))), Error::Invalid(_)));
    let mut try_campaign = campaign("ctl", "n4", 10_000);
    try_campaign.wait = Wait::Try;
    assert_eq!(d.err(Command::Campaign(try_campaign)), Error::Locked);
    d.ok(Command::Proclaim { name: b("ctl"), token: b("n1-token"), value: b("new-addr") });
    let Reply::Info(info) = d.read(Command::Leader { name: b("ctl") }) else { panic!() };
    assert_eq!((info.holders[0].metadata.clone(), info.waiters), (b("new-addr"), 2));
    assert_eq!(
        d.err(Command::Proclaim { name: b("ctl"), token: b("n2-token"), value: b("x") }),
        Error::NotHolder { name: "ctl".into() }
    );
    let out = d.run(Command::Resign { name: b("ctl"), token: b("n1-token") });
    // Observers see the resignation, then the next leader (FIFO: n2).
    assert!(matches!(out.events[0], Event::LeaderChanged { leader: None, .. }), "{:?}", out.events);
    assert_eq!(granted_waiters(&out.events), vec![w2]);
    // Transfer to a named candidate.
    d.ok(Command::Transfer { name: b("ctl"), token: b("n2-token"), to: b("n3") });
    let Reply::Info(info) = d.read(Command::Leader { name: b("ctl") }) else { panic!() };
    assert_eq!(info.holders[0].owner, b("n3"));
    assert!(info.holders[0].fence > g1.fence);
    assert!(matches!(
        d.err(Command::Transfer { name: b("ctl"), token: b("n3-token"), to: b("nobody") }),
        Error::Invalid(_)
    ));
    let _ = w3;
}

#[test]
fn election_leader_lease_expires_and_renews() {
    let mut d = Driver::default();
    d.ok(Command::Campaign(campaign("e", "n1", 1_000)));
    let w2 = waiter(d.ok(Command::Campaign(campaign("e", "n2", 1_000))));
    d.now_ms += 900;
    grant(d.ok(Command::ElectionRenew { name: b("e"), token: b("n1-token"), ttl_ms: 1_000 }));
    assert!(d.advance(1_000).is_empty());
    let events = d.advance(1);
    assert!(matches!(events[0], Event::Expired { .. }), "{events:?}");
    assert_eq!(granted_waiters(&events), vec![w2]);
    // A queued candidate can withdraw with resign.
    let w3 = waiter(d.ok(Command::Campaign(campaign("e", "n3", 1_000))));
    let out = d.run(Command::Resign { name: b("e"), token: b("n3-token") });
    assert_eq!(out.events, vec![Event::WaitEnded { waiter: w3, reason: WaitEnd::Cancelled }]);
}

#[test]
fn a_token_that_waits_for_permits_cannot_wait_again() {
    let mut d = Driver::default();
    let mut all = sem("s", 2, 2, "x", 30_000);
    all.token = b("x");
    grant(d.ok(Command::SemAcquire(all)));
    let mut waiting = sem("s", 2, 1, "t", 30_000);
    waiting.token = b("t");
    waiting.wait = Wait::Queue { wait_ms: None, priority: 0 };
    assert!(matches!(d.ok(Command::SemAcquire(waiting.clone())), Reply::Queued(_)));
    // The same token again would be granted a second permit under it once x lets go.
    let Error::Invalid(text) = d.err(Command::SemAcquire(waiting)) else { panic!("refused as invalid") };
    assert!(text.contains("already waits"), "{text}");
}
