//! openraft's `RaftLogStorage` over the WAL.
//!
//! ```text
//!   append() --> entries cache (readable at once) --> job queue --> WAL thread:
//!                                                    write every queued batch,
//!                                                    one fdatasync, then each
//!                                                    batch's IOFlushed callback
//! ```
//!
//! The disk work runs on its own thread so a sync never blocks the async runtime, and
//! whatever queued up while one sync ran is committed by the next single sync (group
//! commit). Truncates go through the same queue, so the log on disk changes in exactly
//! the order openraft asked; a purge writes its marker on a thread of its own first
//! and then queues the rest (`purge_thread`). Between purges (the log is bounded by
//! snapshots) every entry stays in memory as the bytes the WAL wrote, and the newest
//! [`DECODED_ENTRIES`] also decoded: replication and apply read an entry within a round or
//! two of its append, so they never decode; a follower that fell further behind, or a
//! restart's replay, decodes what it reads.
//!
//! One exception, for latency: a lone write on a one-member cluster is written and
//! synced on the caller's thread ([`WriteLoad`]), as Redis does with
//! `appendfsync always`. With nothing to group it with, the hand-off to the WAL thread
//! and back is two thread wake-ups that only add latency (measured: 1-client lock cycle
//! p50 below).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use bytes::Bytes;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use tokio::sync::oneshot;

use super::wal::{forget_through, read_small, write_atomic, Wal};
use super::{Entry, LogId, TypeConfig, Vote};

/// How many of the newest entries are kept decoded (the rest only as their bytes).
///
/// All of them stayed decoded until the next purge (up to `--snapshot-every`, 100,000):
/// several heap blocks per entry (the shared op, its names and token), freed seconds
/// later in bulk by the purge's dropping thread. A profile of 3 nodes at 64 clients put
/// 14% of a follower's runtime thread in mimalloc's slow path and in page faults
/// refilling memory other threads had freed. A window later, dropped on the runtime
/// thread, an entry's blocks go back to that thread's own free lists. Measured: 60–70%
/// fewer page faults per node (tmpfs, 64 clients), and a single node filling 1M locks
/// peaked at 430 MiB of RSS against 470 (once each); the CPU per cycle moved within this
/// VM's noise. A round carries at most a few hundred entries, so 1,024 keeps every read
/// of replication and apply decoded.
pub const DECODED_ENTRIES: usize = 1_024;
/// At most this many bytes of entries (as written) are kept decoded, whatever their
/// number, and at least the newest entry. Typical entries (a group of lock writes, a
/// few KB) never reach it; 63 writes of 1 MiB each (about a round's worth) still fit.
pub const DECODED_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Segment size: etcd uses 64 MiB. Preallocation makes appends overwrite reserved
/// blocks instead of growing the file.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

enum Job {
    Append {
        first: u64,
        payloads: Vec<Bytes>,
        done: IOFlushed<TypeConfig>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<io::Result<()>>,
    },
    /// Forgets the entries through `through` and discards the segments that hold only
    /// those. Queued by the purge thread once the marker covering them is durable.
    Purge {
        through: u64,
    },
    /// Answers once every job queued before it is done (appends synced): what a vote
    /// waits for before it is written (`save_vote`).
    Barrier {
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// A handle on a log store's size, for the snapshot policy (`snapshot_trigger`) and
/// INFO. It does not keep the store open.
#[derive(Clone, Debug)]
pub struct LogSize {
    store: Weak<Mutex<Inner>>,
}

impl LogSize {
    /// Bytes the log holds now (its entries as the WAL wrote them, without the WAL's
    /// framing); 0 once the store is closed.
    pub fn held(&self) -> u64 {
        self.between(None, u64::MAX).unwrap_or(0)
    }

    /// Bytes of the entries after `after` (None: from the log's start) through
    /// `through` that the log still holds; None once the store is closed.
    pub fn between(&self, after: Option<u64>, through: u64) -> Option<u64> {
        let store = self.store.upgrade()?;
        let inner = store.lock().ok()?;
        let from = after.map_or(inner.start, |index| inner.end_of(index));
        Some(inner.end_of(through).saturating_sub(from))
    }
}

/// Where the newest `k` entries of a log begin, for entries that end at `ends` (the
/// first beginning at `start`); `k` is at most `ends.len()`.
fn begin_of_newest(ends: &VecDeque<u64>, start: u64, k: usize) -> u64 {
    if k == ends.len() {
        start
    } else {
        ends[ends.len() - k - 1]
    }
}

/// Whether a decoded window of the newest `k` entries (ending at `ends`, the first
/// beginning at `start`) is within `entries` of them and `bytes` of their bytes.
fn window_fits(ends: &VecDeque<u64>, start: u64, k: usize, entries: usize, bytes: u64) -> bool {
    let last = ends.back().copied().unwrap_or(start);
    k <= entries && last - begin_of_newest(ends, start, k) <= bytes
}

/// How many of the newest entries a decoded window keeps: the most that fit
/// (`window_fits`), and at least one if there is one.
fn decoded_window(ends: &VecDeque<u64>, start: u64, entries: usize, bytes: u64) -> usize {
    let mut kept = ends.len().min(1);
    while kept < ends.len() && window_fits(ends, start, kept + 1, entries, bytes) {
        kept += 1;
    }
    kept
}

/// Appends the ends of `payloads`, which follow the entries `ends` already holds (or
/// begin at `start` when it holds none).
fn extend_ends<'a>(ends: &mut VecDeque<u64>, start: u64, payloads: impl Iterator<Item = &'a Bytes>) {
    let mut end = ends.back().copied().unwrap_or(start);
    for payload in payloads {
        end += payload.len() as u64;
        ends.push_back(end);
    }
}

/// How busy this node is with writes: decides whether an append may sync on the
/// caller's thread instead of the WAL thread.
///
/// Syncing inline blocks the runtime thread (every connection) for one fdatasync, so it
/// is only worth it when nobody else is waiting: this node is the cluster's only member
/// (a leader with followers would otherwise replicate only after its own sync), and at
/// most one client write is in flight. Under load the WAL thread's group commit wins
/// (always inline halved the 64-client lock cycle rate), and one more write in flight
/// sends the next append there.
#[derive(Debug, Default)]
pub struct WriteLoad {
    solo: AtomicBool,
    writes_in_flight: AtomicUsize,
}

/// Counts one write in flight until dropped (so a cancelled write is counted out too).
#[derive(Debug)]
pub struct WriteInFlight(Arc<WriteLoad>, usize);

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        self.0.writes_in_flight.fetch_sub(self.1, Ordering::Relaxed);
    }
}

impl WriteLoad {
    /// Records whether this node is the only member of its cluster.
    pub fn set_solo(&self, solo: bool) {
        self.solo.store(solo, Ordering::Relaxed);
    }

    /// Counts a write proposed here until the returned guard drops.
    pub fn start_write(self: &Arc<Self>) -> WriteInFlight {
        self.start_writes(1)
    }

    /// Counts `n` client writes in flight (a group entry's) until the guard drops: a
    /// group is as many writes for the inline-sync gate, so a single node never blocks
    /// its thread on a group's sync while other clients wait to be read.
    pub fn start_writes(self: &Arc<Self>, n: usize) -> WriteInFlight {
        self.writes_in_flight.fetch_add(n, Ordering::Relaxed);
        WriteInFlight(Arc::clone(self), n)
    }

    /// Client writes proposed here and not yet answered.
    pub fn writes_in_flight(&self) -> usize {
        self.writes_in_flight.load(Ordering::Relaxed)
    }

    /// Whether this node is alone and has no client write in flight: the runtime
    /// thread may poll for the next request before sleeping (`idle_spin`).
    pub fn idle_solo(&self) -> bool {
        self.solo.load(Ordering::Relaxed) && self.writes_in_flight.load(Ordering::Relaxed) == 0
    }

    fn lone_write(&self) -> bool {
        self.solo.load(Ordering::Relaxed) && self.writes_in_flight.load(Ordering::Relaxed) <= 1
    }
}

/// The WAL and how many jobs the WAL thread has yet to finish.
struct Disk {
    wal: Mutex<Wal>,
    /// Jobs sent to the WAL thread and not finished. Zero, with `routed` zero too: every
    /// earlier change is on disk, so an inline append cannot overtake one.
    queued: AtomicUsize,
    /// Jobs given to the purge thread that it has not yet queued for the WAL thread.
    /// While there are any, every WAL job goes through the purge thread too, so the WAL
    /// takes them in the order openraft asked (see `Inner::send`).
    routed: AtomicUsize,
}

impl Disk {
    fn wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal.lock().expect("the WAL lock is never poisoned: no panics while held")
    }

    /// Nothing is queued on either thread: every earlier change is on disk. `routed`
    /// is read first: the purge thread counts a job into `queued` before out of
    /// `routed`, so both read as zero only when nothing is on either thread.
    fn idle(&self) -> bool {
        self.routed.load(Ordering::Acquire) == 0 && self.queued.load(Ordering::Acquire) == 0
    }
}

struct Inner {
    /// Every entry from `first_index` on, as the WAL wrote it (slices of the batch
    /// buffers that were written).
    payloads: VecDeque<Bytes>,
    /// Where each of `payloads` ends in the stream of every byte this log has held
    /// (`start` is where the first begins): the size of any run of entries without a
    /// walk. Truncated and purged with `payloads`.
    ends: VecDeque<u64>,
    start: u64,
    /// The newest entries, decoded: the last `decoded.len()` of `payloads`, at most
    /// `decoded_max` of them and `decoded_bytes_max` of their bytes (but at least one)
    /// once an append returns.
    decoded: VecDeque<Entry>,
    decoded_max: usize,
    decoded_bytes_max: u64,
    first_index: u64,
    dir: PathBuf,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    jobs: mpsc::Sender<Job>,
    /// Purges for the purge thread.
    purges: mpsc::Sender<PurgeJob>,
    /// The purge and WAL threads, joined when the store closes.
    purge_thread: Option<std::thread::JoinHandle<()>>,
    wal_thread: Option<std::thread::JoinHandle<()>>,
    disk: Arc<Disk>,
    load: Arc<WriteLoad>,
}

impl Drop for Inner {
    /// Finishes the disk's work before the files can be opened again: every purge
    /// marker still queued, then the WAL jobs queued behind it. A purge returns before
    /// its marker is written, so without this a store reopened at once could find the
    /// older marker (harmless: its log would start earlier) while this store's WAL
    /// thread still renamed segments in the same directory.
    fn drop(&mut self) {
        // Each thread ends when its channel's last sender is gone: the purge thread
        // holds a WAL sender, so it goes first.
        drop(std::mem::replace(&mut self.purges, mpsc::channel().0));
        if let Some(purge) = self.purge_thread.take() {
            let _ = purge.join();
        }
        drop(std::mem::replace(&mut self.jobs, mpsc::channel().0));
        if let Some(wal) = self.wal_thread.take() {
            let _ = wal.join();
        }
    }
}

impl Inner {
    /// Queues a job for the WAL thread, behind the purges still on the purge thread.
    ///
    /// A purge reaches the WAL only after its marker is written, so a job sent straight
    /// to the WAL could overtake it. For an append after a purge that went past the end
    /// of the log (a follower installing a snapshot beyond its last entry, then
    /// receiving the entries after it), that was an error: the WAL still held the old
    /// entries and refused the gap ("append at 31, log ends before 24"), and openraft
    /// stops on a storage error.
    fn send(&self, job: Job) -> io::Result<()> {
        if self.disk.routed.load(Ordering::Acquire) == 0 {
            return queue_job(&self.disk, &self.jobs, job);
        }
        self.route(PurgeJob::Wal(job))
    }

    /// Gives a job to the purge thread, counted in `disk.routed` until it is queued for
    /// the WAL thread.
    fn route(&self, job: PurgeJob) -> io::Result<()> {
        self.disk.routed.fetch_add(1, Ordering::AcqRel);
        self.purges.send(job).map_err(|_| {
            self.disk.routed.fetch_sub(1, Ordering::AcqRel);
            io::Error::other("the purge thread has stopped")
        })
    }
}

/// Queues a job for the WAL thread, counted in `disk.queued` until it is done.
fn queue_job(disk: &Disk, jobs: &mpsc::Sender<Job>, job: Job) -> io::Result<()> {
    disk.queued.fetch_add(1, Ordering::AcqRel);
    jobs.send(job).map_err(|_| {
        disk.queued.fetch_sub(1, Ordering::AcqRel);
        io::Error::other("the WAL thread has stopped")
    })
}

/// Work for the purge thread, done in order.
enum PurgeJob {
    /// A purge: the marker to make durable, then the WAL's part.
    Purge { through: u64, marker: Vec<u8> },
    /// A WAL job sent while purges were on this thread, to queue behind them.
    Wal(Job),
}

/// The purge thread: writes each purge marker durably, then queues the WAL's part.
///
/// openraft awaits `purge` inside its core task, so every write and reply of the node
/// waited for it. The marker is a small file written atomically (temp file, fsync,
/// rename, directory fsync), and when `purge` waited for the WAL thread to write it
/// behind the appends in flight, the node stalled each snapshot: with the bench's
/// per-second slowest operation beside the servers' logs, the 60–80 ms spikes of the
/// 3-node half-load cells came in the seconds of the snapshots (every 100,000 entries,
/// on all three nodes at once) and nowhere else. Now `purge` returns once the entries
/// are out of memory. Order still makes it safe: a segment is discarded only after
/// the marker that covers it is durable (this thread queues the WAL job after writing
/// it, and jobs are taken in order), and a crash before that leaves the entries on
/// disk, where the log simply starts earlier. Markers are written in purge order,
/// one thread, so an older one never overwrites a newer.
fn purge_thread(dir: PathBuf, disk: Arc<Disk>, jobs: mpsc::Sender<Job>, purges: mpsc::Receiver<PurgeJob>) {
    for job in purges {
        let queued = match job {
            PurgeJob::Purge { through, marker } => match write_atomic(&dir, "purged", &marker) {
                Ok(()) => queue_job(&disk, &jobs, Job::Purge { through }),
                Err(e) => {
                    tracing::error!(through, error = %e, "writing the purge marker failed; the log keeps those entries");
                    Ok(())
                }
            },
            PurgeJob::Wal(job) => queue_job(&disk, &jobs, job),
        };
        // Counted out only once queued: a job sent straight to the WAL when this count
        // is zero comes after everything this thread has passed on.
        disk.routed.fetch_sub(1, Ordering::AcqRel);
        if queued.is_err() {
            return; // the WAL thread has stopped: the store is closing
        }
    }
}

/// The durable Raft log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

/// Bytes a log entry takes encoded, a little more than a lock command's: sizes the
/// buffer an appended batch is encoded into (it grows for larger entries).
const ENTRY_BYTES_GUESS: usize = 160;

fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(io::Error::other)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// The WAL thread: runs jobs in order, coalescing consecutive appends into one sync.
fn wal_thread(disk: Arc<Disk>, jobs: mpsc::Receiver<Job>) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match jobs.recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => return, // every LogStore handle is gone
            }
        }
        // Take everything already queued: that is the group this sync commits.
        while let Ok(job) = jobs.try_recv() {
            pending.push_back(job);
        }
        let mut wal = disk.wal();
        let mut flushed: Vec<IOFlushed<TypeConfig>> = Vec::new();
        let mut result: io::Result<()> = Ok(());
        while let Some(Job::Append { .. }) = pending.front() {
            let Some(Job::Append { first, payloads, done }) = pending.pop_front() else { unreachable!() };
            if result.is_ok() {
                result = wal.append_unsynced(first, &payloads);
            }
            flushed.push(done);
        }
        if !flushed.is_empty() {
            if result.is_ok() {
                result = wal.sync();
            }
            drop(wal);
            // Counted out before the callbacks, which may prompt the next append: these
            // batches are on disk already, so that append may go inline.
            disk.queued.fetch_sub(flushed.len(), Ordering::AcqRel);
            for done in flushed {
                done.io_completed(result.as_ref().map(|_| ()).map_err(copy_err));
            }
            continue;
        }
        // A waiter may be gone (its future dropped): the job is done all the same.
        match pending.pop_front() {
            Some(Job::Truncate { from, done }) => {
                let _ = done.send(wal.truncate_from(from));
            }
            Some(Job::Purge { through }) => {
                if let Err(e) = wal.purge_through(through) {
                    // The entries stay on disk (below the marker, skipped on open).
                    tracing::error!(through, error = %e, "discarding purged WAL segments failed");
                }
            }
            Some(Job::Barrier { done }) => {
                let _ = done.send(Ok(()));
            }
            Some(Job::Append { .. }) | None => continue,
        }
        disk.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LogStore {
    /// Opens the log under `dir` (creating it), recovering a torn tail, and starts the
    /// WAL thread.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        let mut wal = Wal::open(&dir.join("log"), SEGMENT_BYTES)?;
        let vote = read_small(dir, "vote")?.map(|b| decode(&b)).transpose()?;
        let last_purged: Option<LogId> = read_small(dir, "purged")?.map(|b| decode(&b)).transpose()?;
        // Entries at or below the purge marker are covered by a snapshot: skip them.
        let floor = last_purged.map_or(0, |l| l.index + 1).max(wal.first_index());
        // The WAL hands over what it found and keeps only where each entry lies.
        let recovered = wal.take_recovered();
        let skip = floor.saturating_sub(wal.first_index()) as usize;
        if floor > wal.first_index() {
            // The WAL's part of the last purge, done again: a crash can come between the
            // marker and that part, and even after it the WAL recovers what its active
            // segment still holds. Past every entry on disk (a snapshot installed beyond
            // the log), kept entries made the WAL refuse the next append as a gap, at
            // every start; forgotten, that append starts a clean log at `floor`.
            wal.purge_through(floor - 1)?;
        }
        // The recovered payloads are slices of whole segment files (64 MiB each, the
        // preallocated zeros included): copied into one buffer of their own size, so
        // the files' buffers are freed here rather than at the purge that covers them.
        let kept = recovered.len().saturating_sub(skip);
        let mut packed = Vec::with_capacity(recovered.iter().skip(skip).map(Bytes::len).sum());
        let mut spans = Vec::with_capacity(kept);
        for payload in recovered.iter().skip(skip) {
            let from = packed.len();
            packed.extend_from_slice(payload);
            spans.push(from..packed.len());
        }
        drop(recovered);
        let packed = Bytes::from(packed);
        let payloads: VecDeque<Bytes> = spans.into_iter().map(|span| packed.slice(span)).collect();
        // Every recovered entry is decoded once, so a log that does not decode fails
        // here and not when a lagging follower reads it; only the newest are kept.
        let mut ends = VecDeque::with_capacity(payloads.len());
        extend_ends(&mut ends, 0, payloads.iter());
        let window = decoded_window(&ends, 0, DECODED_ENTRIES, DECODED_BYTES_MAX);
        let mut decoded = VecDeque::with_capacity(window);
        for (n, payload) in payloads.iter().enumerate() {
            let entry = decode::<Entry>(payload)?;
            if payloads.len() - n <= window {
                decoded.push_back(entry);
            }
        }
        let first_index = if payloads.is_empty() { wal.next_index().max(floor) } else { floor };
        let (jobs, receiver) = mpsc::channel();
        let disk = Arc::new(Disk { wal: Mutex::new(wal), queued: AtomicUsize::new(0), routed: AtomicUsize::new(0) });
        let for_thread = Arc::clone(&disk);
        let wal =
            std::thread::Builder::new().name("fencelock-wal".into()).spawn(move || wal_thread(for_thread, receiver))?;
        let (purges, purge_receiver) = mpsc::channel();
        let (purge_dir, purge_disk, purge_jobs) = (dir.to_path_buf(), Arc::clone(&disk), jobs.clone());
        let purge = std::thread::Builder::new()
            .name("fencelock-purge".into())
            .spawn(move || purge_thread(purge_dir, purge_disk, purge_jobs, purge_receiver))?;
        let load = Arc::default();
        let (purge_thread, wal_thread) = (Some(purge), Some(wal));
        let dir = dir.to_path_buf();
        let inner = Inner {
            payloads,
            ends,
            start: 0,
            decoded,
            decoded_max: DECODED_ENTRIES,
            decoded_bytes_max: DECODED_BYTES_MAX,
            first_index,
            dir,
            vote,
            last_purged,
            jobs,
            purges,
            purge_thread,
            wal_thread,
            disk,
            load,
        };
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)) })
    }

    /// Keeps only the newest `entries` decoded (at least one) instead of
    /// [`DECODED_ENTRIES`]: the tests run openraft's suite with every older read decoded.
    pub fn set_decoded_entries(&self, entries: usize) {
        let mut inner = self.lock();
        inner.decoded_max = entries.max(1);
        inner.trim_decoded();
    }

    /// The write load this store consults before syncing inline: the node counts its
    /// writes and says whether it is alone.
    pub fn write_load(&self) -> Arc<WriteLoad> {
        Arc::clone(&self.lock().load)
    }

    /// A handle on the log's size (it does not keep the store open).
    pub fn size(&self) -> LogSize {
        LogSize { store: Arc::downgrade(&self.inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("log store lock is never poisoned: no panics while held")
    }

    async fn run(&self, make: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Job) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.lock().send(make(done))?;
        wait.await.map_err(|_| io::Error::other("the WAL thread has stopped"))?
    }
}

impl Inner {
    fn next_index(&self) -> u64 {
        self.first_index + self.payloads.len() as u64
    }

    /// The index of the first decoded entry (`next_index` when none is).
    fn decoded_first(&self) -> u64 {
        self.next_index() - self.decoded.len() as u64
    }

    /// Drops the decoded entries older than the window, on this thread (see
    /// [`DECODED_ENTRIES`]); their bytes stay in `payloads`.
    fn trim_decoded(&mut self) {
        // The window is also bounded by its entries' size: a write may carry up to
        // 1 MiB, and 1,024 such entries held decoded (beside their bytes) were a GB.
        // From the oldest decoded entry, one lookup each: an append trims what it added.
        while self.decoded.len() > 1
            && !window_fits(&self.ends, self.start, self.decoded.len(), self.decoded_max, self.decoded_bytes_max)
        {
            self.decoded.pop_front();
        }
    }

    /// Where entry `index` ends in the byte stream (`start` below the log, the last
    /// entry's end above it).
    fn end_of(&self, index: u64) -> u64 {
        if index < self.first_index {
            return self.start;
        }
        let last = self.ends.back().copied().unwrap_or(self.start);
        self.ends.get((index - self.first_index) as usize).copied().unwrap_or(last)
    }

    /// The entries `first..end` (within the log): decoded from their bytes where older
    /// than the window, cloned from it where not.
    fn read(&self, first: u64, end: u64) -> io::Result<Vec<Entry>> {
        debug_assert!(self.first_index <= first && first <= end && end <= self.next_index());
        let mut out = Vec::with_capacity((end - first) as usize);
        let (at, window) = (self.first_index, self.decoded_first());
        let split = window.clamp(first, end);
        for payload in self.payloads.range((first - at) as usize..(split - at) as usize) {
            out.push(decode::<Entry>(payload)?);
        }
        if split < end {
            // Then `split` is at or past the window's first entry.
            out.extend(self.decoded.range((split - window) as usize..(end - window) as usize).cloned());
        }
        debug_assert_eq!(out.len() as u64, end - first);
        Ok(out)
    }

    /// The last entry's log id, if the log holds any.
    fn last_log_id(&self) -> io::Result<Option<LogId>> {
        match (self.decoded.back(), self.payloads.back()) {
            (Some(entry), _) => Ok(Some(entry.log_id())),
            (None, Some(payload)) => Ok(Some(decode::<Entry>(payload)?.log_id())),
            (None, None) => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let inner = self.lock();
        let first = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        }
        .max(inner.first_index);
        let end = match range.end_bound() {
            Bound::Included(i) => i + 1,
            Bound::Excluded(i) => *i,
            Bound::Unbounded => inner.next_index(),
        }
        .min(inner.next_index());
        if first >= end {
            return Ok(Vec::new());
        }
        inner.read(first, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        let last = inner.last_log_id()?;
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last.or(inner.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Not before the log writes asked for earlier: openraft counts a saved vote as
        // flushing every write before it (its flushed cursor is ordered by vote first),
        // so a follower's answer to the old leader, held until its entries are durable,
        // would go out while they are still in the WAL thread's queue, and a crash
        // could then lose entries the leader counted as replicated.
        let idle = self.lock().disk.idle();
        if !idle {
            self.run(|done| Job::Barrier { done }).await?;
        }
        let mut inner = self.lock();
        write_atomic(&inner.dir, "vote", &encode(vote)?)?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut first = None;
        // The batch is encoded into one buffer and each payload is a slice of it: one
        // allocation per batch, where encoding each entry on its own took several.
        let entries = entries.into_iter();
        let mut encoded = Vec::with_capacity(ENTRY_BYTES_GUESS * entries.size_hint().0.max(1));
        let mut spans = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            let index = entry.index();
            first.get_or_insert(index);
            if inner.payloads.is_empty() && spans.is_empty() {
                inner.first_index = index;
            }
            assert_eq!(index, inner.next_index() + spans.len() as u64, "appends are contiguous");
            let from = encoded.len();
            if let Err(e) = super::encode_into(&entry, &mut encoded) {
                // Nothing of this batch is kept: the decoded entries stay a suffix of
                // the payloads.
                let keep = inner.decoded.len() - spans.len();
                inner.decoded.truncate(keep);
                return Err(io::Error::other(e));
            }
            spans.push(from..encoded.len());
            inner.decoded.push_back(entry);
        }
        let Some(first) = first else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let encoded = Bytes::from(encoded);
        let payloads: Vec<Bytes> = spans.into_iter().map(|span| encoded.slice(span)).collect();
        let Inner { ends, start, .. } = &mut *inner;
        extend_ends(ends, *start, payloads.iter());
        inner.payloads.extend(payloads.iter().cloned());
        inner.trim_decoded();
        debug_assert_eq!(inner.decoded.back().map(|e| e.index()), Some(inner.next_index() - 1));
        if inner.load.lone_write() && inner.disk.idle() {
            // The WAL thread is idle, nothing waits on the purge thread to reach it, and
            // both stay so: only appends, truncates and purges queue work, and openraft
            // calls them one at a time. The entries are in the cache already, so readers
            // on other threads (`--io-threads` > 1) need not wait for the sync.
            let disk = Arc::clone(&inner.disk);
            drop(inner);
            let mut wal = disk.wal();
            let result = wal.append(first, &payloads);
            drop(wal);
            callback.io_completed(result.as_ref().map(|_| ()).map_err(copy_err));
            return Ok(());
        }
        // Readable now; durable when the WAL thread calls the callback after its sync.
        inner.send(Job::Append { first, payloads, done: callback })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        {
            let mut inner = self.lock();
            // An emptied cache takes its first index from the next append.
            let keep = from.saturating_sub(inner.first_index) as usize;
            let keep_decoded = from.saturating_sub(inner.decoded_first()) as usize;
            inner.payloads.truncate(keep);
            inner.ends.truncate(keep);
            inner.decoded.truncate(keep_decoded);
        }
        self.run(|done| Job::Truncate { from, done }).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let marker = encode(&log_id)?;
        let mut inner = self.lock();
        inner.last_purged = Some(log_id);
        // Up to `--snapshot-every` entries: freeing them here (decoded, as they were
        // then) stalled the runtime thread, so every client, for 20–50 ms at 100,000
        // entries. Their bytes are still freed elsewhere (`forget_through`).
        // The decoded window is the newest entries; a purge reaches into it only when it
        // covers nearly the whole log, and then frees at most the window here.
        let purged_decoded = (log_id.index + 1).saturating_sub(inner.decoded_first()).min(inner.decoded.len() as u64);
        inner.decoded.drain(..purged_decoded as usize);
        let purged = (log_id.index + 1).saturating_sub(inner.first_index).min(inner.ends.len() as u64) as usize;
        if purged > 0 {
            inner.start = inner.ends[purged - 1];
            inner.ends.drain(..purged);
        }
        let Inner { payloads, first_index, .. } = &mut *inner;
        forget_through(payloads, first_index, log_id.index);
        debug_assert_eq!(inner.ends.len(), inner.payloads.len());
        // The disk's part runs behind us (see `purge_thread`): openraft waits for this
        // call in its core task.
        inner.route(PurgeJob::Purge { through: log_id.index, marker })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::entry::RaftEntry;
    use openraft::type_config::TypeConfigExt;

    use super::*;

    fn blank(term: u64, index: u64) -> Entry {
        Entry::new_blank(openraft::testing::log_id::<TypeConfig>(term, 1, index))
    }

    /// openraft takes a saved vote as covering every write it asked for before it (its
    /// flushed cursor is ordered by vote first): a follower's held answer to the old
    /// leader goes out as soon as a newer vote is saved. So a vote must not reach the
    /// disk before the appends queued ahead of it, or an answered entry could be missing
    /// after a crash.
    #[tokio::test]
    #[allow(clippy::await_holding_lock, reason = "the test holds the WAL lock to stall the WAL thread")]
    async fn a_vote_is_saved_only_after_the_appends_queued_before_it_are_durable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open");
        // The WAL thread takes this lock to write and sync: holding it stalls the thread.
        let disk = Arc::clone(&store.lock().disk);
        let stalled = disk.wal();
        let (tx, mut flushed) = TypeConfig::oneshot();
        store.append(vec![blank(1, 1)], IOFlushed::<TypeConfig>::signal(tx)).await.expect("append");
        let mut voter = store.clone();
        let saving = tokio::spawn(async move { voter.save_vote(&Vote::new(2, 1)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!saving.is_finished(), "the vote was saved while the append before it was still unsynced");
        assert!(flushed.try_recv().is_err(), "the append cannot be durable while the WAL thread is stalled");
        drop(stalled);
        saving.await.expect("the task ran").expect("the vote is saved");
        assert!(
            matches!(flushed.try_recv(), Ok(Ok(()))),
            "the append queued before the vote is durable by the time the vote is"
        );
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
    }

    /// An entry of about `bytes` bytes (an UNLOCK with a token that size).
    fn sized(index: u64, bytes: usize) -> Entry {
        let command = fencelock_core::Command::Unlock { names: vec![], token: Bytes::from(vec![b'x'; bytes]) };
        let proposal =
            super::super::Proposal { epoch: 1, stamp_ms: 0, origin: 1, op: Arc::new(super::super::Op::Core(command)) };
        Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), proposal)
    }

    async fn append_synced(store: &mut LogStore, entries: Vec<Entry>) {
        let (tx, flushed) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::<TypeConfig>::signal(tx)).await.expect("append");
        flushed.await.expect("the WAL thread answers").expect("synced");
    }

    /// The snapshot policy reads the log's size: it must follow appends, truncates and
    /// purges, measure any run of entries, and count what a restart recovers. And large
    /// entries are not all kept decoded: the window stops at its byte bound, while every
    /// entry stays readable.
    #[tokio::test]
    async fn the_log_measures_its_entries_and_keeps_a_bounded_window_decoded() {
        const ENTRY_BYTES: usize = 256 << 10;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open");
        store.lock().decoded_bytes_max = 1 << 20;
        let size = store.size();
        assert_eq!((size.held(), size.between(None, 100)), (0, Some(0)));
        append_synced(&mut store, (1..=9).map(|i| sized(i, ENTRY_BYTES)).collect()).await;
        let each = store.lock().payloads[0].len() as u64;
        assert!(each > ENTRY_BYTES as u64 && each < ENTRY_BYTES as u64 + 100, "{each}");
        assert_eq!(size.held(), 9 * each);
        assert_eq!(size.between(None, 9), Some(9 * each));
        assert_eq!(size.between(Some(3), 5), Some(2 * each), "entries 4 and 5");
        assert_eq!(size.between(Some(8), 20), Some(each), "past the end: what there is");
        assert_eq!(store.lock().decoded.len(), 3, "the window holds what fits in 1 MiB");
        let all = store.try_get_log_entries(1..10).await.expect("every entry reads back, decoded or not");
        assert_eq!(all.iter().map(|e| e.index()).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
        assert_eq!(all[0], sized(1, ENTRY_BYTES));

        store.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 7))).await.expect("truncate");
        assert_eq!(size.held(), 7 * each, "a truncate gives back 2 entries");
        assert_eq!(store.lock().decoded.len(), 1, "the window lost its 2 newest");
        store.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 3)).await.expect("purge");
        assert_eq!(size.held(), 4 * each, "a purge through 3 gives back 3 more");
        assert_eq!(size.between(None, 5), Some(2 * each), "below the log counts nothing");
        append_synced(&mut store, vec![blank(1, 8)]).await;
        let small = store.lock().payloads.back().expect("the blank").len() as u64;
        assert_eq!(size.held(), 4 * each + small);
        assert_eq!(size.between(Some(7), 8), Some(small));
        assert_eq!(store.lock().decoded.len(), 2, "a small entry joins the window");
        drop(store);
        assert_eq!(size.between(None, 8), None, "the handle does not keep a closed store");

        let store = LogStore::open(dir.path()).expect("reopen");
        let size = store.size();
        assert_eq!(size.held(), 4 * each + small, "a restart counts what it recovered");
        assert_eq!(size.between(Some(5), 8), Some(2 * each + small));
        assert_eq!(store.lock().decoded.len(), 5, "the default window takes every entry left");
    }
}
