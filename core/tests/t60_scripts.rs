//! Scripts apply several keyspace commands in one entry, all or nothing.

mod common;

use common::*;
use fencelock_core::{Command, Error, Reply, SetExpiry, SetRequest};

#[test]
fn a_successful_script_keeps_every_write() {
    let mut d = Driver::default();
    d.index += 1;
    let out = d.sm.apply_script(d.index, d.now_ms, |s| -> Result<i64, Error> {
        s.call(set_nx_px("lock", "tok", 30_000))?;
        s.call(Command::HSet { key: b("h"), pairs: vec![(b("f"), b("1"))] })?;
        let Reply::Int(n) = s.call(Command::IncrBy { key: b("n"), delta: 5 })? else { unreachable!() };
        Ok(n)
    });
    assert_eq!(out.result, Ok(5));
    assert_eq!(out.events.len(), 3, "{:?}", out.events);
    d.sm.check_invariants().unwrap();
    assert_eq!(d.read(Command::Get { key: b("lock") }), Reply::Bulk(b("tok")));
    assert_eq!(int(d.read(Command::Fence { name: b("lock") })), d.index as i64);
}

#[test]
fn a_failed_script_leaves_no_partial_writes() {
    let mut d = Driver::default();
    d.ok(Command::Set(SetRequest { expiry: SetExpiry::InMs(60_000), ..set("kept", "old") }));
    d.ok(Command::HSet { key: b("h"), pairs: vec![(b("f"), b("1"))] });
    let fence_before = d.sm.last_fence();
    let snapshot_before = d.sm.snapshot();
    d.index += 1;
    let out = d.sm.apply_script(d.index, d.now_ms, |s| -> Result<(), Error> {
        s.call(Command::Set(set("kept", "new")))?;
        s.call(set_nx_px("created", "x", 1_000))?;
        s.call(Command::Del { keys: vec![b("h")] })?;
        s.call(Command::Push { key: b("l"), values: vec![b("a")], left: true })?;
        // A command error in the middle aborts the script.
        s.call(Command::IncrBy { key: b("kept"), delta: 1 })?;
        Ok(())
    });
    assert_eq!(out.result, Err(Error::NotInteger));
    assert!(out.events.is_empty(), "{:?}", out.events);
    d.sm.check_invariants().unwrap();
    assert_eq!(d.read(Command::Get { key: b("kept") }), Reply::Bulk(b("old")));
    assert_eq!(d.read(Command::PTtl { key: b("kept") }), Reply::Int(60_000), "the TTL is restored too");
    assert_eq!(d.read(Command::Exists { keys: vec![b("created"), b("l")] }), Reply::Int(0));
    assert_eq!(d.read(Command::HGet { key: b("h"), field: b("f") }), Reply::Bulk(b("1")));
    assert_eq!(d.sm.last_fence(), fence_before);
    // Apart from the applied index, the state is byte-identical to before the script.
    let mut replay = fencelock_core::StateMachine::restore(Default::default(), &snapshot_before).unwrap();
    replay.apply(d.index, d.now_ms, Command::Tick);
    assert_eq!(replay.snapshot(), d.sm.snapshot());
}

#[test]
fn scripts_cannot_take_locks_or_sessions() {
    let mut d = Driver::default();
    d.index += 1;
    let out = d.sm.apply_script(d.index, d.now_ms, |s| s.call(Command::Lock(lock(&["a"], "o", 100))));
    assert!(matches!(out.result, Err(Error::Invalid(_))));
    d.index += 1;
    let out = d
        .sm
        .apply_script(d.index, d.now_ms, |s| s.call(Command::Set(SetRequest { session: Some(1), ..set("k", "v") })));
    assert!(matches!(out.result, Err(Error::Invalid(_))));
    d.sm.check_invariants().unwrap();
}

#[test]
fn a_push_in_a_script_serves_a_blocked_popper_only_if_the_script_commits() {
    let mut d = Driver::default();
    let w = waiter(d.ok(Command::BlockingPop { keys: vec![b("q")], wait_ms: None, left: true }));
    d.index += 1;
    let out = d.sm.apply_script(d.index, d.now_ms, |s| -> Result<(), Error> {
        s.call(Command::Push { key: b("q"), values: vec![b("job")], left: false })?;
        Err(Error::invalid("script error after the push"))
    });
    assert!(out.events.is_empty());
    d.index += 1;
    let out = d.sm.apply_script(d.index, d.now_ms, |s| {
        s.call(Command::Push { key: b("q"), values: vec![b("job")], left: false })
    });
    assert!(out.events.contains(&popped(w, "q", "job")), "{:?}", out.events);
    d.sm.check_invariants().unwrap();
}
