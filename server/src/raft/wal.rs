//! A segmented write-ahead log for Raft entries.
//!
//! ```text
//!   dir/seg-<first index, 20 digits>.wal   preallocated to `segment_bytes_max`
//!   record = len:u32 | crc32:u32 | index:u64 | payload     (little-endian)
//!            len = 8 + payload length; crc covers index and payload
//!   end of data = a record header of zeros (the preallocated tail)
//! ```
//!
//! `append` writes a whole batch, then calls `fdatasync` once: that one sync is the
//! group commit every entry of the batch shares, and no entry is reported durable
//! before it. On open, the last segment is scanned and a torn or corrupt tail (a crash
//! mid-write) is cut off; a bad record before the end of an earlier segment is real
//! corruption and refuses to open. The log keeps only where each entry lies (for
//! truncation), not its bytes: the log store holds the entries it serves reads from,
//! and the payloads found on open are handed to it once (`take_recovered`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;

const HEADER_BYTES: usize = 16;
/// Refuse absurd record lengths while scanning, so a corrupt length cannot make
/// recovery allocate gigabytes.
const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How far ahead of the records the segment is overwritten with zeros.
///
/// `posix_fallocate` reserves blocks as *unwritten* extents. A sync that covers the
/// first write into such a block must also convert the extent, which costs CPU and
/// time in the file system. Writing zeros ahead of the records converts the space
/// once per chunk instead. Measured on this machine's ext4 with the WAL alone (3,000
/// group commits of 20 entries of 120 bytes each, alternated runs): p50 158-303 us
/// and 60-230 us of system CPU per sync on unwritten space; 101-148 us and 44-87 us
/// zeroing 256 KiB ahead; 125-142 us and 53-68 us zeroing 64 KiB ahead. The smaller
/// chunk keeps the occasional sync that carries the zeros short.
const ZERO_AHEAD_BYTES: u64 = 64 * 1024;

/// How much of a discarded segment's space is given back at a time, and the pause
/// after each step (see `reclaim`).
const RECLAIM_STEP_BYTES: u64 = 4 * 1024 * 1024;
const RECLAIM_PAUSE: Duration = Duration::from_millis(2);
/// What a discarded segment's name ends with until its space is given back.
const DISCARDED_SUFFIX: &str = ".discarded";

struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Bytes of valid records (the write position).
    len: u64,
    /// Bytes from the start that have been written (records or zeros), so the file
    /// system holds them as written extents. Always `>= len`.
    zeroed: u64,
}

/// Where an entry lives, for truncation.
///
/// Not its payload: the log store keeps the decoded entry, and a second copy of every
/// entry written, held until the next purge (up to `--snapshot-every` of them), was
/// memory that nothing read after start-up.
#[derive(Clone, Copy)]
struct Located {
    segment: usize,
    offset: u64,
}

/// The log. Not thread-safe by itself: the Raft storage adapter owns it.
pub struct Wal {
    dir: PathBuf,
    segment_bytes_max: u64,
    segments: Vec<Segment>,
    active: Option<File>,
    /// Index of `entries[0]`.
    first_index: u64,
    entries: VecDeque<Located>,
    /// The payloads found on open, the first at `first_index`, until they are taken or
    /// the log changes.
    recovered: VecDeque<Bytes>,
    /// Discarded segments for the reclaim thread to remove.
    reclaim: mpsc::Sender<PathBuf>,
    /// Segments discarded by this handle: makes each discarded name unique.
    discarded: u64,
    /// Slow fdatasyncs not yet reported.
    slow_syncs: SlowSyncs,
}

/// A sync at least this slow is reported (etcd warns of a slow fdatasync at 1 s; a lock
/// server's clients notice far less).
const SLOW_SYNC: Duration = Duration::from_millis(20);
/// At most one report of slow syncs per this interval, so a failing disk cannot flood
/// the log.
const SLOW_SYNC_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Counts slow fdatasyncs between reports. A stall of every node's disk at once shows
/// up in the clients' latency as a stall of the cluster; this line tells the two apart.
#[derive(Default)]
struct SlowSyncs {
    last_report: Option<Instant>,
    count: u64,
    slowest: Duration,
}

impl SlowSyncs {
    fn record(&mut self, took: Duration) {
        if took < SLOW_SYNC {
            return;
        }
        self.count += 1;
        self.slowest = self.slowest.max(took);
        let now = Instant::now();
        if self.last_report.is_none_or(|at| now.duration_since(at) >= SLOW_SYNC_REPORT_EVERY) {
            tracing::warn!(
                count = self.count,
                slowest_ms = self.slowest.as_millis() as u64,
                "slow fdatasync: the disk took over {} ms to make the log durable",
                SLOW_SYNC.as_millis()
            );
            *self = SlowSyncs { last_report: Some(now), count: 0, slowest: Duration::ZERO };
        }
    }
}

fn segment_name(first_index: u64) -> String {
    format!("seg-{first_index:020}.wal")
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn corrupt(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The reclaim thread: gives back the space of discarded segments, in steps.
///
/// Removing a segment at once cost the WAL thread 13–15 ms (ext4 frees 64 MiB of
/// written blocks, and this disk is mounted with `discard`), and fdatasyncs on the
/// same disk meanwhile took up to 9–11 ms against a usual maximum of 1–2 ms (measured
/// with a Python loop of 200-byte write + fdatasync beside the removal, three times).
/// Truncating by 4 MiB with 2 ms pauses, then unlinking the empty file, took 50–57 ms
/// in all, and the fdatasyncs beside it stayed at their usual maximum (1.4–2.5 ms).
/// The WAL thread only renames the segment (its records are no longer needed), so no
/// write waits for any of this. Ends when its `Wal` is dropped and the queue is done.
fn reclaim(files: mpsc::Receiver<PathBuf>) {
    for path in files {
        // A file left by a failure here is removed by the next open.
        let _ = shrink_and_remove(&path);
    }
}

fn shrink_and_remove(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    // Bounded: every turn shrinks the file by a step.
    while len > 0 {
        len = len.saturating_sub(RECLAIM_STEP_BYTES);
        file.set_len(len)?;
        std::thread::sleep(RECLAIM_PAUSE);
    }
    drop(file);
    fs::remove_file(path)
}

/// Items a purge's dropping thread frees between pauses (see `drop_gradually`).
const DROP_CHUNK: usize = 4_096;
/// The pause between two chunks.
const DROP_PAUSE: Duration = Duration::from_millis(1);

/// Drops `items` on a short-lived thread of its own, a chunk at a time, at the lowest
/// CPU priority.
///
/// Purging the log after a snapshot frees every entry the snapshot covers (100,000 at
/// the default `--snapshot-every`), one allocation or more each. Done on the runtime or
/// the WAL thread, that stalled every client for tens of milliseconds, so it moved to
/// a thread of its own. But all three nodes of a cluster purge at the same moment, and
/// three threads freeing at full speed on two shared cores still stalled the runtime
/// threads: on 3 nodes at 8,000 paced cycles/s (data on tmpfs, so no disk noise) the
/// p99 was 20–34 ms with the frees and 4.1–4.4 ms with purging switched off, and the
/// slowest operation of a second reached 40–65 ms in the seconds of the snapshots. Now
/// the thread runs at nice 19 and pauses between chunks, so the frees take idle time
/// instead of the clients' time.
fn drop_gradually<T: Send + 'static>(mut items: VecDeque<T>) {
    let dropper = move || {
        // SAFETY: setpriority on the calling thread (who = 0; Linux nice values are
        // per thread) changes only this thread's scheduling weight.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
        while !items.is_empty() {
            let chunk = items.len().min(DROP_CHUNK);
            drop(items.drain(..chunk));
            if !items.is_empty() {
                std::thread::sleep(DROP_PAUSE);
            }
        }
    };
    // If no thread can start, the failed spawn drops the closure, and `items` with it.
    let _ = std::thread::Builder::new().name("fencelock-drop".into()).spawn(dropper);
}

/// Forgets the items of an in-memory log (`items`, the first at index `first_index`)
/// up to and including `index`, as a purge after a snapshot does. The purged items
/// are dropped elsewhere (`drop_gradually`): up to `--snapshot-every` of them, 17–55 ms
/// of frees at 100,000, while everything queued behind the purge waited. The capacity
/// is kept: a log refills to the same length before the next purge, and growing it
/// again from empty (doubling and copying) cost a follower 9.5% of its CPU. With
/// nothing left, the log starts after `index`.
pub(crate) fn forget_through<T: Send + 'static>(items: &mut VecDeque<T>, first_index: &mut u64, index: u64) {
    let n = (index + 1).saturating_sub(*first_index).min(items.len() as u64);
    if !std::mem::needs_drop::<T>() {
        // Nothing to free (the WAL's own positions): moving the front of the ring is
        // all a purge takes.
        items.drain(..n as usize);
    } else if n > 0 {
        let mut purged = std::mem::replace(items, VecDeque::with_capacity(items.capacity()));
        items.extend(purged.drain(n as usize..));
        drop_gradually(purged);
    }
    *first_index += n;
    if items.is_empty() {
        *first_index = (*first_index).max(index + 1);
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, each made durable in its parent: otherwise a
/// power loss soon after the first start could take the whole directory, with the log
/// and vote files synced inside it.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    // Bounded by the path's components.
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

/// Writes a small file atomically: temp file, fsync, rename over, fsync the directory.
/// A crash leaves either the old content or the new, never a torn mix.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(dir, name, |out| out.write_all(bytes))
}

/// `write_atomic` for content written piece by piece (a large snapshot is streamed to
/// the file instead of being assembled in memory first).
pub fn write_atomic_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut out = io::BufWriter::with_capacity(1 << 20, Trickle { file: File::create(&tmp)?, unsynced_bytes: 0 });
    write(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?.file;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Dirty bytes a large file may build up before it is synced. ext4 (data=ordered)
/// makes a WAL fdatasync wait for other files' pending data in the same journal
/// commit: one sync at the end of a 90 MB snapshot (a million locks) stalled
/// concurrent WAL syncs for up to 34 ms on this machine's disk, syncing every 4 MiB
/// for up to 4 ms, and the snapshot took 91 ms instead of 80-88 ms.
const TRICKLE_SYNC_BYTES: u64 = 4 << 20;

/// A file writer that syncs its data every `TRICKLE_SYNC_BYTES`.
struct Trickle {
    file: File,
    unsynced_bytes: u64,
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced_bytes += written as u64;
        if self.unsynced_bytes >= TRICKLE_SYNC_BYTES {
            self.file.sync_data()?;
            self.unsynced_bytes = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Reads a file written by `write_atomic`, if it exists.
pub fn read_small(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reserves disk blocks for the whole segment up front, so appends do not grow the
/// file and `fdatasync` has no size change to flush.
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate (tmpfs on old kernels) still work, unreserved.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(bytes.max(file.metadata()?.len())),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> io::Result<Wal> {
        assert!(segment_bytes_max >= 4096, "segments hold at least one page");
        create_dir_durably(dir)?;
        let (reclaim_tx, reclaim_rx) = mpsc::channel();
        std::thread::Builder::new().name("fencelock-reclaim".into()).spawn(move || reclaim(reclaim_rx))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.ends_with(DISCARDED_SUFFIX) {
                // Discarded before a restart: finish giving its space back.
                let _ = reclaim_tx.send(path);
                continue;
            }
            if let Some(first) = name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".wal")) {
                let first: u64 = first.parse().map_err(|_| corrupt(format!("bad segment name {name}")))?;
                names.push((first, path));
            }
        }
        names.sort();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segments: Vec::new(),
            active: None,
            first_index: names.first().map_or(0, |(first, _)| *first),
            entries: VecDeque::new(),
            recovered: VecDeque::new(),
            reclaim: reclaim_tx,
            discarded: 0,
            slow_syncs: SlowSyncs::default(),
        };
        let count = names.len();
        for (i, (first_index, path)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            wal.recover_segment(first_index, path, last)?;
        }
        if let Some(segment) = wal.segments.last() {
            let file = OpenOptions::new().read(true).write(true).open(&segment.path)?;
            wal.active = Some(file);
        }
        Ok(wal)
    }

    fn recover_segment(&mut self, first_index: u64, path: PathBuf, last: bool) -> io::Result<()> {
        let mut data = Vec::new();
        File::open(&path)?.read_to_end(&mut data)?;
        // The payloads are slices of this buffer: no copy each (the log store copies
        // the ones it keeps into a buffer of their own size).
        let data = Bytes::from(data);
        let expected = self.next_index();
        if !self.entries.is_empty() && first_index > expected {
            // Segments before a gap hold only purged history (appends never leave gaps
            // otherwise): forget them.
            for old in std::mem::take(&mut self.segments) {
                self.discard(&old.path)?;
            }
            self.entries.clear();
            self.recovered.clear();
        } else if !self.entries.is_empty() && first_index != expected {
            return Err(corrupt(format!("segment {} starts at {first_index}, expected {expected}", path.display())));
        }
        if self.entries.is_empty() {
            self.first_index = first_index;
        }
        let segment = self.segments.len();
        let mut offset = 0usize;
        let mut index = first_index;
        let torn = loop {
            if offset + HEADER_BYTES > data.len() {
                break offset < data.len() && data[offset..].iter().any(|&b| b != 0);
            }
            let len = u32::from_le_bytes(data[offset..offset + 4].try_into().expect("4 bytes")) as usize;
            let sum = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().expect("4 bytes"));
            if len == 0 && sum == 0 {
                // The end. In the last segment, anything but zeros after it is part of
                // a batch a crash left half on disk (a later page written, the one with
                // this header not): cut it like a torn record, or a later write that
                // ends right where it starts would join it to the log. (Earlier
                // segments were synced whole before the next one began.)
                break last && data[offset..].iter().any(|&b| b != 0);
            }
            if !(8..=RECORD_BYTES_MAX).contains(&len) || offset + 8 + len > data.len() {
                break true;
            }
            let at = u64::from_le_bytes(data[offset + 8..offset + 16].try_into().expect("8 bytes"));
            let payload = data.slice(offset + 16..offset + 8 + len);
            if crc(at, &payload) != sum {
                break true;
            }
            if at != index {
                return Err(corrupt(format!("record {at} where {index} was expected in {}", path.display())));
            }
            self.entries.push_back(Located { segment, offset: offset as u64 });
            self.recovered.push_back(payload);
            index += 1;
            offset += 8 + len;
        };
        if torn && !last {
            return Err(corrupt(format!("corrupt record at byte {offset} of {}", path.display())));
        }
        if torn {
            // A crash tore the last write: drop it (it was never acknowledged, since
            // acknowledgement waits for the sync) and zero the space for new records.
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(offset as u64)?;
            preallocate(&file, self.segment_bytes_max)?;
            file.sync_all()?;
        }
        // What lies beyond the records may still be unwritten space: zero it on demand.
        self.segments.push(Segment { first_index, path, len: offset as u64, zeroed: offset as u64 });
        Ok(())
    }

    /// Index of the first entry held (meaningful when not empty).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Index the next appended entry must have.
    pub fn next_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    /// Index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.next_index() - 1)
    }

    /// The payload of an entry as found when the log was opened, until the log changes
    /// or the payloads are taken. The tests' view: the log store takes them all at once.
    #[cfg(test)]
    fn recovered(&self, index: u64) -> Option<&Bytes> {
        let at = index.checked_sub(self.first_index)?;
        self.recovered.get(usize::try_from(at).ok()?)
    }

    /// The payloads found when the log was opened, the first at `first_index()` (empty
    /// once the log has changed). The log keeps none of them after this.
    pub fn take_recovered(&mut self) -> VecDeque<Bytes> {
        std::mem::take(&mut self.recovered)
    }

    /// A change makes the payloads found on open stale.
    fn forget_recovered(&mut self) {
        self.recovered = VecDeque::new();
    }

    /// Appends entries with consecutive indexes starting at `first` and syncs once.
    /// When the log is empty, `first` sets where it starts (after a purge or a
    /// snapshot install).
    pub fn append(&mut self, first: u64, payloads: &[Bytes]) -> io::Result<()> {
        self.append_unsynced(first, payloads)?;
        self.sync()
    }

    /// Appends without syncing; `sync` makes them durable. Several of these then one
    /// `sync` is how the log store commits a group of batches with one fdatasync.
    pub fn append_unsynced(&mut self, first: u64, payloads: &[Bytes]) -> io::Result<()> {
        if payloads.is_empty() {
            return Ok(());
        }
        self.forget_recovered();
        if self.entries.is_empty() {
            // Nothing held is needed on disk: start clean at `first`, so a segment never
            // holds a gap (purged history followed by entries after a snapshot).
            for segment in std::mem::take(&mut self.segments) {
                self.discard(&segment.path)?;
            }
            self.active = None;
            self.first_index = first;
        } else if first != self.next_index() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("append at {first}, log ends before {}", self.next_index()),
            ));
        }
        // Refused whole before anything is written (a record past the bound could not
        // be read back). Every request path bounds its entry far below this (a
        // request, a MULTI: 64 MiB; a write group: 8 MiB); an error here stops the
        // node as any storage error does, but without a panic and with the reason.
        if let Some(payload) = payloads.iter().find(|p| p.len() + 8 > RECORD_BYTES_MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an entry of {} bytes is past the WAL's record bound ({RECORD_BYTES_MAX})", payload.len()),
            ));
        }
        let mut buffer: Vec<u8> = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let index = first + i as u64;
            let record = (HEADER_BYTES + payload.len()) as u64;
            let roll = match self.segments.last() {
                None => true,
                Some(s) => {
                    s.len + buffer.len() as u64 + record > self.segment_bytes_max && s.len + buffer.len() as u64 > 0
                }
            };
            if roll {
                self.flush_buffer(&mut buffer)?;
                self.start_segment(index)?;
            }
            let segment = self.segments.len() - 1;
            let offset = self.segments[segment].len + buffer.len() as u64;
            buffer.extend_from_slice(&((8 + payload.len()) as u32).to_le_bytes());
            buffer.extend_from_slice(&crc(index, payload).to_le_bytes());
            buffer.extend_from_slice(&index.to_le_bytes());
            buffer.extend_from_slice(payload);
            self.entries.push_back(Located { segment, offset });
        }
        self.flush_buffer(&mut buffer)
    }

    /// Makes every appended record durable (one fdatasync for everything written since
    /// the last sync: the group commit).
    pub fn sync(&mut self) -> io::Result<()> {
        let Some(file) = &self.active else { return Ok(()) };
        let started = Instant::now();
        let result = file.sync_data();
        self.slow_syncs.record(started.elapsed());
        result
    }

    /// Writes buffered records at the active segment's end (no sync).
    fn flush_buffer(&mut self, buffer: &mut Vec<u8>) -> io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let segment = self.segments.last_mut().expect("a segment is open");
        let file = self.active.as_mut().expect("a segment is open");
        let records = buffer.len() as u64;
        let end = segment.len + records;
        if end > segment.zeroed {
            // Zeros up to the next chunk boundary ride along in the same write (see
            // ZERO_AHEAD_BYTES); they also keep "end of data = a zero header" true.
            let zeroed = end.next_multiple_of(ZERO_AHEAD_BYTES).min(self.segment_bytes_max).max(end);
            buffer.resize((zeroed - segment.len) as usize, 0);
            segment.zeroed = zeroed;
        }
        // One positioned write instead of a seek and a write: a syscall less per
        // group commit, and the file offset never matters.
        std::os::unix::fs::FileExt::write_all_at(&*file, buffer, segment.len)?;
        segment.len = end;
        buffer.clear();
        debug_assert!(segment.zeroed >= segment.len);
        Ok(())
    }

    fn start_segment(&mut self, first_index: u64) -> io::Result<()> {
        if let Some(previous) = self.active.take() {
            // Records already written to the old segment must be durable before the
            // new one holds anything after them.
            previous.sync_data()?;
        }
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        preallocate(&file, self.segment_bytes_max)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment { first_index, path, len: 0, zeroed: 0 });
        self.active = Some(file);
        Ok(())
    }

    /// Takes a segment whose records are no longer needed out of the log: renames it
    /// (a file that ends in `DISCARDED_SUFFIX` is never read as a segment) and leaves
    /// the removal to the reclaim thread. A crash before the rename is durable leaves
    /// the segment in place, as if it had not been discarded: the callers' logic
    /// already covers that (purged entries below the marker, a gap before the rest).
    fn discard(&mut self, path: &Path) -> io::Result<()> {
        self.discarded += 1;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}{DISCARDED_SUFFIX}", self.discarded));
        let trash = path.with_file_name(name);
        fs::rename(path, &trash)?;
        // If the thread is gone the file stays until the next open removes it.
        let _ = self.reclaim.send(trash);
        Ok(())
    }

    /// Removes every entry at or after `index` (a leader overwrote them), durably.
    pub fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        if index >= self.next_index() {
            return Ok(());
        }
        self.forget_recovered();
        let keep = index.saturating_sub(self.first_index) as usize;
        let cut = self.entries.get(keep).map(|e| (e.segment, e.offset)).expect("index is held");
        self.entries.truncate(keep);
        let (segment, offset) = cut;
        let later = self.segments.len() > segment + 1;
        while self.segments.len() > segment + 1 {
            let removed = self.segments.pop().expect("more than one");
            fs::remove_file(&removed.path)?;
        }
        if offset == 0 && segment > 0 {
            let removed = self.segments.pop().expect("segment exists");
            fs::remove_file(&removed.path)?;
        } else {
            if later {
                // The removals are durable before the cut: a crash that kept the cut
                // but not them would leave a gap, which open reads as purged history
                // before the later segments, and the entries kept here would be lost.
                // (ext4 commits them in order anyway; not every file system does.)
                sync_dir(&self.dir)?;
            }
            let segment = self.segments.last_mut().expect("segment exists");
            let file = OpenOptions::new().write(true).open(&segment.path)?;
            file.set_len(offset)?;
            preallocate(&file, self.segment_bytes_max)?;
            file.sync_all()?;
            segment.len = offset;
            segment.zeroed = offset;
        }
        sync_dir(&self.dir)?;
        self.active = match self.segments.last() {
            Some(s) => Some(OpenOptions::new().read(true).write(true).open(&s.path)?),
            None => None,
        };
        if self.entries.is_empty() {
            self.first_index = index;
        }
        Ok(())
    }

    /// Forgets entries up to and including `index` (a snapshot covers them) and
    /// deletes segments that hold nothing newer. The active segment always stays.
    pub fn purge_through(&mut self, index: u64) -> io::Result<()> {
        self.forget_recovered();
        forget_through(&mut self.entries, &mut self.first_index, index);
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_index <= index + 1 {
            let segment = self.segments.remove(0);
            self.discard(&segment.path)?;
            removed += 1;
        }
        if removed > 0 {
            for entry in &mut self.entries {
                entry.segment -= removed;
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    fn payloads(range: std::ops::Range<u64>) -> Vec<Bytes> {
        range.map(|i| Bytes::from(format!("entry-{i}-{}", "x".repeat((i % 7) as usize)))).collect()
    }

    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    fn names(dir: &Path) -> Vec<String> {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    }

    fn segment_files(dir: &Path) -> usize {
        names(dir).iter().filter(|n| n.ends_with(".wal")).count()
    }

    fn wait_until_no_discarded(dir: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while names(dir).iter().any(|n| n.ends_with(DISCARDED_SUFFIX)) {
            assert!(std::time::Instant::now() < deadline, "discarded files stayed: {:?}", names(dir));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_discarded_segment_shrinks_away_and_a_leftover_one_is_removed_on_open() {
        let dir = temp();
        // Larger than a reclaim step, so it is given back in several.
        let big = RECLAIM_STEP_BYTES * 2 + 4096;
        let mut wal = Wal::open(dir.path(), big).unwrap();
        wal.append(1, &payloads(1..10)).unwrap();
        let first = dir.path().join(segment_name(1));
        wal.discard(&first).unwrap();
        assert!(!first.exists(), "renamed at once");
        wait_until_no_discarded(dir.path());
        drop(wal);

        // One left by a crash (before its space was given back) is not a segment.
        fs::write(dir.path().join(format!("{}.3{DISCARDED_SUFFIX}", segment_name(1))), b"old records").unwrap();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(wal.last_index(), None);
        wait_until_no_discarded(dir.path());
        wal.append(1, &payloads(1..3)).unwrap();
        assert_eq!(names(dir.path()), vec![segment_name(1)]);
    }

    #[test]
    fn an_entry_past_the_record_bound_is_refused_and_the_log_goes_on() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(1, &payloads(1..3)).unwrap();
        // Zeroed by the allocator on demand: never touched, so it costs no memory.
        let huge = Bytes::from(vec![0u8; RECORD_BYTES_MAX]);
        let refused = wal.append(3, &[Bytes::from_static(b"fits"), huge]).unwrap_err();
        assert!(refused.to_string().contains("past the WAL's record bound"), "{refused}");
        wal.append(3, &payloads(3..5)).unwrap();
        assert_eq!(wal.last_index(), Some(4), "nothing of the refused batch was written");
    }

    #[test]
    fn append_reopen_read() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(1, &payloads(1..150)).unwrap();
        wal.append(150, &payloads(150..300)).unwrap();
        assert!(wal.append(400, &payloads(400..401)).is_err(), "gaps are refused");
        drop(wal);
        let wal = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!((wal.first_index(), wal.last_index()), (1, Some(299)));
        for (i, p) in (1..300).zip(payloads(1..300)) {
            assert_eq!(wal.recovered(i), Some(&p));
        }
        assert!(fs::read_dir(dir.path()).unwrap().count() > 1, "small segments rolled");
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(1, &payloads(1..10)).unwrap();
        let path = wal.segments[0].path.clone();
        let end = wal.segments[0].len;
        drop(wal);
        // Simulate a crash in the middle of writing entry 10: half a record.
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(end)).unwrap();
        let mut half = Vec::new();
        half.extend_from_slice(&100u32.to_le_bytes());
        half.extend_from_slice(&7u32.to_le_bytes());
        half.extend_from_slice(&10u64.to_le_bytes());
        half.extend_from_slice(b"partial");
        file.write_all(&half).unwrap();
        drop(file);
        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(wal.last_index(), Some(9));
        wal.append(10, &payloads(10..12)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(wal.last_index(), Some(11));
        assert_eq!(wal.recovered(10), Some(&payloads(10..11)[0]));
    }

    #[test]
    fn directories_are_created_with_their_missing_parents() {
        let dir = temp();
        let nested = dir.path().join("data").join("raft").join("log");
        create_dir_durably(&nested).unwrap();
        assert!(nested.is_dir());
        create_dir_durably(&nested).unwrap(); // already there: nothing to do
        let file = dir.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        assert!(create_dir_durably(&file.join("below")).is_err(), "a file is not a directory");
    }

    #[test]
    fn records_left_past_the_end_of_a_crashed_batch_are_cut_on_open() {
        // A crash persisted a later page of an unsynced batch but not the one with its
        // first header: the scan stops at that zero header, and valid-looking records
        // lie beyond it. Left there, a later write ending right at them (no zero
        // padding: it ends on a ZERO_AHEAD_BYTES boundary) joins them to the log, and
        // the next open takes a record nobody acknowledged as the next entry.
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(1, &payloads(1..2)).unwrap();
        let second_at = wal.segments[0].len;
        // Entry 2 ends on the boundary, so entry 3 starts on it.
        let sized = |fill: u8| Bytes::from(vec![fill; (ZERO_AHEAD_BYTES - second_at) as usize - HEADER_BYTES]);
        wal.append(2, &[sized(b'a')]).unwrap();
        assert_eq!(wal.segments[0].len, ZERO_AHEAD_BYTES);
        wal.append(3, &[Bytes::from_static(b"never acknowledged")]).unwrap();
        let path = wal.segments[0].path.clone();
        drop(wal);
        // The crash: entry 2's header never reached the disk; entry 3's page did.
        let mut data = fs::read(&path).unwrap();
        data[second_at as usize..second_at as usize + 8].fill(0);
        fs::write(&path, &data).unwrap();

        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(wal.last_index(), Some(1));
        // A new entry 2 of the same size ends exactly where the old entry 3 starts.
        wal.append(2, &[sized(b'b')]).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(wal.last_index(), Some(2), "the old entry 3 came back");
        assert_eq!(wal.recovered(2), Some(&sized(b'b')));
    }

    #[test]
    fn flipped_bit_in_the_last_record_is_treated_as_torn() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(1, &payloads(1..4)).unwrap();
        let (path, offset) = (wal.segments[0].path.clone(), wal.entries[2].offset);
        drop(wal);
        let mut data = fs::read(&path).unwrap();
        data[offset as usize + 20] ^= 0x40;
        fs::write(&path, &data).unwrap();
        let wal = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(wal.last_index(), Some(2));
    }

    #[test]
    fn corruption_before_the_last_segment_refuses_to_open() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(1, &payloads(1..200)).unwrap();
        let first = wal.segments[0].path.clone();
        drop(wal);
        let mut data = fs::read(&first).unwrap();
        data[30] ^= 0xff;
        fs::write(&first, &data).unwrap();
        assert_eq!(Wal::open(dir.path(), 4096).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }

    #[test]
    fn truncate_then_overwrite_survives_reopen() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(1, &payloads(1..100)).unwrap();
        wal.truncate_from(40).unwrap();
        assert_eq!(wal.last_index(), Some(39));
        let replaced: Vec<Bytes> = (40..45).map(|i| Bytes::from(format!("new-{i}"))).collect();
        wal.append(40, &replaced).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(wal.last_index(), Some(44));
        assert_eq!(wal.recovered(40), Some(&replaced[0]));
        assert_eq!(wal.recovered(39), Some(&payloads(39..40)[0]));
    }

    #[test]
    fn purge_drops_old_segments_and_reopen_starts_after() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(1, &payloads(1..300)).unwrap();
        let before = segment_files(dir.path());
        wal.purge_through(250).unwrap();
        assert_eq!(wal.first_index(), 251);
        assert_eq!(wal.recovered(250), None);
        assert!(segment_files(dir.path()) < before);
        // The reclaim thread removes what was discarded, off the caller's thread.
        wait_until_no_discarded(dir.path());
        drop(wal);
        let wal = Wal::open(dir.path(), 4096).unwrap();
        // Reopening may keep some purged entries of a partly purged segment: the
        // caller's purge marker says which are covered by the snapshot.
        assert!(wal.first_index() <= 251 && wal.last_index() == Some(299));
        assert_eq!(wal.recovered(299), Some(&payloads(299..300)[0]));
    }

    #[test]
    fn a_large_file_written_in_synced_pieces_reads_back_whole() {
        let dir = temp();
        // 10 MiB + a tail: two trickle syncs, then the final one.
        let content: Vec<u8> = (0..(10 << 20) + 12_345).map(|i: u32| (i % 251) as u8).collect();
        write_atomic_with(dir.path(), "big", |out| {
            for piece in content.chunks(100_000) {
                out.write_all(piece)?;
            }
            Ok(())
        })
        .expect("written");
        assert_eq!(read_small(dir.path(), "big").expect("read"), Some(content));
        assert!(!dir.path().join("big.tmp").exists(), "the temp file was renamed");
        // Replacing it leaves only the new content.
        write_atomic(dir.path(), "big", b"small").expect("replaced");
        assert_eq!(read_small(dir.path(), "big").expect("read"), Some(b"small".to_vec()));
    }

    /// The extents of `path` as (logical start, length, unwritten), via FIEMAP; `None`
    /// where the file system cannot say (tmpfs, some overlays).
    fn extents(path: &Path) -> Option<Vec<(u64, u64, bool)>> {
        use std::os::fd::AsRawFd;
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B; // _IOWR('f', 11, struct fiemap)
        const FIEMAP_FLAG_SYNC: u32 = 1;
        const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
        const SLOTS: usize = 64;
        // struct fiemap (32 bytes) followed by SLOTS struct fiemap_extent (56 bytes each).
        let mut raw = vec![0u64; (32 + 56 * SLOTS) / 8];
        raw[1] = u64::MAX; // fm_length
        let words = raw.as_mut_ptr() as *mut u32;
        // SAFETY: `raw` is large enough for the header and SLOTS extents, u64-aligned.
        unsafe {
            *words.add(4) = FIEMAP_FLAG_SYNC; // fm_flags
            *words.add(6) = SLOTS as u32; // fm_extent_count
        }
        let file = File::open(path).ok()?;
        // SAFETY: FS_IOC_FIEMAP reads and fills the buffer laid out above.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, raw.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: the kernel wrote fm_mapped_extents at word 5.
        let mapped = unsafe { *words.add(5) } as usize;
        Some(
            (0..mapped.min(SLOTS))
                .map(|i| {
                    let at = 4 + 7 * i; // in u64 words
                    let flags = (raw[at + 5] & 0xffff_ffff) as u32;
                    (raw[at], raw[at + 2], flags & FIEMAP_EXTENT_UNWRITTEN != 0)
                })
                .collect(),
        )
    }

    #[test]
    fn records_land_on_written_space_zeroed_ahead_in_chunks() {
        let dir = temp();
        let segment_bytes = 4 * ZERO_AHEAD_BYTES;
        let mut wal = Wal::open(dir.path(), segment_bytes).unwrap();
        // 1 KiB payloads, 10 per batch (well under half a chunk): stop halfway into the
        // second chunk, so every batch crossed a boundary or landed on zeroed space.
        let payload = Bytes::from(vec![7u8; 1024]);
        let mut next = 1;
        while wal.segments.first().map_or(0, |s| s.len) < ZERO_AHEAD_BYTES * 3 / 2 {
            wal.append(next, &vec![payload.clone(); 10]).unwrap();
            next += 10;
        }
        let segment = &wal.segments[0];
        assert_eq!(wal.segments.len(), 1, "still one segment");
        assert_eq!(segment.zeroed, 2 * ZERO_AHEAD_BYTES, "zeroed to the chunk past the records");
        let data = fs::read(&segment.path).unwrap();
        assert_eq!(data.len() as u64, segment_bytes, "the zeros did not grow the file");
        assert!(data[segment.len as usize..].iter().all(|&b| b == 0), "zeros after the records");
        // Only where the file system reports unwritten extents at all (ext4, XFS do; a
        // file system without fallocate leaves a sparse file with none to report).
        let extents = extents(&segment.path).filter(|e| e.iter().any(|&(_, _, unwritten)| unwritten));
        if let Some(extents) = extents {
            let unwritten_before_frontier =
                extents.iter().any(|&(start, _, unwritten)| unwritten && start < segment.zeroed);
            assert!(!unwritten_before_frontier, "space up to the frontier is written: {extents:?}");
            let unwritten_after =
                extents.iter().any(|&(start, len, unwritten)| unwritten && start + len > segment.zeroed);
            assert!(unwritten_after, "the rest stays reserved, unwritten: {extents:?}");
        }
        drop(wal);
        let mut wal = Wal::open(dir.path(), segment_bytes).unwrap();
        assert_eq!((wal.first_index(), wal.last_index()), (1, Some(next - 1)));
        // After reopening, appends zero ahead again and still read back.
        wal.append(next, &vec![payload.clone(); 300]).unwrap();
        let wal = Wal::open(dir.path(), segment_bytes).unwrap();
        assert_eq!(wal.last_index(), Some(next + 299));
        assert_eq!(wal.recovered(next + 299), Some(&payload));
    }

    #[test]
    fn written_payloads_are_not_kept_and_the_recovered_ones_are_handed_over_once() {
        // A payload that owns a clone of `alive`: the count falls when it is freed.
        struct Owner(#[allow(dead_code)] std::sync::Arc<()>, Vec<u8>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.1
            }
        }
        let dir = temp();
        let alive = std::sync::Arc::new(());
        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        let batch: Vec<Bytes> =
            (0..5).map(|i| Bytes::from_owner(Owner(std::sync::Arc::clone(&alive), vec![i; 40]))).collect();
        wal.append(1, &batch).unwrap();
        drop(batch);
        assert_eq!(std::sync::Arc::strong_count(&alive), 1, "the log holds no payload it wrote");
        assert_eq!(wal.recovered(1), None, "nothing was recovered: the log was empty");
        drop(wal);

        let mut wal = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(wal.recovered(3), Some(&Bytes::from(vec![2; 40])));
        let recovered = wal.take_recovered();
        assert_eq!(recovered.len(), 5);
        assert_eq!(recovered[4], Bytes::from(vec![4; 40]));
        assert_eq!(wal.recovered(3), None, "taken once");
        assert!(wal.take_recovered().is_empty());
        assert_eq!((wal.first_index(), wal.last_index()), (1, Some(5)), "the positions stay");
        wal.truncate_from(3).unwrap();
        assert_eq!(wal.last_index(), Some(2));
    }

    #[test]
    fn recovered_payloads_go_stale_at_the_first_change() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(1, &payloads(1..4)).unwrap();
        drop(wal);
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(wal.recovered(1), Some(&payloads(1..2)[0]));
        wal.append(4, &payloads(4..5)).unwrap();
        assert_eq!(wal.recovered(1), None, "an append makes the recovered payloads stale");
        assert!(wal.take_recovered().is_empty());
    }

    #[test]
    fn forget_through_keeps_the_rest_in_order_and_the_capacity() {
        // Items are their own log indexes, from 0.
        let (mut items, mut first_index): (VecDeque<u64>, u64) = ((0..1_000).collect(), 0);
        let capacity = items.capacity();
        forget_through(&mut items, &mut first_index, 989);
        assert_eq!(items.iter().copied().collect::<Vec<_>>(), (990..1_000).collect::<Vec<_>>());
        assert_eq!(first_index, 990);
        assert!(items.capacity() >= capacity, "{} < {capacity}", items.capacity());
        forget_through(&mut items, &mut first_index, 1_039);
        assert!(items.is_empty(), "more than it holds empties it");
        assert_eq!(first_index, 1_040, "an empty log starts after the purge point");
    }

    #[test]
    fn purged_items_are_all_dropped_in_chunks_on_another_thread() {
        // Each item holds a clone of `alive`: the count falls back to 1 once every
        // purged item is dropped. More than one chunk, so the pauses are crossed.
        let alive = std::sync::Arc::new(());
        let total = DROP_CHUNK * 3 + 17;
        let mut items: VecDeque<std::sync::Arc<()>> = (0..total).map(|_| std::sync::Arc::clone(&alive)).collect();
        let mut first_index = 0;
        forget_through(&mut items, &mut first_index, total as u64 - 11);
        assert_eq!(items.len(), 10, "the ten items after the purge point stay");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::sync::Arc::strong_count(&alive) > 1 + items.len() {
            assert!(std::time::Instant::now() < deadline, "purged items were never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::sync::Arc::strong_count(&alive), 11);
    }

    #[test]
    fn slow_syncs_are_counted_and_reported_at_most_once_a_second() {
        let mut slow = SlowSyncs::default();
        slow.record(SLOW_SYNC - Duration::from_millis(1));
        assert_eq!((slow.count, slow.last_report), (0, None), "a sync under the bound is not slow");
        slow.record(SLOW_SYNC * 2);
        let first_report = slow.last_report.expect("the first slow sync is reported at once");
        assert_eq!(slow.count, 0, "a report resets the count");
        slow.record(SLOW_SYNC * 3);
        slow.record(SLOW_SYNC);
        assert_eq!(slow.count, 2, "within the interval slow syncs are only counted");
        assert_eq!(slow.slowest, SLOW_SYNC * 3);
        assert_eq!(slow.last_report, Some(first_report));
        slow.last_report = Some(first_report - SLOW_SYNC_REPORT_EVERY);
        slow.record(SLOW_SYNC);
        assert_eq!(slow.count, 0, "after the interval the next slow sync reports the ones counted");
        assert!(slow.last_report.expect("reported") > first_report);
    }

    #[test]
    fn purging_everything_then_appending_after_a_snapshot() {
        let dir = temp();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(1, &payloads(1..10)).unwrap();
        wal.purge_through(500).unwrap();
        assert_eq!(wal.last_index(), None);
        assert_eq!(wal.next_index(), 501);
        wal.append(501, &payloads(501..503)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(wal.last_index(), Some(502));
    }

    #[test]
    fn atomic_small_files() {
        let dir = temp();
        assert_eq!(read_small(dir.path(), "vote").unwrap(), None);
        write_atomic(dir.path(), "vote", b"one").unwrap();
        write_atomic(dir.path(), "vote", b"two").unwrap();
        assert_eq!(read_small(dir.path(), "vote").unwrap(), Some(b"two".to_vec()));
    }
}
