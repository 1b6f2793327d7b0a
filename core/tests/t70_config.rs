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
