//! A node: openraft with our log store and state machine, the clock that stamps
//! proposals, and the leader's expiry ticker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fencelock_core::{Command, Limits, Reply};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ReadPolicy, ServerState};

use crate::lua::ScriptReply;
use crate::raft::log_store::{LogStore, WriteLoad};
use crate::raft::network::Network;
use crate::raft::state_machine::SmStore;
use crate::raft::{Applied, GroupWrite, NodeId, Op, Proposal, Raft};
use bytes::Bytes;

/// Why the node could not serve a request. Clients retry on `TryAgain`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader right now (election in progress), or this node is not it.
    #[error("TRYAGAIN no leader available right now, retry shortly")]
    TryAgain,
    /// This node follows `0`; writes and linearizable reads go to the leader (until
    /// followers forward them, which is the cluster milestone's work).
    #[error("TRYAGAIN this node is a follower; the leader is node {0}")]
    NotLeader(NodeId),
    /// This node leads but no quorum confirmed the request in time: it may be cut off
    /// in a minority (a write may still commit later if the partition heals first).
    #[error("TRYAGAIN no quorum confirmed the request within {0} ms (this node may be partitioned from the majority)")]
    NoQuorum(u64),
    /// This node appended the write as leader, then adopted another leader's log
    /// before it committed: the entry may have committed through the new leader, or not.
    /// Never retried here (a retry could apply it twice); the client decides.
    #[error(
        "TRYAGAIN the leader changed before this write was confirmed; it may have been applied (check before retrying)"
    )]
    Discarded,
    /// The leader committed a forwarded write, but this node did not apply it within
    /// `0` ms, so it cannot answer it as its own. Not retried here.
    #[error("TRYAGAIN the leader committed this write but this node did not apply it within {0} ms; it may have been applied (check before retrying)")]
    Unconfirmed(u64),
    /// A forwarded write went out to the leader, and then the leader changed, the
    /// connection failed or no answer came within `0` ms: it may have been applied.
    /// Not retried here.
    #[error("TRYAGAIN the leader did not answer this forwarded write within {0} ms (it failed, changed or was cut off); it may have been applied (check before retrying)")]
    ForwardUnanswered(u64),
    /// A request the cluster refused: an admin change, or a forwarded write the leader
    /// answered with its own TRYAGAIN. The text is the whole wire error.
    #[error("{0}")]
    Refused(String),
    /// The node failed (storage error, shutting down).
    #[error("ERR node failure: {0}")]
    Fatal(String),
}

/// Static settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Where the log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// Address peers reach this node at (recorded in the membership).
    pub peer_addr: String,
    /// State-machine limits.
    pub limits: Limits,
    /// Entries between snapshots.
    pub snapshot_every_entries: u64,
    /// Bytes the log may grow by between snapshots, at least (`snapshot_trigger`).
    pub snapshot_log_bytes_min: u64,
    /// How long a member may go unheard before the leader ends its clients' waits
    /// (`silent_nodes`).
    pub silent_node: Duration,
    /// Static cluster members (node id → peer address); empty for a single node.
    pub peers: BTreeMap<NodeId, String>,
    /// A member's client address to join the cluster through (`--join`).
    pub join: Option<String>,
    /// The password `--join` authenticates with (the cluster's `--requirepass`, which
    /// this node shares).
    pub join_password: Option<String>,
    /// AppendEntries a peer connection may have unanswered.
    pub peer_pipeline: usize,
    /// Test only: listen for peers here instead of at this node's `peers` address.
    pub peer_listen: Option<String>,
    /// Test only: reach these nodes at these addresses (fault-injecting proxies).
    pub peer_routes: BTreeMap<NodeId, String>,
    /// Test only: `(offset_ms, rate)` of this node's clock.
    pub test_clock: (u64, f64),
    /// The protocol level this node answers (`levels`): `PROTOCOL_LEVEL`, or in tests 0
    /// to stand in for an older build.
    pub protocol_level: u32,
}

/// How long a write waits for a leader to be known before answering TRYAGAIN.
const LEADER_WAIT: Duration = Duration::from_millis(1_000);
/// How long a follower waits for the leader to answer a forwarded write.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leader waits for a quorum to confirm a write or a read index before
/// telling the client to retry: a leader cut off in a minority must not hang clients.
const QUORUM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long startup waits for a leader before serving anyway (requests answer TRYAGAIN
/// until one is elected).
const STARTUP_LEADER_WAIT: Duration = Duration::from_secs(30);
/// Idle connections kept per leader address for forwarding.
const FORWARD_POOL_MAX: usize = 64;

/// A running node.
pub struct Node {
    /// The Raft handle.
    pub raft: Raft,
    /// The state machine (for reads and waiters).
    pub sm: SmStore,
    /// This node's id.
    pub id: NodeId,
    /// Random per process start: names the monotonic clock our stamps come from.
    epoch: u64,
    started: Instant,
    /// Test only: address overrides for peers.
    peer_routes: Arc<BTreeMap<NodeId, String>>,
    /// Test only: `(offset_ms, rate)` of the stamp clock.
    test_clock: (u64, f64),
    /// Idle peer connections for forwarding writes to the leader.
    forward_pool: std::sync::Mutex<std::collections::HashMap<String, Vec<tokio::net::TcpStream>>>,
    /// Writes in flight here, and whether we are alone: the log store syncs a lone
    /// write inline.
    write_load: Arc<WriteLoad>,
    /// Concurrent client writes being gathered into one entry.
    groups: crate::write_group::WriteGroups,
    /// The log's size (INFO).
    pub log_size: crate::raft::log_store::LogSize,
    /// This node's protocol level and the cluster's (`levels`).
    pub levels: Arc<crate::raft::levels::Levels>,
    /// The cluster's id, once drawn or learned (`cluster_id`; INFO).
    pub cluster_id: Arc<crate::raft::cluster_id::ClusterId>,
    /// Set once the waits of this node's previous run have been ended (or that was
    /// given up): a wait queued before would be ended with them.
    previous_waits_ended: tokio::sync::watch::Sender<bool>,
    /// Held for the node's life: the data directory's lock (`lock_data_dir`).
    _data_dir_lock: std::fs::File,
    /// Set by `shut_down`: the waits it ends are answered TRYAGAIN, not as timed out.
    pub(crate) shutting_down: std::sync::atomic::AtomicBool,
}

/// Takes `<data-dir>/LOCK` (an exclusive `flock`, released when the process ends, by
/// SIGKILL too) and writes this process's id into it. A second server started on the
/// same directory would recover the first one's active WAL segment (cutting its batch
/// in flight) and append to it too, losing acknowledged writes: it is refused.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, NodeError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = data_dir.join("LOCK");
    let fatal = |what: &str, e: std::io::Error| NodeError::Fatal(format!("{what} {}: {e}", path.display()));
    std::fs::create_dir_all(data_dir).map_err(|e| fatal("cannot create the directory of", e))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| fatal("cannot open", e))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(NodeError::Fatal(format!(
                "the data directory {} is in use by another fencelock (pid {}): stop it first, or give this one \
                 a directory of its own",
                data_dir.display(),
                holder.trim()
            )));
        }
        return Err(fatal("cannot lock", e));
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| fatal("cannot write", e))?;
    Ok(file)
}

fn random_u64() -> u64 {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("the OS random source works");
    u64::from_le_bytes(raw)
}

/// What the leader's refusal of a write forwarded by a non-member says; the forwarding
/// node passes a refusal with it on word for word (nothing was proposed).
const NOT_A_MEMBER: &str = "is not a member of this cluster";

/// The node id a data directory belongs to, kept in `<data-dir>/node_id` from its first
/// start on. Started under another id (a missing `--node-id`, which defaults to 1, or
/// a directory copied from another node), it would vote and append as that other
/// node: its votes would count twice, and two leaders could be elected in one term.
/// So a mismatch refuses to start. A directory from a build before this file existed
/// is adopted under the id it is started with.
fn keep_identity(data_dir: &std::path::Path, id: NodeId) -> Result<(), NodeError> {
    let path = data_dir.join("node_id");
    let fatal = |what: &str, e: std::io::Error| NodeError::Fatal(format!("{what} {}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<NodeId>() {
            Ok(recorded) if recorded == id => Ok(()),
            Ok(recorded) => Err(NodeError::Fatal(format!(
                "the data directory {} belongs to node {recorded}, not {id}: start it with --node-id {recorded}, \
                 or give node {id} a directory of its own",
                data_dir.display()
            ))),
            Err(_) => Err(NodeError::Fatal(format!("{} does not hold a node id: {text:?}", path.display()))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|e| fatal("cannot create the directory of", e))?;
            crate::durable::replace_file(&path, format!("{id}\n").as_bytes()).map_err(|e| fatal("cannot write", e))
        }
        Err(e) => Err(fatal("cannot read", e)),
    }
}

/// How a wait this node ended on its way down is answered: the client fails over and
/// asks again (an IDEMPOTENT LOCK is retried by the Rust client); a nil would say the
/// wait ran out, which a `WAIT FOREVER` or `BLPOP k 0` never does.
pub const SHUTTING_DOWN_WAIT: &str =
    "TRYAGAIN the node is shutting down: the wait ended and nothing was granted; retry on another node";

impl Node {
    /// Whether the node is shutting down (SIGTERM).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Opens storage, starts Raft, forms a single-node cluster on first start, and
    /// waits until this node leads.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let fatal = |e: &dyn std::fmt::Display| NodeError::Fatal(e.to_string());
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        keep_identity(&config.data_dir, config.id)?;
        let log = LogStore::open(&config.data_dir.join("raft")).map_err(|e| fatal(&e))?;
        let write_load = log.write_load();
        let log_size = log.size();
        let sm = SmStore::open(&config.data_dir.join("state"), config.limits.clone()).map_err(|e| fatal(&e))?;
        let raft_config = openraft::Config {
            cluster_name: "fencelock".into(),
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: crate::raft::snapshot_trigger::ENTRIES_KEPT,
            max_payload_entries: 1_024,
            // openraft 0.10 lets a restarted leader resume leadership without an
            // election by default. Our state machine is rebuilt from the log after a
            // restart and the commit index is not persisted, so a resumed leader would
            // serve reads (and decide grants) from a stale state until it learns the
            // commit index: the chaos harness caught exactly that (a GET answering a
            // value overwritten 300 ms earlier). A restarted node must win an election,
            // whose no-op entry brings its state machine up to date first.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| fatal(&e))?);
        sm.set_local_node(config.id);
        let guard = Arc::new(crate::raft::wipe_guard::WipeGuard::open(&config.data_dir).map_err(|e| fatal(&e))?);
        let cluster_id = Arc::new(crate::raft::cluster_id::ClusterId::open(&config.data_dir).map_err(|e| fatal(&e))?);
        let raft = Raft::new(
            config.id,
            raft_config,
            Network {
                pipeline_depth: config.peer_pipeline,
                routes: Arc::new(config.peer_routes.clone()),
                guard: Arc::clone(&guard),
                id: config.id,
                cluster: Arc::clone(&cluster_id),
                level: config.protocol_level,
                greetings: Default::default(),
            },
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| fatal(&e))?;
        tokio::spawn(crate::raft::snapshot_trigger::run(
            raft.clone(),
            log_size.clone(),
            sm.clone(),
            config.snapshot_log_bytes_min,
        ));
        let slot: crate::raft::network::NodeSlot = Default::default();
        // Every node listens for peers, a single node too: others may join it.
        let advertised = config.peers.get(&config.id).unwrap_or(&config.peer_addr).clone();
        let listen_addr = config.peer_listen.clone().unwrap_or_else(|| advertised.clone());
        let listener = tokio::net::TcpListener::bind(&listen_addr)
            .await
            .map_err(|e| NodeError::Fatal(format!("cannot listen for peers on {listen_addr}: {e}")))?;
        // With an ephemeral peer port, members must be told the port we got.
        let peer_addr = match (listen_addr.rsplit_once(':'), listener.local_addr()) {
            _ if config.peer_listen.is_some() => advertised.clone(),
            (Some((host, _)), Ok(bound)) => format!("{host}:{}", bound.port()),
            _ => listen_addr.clone(),
        };
        let initialized = raft.is_initialized().await.map_err(|e| fatal(&e))?;
        // A static cluster's node with no Raft state may be a voter whose data was
        // wiped: it takes no part until the other listed nodes say it never held any
        // (`wipe_guard`). Held before `serve_peers` accepts, so no vote or append gets
        // in first.
        let static_fresh = !initialized && config.join.is_none() && !config.peers.is_empty();
        if static_fresh {
            guard.hold();
        }
        let forms_cluster = config.join.is_none() && config.peers.keys().next() == Some(&config.id);
        // The node that forms the cluster draws its id before it serves peers: a node
        // that connects meanwhile (another cluster's, at a reused address) would
        // otherwise give it its own (`cluster_id`). A build standing in for one from
        // before ids (tests) draws none, as such a build does.
        let forms_now = !initialized && config.join.is_none() && (config.peers.is_empty() || forms_cluster);
        if forms_now && config.protocol_level >= crate::raft::levels::HELLO_FROM_LEVEL {
            cluster_id.draw();
        }
        tokio::spawn(crate::raft::network::serve_peers(
            listener,
            Arc::new(raft.clone()),
            Arc::clone(&slot),
            config.protocol_level,
            Arc::clone(&guard),
            Arc::clone(&cluster_id),
        ));
        if static_fresh {
            // In the background: a node waiting for its peers still serves clients
            // (TRYAGAIN until a leader is known, as before), so launchers that start
            // nodes one by one and wait for each to answer do not stall. Only the
            // lowest id, which forms the cluster, waits for the answers to do so.
            let (raft, guard, id, peers) = (raft.clone(), Arc::clone(&guard), config.id, config.peers.clone());
            let cluster_id = Arc::clone(&cluster_id);
            tokio::spawn(async move {
                if let Err(e) = crate::raft::wipe_guard::check_fresh_start(&guard, id, &peers).await {
                    tracing::error!("{e}");
                    eprintln!("fencelock: {e}");
                    std::process::exit(1);
                }
                if forms_cluster {
                    if let Err(e) = cluster_id.keep() {
                        tracing::error!("forming the cluster failed: {e}");
                        return;
                    }
                    let members = peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone())));
                    if let Err(e) = raft.initialize(members.collect::<BTreeMap<_, _>>()).await {
                        tracing::error!("forming the cluster failed: {e}");
                    }
                }
            });
        } else if !initialized {
            match &config.join {
                // A joining node waits to be added: the leader's log brings the membership.
                Some(member) => {
                    let password = config.join_password.as_deref();
                    crate::cluster::join_through(member, config.id, &peer_addr, password, &raft, false).await?
                }
                None if config.peers.is_empty() => {
                    cluster_id.keep().map_err(NodeError::Fatal)?;
                    raft.initialize(BTreeMap::from([(config.id, BasicNode::new(peer_addr.clone()))]))
                        .await
                        .map_err(|e| fatal(&e))?;
                }
                // A static cluster's node without state went through the branch above:
                // the lowest id forms it, once, after the check; the others learn the
                // membership from its log.
                None => {}
            }
        } else if let Some(member) = config.join.clone() {
            // A joiner whose promotion never happened (it stopped while catching up, or
            // the change was refused) restarts as a learner: `--join` on its command line
            // asks again, in the background (its data lets it serve meanwhile).
            let learner =
                raft.metrics().borrow_watched().membership_config.membership().learner_ids().any(|l| l == config.id);
            if learner {
                let (raft, id, password) = (raft.clone(), config.id, config.join_password.clone());
                let peer_addr = peer_addr.clone();
                tokio::spawn(async move {
                    match crate::cluster::join_through(&member, id, &peer_addr, password.as_deref(), &raft, true).await
                    {
                        Ok(()) => tracing::info!("a learner at start: promoted through {member}"),
                        Err(e) => tracing::warn!("a learner at start: promotion through {member} failed: {e}"),
                    }
                });
            }
        }
        let wait = raft.wait(Some(STARTUP_LEADER_WAIT));
        if wait.metrics(|m| m.current_leader.is_some(), "a leader is known").await.is_err() {
            // Serve anyway: clients get TRYAGAIN until a quorum is back.
            tracing::warn!(
                "no leader after {} s; serving, requests answer TRYAGAIN until one is elected",
                STARTUP_LEADER_WAIT.as_secs()
            );
        }
        let node = Arc::new(Node {
            raft,
            sm,
            id: config.id,
            epoch: random_u64(),
            started: Instant::now(),
            peer_routes: Arc::new(config.peer_routes.clone()),
            test_clock: config.test_clock,
            forward_pool: Default::default(),
            write_load,
            groups: Default::default(),
            log_size,
            cluster_id,
            levels: Arc::new(crate::raft::levels::Levels::open(config.protocol_level, config.data_dir.join("levels"))),
            previous_waits_ended: tokio::sync::watch::channel(false).0,
            _data_dir_lock: data_dir_lock,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        });
        let _ = slot.set(Arc::clone(&node));
        tokio::spawn(expiry_ticker(Arc::clone(&node)));
        tokio::spawn(watch_membership(node.raft.clone(), Arc::clone(&node.write_load)));
        tokio::spawn(end_waits_of_removed(Arc::clone(&node)));
        tokio::spawn(end_previous_waits(Arc::clone(&node)));
        tokio::spawn(crate::silent_nodes::run(Arc::clone(&node), config.silent_node));
        tokio::spawn(crate::raft::levels::run(
            node.raft.clone(),
            node.id,
            Arc::clone(&node.levels),
            Arc::clone(&node.peer_routes),
        ));
        // Serve once the previous run's waits are ended (milliseconds once a leader and
        // the members' levels are known): until then blocking commands wait for it, and
        // one that waited would queue behind requests other nodes took meanwhile.
        let mut ended = node.previous_waits_ended.subscribe();
        if tokio::time::timeout(STARTUP_WAITS_WAIT, ended.wait_for(|done| *done)).await.is_err() {
            tracing::info!(
                "serving before the previous run's waits are ended (blocking commands wait for that, up to {} s)",
                PREVIOUS_WAITS_GATE.as_secs()
            );
        }
        Ok(node)
    }

    /// This node's write counter (the runtime's idle poll consults it).
    pub fn write_load(&self) -> Arc<WriteLoad> {
        Arc::clone(&self.write_load)
    }

    /// This process's monotonic clock in ms: the stamp on our proposals.
    pub fn stamp_ms(&self) -> u64 {
        let (offset_ms, rate) = self.test_clock;
        if rate == 1.0 {
            return offset_ms + self.started.elapsed().as_millis() as u64;
        }
        offset_ms + (self.started.elapsed().as_secs_f64() * 1000.0 * rate) as u64
    }

    /// Commits an operation through the log and returns what applying it answered. A
    /// follower forwards it to the leader, which stamps it with its own clock (one clock
    /// per term keeps lease time flowing) and proposes it on this node's behalf.
    pub async fn propose(&self, op: Op) -> Result<Applied, NodeError> {
        // Shared from here on: a retry or a forward reuses it instead of copying it.
        self.propose_shared(Arc::new(op)).await
    }

    /// `propose` for an op the caller keeps a handle on (a group, which is proposed
    /// again write by write if the leader refuses it).
    pub async fn propose_shared(&self, op: Arc<Op>) -> Result<Applied, NodeError> {
        // Counted from here, forwarded or not: while one is in flight, the next
        // groupable writes on this node share an entry (a follower forwards the group).
        let _counted = self.write_load.start_write();
        // No leader known yet, or a new leader that has not committed its first entry
        // (openraft refuses writes until then): retry for up to one election rather
        // than bounce the client at once.
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.propose_local(Arc::clone(&op), self.id).await {
                Err(NodeError::TryAgain) if Instant::now() < deadline => {
                    let wait = self.raft.wait(Some(Duration::from_millis(50)));
                    let _ = wait.metrics(|m| m.current_leader.is_some(), "a leader is known").await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(NodeError::NotLeader(leader)) => return self.forward(leader, op).await,
                other => return other.map(|(applied, _)| applied),
            }
        }
    }

    /// Proposes on this node (it must lead), stamped with this node's clock, on behalf
    /// of `origin`. Returns the reply and the entry's log index.
    pub async fn propose_local(&self, op: Arc<Op>, origin: NodeId) -> Result<(Applied, u64), NodeError> {
        // A node removed from the cluster may still know the leader and forward its
        // clients' writes: they would commit, but it would never apply them (its clients
        // wait, then get TRYAGAIN), and a wait it queued would outlive the end of its
        // waits, taking a grant or an item for nobody.
        if origin != self.id {
            let metrics = self.raft.metrics().borrow_watched().clone();
            if metrics.membership_config.membership().get_node(&origin).is_none() {
                return Err(NodeError::Refused(format!(
                    "ERR node {origin} {NOT_A_MEMBER} (removed?); connect to a member"
                )));
            }
        }
        // Applying a bad group would only refuse its members one by one; refusing it
        // here tells the node that formed it.
        crate::write_group::check_group(&op, self.levels.groups_allowed()).map_err(NodeError::Refused)?;
        // An entry kind an older member cannot read would stop it (`levels`). Checked on
        // the node the client asked, and again on the leader for a forwarded write.
        let (needed, cluster) = (crate::raft::levels::level_of(&op), self.levels.cluster());
        if needed > cluster {
            return Err(NodeError::Refused(crate::raft::levels::refusal(needed, cluster)));
        }
        let proposal = Proposal { epoch: self.epoch, stamp_ms: self.stamp_ms(), origin, op };
        let Ok(written) = tokio::time::timeout(QUORUM_TIMEOUT, self.raft.client_write(proposal)).await else {
            return Err(NodeError::NoQuorum(QUORUM_TIMEOUT.as_millis() as u64));
        };
        written.map(|response| (response.data, response.log_id.index)).map_err(write_error)
    }

    /// Sends `op` to the leader over the peer network and waits until this node has
    /// applied the entry too, so its waiter channels exist and reads here see it.
    async fn forward(&self, leader: NodeId, op: Arc<Op>) -> Result<Applied, NodeError> {
        let request = crate::raft::network::PeerRequest::Forward { origin: self.id, op };
        let response = self.ask_leader(leader, request, FORWARD_TIMEOUT).await?;
        let (applied, index) = match response {
            crate::raft::network::PeerResponse::Forward(Ok(done)) => done,
            // Word for word: the leader's TRYAGAIN may say that the write's outcome is
            // unknown ("no quorum", "may have been applied"), which the client must see.
            crate::raft::network::PeerResponse::Forward(Err(text)) if text.starts_with("TRYAGAIN") => {
                return Err(NodeError::Refused(text))
            }
            // Refused before anything was proposed (`propose_local`): word for word.
            crate::raft::network::PeerResponse::Forward(Err(text)) if text.contains(NOT_A_MEMBER) => {
                return Err(NodeError::Refused(text))
            }
            crate::raft::network::PeerResponse::Forward(Err(text)) => return Err(NodeError::Fatal(text)),
            _ => return Err(NodeError::Fatal("the leader answered another request".into())),
        };
        self.raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "the forwarded entry is applied here")
            .await
            // The leader answered, so the write is in: a plain TRYAGAIN would invite
            // the client to apply it a second time.
            .map_err(|_| NodeError::Unconfirmed(FORWARD_TIMEOUT.as_millis() as u64))?;
        Ok(applied)
    }

    /// Asks the leader for a read index and waits until this replica has applied it.
    async fn follower_read_index(&self, leader: NodeId) -> Result<(), NodeError> {
        let response = self.ask_leader(leader, crate::raft::network::PeerRequest::ReadIndex, FORWARD_TIMEOUT).await?;
        let index = match response {
            crate::raft::network::PeerResponse::ReadIndex(Ok(index)) => index,
            crate::raft::network::PeerResponse::ReadIndex(Err(_)) => return Err(NodeError::TryAgain),
            _ => return Err(NodeError::Fatal("the leader answered another request".into())),
        };
        self.raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "this replica has applied the read index")
            .await
            .map_err(|_| NodeError::TryAgain)?;
        Ok(())
    }

    /// One request to the leader over the peer network, answered within `ttl`. A
    /// leader that is gone, slow or unknown is TRYAGAIN for the client; for a forwarded
    /// write that may have reached it, a TRYAGAIN that says it may have been applied
    /// (`ForwardUnanswered`), since a client retries a plain TRYAGAIN.
    pub(crate) async fn ask_leader(
        &self,
        leader: NodeId,
        request: crate::raft::network::PeerRequest,
        ttl: Duration,
    ) -> Result<crate::raft::network::PeerResponse, NodeError> {
        let addr = {
            let metrics = self.raft.metrics().borrow_watched().clone();
            metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
        };
        let Some(addr) = self.peer_routes.get(&leader).cloned().or(addr) else { return Err(NodeError::TryAgain) };
        // A leader that froze or died leaves the request unanswered; once this node
        // sees an election (the leader it knows changes), the client is told to retry
        // rather than wait out `ttl`.
        let wait = self.raft.wait(Some(ttl));
        // (Except for leadership transfers and other admin work: there the leader
        // changing is expected, and the old leader still answers.)
        let expect_change = matches!(request, crate::raft::network::PeerRequest::Admin(_));
        let superseded = wait.metrics(|m| !expect_change && m.current_leader != Some(leader), "the leader changed");
        // Set once the request may have left this node: from then on a forwarded
        // write's outcome is unknown if no answer comes.
        let sent = std::sync::atomic::AtomicBool::new(false);
        let outcome = tokio::select! {
            answered = tokio::time::timeout(ttl, self.exchange(&addr, &request, &sent)) => match answered {
                Ok(Ok(response)) => return Ok(response),
                _ => NodeError::TryAgain,
            },
            _ = superseded => NodeError::TryAgain,
        };
        let forwarded = matches!(request, crate::raft::network::PeerRequest::Forward { .. });
        if forwarded && sent.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(NodeError::ForwardUnanswered(ttl.as_millis() as u64));
        }
        Err(outcome)
    }

    /// One request/response to a peer over a pooled connection; `sent` is set before
    /// the request is written.
    async fn exchange(
        &self,
        addr: &str,
        request: &crate::raft::network::PeerRequest,
        sent: &std::sync::atomic::AtomicBool,
    ) -> std::io::Result<crate::raft::network::PeerResponse> {
        let mut stream = loop {
            let pooled = self.forward_pool.lock().expect("not poisoned").get_mut(addr).and_then(Vec::pop);
            match pooled {
                // One the peer has closed meanwhile (it restarted) reads as ended: a
                // request written to it would be lost, and a forwarded write reported
                // as possibly applied when it never arrived.
                Some(stream) if pooled_is_open(&stream) => break stream,
                Some(_) => continue,
                None => {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    break stream;
                }
            }
        };
        sent.store(true, std::sync::atomic::Ordering::Relaxed);
        crate::raft::network::write_frame(&mut stream, request).await?;
        let response = crate::raft::network::read_frame(&mut stream).await?;
        let mut pool = self.forward_pool.lock().expect("not poisoned");
        let idle = pool.entry(addr.to_string()).or_default();
        if idle.len() < FORWARD_POOL_MAX {
            idle.push(stream);
        }
        Ok(response)
    }

    /// Commits a command through the log and returns the core's answer.
    ///
    /// While other writes are in flight here, a groupable command shares a log entry
    /// with the writes that arrive with it (`write_group`).
    pub async fn write(self: &Arc<Self>, command: Command) -> Result<fencelock_core::Result<Reply>, NodeError> {
        if command.may_wait() && !*self.previous_waits_ended.borrow() {
            // Queued before the entry that ends the previous run's waits, it would be
            // ended with them (`end_previous_waits`); that entry commits within
            // milliseconds of a leader and every member's level being known.
            let mut ended = self.previous_waits_ended.subscribe();
            let waited = tokio::time::timeout(PREVIOUS_WAITS_GATE, ended.wait_for(|done| *done)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(NodeError::TryAgain);
            }
        }
        match self.write_or_join(GroupWrite::Core(command)).await? {
            Applied::Core(reply) => Ok(reply),
            other => Err(unexpected(&other)),
        }
    }

    /// The write group being gathered (`write_group`).
    pub fn groups(&self) -> &crate::write_group::WriteGroups {
        &self.groups
    }

    /// Proposes `write` in an entry of its own, or, while other writes are in flight
    /// here and it may share one, in the open group (`write_group`).
    async fn write_or_join(self: &Arc<Self>, write: GroupWrite) -> Result<Applied, NodeError> {
        // Groups only once every member reads them (`levels`): during a rolling upgrade
        // an older member would stop on the first one.
        if self.write_load.writes_in_flight() > 0
            && self.levels.groups_allowed()
            && crate::write_group::groupable_write(&write)
        {
            crate::write_group::join(self, write).await
        } else {
            self.propose(Op::from(write)).await
        }
    }

    /// Applies MULTI's queued commands in one entry.
    pub async fn multi(&self, commands: Vec<Command>) -> Result<Vec<fencelock_core::Result<Reply>>, NodeError> {
        match self.propose(Op::Multi(commands)).await? {
            Applied::Multi(replies) => Ok(replies),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a script through the log: its reply, or its error text (rolled back). A
    /// lock client's well-known script that arrives with other writes in flight shares
    /// an entry with them (`write_group`).
    pub async fn eval(
        self: &Arc<Self>,
        script: Bytes,
        keys: Vec<Bytes>,
        args: Vec<Bytes>,
    ) -> Result<Result<ScriptReply, String>, NodeError> {
        match self.write_or_join(GroupWrite::Eval { script, keys, args }).await? {
            Applied::Script(result) => Ok(result),
            other => Err(unexpected(&other)),
        }
    }

    /// A linearizable read: confirm leadership with a quorum (read index), wait until
    /// the state machine has applied up to it, then read.
    pub async fn read(&self, command: &Command) -> Result<fencelock_core::Result<Reply>, NodeError> {
        // As for writes: an election settling is waited out for up to one election.
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.read_once(command).await {
                Err(NodeError::TryAgain) if Instant::now() < deadline => {
                    let wait = self.raft.wait(Some(Duration::from_millis(50)));
                    let _ = wait.metrics(|m| m.current_leader.is_some(), "a leader is known").await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    async fn read_once(&self, command: &Command) -> Result<fencelock_core::Result<Reply>, NodeError> {
        let Ok(confirmed) =
            tokio::time::timeout(QUORUM_TIMEOUT, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await
        else {
            return Err(NodeError::NoQuorum(QUORUM_TIMEOUT.as_millis() as u64));
        };
        match confirmed {
            Ok(_) => {}
            Err(e) if e.forward_to_leader().is_some() => {
                match e.forward_to_leader().and_then(|f| f.leader_id) {
                    // A follower reads linearizably too: the leader's read index, then
                    // this replica's state once it has applied that far.
                    Some(leader) => self.follower_read_index(leader).await?,
                    None => return Err(NodeError::TryAgain),
                }
            }
            // The leader could not hear from a quorum: it may be cut off.
            Err(RaftError::APIError(_)) => return Err(NodeError::NoQuorum(QUORUM_TIMEOUT.as_millis() as u64)),
            Err(e) => return Err(NodeError::Fatal(e.to_string())),
        }
        Ok(self.read_local(command))
    }

    /// The leader's side of a follower's read: confirm leadership with a quorum and
    /// answer the index the follower must apply before reading.
    pub(crate) async fn leader_read_index(&self) -> Result<u64, NodeError> {
        match tokio::time::timeout(QUORUM_TIMEOUT, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Err(_) => Err(NodeError::NoQuorum(QUORUM_TIMEOUT.as_millis() as u64)),
            Ok(Ok(read)) => Ok(read.index()),
            Ok(Err(_)) => Err(NodeError::TryAgain),
        }
    }

    /// Reads this replica's state as it is, without confirming it is current: what a
    /// connection that sent READONLY gets (Redis Cluster's stale replica reads).
    pub fn read_local(&self, command: &Command) -> fencelock_core::Result<Reply> {
        let inner = self.sm.shared.inner.lock().expect("not poisoned");
        // The leader shows TTLs at its clock on the replicated time base, so they count
        // down between writes (what has expired is still the log's decision, see
        // `read_at`); only once its epoch is in the log does its clock map
        // onto it. Other nodes read at the replicated time. That includes a leader that
        // just stepped down while its epoch is still the log's: the new leader's first
        // entry pins time where the log left it, so its clock would run ahead.
        if inner.epoch() == Some(self.epoch) && self.raft.metrics().borrow_watched().state == ServerState::Leader {
            let now = i128::from(self.stamp_ms()) + inner.core.time_offset_ms();
            return inner.core.read_at(command, now.clamp(0, i128::from(u64::MAX)) as u64);
        }
        inner.core.read(command)
    }

    /// Role, term and indexes for INFO.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        NodeStatus {
            leader: m.state == ServerState::Leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            leader_id: m.current_leader,
            commit_index: m.local_committed.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
        }
    }
}

/// A summary for INFO.
#[derive(Debug, Clone, Copy)]
pub struct NodeStatus {
    /// This node leads.
    pub leader: bool,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// The leader this node knows of.
    pub leader_id: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Index the last snapshot covers (0: none).
    pub snapshot_index: u64,
}

/// Tells the log store whether this node is its cluster's only member, whenever the
/// membership changes (server metrics change only with state, leader or membership).
/// How long a starting node keeps trying to end its previous run's waits. It needs a
/// leader and every member's level (`levels`; a member that is down at the start is
/// not heard from); past this its blocking commands are served without it, and the
/// previous run's waits end only by their own bound.
const END_WAITS_FOR: Duration = Duration::from_secs(10);
/// How long a blocking command waits for that before answering TRYAGAIN.
const PREVIOUS_WAITS_GATE: Duration = Duration::from_secs(5);
/// How long a starting node waits for it before it serves.
const STARTUP_WAITS_WAIT: Duration = Duration::from_secs(2);

/// Ends the waits this node's previous run queued (`Op::CancelWaitsOf`): their
/// connections died with that process, and nothing else ends them. Until this commits,
/// a lock can be granted to one of them (held by nobody until its lease runs out) and
/// a queue item popped for one is lost. This run's blocking commands wait for it
/// (`Node::write`), since one queued before it would be ended too.
async fn end_previous_waits(node: Arc<Node>) {
    end_previous_waits_now(&node).await;
    node.previous_waits_ended.send_replace(true);
}

impl Node {
    /// Ends every wait a connection of node `origin` queued so far
    /// (`Op::CancelWaitsOf`) and returns how many ended. Proposed for this node's own
    /// previous run at start, for a removed member, and for a silent one
    /// (`silent_nodes`); the callers check first that every member reads the entry
    /// (`levels::CANCEL_WAITS_FROM_LEVEL`).
    pub(crate) async fn end_waits_of(&self, origin: NodeId) -> Result<i64, NodeError> {
        match self.propose(Op::CancelWaitsOf { origin }).await? {
            Applied::Core(Ok(Reply::Int(ended))) => Ok(ended),
            other => Err(unexpected(&other)),
        }
    }

    /// `end_waits_of`, best effort: the outcome is logged as `why`'s, and the caller goes
    /// on either way.
    pub(crate) async fn end_waits_noted(&self, origin: NodeId, why: &str) {
        match self.end_waits_of(origin).await {
            Ok(n) if n > 0 => tracing::info!(node = origin, waits = n, "{why}: ended its waits"),
            Ok(_) => {}
            Err(e) => tracing::warn!(node = origin, "{why}: could not end its waits: {e}"),
        }
    }
}

async fn end_previous_waits_now(node: &Node) {
    let deadline = Instant::now() + END_WAITS_FOR;
    while Instant::now() < deadline {
        if node.levels.cluster() < crate::raft::levels::CANCEL_WAITS_FROM_LEVEL {
            // Not every member reads the entry yet (or none has answered yet).
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        match node.end_waits_of(node.id).await {
            Ok(ended) => {
                tracing::info!(ended, "waits left by this node's previous run ended");
                return;
            }
            Err(e) => {
                tracing::debug!("ending the previous run's waits: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tracing::warn!("could not end the waits left by this node's previous run within {} s", END_WAITS_FOR.as_secs());
}

async fn watch_membership(raft: Raft, load: Arc<WriteLoad>) {
    let mut metrics = raft.server_metrics();
    loop {
        let solo = metrics.borrow_watched().membership_config.membership().nodes().count() == 1;
        load.set_solo(solo);
        if metrics.changed().await.is_err() {
            return; // Raft has shut down
        }
    }
}

/// Removed nodes whose waits a follower remembers to end once it leads.
const REMOVED_PENDING_MAX: usize = 64;

/// On the leader, ends the waits of every node that leaves the membership, once the
/// change is committed. `CLUSTER.REMOVE` does it itself after its change commits, but
/// not when the change commits after the command gave up waiting (10 s), nor for a
/// leader that removed itself (it is no member by then); `silent_nodes` looks only at
/// members. Its clients' waits would otherwise stay queued, taking grants and queue
/// items for nobody. (Ending waits already ended ends nothing.)
async fn end_waits_of_removed(node: Arc<Node>) {
    // Server metrics change only with the vote, the role or a membership: not per write.
    let mut metrics = node.raft.server_metrics();
    let committed = |m: &openraft::metrics::RaftServerMetrics<crate::raft::TypeConfig>| -> (Vec<NodeId>, bool) {
        let members = m.committed_membership_config.membership().nodes().map(|(id, _)| *id).collect();
        (members, m.state == ServerState::Leader)
    };
    let mut known = committed(&metrics.borrow_watched()).0;
    // Removed while this node did not lead (a leader that removed itself steps down as
    // the change commits): ended once it does. Ending them twice ends nothing.
    let mut pending: Vec<NodeId> = Vec::new();
    while metrics.changed().await.is_ok() {
        let (now, leads) = committed(&metrics.borrow_watched());
        for id in known.iter().filter(|id| !now.contains(id)) {
            if !pending.contains(id) {
                pending.push(*id);
            }
        }
        if pending.len() > REMOVED_PENDING_MAX {
            pending.drain(..pending.len() - REMOVED_PENDING_MAX);
        }
        known = now;
        if !leads || pending.is_empty() || node.levels.cluster() < crate::raft::levels::CANCEL_WAITS_FROM_LEVEL {
            continue;
        }
        for id in std::mem::take(&mut pending) {
            node.end_waits_noted(id, "a node left the membership").await;
        }
    }
}

/// Whether an idle pooled peer connection is still open: nothing to read yet. (The
/// peer never sends unasked, so readable means closed, or a protocol fault.)
fn pooled_is_open(stream: &tokio::net::TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// An answer of another kind than the op's: a bug, never a client error.
fn unexpected(applied: &Applied) -> NodeError {
    NodeError::Fatal(format!("unexpected apply result {applied:?}"))
}

/// What a refused or failed `client_write` or membership change means for the client.
/// Only the errors from before the entry was appended (`ForwardToLeader`) are safe for
/// `propose` to retry or forward: a discarded entry may still have committed through
/// the new leader.
pub(crate) fn write_error(
    e: RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>,
) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            f.leader_id.map_or(NodeError::TryAgain, NodeError::NotLeader)
        }
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => NodeError::Discarded,
        // Another change is being committed: this one may go once it has (two nodes
        // joining at once; a joiner exits on anything but TRYAGAIN).
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(e))) => {
            NodeError::Refused(format!("TRYAGAIN another membership change is in progress ({e}); retry"))
        }
        // A membership change (or a precondition) the cluster refused.
        RaftError::APIError(e) => NodeError::Refused(format!("ERR {e}")),
        RaftError::Fatal(e) => NodeError::Fatal(e.to_string()),
    }
}

/// How often the leader checks for due deadlines. Expiry is at most this late.
const TICK_MS: u64 = 10;

/// Only the leader decides expiry, and it commits that decision through the log: when
/// the earliest deadline has passed on its clock it proposes a `Tick`, and every
/// replica expires what is due at the Tick's stamp. The same loop proposes a
/// `ConfigCompact` when more than `CONFIG_DELETED_KEPT + CONFIG_DELETED_SLACK` deleted
/// config keys are held.
async fn expiry_ticker(node: Arc<Node>) {
    let mut interval = tokio::time::interval(Duration::from_millis(TICK_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if node.raft.metrics().borrow_watched().state == ServerState::Shutdown {
            return;
        }
        if !node.raft.is_leader() {
            continue;
        }
        // Asked only at the level that reads the entry: below it the deletes pile up,
        // and there is nothing to decide.
        let may_compact = node.levels.cluster() >= crate::raft::levels::CONFIG_COMPACT_FROM_LEVEL;
        let (due, compact_below) = {
            let inner = node.sm.shared.inner.lock().expect("not poisoned");
            let compact_below = if may_compact { inner.core.config_compaction_due() } else { None };
            let due = match inner.core.next_deadline_ms() {
                None => false,
                // Until an entry of ours is applied, the offset belongs to another
                // clock: one Tick puts our epoch in the log and rebases.
                Some(_) if inner.epoch() != Some(node.epoch) => true,
                Some(deadline) => {
                    let now = i128::from(node.stamp_ms()) + inner.core.time_offset_ms();
                    now > i128::from(deadline)
                }
            };
            (due, compact_below)
        };
        if due {
            if let Err(e) = node.write(Command::Tick).await {
                tracing::warn!("expiry tick failed: {e}");
            }
        }
        // The leader also decides when deleted config keys are forgotten, as it decides
        // expiry: by the replicated state alone, committed through the log. Below the
        // level that reads the entry they stay, as before.
        if let Some(below) = compact_below {
            match node.write(Command::ConfigCompact { below }).await {
                Ok(_) => tracing::debug!("deleted config keys before version {below} forgotten"),
                Err(e) => tracing::warn!("forgetting deleted config keys failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::errors::ForwardToLeader;

    #[test]
    fn only_a_write_refused_before_its_append_is_retried() {
        let to = |leader_id| ForwardToLeader { leader_id, ..ForwardToLeader::empty() };
        let refused = |e| write_error(RaftError::APIError(e));
        assert_eq!(refused(ClientWriteError::ForwardToLeader(to(Some(2)))), NodeError::NotLeader(2));
        assert_eq!(refused(ClientWriteError::ForwardToLeader(to(None))), NodeError::TryAgain);
        // Appended, then discarded on a leader change: it may have committed elsewhere.
        let discarded = refused(ClientWriteError::LogEntryDiscarded(to(Some(2))));
        assert_eq!(discarded, NodeError::Discarded);
        assert!(discarded.to_string().starts_with("TRYAGAIN "), "clients see a TRYAGAIN: {discarded}");
    }

    /// The Rust client reports a TRYAGAIN as an unknown outcome (never resent unless
    /// safe) when it says "no quorum" or "may have been applied": every error after
    /// which the write may be in the log says one of them.
    #[test]
    fn errors_after_which_a_write_may_be_in_the_log_say_so() {
        for e in [
            NodeError::Discarded,
            NodeError::Unconfirmed(10_000),
            NodeError::NoQuorum(3_000),
            NodeError::ForwardUnanswered(10_000),
        ] {
            let text = e.to_string();
            assert!(text.starts_with("TRYAGAIN "), "{text}");
            assert!(text.contains("may have been applied") || text.contains("no quorum"), "{text}");
        }
        for e in [NodeError::TryAgain, NodeError::NotLeader(2)] {
            let text = e.to_string();
            assert!(!text.contains("may have been applied") && !text.contains("no quorum"), "{text}");
        }
    }
}
