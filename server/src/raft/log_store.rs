//! openraft's `RaftLogStorage` over the WAL. Entries are postcard-encoded; the vote and
//! the purge marker are small files written atomically.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::wal::{read_small, write_atomic, Wal};
use super::{Entry, LogId, TypeConfig, Vote};

/// Segment size: etcd uses 64 MiB. Preallocation makes appends overwrite reserved
/// blocks instead of growing the file.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

struct Inner {
    wal: Wal,
    dir: PathBuf,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

/// The durable Raft log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(io::Error::other)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl LogStore {
    /// Opens the log under `dir` (creating it), recovering a torn tail.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        let wal = Wal::open(&dir.join("log"), SEGMENT_BYTES)?;
        let vote = read_small(dir, "vote")?.map(|b| decode(&b)).transpose()?;
        let last_purged = read_small(dir, "purged")?.map(|b| decode(&b)).transpose()?;
        let inner = Inner { wal, dir: dir.to_path_buf(), vote, last_purged };
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("log store lock is never poisoned: no panics while held")
    }
}

impl Inner {
    fn entry(&self, index: u64) -> io::Result<Option<Entry>> {
        self.wal.get(index).map(|b| decode(b)).transpose()
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
        };
        let floor = inner.last_purged.map_or(0, |l| l.index + 1).max(inner.wal.first_index());
        let end = match range.end_bound() {
            Bound::Included(i) => i + 1,
            Bound::Excluded(i) => *i,
            Bound::Unbounded => inner.wal.next_index(),
        }
        .min(inner.wal.next_index());
        let mut entries = Vec::new();
        for index in first.max(floor)..end {
            match inner.entry(index)? {
                Some(entry) => entries.push(entry),
                None => break,
            }
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        let last = match inner.wal.last_index() {
            Some(index) if inner.last_purged.is_none_or(|p| index > p.index) => inner.entry(index)?.map(|e| e.log_id()),
            _ => None,
        };
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last.or(inner.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
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
        let mut first = None;
        let mut payloads = Vec::new();
        for entry in entries {
            first.get_or_insert(entry.index());
            payloads.push(Bytes::from(encode(&entry)?));
        }
        let Some(first) = first else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let mut inner = self.lock();
        // One fdatasync for the whole batch: the group commit. The callback tells
        // openraft the entries are durable only after it.
        let result = inner.wal.append(first, &payloads);
        drop(inner);
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.lock().wal.truncate_from(from)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = self.lock();
        // The marker goes first: if we crash between the two steps, the entries that
        // remain are simply below the marker and ignored.
        write_atomic(&inner.dir, "purged", &encode(&log_id)?)?;
        inner.last_purged = Some(log_id);
        inner.wal.purge_through(log_id.index)
    }
}
