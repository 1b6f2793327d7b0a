//! Black-box protocol tests in the style of mini-redis's: start the real `fencelock`
//! binary on an ephemeral port, talk raw RESP over TCP, assert the exact reply bytes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{encode, parse_all, wait_until, Client, Reply, Server};

/// A bulk string as it travels.
fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

/// An array of bulk strings as it travels.
fn bulks(items: &[&str]) -> String {
    let mut out = format!("*{}\r\n", items.len());
    for item in items {
        out += &bulk(item);
    }
    out
}

/// LOCK's RESP2 grant: a flat array fence, token, holds, ttl.
fn grant2(fence: i64, token: &str, holds: i64, ttl: i64) -> String {
    format!(
        "*8\r\n{}:{fence}\r\n{}{}{}:{holds}\r\n{}:{ttl}\r\n",
        bulk("fence"),
        bulk("token"),
        bulk(token),
        bulk("holds"),
        bulk("ttl")
    )
}

/// Takes a lock and returns its fence (asserting the whole reply).
fn lock(c: &mut Client, name: &str, ttl: i64, token: &str) -> i64 {
    let reply = c.cmd(&["LOCK", name, &ttl.to_string(), "TOKEN", token]);
    let fence = reply.field("fence").int();
    assert_eq!(reply, grant_reply(fence, token, 1, ttl), "LOCK {name}");
    fence
}

fn grant_reply(fence: i64, token: &str, holds: i64, ttl: i64) -> Reply {
    parse_all(grant2(fence, token, holds, ttl).as_bytes()).remove(0)
}

/// `LOCK.INFO` waiters count.
fn waiters(c: &mut Client, name: &str) -> i64 {
    c.cmd(&["LOCK.INFO", name]).field("waiters").int()
}

#[test]
fn reply_reader_handles_every_type() {
    let input = b"+OK\r\n-ERR x\r\n:-5\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n_\r\n#t\r\n#f\r\n,1.5\r\n(123\r\n\
=7\r\ntxt:abc\r\n!3\r\nbad\r\n*2\r\n*1\r\n%1\r\n+k\r\n*0\r\n~1\r\n:1\r\n>2\r\n+a\r\n|1\r\n+x\r\n+y\r\n:2\r\n";
    let replies = parse_all(input);
    assert_eq!(
        replies,
        vec![
            Reply::Simple("OK".into()),
            Reply::Error("ERR x".into()),
            Reply::Int(-5),
            Reply::Bulk(b"a\r\n".to_vec()),
            Reply::NullBulk,
            Reply::NullArray,
            Reply::Null,
            Reply::Bool(true),
            Reply::Bool(false),
            Reply::Double("1.5".into()),
            Reply::BigNumber("123".into()),
            Reply::Verbatim("txt".into(), b"abc".to_vec()),
            Reply::BlobError(b"bad".to_vec()),
            Reply::Array(vec![
                Reply::Array(vec![Reply::Map(vec![(Reply::Simple("k".into()), Reply::Array(vec![]))])]),
                Reply::Set(vec![Reply::Int(1)]),
            ]),
            Reply::Push(vec![Reply::Simple("a".into()), Reply::Int(2)]),
        ]
    );
}

#[test]
fn ping_and_echo() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["PING"]), "+PONG\r\n");
    assert_eq!(c.raw(&["ping", "hello"]), bulk("hello"));
    assert_eq!(c.raw(&["ECHO", "a b\r\nc"]), bulk("a b\r\nc"));
    assert_eq!(c.raw(&["ECHO", ""]), "$0\r\n\r\n");
    assert_eq!(c.raw(&["ECHO"]), "-ERR wrong number of arguments for 'echo' command\r\n");
    assert_eq!(c.raw(&["PING", "a", "b"]), "-ERR wrong number of arguments for 'ping' command\r\n");
    c.assert_alive();
}

#[test]
fn client_list_shows_each_connections_last_command() {
    let server = Server::start();
    let (mut a, mut b) = (server.connect(), server.connect());
    assert_eq!(a.raw(&["ECHO", "x"]), bulk("x"));
    assert_eq!(b.raw(&["PING"]), "+PONG\r\n");
    let list = a.raw(&["CLIENT", "LIST"]);
    assert!(list.contains("cmd=client"), "{list}");
    assert!(list.contains("cmd=ping"), "{list}");
    let list = b.raw(&["CLIENT", "LIST"]);
    assert!(!list.contains("cmd=ping"), "b's newest command is CLIENT now: {list}");
}

#[test]
fn inline_commands() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw_bytes(b"PING\r\n"), "+PONG\r\n");
    assert_eq!(c.raw_bytes(b"SET k v\r\n"), "+OK\r\n");
    assert_eq!(c.raw_bytes(b"GET k\n"), bulk("v"), "a bare LF ends an inline line");
    assert_eq!(c.raw_bytes(b"  set   \"a key\"  'x y'\r\n"), "+OK\r\n");
    assert_eq!(c.raw(&["GET", "a key"]), bulk("x y"));
    assert_eq!(c.raw_bytes(b"ECHO \"tab\\there\"\r\n"), bulk("tab\there"));
    // Blank lines are ignored; the next command is answered.
    assert_eq!(c.raw_bytes(b"\r\n\r\nPING\r\n"), "+PONG\r\n");
    assert_eq!(c.raw_bytes(b"ECHO \"unbalanced\r\n"), "-ERR Protocol error: unbalanced quotes in request\r\n");
    c.assert_alive();
}

/// A request refused while queueing (a limit, unbalanced quotes) fails the transaction
/// like any other queueing error: EXEC must not commit the rest without it.
#[test]
fn a_request_refused_inside_multi_aborts_the_transaction() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.raw(&["SET", "a", "1"]), "+QUEUED\r\n");
    assert_eq!(c.raw_bytes(b"SET b \"unbalanced\r\n"), "-ERR Protocol error: unbalanced quotes in request\r\n");
    assert_eq!(c.raw(&["SET", "c", "1"]), "+QUEUED\r\n");
    let exec = c.raw(&["EXEC"]);
    assert!(exec.starts_with("-EXECABORT"), "{exec}");
    assert_eq!(c.raw(&["EXISTS", "a", "c"]), ":0\r\n", "nothing was committed");
    c.assert_alive();
}

/// EXEC runs the queue as a script would: a command a script may not run (CFG.SET
/// here) used to be QUEUED, then refused at EXEC while the rest committed. It now
/// aborts the transaction when queued. A MULTI is bounded by bytes too: its commands
/// become one log entry, and DELs of huge keys (checked only when applied) made an
/// entry past the WAL's record bound, which stopped the node.
#[test]
fn multi_refuses_what_a_script_may_not_run_and_past_64_mib() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.raw(&["SET", "a", "1"]), "+QUEUED\r\n");
    assert_eq!(
        c.raw(&["CFG.SET", "x", "y"]),
        "-ERR this command cannot be used inside MULTI on fencelock (keyspace commands only)\r\n"
    );
    assert!(c.raw(&["EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(c.raw(&["EXISTS", "a"]), ":0\r\n", "nothing was committed");
    assert!(c.cmd(&["CFG.GET", "x"]).is_null());

    assert_eq!(c.raw(&["MULTI"]), "+OK\r\n");
    let huge = "k".repeat(8 * 1024 * 1024);
    // Each DEL carries 3 + 8 MiB bytes: the eighth passes 64 MiB.
    for i in 0..7 {
        assert_eq!(c.raw(&["DEL", &huge]), "+QUEUED\r\n", "DEL {i}");
    }
    assert_eq!(c.raw(&["DEL", &huge]), "-LIMIT multi-bytes limit exceeded (max 67108864)\r\n");
    assert!(c.raw(&["EXEC"]).starts_with("-EXECABORT"));
    c.assert_alive();
    server.connect().assert_alive();
}

#[test]
fn pipelined_replies_come_back_in_order() {
    let server = Server::start();
    let mut c = server.connect();
    let mut request = Vec::new();
    let mut expected = String::new();
    for i in 0..200 {
        request.extend(encode(&["SET", &format!("p:{i}"), &i.to_string()]));
        expected += "+OK\r\n";
        request.extend(encode(&["INCR", "pipe:counter"]));
        expected += &format!(":{}\r\n", i + 1);
        if i % 10 == 0 {
            request.extend_from_slice(b"PING\r\n");
            expected += "+PONG\r\n";
            request.extend(encode(&["ECHO", &format!("e{i}")]));
            expected += &bulk(&format!("e{i}"));
        }
    }
    for i in 0..200 {
        request.extend(encode(&["GET", &format!("p:{i}")]));
        expected += &bulk(&i.to_string());
    }
    request.extend(encode(&["GET", "nothing"]));
    expected += "$-1\r\n";
    c.send(&request);
    let mut got = String::new();
    while got.len() < expected.len() {
        let (_, raw) = c.read_raw();
        got += &String::from_utf8_lossy(&raw);
        assert!(expected.starts_with(&got), "replies out of order: got so far {got:?}");
    }
    assert_eq!(got, expected);
    c.assert_alive();
}

#[test]
fn strings_and_ttls() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["SET", "lk", "v1", "NX", "PX", "30000"]), "+OK\r\n");
    assert_eq!(c.raw(&["SET", "lk", "v2", "PX", "30000", "NX"]), "$-1\r\n", "NX on an existing key");
    assert_eq!(c.raw(&["GET", "lk"]), bulk("v1"));
    let pttl = c.cmd(&["PTTL", "lk"]).int();
    assert!((25_000..=30_000).contains(&pttl), "PTTL {pttl}");
    let ttl = c.cmd(&["TTL", "lk"]).int();
    assert!((25..=30).contains(&ttl), "TTL {ttl}");
    assert_eq!(c.raw(&["PERSIST", "lk"]), ":1\r\n");
    assert_eq!(c.raw(&["PTTL", "lk"]), ":-1\r\n");
    assert_eq!(c.raw(&["TTL", "lk"]), ":-1\r\n");
    assert_eq!(c.raw(&["PERSIST", "lk"]), ":0\r\n");
    assert_eq!(c.raw(&["PEXPIRE", "lk", "100000"]), ":1\r\n");
    let pttl = c.cmd(&["PTTL", "lk"]).int();
    assert!((95_000..=100_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(c.raw(&["PEXPIRE", "missing", "100"]), ":0\r\n");
    assert_eq!(c.raw(&["EXPIRE", "lk", "50"]), ":1\r\n");
    let ttl = c.cmd(&["TTL", "lk"]).int();
    assert!((45..=50).contains(&ttl), "TTL {ttl}");
    assert_eq!(c.raw(&["SET", "lk", "v3", "XX", "KEEPTTL", "GET"]), bulk("v1"));
    assert!(c.cmd(&["PTTL", "lk"]).int() > 0, "KEEPTTL keeps the TTL");
    assert_eq!(c.raw(&["SET", "lk", "v4"]), "+OK\r\n");
    assert_eq!(c.raw(&["PTTL", "lk"]), ":-1\r\n", "a plain SET clears the TTL");
    assert_eq!(c.raw(&["SET", "xx", "v", "XX"]), "$-1\r\n");
    assert_eq!(c.raw(&["EXISTS", "lk", "missing", "lk"]), ":2\r\n");
    assert_eq!(c.raw(&["DEL", "lk", "missing"]), ":1\r\n");
    assert_eq!(c.raw(&["GET", "lk"]), "$-1\r\n");
    assert_eq!(c.raw(&["PTTL", "lk"]), ":-2\r\n");
    assert_eq!(c.raw(&["TTL", "lk"]), ":-2\r\n");
    assert_eq!(c.raw(&["EXISTS", "lk"]), ":0\r\n");

    // A short TTL really expires.
    assert_eq!(c.raw(&["SET", "short", "v", "PX", "200"]), "+OK\r\n");
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "the key to expire", || c.cmd(&["GET", "short"]).is_null().then_some(()));
    assert!(started.elapsed() >= Duration::from_millis(150), "expired early: {:?}", started.elapsed());
    assert_eq!(c.raw(&["EXISTS", "short"]), ":0\r\n");
    // Absolute expiry times, on the server's wall clock (the same machine's).
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(c.raw(&["SET", "at", "v", "PXAT", &(now_ms + 20_000).to_string()]), "+OK\r\n");
    let pttl = c.cmd(&["PTTL", "at"]).int();
    assert!((15_000..=20_000).contains(&pttl), "PXAT gave PTTL {pttl}");
    assert_eq!(c.raw(&["SET", "at", "v", "EXAT", &(now_ms / 1000 + 20).to_string()]), "+OK\r\n");
    let ttl = c.cmd(&["TTL", "at"]).int();
    assert!((15..=20).contains(&ttl), "EXAT gave TTL {ttl}");
    assert_eq!(c.raw(&["SET", "past", "v", "EXAT", "1"]), "+OK\r\n");
    assert_eq!(c.raw(&["GET", "past"]), "$-1\r\n", "a past EXAT writes the key and it is gone at once");
    assert_eq!(c.raw(&["TYPE", "past"]), "+none\r\n");
    assert_eq!(c.raw(&["SET", "neg", "v"]), "+OK\r\n");
    assert_eq!(c.raw(&["EXPIRE", "neg", "-1"]), ":1\r\n");
    assert_eq!(c.raw(&["EXISTS", "neg"]), ":0\r\n", "a negative EXPIRE deletes");
    // PEXPIRE 0 deletes.
    assert_eq!(c.raw(&["SET", "gone", "v"]), "+OK\r\n");
    assert_eq!(c.raw(&["PEXPIRE", "gone", "0"]), ":1\r\n");
    assert_eq!(c.raw(&["EXISTS", "gone"]), ":0\r\n");
}

#[test]
fn counters() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["INCR", "c"]), ":1\r\n");
    assert_eq!(c.raw(&["INCRBY", "c", "10"]), ":11\r\n");
    assert_eq!(c.raw(&["DECR", "c"]), ":10\r\n");
    assert_eq!(c.raw(&["INCRBY", "c", "-20"]), ":-10\r\n");
    assert_eq!(c.raw(&["DECRBY", "c", "5"]), ":-15\r\n");
    assert_eq!(c.raw(&["GET", "c"]), bulk("-15"));
    assert_eq!(c.raw(&["DECR", "fresh"]), ":-1\r\n");
    assert_eq!(c.raw(&["SET", "big", "9223372036854775807"]), "+OK\r\n");
    assert_eq!(c.raw(&["INCR", "big"]), "-ERR increment or decrement would overflow\r\n");
    assert_eq!(c.raw(&["SET", "s", "abc"]), "+OK\r\n");
    assert_eq!(c.raw(&["INCR", "s"]), "-ERR value is not an integer or out of range\r\n");
    assert_eq!(c.raw(&["SET", "s", " 1"]), "+OK\r\n");
    assert_eq!(c.raw(&["INCR", "s"]), "-ERR value is not an integer or out of range\r\n");
    c.assert_alive();
}

#[test]
fn keys_scan_type_dbsize() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["DBSIZE"]), ":0\r\n");
    assert_eq!(c.raw(&["KEYS", "*"]), "*0\r\n");
    for i in [3, 1, 2, 5, 4] {
        assert_eq!(c.raw(&["SET", &format!("k:{i}"), "v"]), "+OK\r\n");
    }
    assert_eq!(c.raw(&["SET", "other", "v"]), "+OK\r\n");
    assert_eq!(c.raw(&["HSET", "h", "f", "v"]), ":1\r\n");
    assert_eq!(c.raw(&["RPUSH", "l", "a"]), ":1\r\n");
    assert_eq!(c.raw(&["DBSIZE"]), ":8\r\n");
    assert_eq!(c.raw(&["KEYS", "k:*"]), bulks(&["k:1", "k:2", "k:3", "k:4", "k:5"]));
    assert_eq!(c.raw(&["KEYS", "k:[2-3]"]), bulks(&["k:2", "k:3"]));
    assert_eq!(c.raw(&["KEYS", "?"]), bulks(&["h", "l"]));
    assert_eq!(c.raw(&["TYPE", "k:1"]), "+string\r\n");
    assert_eq!(c.raw(&["TYPE", "h"]), "+hash\r\n");
    assert_eq!(c.raw(&["TYPE", "l"]), "+list\r\n");
    assert_eq!(c.raw(&["TYPE", "nothing"]), "+none\r\n");

    for i in 0..40 {
        assert_eq!(c.raw(&["SET", &format!("s:{i:02}"), "v"]), "+OK\r\n");
    }
    // Iterate SCAN to the end, with MATCH and a small COUNT.
    let scan_all = |c: &mut Client, extra: &[&str]| {
        let mut cursor = "0".to_string();
        let mut seen = Vec::new();
        let mut rounds = 0;
        loop {
            let mut args = vec!["SCAN", &cursor];
            args.extend_from_slice(extra);
            let reply = c.cmd(&args);
            let [next, keys] = reply.items() else { panic!("SCAN reply {reply:?}") };
            seen.extend(keys.items().iter().map(Reply::text));
            cursor = next.text();
            rounds += 1;
            assert!(rounds < 1000, "SCAN never ends");
            if cursor == "0" {
                return (seen, rounds);
            }
        }
    };
    let (seen, rounds) = scan_all(&mut c, &["MATCH", "s:*", "COUNT", "7"]);
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "SCAN returned a key twice: {seen:?}");
    let expected: BTreeSet<String> = (0..40).map(|i| format!("s:{i:02}")).collect();
    assert_eq!(unique, expected);
    assert!(rounds >= 2, "COUNT 7 over 40 keys took {rounds} round(s)");
    let (all, _) = scan_all(&mut c, &[]);
    let keys: Vec<String> = c.cmd(&["KEYS", "*"]).items().iter().map(Reply::text).collect();
    assert_eq!(all.iter().cloned().collect::<BTreeSet<_>>(), keys.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(all.len(), keys.len());
    let (hashes, _) = scan_all(&mut c, &["TYPE", "hash"]);
    assert_eq!(hashes, vec!["h".to_string()]);
    assert_eq!(c.raw(&["SCAN", "999999"]), "-ERR invalid cursor\r\n");
    assert_eq!(c.raw(&["SCAN", "x"]), "-ERR invalid cursor\r\n");
    c.assert_alive();
    // A cursor works on any connection to the node (a pooled client moves between
    // them), and two scans running at once never continue each other: two scans with
    // different patterns, each step on the other connection than the last.
    let mut d = server.connect();
    let mut scans = [("s:0*", "0".to_string(), BTreeSet::new()), ("s:1*", "0".to_string(), BTreeSet::new())];
    for round in 0..200 {
        let (pattern, cursor, seen) = &mut scans[round % 2];
        if round >= 2 && cursor == "0" {
            continue;
        }
        let conn = if (round / 2) % 2 == 0 { &mut c } else { &mut d };
        let reply = conn.cmd(&["SCAN", cursor, "MATCH", pattern, "COUNT", "3"]);
        let [next, keys] = reply.items() else { panic!("SCAN reply {reply:?}") };
        seen.extend(keys.items().iter().map(Reply::text));
        *cursor = next.text();
    }
    for (pattern, cursor, seen) in &scans {
        assert_eq!(cursor, "0", "{pattern} ended");
        let prefix = &pattern[..3];
        let expected: BTreeSet<String> =
            (0..40).map(|i| format!("s:{i:02}")).filter(|k| k.starts_with(prefix)).collect();
        assert_eq!(seen, &expected, "{pattern}");
    }
}

#[test]
fn hashes() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["HSET", "h", "f1", "v1", "f2", "v2"]), ":2\r\n");
    assert_eq!(c.raw(&["HSET", "h", "f1", "v1b"]), ":0\r\n");
    assert_eq!(c.raw(&["HGET", "h", "f1"]), bulk("v1b"));
    assert_eq!(c.raw(&["HGET", "h", "nope"]), "$-1\r\n");
    assert_eq!(c.raw(&["HGET", "nohash", "f"]), "$-1\r\n");
    assert_eq!(c.raw(&["HEXISTS", "h", "f2"]), ":1\r\n");
    assert_eq!(c.raw(&["HEXISTS", "h", "nope"]), ":0\r\n");
    assert_eq!(c.raw(&["HINCRBY", "h", "n", "5"]), ":5\r\n");
    assert_eq!(c.raw(&["HINCRBY", "h", "n", "-7"]), ":-2\r\n");
    assert_eq!(c.raw(&["HINCRBY", "h", "f1", "1"]), "-ERR hash value is not an integer\r\n");
    assert_eq!(c.raw(&["HGETALL", "h"]), bulks(&["f1", "v1b", "f2", "v2", "n", "-2"]));
    assert_eq!(c.raw(&["HMSET", "h", "a", "1"]), "+OK\r\n");
    assert_eq!(c.raw(&["HDEL", "h", "f1", "nope", "a"]), ":2\r\n");
    assert_eq!(c.raw(&["HGETALL", "h"]), bulks(&["f2", "v2", "n", "-2"]));
    assert_eq!(c.raw(&["HDEL", "h", "f2", "n"]), ":2\r\n");
    assert_eq!(c.raw(&["EXISTS", "h"]), ":0\r\n", "an emptied hash is deleted");
    assert_eq!(c.raw(&["HGETALL", "h"]), "*0\r\n");
    assert_eq!(c.raw(&["HSET", "h", "f"]), "-ERR wrong number of arguments for 'hset' command\r\n");
    c.assert_alive();
}

#[test]
fn lists() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["RPUSH", "l", "a", "b", "c"]), ":3\r\n");
    assert_eq!(c.raw(&["LPUSH", "l", "y", "z"]), ":5\r\n");
    assert_eq!(c.raw(&["LPOP", "l"]), bulk("z"));
    assert_eq!(c.raw(&["RPOP", "l"]), bulk("c"));
    assert_eq!(c.raw(&["LPOP", "l", "2"]), bulks(&["y", "a"]));
    assert_eq!(c.raw(&["LPOP", "l", "5"]), bulks(&["b"]));
    assert_eq!(c.raw(&["EXISTS", "l"]), ":0\r\n", "an emptied list is deleted");
    assert_eq!(c.raw(&["LPOP", "l"]), "$-1\r\n");
    assert_eq!(c.raw(&["LPOP", "l", "-1"]), "-ERR value is out of range, must be positive\r\n");
    assert_eq!(c.raw(&["SET", "s", "v"]), "+OK\r\n");
    assert_eq!(c.raw(&["LPUSH", "s", "x"]), "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    c.assert_alive();
}

#[test]
fn blpop_is_served_by_a_push_from_another_connection() {
    let server = Server::start();
    let mut a = server.connect();
    let mut b = server.connect();
    a.send_cmd(&["BLPOP", "q", "10"]);
    // The pop is queued once INFO counts a blocked client.
    wait_until(Duration::from_secs(5), "BLPOP to block", || {
        b.cmd(&["INFO", "clients"]).text().contains("blocked_clients:1").then_some(())
    });
    assert_eq!(b.raw(&["LPUSH", "q", "x"]), ":1\r\n");
    assert_eq!(String::from_utf8_lossy(&a.read_raw().1), bulks(&["q", "x"]));
    assert_eq!(b.raw(&["LPOP", "q"]), "$-1\r\n", "the element went to the blocked client");
    a.assert_alive();
    // Available at once: no blocking.
    assert_eq!(b.raw(&["RPUSH", "q2", "1", "2"]), ":2\r\n");
    assert_eq!(a.raw(&["BLPOP", "empty", "q2", "1"]), bulks(&["q2", "1"]));
}

#[test]
fn blpop_times_out_with_a_null_array() {
    let server = Server::start();
    let mut c = server.connect();
    let started = Instant::now();
    assert_eq!(c.raw(&["BLPOP", "q", "0.3"]), "*-1\r\n");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "returned after {waited:?}");
    assert!(waited < Duration::from_secs(5), "returned after {waited:?}");
    c.assert_alive();
    assert_eq!(c.raw(&["BLPOP", "q", "-1"]), "-ERR timeout is negative\r\n");
    assert_eq!(c.raw(&["BLPOP", "q", "x"]), "-ERR timeout is not a float or out of range\r\n");
    c.assert_alive();
}

#[test]
fn lock_unlock_renew_fence_info() {
    let server = Server::start();
    let mut c = server.connect();
    let f1 = lock(&mut c, "l1", 30_000, "t1");
    assert!(f1 > 0);
    assert_eq!(c.raw(&["LOCK", "l1", "30000", "TOKEN", "t2"]), "$-1\r\n", "held by another owner");
    // Reentrant: same owner and token, same fence, one more hold.
    assert_eq!(c.raw(&["LOCK", "l1", "30000", "TOKEN", "t1"]), grant2(f1, "t1", 2, 30_000));
    assert_eq!(c.raw(&["FENCE", "l1"]), format!(":{f1}\r\n"));
    let info = c.cmd(&["LOCK.INFO", "l1"]);
    assert_eq!(info.keys(), ["mode", "waiters", "holders"]);
    assert_eq!(info.field("mode").text(), "exclusive");
    assert_eq!(info.field("waiters").int(), 0);
    let [holder] = info.field("holders").items() else { panic!("{info:?}") };
    assert_eq!(holder.keys(), ["owner", "fence", "holds", "ttl", "session", "metadata"]);
    assert_eq!(holder.field("owner").text(), "t1");
    assert_eq!(holder.field("fence").int(), f1);
    assert_eq!(holder.field("holds").int(), 2);
    let ttl = holder.field("ttl").int();
    assert!((25_000..=30_000).contains(&ttl), "ttl {ttl}");
    assert!(holder.field("session").is_null());
    assert_eq!(holder.field("metadata").text(), "");

    let renew = format!("*6\r\n{}:{f1}\r\n{}:2\r\n{}:60000\r\n", bulk("fence"), bulk("holds"), bulk("ttl"));
    assert_eq!(c.raw(&["RENEW", "l1", "t1", "60000"]), renew);
    let not_holder = "-NOTHOLDER not the holder of 'l1' (released, expired, or another token)\r\n";
    assert_eq!(c.raw(&["RENEW", "l1", "wrong", "60000"]), not_holder);
    assert_eq!(c.raw(&["UNLOCK", "l1", "t2"]), not_holder);
    assert_eq!(c.raw(&["UNLOCK", "l1", "t1"]), ":1\r\n");
    assert_eq!(c.raw(&["FENCE", "l1"]), format!(":{f1}\r\n"), "still held once");
    assert_eq!(c.raw(&["UNLOCK", "l1", "t1"]), ":0\r\n");
    assert_eq!(c.raw(&["UNLOCK", "l1", "t1"]), not_holder);
    assert_eq!(c.raw(&["FENCE", "l1"]), "$-1\r\n");
    assert_eq!(
        c.raw(&["LOCK.INFO", "l1"]),
        format!("*6\r\n{}$-1\r\n{}:0\r\n{}*0\r\n", bulk("mode"), bulk("waiters"), bulk("holders"))
    );
    assert_eq!(c.raw(&["RENEW", "l1", "t1", "1000"]), not_holder, "nothing to renew once released");

    let f2 = lock(&mut c, "l1", 30_000, "t2");
    assert!(f2 > f1, "fence {f2} after {f1}");
    // Without TOKEN a random 32-hex-digit token is made up and returned.
    let reply = c.cmd(&["LOCK", "l2", "5000"]);
    let token = reply.field("token").text();
    assert_eq!(token.len(), 32, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert!(reply.field("fence").int() > f2);
    assert_eq!(c.raw(&["UNLOCK", "l2", &token]), ":0\r\n");
    // A key written with SET NX has a fence too.
    assert_eq!(c.raw(&["SET", "nxkey", "v", "NX", "PX", "10000"]), "+OK\r\n");
    let key_fence = c.cmd(&["FENCE", "nxkey"]).int();
    assert!(key_fence > f2);
    c.assert_alive();
}

#[test]
fn lock_argument_errors() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["LOCK", "a"]), "-ERR wrong number of arguments for 'lock' command\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["LOCK", "a", "-5"]), "-ERR ttl must be a non-negative integer\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["LOCK", "a", "10", "BOGUS"]), "-ERR syntax error\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["UNLOCK", "a"]), "-ERR wrong number of arguments for 'unlock' command\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["SESSION.KEEPALIVE", "x"]), "-ERR session id must be a non-negative integer\r\n");
    c.assert_alive();
    assert!(c.cmd(&["LOCK", "a", "0", "TOKEN", "t"]).is_error(), "ttl 0 needs a session");
    c.assert_alive();
    assert_eq!(
        c.raw(&["LOCK", "a", "10", "SESSION", "424242"]),
        "-NOSESSION no such session 424242 (closed or expired)\r\n"
    );
    c.assert_alive();
}

#[test]
fn fences_strictly_increase() {
    let server = Server::start();
    let mut c = server.connect();
    let mut last = 0;
    for i in 0..30 {
        let name = format!("f{}", i % 4);
        let fence = lock(&mut c, &name, 10_000, "t");
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        // Interleave other writes: fences stay increasing whatever else is logged.
        assert_eq!(c.raw(&["INCR", "noise"]), format!(":{}\r\n", i + 1));
        assert_eq!(c.raw(&["UNLOCK", &name, "t"]), ":0\r\n");
    }
}

#[test]
fn blocked_lock_is_granted_when_the_holder_unlocks() {
    let server = Server::start();
    let mut a = server.connect();
    let mut b = server.connect();
    let mut watcher = server.connect();
    let fa = lock(&mut a, "bl", 30_000, "a");
    b.send_cmd(&["LOCK", "bl", "30000", "TOKEN", "b", "WAIT", "5000"]);
    wait_until(Duration::from_secs(5), "B to queue", || (waiters(&mut watcher, "bl") == 1).then_some(()));
    assert_eq!(a.raw(&["UNLOCK", "bl", "a"]), ":0\r\n");
    let grant = b.read();
    let fb = grant.field("fence").int();
    assert!(fb > fa, "fence {fb} after {fa}");
    assert_eq!(grant, grant_reply(fb, "b", 1, 30_000));
    assert_eq!(watcher.raw(&["FENCE", "bl"]), format!(":{fb}\r\n"));
    b.assert_alive();

    // A bounded wait that nobody ends answers nil after the bound.
    let started = Instant::now();
    assert_eq!(a.raw(&["LOCK", "bl", "30000", "TOKEN", "c", "WAIT", "300"]), "$-1\r\n");
    assert!(started.elapsed() >= Duration::from_millis(250), "gave up after {:?}", started.elapsed());
    assert_eq!(waiters(&mut watcher, "bl"), 0);
    a.assert_alive();
}

/// LOCK.WITHDRAW ends a queued acquire by its token, from another connection (a client
/// that gave up on it without closing the connection it waits on, as multiplexing
/// clients do; what CLIENT UNBLOCK is in Redis): the waiting connection is answered
/// nil, and the release grants it nothing.
#[test]
fn a_queued_lock_is_withdrawn_by_its_token() {
    let server = Server::start();
    let mut a = server.connect();
    let mut b = server.connect();
    let mut c = server.connect();
    lock(&mut a, "wl", 30_000, "a");
    b.send_cmd(&["LOCK", "wl", "30000", "TOKEN", "b", "WAIT", "20000"]);
    wait_until(Duration::from_secs(5), "B to queue", || (waiters(&mut c, "wl") == 1).then_some(()));
    assert_eq!(c.raw(&["LOCK.WITHDRAW", "wl", "b"]), ":1\r\n");
    assert!(b.read().is_null(), "the withdrawn wait is answered nil");
    assert_eq!(waiters(&mut c, "wl"), 0);
    assert_eq!(c.raw(&["LOCK.WITHDRAW", "wl", "b"]), ":0\r\n", "once");
    assert_eq!(c.raw(&["LOCK.WITHDRAW", "wl", "a"]), ":0\r\n", "a holder is not withdrawn");
    assert_eq!(a.raw(&["UNLOCK", "wl", "a"]), ":0\r\n");
    lock(&mut c, "wl", 1_000, "c");
    // Bad input: the error names it, and the connection goes on.
    assert!(c.raw(&["LOCK.WITHDRAW", "wl"]).starts_with("-ERR wrong number of arguments"));
    assert!(c.raw(&["LOCK.WITHDRAW", "wl", "c", "NOPE"]).starts_with("-ERR syntax"));
    c.assert_alive();
    b.assert_alive();
}

#[test]
fn blocked_lock_of_a_disconnected_client_is_never_granted() {
    let server = Server::start();
    let mut holder = server.connect();
    let mut watcher = server.connect();
    let f1 = lock(&mut holder, "dl", 30_000, "holder");
    {
        let mut gone = server.connect();
        gone.send_cmd(&["LOCK", "dl", "30000", "TOKEN", "gone", "WAIT", "20000"]);
        wait_until(Duration::from_secs(5), "the waiter to queue", || (waiters(&mut watcher, "dl") == 1).then_some(()));
        gone.shutdown();
    }
    // The server notices the disconnect and cancels the wait through the log.
    wait_until(Duration::from_secs(5), "the wait to be cancelled", || (waiters(&mut watcher, "dl") == 0).then_some(()));
    assert_eq!(holder.raw(&["UNLOCK", "dl", "holder"]), ":0\r\n");
    assert_eq!(watcher.raw(&["FENCE", "dl"]), "$-1\r\n", "nothing was granted to the dead waiter");
    let mut third = server.connect();
    let f3 = lock(&mut third, "dl", 30_000, "third");
    assert!(f3 > f1);
    let info = watcher.cmd(&["LOCK.INFO", "dl"]);
    let [h] = info.field("holders").items() else { panic!("{info:?}") };
    assert_eq!(h.field("owner").text(), "third");
}

#[test]
fn sessions_and_session_bound_locks() {
    let server = Server::start();
    let mut c = server.connect();
    let id = c.cmd(&["SESSION.OPEN", "10000"]).int();
    assert!(id > 0);
    let info = c.cmd(&["SESSION.INFO", &id.to_string()]);
    assert_eq!(info.keys(), ["ttl", "remaining", "owned"]);
    assert_eq!(info.field("ttl").int(), 10_000);
    assert!((5_000..=10_000).contains(&info.field("remaining").int()), "{info:?}");
    assert_eq!(info.field("owned").int(), 0);
    assert_eq!(c.raw(&["SESSION.KEEPALIVE", &id.to_string()]), ":10000\r\n");
    assert_eq!(c.raw(&["SESSION.KEEPALIVE", &id.to_string(), "20000"]), ":20000\r\n");
    assert_eq!(c.cmd(&["SESSION.INFO", &id.to_string()]).field("ttl").int(), 20_000);

    let grant = c.cmd(&["LOCK", "sl", "0", "SESSION", &id.to_string(), "TOKEN", "s"]);
    let fence = grant.field("fence").int();
    assert_eq!(grant, grant_reply(fence, "s", 1, -1), "a session-bound lock reports ttl -1");
    assert_eq!(c.cmd(&["SESSION.INFO", &id.to_string()]).field("owned").int(), 1);
    let info = c.cmd(&["LOCK.INFO", "sl"]);
    assert_eq!(info.field("holders").items()[0].field("session").int(), id);
    assert_eq!(c.raw(&["SESSION.CLOSE", &id.to_string()]), "+OK\r\n");
    assert_eq!(c.raw(&["FENCE", "sl"]), "$-1\r\n", "closing the session releases its locks");
    let nosession = format!("-NOSESSION no such session {id} (closed or expired)\r\n");
    assert_eq!(c.raw(&["SESSION.INFO", &id.to_string()]), nosession);
    assert_eq!(c.raw(&["SESSION.KEEPALIVE", &id.to_string()]), nosession);
    assert_eq!(c.raw(&["SESSION.CLOSE", &id.to_string()]), nosession);
    c.assert_alive();
}

#[test]
fn session_expiry_releases_its_lock() {
    let server = Server::start();
    let mut c = server.connect();
    let mut other = server.connect();
    let opened = Instant::now();
    let id = c.cmd(&["SESSION.OPEN", "400"]).int().to_string();
    let fence = c.cmd(&["LOCK", "se", "0", "SESSION", &id, "TOKEN", "s"]).field("fence").int();
    assert_eq!(other.raw(&["LOCK", "se", "30000", "TOKEN", "o"]), "$-1\r\n");
    // No keepalive: the session lapses and the lock goes with it.
    wait_until(Duration::from_secs(10), "the session's lock to be released", || {
        other.cmd(&["FENCE", "se"]).is_null().then_some(())
    });
    assert!(opened.elapsed() >= Duration::from_millis(350), "released after {:?}", opened.elapsed());
    let f2 = lock(&mut other, "se", 30_000, "o");
    assert!(f2 > fence);
    assert_eq!(c.raw(&["SESSION.INFO", &id]), format!("-NOSESSION no such session {id} (closed or expired)\r\n"));
}

#[test]
fn hello_3_switches_to_resp3() {
    let server = Server::start();
    let mut c = server.connect();
    let id = c.cmd(&["CLIENT", "ID"]).int();
    let (hello, raw) = {
        c.send_cmd(&["HELLO", "3"]);
        c.read_raw()
    };
    assert!(raw.starts_with(b"%8\r\n"), "{:?}", String::from_utf8_lossy(&raw));
    let Reply::Map(_) = &hello else { panic!("HELLO 3 must answer a RESP3 map: {hello:?}") };
    assert_eq!(hello.keys(), ["server", "version", "proto", "id", "mode", "role", "modules", "fencelock_version"]);
    assert_eq!(hello.field("server").text(), "redis");
    assert_eq!(hello.field("proto").int(), 3);
    assert_eq!(hello.field("id").int(), id);
    assert_eq!(hello.field("role").text(), "master");
    assert_eq!(hello.field("mode").text(), "standalone");
    // Later replies are RESP3.
    assert_eq!(c.raw(&["GET", "missing"]), "_\r\n");
    assert_eq!(c.raw(&["BLPOP", "nothing", "0.1"]), "_\r\n");
    let grant = c.raw(&["LOCK", "r3", "1000", "TOKEN", "t"]);
    assert!(grant.starts_with("%4\r\n$5\r\nfence\r\n:"), "{grant}");
    let info = c.raw(&["LOCK.INFO", "r3"]);
    assert!(info.starts_with("%3\r\n"), "{info}");
    assert_eq!(c.raw(&["PING"]), "+PONG\r\n");
    assert_eq!(c.raw(&["HELLO", "4"]), "-NOPROTO unsupported protocol version\r\n");
    // RESET goes back to RESP2, HELLO 3 to RESP3 again.
    assert_eq!(c.raw(&["RESET"]), "+RESET\r\n");
    assert_eq!(c.raw(&["GET", "missing"]), "$-1\r\n");
    assert_eq!(c.cmd(&["HELLO", "3"]).field("proto").int(), 3);
    assert_eq!(c.raw(&["GET", "missing"]), "_\r\n");
    // HELLO 2 goes back.
    let hello2 = c.raw(&["HELLO", "2"]);
    assert!(hello2.starts_with("*16\r\n"), "{hello2}");
    assert_eq!(c.raw(&["GET", "missing"]), "$-1\r\n");
}

#[test]
fn auth_with_requirepass() {
    let server = Server::start_with(&["--requirepass", "s3cret"]);
    let mut c = server.connect();
    let noauth = "-NOAUTH Authentication required.\r\n";
    assert_eq!(c.raw(&["PING"]), noauth);
    assert_eq!(c.raw(&["GET", "k"]), noauth);
    assert_eq!(c.raw(&["SET", "k", "v"]), noauth);
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(c.raw(&["AUTH", "wrong"]), wrongpass);
    assert_eq!(c.raw(&["AUTH", "default", "wrong"]), wrongpass);
    assert_eq!(c.raw(&["AUTH", "alice", "s3cret"]), wrongpass);
    assert_eq!(c.raw(&["GET", "k"]), noauth);
    assert_eq!(c.raw(&["AUTH", "s3cret"]), "+OK\r\n");
    assert_eq!(c.raw(&["PING"]), "+PONG\r\n");
    assert_eq!(c.raw(&["SET", "k", "v"]), "+OK\r\n");
    // RESET forgets the authentication.
    assert_eq!(c.raw(&["RESET"]), "+RESET\r\n");
    assert_eq!(c.raw(&["GET", "k"]), noauth);
    assert_eq!(c.raw(&["AUTH", "default", "s3cret"]), "+OK\r\n");
    assert_eq!(c.raw(&["GET", "k"]), bulk("v"));

    let mut h = server.connect();
    let hello = h.raw(&["HELLO", "3"]);
    assert!(hello.starts_with("-NOAUTH HELLO must be called with the client already authenticated"), "{hello}");
    let hello = h.cmd(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "app"]);
    assert_eq!(hello.field("proto").int(), 3);
    assert_eq!(h.raw(&["CLIENT", "GETNAME"]), bulk("app"));
    assert_eq!(h.raw(&["GET", "nothing"]), "_\r\n");

    let unprotected = Server::start();
    let mut u = unprotected.connect();
    let text = u.raw(&["AUTH", "x"]);
    assert!(text.starts_with("-ERR AUTH <password> called without any password configured"), "{text}");
    u.assert_alive();
}

#[test]
fn select_client_info_command() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(c.raw(&["SELECT", "1"]), "-ERR DB index is out of range\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["CLIENT", "GETNAME"]), "$-1\r\n");
    assert_eq!(c.raw(&["CLIENT", "SETNAME", "app-1"]), "+OK\r\n");
    assert_eq!(c.raw(&["CLIENT", "GETNAME"]), bulk("app-1"));
    assert_eq!(
        c.raw(&["CLIENT", "SETNAME", "has space"]),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    let id = c.cmd(&["CLIENT", "ID"]).int();
    let other_id = server.connect().cmd(&["CLIENT", "ID"]).int();
    assert_ne!(id, other_id);
    assert_eq!(c.raw(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]), "+OK\r\n");
    assert_eq!(c.raw(&["CLIENT", "SETINFO", "lib-ver", "5.0.1"]), "+OK\r\n");
    assert_eq!(c.raw(&["CLIENT", "SETINFO", "BOGUS", "x"]), "-ERR Unrecognized option 'BOGUS'\r\n");
    let me = c.cmd(&["CLIENT", "INFO"]).text();
    assert!(me.contains(&format!("id={id} ")), "{me}");
    assert!(me.contains("name=app-1 ") && me.contains("lib-name=redis-py ") && me.contains("lib-ver=5.0.1 "), "{me}");
    let info = c.cmd(&["INFO"]).text();
    assert!(info.contains("loading:0\r\n"), "{info}");
    assert!(info.contains("role:master\r\n"), "{info}");
    assert!(info.contains("redis_version:"), "{info}");
    let count = c.cmd(&["COMMAND", "COUNT"]).int();
    assert!(count > 10, "COMMAND COUNT {count}");
    assert_eq!(c.cmd(&["COMMAND"]).items().len() as i64, count);
    assert_eq!(c.raw(&["WAIT", "0", "0"]), ":0\r\n");
    assert_eq!(c.raw(&["QUIT"]), "+OK\r\n");
    c.assert_closed();
}

/// `WAIT n 0` for more replicas than exist waits for ever; a client that leaves must
/// end it (its task and socket), as a blocked BLPOP's does.
#[test]
fn a_wait_for_replicas_ends_when_its_client_leaves() {
    let server = Server::start();
    let mut watcher = server.connect();
    let connected = |c: &mut Client| {
        let info = c.cmd(&["INFO", "clients"]).text();
        info.lines().find_map(|l| l.strip_prefix("connected_clients:")).and_then(|v| v.trim().parse::<u64>().ok())
    };
    let before = connected(&mut watcher).expect("connected_clients");
    let mut waiting = server.connect();
    waiting.send_cmd(&["WAIT", "1", "0"]);
    wait_until(Duration::from_secs(5), "the WAIT's connection to count", || {
        (connected(&mut watcher) == Some(before + 1)).then_some(())
    });
    // Blocked, as in Redis: a pipelined command waits behind it, and is not run for a
    // client that has gone.
    waiting.send_cmd(&["SET", "after-wait", "1"]);
    drop(waiting);
    wait_until(Duration::from_secs(5), "the WAIT's connection to end", || {
        (connected(&mut watcher) == Some(before)).then_some(())
    });
    assert_eq!(watcher.raw(&["EXISTS", "after-wait"]), ":0\r\n");
}

#[test]
fn bad_commands_get_errors_and_the_connection_lives_on() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["FOO", "a"]), "-ERR unknown command 'FOO', with args beginning with: 'a' \r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["foo"]), "-ERR unknown command 'foo', with args beginning with: \r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["GET"]), "-ERR wrong number of arguments for 'get' command\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["get", "a", "b"]), "-ERR wrong number of arguments for 'get' command\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["SET", "k"]), "-ERR wrong number of arguments for 'set' command\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["HSET", "h", "f", "v"]), ":1\r\n");
    assert_eq!(c.raw(&["GET", "h"]), "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["INCR", "h"]), "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["INCRBY", "n", "abc"]), "-ERR value is not an integer or out of range\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["INCRBY", "n", "1.5"]), "-ERR value is not an integer or out of range\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["SET", "k", "v", "BOGUS"]), "-ERR syntax error\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["SET", "k", "v", "NX", "XX"]), "-ERR syntax error\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["SET", "k", "v", "PX", "0"]), "-ERR invalid expire time in 'set' command\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["SET", "k", "v", "PX", "abc"]), "-ERR value is not an integer or out of range\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["EXISTS", "k"]), ":0\r\n", "refused commands changed nothing");
    assert_eq!(c.raw(&["CLIENT", "NOPE"]), "-ERR unknown subcommand 'nope'. Try CLIENT HELP.\r\n");
    c.assert_alive();
}

#[test]
fn oversized_bulk_is_refused_and_the_connection_lives_on() {
    let server = Server::start();
    let mut c = server.connect();
    let mut request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9000000\r\n".to_vec();
    request.resize(request.len() + 9_000_000, b'x');
    request.extend_from_slice(b"\r\n");
    assert_eq!(c.raw_bytes(&request), "-ERR bulk string of 9000000 bytes exceeds the bulk-bytes limit (8388608)\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["EXISTS", "k"]), ":0\r\n");
}

#[test]
fn oversized_inline_line_is_refused_and_the_connection_lives_on() {
    let server = Server::start();
    let mut c = server.connect();
    let mut line = vec![b'a'; 70_000];
    c.send(&line);
    std::thread::sleep(Duration::from_millis(50));
    line.clear();
    line.extend_from_slice(b"bcd\r\n");
    assert_eq!(c.raw_bytes(&line), "-ERR inline request of 70003 bytes exceeds the inline-bytes limit (65536)\r\n");
    c.assert_alive();
}

#[test]
fn oversized_array_is_refused_and_the_connection_lives_on() {
    // The default limit is 1,048,576 elements; one more, each an empty bulk (6 bytes),
    // is about 6 MB: cheap enough to send for real.
    let server = Server::start();
    let mut c = server.connect();
    let count = 1_048_577;
    let mut request = format!("*{count}\r\n").into_bytes();
    for _ in 0..count {
        request.extend_from_slice(b"$0\r\n\r\n");
    }
    assert_eq!(c.raw_bytes(&request), "-ERR array of 1048577 elements exceeds the array-length limit (1048576)\r\n");
    c.assert_alive();
}

#[test]
fn oversized_key_is_refused_naming_the_limit() {
    let server = Server::start();
    let mut c = server.connect();
    let key = "k".repeat(4097);
    assert_eq!(c.raw(&["SET", &key, "v"]), "-LIMIT key-bytes limit exceeded (max 4096)\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["LOCK", &key, "1000", "TOKEN", "t"]), "-LIMIT key-bytes limit exceeded (max 4096)\r\n");
    c.assert_alive();
    let key = "k".repeat(4096);
    assert_eq!(c.raw(&["SET", &key, "v"]), "+OK\r\n", "exactly at the limit is fine");
    assert_eq!(c.raw(&["DBSIZE"]), ":1\r\n");
}

/// A glob costs up to its length times the text's to match, and PSUBSCRIBE patterns
/// are matched against every PUBLISH as it applies: patterns and channel names stop at
/// the longest key, and one connection's subscriptions at a bound.
#[test]
fn patterns_and_subscriptions_are_bounded_naming_the_limit() {
    let server = Server::start();
    let mut c = server.connect();
    let long = format!("*[{}", "b".repeat(4095));
    let refused = "-LIMIT pattern-bytes limit exceeded (max 4096)\r\n";
    assert_eq!(c.raw(&["KEYS", &long]), refused);
    assert_eq!(c.raw(&["SCAN", "0", "MATCH", &long]), refused);
    assert_eq!(c.raw(&["PSUBSCRIBE", "ok:*", &long]), refused);
    assert_eq!(c.raw(&["SUBSCRIBE", &long]), refused);
    c.assert_alive();
    let at_limit = "k".repeat(4096);
    assert_eq!(c.raw(&["KEYS", &at_limit]), "*0\r\n", "exactly at the limit is fine");
    // Subscriptions: 10,000 per connection, counted across channels and patterns.
    let mut sub = server.connect();
    let names: Vec<String> = (0..9_999).map(|i| format!("ch{i}")).collect();
    let mut request = vec!["SUBSCRIBE".to_string()];
    request.extend(names.iter().cloned());
    sub.send_cmd(&request);
    for _ in 0..names.len() {
        sub.read_raw();
    }
    let over = sub.raw(&["PSUBSCRIBE", "p1", "p2"]);
    assert_eq!(over, "-LIMIT subscriptions-per-connection limit exceeded (max 10000)\r\n");
    let last = sub.raw(&["PSUBSCRIBE", "p1"]);
    assert!(last.starts_with("*3\r\n$10\r\npsubscribe\r\n") && last.ends_with(":10000\r\n"), "{last}");
    // Subscribing again to one it has adds nothing.
    let again = sub.raw(&["SUBSCRIBE", "ch0"]);
    assert!(again.ends_with(":10000\r\n"), "{again}");
}

/// A subscriber that stops reading is dropped with the reason once its queue is full,
/// also while it observes (a watch holds a second handle on the same queue, which kept
/// it open: the connection lived on without its subscriptions and was never told).
#[test]
fn a_slow_subscriber_that_also_observes_is_closed_with_the_reason() {
    let server = Server::start();
    let mut sub = server.connect();
    sub.cmd(&["SUBSCRIBE", "ch"]);
    sub.cmd(&["OBSERVE", "KEY", "k"]);
    let mut publisher = server.connect();
    let message = "m".repeat(8 * 1024);
    // More than the queue holds (4,096) and more than the sockets buffer between them.
    let mut closed_at = None;
    for i in 0..12_000 {
        let reply = publisher.cmd(&["PUBLISH", "ch", &message]);
        if reply == Reply::Int(0) {
            closed_at = Some(i);
            break;
        }
    }
    assert!(closed_at.is_some(), "the subscriber was never dropped");
    sub.set_read_timeout(Duration::from_millis(200));
    let (tail, closed) = sub.read_to_close(Duration::from_secs(20), 4096);
    let tail = String::from_utf8_lossy(&tail);
    assert!(
        tail.contains("ERR pub/sub queue limit (4096 messages or 32 MiB) reached"),
        "{}",
        &tail[tail.len().saturating_sub(300)..]
    );
    assert!(closed, "closed after the reason");
    publisher.assert_alive();
}

/// A subscriber that stops reading is dropped by bytes too: 4,096 messages of up to
/// 1 MiB each would be 4 GiB held for one connection.
#[test]
fn a_slow_subscriber_of_large_messages_is_dropped_at_32_mib() {
    let server = Server::start();
    let mut sub = server.connect();
    sub.cmd(&["SUBSCRIBE", "big"]);
    let mut publisher = server.connect();
    let message = "m".repeat(1024 * 1024);
    // Well under 4,096 messages: only the byte bound can drop it (plus what the
    // sockets buffer between them).
    let dropped_at = (0..200).find(|_| publisher.cmd(&["PUBLISH", "big", &message]) == Reply::Int(0));
    assert!(dropped_at.is_some_and(|n| n < 100), "dropped after {dropped_at:?} messages of 1 MiB");
    sub.set_read_timeout(Duration::from_millis(200));
    let (tail, closed) = sub.read_to_close(Duration::from_secs(20), 4096);
    assert!(String::from_utf8_lossy(&tail).contains("ERR pub/sub queue limit"), "told why");
    assert!(closed);
}

/// Messages published before an UNSUBSCRIBE come before its confirmation, as in Redis:
/// a RESP2 client at zero subscriptions takes what follows as replies to its commands.
/// (The race the server guards against, messages still in the connection's queue when
/// the UNSUBSCRIBE is read, is not forced here; this pins the order a client sees.)
#[test]
fn messages_queued_before_unsubscribe_come_before_its_confirmation() {
    let server = Server::start();
    let mut sub = server.connect();
    sub.cmd(&["SUBSCRIBE", "ch"]);
    let mut publisher = server.connect();
    // The subscriber's task is blocked on nothing here; so that messages are queued
    // when the UNSUBSCRIBE is handled, both go in one write after the publishes.
    for i in 0..50 {
        publisher.cmd(&["PUBLISH", "ch", &format!("m{i}")]);
    }
    let mut both = encode(&["UNSUBSCRIBE"]);
    both.extend_from_slice(&encode(&["GET", "k"]));
    sub.send(&both);
    let mut seen = 0;
    loop {
        let reply = sub.read();
        let items = reply.items();
        if items[0].text() == "message" {
            assert_eq!(items[2].text(), format!("m{seen}"));
            seen += 1;
            continue;
        }
        assert_eq!(items[0].text(), "unsubscribe");
        break;
    }
    assert_eq!(seen, 50, "every message before the confirmation");
    assert!(sub.read().is_null(), "then the GET's reply");
}

/// OBSERVE's bounds, each passed: the target at the key limit, an empty EVENTS list,
/// 1,000 watches per connection. Then a RESP2 observer cancelling its last watch gets
/// the events already queued before the cancel's reply, and the next reply is its own.
#[test]
fn observe_refuses_past_its_limits_and_a_cancel_leaves_push_mode_in_order() {
    let server = Server::start();
    let mut c = server.connect();
    let long = "k".repeat(4097);
    assert_eq!(c.raw(&["OBSERVE", "PREFIX", &long]), "-LIMIT key-bytes limit exceeded (max 4096)\r\n");
    assert_eq!(c.raw(&["OBSERVE", "KEY", "k", "EVENTS", ""]), "-ERR EVENTS needs at least one event\r\n");
    assert_eq!(c.raw(&["OBSERVE", "KEY", "k", "EVENTS", ",,"]), "-ERR EVENTS needs at least one event\r\n");
    assert!(c.raw(&["OBSERVE", "LOCK", "k", "EVENTS", "set"]).starts_with("-ERR unknown event 'set'"));
    c.assert_alive();
    c.cmd(&["HELLO", "3"]);
    let at_limit = "k".repeat(4096);
    assert_eq!(c.cmd(&["OBSERVE", "PREFIX", &at_limit]).field("id").int(), 1);
    for i in 1..1_000 {
        c.cmd(&["OBSERVE", "KEY", &format!("w{i}")]);
    }
    assert_eq!(c.raw(&["OBSERVE", "KEY", "one-more"]), "-LIMIT watches-per-connection limit exceeded (max 1000)\r\n");
    assert_eq!(c.cmd(&["OBSERVE.CANCEL", "1"]).int(), 1);
    assert_eq!(c.cmd(&["OBSERVE", "KEY", "one-more"]).field("id").int(), 1_001, "room again after a cancel");

    let mut o = server.connect();
    let id = o.cmd(&["OBSERVE", "KEY", "k"]).field("id").int();
    let mut writer = server.connect();
    for i in 0..50 {
        writer.cmd(&["SET", "k", &i.to_string()]);
    }
    let mut both = encode(&["OBSERVE.CANCEL", &id.to_string()]);
    both.extend_from_slice(&encode(&["GET", "absent"]));
    o.send(&both);
    let mut seen = 0;
    loop {
        match o.read() {
            Reply::Int(1) => break,
            push => {
                assert_eq!(push.items()[0].text(), "observe", "{push:?}");
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 50, "every event before the cancel's reply");
    assert!(o.read().is_null(), "then the GET's reply");
}

#[test]
fn framing_error_answers_then_closes() {
    let server = Server::start();
    let mut c = server.connect();
    c.assert_alive();
    assert_eq!(c.raw_bytes(b"*1\r\n:5\r\n"), "-ERR Protocol error: expected '$', got ':'\r\n");
    c.assert_closed();
    // The server itself is fine.
    server.connect().assert_alive();
    let mut d = server.connect();
    assert_eq!(d.raw_bytes(b"*abc\r\n"), "-ERR Protocol error: invalid multibulk length\r\n");
    d.assert_closed();
}

#[test]
fn pipelined_commands_behind_a_blocking_one_wait_their_turn() {
    let server = Server::start();
    let mut a = server.connect();
    let mut b = server.connect();
    let mut watcher = server.connect();
    let fa = lock(&mut a, "pl", 30_000, "a");
    // LOCK ... WAIT, then two more commands, in one write: answered in order.
    let mut request = encode(&["LOCK", "pl", "30000", "TOKEN", "b", "WAIT", "5000"]);
    request.extend_from_slice(b"PING\r\n");
    request.extend(encode(&["FENCE", "pl"]));
    b.send(&request);
    wait_until(Duration::from_secs(5), "B to queue", || (waiters(&mut watcher, "pl") == 1).then_some(()));
    assert_eq!(a.raw(&["UNLOCK", "pl", "a"]), ":0\r\n");
    let grant = b.read();
    let fb = grant.field("fence").int();
    assert!(fb > fa);
    assert_eq!(grant, grant_reply(fb, "b", 1, 30_000));
    assert_eq!(String::from_utf8_lossy(&b.read_raw().1), "+PONG\r\n");
    assert_eq!(String::from_utf8_lossy(&b.read_raw().1), format!(":{fb}\r\n"));
    // The same behind a BLPOP that times out.
    b.send(b"BLPOP nothing 0.2\r\nPING\r\nECHO after\r\n");
    assert_eq!(String::from_utf8_lossy(&b.read_raw().1), "*-1\r\n");
    assert_eq!(String::from_utf8_lossy(&b.read_raw().1), "+PONG\r\n");
    assert_eq!(String::from_utf8_lossy(&b.read_raw().1), bulk("after"));
}

#[test]
fn quit_answers_pending_replies_then_closes() {
    let server = Server::start();
    let mut c = server.connect();
    c.send(b"SET a 1\r\nQUIT\r\nSET b 2\r\n");
    assert_eq!(String::from_utf8_lossy(&c.read_raw().1), "+OK\r\n");
    assert_eq!(String::from_utf8_lossy(&c.read_raw().1), "+OK\r\n");
    c.assert_closed();
    let mut d = server.connect();
    assert_eq!(d.raw(&["EXISTS", "a", "b"]), ":1\r\n", "nothing after QUIT runs");
    // A framing error in the middle of a pipeline: earlier replies first, then the error.
    d.send(b"PING\r\nECHO x\r\n*1\r\n+PING\r\nSET c 3\r\n");
    assert_eq!(String::from_utf8_lossy(&d.read_raw().1), "+PONG\r\n");
    assert_eq!(String::from_utf8_lossy(&d.read_raw().1), bulk("x"));
    assert_eq!(String::from_utf8_lossy(&d.read_raw().1), "-ERR Protocol error: expected '$', got '+'\r\n");
    d.assert_closed();
    assert_eq!(server.connect().raw(&["EXISTS", "c"]), ":0\r\n");
}

#[test]
fn lock_lease_expires_but_never_early() {
    let server = Server::start();
    let mut c = server.connect();
    let sent = Instant::now();
    let fence = lock(&mut c, "lease", 400, "t");
    loop {
        let reply = c.cmd(&["FENCE", "lease"]);
        let seen = sent.elapsed();
        if reply.is_null() {
            assert!(seen >= Duration::from_millis(400), "the 400 ms lease was gone after {seen:?}");
            break;
        }
        assert_eq!(reply, Reply::Int(fence));
        assert!(seen < Duration::from_secs(10), "the lease never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let not_holder = "-NOTHOLDER not the holder of 'lease' (released, expired, or another token)\r\n";
    assert_eq!(c.raw(&["RENEW", "lease", "t", "1000"]), not_holder, "an expired lease cannot be renewed");
    assert_eq!(c.raw(&["UNLOCK", "lease", "t"]), not_holder);
    let next = lock(&mut c, "lease", 10_000, "u");
    assert!(next > fence);
    // RENEW extends: a 1 s lease renewed to 10 s is still held after 1.3 s.
    let f = lock(&mut c, "renewed", 1_000, "t");
    let renew = format!("*6\r\n{}:{f}\r\n{}:1\r\n{}:10000\r\n", bulk("fence"), bulk("holds"), bulk("ttl"));
    assert_eq!(c.raw(&["RENEW", "renewed", "t", "10000"]), renew);
    std::thread::sleep(Duration::from_millis(1_300));
    assert_eq!(c.raw(&["FENCE", "renewed"]), format!(":{f}\r\n"));
}

#[test]
fn blocked_locks_are_granted_in_fifo_order() {
    let server = Server::start();
    let mut holder = server.connect();
    let mut watcher = server.connect();
    lock(&mut holder, "fifo", 30_000, "h");
    let mut waiting = Vec::new();
    for i in 0..4 {
        let mut w = server.connect();
        w.send_cmd(&["LOCK", "fifo", "30000", "TOKEN", &format!("w{i}"), "WAIT", "10000"]);
        wait_until(Duration::from_secs(5), "the waiter to queue", || {
            (waiters(&mut watcher, "fifo") == i + 1).then_some(())
        });
        waiting.push(w);
    }
    let mut token = "h".to_string();
    let mut last = 0;
    for (i, w) in waiting.iter_mut().enumerate() {
        // UNLOCK goes by token, from any connection.
        assert_eq!(watcher.raw(&["UNLOCK", "fifo", &token]), ":0\r\n");
        let grant = w.read();
        token = format!("w{i}");
        assert_eq!(grant.field("token").text(), token, "waiter {i} is next");
        let fence = grant.field("fence").int();
        assert!(fence > last);
        last = fence;
    }
}

#[test]
fn a_session_ending_ends_its_waiters() {
    let server = Server::start();
    let mut holder = server.connect();
    let mut waiter = server.connect();
    let mut watcher = server.connect();
    lock(&mut holder, "sw", 30_000, "h");
    let id = holder.cmd(&["SESSION.OPEN", "10000"]).int().to_string();
    waiter.send_cmd(&["LOCK", "sw", "0", "SESSION", &id, "TOKEN", "w", "WAIT", "10000"]);
    wait_until(Duration::from_secs(5), "the waiter to queue", || (waiters(&mut watcher, "sw") == 1).then_some(()));
    assert_eq!(holder.raw(&["SESSION.CLOSE", &id]), "+OK\r\n");
    assert_eq!(String::from_utf8_lossy(&waiter.read_raw().1), "-NOSESSION the session ended while waiting\r\n");
    waiter.assert_alive();
    assert_eq!(waiters(&mut watcher, "sw"), 0);
    assert_eq!(holder.raw(&["UNLOCK", "sw", "h"]), ":0\r\n");
    assert_eq!(watcher.raw(&["FENCE", "sw"]), "$-1\r\n");
}

#[test]
fn many_concurrent_clients() {
    let server = Server::start();
    let port = server.port();
    let threads: Vec<_> = (0..32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..20 {
                    assert_eq!(c.raw(&["INCR", "shared"]).as_bytes()[0], b':');
                    assert_eq!(c.raw(&["SET", &format!("c:{t}:{i}"), "v"]), "+OK\r\n");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut c = server.connect();
    assert_eq!(c.raw(&["GET", "shared"]), bulk("640"));
    assert_eq!(c.raw(&["DBSIZE"]), ":641\r\n");
}

#[test]
fn short_leases_survive_a_restart_without_expiring_early() {
    let mut server = Server::start();
    let mut c = server.connect();
    let sent = Instant::now();
    let fence = lock(&mut c, "short", 3_000, "t");
    assert_eq!(c.raw(&["SET", "key", "v", "PX", "3000"]), "+OK\r\n");
    let session = c.cmd(&["SESSION.OPEN", "3000"]).int().to_string();
    let session_fence = c.cmd(&["LOCK", "bound", "0", "SESSION", &session, "TOKEN", "s"]).field("fence").int();
    drop(c);
    server.restart();
    let mut c = server.connect();
    // Every observation made before sent + 3 s must still see all three; each must
    // go eventually.
    let (mut lock_gone, mut key_gone, mut session_gone) = (false, false, false);
    while !(lock_gone && key_gone && session_gone) {
        let fence_now = c.cmd(&["FENCE", "short"]);
        let key_now = c.cmd(&["GET", "key"]);
        let bound_now = c.cmd(&["FENCE", "bound"]);
        let seen = sent.elapsed();
        let early = seen < Duration::from_millis(3_000);
        for (gone, now, expected, what) in [
            (&mut lock_gone, &fence_now, Reply::Int(fence), "the 3 s lease"),
            (&mut key_gone, &key_now, Reply::Bulk(b"v".to_vec()), "the 3 s key"),
            (&mut session_gone, &bound_now, Reply::Int(session_fence), "the 3 s session's lock"),
        ] {
            if now.is_null() {
                assert!(!early, "{what} was gone {seen:?} after it was made, across a restart");
                *gone = true;
            } else {
                assert!(!*gone, "{what} came back: {now:?}");
                assert_eq!(*now, expected, "{what}");
            }
        }
        assert!(seen < Duration::from_secs(30), "not all of them expired: {fence_now:?} {key_now:?} {bound_now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_expiring_lease_grants_the_next_waiter() {
    let server = Server::start();
    let mut a = server.connect();
    let mut b = server.connect();
    let sent = Instant::now();
    let fa = lock(&mut a, "ex", 300, "a");
    // Nobody unlocks: the lease ends and the queued waiter is granted.
    let grant = b.cmd(&["LOCK", "ex", "30000", "TOKEN", "b", "WAIT", "10000"]);
    let waited = sent.elapsed();
    let fb = grant.field("fence").int();
    assert_eq!(grant, grant_reply(fb, "b", 1, 30_000));
    assert!(fb > fa);
    assert!(waited >= Duration::from_millis(300), "granted {waited:?} after a 300 ms lease was taken");
    assert_eq!(
        a.raw(&["RENEW", "ex", "a", "1000"]),
        "-NOTHOLDER not the holder of 'ex' (released, expired, or another token)\r\n"
    );
}

#[test]
fn oversized_value_is_refused_naming_the_limit() {
    let server = Server::start();
    let mut c = server.connect();
    let value = "v".repeat(1024 * 1024 + 1);
    assert_eq!(c.raw(&["SET", "k", &value]), "-LIMIT value-bytes limit exceeded (max 1048576)\r\n");
    c.assert_alive();
    assert_eq!(c.raw(&["SET", "k", &value[1..]]), "+OK\r\n", "exactly at the limit is fine");
    assert_eq!(c.cmd(&["GET", "k"]).text().len(), 1024 * 1024);
    let ttl = "31536000001";
    assert_eq!(c.raw(&["LOCK", "t", ttl]), "-LIMIT ttl-ms limit exceeded (max 31536000000)\r\n");
    c.assert_alive();
}

#[test]
fn state_survives_a_crash_and_restart() {
    let mut server = Server::start();
    let mut c = server.connect();
    assert_eq!(c.raw(&["SET", "plain", "v1"]), "+OK\r\n");
    assert_eq!(c.raw(&["SET", "nx", "v2", "NX", "PX", "600000"]), "+OK\r\n");
    let nx_fence = c.cmd(&["FENCE", "nx"]).int();
    assert_eq!(c.raw(&["INCRBY", "n", "41"]), ":41\r\n");
    assert_eq!(c.raw(&["HSET", "h", "f", "v"]), ":1\r\n");
    assert_eq!(c.raw(&["RPUSH", "l", "a", "b"]), ":2\r\n");
    let mut fences = vec![nx_fence];
    let held = lock(&mut c, "held", 600_000, "t");
    fences.push(held);
    let released = lock(&mut c, "released", 600_000, "t");
    fences.push(released);
    assert_eq!(c.raw(&["UNLOCK", "released", "t"]), ":0\r\n");
    for i in 0..50 {
        let f = lock(&mut c, &format!("churn{i}"), 600_000, "t");
        fences.push(f);
        assert_eq!(c.raw(&["UNLOCK", &format!("churn{i}"), "t"]), ":0\r\n");
    }
    let max_before = *fences.iter().max().unwrap();
    drop(c);

    server.restart();
    let mut c = server.connect();
    assert_eq!(c.raw(&["GET", "plain"]), bulk("v1"));
    assert_eq!(c.raw(&["GET", "nx"]), bulk("v2"));
    assert_eq!(c.raw(&["FENCE", "nx"]), format!(":{nx_fence}\r\n"));
    let pttl = c.cmd(&["PTTL", "nx"]).int();
    assert!(pttl > 500_000, "the TTL survives the restart: {pttl}");
    assert_eq!(c.raw(&["GET", "n"]), bulk("41"));
    assert_eq!(c.raw(&["HGET", "h", "f"]), bulk("v"));
    assert_eq!(c.raw(&["LPOP", "l"]), bulk("a"));
    assert_eq!(c.raw(&["FENCE", "held"]), format!(":{held}\r\n"));
    let info = c.cmd(&["LOCK.INFO", "held"]);
    let [h] = info.field("holders").items() else { panic!("{info:?}") };
    assert_eq!(h.field("owner").text(), "t");
    assert_eq!(h.field("fence").int(), held);
    assert!(h.field("ttl").int() > 500_000, "the lease keeps its remaining time: {info:?}");
    assert_eq!(c.raw(&["LOCK", "held", "1000", "TOKEN", "other"]), "$-1\r\n", "still held after the restart");
    assert_eq!(c.raw(&["FENCE", "released"]), "$-1\r\n");
    let new_fence = lock(&mut c, "new", 600_000, "t");
    assert!(new_fence > max_before, "new fence {new_fence} must exceed every fence before the restart ({max_before})");
    let again = lock(&mut c, "released", 600_000, "t");
    assert!(again > new_fence);
    // Reentrant after restart: same fence.
    assert_eq!(c.raw(&["LOCK", "held", "600000", "TOKEN", "t"]), grant2(held, "t", 2, 600_000));

    // And a second restart, after writes made by the restarted process.
    let max_before = again;
    drop(c);
    server.restart();
    let mut c = server.connect();
    assert_eq!(c.raw(&["FENCE", "new"]), format!(":{new_fence}\r\n"));
    assert_eq!(c.raw(&["FENCE", "released"]), format!(":{again}\r\n"));
    let info = c.cmd(&["LOCK.INFO", "held"]);
    assert_eq!(info.field("holders").items()[0].field("holds").int(), 2);
    assert_eq!(c.raw(&["LPOP", "l"]), bulk("b"));
    assert!(lock(&mut c, "newer", 1000, "t") > max_before);
}

// --- Regressions: bugs these tests found in the server, fixed (see git log). ---

#[test]
fn regression_pop_with_count_replies_like_redis() {
    let server = Server::start();
    let mut c = server.connect();
    // Redis 7 popGenericCommand: a missing key with a count is a null ARRAY.
    assert_eq!(c.raw(&["LPOP", "missing", "2"]), "*-1\r\n");
    assert_eq!(c.raw(&["RPOP", "missing", "2"]), "*-1\r\n");
    assert_eq!(c.raw(&["RPUSH", "l", "a"]), ":1\r\n");
    // (A count of 0 on an existing list is already right: an empty array.)
    assert_eq!(c.raw(&["LPOP", "l", "0"]), "*0\r\n");
}

#[test]
fn regression_blocked_lock_of_a_client_that_just_disconnected_is_never_granted() {
    let server = Server::start();
    let mut holder = server.connect();
    let mut watcher = server.connect();
    for i in 0..20 {
        let name = format!("race{i}");
        lock(&mut holder, &name, 30_000, "holder");
        let mut gone = server.connect();
        gone.send_cmd(&["LOCK", &name, "30000", "TOKEN", "gone", "WAIT", "20000"]);
        wait_until(Duration::from_secs(5), "the waiter to queue", || (waiters(&mut watcher, &name) == 1).then_some(()));
        // The client is gone (FIN sent) before the holder unlocks.
        gone.shutdown();
        drop(gone);
        assert_eq!(holder.raw(&["UNLOCK", &name, "holder"]), ":0\r\n");
        // Whatever the server does about the race, the lock must become free soon: a
        // grant to a closed connection is never delivered, so nobody can use it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let info = watcher.cmd(&["LOCK.INFO", &name]);
            if info.field("holders").items().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration {i}: the lock went to a client that had already disconnected and stays held: {info:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn regression_blpop_of_a_client_that_just_disconnected_never_swallows_a_push() {
    let server = Server::start();
    let mut pusher = server.connect();
    let mut watcher = server.connect();
    for i in 0..20 {
        let q = format!("q{i}");
        let mut gone = server.connect();
        gone.send_cmd(&["BLPOP", &q, "20"]);
        wait_until(Duration::from_secs(5), "BLPOP to block", || {
            watcher.cmd(&["INFO", "clients"]).text().contains("blocked_clients:1").then_some(())
        });
        gone.shutdown();
        drop(gone);
        assert_eq!(pusher.raw(&["RPUSH", &q, "x"]), ":1\r\n");
        wait_until(Duration::from_secs(5), "the dead connection to be cleaned up", || {
            watcher.cmd(&["INFO", "clients"]).text().contains("blocked_clients:0").then_some(())
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if watcher.cmd(&["LPOP", &q]) == Reply::Bulk(b"x".to_vec()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration {i}: the acknowledged RPUSH's element went to a client that had already disconnected"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_pipeline_with_megabytes_of_replies_streams_back_complete_and_in_order() {
    // The server writes replies out as it goes instead of buffering them all, so memory
    // per connection stays bounded; the client still sees every reply in order.
    let server = Server::start();
    let mut c = server.connect();
    let value = "v".repeat(64 * 1024);
    assert_eq!(c.raw(&["SET", "big", value.as_str()]), "+OK\r\n");
    let mut request = Vec::new();
    for i in 0..300 {
        request.extend(encode(&["GET", "big"]));
        request.extend(encode(&["ECHO", &format!("marker-{i}")]));
    }
    c.send(&request);
    for i in 0..300 {
        assert_eq!(c.read(), Reply::Bulk(value.clone().into_bytes()), "reply {i}");
        assert_eq!(c.read(), Reply::Bulk(format!("marker-{i}").into_bytes()), "marker {i}");
    }
    assert_eq!(c.raw(&["PING"]), "+PONG\r\n");
}

#[test]
fn an_idempotent_lock_retried_after_a_lost_reply_holds_once() {
    let server = Server::start();
    let mut c = server.connect();
    let first = c.cmd(&["LOCK", "job", "30000", "TOKEN", "req-1", "IDEMPOTENT"]);
    // The client never saw that reply and sends the same request again.
    let again = c.cmd(&["LOCK", "job", "30000", "TOKEN", "req-1", "IDEMPOTENT"]);
    assert_eq!(first, again, "the same grant, not a second hold");
    assert_eq!(again.field("holds"), &Reply::Int(1));
    assert_eq!(again.field("fence"), first.field("fence"));
    // One UNLOCK releases it: no orphan.
    assert_eq!(c.raw(&["UNLOCK", "job", "req-1"]), ":0\r\n");
    assert!(c.cmd(&["FENCE", "job"]).is_null());
    assert_eq!(
        c.raw(&["LOCK", "job", "30000", "IDEMPOTENT"]),
        "-ERR IDEMPOTENT needs TOKEN: the token is the request id a retry repeats\r\n"
    );
    assert_eq!(c.raw(&["PING"]), "+PONG\r\n", "the connection keeps working");
}

/// The kernel's timer on the server's end of the connection from `client_port` to
/// `server_port`, from /proc/net/tcp: (kind, clock ticks until it fires). Kind 2 is the
/// keepalive timer; 0 is none.
#[cfg(target_os = "linux")]
fn server_side_timer(server_port: u16, client_port: u16) -> (u32, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let (local, remote) = (format!(":{server_port:04X}"), format!(":{client_port:04X}"));
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 5 && fields[1].ends_with(&local) && fields[2].ends_with(&remote) {
            let (kind, when) = fields[5].split_once(':').expect("tr:tm->when");
            return (u32::from_str_radix(kind, 16).expect("hex"), u64::from_str_radix(when, 16).expect("hex"));
        }
    }
    panic!("no server-side socket for 127.0.0.1:{client_port} -> {server_port} in /proc/net/tcp");
}

#[test]
#[cfg(target_os = "linux")]
fn an_idle_client_connection_is_probed_by_keepalive_as_tcp_keepalive_says() {
    // (flag, seconds until the first probe; None: no probes)
    for (flag, idle_s) in [(None, Some(300u64)), (Some("60"), Some(60)), (Some("0"), None)] {
        let server = match flag {
            Some(seconds) => Server::start_with(&["--tcp-keepalive", seconds]),
            None => Server::start(),
        };
        let mut c = server.connect();
        assert_eq!(c.raw(&["PING"]), "+PONG\r\n");
        // The reply's ACK may still be the pending timer for a moment.
        let (kind, ticks) = wait_until(Duration::from_secs(5), "the connection to go idle", || {
            let timer = server_side_timer(server.port(), c.local_port());
            (timer.0 != 1).then_some(timer)
        });
        match idle_s {
            Some(idle_s) => {
                assert_eq!(kind, 2, "--tcp-keepalive {flag:?}: no keepalive timer");
                // Clock ticks are 1/100 s (USER_HZ).
                assert!(
                    ticks <= idle_s * 100 && ticks + 500 >= idle_s * 100,
                    "first probe in {ticks} ticks, not {idle_s} s"
                );
            }
            None => assert_eq!(kind, 0, "--tcp-keepalive 0 still probes"),
        }
    }
}

/// redis-py's `Lock.LUA_RELEASE_SCRIPT`, byte for byte.
const PY_RELEASE: &str = "\n        local token = redis.call('get', KEYS[1])\n        if not token or token ~= ARGV[1] then\n            return 0\n        end\n        redis.call('del', KEYS[1])\n        return 1\n    ";

fn is_oom(reply: &Reply) -> bool {
    reply.is_error() && format!("{reply:?}").contains("OOM command not allowed when used memory > 'maxmemory'")
}

#[test]
fn past_maxmemory_writes_that_add_data_are_refused_and_the_rest_still_run() {
    let server = Server::start_with(&["--maxmemory-mib", "1024"]);
    let mut c = server.connect();
    assert_eq!(c.cmd(&["SET", "kept", "1"]), Reply::Simple("OK".into()));
    let lock = c.cmd(&["LOCK", "held", "30000", "TOKEN", "t1"]);
    assert!(!lock.is_error(), "{lock:?}");
    let memory = c.cmd(&["INFO", "memory"]).text();
    assert!(memory.contains("maxmemory:1073741824\r\n") && memory.contains("maxmemory_policy:noeviction"), "{memory}");
    drop(c);
    drop(server);

    // 1 MiB is below any process's resident size: over the bound from the start.
    let server = Server::start_with(&["--maxmemory-mib", "1"]);
    let mut c = server.connect();
    for refused in [
        vec!["SET", "k", "v"],
        vec!["RPUSH", "l", "x"],
        vec!["HSET", "h", "f", "v"],
        vec!["LOCK", "held", "30000", "TOKEN", "t1"],
        vec!["SESSION.OPEN", "10000"],
        vec!["QUEUE.PUSH", "q", "job"],
        vec!["EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", "k"],
    ] {
        let reply = c.cmd(&refused);
        assert!(is_oom(&reply), "{refused:?}: {reply:?}");
    }
    // Reads, deletes, releases and the lock clients' release script still run, and the
    // connection goes on.
    assert!(c.cmd(&["GET", "k"]).is_null());
    assert_eq!(c.cmd(&["DEL", "k"]), Reply::Int(0));
    let unlock = c.cmd(&["UNLOCK", "held", "t1"]);
    assert!(format!("{unlock:?}").contains("NOTHOLDER"), "UNLOCK ran: {unlock:?}");
    assert_eq!(c.cmd(&["EVAL", PY_RELEASE, "1", "k", "token"]), Reply::Int(0));
    // Another release script of the usual shape (as redsync's and redis-rb's) runs
    // too: its commands are named in its text and add nothing.
    let redsync =
        "if redis.call(\"GET\", KEYS[1]) == ARGV[1] then\n\treturn redis.call(\"DEL\", KEYS[1])\nelse\n\treturn 0\nend";
    assert_eq!(c.cmd(&["EVAL", redsync, "1", "k", "token"]), Reply::Int(0));
    assert!(c.cmd(&["QUEUE.POP", "q"]).is_null());
    assert_eq!(c.raw(&["PING"]), "+PONG\r\n");
    // Inside MULTI the refused command aborts the transaction, as in Redis.
    assert_eq!(c.cmd(&["MULTI"]), Reply::Simple("OK".into()));
    assert!(is_oom(&c.cmd(&["SET", "k", "v"])));
    let exec = c.cmd(&["EXEC"]);
    assert!(format!("{exec:?}").contains("EXECABORT"), "{exec:?}");
    let memory = c.cmd(&["INFO", "memory"]).text();
    let rss: u64 = memory
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_rss:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory_rss");
    assert!(rss > 1 << 20 && memory.contains("maxmemory:1048576\r\n"), "{memory}");
}

fn rss_of(c: &mut Client) -> u64 {
    let memory = c.cmd(&["INFO", "memory"]).text();
    memory.lines().find_map(|l| l.strip_prefix("used_memory_rss:")).and_then(|v| v.trim().parse().ok()).expect("rss")
}

#[test]
fn clients_filling_a_node_are_stopped_at_maxmemory() {
    // This build's resident size once started, then a bound 64 MiB above it.
    let base_mib = {
        let server = Server::start();
        let mut c = server.connect();
        assert_eq!(c.cmd(&["SET", "warm", "1"]), Reply::Simple("OK".into()));
        rss_of(&mut c) >> 20
    };
    let bound_mib = base_mib + 64;
    let server = Server::start_with(&["--maxmemory-mib", &bound_mib.to_string()]);
    let mut c = server.connect();
    let value = "v".repeat(1 << 20);
    let mut stored = 0;
    let refused = loop {
        let reply = c.cmd(&["SET", &format!("big:{stored}"), &value]);
        if reply.is_error() {
            break reply;
        }
        stored += 1;
        assert!(stored < 1_000, "1 GiB stored under a bound of {bound_mib} MiB");
        // The size is read every 100 ms.
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(is_oom(&refused), "{refused:?}");
    eprintln!("refused after {stored} values of 1 MiB: base {base_mib} MiB, bound {bound_mib} MiB");
    assert!(rss_of(&mut c) > bound_mib << 20, "refused below the bound");
    // Everything acknowledged is there, and deleting still works.
    assert_eq!(c.cmd(&["EXISTS", "big:0", &format!("big:{}", stored - 1)]), Reply::Int(2));
    assert_eq!(c.cmd(&["DEL", "big:0"]), Reply::Int(1));
}
