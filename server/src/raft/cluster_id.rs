//! The cluster's identity: a random 128-bit id drawn by the node that forms the
//! cluster, which every member keeps in `<data-dir>/cluster-id` and states when it
//! opens a peer connection (`PeerRequest::Hello`).
//!
//! Node ids are small integers chosen by the operator and reused from cluster to
//! cluster, so without this a node of one cluster answered another's leader whenever
//! an address was reused or mistyped (a redeployment next to an old cluster still
//! running, a `--peers` list copied from another environment). The harm is not only
//! noise: the other leader's higher term made this node's own leader step down, and a
//! leader of the other cluster whose last log term passed this node's was granted its
//! vote and then overwrote this node's log, entries committed in its own cluster
//! included (the other leader's log matches at the initial membership, index 0, as
//! every cluster's does). etcd refuses a member of another cluster the same way (its
//! cluster ID on every peer request).
//!
//! Rules:
//! - the node that forms the cluster (a single node on its first start, the lowest id
//!   of `--peers`) draws the id before it serves peers (so that a stranger connecting
//!   meanwhile is refused) and writes it down just before it initializes Raft;
//! - a node that holds no Raft state at all (a first start that does not form the
//!   cluster, a `--join`er) takes the id of the first peer that connects to it stating
//!   one (its first leader: trust on first use, as it cannot know its cluster before),
//!   and writes it down before it answers. No other node ever takes an id: not the
//!   opening side (a leader or a candidate), and not a member holding data without an
//!   id (of a cluster formed before this build, or an older member upgraded), which a
//!   stranger's id would otherwise reach first and spread from;
//! - two ids that differ end the connection, logged on both sides;
//! - where either side has no id there is nothing to compare: a build from before the
//!   greeting (level below 4; it sends none, and closes the connection on one), a
//!   cluster formed before this build, and a member that was older when the cluster
//!   formed. Such clusters and members stay without an id: no member draws one later,
//!   since two leaders drawing different ones would split the cluster. Once every
//!   member is at level 4, a node with an id takes no vote, append, snapshot or
//!   transfer on a connection that did not open with a greeting.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The file, in the data directory, that holds the cluster's id.
const FILE_NAME: &str = "cluster-id";

/// A cluster's id.
pub type Id = u128;

/// How an id is shown (files, logs, INFO): 32 hexadecimal digits.
pub fn show(id: Id) -> String {
    format!("{id:032x}")
}

/// This node's cluster id, once drawn or learned.
pub struct ClusterId {
    /// None: kept in memory only (unit tests of the network).
    path: Option<PathBuf>,
    id: OnceLock<Id>,
    /// Whether the id is in the file (read from it, or written).
    kept: std::sync::atomic::AtomicBool,
    /// Held while an id is set or written, so that two peers stating ids at once cannot
    /// both be taken.
    writing: Mutex<()>,
}

impl ClusterId {
    /// Reads the id kept in `data_dir`, if any. A damaged file is an error, not "no id":
    /// taking another cluster's id would defeat the check.
    pub fn open(data_dir: &Path) -> std::io::Result<ClusterId> {
        let path = data_dir.join(FILE_NAME);
        let id = OnceLock::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let parsed = (text.trim().len() == 32).then(|| Id::from_str_radix(text.trim(), 16).ok()).flatten();
                let Some(parsed) = parsed else {
                    return Err(std::io::Error::other(format!(
                        "{} does not hold a cluster id (32 hexadecimal digits): {text:?}",
                        path.display()
                    )));
                };
                let _ = id.set(parsed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let kept = std::sync::atomic::AtomicBool::new(id.get().is_some());
        Ok(ClusterId { path: Some(path), id, kept, writing: Mutex::new(()) })
    }

    /// An id kept in memory only, for unit tests.
    #[cfg(test)]
    pub fn in_memory(id: Option<Id>) -> ClusterId {
        let cell = OnceLock::new();
        if let Some(id) = id {
            let _ = cell.set(id);
        }
        ClusterId { path: None, id: cell, kept: true.into(), writing: Mutex::new(()) }
    }

    /// The id, if drawn or learned.
    pub fn get(&self) -> Option<Id> {
        self.id.get().copied()
    }

    /// The id this node will form its cluster under: the one kept (a start that formed
    /// it and stopped before its first entry), else a new random one, in memory only
    /// until `keep`. Drawn before the node serves peers, so that a stranger connecting
    /// meanwhile is refused instead of giving it its id; not written yet, so that a
    /// node stopped before it forms the cluster (and started with `--join`, or under a
    /// list where it is no longer the lowest) keeps no id its cluster does not have.
    /// Nobody learns it before `keep`: only the opening side states an id that others
    /// take, and the node opens Raft connections only once it has formed the cluster.
    pub fn draw(&self) -> Id {
        let _writing = self.writing.lock().expect("not poisoned");
        *self.id.get_or_init(random_id)
    }

    /// Writes the drawn id down (if not yet), just before the cluster is formed.
    pub fn keep(&self) -> Result<(), String> {
        let _writing = self.writing.lock().expect("not poisoned");
        match self.get() {
            Some(id) if !self.kept.load(std::sync::atomic::Ordering::Acquire) => self.write(id),
            _ => Ok(()),
        }
    }

    fn write(&self, id: Id) -> Result<(), String> {
        if let Some(path) = &self.path {
            crate::durable::replace_file(path, format!("{}\n", show(id)).as_bytes())
                .map_err(|e| format!("could not write the cluster id to {}: {e}", path.display()))?;
        }
        self.kept.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Checks the id a peer stated (`theirs`) against this node's: two ids must be
    /// equal; where either side has none there is nothing to compare. With `take` (the
    /// node was connected to, and holds no Raft state: it belongs to no cluster yet), a
    /// node without an id takes the stated one. Answers this node's id, or why the peer
    /// is refused.
    pub fn check(&self, theirs: Option<Id>, take: bool) -> Result<Option<Id>, Refused> {
        match (self.get(), theirs) {
            (Some(ours), Some(theirs)) if ours != theirs => Err(Refused::Mismatch(mismatch(ours, theirs))),
            (Some(ours), _) => Ok(Some(ours)),
            (None, Some(theirs)) if take => self.take(theirs).map(Some),
            (None, _) => Ok(None),
        }
    }

    /// Sets the id to `wanted`, written down first, unless one is set already (which
    /// must be the same).
    fn take(&self, wanted: Id) -> Result<Id, Refused> {
        let _writing = self.writing.lock().expect("not poisoned");
        match self.get() {
            Some(ours) if ours != wanted => Err(Refused::Mismatch(mismatch(ours, wanted))),
            Some(ours) => Ok(ours),
            None => {
                self.write(wanted).map_err(Refused::Unwritten)?;
                let _ = self.id.set(wanted);
                Ok(wanted)
            }
        }
    }
}

/// Why a greeting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The two ids differ: the peer belongs to another cluster.
    #[error("{0}")]
    Mismatch(String),
    /// The peer's id could not be written down, so it was not taken (a disk error).
    #[error("{0}")]
    Unwritten(String),
}

/// Why a peer stating `theirs` is refused by a node holding `ours`.
pub fn mismatch(ours: Id, theirs: Id) -> String {
    format!(
        "the peer belongs to another cluster (its id {}, this node's {}): an address in --peers or the membership \
         points at a node of another cluster; nothing was exchanged with it",
        show(theirs),
        show(ours)
    )
}

/// How often at most a node logs a refused connection from one peer (it reconnects
/// every heartbeat).
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The most peers whose last refusal is remembered; past it the memory starts over
/// (a few more lines in the log, never unbounded memory).
const REFUSALS_REMEMBERED_MAX: usize = 256;

/// Whether a refusal concerning `peer` (a node id and an address, as the caller names
/// it) is to be logged now: at most once per `REFUSAL_LOG_EVERY` for each, on either
/// side of a connection. Notes it when it is.
pub fn refusal_due(peer: &str) -> bool {
    static LAST: Mutex<Option<std::collections::HashMap<String, std::time::Instant>>> = Mutex::new(None);
    let mut last = LAST.lock().expect("not poisoned");
    let last = last.get_or_insert_with(Default::default);
    if last.len() >= REFUSALS_REMEMBERED_MAX {
        last.clear();
    }
    let due = last.get(peer).is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY);
    if due {
        last.insert(peer.to_string(), std::time::Instant::now());
    }
    due
}

/// Logs a refused connection from `peer` (its stated node id and its address), at
/// most once per `REFUSAL_LOG_EVERY` for each.
pub fn log_refusal(peer: &str, why: &str) {
    if refusal_due(&format!("from {peer}")) {
        tracing::error!("refused a peer connection from {peer}: {why}");
    }
}

fn random_id() -> Id {
    let mut bytes = [0u8; 16];
    // The kernel's generator; a failure falls back to the clock and the process id,
    // which still differ between clusters formed on different machines or moments.
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled != bytes.len() as isize {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return (now.as_nanos() << 32) ^ Id::from(std::process::id());
    }
    Id::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_drawn_once_kept_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = ClusterId::open(dir.path()).expect("open");
        assert_eq!(ids.get(), None);
        let drawn = ids.draw();
        assert_eq!(ids.draw(), drawn, "a second draw keeps the first");
        assert_eq!(ClusterId::open(dir.path()).expect("reopen").get(), None, "not written before it is kept");
        ids.keep().expect("kept");
        let again = ClusterId::open(dir.path()).expect("reopen");
        assert_eq!(again.get(), Some(drawn));
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("the file");
        assert_eq!(text, format!("{}\n", show(drawn)));
        let other = ClusterId::open(tempfile::tempdir().expect("temp dir").path()).expect("open").draw();
        assert_ne!(other, drawn, "two clusters draw different ids");
    }

    #[test]
    fn a_node_connected_to_takes_the_first_id_stated_and_two_ids_must_match() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = ClusterId::open(dir.path()).expect("open");
        assert_eq!(ids.check(None, true), Ok(None), "nothing stated, nothing learned");
        assert_eq!(ids.check(Some(7), false), Ok(None), "the opening side takes no id");
        assert_eq!(ids.get(), None);
        assert_eq!(ids.check(Some(7), true), Ok(Some(7)));
        assert_eq!(ClusterId::open(dir.path()).expect("reopen").get(), Some(7), "written down");
        assert_eq!(ids.check(Some(7), false), Ok(Some(7)));
        assert_eq!(ids.check(None, true), Ok(Some(7)), "a peer with none is not compared");
        let Err(Refused::Mismatch(refused)) = ids.check(Some(8), true) else { panic!("another cluster's id passed") };
        assert!(refused.contains(&format!("its id {}", show(8))), "{refused}");
        assert!(refused.contains(&format!("this node's {}", show(7))), "{refused}");
        assert_eq!(ids.get(), Some(7), "a refused id is not taken");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_absent_id() {
        for text in ["", "zz\n", "0123456789abcdef\n", "0123456789abcdef0123456789abcdef0\n"] {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join(FILE_NAME), text).expect("write");
            assert!(ClusterId::open(dir.path()).is_err(), "{text:?} was read as an id");
        }
    }
}
