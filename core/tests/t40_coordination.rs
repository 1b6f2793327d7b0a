//! Semaphores, counters, queues, barriers and leader election.

mod common;

use common::*;
use fencelock_core::{Command, Error, Event, Reply, Wait, WaitEnd};

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
    assert_eq!(d.advance(20_001), vec![Event::Expired { name: b("pool"), fence: g.fence }]);
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
    assert!(out.events.contains(&Event::Popped { waiter: w, key: b("q"), value: b("job"), priority: 0, session: 0 }));
    assert_eq!(d.read(Command::QueueLen { name: b("q") }), Reply::Int(0));
    // The event carries the item's priority and session: a server whose client went
    // away pushes it back with them.
    let s = int(d.ok(Command::SessionOpen { ttl_ms: 10_000 })) as u64;
    let w = waiter(d.ok(Command::QueuePop { name: b("q"), wait: Wait::Queue { wait_ms: Some(1_000), priority: 0 } }));
    let out = d.run(Command::QueuePush { name: b("q"), values: vec![b("vip")], priority: -7, session: Some(s) });
    let popped = Event::Popped { waiter: w, key: b("q"), value: b("vip"), priority: -7, session: s };
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
