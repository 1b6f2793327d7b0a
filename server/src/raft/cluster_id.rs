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
//!   of `--peers`) draws the id and writes it down before it initializes Raft;
//! - a node without an id takes the id of the first peer that connects to it stating
//!   one (its first leader, for a node starting for the first time or a `--join`er),
//!   and writes it down before it answers. The node that opens a connection never takes
//!   the answering node's id: it is a leader or a candidate, and an id-less one leads a
//!   cluster formed before this build, which a stranger's id must not spread through;
//! - two ids that differ end the connection, logged on both sides;
//! - where either side has no id there is nothing to compare: a build from before the
//!   greeting (level below 4; it sends none, and closes the connection on one), and a
//!   cluster formed before this build, which has no id until a node with one connects
//!   to its members (none does on its own: no member draws one later, since two leaders
//!   drawing different ones would split the cluster). Once every member is at level 4,
//!   a node with an id takes no vote, append, snapshot or transfer on a connection that
//!   did not open with a greeting.

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
    /// Held while an id is written, so that two peers stating ids at once cannot both
    /// be taken.
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
        Ok(ClusterId { path: Some(path), id, writing: Mutex::new(()) })
    }

    /// An id kept in memory only, for unit tests.
    #[cfg(test)]
    pub fn in_memory(id: Option<Id>) -> ClusterId {
        let cell = OnceLock::new();
        if let Some(id) = id {
            let _ = cell.set(id);
        }
        ClusterId { path: None, id: cell, writing: Mutex::new(()) }
    }

    /// The id, if drawn or learned.
    pub fn get(&self) -> Option<Id> {
        self.id.get().copied()
    }

    /// The id this node forms its cluster under: the one kept (a start that drew it and
    /// stopped before forming the cluster), else a new random one, written down first.
    pub fn draw(&self) -> Result<Id, String> {
        self.take(None).map_err(|refused| refused.to_string())
    }

    /// Checks the id a peer stated (`theirs`) against this node's: two ids must be
    /// equal; where either side has none there is nothing to compare. With `take`
    /// (the node was connected to), a node without an id takes the stated one.
    /// Answers this node's id, or why the peer is refused.
    pub fn check(&self, theirs: Option<Id>, take: bool) -> Result<Option<Id>, Refused> {
        match (self.get(), theirs) {
            (Some(ours), Some(theirs)) if ours != theirs => Err(Refused::Mismatch(mismatch(ours, theirs))),
            (Some(ours), _) => Ok(Some(ours)),
            (None, Some(theirs)) if take => self.take(Some(theirs)).map(Some),
            (None, _) => Ok(None),
        }
    }

    /// Sets the id to `wanted` (or a random one) unless one is set already, which it
    /// answers instead (and a `wanted` that differs is a mismatch).
    fn take(&self, wanted: Option<Id>) -> Result<Id, Refused> {
        let _writing = self.writing.lock().expect("not poisoned");
        if let Some(ours) = self.get() {
            return match wanted {
                Some(theirs) if theirs != ours => Err(Refused::Mismatch(mismatch(ours, theirs))),
                _ => Ok(ours),
            };
        }
        let id = wanted.unwrap_or_else(random_id);
        if let Some(path) = &self.path {
            crate::durable::replace_file(path, format!("{}\n", show(id)).as_bytes()).map_err(|e| {
                Refused::Unwritten(format!("could not write the cluster id to {}: {e}", path.display()))
            })?;
        }
        let _ = self.id.set(id);
        Ok(id)
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

/// How often at most a node logs that a node of another cluster connected to it (it
/// reconnects every heartbeat).
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs a refused connection (from node `from`, if it said), at most once per
/// `REFUSAL_LOG_EVERY`.
pub fn log_refusal(from: Option<u64>, why: &str) {
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LAST.lock().expect("not poisoned");
    if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
        *last = Some(std::time::Instant::now());
        let from = from.map_or_else(|| "a peer".to_string(), |id| format!("node {id}"));
        tracing::error!("refused a peer connection from {from}: {why}");
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
        let drawn = ids.draw().expect("drawn");
        assert_eq!(ids.draw().expect("again"), drawn, "a second draw keeps the first");
        let again = ClusterId::open(dir.path()).expect("reopen");
        assert_eq!(again.get(), Some(drawn));
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("the file");
        assert_eq!(text, format!("{}\n", show(drawn)));
        let other =
            ClusterId::open(tempfile::tempdir().expect("temp dir").path()).expect("open").draw().expect("drawn");
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
