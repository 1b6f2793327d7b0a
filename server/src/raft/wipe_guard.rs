//! A voter whose data was wiped must not take part again under its id.
//!
//! With an empty log and no memory of its votes, such a node could elect a leader that
//! lacks entries committed with its help, or vote twice in one term (a second leader in
//! that term). `--join` already refuses it (`cluster::join_through`); this guards a
//! static cluster (`--peers`), whose nodes start from empty data directories the first
//! time and cannot tell that start from a start after a wipe on their own.
//!
//! So every node remembers, on disk, each peer it has seen hold Raft state: one that
//! granted it a vote, or answered its AppendEntries or snapshot with success (marked
//! before the answer reaches openraft, so nothing counts a peer's vote or
//! acknowledgement unless some node has it written down), and one that asked it for a
//! vote or sent it entries or a snapshot (marked before it answers: a candidate holds
//! its own vote, a leader its log, and a leader that never answers anyone would
//! otherwise be marked by nobody). A node that starts with no Raft state under
//! `--peers` asks every other listed node whether it saw this node hold state
//! (`PeerRequest::HeldState`), and takes no part in Raft (its peer listener closes
//! votes, appends, snapshots and transfers) until either every one has answered or it
//! and the nodes that answered holding no log entry past the initial membership are a
//! majority of the list (the first start of a cluster with a node down; the others all
//! answer "never saw it", which is also how a node starts for the first time after the
//! others formed the cluster). That majority rule trusts that the nodes without entries
//! were not wiped too: with a majority's data lost no guard helps. If any saw it, the
//! node refuses to start: its place is taken back with CLUSTER.REMOVE, and the machine
//! joins under a new id. A build from before the question closes the connection on it;
//! it keeps no marks, so it counts as "not seen", and as holding entries. A node that
//! closes the connection but answers the level exchange at this build's level or above
//! crashed or stopped just then: it is asked again. The nodes asked are the `--peers`
//! list, not the current membership: members added later with `--join` are not asked,
//! and a listed node that was removed for good is waited for.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::network::{ask_once, Asked, PeerRequest, PeerResponse};
use super::NodeId;

/// The file, in the data directory, that lists the peers seen holding state.
const FILE_NAME: &str = "peers-with-state";
/// How often a node waiting for answers asks the nodes that have not answered again.
const ASK_EVERY: Duration = Duration::from_millis(300);
/// How long one node has to answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the waiting node says whom it still waits for.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// The peers this node has seen hold Raft state, and whether this node may take part
/// in Raft yet.
pub struct WipeGuard {
    /// None: marks kept in memory only (unit tests of the network).
    path: Option<PathBuf>,
    seen: Mutex<BTreeSet<NodeId>>,
    cleared: AtomicBool,
}

impl WipeGuard {
    /// Reads the marks kept in `data_dir` (none if the file is absent). The node is
    /// cleared to take part until `hold` says otherwise.
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<WipeGuard> {
        let path = data_dir.join(FILE_NAME);
        let seen = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    l.trim()
                        .parse::<NodeId>()
                        .map_err(|e| std::io::Error::other(format!("{}: {l:?} is not a node id: {e}", path.display())))
                })
                .collect::<Result<_, _>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        Ok(WipeGuard { path: Some(path), seen: Mutex::new(seen), cleared: AtomicBool::new(true) })
    }

    /// Marks kept in memory only, for unit tests.
    #[cfg(test)]
    pub fn in_memory() -> WipeGuard {
        WipeGuard { path: None, seen: Mutex::new(BTreeSet::new()), cleared: AtomicBool::new(true) }
    }

    /// Whether this node has seen `peer` hold Raft state.
    pub fn saw(&self, peer: NodeId) -> bool {
        self.seen.lock().expect("not poisoned").contains(&peer)
    }

    /// Notes that `peer` holds Raft state, durably, before the caller relies on it:
    /// once per peer (later calls only look it up; the write is about 1 ms, once). If
    /// the write fails the caller must not rely on the answer: it is an error, and the
    /// next answer tries again.
    pub fn note(&self, peer: NodeId) -> Result<(), String> {
        let mut seen = self.seen.lock().expect("not poisoned");
        if seen.contains(&peer) {
            return Ok(());
        }
        let mut with = seen.clone();
        with.insert(peer);
        self.write(&with).map_err(|e| format!("could not record that node {peer} holds Raft state: {e}"))?;
        *seen = with;
        Ok(())
    }

    fn write(&self, seen: &BTreeSet<NodeId>) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let text: String = seen.iter().map(|id| format!("{id}\n")).collect();
        crate::durable::replace_file(path, text.as_bytes())
    }

    /// Whether this node may take part in Raft (vote, append, install snapshots).
    pub fn cleared(&self) -> bool {
        self.cleared.load(Ordering::Acquire)
    }

    /// Keeps this node out of Raft until `clear`.
    pub fn hold(&self) {
        self.cleared.store(false, Ordering::Release);
    }

    fn clear(&self) {
        self.cleared.store(true, Ordering::Release);
    }
}

/// What one node answered about this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Whether it saw the asking node hold state, and whether it holds log entries
    /// past the initial membership itself.
    Seen {
        seen: bool,
        holds_state: bool,
    },
    /// A build from before the question.
    Older,
    Unreachable,
}

async fn ask(addr: &str, about: NodeId) -> Answer {
    match ask_once(addr, &PeerRequest::HeldState(about), ASK_TIMEOUT).await {
        Asked::Answer(PeerResponse::HeldState { seen, holds_state }) => Answer::Seen { seen, holds_state },
        // Another answer would be a bug on that side: nothing learned.
        Asked::Answer(_) | Asked::Unreachable => Answer::Unreachable,
        // A node that closes on the question is an older build, or one that crashed or
        // stopped just then, whose marks count: its level tells them apart (builds that
        // ask this question answer the level exchange at `HELD_STATE_FROM_LEVEL` or
        // above).
        Asked::Closed => match super::levels::closed_on(addr, super::levels::HELD_STATE_FROM_LEVEL).await {
            super::levels::Closed::Older => Answer::Older,
            super::levels::Closed::Stopped | super::levels::Closed::Unreachable => Answer::Unreachable,
        },
    }
}

/// For a node `id` that starts with no Raft state in a static cluster (`peers`, its
/// own entry included): asks every other node whether it saw `id` hold state, until
/// all have answered or the nodes without state (this one and those that said so) are
/// a majority, then clears `guard`. An error names the node that saw it.
pub async fn check_fresh_start(
    guard: &WipeGuard,
    id: NodeId,
    peers: &std::collections::BTreeMap<NodeId, String>,
) -> Result<(), String> {
    let mut waiting: BTreeSet<NodeId> = peers.keys().copied().filter(|p| *p != id).collect();
    let mut stateless: BTreeSet<NodeId> = BTreeSet::from([id]);
    let mut logged = tokio::time::Instant::now();
    loop {
        // All at once: a silent node costs one timeout per round, not one each.
        let asked = waiting.iter().map(|peer| async move { (*peer, ask(&peers[peer], id).await) });
        for (peer, answer) in futures_util::future::join_all(asked).await {
            match answer {
                Answer::Seen { seen: true, .. } => {
                    return Err(format!(
                        "node {peer} saw node {id} hold Raft state before, and this data directory holds none: it \
                         was wiped or replaced, and with an empty log and no memory of its votes this node could \
                         undo committed writes. Remove it on the cluster (CLUSTER.REMOVE {id}), then start this \
                         machine with an empty data directory (empty it again: this start wrote its node id \
                         there), a new --node-id and --join"
                    ))
                }
                Answer::Seen { seen: false, holds_state } => {
                    waiting.remove(&peer);
                    if !holds_state {
                        stateless.insert(peer);
                    }
                }
                Answer::Older => {
                    waiting.remove(&peer);
                }
                Answer::Unreachable => {}
            }
        }
        // A majority without entries past the initial membership means no leader
        // committed anything with this node that the cluster relies on, unless those
        // nodes lost their data too (no guard helps when a majority did).
        if waiting.is_empty() || stateless.len() > peers.len() / 2 {
            guard.clear();
            return Ok(());
        }
        if logged.elapsed() >= WAITING_LOG_EVERY {
            logged = tokio::time::Instant::now();
            tracing::warn!(
                ?waiting,
                "this node starts with no Raft state and takes no part until every other node listed in --peers \
                 has said whether it saw this node hold state before"
            );
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_durable_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let guard = WipeGuard::open(dir.path()).expect("open");
        assert!(!guard.saw(2));
        guard.note(2).expect("noted");
        guard.note(3).expect("noted");
        guard.note(2).expect("noted again");
        let again = WipeGuard::open(dir.path()).expect("reopen");
        assert!(again.saw(2) && again.saw(3) && !again.saw(4));
        assert!(again.cleared(), "a node is cleared unless held");
        again.hold();
        assert!(!again.cleared());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(FILE_NAME), "2\nthree\n").expect("write");
        assert!(WipeGuard::open(dir.path()).is_err());
    }
}
