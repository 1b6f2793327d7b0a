//! The config store: versions are log indexes, compare-and-set on them, per-key history
//! with compaction, listing by prefix, and change events.

mod common;

use common::*;
use fencelock_core::{Command, Error, Event, Reply};

fn set(key: &str, value: &str, if_version: Option<u64>) -> Command {
    Command::ConfigSet { key: b(key), value: b(value), if_version }
}

fn get(key: &str, at: Option<u64>) -> Command {
    Command::ConfigGet { key: b(key), at }
}

#[test]
fn versions_are_log_indexes_and_cas_guards_every_write() {
    let mut d = Driver::default();
    let v1 = int(d.ok(set("db/url", "a", Some(0))));
    assert_eq!(v1, d.index as i64, "the version is the entry's index");
    assert_eq!(d.read(get("db/url", None)), Reply::Array(vec![Reply::Bulk(b("a")), Reply::Int(v1)]));
    // Create-only fails once it exists; a stale version fails; the right one wins.
    assert_eq!(d.err(set("db/url", "x", Some(0))), Error::ConditionFailed);
    let v2 = int(d.ok(set("db/url", "b", Some(v1 as u64))));
    assert!(v2 > v1);
    assert_eq!(d.err(set("db/url", "c", Some(v1 as u64))), Error::ConditionFailed);
    // Reads as of an older version.
    assert_eq!(d.read(get("db/url", Some(v1 as u64))), Reply::Array(vec![Reply::Bulk(b("a")), Reply::Int(v1)]));
    assert_eq!(d.read(get("db/url", Some(v1 as u64 - 1))), Reply::Nil);
    // Delete under CAS; then it is absent (version 0) and can be created again.
    assert_eq!(d.err(Command::ConfigDel { key: b("db/url"), if_version: Some(v1 as u64) }), Error::ConditionFailed);
    let v3 = int(d.ok(Command::ConfigDel { key: b("db/url"), if_version: Some(v2 as u64) }));
    assert_eq!(d.read(get("db/url", None)), Reply::Nil);
    assert_eq!(int(d.ok(Command::ConfigDel { key: b("db/url"), if_version: None })), 0, "deleting nothing");
    let v4 = int(d.ok(set("db/url", "d", Some(0))));
    let Reply::Array(history) = d.read(Command::ConfigHistory { key: b("db/url") }) else { panic!() };
    let versions: Vec<Reply> =
        history.iter().map(|h| if let Reply::Array(p) = h { p[0].clone() } else { panic!() }).collect();
    assert_eq!(versions, [v4, v3, v2, v1].map(Reply::Int));
    d.sm.check_invariants().unwrap();
}

#[test]
fn history_is_bounded_and_older_versions_are_compacted() {
    let mut d = Driver::default();
    let first = int(d.ok(set("k", "0", None)));
    for i in 1..40 {
        d.ok(set("k", &i.to_string(), None));
    }
    let Reply::Array(history) = d.read(Command::ConfigHistory { key: b("k") }) else { panic!() };
    assert_eq!(history.len(), 16);
    let Error::Invalid(why) = d.sm.read(&get("k", Some(first as u64))).unwrap_err() else { panic!() };
    assert!(why.contains("compacted"), "{why}");
    d.sm.check_invariants().unwrap();
}

#[test]
fn list_by_prefix_skips_deleted_keys_and_events_name_the_version() {
    let mut d = Driver::default();
    d.ok(set("app/a", "1", None));
    d.ok(set("app/b", "2", None));
    d.ok(set("apq", "x", None));
    d.ok(Command::ConfigDel { key: b("app/a"), if_version: None });
    let listed = d.read(Command::ConfigList { prefix: b("app/"), after: None, count: 100 });
    let Reply::Array(items) = listed else { panic!() };
    assert_eq!(items.len(), 2);
    assert_eq!(items[0], Reply::Bulk(b("app/b")));
    d.index += 1;
    let out = d.sm.apply(d.index, d.now_ms, set("app/c", "3", None));
    assert_eq!(out.events, vec![Event::ConfigChanged { key: b("app/c"), version: d.index, deleted: false }]);
    // Limits apply as to any key and value.
    let huge = "x".repeat(d.sm.limits().value_bytes_max + 1);
    assert!(matches!(d.err(set("big", &huge, None)), Error::LimitExceeded { .. }));
}

/// Versions are log indexes, so one key's versions have gaps. Once its oldest version
/// is compacted, what held between it and the oldest one kept is unknown: refused as
/// compacted (it used to answer "absent" there).
#[test]
fn a_version_in_the_gap_before_the_oldest_kept_one_is_compacted_not_absent() {
    let mut d = Driver::default();
    let first = int(d.ok(set("k", "v0", None))) as u64;
    // Other writes move the log on: k's next version comes much later.
    for i in 0..30 {
        d.ok(set(&format!("other/{i}"), "x", None));
    }
    let mut kept = Vec::new();
    for i in 1..=16 {
        kept.push(int(d.ok(set("k", &i.to_string(), None))) as u64);
    }
    assert!(kept[0] > first + 20, "a gap between the versions");
    let in_gap = first + 10;
    let Error::Invalid(why) = d.sm.read(&get("k", Some(in_gap))).unwrap_err() else { panic!() };
    assert!(why.contains(&format!("history starts at version {}", kept[0])), "{why}");
    assert_eq!(d.read(get("k", Some(kept[0]))), Reply::Array(vec![Reply::Bulk(b("1")), Reply::Int(kept[0] as i64)]));
    // A version after the last applied one is refused: a later write would change it.
    let Error::Invalid(why) = d.sm.read(&get("k", Some(d.index + 1))).unwrap_err() else { panic!() };
    assert!(why.contains("in the future"), "{why}");
}

/// Resuming a listing after a key that sorts before the prefix starts at the prefix.
#[test]
fn list_after_a_key_before_the_prefix_starts_at_the_prefix() {
    let mut d = Driver::default();
    d.ok(set("a", "1", None));
    d.ok(set("app/x", "2", None));
    let listed = d.read(Command::ConfigList { prefix: b("app/"), after: Some(b("")), count: 10 });
    assert_eq!(listed, Reply::Array(vec![Reply::Bulk(b("app/x")), Reply::Int(d.index as i64)]));
}

/// A deleted key's entry stayed forever and counted against the entry limit, so a
/// store whose keys come and go (CFG.SET / CFG.DEL of ever-new names) one day refused
/// every new name. `ConfigCompact` forgets deletes older than its bound.
#[test]
fn forgetting_deleted_keys_gives_their_entries_back() {
    let limits = fencelock_core::Limits { entries_max: 4, ..fencelock_core::Limits::default() };
    let mut d = Driver::with(fencelock_core::StateMachine::new(limits));
    let mut deleted_at = Vec::new();
    for i in 0..4 {
        d.ok(set(&format!("gone/{i}"), "v", None));
        deleted_at.push(int(d.ok(Command::ConfigDel { key: b(&format!("gone/{i}")), if_version: None })) as u64);
    }
    let Error::LimitExceeded { .. } = d.err(set("new", "v", None)) else { panic!("four deleted keys fill the store") };
    assert_eq!(d.sm.config_deletes_held(), 4);

    // Forget the deletes before the third one's: two go, two stay.
    assert_eq!(int(d.ok(Command::ConfigCompact { below: deleted_at[2] })), 2);
    assert_eq!(d.sm.config_deletes_held(), 2);
    assert_eq!(d.read(Command::ConfigHistory { key: b("gone/0") }), Reply::Array(vec![]));
    let Reply::Array(kept) = d.read(Command::ConfigHistory { key: b("gone/2") }) else { panic!() };
    assert_eq!(kept.len(), 2, "a kept delete keeps its history");
    let v = int(d.ok(set("new", "v", None))) as u64;
    assert_eq!(d.read(get("new", None)), Reply::Array(vec![Reply::Bulk(b("v")), Reply::Int(v as i64)]));

    // What a forgotten key held before the bound is unknown, not absent; after it, the
    // key was deleted, so absent is right.
    let Error::Invalid(why) = d.sm.read(&get("gone/0", Some(deleted_at[0] - 1))).unwrap_err() else { panic!() };
    assert!(why.contains("compacted") && why.contains(&deleted_at[2].to_string()), "{why}");
    assert_eq!(d.read(get("gone/0", Some(deleted_at[2]))), Reply::Nil);
    assert_eq!(d.read(get("gone/0", None)), Reply::Nil);
    // Written again, its history starts with that write: before it, unknown (it may
    // be a forgotten key, as here).
    let again = int(d.ok(set("gone/0", "back", None))) as u64;
    for at in [deleted_at[0], deleted_at[2]] {
        let Error::Invalid(why) = d.sm.read(&get("gone/0", Some(at))).unwrap_err() else { panic!() };
        assert!(why.contains(&format!("history starts at version {again}")), "{why}");
    }
    assert_eq!(
        d.read(get("gone/0", Some(again))),
        Reply::Array(vec![Reply::Bulk(b("back")), Reply::Int(again as i64)])
    );
    // A key deleted again is indexed again; one that never existed reads as before.
    d.ok(Command::ConfigDel { key: b("gone/0"), if_version: None });
    assert_eq!(d.sm.config_deletes_held(), 3);
    assert_eq!(d.read(get("never", Some(d.index))), Reply::Nil);
    // A bound past the log is held to it.
    assert_eq!(int(d.ok(Command::ConfigCompact { below: u64::MAX })), 3);
    assert_eq!(d.sm.config_deletes_held(), 0);
    d.sm.check_invariants().unwrap();
}

/// A key that lived through a compaction keeps its whole history: a read AT a version
/// before its creation still answers nil, after deleted keys were forgotten.
#[test]
fn a_live_key_keeps_its_history_through_a_compaction() {
    let mut d = Driver::default();
    d.ok(set("first", "x", None));
    let before = d.index;
    let created = int(d.ok(set("app/db", "a", None))) as u64;
    d.ok(set("gone", "v", None));
    let deleted = int(d.ok(Command::ConfigDel { key: b("gone"), if_version: None })) as u64;
    assert_eq!(int(d.ok(Command::ConfigCompact { below: deleted + 1 })), 1);
    assert_eq!(d.read(get("app/db", Some(before))), Reply::Nil, "it did not exist yet");
    assert_eq!(
        d.read(get("app/db", Some(created))),
        Reply::Array(vec![Reply::Bulk(b("a")), Reply::Int(created as i64)])
    );
}

/// The bound travels in a snapshot section, only once something was forgotten (until
/// then a snapshot is what builds before level 3 wrote), and the index of deletes is
/// rebuilt on restore.
#[test]
fn the_forgotten_bound_and_the_deletes_survive_a_snapshot() {
    let mut d = Driver::default();
    d.ok(set("a", "1", None));
    let first_delete = int(d.ok(Command::ConfigDel { key: b("a"), if_version: None })) as u64;
    d.ok(set("b", "1", None));
    d.ok(Command::ConfigDel { key: b("b"), if_version: None });
    let plain = d.sm.snapshot();
    let restored = fencelock_core::StateMachine::restore(fencelock_core::Limits::default(), &plain).unwrap();
    assert_eq!(restored.config_deletes_held(), 2, "the index is rebuilt");
    assert_eq!(restored.snapshot(), plain);

    d.ok(Command::ConfigCompact { below: first_delete + 1 });
    let bytes = d.sm.snapshot();
    let restored = fencelock_core::StateMachine::restore(fencelock_core::Limits::default(), &bytes).unwrap();
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.config_deletes_held(), 1);
    let Error::Invalid(why) = restored.read(&get("a", Some(first_delete - 1))).unwrap_err() else { panic!() };
    assert!(why.contains("compacted"), "{why}");
    // The section ends the snapshot: a byte more is corrupt.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(fencelock_core::StateMachine::restore(fencelock_core::Limits::default(), &longer).is_err());
}

/// The leader proposes a compaction once more than KEPT + SLACK deletes are held, with a
/// bound that keeps the newest KEPT.
#[test]
fn compaction_is_due_past_the_kept_deletes_and_keeps_the_newest() {
    use fencelock_core::{CONFIG_DELETED_KEPT as KEPT, CONFIG_DELETED_SLACK as SLACK};
    let mut sm = fencelock_core::StateMachine::default();
    let mut index = 0;
    let mut apply = |sm: &mut fencelock_core::StateMachine, command: Command| {
        index += 1;
        sm.apply(index, 1_000, command).reply.expect("applies")
    };
    for i in 0..KEPT + SLACK {
        apply(&mut sm, set(&format!("k{i}"), "v", None));
        apply(&mut sm, Command::ConfigDel { key: b(&format!("k{i}")), if_version: None });
    }
    assert_eq!(sm.config_compaction_due(), None, "at KEPT + SLACK nothing is due yet");
    apply(&mut sm, set("last", "v", None));
    apply(&mut sm, Command::ConfigDel { key: b("last"), if_version: None });
    let below = sm.config_compaction_due().expect("due past KEPT + SLACK");
    let Reply::Int(forgotten) = apply(&mut sm, Command::ConfigCompact { below }) else { panic!() };
    assert_eq!(forgotten as usize, SLACK + 1, "all but the newest KEPT");
    assert_eq!(sm.config_deletes_held(), KEPT);
    assert_eq!(sm.config_compaction_due(), None);
    sm.check_invariants().unwrap();
}

/// Both sections, in their order, round-trip; a zero bound, a repeated section and a
/// bound past the last applied entry are refused.
#[test]
fn config_sections_are_checked_on_restore() {
    use fencelock_core::{Limits, SnapshotError, StateMachine};
    let mut d = Driver::default();
    d.ok(set("a", "1", None));
    let plain = d.sm.snapshot();
    let restore = |bytes: &[u8]| StateMachine::restore(Limits::default(), bytes);
    // Section lists after the state: [count, kind, bound...] (postcard varints).
    for tail in [&[1u8, 1, 0][..], &[2, 1, 1, 1, 2]] {
        let mut bytes = plain.clone();
        bytes.extend_from_slice(tail);
        assert!(matches!(restore(&bytes), Err(SnapshotError::Corrupt(_))), "{tail:?}");
    }
    let mut past = plain.clone();
    past.extend_from_slice(&[1, 1, 100]);
    assert!(matches!(restore(&past), Err(SnapshotError::Inconsistent(_))));
    let mut fine = plain.clone();
    fine.extend_from_slice(&[1, 1, 2]);
    assert_eq!(restore(&fine).expect("a bound at the next index").snapshot(), fine);

    // A session-owned barrier member and a compaction: both sections, in kind order.
    let s = int(d.ok(Command::SessionOpen { ttl_ms: 60_000 })) as u64;
    d.ok(Command::BarrierEnterSession { name: b("job"), parties: 2, participant: b("p"), wait_ms: None, session: s });
    let deleted = int(d.ok(Command::ConfigDel { key: b("a"), if_version: None })) as u64;
    assert_eq!(int(d.ok(Command::ConfigCompact { below: deleted + 1 })), 1);
    let bytes = d.sm.snapshot();
    let restored = restore(&bytes).expect("both sections restore");
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.config_deletes_held(), 0);
}
