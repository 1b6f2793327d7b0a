//! Apply throughput and memory per held lock.
//!
//! Fills the lock table with 1,000,000 held locks (realistic sizes: a 14-byte name,
//! a 10-byte owner, a 32-byte hex token), prints the memory they take (live heap
//! bytes from a counting allocator, and the process RSS growth), then measures
//! acquire+release pairs on other names against that full table.
//!
//! `cargo bench -p fencelock-core --bench apply` (HELD=N to change the table size).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fencelock_core::{Command, LockMode, LockRequest, SemaphoreRequest, StateMachine, Wait};

/// Counts live heap bytes so the table's memory can be measured exactly.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn acquire(name: String, owner: String, token: String) -> Command {
    Command::Lock(LockRequest {
        names: vec![Bytes::from(name)],
        owner: Bytes::from(owner),
        token: Bytes::from(token),
        mode: LockMode::Exclusive,
        ttl_ms: 30_000,
        session: None,
        metadata: Bytes::new(),
        wait: Wait::Try,
        condition: None,
        idempotent: false,
    })
}

fn token(i: u64) -> String {
    format!("{:016x}{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i ^ 0x5555_5555)
}

struct Table {
    sm: StateMachine,
    index: u64,
}

impl Table {
    /// The leader's clock advances 1 ms every 1,000 entries, as it would at a million
    /// entries a second; stamps are not all equal as in a frozen clock.
    fn stamp(&self) -> u64 {
        1_000 + self.index / 1_000
    }
}

fn filled(held: u64) -> Table {
    let mut table = Table { sm: StateMachine::default(), index: 0 };
    for i in 0..held {
        table.index += 1;
        let out = table.sm.apply(
            table.index,
            table.stamp(),
            acquire(format!("held:{i:09}"), format!("client-{:03}", i % 1000), token(i)),
        );
        assert!(out.reply.is_ok());
    }
    table
}

/// An acquire and its release on a name outside the held table.
fn pair_commands(i: u64) -> [Command; 2] {
    let name = format!("bench:{}", i % 4096);
    let tok = token(i);
    let release = Command::Unlock { names: vec![Bytes::from(name.clone())], token: Bytes::from(tok.clone()) };
    [acquire(name, "bench-client".into(), tok), release]
}

fn apply_pair(table: &mut Table, commands: [Command; 2]) {
    for command in commands {
        table.index += 1;
        let out = table.sm.apply(table.index, table.stamp(), command);
        debug_assert!(out.reply.is_ok());
        black_box(&out);
    }
}

/// A semaphore of many permits, one per holder (`SEM_HOLDERS`, default 50,000):
/// every holder acquires, then every holder releases. Each step once scanned every
/// holder, which made filling it quadratic.
fn semaphore_fill_and_drain() {
    let holders: u64 = std::env::var("SEM_HOLDERS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let mut table = Table { sm: StateMachine::default(), index: 0 };
    let limit = u32::try_from(holders).expect("at most u32::MAX permits");
    let mut run = |command: Command| {
        table.index += 1;
        let out = table.sm.apply(table.index, 1_000, command);
        assert!(out.reply.is_ok(), "{:?}", out.reply);
    };
    let started = Instant::now();
    for i in 0..holders {
        run(Command::SemAcquire(SemaphoreRequest {
            name: Bytes::from_static(b"pool"),
            limit,
            count: 1,
            owner: Bytes::from_static(b"bench-client"),
            token: Bytes::from(token(i)),
            ttl_ms: 30_000,
            session: None,
            wait: Wait::Try,
        }));
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..holders {
        run(Command::SemRelease { name: Bytes::from_static(b"pool"), token: Bytes::from(token(i)) });
    }
    let drain_secs = started.elapsed().as_secs_f64();
    println!(
        "semaphore of {holders} permits, one per holder: fill {:.0} acquires/s, drain {:.0} releases/s",
        holders as f64 / fill_secs,
        holders as f64 / drain_secs
    );
}

fn bench(c: &mut Criterion) {
    semaphore_fill_and_drain();
    let held: u64 = std::env::var("HELD").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let heap_before = LIVE_BYTES.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut table = filled(held);
    let fill_secs = started.elapsed().as_secs_f64();
    let heap = LIVE_BYTES.load(Ordering::Relaxed) - heap_before;
    let rss = rss_bytes().saturating_sub(rss_before);
    println!("held locks: {held}");
    println!("fill: {:.0} acquires/s", held as f64 / fill_secs);
    println!(
        "memory per held lock: {:.1} bytes of live heap, {:.1} bytes of RSS growth",
        heap as f64 / held as f64,
        rss as f64 / held as f64
    );

    // A server freezes the state under its state lock and encodes the frozen copy
    // outside it: the freeze is how long a snapshot holds up applies.
    let mut best_freeze = f64::MAX;
    let mut best_encode = f64::MAX;
    let mut snapshot_bytes = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let frozen = black_box(table.sm.freeze());
        best_freeze = best_freeze.min(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let mut bytes = Vec::new();
        frozen.snapshot_into(&mut bytes);
        best_encode = best_encode.min(started.elapsed().as_secs_f64());
        snapshot_bytes = black_box(bytes).len();
    }
    let bytes = table.sm.snapshot();
    let mut best_restore = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let restored = StateMachine::restore(table.sm.limits().clone(), &bytes).expect("own snapshot restores");
        best_restore = best_restore.min(started.elapsed().as_secs_f64());
        drop(black_box(restored));
    }
    println!("snapshot: restore (decode and check) {:.0} ms (best of 3)", best_restore * 1e3);
    println!(
        "snapshot: freeze {:.3} ms (under the state lock), encode {:.1} MB in {:.0} ms, {:.0} ns per held lock (best of 3)",
        best_freeze * 1e3,
        snapshot_bytes as f64 / 1e6,
        best_encode * 1e3,
        best_encode * 1e9 / held as f64
    );

    // A plain timed loop as well, so the ops/s figure needs no reading of criterion's
    // output. Commands are built beforehand: this times apply, not string formatting.
    let rounds = 5u64;
    let pairs_per_round = 200_000u64;
    let mut best = f64::MAX;
    for round in 0..rounds {
        let batch: Vec<[Command; 2]> =
            (0..pairs_per_round).map(|i| pair_commands(round * pairs_per_round + i)).collect();
        let started = Instant::now();
        for commands in batch {
            apply_pair(&mut table, commands);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    let applies = 2.0 * pairs_per_round as f64;
    println!(
        "acquire+release with {held} held (best of {rounds} rounds of {pairs_per_round} pairs): {:.0} apply/s, {:.0} ns/apply",
        applies / best,
        best * 1e9 / applies
    );

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(2));
    let mut i = 0u64;
    group.bench_function("acquire_release_pair_full_table", |b| {
        b.iter_batched(
            || {
                i += 1;
                pair_commands(i)
            },
            |commands| apply_pair(&mut table, commands),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
