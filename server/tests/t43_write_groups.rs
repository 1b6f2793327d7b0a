//! Concurrent clients' writes grouped into one log entry (`write_group`): each client
//! still gets its own answer, fences stay unique, a contended name never has two
//! holders, and followers apply the grouped entries to the same state.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use common::cluster::{info_field, led_cluster, section_field, wait_applied};
use common::{Client, Reply, Server};

const CLIENTS: usize = 24;
const CYCLES: usize = 40;
/// Names every client tries for (without WAIT), so grouped try-acquires meet.
const SHARED: usize = 3;

fn stat(c: &mut Client, field: &str) -> u64 {
    let value = section_field(c, "stats", field);
    value.parse().unwrap_or_else(|_| panic!("INFO stats has no count {field}: {value:?}"))
}

/// redis-py's `Lock` release script, byte for byte (a well-known script: it may share
/// an entry with other writes).
const PY_RELEASE: &str = "\n        local token = redis.call('get', KEYS[1])\n        if not token or token ~= ARGV[1] then\n            return 0\n        end\n        redis.call('del', KEYS[1])\n        return 1\n    ";

/// Every client runs `CYCLES` rounds of: lock and release a name of its own, try a
/// shared name and release it if granted, SET NX PX and DEL a key of its own, and a
/// Redlock cycle (SET NX PX, then the release script by EVALSHA with a stranger's
/// token and with its own). Returns every fence granted.
fn run_clients(port: u16) -> Vec<i64> {
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut fences = Vec::new();
                let Reply::Bulk(sha) = c.cmd(&["SCRIPT", "LOAD", PY_RELEASE]) else { panic!("SCRIPT LOAD") };
                let sha = String::from_utf8(sha).expect("a hex digest");
                start.wait();
                for n in 0..CYCLES {
                    let (own, token) = (format!("own:{id}"), format!("t{id}-{n}"));
                    let grant = c.cmd(&["LOCK", &own, "30000", "TOKEN", &token]);
                    assert!(!grant.is_error() && !grant.is_null(), "client {id}: LOCK {own}: {grant:?}");
                    fences.push(grant.field("fence").int());
                    assert_eq!(c.cmd(&["UNLOCK", &own, &token]), Reply::Int(0), "client {id} releases {own}");

                    let shared = format!("shared:{}", n % SHARED);
                    let grant = c.cmd(&["LOCK", &shared, "30000", "TOKEN", &token]);
                    if !grant.is_null() {
                        assert!(!grant.is_error(), "client {id}: LOCK {shared}: {grant:?}");
                        fences.push(grant.field("fence").int());
                        // Held by this client alone: nobody else's token releases it,
                        // and its own does.
                        assert_eq!(c.cmd(&["UNLOCK", &shared, &token]), Reply::Int(0), "{shared} held by {token}");
                    }

                    let key = format!("key:{id}");
                    assert_eq!(c.cmd(&["SET", &key, &token, "NX", "PX", "30000"]), Reply::Simple("OK".into()));
                    assert_eq!(c.cmd(&["DEL", &key]), Reply::Int(1));

                    let redlock = format!("redlock:{id}");
                    assert_eq!(c.cmd(&["SET", &redlock, &token, "NX", "PX", "30000"]), Reply::Simple("OK".into()));
                    let release = |c: &mut Client, token: &str| c.cmd(&["EVALSHA", &sha, "1", &redlock, token]);
                    assert_eq!(release(&mut c, "a-stranger"), Reply::Int(0), "{redlock} released by a stranger");
                    assert_eq!(release(&mut c, &token), Reply::Int(1), "client {id} releases {redlock}");
                }
                fences
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("a client failed")).collect()
}

fn assert_unique(fences: &[i64]) {
    let distinct: HashSet<_> = fences.iter().collect();
    assert_eq!(distinct.len(), fences.len(), "every grant has a fence of its own");
}

#[test]
fn concurrent_writes_share_entries_and_each_client_gets_its_own_answer() {
    let server = Server::start();
    let mut c = server.connect();
    let fences = run_clients(server.port());
    assert!(fences.len() >= CLIENTS * CYCLES);
    assert_unique(&fences);
    let (entries, writes) = (stat(&mut c, "fencelock_write_groups"), stat(&mut c, "fencelock_grouped_writes"));
    assert!(entries > 0, "{CLIENTS} concurrent clients formed no group");
    assert!(writes >= 2 * entries, "a group carries at least two writes: {writes} in {entries}");
    assert!(stat(&mut c, "fencelock_grouped_scripts") > 0, "no release script shared an entry");
    // The state is what the clients left: every lock released, every key deleted.
    for id in 0..CLIENTS {
        assert!(c.cmd(&["FENCE", &format!("own:{id}")]).is_null(), "own:{id} is still held");
        assert_eq!(c.cmd(&["EXISTS", &format!("key:{id}")]), Reply::Int(0));
        assert_eq!(c.cmd(&["EXISTS", &format!("redlock:{id}")]), Reply::Int(0));
    }
    // A later lock still gets a fence above every grouped one.
    let after = c.cmd(&["LOCK", "after", "1000", "TOKEN", "x"]).field("fence").int();
    assert!(fences.iter().all(|&f| f < after));
}

#[test]
fn followers_apply_grouped_entries_to_the_same_state() {
    let (servers, leader, mut l) = led_cluster(3, &["SET", "ready", "1"]);
    let fences = run_clients(servers[leader].port());
    assert_unique(&fences);
    assert!(stat(&mut l, "fencelock_write_groups") > 0, "the leader formed no group");
    // Through a follower: it groups its clients' writes too and forwards each group.
    let follower = (0..servers.len()).find(|i| *i != leader).expect("a follower");
    let through_follower = run_clients(servers[follower].port());
    assert_unique(&through_follower);
    assert!(through_follower.iter().all(|f| !fences.contains(f)), "fences are unique across both runs");
    let mut f = servers[follower].connect();
    assert!(stat(&mut f, "fencelock_write_groups") > 0, "the follower formed no group");
    assert!(stat(&mut f, "fencelock_grouped_scripts") > 0, "the follower grouped no release script");
    // Leave something held so the replicas have state to compare.
    for id in 0..CLIENTS {
        l.cmd(&["LOCK", &format!("own:{id}"), "60000", "TOKEN", "kept"]);
    }
    let applied: u64 = info_field(&mut l, "raft_applied_index").parse().expect("applied index");
    let view = |c: &mut Client| -> Vec<String> {
        let mut out = Vec::new();
        for id in 0..CLIENTS {
            out.push(format!("{:?}", c.cmd(&["FENCE", &format!("own:{id}")])));
            out.push(format!("{:?}", c.cmd(&["EXISTS", &format!("key:{id}")])));
            out.push(format!("{:?}", c.cmd(&["EXISTS", &format!("redlock:{id}")])));
        }
        for n in 0..SHARED {
            out.push(format!("{:?}", c.cmd(&["FENCE", &format!("shared:{n}")])));
        }
        out
    };
    let expected = view(&mut l);
    for (i, s) in servers.iter().enumerate().filter(|(i, _)| *i != leader) {
        let mut f = s.connect();
        wait_applied(&mut f, applied);
        assert_eq!(view(&mut f), expected, "follower {i} applied the grouped entries to another state");
    }
}

/// node-redlock 5's acquire script, byte for byte (well known: it may share an entry).
const REDLOCK_ACQUIRE: &str = "\n  -- Return 0 if an entry already exists.\n  for i, key in ipairs(KEYS) do\n    if redis.call(\"exists\", key) == 1 then\n      return 0\n    end\n  end\n\n  -- Create an entry for each provided key.\n  for i, key in ipairs(KEYS) do\n    redis.call(\"set\", key, ARGV[1], \"PX\", ARGV[2])\n  end\n\n  -- Return the number of entries added.\n  return #KEYS\n";

/// A grouped script that raises after its first write: node-redlock's acquire over a
/// short key and one past the key limit (`exists` reads any name; `set` refuses the
/// long one after it has set the short one). The script must leave nothing behind, on
/// any node, while the writes it shared entries with land.
#[test]
fn a_grouped_script_that_fails_after_writing_leaves_nothing_and_its_group_lands() {
    const WRITERS: usize = 12;
    const ATTEMPTS: usize = 400;
    let (servers, leader, mut l) = led_cluster(3, &["SET", "ready", "1"]);
    let port = servers[leader].port();
    let long_key = "k".repeat(5_000);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let (done, start) = (Arc::clone(&done), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                start.wait();
                let mut n = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let reply = c.cmd(&["SET", &format!("w:{id}"), &n.to_string()]);
                    assert_eq!(reply, Reply::Simple("OK".into()), "writer {id}'s SET {n}");
                }
                n
            })
        })
        .collect();
    let mut s = Client::connect(port);
    let Reply::Bulk(sha) = s.cmd(&["SCRIPT", "LOAD", REDLOCK_ACQUIRE]) else { panic!("SCRIPT LOAD") };
    let sha = String::from_utf8(sha).expect("a hex digest");
    assert_eq!(sha, "96da70f7716f27d278a5218544df37fd8b0a5e4c", "node-redlock's acquire, as the client computes it");
    // `exists` reads a name of any length, so the acquire gets as far as its writes.
    assert_eq!(s.cmd(&["EXISTS", &long_key]), Reply::Int(0));
    start.wait();
    let mut attempts = 0;
    while attempts < ATTEMPTS {
        attempts += 1;
        let part = format!("part:{attempts}");
        let reply = s.cmd(&["EVALSHA", &sha, "2", &part, &long_key, "tok", "30000"]);
        let Reply::Error(text) = &reply else { panic!("attempt {attempts}: the acquire raised nothing: {reply:?}") };
        assert!(text.contains("4096"), "the error names the key limit: {text}");
        assert_eq!(s.cmd(&["EXISTS", &part]), Reply::Int(0), "attempt {attempts} left {part} set");
        // Stop once the failing script has shared entries (it is the only script here).
        if attempts % 25 == 0 && stat(&mut l, "fencelock_grouped_scripts") >= 5 {
            break;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let last: Vec<u64> = writers.into_iter().map(|w| w.join().expect("a writer failed")).collect();
    let grouped = stat(&mut l, "fencelock_grouped_scripts");
    assert!(grouped > 0, "in {attempts} attempts beside {WRITERS} writers the script never shared an entry");
    // Every node: each writer's last value, no part of any attempt.
    let applied: u64 = info_field(&mut l, "raft_applied_index").parse().expect("applied index");
    for (i, server) in servers.iter().enumerate() {
        let mut c = server.connect();
        wait_applied(&mut c, applied);
        for (id, n) in last.iter().enumerate() {
            assert_eq!(c.cmd(&["GET", &format!("w:{id}")]), Reply::Bulk(n.to_string().into_bytes()), "node {i}");
        }
        for attempt in 1..=attempts {
            assert_eq!(c.cmd(&["EXISTS", &format!("part:{attempt}")]), Reply::Int(0), "node {i}: part:{attempt}");
        }
    }
}
