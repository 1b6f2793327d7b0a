//! Protocol levels: which log entries every member of the cluster can read.
//!
//! A node stops on the first log entry it cannot decode, and a leader cannot decode a
//! forwarded request of a kind newer than its build. During a rolling upgrade the
//! cluster runs two builds at once, so an entry kind a build adds may be written only
//! once every member reads it (etcd's cluster version, for the same reason). Each node
//! asks every other member for its level (`PeerRequest::Level`) and keeps the lowest:
//! the cluster's level. A build from before this request cannot decode it and closes
//! the connection: it counts as level 0. A member not heard from yet counts as 0 too.
//!
//! | level | reads |
//! |---|---|
//! | 0 | every entry but write groups (builds before the level exchange, which may or may not read groups) |
//! | 1 | write groups: `Op::Group`, `Op::GroupWrites`, and a forwarded group as one request; `Op::CancelWaitsOf` (a restarted or removed node's waits end) |
//! | 2 | `Command::BarrierEnterSession` (a double-barrier member a session owns; snapshots then carry a section level 1 does not read) and `Command::PutBack` (a popped element returned past the length limit) |
//! | 3 | `Command::ConfigCompact` (the leader forgets the oldest deleted config keys; snapshots then carry a section level 2 does not read); the `HeldState` peer request (`wipe_guard`; a request, not an entry: builds below 3 close the connection on it) |
//! | 4 | the `Hello` peer request that opens every replication and vote connection with the cluster's id (`cluster_id`; a request, not an entry: builds below 4 close the connection on it, and the sender then opens one without it) |
//! | 5 | `Command::LockWithdraw` (LOCK.WITHDRAW: a client that gave up on an acquire ends its queued wait by token) |
//!
//! A node joins a cluster only at the cluster's level or above (`cluster::admin_local`):
//! the log it must replay may hold entries of that level. Downgrading a member below
//! the level of entries already in the log is not supported (as in etcd without its
//! downgrade procedure).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use fencelock_core::Command;

use super::network::{ask_once, Asked, PeerRequest, PeerResponse};
use super::{NodeId, Op, Raft};

/// This build's level: it reads every entry kind up to this one.
pub const PROTOCOL_LEVEL: u32 = 5;
/// The level from which concurrent writes share log entries (`write_group`).
pub const GROUPS_FROM_LEVEL: u32 = 1;
/// The level from which a node ends the waits its previous run left (`Op::CancelWaitsOf`).
pub const CANCEL_WAITS_FROM_LEVEL: u32 = 1;
/// The level from which a session may own a double-barrier member
/// (`Command::BarrierEnterSession`) and a popped element goes back past the length
/// limit (`Command::PutBack`).
pub const OWNED_MEMBERS_FROM_LEVEL: u32 = 2;
/// The level from which the leader has deleted config keys forgotten
/// (`Command::ConfigCompact`). Below it they stay, as they did before.
pub const CONFIG_COMPACT_FROM_LEVEL: u32 = 3;
/// The level from which a node answers `PeerRequest::HeldState` (`wipe_guard`).
pub const HELD_STATE_FROM_LEVEL: u32 = 3;
/// The level from which a node answers `PeerRequest::Hello` (`cluster_id`).
pub const HELLO_FROM_LEVEL: u32 = 4;
/// The level from which a client may withdraw a queued acquire by its token
/// (`Command::LockWithdraw`, LOCK.WITHDRAW).
pub const WITHDRAW_FROM_LEVEL: u32 = 5;

/// The lowest level that reads the entry `op` makes, as far as its commands go (a
/// group's own form is `write_group::check_group`'s to judge).
pub fn level_of(op: &Op) -> u32 {
    fn command(command: &Command) -> u32 {
        match command {
            Command::BarrierEnterSession { .. } | Command::PutBack { .. } => OWNED_MEMBERS_FROM_LEVEL,
            Command::ConfigCompact { .. } => CONFIG_COMPACT_FROM_LEVEL,
            Command::LockWithdraw { .. } => WITHDRAW_FROM_LEVEL,
            _ => 0,
        }
    }
    match op {
        Op::Core(c) => command(c),
        Op::Multi(commands) | Op::Group(commands) => commands.iter().map(command).max().unwrap_or(0),
        Op::GroupWrites(writes) => writes
            .iter()
            .map(|write| match write {
                super::GroupWrite::Core(c) => command(c),
                super::GroupWrite::Eval { .. } => 0,
            })
            .max()
            .unwrap_or(0),
        Op::CancelWaitsOf { .. } => CANCEL_WAITS_FROM_LEVEL,
        Op::Eval { .. } => 0,
    }
}

/// How a write refused for its level (`refusal`) begins: nothing of it was proposed.
pub const LEVEL_REFUSED: &str = "ERR this write needs every member of the cluster at protocol level";

/// Why a write of level `needed` is refused while the cluster reads up to `cluster`.
pub fn refusal(needed: u32, cluster: u32) -> String {
    format!(
        "{LEVEL_REFUSED} {needed}, and the cluster is at {cluster}: a member runs an older fencelock, or has not \
         answered yet (INFO shows cluster_protocol_level)"
    )
}

/// How often every other member is asked again: a member that was down, or that
/// restarted with another build, is heard from within this.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often while some member is below this node's level or unheard (at start, the
/// peers are coming up): blocking commands wait for the level (`Node::write`).
const PROBE_EVERY_UNSETTLED: Duration = Duration::from_millis(100);
/// How long one member has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What asking a member for its level found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answered its level.
    Answered(u32),
    /// It accepted the connection and closed it without an answer: a build from
    /// before the level exchange.
    Older,
    /// It could not be reached or did not answer in time: nothing learned.
    Unreachable,
}

/// Asks the member at `addr` for its level, on a connection of its own (an older
/// build closes the connection it cannot decode a request on).
pub async fn probe(addr: &str) -> Probe {
    match ask_once(addr, &PeerRequest::Level, PROBE_TIMEOUT).await {
        Asked::Answer(PeerResponse::Level(level)) => Probe::Answered(level),
        // Another answer would be a bug on that side; read it as the least it reads.
        Asked::Answer(_) | Asked::Closed => Probe::Older,
        Asked::Unreachable => Probe::Unreachable,
    }
}

/// What a node that closed the connection on a request it answers from `level` on
/// turned out to be, by the level exchange (`older_than`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A build below `level`, which cannot decode the request.
    Older,
    /// A build that reads it: it crashed or stopped just then.
    Stopped,
    /// Nothing learned.
    Unreachable,
}

/// Why the node at `addr` closed the connection on a request of `level` (the
/// greeting, `wipe_guard`'s question): asked by the level exchange.
pub async fn closed_on(addr: &str, level: u32) -> Closed {
    match probe(addr).await {
        Probe::Answered(answered) if answered >= level => Closed::Stopped,
        Probe::Answered(_) | Probe::Older => Closed::Older,
        Probe::Unreachable => Closed::Unreachable,
    }
}

/// This node's level and what it knows of the others'.
pub struct Levels {
    own: u32,
    /// The lowest level of the current members, this node included.
    cluster: AtomicU32,
    /// Member → (the address it was asked at, the level it answered).
    known: Mutex<BTreeMap<NodeId, (String, u32)>>,
    /// Where `known` is kept across restarts (`None`: not kept).
    file: Option<PathBuf>,
    /// `known` changed since it was last handed out to be kept.
    changed: AtomicBool,
}

impl Levels {
    /// Levels for a node of level `own` (`PROTOCOL_LEVEL` but in tests, which stand in
    /// for an older build with 0). The cluster's level starts at 0: nobody asked yet.
    pub fn new(own: u32) -> Levels {
        assert!(own <= PROTOCOL_LEVEL, "a build cannot claim a level it does not read");
        Levels { own, cluster: AtomicU32::new(0), known: Mutex::default(), file: None, changed: AtomicBool::new(false) }
    }

    /// As `new`, remembering what members answered in `file` across restarts. A member
    /// that is down keeps the level it last answered (as it does while this node runs:
    /// it cannot take entries meanwhile); without the file, a node that restarted
    /// while a member was down counted it as 0 until it came back, and wrote no groups
    /// and did not end its previous run's waits. A missing or unreadable file is the
    /// same as nobody heard from.
    pub fn open(own: u32, file: PathBuf) -> Levels {
        let known = std::fs::read_to_string(&file).map(|text| parse_known(&text)).unwrap_or_default();
        Levels {
            own,
            cluster: AtomicU32::new(0),
            known: Mutex::new(known),
            file: Some(file),
            changed: AtomicBool::new(false),
        }
    }

    /// What to write to the file if `known` changed since the last call: the file
    /// and its new text. `run` writes it off the runtime thread (`keep`).
    fn changes(&self) -> Option<(PathBuf, String)> {
        let file = self.file.clone()?;
        if !self.changed.swap(false, Ordering::Relaxed) {
            return None;
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        Some((file, known.iter().map(|(id, (addr, level))| format!("{id} {addr} {level}\n")).collect()))
    }

    /// This node's own level (what it answers a `PeerRequest::Level` with).
    pub fn own(&self) -> u32 {
        self.own
    }

    /// The lowest level among the current members, as this node last learned it.
    pub fn cluster(&self) -> u32 {
        self.cluster.load(Ordering::Relaxed)
    }

    /// Whether every member reads write groups.
    pub fn groups_allowed(&self) -> bool {
        self.cluster() >= GROUPS_FROM_LEVEL
    }

    /// Records what asking `id` at `addr` found.
    fn record(&self, id: NodeId, addr: &str, probe: Probe) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match probe {
            Probe::Answered(level) => known.insert(id, (addr.to_string(), level)) != Some((addr.to_string(), level)),
            Probe::Older => known.insert(id, (addr.to_string(), 0)) != Some((addr.to_string(), 0)),
            // A member that is down keeps the level it last answered at this address: it
            // cannot take entries meanwhile, and it is asked again once it is back.
            Probe::Unreachable => known.get(&id).is_some_and(|(at, _)| at != addr) && known.remove(&id).is_some(),
        };
        if changed {
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// Recomputes the cluster's level over `members` (id → address; this node's own
    /// entry counts as its own level) and returns it.
    fn settle(&self, self_id: NodeId, members: &BTreeMap<NodeId, String>) -> u32 {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let before = known.len();
        // No membership yet (a node waiting to join) is not "every member removed".
        if !members.is_empty() {
            known.retain(|id, _| members.contains_key(id));
        }
        if known.len() != before {
            self.changed.store(true, Ordering::Relaxed);
        }
        let level = members
            .iter()
            .map(|(id, addr)| match known.get(id) {
                _ if *id == self_id => self.own,
                Some((at, level)) if at == addr => *level,
                _ => 0,
            })
            .fold(self.own, u32::min);
        self.cluster.store(level, Ordering::Relaxed);
        level
    }
}

/// Writes what changed in `levels` to its file, on a blocking thread: the node's one
/// runtime thread must not wait on the disk. A lost file only costs what it saves (its
/// members count as unheard), but an older one coming back after a crash could count a
/// member at a level it has since left: so it is replaced whole (`durable`).
async fn keep(levels: &Levels) {
    let Some((file, text)) = levels.changes() else { return };
    let written = tokio::task::spawn_blocking(move || {
        crate::durable::replace_file(&file, text.as_bytes()).map_err(|e| (file, e))
    })
    .await;
    if let Ok(Err((file, e))) = written {
        tracing::warn!(error = %e, file = %file.display(), "cannot keep the members' protocol levels");
    }
}

/// Reads the lines `changes` writes (`id addr level`); a line that does not parse is
/// skipped.
fn parse_known(text: &str) -> BTreeMap<NodeId, (String, u32)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let addr = fields.next()?.to_string();
            let level = fields.next()?.parse().ok()?;
            fields.next().is_none().then_some((id, (addr, level)))
        })
        .collect()
}

/// Asks every other member for its level, now and every `PROBE_EVERY` or when the
/// membership changes, and keeps `levels` up to date. Ends when Raft shuts down.
pub async fn run(raft: Raft, self_id: NodeId, levels: Arc<Levels>, routes: Arc<BTreeMap<NodeId, String>>) {
    let mut metrics = raft.server_metrics();
    let mut last = None;
    loop {
        let members: BTreeMap<NodeId, String> = {
            let watched = metrics.borrow_watched();
            let membership = watched.membership_config.membership();
            membership
                .nodes()
                .map(|(id, node)| (*id, routes.get(id).cloned().unwrap_or_else(|| node.addr.clone())))
                .collect()
        };
        let others = members.iter().filter(|(id, _)| **id != self_id);
        let probes =
            futures_util::future::join_all(others.map(|(id, addr)| async move { (*id, addr, probe(addr).await) }));
        for (id, addr, found) in probes.await {
            levels.record(id, addr, found);
        }
        let level = levels.settle(self_id, &members);
        keep(&levels).await;
        if last != Some(level) {
            tracing::info!(level, own = levels.own(), groups = level >= GROUPS_FROM_LEVEL, "cluster protocol level");
            last = Some(level);
        }
        let every = if level < levels.own() { PROBE_EVERY_UNSETTLED } else { PROBE_EVERY };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(NodeId, &str)]) -> BTreeMap<NodeId, String> {
        list.iter().map(|(id, addr)| (*id, addr.to_string())).collect()
    }

    #[test]
    fn the_cluster_reads_what_its_lowest_member_reads_and_an_unheard_member_counts_as_zero() {
        let levels = Levels::new(PROTOCOL_LEVEL);
        let three = members(&[(1, "a:1"), (2, "b:1"), (3, "c:1")]);
        // Alone, this node's own level.
        assert_eq!(levels.settle(1, &members(&[(1, "a:1")])), PROTOCOL_LEVEL);
        assert!(levels.groups_allowed());
        // Members not heard from yet.
        assert_eq!(levels.settle(1, &three), 0);
        assert!(!levels.groups_allowed());
        levels.record(2, "b:1", Probe::Answered(PROTOCOL_LEVEL));
        assert_eq!(levels.settle(1, &three), 0, "node 3 is still unheard");
        levels.record(3, "c:1", Probe::Answered(PROTOCOL_LEVEL));
        assert_eq!(levels.settle(1, &three), PROTOCOL_LEVEL);
        // Down: the last answer stands. Restarted as an older build: 0.
        levels.record(3, "c:1", Probe::Unreachable);
        assert_eq!(levels.settle(1, &three), PROTOCOL_LEVEL);
        levels.record(3, "c:1", Probe::Older);
        assert_eq!(levels.settle(1, &three), 0);
        // Removed from the membership: it no longer counts.
        assert_eq!(levels.settle(1, &members(&[(1, "a:1"), (2, "b:1")])), PROTOCOL_LEVEL);
        // A member at a new address is unheard until it answers there.
        levels.record(2, "b:2", Probe::Unreachable);
        assert_eq!(levels.settle(1, &members(&[(1, "a:1"), (2, "b:2")])), 0);
    }

    #[tokio::test]
    async fn a_restarted_node_remembers_what_members_answered() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("levels");
        let three = members(&[(1, "a:1"), (2, "b:1"), (3, "c:1")]);
        let levels = Levels::open(PROTOCOL_LEVEL, file.clone());
        levels.record(2, "b:1", Probe::Answered(PROTOCOL_LEVEL));
        levels.record(3, "c:1", Probe::Answered(1));
        assert_eq!(levels.settle(1, &three), 1);
        keep(&levels).await;
        assert!(levels.changes().is_none(), "written once, until an answer changes");
        levels.record(3, "c:1", Probe::Answered(1));
        assert!(levels.changes().is_none(), "the same answer again is no change");
        // Restarted while node 3 is down: it counts at what it last answered, not as 0.
        let again = Levels::open(PROTOCOL_LEVEL, file.clone());
        again.record(2, "b:1", Probe::Answered(PROTOCOL_LEVEL));
        again.record(3, "c:1", Probe::Unreachable);
        assert_eq!(again.settle(1, &three), 1);
        // Removed from the membership: forgotten, in the file too.
        assert_eq!(again.settle(1, &members(&[(1, "a:1"), (2, "b:1")])), PROTOCOL_LEVEL);
        keep(&again).await;
        assert_eq!(Levels::open(PROTOCOL_LEVEL, file.clone()).settle(1, &three), 0, "node 3 is unheard");
        // A damaged file is the same as nobody heard from.
        std::fs::write(&file, "garbage\n2 b:1 x\n3 c:1 2 extra\n").expect("write");
        assert_eq!(Levels::open(PROTOCOL_LEVEL, file.clone()).settle(1, &three), 0);
        // No membership yet (waiting to join) forgets nobody.
        std::fs::write(&file, "2 b:1 2\n3 c:1 2\n").expect("write");
        let joining = Levels::open(PROTOCOL_LEVEL, file.clone());
        joining.settle(1, &BTreeMap::new());
        assert_eq!(joining.settle(1, &three), PROTOCOL_LEVEL.min(2));
    }

    #[test]
    fn a_node_standing_in_for_an_older_build_holds_the_cluster_at_its_level() {
        let levels = Levels::new(0);
        levels.record(2, "b:1", Probe::Answered(PROTOCOL_LEVEL));
        assert_eq!(levels.settle(1, &members(&[(1, "a:1"), (2, "b:1")])), 0);
        assert_eq!(levels.settle(1, &members(&[(1, "a:1")])), 0);
    }

    #[tokio::test]
    async fn probes_tell_an_answer_from_an_older_build_from_nobody_there() {
        use tokio::io::AsyncReadExt;
        // An older build reads the request, cannot decode it, and closes.
        let older = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let older_addr = older.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = older.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
        });
        assert_eq!(probe(&older_addr).await, Probe::Older);
        // Nobody listening.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone_addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        assert_eq!(probe(&gone_addr).await, Probe::Unreachable);
        // A listener that never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        let _held = tokio::spawn(async move {
            let (_stream, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert_eq!(probe(&silent_addr).await, Probe::Unreachable);
    }
}
