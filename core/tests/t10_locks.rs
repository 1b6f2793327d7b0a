//! Exclusive, shared, reentrant, grouped, queued, prioritized and conditional locks.

mod common;

use bytes::Bytes;
use common::*;
use fencelock_core::{Command, Error, Event, Holding, LockMode, LockRequest, Reply, WaitEnd};

#[test]
fn try_lock_grants_then_refuses_other_owners() {
    let mut d = Driver::default();
    let g = grant(d.ok(Command::Lock(lock(&["a"], "alice", 10_000))));
    assert_eq!((g.fence, g.holds, g.deadline_ms), (1, 1, 11_000));
    assert_eq!(d.err(Command::Lock(lock(&["a"], "bob", 10_000))), Error::Locked);
    // Another name is independent and gets a larger fence: the log index.
    let g2 = grant(d.ok(Command::Lock(lock(&["b"], "bob", 10_000))));
    assert_eq!(g2.fence, 3);
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Int(1));
    assert_eq!(d.read(Command::Fence { name: b("nope") }), Reply::Nil);
}

#[test]
fn release_only_by_holder_and_reports_remaining_holds() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
    assert_eq!(d.err(unlock(&["a"], "bob")), Error::NotHolder { name: "a".into() });
    assert_eq!(d.err(unlock(&["unheld"], "alice")), Error::NotHolder { name: "unheld".into() });
    let out = d.run(unlock(&["a"], "alice"));
    assert_eq!(out.reply, Ok(Reply::Int(0)));
    assert_eq!(out.events, vec![Event::Released { name: b("a"), of: Holding::Lock, fence: 1 }]);
    // Free again: someone else gets it with a new, larger fence.
    assert!(grant(d.ok(Command::Lock(lock(&["a"], "bob", 10_000)))).fence > 1);
}

#[test]
fn reentrant_acquire_counts_holds_and_keeps_the_fence() {
    let mut d = Driver::default();
    let first = grant(d.ok(Command::Lock(lock(&["a"], "alice", 10_000))));
    d.now_ms += 5_000;
    let again = grant(d.ok(Command::Lock(lock(&["a"], "alice", 10_000))));
    assert_eq!(again.fence, first.fence);
    assert_eq!(again.holds, 2);
    // The reentrant acquire lengthened the lease to now + ttl.
    assert_eq!(again.deadline_ms, 16_000);
    assert_eq!(d.ok(unlock(&["a"], "alice")), Reply::Int(1));
    assert_eq!(d.err(Command::Lock(lock(&["a"], "bob", 10_000))), Error::Locked);
    assert_eq!(d.ok(unlock(&["a"], "alice")), Reply::Int(0));
}

#[test]
fn reentry_with_another_token_or_mode_is_refused() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
    let mut other_token = lock(&["a"], "alice", 10_000);
    other_token.token = b("different");
    assert_eq!(d.err(Command::Lock(other_token)), Error::TokenMismatch);
    assert_eq!(d.err(Command::Lock(shared(lock(&["a"], "alice", 10_000)))), Error::HeldDifferently);
    // Holding "a" and asking for the group {a, b} is not a reentrant acquire.
    assert_eq!(d.err(Command::Lock(lock(&["a", "b"], "alice", 10_000))), Error::HeldDifferently);
}

#[test]
fn renew_extends_but_never_resurrects() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 1_000)));
    d.now_ms += 900;
    let g = grant(d.ok(renew(&["a"], "alice", 1_000)));
    assert_eq!(g.deadline_ms, 2_900);
    assert_eq!(d.err(renew(&["a"], "bob", 1_000)), Error::NotHolder { name: "a".into() });
    // Not expired at 2_900 (the deadline millisecond itself still holds: the grant may
    // have come late in its millisecond) ...
    d.now_ms = 2_900;
    assert!(d.run(Command::Tick).events.is_empty());
    // ... expired at 2_901, and renewing a lease that ran out fails even with no sweep
    // in between (the renew itself sees the deadline has passed).
    d.now_ms = 2_901;
    assert_eq!(d.err(renew(&["a"], "alice", 1_000)), Error::NotHolder { name: "a".into() });
    assert_eq!(d.err(renew(&["a"], "alice", 0)), Error::invalid("ttl must be positive (or 0 with a session)"));
}

#[test]
fn expiry_is_never_early_and_emits_an_event() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 500)));
    // Held through millisecond 500 too: the clock is whole milliseconds and the grant
    // may have come at 0.9, so ending at 500 could be up to 1 ms early.
    assert!(d.advance(500).is_empty());
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Int(1));
    let events = d.advance(1);
    assert_eq!(events, vec![Event::Expired { name: b("a"), of: Holding::Lock, fence: 1 }]);
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Nil);
}

#[test]
fn queued_waiters_are_granted_fifo_on_release() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
    let w_bob = waiter(d.ok(Command::Lock(queued(lock(&["a"], "bob", 10_000), Some(60_000), 0))));
    let w_carol = waiter(d.ok(Command::Lock(queued(lock(&["a"], "carol", 10_000), Some(60_000), 0))));
    // A try-lock does not overtake the queue.
    assert_eq!(d.err(Command::Lock(lock(&["a"], "dave", 10_000))), Error::Locked);
    let out = d.run(unlock(&["a"], "alice"));
    assert_eq!(granted_waiters(&out.events), vec![w_bob]);
    let Event::Granted { grant, .. } = out.events[1].clone() else { panic!("{:?}", out.events) };
    assert_eq!(grant.fence, d.index, "a grant's fence is the granting entry's index");
    let out = d.run(unlock(&["a"], "bob"));
    assert_eq!(granted_waiters(&out.events), vec![w_carol]);
}

/// LOCK.WITHDRAW: a client that gave up on an acquire ends its queued wait by token,
/// so a later release does not grant it to nobody. Holders are never touched.
#[test]
fn a_queued_acquire_is_withdrawn_by_its_token_and_a_holder_is_not() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
    let w_bob = waiter(d.ok(Command::Lock(queued(lock(&["a", "b"], "bob", 10_000), None, 0))));
    let w_carol = waiter(d.ok(Command::Lock(queued(lock(&["a"], "carol", 10_000), None, 0))));
    let withdraw = |names: &[&str], owner: &str| Command::LockWithdraw {
        names: names.iter().map(|n| b(n)).collect(),
        token: b(&format!("{owner}-token")),
    };
    // Found through the first name of the group, as asked for.
    let out = d.run(withdraw(&["a", "b"], "bob"));
    assert_eq!(out.reply, Ok(Reply::Int(1)));
    assert_eq!(out.events, vec![Event::WaitEnded { waiter: w_bob, reason: WaitEnd::Cancelled }]);
    assert_eq!(d.ok(withdraw(&["a", "b"], "bob")), Reply::Int(0), "once");
    assert_eq!(d.ok(withdraw(&["a"], "alice")), Reply::Int(0), "a holder is not a waiter");
    assert_eq!(d.ok(withdraw(&["a"], "nobody")), Reply::Int(0));
    let Reply::Info(info) = d.read(Command::LockInfo { name: b("a") }) else { panic!() };
    assert_eq!((info.holders.len(), info.waiters), (1, 1), "alice still holds; carol still waits");
    // The release grants the next waiter left, not the withdrawn one.
    let out = d.run(unlock(&["a"], "alice"));
    assert_eq!(granted_waiters(&out.events), vec![w_carol]);
    assert_eq!(d.err(withdraw(&[], "carol")), Error::invalid("at least one lock name is required"));
}

#[test]
fn priority_waiters_go_first_and_fifo_within_a_priority() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "holder", 10_000)));
    let low = waiter(d.ok(Command::Lock(queued(lock(&["a"], "low", 10_000), None, 0))));
    let high1 = waiter(d.ok(Command::Lock(queued(lock(&["a"], "high1", 10_000), None, 5))));
    let high2 = waiter(d.ok(Command::Lock(queued(lock(&["a"], "high2", 10_000), None, 5))));
    let mut order = Vec::new();
    for owner in ["holder", "high1", "high2"] {
        order.extend(granted_waiters(&d.run(unlock(&["a"], owner)).events));
    }
    assert_eq!(order, vec![high1, high2, low]);
}

#[test]
fn wait_bound_times_out_and_cancel_removes_the_waiter() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["a"], "alice", 60_000)));
    let w1 = waiter(d.ok(Command::Lock(queued(lock(&["a"], "bob", 10_000), Some(1_000), 0))));
    let w2 = waiter(d.ok(Command::Lock(queued(lock(&["a"], "carol", 10_000), None, 0))));
    assert!(d.advance(1_000).is_empty());
    let events = d.advance(1);
    assert_eq!(events, vec![Event::WaitEnded { waiter: w1, reason: WaitEnd::TimedOut }]);
    assert_eq!(d.ok(Command::CancelWait { waiter: w2 }), Reply::Ok);
    assert_eq!(d.err(Command::CancelWait { waiter: w2 }), Error::NoSuchWaiter(w2));
    let Reply::Info(info) = d.read(Command::LockInfo { name: b("a") }) else { panic!() };
    assert_eq!(info.waiters, 0);
    // A wait bound of 0 is a try.
    assert_eq!(d.err(Command::Lock(queued(lock(&["a"], "bob", 10_000), Some(0), 0))), Error::Locked);
}

#[test]
fn shared_locks_admit_readers_and_exclude_writers() {
    let mut d = Driver::default();
    let r1 = grant(d.ok(Command::Lock(shared(lock(&["doc"], "r1", 10_000)))));
    let r2 = grant(d.ok(Command::Lock(shared(lock(&["doc"], "r2", 10_000)))));
    assert!(r2.fence > r1.fence);
    assert_eq!(d.err(Command::Lock(lock(&["doc"], "w", 10_000))), Error::Locked);
    let Reply::Info(info) = d.read(Command::LockInfo { name: b("doc") }) else { panic!() };
    assert_eq!(info.mode, Some(LockMode::Shared));
    assert_eq!(info.holders.len(), 2);
    // FENCE of a shared lock is its newest grant.
    assert_eq!(d.read(Command::Fence { name: b("doc") }), Reply::Int(r2.fence as i64));
}

#[test]
fn writer_preference_queued_writer_blocks_new_readers() {
    let mut d = Driver::default();
    d.ok(Command::Lock(shared(lock(&["doc"], "r1", 10_000))));
    let w = waiter(d.ok(Command::Lock(queued(lock(&["doc"], "writer", 10_000), None, 0))));
    // A new reader would be compatible with r1 but must not overtake the writer.
    assert_eq!(d.err(Command::Lock(shared(lock(&["doc"], "r2", 10_000)))), Error::Locked);
    let r2 = waiter(d.ok(Command::Lock(queued(shared(lock(&["doc"], "r2", 10_000)), None, 0))));
    let r3 = waiter(d.ok(Command::Lock(queued(shared(lock(&["doc"], "r3", 10_000)), None, 0))));
    assert_eq!(granted_waiters(&d.run(unlock(&["doc"], "r1")).events), vec![w]);
    // The writer's release lets both queued readers in together.
    assert_eq!(granted_waiters(&d.run(unlock(&["doc"], "writer")).events), vec![r2, r3]);
}

#[test]
fn groups_are_all_or_nothing_with_one_fence() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["b"], "bob", 10_000)));
    assert_eq!(d.err(Command::Lock(lock(&["a", "b", "c"], "alice", 10_000))), Error::Locked);
    // Nothing of the failed group was taken.
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Nil);
    let w = waiter(d.ok(Command::Lock(queued(lock(&["c", "a", "b"], "alice", 10_000), None, 0))));
    let out = d.run(unlock(&["b"], "bob"));
    assert_eq!(granted_waiters(&out.events), vec![w]);
    let fences: Vec<Reply> = ["a", "b", "c"].iter().map(|n| d.read(Command::Fence { name: b(n) })).collect();
    assert!(fences.iter().all(|f| *f == fences[0]), "{fences:?}");
    // Duplicate names collapse; the group releases together.
    assert_eq!(d.ok(unlock(&["a", "b", "c", "a"], "alice")), Reply::Int(0));
}

#[test]
fn crossing_groups_cannot_deadlock() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["x"], "holder", 10_000)));
    // g1 wants {x, y}; g2 wants {y, x}. Both wait; when x frees, the earlier one gets both.
    let g1 = waiter(d.ok(Command::Lock(queued(lock(&["x", "y"], "g1", 10_000), None, 0))));
    let g2 = waiter(d.ok(Command::Lock(queued(lock(&["y", "x"], "g2", 10_000), None, 0))));
    assert_eq!(granted_waiters(&d.run(unlock(&["x"], "holder")).events), vec![g1]);
    assert_eq!(granted_waiters(&d.run(unlock(&["x", "y"], "g1")).events), vec![g2]);
}

#[test]
fn metadata_is_stored_and_shown() {
    let mut d = Driver::default();
    let mut request = lock(&["a"], "alice", 10_000);
    request.metadata = b("host=web-1 pid=42");
    d.ok(Command::Lock(request));
    let Reply::Info(info) = d.read(Command::LockInfo { name: b("a") }) else { panic!() };
    assert_eq!(info.holders[0].metadata, b("host=web-1 pid=42"));
    assert_eq!(info.holders[0].owner, b("alice"));
    assert_eq!(info.holders[0].ttl_ms, Some(10_000));
}

#[test]
fn conditional_acquire_checks_a_key_or_a_fence() {
    let mut d = Driver::default();
    let mut request = lock(&["a"], "alice", 10_000);
    request.condition = Some(key_equals("config:version", Some("7")));
    assert_eq!(d.err(Command::Lock(request.clone())), Error::ConditionFailed);
    d.ok(Command::Set(set("config:version", "7")));
    grant(d.ok(Command::Lock(request)));
    let fence_a = int(d.read(Command::Fence { name: b("a") })) as u64;
    let mut on_fence = lock(&["b"], "bob", 10_000);
    on_fence.condition = Some(fencelock_core::Condition::FenceEquals { name: b("a"), fence: fence_a + 1 });
    assert_eq!(d.err(Command::Lock(on_fence.clone())), Error::ConditionFailed);
    on_fence.condition = Some(fencelock_core::Condition::FenceEquals { name: b("a"), fence: fence_a });
    grant(d.ok(Command::Lock(on_fence)));
    let mut absent = lock(&["c"], "carol", 10_000);
    absent.condition = Some(key_equals("missing", None));
    grant(d.ok(Command::Lock(absent.clone())));
    // A retry of that acquire (its reply lost) after the condition stopped holding is
    // answered with the grant it holds, not CONDFAILED.
    d.ok(Command::Set(set("missing", "now here")));
    absent.idempotent = true;
    let again = grant(d.ok(Command::Lock(absent.clone())));
    assert_eq!(Some(again.fence), Some(int(d.read(Command::Fence { name: b("c") })) as u64));
    // Anyone else is still held to it.
    let mut other = lock(&["d"], "dave", 10_000);
    other.condition = absent.condition;
    assert_eq!(d.err(Command::Lock(other)), Error::ConditionFailed);
}

#[test]
fn session_bound_lock_needs_a_session_and_zero_ttl_otherwise_is_invalid() {
    let mut d = Driver::default();
    assert!(matches!(d.err(Command::Lock(lock(&["a"], "alice", 0))), Error::Invalid(_)));
    let mut request = lock(&["a"], "alice", 0);
    request.session = Some(999);
    assert_eq!(d.err(Command::Lock(request)), Error::NoSuchSession(999));
    assert!(matches!(
        d.err(Command::Lock(fencelock_core::LockRequest { names: vec![], ..lock(&["a"], "a", 1) })),
        Error::Invalid(_)
    ));
}

#[test]
fn fences_increase_across_locks_keys_semaphores_and_elections() {
    let mut d = Driver::default();
    let mut fences = vec![grant(d.ok(Command::Lock(lock(&["a"], "alice", 10_000)))).fence];
    d.ok(set_nx_px("redlock", "tok", 10_000));
    fences.push(int(d.read(Command::Fence { name: b("redlock") })) as u64);
    fences.push(grant(d.ok(Command::SemAcquire(sem("pool", 2, 1, "s", 10_000)))).fence);
    fences.push(grant(d.ok(Command::Campaign(campaign("e", "c", 10_000)))).fence);
    fences.push(grant(d.ok(Command::Lock(lock(&["b"], "bob", 10_000)))).fence);
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    assert_eq!(d.sm.last_fence(), *fences.last().unwrap());
}

#[test]
fn one_entry_granting_several_waiters_gives_distinct_increasing_fences() {
    let mut d = Driver::default();
    d.ok(Command::Lock(lock(&["doc"], "writer", 10_000)));
    for reader in ["r1", "r2", "r3"] {
        d.ok(Command::Lock(queued(shared(lock(&["doc"], reader, 10_000)), None, 0)));
    }
    let index_of_release = d.index + 1;
    let out = d.run(unlock(&["doc"], "writer"));
    let fences: Vec<u64> = out
        .events
        .iter()
        .filter_map(|e| if let Event::Granted { grant, .. } = e { Some(grant.fence) } else { None })
        .collect();
    assert_eq!(fences, vec![index_of_release, index_of_release + 1, index_of_release + 2]);
    // The next entry's grant still gets a larger fence than its own index would give.
    let next = grant(d.ok(Command::Lock(lock(&["other"], "x", 10_000))));
    assert_eq!(next.fence, index_of_release + 3);
    assert_eq!(d.index, index_of_release + 1);
}

#[test]
fn read_only_commands_are_refused_by_read_if_they_write() {
    let d = Driver::default();
    assert!(d.sm.read(&Command::Tick).is_err());
    assert_eq!(d.sm.read(&Command::Get { key: Bytes::from_static(b"k") }), Ok(Reply::Nil));
}

#[test]
fn an_idempotent_retry_answers_the_grant_it_already_has() {
    let mut d = Driver::default();
    let first = grant(d.ok(Command::Lock(LockRequest { idempotent: true, ..lock(&["a"], "alice", 1_000) })));
    d.now_ms += 300;
    // The reply was lost; the client sends the same request again.
    let again = grant(d.ok(Command::Lock(LockRequest { idempotent: true, ..lock(&["a"], "alice", 1_000) })));
    assert_eq!((again.fence, again.holds), (first.fence, 1), "same fence, one hold");
    // The lease runs from the retry: the client counts its validity from what it sent.
    assert_eq!(again.deadline_ms, first.deadline_ms + 300);
    // One UNLOCK frees it (0 holds left): nothing is left behind.
    assert_eq!(d.ok(unlock(&["a"], "alice")), Reply::Int(0));
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Nil);
    // Without the flag the same request is reentrant: two holds.
    d.ok(Command::Lock(lock(&["a"], "bob", 1_000)));
    assert_eq!(grant(d.ok(Command::Lock(lock(&["a"], "bob", 1_000)))).holds, 2);
}
