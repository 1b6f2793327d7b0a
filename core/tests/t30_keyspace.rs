//! The Redis keyspace: SET in all its forms, TTLs, INCR, KEYS/SCAN, hashes, lists and
//! blocking pops, with Redis's replies and errors.

mod common;

use bytes::Bytes;
use common::*;
use fencelock_core::{Command, Error, Event, KeyChange, Reply, SetCondition, SetExpiry, SetRequest, WaitEnd};

fn get(d: &Driver, key: &str) -> Reply {
    d.read(Command::Get { key: b(key) })
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(b(s))
}

#[test]
fn set_nx_px_is_a_redlock_acquire_with_a_fence() {
    let mut d = Driver::default();
    assert_eq!(d.ok(set_nx_px("lock", "tok1", 30_000)), Reply::Ok);
    assert_eq!(d.ok(set_nx_px("lock", "tok2", 30_000)), Reply::Nil);
    assert_eq!(get(&d, "lock"), bulk("tok1"));
    assert_eq!(d.read(Command::PTtl { key: b("lock") }), Reply::Int(30_000));
    assert_eq!(d.read(Command::Fence { name: b("lock") }), Reply::Int(1));
    d.advance(30_001);
    assert_eq!(get(&d, "lock"), Reply::Nil);
    assert_eq!(d.ok(set_nx_px("lock", "tok2", 30_000)), Reply::Ok);
    assert_eq!(d.read(Command::Fence { name: b("lock") }), Reply::Int(d.index as i64));
}

#[test]
fn every_set_that_creates_a_key_records_a_fence_and_overwrites_keep_it() {
    let mut d = Driver::default();
    d.ok(Command::Set(set("plain", "v1")));
    let created = int(d.read(Command::Fence { name: b("plain") }));
    assert_eq!(created, d.index as i64, "a plain SET creation is fenced too (node-redlock uses plain SET)");
    d.ok(Command::Set(set("plain", "v2")));
    assert_eq!(int(d.read(Command::Fence { name: b("plain") })), created);
    d.ok(Command::Del { keys: vec![b("plain")] });
    d.ok(Command::Set(set("plain", "v3")));
    assert!(int(d.read(Command::Fence { name: b("plain") })) > created);
    // Keys made by INCR, HSET or LPUSH are not SET-based locks and carry no fence.
    d.ok(Command::IncrBy { key: b("n"), delta: 1 });
    assert_eq!(d.read(Command::Fence { name: b("n") }), Reply::Nil);
}

#[test]
fn set_xx_get_keepttl_and_clear() {
    let mut d = Driver::default();
    let xx = |v: &str| Command::Set(SetRequest { condition: SetCondition::IfPresent, ..set("k", v) });
    assert_eq!(d.ok(xx("v0")), Reply::Nil);
    assert_eq!(get(&d, "k"), Reply::Nil);
    d.ok(Command::Set(SetRequest { expiry: SetExpiry::InMs(5_000), ..set("k", "v1") }));
    assert_eq!(d.ok(Command::Set(SetRequest { expiry: SetExpiry::Keep, get: true, ..set("k", "v2") })), bulk("v1"));
    assert_eq!(d.read(Command::PTtl { key: b("k") }), Reply::Int(5_000));
    assert_eq!(d.ok(xx("v3")), Reply::Ok);
    assert_eq!(d.read(Command::PTtl { key: b("k") }), Reply::Int(-1), "SET without options clears the TTL");
    // NX + GET on an existing key returns the old value and does not write.
    let nx_get = SetRequest { condition: SetCondition::IfAbsent, get: true, ..set("k", "v4") };
    assert_eq!(d.ok(Command::Set(nx_get)), bulk("v3"));
    assert_eq!(get(&d, "k"), bulk("v3"));
    // A past PXAT (InMs(0)) writes and deletes at once.
    assert_eq!(d.ok(Command::Set(SetRequest { expiry: SetExpiry::InMs(0), ..set("k", "gone") })), Reply::Ok);
    assert_eq!(get(&d, "k"), Reply::Nil);
}

#[test]
fn set_get_on_a_hash_is_wrongtype_but_plain_set_overwrites() {
    let mut d = Driver::default();
    d.ok(Command::HSet { key: b("h"), pairs: vec![(b("f"), b("v"))] });
    assert_eq!(d.err(Command::Set(SetRequest { get: true, ..set("h", "x") })), Error::WrongType);
    assert_eq!(d.sm.read(&Command::Get { key: b("h") }), Err(Error::WrongType));
    assert_eq!(d.ok(Command::Set(set("h", "x"))), Reply::Ok);
    assert_eq!(d.read(Command::Type { key: b("h") }), bulk("string"));
}

#[test]
fn del_exists_expire_persist_pttl() {
    let mut d = Driver::default();
    d.ok(Command::Set(set("a", "1")));
    d.ok(Command::Set(set("b", "2")));
    assert_eq!(d.read(Command::Exists { keys: vec![b("a"), b("a"), b("c")] }), Reply::Int(2));
    assert_eq!(d.ok(Command::PExpire { key: b("a"), ttl_ms: 1_000 }), Reply::Int(1));
    assert_eq!(d.ok(Command::PExpire { key: b("nope"), ttl_ms: 1_000 }), Reply::Int(0));
    assert_eq!(d.read(Command::PTtl { key: b("a") }), Reply::Int(1_000));
    assert_eq!(d.ok(Command::Persist { key: b("a") }), Reply::Int(1));
    assert_eq!(d.ok(Command::Persist { key: b("a") }), Reply::Int(0));
    assert_eq!(d.read(Command::PTtl { key: b("a") }), Reply::Int(-1));
    assert_eq!(d.read(Command::PTtl { key: b("nope") }), Reply::Int(-2));
    assert_eq!(d.ok(Command::PExpire { key: b("b"), ttl_ms: 0 }), Reply::Int(1));
    assert_eq!(get(&d, "b"), Reply::Nil);
    let out = d.run(Command::Del { keys: vec![b("a"), b("b"), b("a")] });
    assert_eq!(out.reply, Ok(Reply::Int(1)));
    assert_eq!(out.events, vec![Event::KeyChanged { key: b("a"), change: KeyChange::Deleted }]);
    assert_eq!(d.read(Command::DbSize), Reply::Int(0));
}

#[test]
fn ttl_expiry_emits_an_event_at_the_deadline_not_before() {
    let mut d = Driver::default();
    d.ok(Command::Set(SetRequest { expiry: SetExpiry::InMs(250), ..set("k", "v") }));
    assert!(d.advance(250).is_empty());
    assert_eq!(d.advance(1), vec![Event::KeyChanged { key: b("k"), change: KeyChange::Expired }]);
}

#[test]
fn incr_family_follows_redis_integer_rules() {
    let mut d = Driver::default();
    assert_eq!(d.ok(Command::IncrBy { key: b("n"), delta: 1 }), Reply::Int(1));
    assert_eq!(d.ok(Command::IncrBy { key: b("n"), delta: -5 }), Reply::Int(-4));
    assert_eq!(get(&d, "n"), bulk("-4"));
    for bad in ["", " 1", "+1", "01", "-0", "1.5", "abc", "99999999999999999999"] {
        d.ok(Command::Set(set("s", bad)));
        assert_eq!(d.err(Command::IncrBy { key: b("s"), delta: 1 }), Error::NotInteger, "{bad:?}");
    }
    d.ok(Command::Set(set("max", &i64::MAX.to_string())));
    assert_eq!(d.err(Command::IncrBy { key: b("max"), delta: 1 }), Error::Overflow);
    d.ok(Command::Set(SetRequest { expiry: SetExpiry::InMs(9_000), ..set("t", "1") }));
    d.ok(Command::IncrBy { key: b("t"), delta: 1 });
    assert_eq!(d.read(Command::PTtl { key: b("t") }), Reply::Int(9_000), "INCR keeps the TTL");
    d.ok(Command::HSet { key: b("h"), pairs: vec![(b("f"), b("v"))] });
    assert_eq!(d.err(Command::IncrBy { key: b("h"), delta: 1 }), Error::WrongType);
}

#[test]
fn keys_and_scan_are_sorted_and_filtered() {
    let mut d = Driver::default();
    for k in ["lock:b", "lock:a", "other", "lock:c"] {
        d.ok(Command::Set(set(k, "v")));
    }
    d.ok(Command::HSet { key: b("lock:h"), pairs: vec![(b("f"), b("v"))] });
    assert_eq!(
        d.read(Command::Keys { pattern: b("lock:*") }),
        Reply::Array(vec![bulk("lock:a"), bulk("lock:b"), bulk("lock:c"), bulk("lock:h")])
    );
    assert_eq!(d.read(Command::Keys { pattern: b("*er") }), Reply::Array(vec![bulk("other")]));
    // SCAN two at a time, resuming after the last key examined.
    let mut after: Option<Bytes> = None;
    let mut seen = Vec::new();
    loop {
        let Reply::Array(parts) =
            d.read(Command::Scan { after: after.clone(), pattern: Some(b("lock:*")), count: 2, kind: None })
        else {
            panic!()
        };
        let Reply::Array(keys) = &parts[1] else { panic!() };
        seen.extend(keys.iter().cloned());
        match &parts[0] {
            Reply::Bulk(next) => after = Some(next.clone()),
            Reply::Nil => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, vec![bulk("lock:a"), bulk("lock:b"), bulk("lock:c"), bulk("lock:h")]);
    let Reply::Array(parts) = d.read(Command::Scan { after: None, pattern: None, count: 100, kind: Some(b("hash")) })
    else {
        panic!()
    };
    assert_eq!(parts, vec![Reply::Nil, Reply::Array(vec![bulk("lock:h")])]);
}

#[test]
fn hashes() {
    let mut d = Driver::default();
    let pairs = vec![(b("f1"), b("1")), (b("f2"), b("2")), (b("f1"), b("3"))];
    assert_eq!(d.ok(Command::HSet { key: b("h"), pairs }), Reply::Int(2));
    assert_eq!(d.read(Command::HGet { key: b("h"), field: b("f1") }), bulk("3"));
    // A field new to an existing hash counts once however often it is repeated.
    let again = vec![(b("f3"), b("x")), (b("f3"), b("y")), (b("f1"), b("4"))];
    assert_eq!(d.ok(Command::HSet { key: b("h"), pairs: again }), Reply::Int(1));
    assert_eq!(d.ok(Command::HDel { key: b("h"), fields: vec![b("f3")] }), Reply::Int(1));
    d.ok(Command::HSet { key: b("h"), pairs: vec![(b("f1"), b("3"))] });
    assert_eq!(d.read(Command::HGet { key: b("h"), field: b("zz") }), Reply::Nil);
    assert_eq!(d.read(Command::HExists { key: b("h"), field: b("f2") }), Reply::Int(1));
    assert_eq!(d.ok(Command::HIncrBy { key: b("h"), field: b("f2"), delta: 40 }), Reply::Int(42));
    assert_eq!(d.ok(Command::HIncrBy { key: b("h"), field: b("new"), delta: -1 }), Reply::Int(-1));
    d.ok(Command::HSet { key: b("h"), pairs: vec![(b("text"), b("abc"))] });
    assert_eq!(d.err(Command::HIncrBy { key: b("h"), field: b("text"), delta: 1 }), Error::HashNotInteger);
    assert_eq!(
        d.read(Command::HGetAll { key: b("h") }),
        Reply::Array(["f1", "3", "f2", "42", "new", "-1", "text", "abc"].iter().map(|s| bulk(s)).collect())
    );
    assert_eq!(d.ok(Command::HDel { key: b("h"), fields: vec![b("f1"), b("f1"), b("zz")] }), Reply::Int(1));
    assert_eq!(d.ok(Command::HDel { key: b("h"), fields: vec![b("f2"), b("new"), b("text")] }), Reply::Int(3));
    assert_eq!(d.read(Command::Exists { keys: vec![b("h")] }), Reply::Int(0), "an empty hash is deleted");
    d.ok(Command::Set(set("s", "v")));
    assert_eq!(d.err(Command::HSet { key: b("s"), pairs: vec![(b("f"), b("v"))] }), Error::WrongType);
    assert_eq!(d.sm.read(&Command::HGet { key: b("s"), field: b("f") }), Err(Error::WrongType));
    assert_eq!(d.read(Command::HGetAll { key: b("none") }), Reply::Array(vec![]));
}

#[test]
fn lists_push_pop_and_count() {
    let mut d = Driver::default();
    assert_eq!(d.ok(Command::Push { key: b("l"), values: vec![b("a"), b("b")], left: true }), Reply::Int(2));
    assert_eq!(d.ok(Command::Push { key: b("l"), values: vec![b("c")], left: false }), Reply::Int(3));
    // LPUSH a b gives [b, a]; RPUSH c gives [b, a, c].
    assert_eq!(d.ok(Command::Pop { key: b("l"), count: None, left: true }), bulk("b"));
    assert_eq!(
        d.ok(Command::Pop { key: b("l"), count: Some(5), left: true }),
        Reply::Array(vec![bulk("a"), bulk("c")])
    );
    assert_eq!(d.ok(Command::Pop { key: b("l"), count: None, left: true }), Reply::Nil);
    assert_eq!(d.read(Command::Type { key: b("l") }), bulk("none"));
    d.ok(Command::Set(set("s", "v")));
    assert_eq!(d.err(Command::Push { key: b("s"), values: vec![b("x")], left: true }), Error::WrongType);
    assert_eq!(d.err(Command::Pop { key: b("s"), count: None, left: true }), Error::WrongType);
}

#[test]
fn blocking_pop_serves_waiters_in_order_and_times_out() {
    let mut d = Driver::default();
    let w1 = waiter(d.ok(Command::BlockingPop { keys: vec![b("q1"), b("q2")], wait_ms: Some(5_000), left: true }));
    let w2 = waiter(d.ok(Command::BlockingPop { keys: vec![b("q2")], wait_ms: None, left: true }));
    let out = d.run(Command::Push { key: b("q2"), values: vec![b("x")], left: false });
    assert_eq!(out.reply, Ok(Reply::Int(1)), "the reply counts the element before it is handed over");
    assert!(out.events.contains(&popped(w1, "q2", "x")), "{:?}", out.events);
    assert_eq!(d.read(Command::Exists { keys: vec![b("q2")] }), Reply::Int(0));
    let out = d.run(Command::Push { key: b("q1"), values: vec![b("y")], left: false });
    assert!(!out.events.iter().any(|e| matches!(e, Event::Popped { .. })), "w1 left both queues when served");
    let out = d.run(Command::Push { key: b("q2"), values: vec![b("z")], left: false });
    assert!(out.events.contains(&popped(w2, "q2", "z")));
    // Immediate pop when an element is there.
    assert_eq!(
        d.ok(Command::BlockingPop { keys: vec![b("empty"), b("q1")], wait_ms: Some(1), left: true }),
        Reply::Array(vec![bulk("q1"), bulk("y")])
    );
    let w3 = waiter(d.ok(Command::BlockingPop { keys: vec![b("q3")], wait_ms: Some(100), left: true }));
    assert_eq!(d.advance(101), vec![Event::WaitEnded { waiter: w3, reason: WaitEnd::TimedOut }]);
    d.ok(Command::Set(set("s", "v")));
    assert_eq!(d.err(Command::BlockingPop { keys: vec![b("s")], wait_ms: None, left: true }), Error::WrongType);
}

#[test]
fn publish_is_an_event_and_inside_a_failed_script_it_is_not_sent() {
    let mut d = Driver::default();
    let out = d.run(Command::Publish { channel: b("ch"), message: b("hi") });
    assert_eq!(out.reply, Ok(Reply::Int(0)));
    assert_eq!(out.events, vec![Event::Published { channel: b("ch"), message: b("hi") }]);
    d.index += 1;
    let out = d.sm.apply_script(d.index, d.now_ms, |s| -> Result<(), Error> {
        s.call(Command::Publish { channel: b("ch"), message: b("lost") })?;
        Err(Error::invalid("fail after publishing"))
    });
    assert!(out.events.is_empty(), "a rolled-back script publishes nothing");
    d.index += 1;
    let out =
        d.sm.apply_script(d.index, d.now_ms, |s| s.call(Command::Publish { channel: b("ch"), message: b("kept") }));
    assert_eq!(out.result, Ok(Reply::Int(0)));
    assert_eq!(out.events, vec![Event::Published { channel: b("ch"), message: b("kept") }]);
}

#[test]
fn keyspace_stats_count_live_keys_and_ttls() {
    let mut d = Driver::default();
    d.ok(Command::Set(set("a", "1")));
    d.ok(set_nx_px("b", "2", 1_000));
    d.ok(set_nx_px("c", "3", 3_000));
    assert_eq!(d.sm.keyspace_stats(), (3, 2, 2_000));
    d.advance(1_001);
    assert_eq!(d.sm.keyspace_stats(), (2, 1, 1_999));
}

/// Past `KEYSPACE_STATS_SAMPLE` keys INFO's line is estimated from a sample (walking
/// millions of keys under the state lock stalled every client): exact counts for
/// uniform tables, and it looks at no more than the sample.
#[test]
fn keyspace_stats_past_the_sample_are_scaled_from_it() {
    let mut d = Driver::default();
    let n = fencelock_core::KEYSPACE_STATS_SAMPLE * 3;
    for i in 0..n {
        // Every other key has a TTL. Applied directly: the driver's invariant check
        // after every entry makes a fill of this size quadratic.
        let command = if i % 2 == 0 {
            Command::Set(set(&format!("k{i:06}"), "v"))
        } else {
            set_nx_px(&format!("k{i:06}"), "v", 60_000)
        };
        d.index += 1;
        assert!(d.sm.apply(d.index, d.now_ms, command).reply.is_ok());
    }
    d.sm.check_invariants().unwrap();
    let (keys, expires, avg_ttl) = d.sm.keyspace_stats();
    assert_eq!(keys, n as u64);
    assert_eq!(expires, n as u64 / 2);
    assert!(avg_ttl > 59_000 && avg_ttl <= 60_000, "{avg_ttl}");
}
