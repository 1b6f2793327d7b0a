//! Sessions: keep-alive, expiry, close, and everything they own going away with them.

mod common;

use common::*;
use fencelock_core::{Command, Error, Event, Holding, Reply, SetExpiry, SetRequest, WaitEnd};

fn open(d: &mut Driver, ttl_ms: u64) -> u64 {
    int(d.ok(Command::SessionOpen { ttl_ms })) as u64
}

#[test]
fn session_id_is_the_log_index_and_keep_alive_extends() {
    let mut d = Driver::default();
    let s = open(&mut d, 1_000);
    assert_eq!(s, d.index);
    d.now_ms += 900;
    assert_eq!(d.ok(Command::SessionKeepAlive { session: s, ttl_ms: None }), Reply::Int(1_000));
    d.now_ms += 900;
    assert_eq!(
        d.ok(Command::SessionInfo { session: s }),
        Reply::Array(vec![Reply::Int(1_000), Reply::Int(100), Reply::Int(0)])
    );
    let events = d.advance(101);
    assert_eq!(events, vec![Event::SessionEnded { session: s, expired: true }]);
    assert_eq!(d.err(Command::SessionKeepAlive { session: s, ttl_ms: None }), Error::NoSuchSession(s));
    assert_eq!(d.sm.read(&Command::SessionInfo { session: s }), Err(Error::NoSuchSession(s)));
}

#[test]
fn expiry_revokes_locks_permits_keys_items_and_leadership() {
    let mut d = Driver::default();
    let s = open(&mut d, 1_000);
    let mut l = lock(&["a"], "alice", 0);
    l.session = Some(s);
    let fence = grant(d.ok(Command::Lock(l))).fence;
    let mut p = sem("pool", 3, 2, "alice", 0);
    p.session = Some(s);
    d.ok(Command::SemAcquire(p));
    d.ok(Command::Set(SetRequest { session: Some(s), ..set("ephemeral", "v") }));
    d.ok(Command::QueuePush { name: b("jobs"), values: vec![b("j1"), b("j2")], priority: 0, session: Some(s) });
    let mut c = campaign("election", "alice", 0);
    c.session = Some(s);
    d.ok(Command::Campaign(c));
    let Reply::Array(info) = d.ok(Command::SessionInfo { session: s }) else { panic!() };
    assert_eq!(info[2], Reply::Int(6), "lock, permit, key, two items, leadership");

    let events = d.advance(1_001);
    assert!(events.contains(&Event::Revoked { name: b("a"), of: Holding::Lock, fence, session: s }), "{events:?}");
    assert!(events.contains(&Event::SessionEnded { session: s, expired: true }));
    assert!(events.contains(&Event::LeaderChanged { name: b("election"), leader: None }));
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Nil);
    assert_eq!(
        d.read(Command::SemInfo { name: b("pool") }),
        Reply::Array(vec![Reply::Int(0), Reply::Int(0), Reply::Int(0)])
    );
    assert_eq!(d.read(Command::Get { key: b("ephemeral") }), Reply::Nil);
    assert_eq!(d.read(Command::QueueLen { name: b("jobs") }), Reply::Int(0));
}

#[test]
fn session_expiry_wakes_the_next_waiter() {
    let mut d = Driver::default();
    let s = open(&mut d, 1_000);
    let mut l = lock(&["a"], "alice", 0);
    l.session = Some(s);
    d.ok(Command::Lock(l));
    let w = waiter(d.ok(Command::Lock(queued(lock(&["a"], "bob", 10_000), None, 0))));
    let events = d.advance(1_001);
    assert_eq!(granted_waiters(&events), vec![w]);
}

#[test]
fn a_waiter_whose_session_ended_is_never_granted() {
    // etcd #11456: Lock returned after the waiter's lease had expired.
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "holder", 5_000)));
    let s = open(&mut d, 1_000);
    let mut l = queued(lock(&["a"], "waiter", 10_000), None, 0);
    l.session = Some(s);
    let w = waiter(d.ok(Command::Lock(l)));
    // The session dies at 2_000; the holder's lease ends at 6_000. Even if both are
    // swept by the same entry, the dead session's waiter must not get the lock.
    d.now_ms = 6_001;
    let events = d.run(Command::Tick).events;
    assert!(granted_waiters(&events).is_empty(), "{events:?}");
    assert!(events.contains(&Event::WaitEnded { waiter: w, reason: WaitEnd::SessionEnded }));
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Nil);
}

#[test]
fn session_due_but_not_swept_is_not_granted_on_release() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "holder", 60_000)));
    let s = open(&mut d, 1_000);
    let mut l = queued(lock(&["a"], "waiter", 10_000), None, 0);
    l.session = Some(s);
    let w = waiter(d.ok(Command::Lock(l)));
    d.now_ms += 5_000;
    let out = d.run(unlock(&["a"], "holder"));
    assert!(granted_waiters(&out.events).is_empty());
    assert!(out.events.contains(&Event::WaitEnded { waiter: w, reason: WaitEnd::SessionEnded }), "{:?}", out.events);
}

#[test]
fn close_releases_at_once_and_only_once() {
    let mut d = Driver::default();
    let s = open(&mut d, 60_000);
    let mut l = lock(&["a"], "alice", 0);
    l.session = Some(s);
    d.ok(Command::Lock(l));
    assert_eq!(d.ok(Command::SessionClose { session: s }), Reply::Ok);
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Nil);
    assert_eq!(d.err(Command::SessionClose { session: s }), Error::NoSuchSession(s));
}

#[test]
fn released_or_overwritten_resources_leave_the_session() {
    let mut d = Driver::default();
    let s = open(&mut d, 60_000);
    let mut l = lock(&["a"], "alice", 0);
    l.session = Some(s);
    d.ok(Command::Lock(l));
    d.ok(Command::Set(SetRequest { session: Some(s), ..set("k", "v") }));
    d.ok(unlock(&["a"], "alice"));
    d.ok(Command::Set(set("k", "plain")));
    assert_eq!(
        d.ok(Command::SessionInfo { session: s }),
        Reply::Array(vec![Reply::Int(60_000), Reply::Int(60_000), Reply::Int(0)])
    );
    d.ok(Command::SessionClose { session: s });
    assert_eq!(d.read(Command::Get { key: b("k") }), Reply::Bulk(b("plain")));
}

#[test]
fn ephemeral_key_with_its_own_ttl_expires_first() {
    let mut d = Driver::default();
    let s = open(&mut d, 60_000);
    d.ok(Command::Set(SetRequest { session: Some(s), expiry: SetExpiry::InMs(100), ..set("k", "v") }));
    d.advance(101);
    assert_eq!(d.read(Command::Get { key: b("k") }), Reply::Nil);
    assert_eq!(
        d.ok(Command::SessionInfo { session: s }),
        Reply::Array(vec![Reply::Int(60_000), Reply::Int(59_899), Reply::Int(0)])
    );
}

#[test]
fn acquiring_again_under_another_session_is_refused_and_the_grant_stays_with_its_own() {
    let mut d = Driver::default();
    let first = open(&mut d, 1_000);
    let second = open(&mut d, 10_000);
    let mut l = lock(&["job"], "alice", 0);
    l.session = Some(first);
    let fence = grant(d.ok(Command::Lock(l.clone()))).fence;
    // A client that reconnected under a new session must not be told it holds `job`
    // there: the grant would still end with the first session.
    let mut again = l.clone();
    again.session = Some(second);
    assert_eq!(d.err(Command::Lock(again)), Error::HeldDifferently);
    // Nor without a session, on a lease of its own.
    let mut leased = l.clone();
    leased.session = None;
    leased.ttl_ms = 30_000;
    assert_eq!(d.err(Command::Lock(leased)), Error::HeldDifferently);
    // The same session still re-enters.
    assert_eq!(grant(d.ok(Command::Lock(l))).fence, fence);
    // And the lock ends with its own session, not the other one.
    let events = d.advance(1_001);
    assert!(
        events.contains(&Event::Revoked { name: b("job"), of: Holding::Lock, fence, session: first }),
        "{events:?}"
    );
    assert_eq!(d.read(Command::Fence { name: b("job") }), Reply::Nil);
}

#[test]
fn a_retried_acquire_is_answered_even_when_its_session_is_at_its_lock_limit() {
    let limits = fencelock_core::Limits { locks_per_session_max: 1, ..Default::default() };
    let mut d = Driver { sm: fencelock_core::StateMachine::new(limits), ..Default::default() };
    let s = open(&mut d, 10_000);
    let mut l = lock(&["a"], "alice", 0);
    l.session = Some(s);
    l.idempotent = true;
    let fence = grant(d.ok(Command::Lock(l.clone()))).fence;
    // The retry adds no lock to the session, so the limit does not refuse it.
    assert_eq!(grant(d.ok(Command::Lock(l.clone()))).fence, fence);
    let mut other = l;
    other.names = vec![b("b")];
    assert!(matches!(d.err(Command::Lock(other)), Error::LimitExceeded { .. }), "a new lock is still limited");
}

#[test]
fn campaigning_again_under_another_session_is_refused() {
    let mut d = Driver::default();
    let first = open(&mut d, 1_000);
    let second = open(&mut d, 10_000);
    let mut c = campaign("election", "alice", 0);
    c.session = Some(first);
    let fence = grant(d.ok(Command::Campaign(c.clone()))).fence;
    let mut again = c.clone();
    again.session = Some(second);
    assert_eq!(d.err(Command::Campaign(again)), Error::HeldDifferently);
    assert_eq!(grant(d.ok(Command::Campaign(c))).fence, fence, "the same session still gets its grant");
    let events = d.advance(1_001);
    assert!(events.contains(&Event::LeaderChanged { name: b("election"), leader: None }), "{events:?}");
}
