//! Crash recovery: concurrent writers, SIGKILL at a random moment while writes are in
//! flight, restart on the same data directory, and check that every acknowledged write
//! is still there (DESIGN rule 4: a write is acknowledged only once it is fsynced).
//!
//! Each writer thread owns its keys and does, over and over:
//! `SET key:<t>:<i> <i>`, `INCR counter:<t>`, `LOCK lock:<t>:<i> 600000 TOKEN t`, and for
//! every third `i` also `UNLOCK lock:<t>:<i> t`. It records what was acknowledged. An
//! operation whose reply never came (the kill) may or may not have committed; the checks
//! allow exactly that and nothing more.

mod common;

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Reply, Server};

const THREADS: usize = 8;
const CYCLES: usize = 3;
const LOCK_TTL: &str = "600000";

/// What one writer saw acknowledged, across all cycles.
#[derive(Debug, Default)]
struct History {
    thread: usize,
    next_i: u64,
    /// `i` of every acknowledged `SET key:<t>:<i> <i>`.
    sets: Vec<u64>,
    /// The value the last acknowledged INCR returned (or the verified value).
    incr_last: i64,
    /// An INCR was sent and its reply never came.
    incr_in_flight: bool,
    /// Acknowledged LOCKs never unlocked: (i, fence).
    held: Vec<(u64, i64)>,
    /// Acknowledged LOCK then acknowledged UNLOCK: (i, fence).
    released: Vec<(u64, i64)>,
    /// Acknowledged LOCK whose UNLOCK was in flight: (i, fence).
    unlock_in_flight: Vec<(u64, i64)>,
    /// Every acknowledged fence, in order.
    fences: Vec<i64>,
    /// Acknowledged writes of the current cycle.
    acked_this_cycle: u64,
}

impl History {
    fn key(&self, i: u64) -> String {
        format!("key:{}:{i}", self.thread)
    }
    fn lock(&self, i: u64) -> String {
        format!("lock:{}:{i}", self.thread)
    }
    fn counter(&self) -> String {
        format!("counter:{}", self.thread)
    }
}

/// xorshift64*, seeded from the process's random hasher keys.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(std::process::id() as u64);
        Rng(hasher.finish() | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Writes until the connection dies (the kill) or `stop` is set. Returns the history,
/// or a description of a reply that should never happen.
fn writer(port: u16, mut h: History, stop: Arc<AtomicBool>) -> Result<History, String> {
    h.acked_this_cycle = 0;
    let Ok(mut c) = Client::try_connect(port) else { return Ok(h) };
    while !stop.load(Ordering::Relaxed) {
        let i = h.next_i;
        h.next_i += 1;

        let key = h.key(i);
        match c.try_cmd(&["SET", &key, &i.to_string()]) {
            Err(_) => break,
            Ok(Reply::Simple(s)) if s == "OK" => {
                h.sets.push(i);
                h.acked_this_cycle += 1;
            }
            Ok(other) => return Err(format!("SET {key}: unexpected reply {other:?}")),
        }

        let counter = h.counter();
        h.incr_in_flight = true;
        match c.try_cmd(&["INCR", &counter]) {
            Err(_) => break,
            Ok(Reply::Int(v)) => {
                if v != h.incr_last + 1 {
                    return Err(format!("INCR {counter} answered {v} after {}", h.incr_last));
                }
                h.incr_last = v;
                h.incr_in_flight = false;
                h.acked_this_cycle += 1;
            }
            Ok(other) => return Err(format!("INCR {counter}: unexpected reply {other:?}")),
        }

        let name = h.lock(i);
        let fence = match c.try_cmd(&["LOCK", &name, LOCK_TTL, "TOKEN", "t"]) {
            Err(_) => break,
            Ok(reply) => match reply.get("fence") {
                Some(Reply::Int(fence)) => *fence,
                _ => return Err(format!("LOCK {name}: unexpected reply {reply:?}")),
            },
        };
        if let Some(&last) = h.fences.last() {
            if fence <= last {
                return Err(format!("LOCK {name}: fence {fence} after {last}"));
            }
        }
        h.fences.push(fence);
        h.acked_this_cycle += 1;
        if i % 3 == 0 {
            match c.try_cmd(&["UNLOCK", &name, "t"]) {
                Err(_) => {
                    h.unlock_in_flight.push((i, fence));
                    break;
                }
                Ok(Reply::Int(0)) => {
                    h.released.push((i, fence));
                    h.acked_this_cycle += 1;
                }
                Ok(other) => return Err(format!("UNLOCK {name}: unexpected reply {other:?}")),
            }
        } else {
            h.held.push((i, fence));
        }
    }
    Ok(h)
}

/// Sends commands in pipelined chunks and returns every reply, in order.
fn pipeline(c: &mut Client, commands: &[Vec<String>]) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(500) {
        let mut bytes = Vec::new();
        for command in chunk {
            bytes.extend(common::encode(command));
        }
        c.send(&bytes);
        for _ in chunk {
            replies.push(c.read());
        }
    }
    replies
}

enum Check {
    Value { key: String, value: String },
    Counter { thread: usize },
    Held { name: String, fence: i64 },
    Released { name: String },
    MaybeReleased { thread: usize, i: u64, fence: i64 },
}

/// Checks every acknowledged write of every history against the restarted server and
/// resolves what was in flight. Returns how many acknowledged writes were verified.
fn verify(c: &mut Client, histories: &mut [History]) -> u64 {
    let mut checks = Vec::new();
    let mut commands = Vec::new();
    for h in histories.iter() {
        for &i in &h.sets {
            commands.push(vec!["GET".to_string(), h.key(i)]);
            checks.push(Check::Value { key: h.key(i), value: i.to_string() });
        }
        commands.push(vec!["GET".to_string(), h.counter()]);
        checks.push(Check::Counter { thread: h.thread });
        for &(i, fence) in &h.held {
            commands.push(vec!["FENCE".to_string(), h.lock(i)]);
            checks.push(Check::Held { name: h.lock(i), fence });
        }
        for &(i, _) in &h.released {
            commands.push(vec!["FENCE".to_string(), h.lock(i)]);
            checks.push(Check::Released { name: h.lock(i) });
        }
        for &(i, fence) in &h.unlock_in_flight {
            commands.push(vec!["FENCE".to_string(), h.lock(i)]);
            checks.push(Check::MaybeReleased { thread: h.thread, i, fence });
        }
    }
    let replies = pipeline(c, &commands);
    let mut verified = 0;
    let mut failures = Vec::new();
    for (check, reply) in checks.into_iter().zip(replies) {
        match check {
            Check::Value { key, value } => {
                if reply != Reply::Bulk(value.clone().into_bytes()) {
                    failures.push(format!("GET {key}: expected {value:?}, got {reply:?}"));
                }
                verified += 1;
            }
            Check::Counter { thread } => {
                let h = &mut histories[thread];
                let value = match &reply {
                    Reply::NullBulk => 0,
                    Reply::Bulk(b) => String::from_utf8_lossy(b).parse().unwrap_or(-1),
                    _ => -1,
                };
                let ok = value == h.incr_last || (h.incr_in_flight && value == h.incr_last + 1);
                if ok {
                    h.incr_last = value;
                    h.incr_in_flight = false;
                } else {
                    failures.push(format!(
                        "GET {}: {reply:?}, expected {} (in flight: {})",
                        h.counter(),
                        h.incr_last,
                        h.incr_in_flight
                    ));
                }
                verified += h.incr_last as u64;
            }
            Check::Held { name, fence } => {
                if reply != Reply::Int(fence) {
                    failures.push(format!("FENCE {name}: expected :{fence} (held), got {reply:?}"));
                }
                verified += 1;
            }
            Check::Released { name } => {
                if reply != Reply::NullBulk {
                    failures.push(format!("FENCE {name}: expected nil (acknowledged UNLOCK), got {reply:?}"));
                }
                verified += 2;
            }
            Check::MaybeReleased { thread, i, fence } => {
                let h = &mut histories[thread];
                h.unlock_in_flight.retain(|&(j, _)| j != i);
                match reply {
                    Reply::NullBulk => h.released.push((i, fence)),
                    Reply::Int(f) if f == fence => h.held.push((i, fence)),
                    other => failures.push(format!("FENCE {}: expected nil or :{fence}, got {other:?}", h.lock(i))),
                }
                verified += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{} acknowledged writes lost or wrong after restart:\n{}", failures.len(), {
        let mut shown = failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n");
        if failures.len() > 20 {
            shown += "\n...";
        }
        shown
    });
    verified
}

fn run_crash_cycles(label: &str, extra: &[&str]) -> Server {
    let started = Instant::now();
    let mut rng = Rng::new();
    let mut server = Server::start_with(extra);
    let mut histories: Vec<History> = (0..THREADS).map(|thread| History { thread, ..History::default() }).collect();
    let mut total_verified = 0;
    for cycle in 1..=CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let port = server.port();
        let handles: Vec<_> = histories
            .drain(..)
            .map(|h| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || writer(port, h, stop))
            })
            .collect();
        let kill_after = Duration::from_millis(rng.between(1_000, 2_500));
        std::thread::sleep(kill_after);
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for handle in handles {
            match handle.join().expect("writer thread does not panic") {
                Ok(h) => histories.push(h),
                Err(e) => errors.push(e),
            }
        }
        assert!(errors.is_empty(), "writers saw impossible replies: {errors:?}");
        histories.sort_by_key(|h| h.thread);
        let acked: u64 = histories.iter().map(|h| h.acked_this_cycle).sum();
        assert!(acked > 0, "cycle {cycle}: no write was acknowledged before the kill");
        let max_fence = histories.iter().flat_map(|h| h.fences.last()).copied().max().unwrap_or(0);

        server.restart();
        let mut c = server.connect();
        let verified = verify(&mut c, &mut histories);
        // Fences keep increasing across the crash.
        let probe = c.cmd(&["LOCK", &format!("probe:{cycle}"), "1000", "TOKEN", "p"]);
        let probe_fence = probe.field("fence").int();
        assert!(probe_fence > max_fence, "fence {probe_fence} after a restart, {max_fence} before it");
        for h in &mut histories {
            h.fences.push(probe_fence);
        }
        println!(
            "{label} cycle {cycle}: SIGKILL after {kill_after:?}, {acked} writes acknowledged in this cycle; \
             after the restart {verified} writes verified (every acknowledged one so far, plus in-flight \
             ones found committed)"
        );
        total_verified = verified;
    }
    // Every fence acknowledged to any writer is unique.
    let mut seen = HashSet::new();
    for h in &histories {
        for &(_, fence) in h.held.iter().chain(&h.released) {
            assert!(seen.insert(fence), "fence {fence} granted twice");
        }
    }
    server.connect().assert_alive();
    println!("{label}: {total_verified} writes verified after the last restart, in {:?}", started.elapsed());
    server
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    run_crash_cycles("default", &[]);
}

/// The active WAL segment, the byte offset where its valid records end, and the index
/// the next record would have (record format: see server/src/raft/wal.rs).
fn wal_end(data_dir: &Path) -> (PathBuf, u64, u64) {
    let dir = data_dir.join("raft").join("log");
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .expect("the log directory")
        .map(|entry| entry.expect("dir entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let first = name.strip_prefix("seg-")?.strip_suffix(".wal")?.parse().ok()?;
            Some((first, path))
        })
        .collect();
    segments.sort();
    let (first, path) = segments.pop().expect("a segment");
    let data = std::fs::read(&path).expect("read the segment");
    let (mut offset, mut next) = (0usize, first);
    while offset + 16 <= data.len() {
        let len = u32::from_le_bytes(data[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().expect("4 bytes"));
        if len == 0 && crc == 0 {
            break;
        }
        next = u64::from_le_bytes(data[offset + 8..offset + 16].try_into().expect("8 bytes")) + 1;
        offset += 8 + len;
    }
    (path, offset as u64, next)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).expect("open the segment");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("sync");
}

fn write_keys(c: &mut Client, prefix: &str, n: usize) {
    for i in 0..n {
        assert_eq!(c.cmd(&["SET", &format!("{prefix}:{i}"), &i.to_string()]), Reply::Simple("OK".into()));
    }
}

fn check_keys(c: &mut Client, prefix: &str, n: usize) {
    let commands: Vec<Vec<String>> = (0..n).map(|i| vec!["GET".to_string(), format!("{prefix}:{i}")]).collect();
    for (i, reply) in pipeline(c, &commands).into_iter().enumerate() {
        assert_eq!(reply, Reply::Bulk(i.to_string().into_bytes()), "GET {prefix}:{i}");
    }
}

#[test]
fn a_torn_wal_tail_is_cut_off_on_restart() {
    let mut server = Server::start();
    let mut c = server.connect();
    write_keys(&mut c, "a", 50);
    let fence = c.cmd(&["LOCK", "torn", LOCK_TTL, "TOKEN", "t"]).field("fence").int();
    drop(c);
    server.kill();

    // What a crash in the middle of an append leaves: a record whose CRC does not match
    // (its payload half written), then a header whose payload never made it. Neither was
    // synced, so neither was acknowledged.
    let (path, end, next) = wal_end(&server.data_dir());
    assert!(end > 0 && next > 51, "the log holds the 51 writes: ends at byte {end}, next index {next}");
    let mut torn = Vec::new();
    torn.extend_from_slice(&40u32.to_le_bytes());
    torn.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    torn.extend_from_slice(&next.to_le_bytes());
    torn.extend_from_slice(&[0xAB; 32]);
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&1u32.to_le_bytes());
    torn.extend_from_slice(&(next + 1).to_le_bytes());
    torn.extend_from_slice(&[0xCD; 10]);
    write_at(&path, end, &torn);

    server.restart();
    let mut c = server.connect();
    check_keys(&mut c, "a", 50);
    assert_eq!(c.cmd(&["FENCE", "torn"]), Reply::Int(fence));
    // New records go where the torn tail was, and a later restart reads them back.
    write_keys(&mut c, "b", 50);
    drop(c);
    server.kill();

    // Garbage of another kind: an absurd record length.
    let (path, end, _) = wal_end(&server.data_dir());
    write_at(&path, end, &[0xFF; 24]);
    server.restart();
    let mut c = server.connect();
    check_keys(&mut c, "a", 50);
    check_keys(&mut c, "b", 50);
    write_keys(&mut c, "c", 10);
    drop(c);
    server.restart();
    let mut c = server.connect();
    check_keys(&mut c, "a", 50);
    check_keys(&mut c, "b", 50);
    check_keys(&mut c, "c", 10);
    assert_eq!(c.cmd(&["FENCE", "torn"]), Reply::Int(fence));
    assert!(c.cmd(&["LOCK", "after", "1000", "TOKEN", "t"]).field("fence").int() > fence);
}

#[test]
fn acknowledged_writes_survive_sigkill_with_frequent_snapshots() {
    // Snapshots and log purges happen while writes run, and the kill may land in one.
    // This run also uses a multi-threaded runtime (`--io-threads 2`; the default is one
    // thread), so apply, snapshots and connections really run in parallel here.
    let server = run_crash_cycles("snapshot-every-500", &["--snapshot-every", "500", "--io-threads", "2"]);
    // The runs above really went through snapshots and log purges.
    let data = server.data_dir();
    assert!(data.join("state").join("snapshot").exists(), "no snapshot was written");
    assert!(data.join("raft").join("purged").exists(), "the log was never purged");
}

fn info_number(c: &mut Client, field: &str) -> u64 {
    let value = common::cluster::info_field(c, field);
    value.parse().unwrap_or_else(|_| panic!("INFO replication {field}: {value:?}"))
}

/// A log that outgrows `--snapshot-log-mib` is snapshotted and purged though it holds
/// far fewer entries than `--snapshot-every`: 48 writes of 128 KiB to 4 keys (6 MiB)
/// against a 1 MiB floor. The state stays small (4 values), so the bound stays 1 MiB,
/// and the entries openraft would keep behind each snapshot (all of them: fewer than
/// 1,000) outweigh it, so the log is purged through the snapshots. Once the writes stop
/// the log holds at most what came after the last snapshot (under the bound, or there
/// would be another) and what was kept behind it (under the bound, or it would have
/// been purged): under 3 MiB, where without the purges it would hold all 6. Then
/// SIGKILL: the state comes back from the snapshot and what is left of the log.
#[test]
fn a_log_that_outgrows_its_bytes_is_snapshotted_and_survives_sigkill() {
    const WRITES: usize = 48;
    const KEYS: usize = 4;
    let value = |i: usize| format!("{i:06}").repeat(128 * 1024 / 6);
    let mut server = Server::start_with(&["--snapshot-every", "1000000", "--snapshot-log-mib", "1"]);
    let mut c = server.connect();
    for i in 0..WRITES {
        assert_eq!(c.cmd(&["SET", &format!("big:{}", i % KEYS), &value(i)]), Reply::Simple("OK".into()));
    }
    let written = (WRITES * 128 * 1024) as u64;
    let snapshot_index = common::wait_until(Duration::from_secs(20), "a snapshot by size and a purge", || {
        let (index, bytes) = (info_number(&mut c, "raft_snapshot_index"), info_number(&mut c, "raft_log_bytes"));
        (index > 0 && bytes < written / 2).then_some(index)
    });
    assert!(snapshot_index < 1_000, "a snapshot by size, not by count ({snapshot_index} entries)");
    let snapshot_bytes = info_number(&mut c, "raft_snapshot_bytes");
    assert!(snapshot_bytes > 0 && snapshot_bytes < 1 << 20, "a snapshot of 4 values: {snapshot_bytes} B");
    server.restart();
    let mut c = server.connect();
    let recovered = info_number(&mut c, "raft_log_bytes");
    assert!(
        recovered > 0 && recovered < written / 2,
        "the restarted node holds and counts what was left: {recovered} B"
    );
    for (k, i) in (WRITES - KEYS..WRITES).map(|i| (i % KEYS, i)) {
        let Reply::Bulk(got) = c.cmd(&["GET", &format!("big:{k}")]) else {
            panic!("big:{k} is gone after the restart")
        };
        assert!(got == value(i).into_bytes(), "big:{k} came back with another value than write {i}");
    }
}

/// The `blocked_clients` count of INFO clients.
fn blocked_clients(c: &mut Client) -> u64 {
    let info = c.cmd(&["INFO", "clients"]).text();
    info.lines().find_map(|l| l.strip_prefix("blocked_clients:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn waits_left_by_a_killed_node_end_when_it_restarts() {
    let mut server = Server::start();
    let mut c = server.connect();
    assert!(c.cmd(&["LOCK", "res", "60000", "TOKEN", "a"]).get("fence").is_some(), "granted");
    // Two clients block: one queued for the lock, one for a queue item.
    let mut lock_waiter = server.connect();
    lock_waiter.send_cmd(&["LOCK", "res", "60000", "TOKEN", "b", "WAIT", "FOREVER"]);
    let mut popper = server.connect();
    popper.send_cmd(&["QUEUE.POP", "jobs", "WAIT", "FOREVER"]);
    common::wait_until(Duration::from_secs(10), "both clients to block", || {
        (blocked_clients(&mut c) == 2).then_some(())
    });

    // Their process dies with them; the waits are in the replicated state.
    server.restart();
    common::wait_until(Duration::from_secs(20), "the restarted node to end its previous run's waits", || {
        server.log_tail(200).contains("waits left by this node's previous run ended ended=2").then_some(())
    });
    let mut c = server.connect();
    // Not popped for a client that is gone: the item stays.
    assert_eq!(c.cmd(&["QUEUE.PUSH", "jobs", "x"]), Reply::Int(1));
    assert_eq!(c.cmd(&["QUEUE.LEN", "jobs"]), Reply::Int(1), "the item went to a wait whose client is gone");
    // Not granted to a client that is gone: free once its holder lets go.
    assert_eq!(c.cmd(&["UNLOCK", "res", "a"]), Reply::Int(0));
    assert!(c.cmd(&["FENCE", "res"]).is_null(), "the lock was granted to a wait whose client is gone");
    assert!(c.cmd(&["LOCK", "res", "1000", "TOKEN", "c"]).get("fence").is_some(), "a new client gets it at once");
    drop((lock_waiter, popper));
}

/// A second server on a running server's data directory is refused before it touches
/// anything: it would recover (cut) the first one's active WAL segment and append to it
/// too. The lock goes with the process, SIGKILL included.
#[test]
fn a_data_directory_in_use_refuses_a_second_server() {
    let mut server = Server::start();
    let dir = server.data_dir();
    let mut c = server.connect();
    assert_eq!(c.cmd(&["SET", "k", "v"]), Reply::Simple("OK".into()));
    let (code, stderr) = common::cluster::run_to_exit(&[], &dir);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("is in use by another fencelock (pid {})", server.pid())), "{stderr}");
    assert_eq!(c.raw(&["GET", "k"]), "$1\r\nv\r\n", "the first one is untouched");
    server.kill();
    server.restart();
    assert_eq!(server.connect().raw(&["GET", "k"]), "$1\r\nv\r\n");
}

/// A data directory keeps the id it was first started with: started under another
/// (a missing --node-id defaults to 1) it would vote and append as that other node.
#[test]
fn a_data_directory_refuses_another_node_id() {
    let mut server = Server::start_with(&["--node-id", "3"]);
    let dir = server.data_dir();
    assert_eq!(std::fs::read_to_string(dir.join("node_id")).expect("recorded").trim(), "3");
    server.kill();
    let (code, stderr) = common::cluster::run_to_exit(&["--node-id", "1"], &dir);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("belongs to node 3, not 1"), "{stderr}");
    // Under its own id it starts, with its data.
    server.restart();
    server.connect().assert_alive();
}
