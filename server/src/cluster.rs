//! Cluster administration: growing, shrinking and steering the Raft group
//! (`CLUSTER.JOIN`, `.ADDLEARNER`, `.PROMOTE`, `.REMOVE`, `.TRANSFER`), its status
//! (`CLUSTER.STATUS`, INFO's replication section), `WAIT`'s replica count, the
//! `--join` handshake, and the leadership hand-off on SIGTERM.
//!
//! Membership changes run on the leader only; any other node forwards them over the
//! peer network, as it forwards writes, so an operator can send them to any node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::node::{write_error, Node, NodeError};
use crate::raft::network::{PeerRequest, PeerResponse};
use crate::raft::NodeId;

/// How recently a voter must have answered the leader to count as reachable for a
/// membership change (`check_live_majority`).
const LIVE_WITHIN: Duration = Duration::from_secs(1);

/// Whether this leader heard from node `id` within `LIVE_WITHIN` (its heartbeat metrics;
/// a follower has none, and hears from nobody).
pub(crate) fn heard_lately(metrics: &openraft::RaftMetrics<crate::raft::TypeConfig>, id: &NodeId) -> bool {
    metrics
        .heartbeat
        .as_ref()
        .and_then(|h| h.get(id))
        .and_then(|at| at.as_ref())
        .is_some_and(|at| openraft::Instant::elapsed(&**at) < LIVE_WITHIN)
}

/// A membership or leadership change, as the leader executes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Add a non-voting member and wait until it has caught up (log or snapshot).
    AddLearner {
        /// Its node id.
        id: NodeId,
        /// Its peer address.
        addr: String,
    },
    /// AddLearner, then Promote: what `--join` asks for.
    Join {
        /// Its node id.
        id: NodeId,
        /// Its peer address.
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// Its node id.
        id: NodeId,
    },
    /// Take a voter or learner out of the cluster; its id is never admitted again.
    Remove {
        /// Its node id.
        id: NodeId,
    },
    /// Hand leadership to `to`, or to the most up-to-date other voter.
    Transfer {
        /// The new leader, if the operator chose one.
        to: Option<NodeId>,
    },
}

/// What the leader reports of replication: its last log index and, per other member,
/// the highest index known to be on that member's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationView {
    /// The leader's id.
    pub leader: NodeId,
    /// The leader's last log index.
    pub last_log_index: u64,
    /// Matched index per follower and learner.
    pub matched: BTreeMap<NodeId, u64>,
}

/// How long a new member may take to catch up before ADDLEARNER / JOIN give up
/// waiting (it stays a learner and keeps catching up).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long TRANSFER waits for the new leader to take over.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a membership change may take to commit before the admin is answered.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a follower waits for the leader's replication view.
const VIEW_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts of the `--join` handshake while the cluster has no leader.
const JOIN_ATTEMPTS_MAX: u32 = 120;

fn refused(text: impl Into<String>) -> NodeError {
    NodeError::Refused(text.into())
}

impl Node {
    /// Runs a membership or leadership change on the leader, forwarding it there if
    /// this node does not lead. Answers a one-line summary.
    pub async fn admin(&self, op: AdminOp) -> Result<String, NodeError> {
        match self.admin_local(op.clone()).await {
            Err(NodeError::NotLeader(leader)) => {
                match self.ask_leader(leader, PeerRequest::Admin(op), CATCH_UP_TIMEOUT + TRANSFER_TIMEOUT).await? {
                    PeerResponse::Admin(Ok(done)) => Ok(done),
                    // Word for word, a TRYAGAIN too: it may say the change's outcome is unknown.
                    PeerResponse::Admin(Err(text)) => Err(refused(text)),
                    _ => Err(NodeError::Fatal("the leader answered another request".into())),
                }
            }
            other => other,
        }
    }

    /// etcd's strict reconfiguration check: a voter change goes through a joint
    /// configuration that needs a majority of the new voters too, so a change whose new
    /// voters are mostly unreachable (promoting a learner that is down into a
    /// one-voter cluster; removing a live voter while another is down) would stop every
    /// write until they came back, and a corrective change would be refused meanwhile.
    /// A voter counts as reachable when this leader heard from it within
    /// `LIVE_WITHIN` (heartbeats go every 50 ms).
    fn check_live_majority(
        &self,
        metrics: &openraft::RaftMetrics<crate::raft::TypeConfig>,
        after: &BTreeSet<NodeId>,
    ) -> Result<(), NodeError> {
        let live: Vec<NodeId> =
            after.iter().filter(|id| **id == self.id || heard_lately(metrics, id)).copied().collect();
        if live.len() * 2 > after.len() {
            return Ok(());
        }
        Err(refused(format!(
            "ERR the voters after this change would be {after:?}, of which only {live:?} answered in the last {} ms: \
             the change would stop every write until a majority of them is back; bring them back first",
            LIVE_WITHIN.as_millis()
        )))
    }

    /// Commits a membership change, or says within `MEMBERSHIP_TIMEOUT` that it has not
    /// (a quorum lost in the middle of it would keep the admin client waiting forever).
    async fn change_members(&self, change: ChangeMembers<NodeId, BasicNode>) -> Result<(), NodeError> {
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, self.raft.change_membership(change, false)).await {
            Ok(done) => done.map(drop).map_err(write_error),
            Err(_) => Err(refused(format!(
                "TRYAGAIN the membership change did not commit within {} s (no quorum?); it may still: check \
                 CLUSTER.STATUS",
                MEMBERSHIP_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Runs `op` here; this node must lead.
    pub(crate) async fn admin_local(&self, op: AdminOp) -> Result<String, NodeError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return Err(metrics
                .current_leader
                .filter(|l| *l != self.id)
                .map_or(NodeError::TryAgain, NodeError::NotLeader));
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        match op {
            // Refused whatever the address: a retried join whose first attempt went
            // through and a voter that lost its data and asks again look the same from
            // here; the joiner tells them apart (`join_through`). (An "already a voter"
            // success answered +OK, which hid it from that check.)
            AdminOp::AddLearner { id, .. } | AdminOp::Join { id, .. } if voters.contains(&id) => {
                let known = membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
                Err(refused(format!("ERR node {id} is already a voter (at {known})")))
            }
            AdminOp::AddLearner { id, ref addr } | AdminOp::Join { id, ref addr } => {
                // A wildcard address (a node started with --bind 0.0.0.0) names every
                // node: the leader would replicate to itself and count itself twice.
                if is_wildcard(addr) {
                    return Err(refused(format!(
                        "ERR {addr} is not an address other nodes can reach; start node {id} with --bind set to its own address"
                    )));
                }
                // The same for a member already in: a node that joins would dial that
                // address and reach itself, and could count its own vote as that
                // member's.
                if let Some((member, node)) = membership.nodes().find(|(_, node)| is_wildcard(&node.addr)) {
                    return Err(refused(format!(
                        "ERR member {member} is at {}, which is not an address other nodes can reach (it was \
                         started with --bind 0.0.0.0 or [::], and the membership keeps that address): this \
                         cluster cannot grow; start a new one with --bind set to each node's own address",
                        node.addr
                    )));
                }
                if self.sm.shared.inner.lock().expect("not poisoned").retired.contains(&id) {
                    return Err(refused(format!(
                        "ERR node id {id} was removed from this cluster and is never reused; start the node with an empty data directory and a new --node-id"
                    )));
                }
                if let Some(known) = membership.get_node(&id).filter(|n| &n.addr != addr) {
                    return Err(refused(format!("ERR node {id} is already a learner at {}", known.addr)));
                }
                // The log it must replay may hold entries of the cluster's level
                // (`levels`): an older build would stop on the first one.
                let cluster_level = self.levels.cluster();
                let its_level = match crate::raft::levels::probe(addr).await {
                    crate::raft::levels::Probe::Answered(level) => Some(level),
                    crate::raft::levels::Probe::Older => Some(0),
                    // Not reachable: adding it fails below if it stays so.
                    crate::raft::levels::Probe::Unreachable => None,
                };
                if let Some(level) = its_level.filter(|level| *level < cluster_level) {
                    return Err(refused(format!(
                        "ERR node {id} runs an older fencelock (protocol level {level}) than this cluster \
                         (level {cluster_level}); upgrade it first"
                    )));
                }
                let added =
                    tokio::time::timeout(CATCH_UP_TIMEOUT, self.raft.add_learner(id, BasicNode::new(addr), true));
                match added.await {
                    Err(_) => {
                        // A joiner is running (it asked) and retries: slow, not refused.
                        let code = if matches!(op, AdminOp::Join { .. }) { "TRYAGAIN" } else { "ERR" };
                        return Err(refused(format!(
                            "{code} node {id} was added as a learner but did not catch up within {} s; is it running at {addr}?",
                            CATCH_UP_TIMEOUT.as_secs()
                        )));
                    }
                    Ok(result) => {
                        result.map_err(write_error)?;
                    }
                }
                if let AdminOp::Join { .. } = op {
                    self.change_members(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
                    tracing::info!(node = id, "node joined as a voter");
                    return Ok(format!("node {id} joined as a voter"));
                }
                Ok(format!("node {id} added as a learner"))
            }
            AdminOp::Promote { id } => {
                if voters.contains(&id) {
                    return Ok(format!("node {id} is already a voter"));
                }
                if !learners.contains(&id) {
                    return Err(refused(format!(
                        "ERR node {id} is not a learner; add it with CLUSTER.ADDLEARNER first"
                    )));
                }
                let mut after = voters.clone();
                after.insert(id);
                self.check_live_majority(&metrics, &after)?;
                self.change_members(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
                Ok(format!("node {id} promoted to voter"))
            }
            AdminOp::Remove { id } => {
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(refused(format!(
                            "ERR node {id} is the only voter; a cluster cannot remove its last voter"
                        )));
                    }
                    let mut after = voters.clone();
                    after.remove(&id);
                    self.check_live_majority(&metrics, &after)?;
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else if learners.contains(&id) {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    return Err(refused(format!("ERR node {id} is not a member")));
                };
                let ends_waits = self.levels.cluster() >= crate::raft::levels::CANCEL_WAITS_FROM_LEVEL;
                // A leader removing itself ends its own clients' waits first: once out, it
                // is no member, and the next leader refuses what it proposes.
                if ends_waits && id == self.id {
                    self.end_waits_noted(id, "removing this node").await;
                }
                self.change_members(change).await?;
                tracing::info!(node = id, "node removed");
                // Its clients' waits would otherwise last until they time out (forever
                // for WAIT FOREVER), taking grants and queue items nobody receives.
                if ends_waits && id != self.id {
                    self.end_waits_noted(id, "node removed").await;
                }
                Ok(format!("node {id} removed"))
            }
            AdminOp::Transfer { to } => {
                let view = self.replication_view().await;
                let target = match to {
                    Some(id) if id == self.id => return Ok(format!("node {id} already leads")),
                    Some(id) if !voters.contains(&id) => {
                        return Err(refused(format!("ERR node {id} is not a voter; only voters can lead")))
                    }
                    Some(id) => id,
                    None => {
                        let matched = |id: &NodeId| view.as_ref().and_then(|v| v.matched.get(id).copied()).unwrap_or(0);
                        let best = voters
                            .iter()
                            .filter(|v| **v != self.id)
                            .max_by_key(|v| (matched(v), std::cmp::Reverse(**v)));
                        *best.ok_or_else(|| refused("ERR no other voter to transfer leadership to"))?
                    }
                };
                self.raft.trigger().transfer_leader(target).await.map_err(|e| NodeError::Fatal(e.to_string()))?;
                self.raft
                    .wait(Some(TRANSFER_TIMEOUT))
                    .metrics(|m| m.current_leader == Some(target), "the transfer target leads")
                    .await
                    .map_err(|_| {
                        refused(format!(
                            "ERR node {target} did not take over within {} ms (is it up to date and reachable?)",
                            TRANSFER_TIMEOUT.as_millis()
                        ))
                    })?;
                tracing::info!(node = target, "leadership transferred");
                Ok(format!("leadership transferred to node {target}"))
            }
        }
    }

    /// The leader's view of replication: from this node's metrics if it leads, else
    /// asked of the leader. None when no leader answers.
    pub async fn replication_view(&self) -> Option<ReplicationView> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.state == ServerState::Leader {
            return Some(self.local_view());
        }
        let leader = metrics.current_leader.filter(|l| *l != self.id)?;
        match self.ask_leader(leader, PeerRequest::Replication, VIEW_TIMEOUT).await {
            Ok(PeerResponse::Replication(view)) => view,
            _ => None,
        }
    }

    /// This node's replication view; meaningful only while it leads.
    pub(crate) fn local_view(&self) -> ReplicationView {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let matched = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, log)| (*id, log.as_ref().map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        ReplicationView { leader: self.id, last_log_index: metrics.last_log_index.unwrap_or(0), matched }
    }

    /// WAIT: how many replicas (followers and learners) hold everything this node has
    /// applied, waiting until `wanted` do or `timeout` (None: forever) passes.
    pub async fn wait_replicas(&self, wanted: u64, timeout: Option<Duration>) -> u64 {
        let target = self.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let count = match self.replication_view().await {
                Some(view) => view.matched.values().filter(|m| **m >= target).count() as u64,
                None => 0,
            };
            if count >= wanted || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// CLUSTER.STATUS: this node's view, then one line per member with the leader's
    /// replication figures.
    pub async fn cluster_status(&self) -> String {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let view = self.replication_view().await;
        let role_of = |id: NodeId, state: Option<ServerState>| match state {
            Some(ServerState::Leader) => "leader",
            Some(ServerState::Candidate) => "candidate",
            _ if metrics.current_leader == Some(id) => "leader",
            _ if voters.contains(&id) => "follower",
            _ => "learner",
        };
        let list = |ids: &mut dyn Iterator<Item = NodeId>| ids.map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k}:{v}\r\n"));
        line("node_id", self.id.to_string());
        line("role", role_of(self.id, Some(metrics.state)).to_string());
        line("leader_id", metrics.current_leader.map_or("none".into(), |l| l.to_string()));
        line("term", metrics.current_term.to_string());
        line("last_log_index", metrics.last_log_index.unwrap_or(0).to_string());
        line("commit_index", metrics.local_committed.map_or(0, |l| l.index).to_string());
        line("applied_index", metrics.last_applied.map_or(0, |l| l.index).to_string());
        line("snapshot_index", metrics.snapshot.map_or(0, |l| l.index).to_string());
        line("purged_index", metrics.purged.map_or(0, |l| l.index).to_string());
        line("voters", list(&mut membership.voter_ids()));
        line("learners", list(&mut membership.learner_ids()));
        for (id, node) in membership.nodes() {
            let state = (*id == self.id).then_some(metrics.state);
            let figures = match &view {
                Some(v) if v.leader == *id => format!("matched={},lag=0", v.last_log_index),
                Some(v) => match v.matched.get(id) {
                    Some(m) => format!("matched={m},lag={}", v.last_log_index.saturating_sub(*m)),
                    None => "matched=?,lag=?".into(),
                },
                None => "matched=?,lag=?".into(),
            };
            line("member", format!("id={id},addr={},role={},{figures}", node.addr, role_of(*id, state)));
        }
        out
    }

    /// SIGTERM: the node ends its clients' waits through the log (while it is down they
    /// would stay queued in the replicated state, and a lock freed or an item pushed
    /// meanwhile would go to nobody: lost, for an item), then a leader hands leadership
    /// to the most up-to-date voter, so the cluster does not wait out an election
    /// timeout; then Raft stops.
    pub async fn shut_down(&self) {
        self.shutting_down.store(true, std::sync::atomic::Ordering::Release);
        let members = self.raft.metrics().borrow_watched().membership_config.membership().nodes().count();
        // Alone, nothing can be granted while it is down, and its restart ends them.
        if members > 1 && self.levels.cluster() >= crate::raft::levels::CANCEL_WAITS_FROM_LEVEL {
            let ended = tokio::time::timeout(SHUTDOWN_END_WAITS, self.end_waits_noted(self.id, "shutting down"));
            if ended.await.is_err() {
                tracing::warn!("shutting down without ending this node's waits: no quorum within 1 s");
            }
        }
        if self.raft.is_leader() {
            let voters = self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().count();
            if voters > 1 {
                match self.admin_local(AdminOp::Transfer { to: None }).await {
                    Ok(done) => tracing::info!("shutting down: {done}"),
                    Err(e) => tracing::warn!("shutting down without a leadership transfer: {e}"),
                }
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// How long a node shutting down tries to end its clients' waits.
const SHUTDOWN_END_WAITS: Duration = Duration::from_secs(1);

/// Whether a peer address names no host in particular (0.0.0.0, [::]).
fn is_wildcard(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

/// `--join`: asks the cluster, through a member's client port, to add this node as a
/// learner, catch it up and promote it (after AUTH with `password`, this node's own
/// `--requirepass`, when it has one). Retries while the cluster answers TRYAGAIN or
/// cannot be reached; any other refusal is final.
pub(crate) async fn join_through(
    member: &str,
    id: NodeId,
    peer_addr: &str,
    password: Option<&str>,
    raft: &crate::raft::Raft,
    has_data: bool,
) -> Result<(), NodeError> {
    // A request is an array of bulk strings: the same bytes as such a reply in RESP2.
    let mut request = bytes::BytesMut::new();
    let encode = |args: Vec<String>, out: &mut bytes::BytesMut| {
        crate::resp::Wire::Array(args.into_iter().map(|a| crate::resp::Wire::Bulk(a.into())).collect())
            .encode(crate::resp::Proto::Resp2, out);
    };
    if let Some(password) = password {
        encode(vec!["AUTH".into(), password.into()], &mut request);
    }
    encode(vec!["CLUSTER.JOIN".into(), id.to_string(), peer_addr.into()], &mut request);
    let mut backoff = Duration::from_millis(100);
    // Whether an earlier attempt may have gone through (sent, then no answer).
    let mut maybe_joined = false;
    for attempt in 1..=JOIN_ATTEMPTS_MAX {
        // Whether this attempt's request went out: only then may it have joined.
        let mut sent = false;
        let answer = async {
            let mut stream = tokio::net::TcpStream::connect(member).await?;
            stream.write_all(&request).await?;
            sent = true;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if password.is_some() {
                reader.read_line(&mut line).await?;
                if !line.starts_with('+') {
                    // The answer to AUTH: the join was not even tried.
                    return Ok(format!("-AUTH {}", line.trim_end().trim_start_matches('-')));
                }
                line.clear();
            }
            reader.read_line(&mut line).await?;
            Ok::<_, std::io::Error>(line.trim_end().to_string())
        };
        let outcome = tokio::time::timeout(CATCH_UP_TIMEOUT + TRANSFER_TIMEOUT, answer).await;
        match outcome {
            // "Already a voter" answers a retried join whose earlier attempt went
            // through; that attempt brought this node the log. Otherwise the voter under
            // this id lost its data: voting again with an empty log and no memory of its
            // votes, it could elect a leader that lacks committed entries (two holders
            // of one lock), or vote twice in one term. (The leader replicates to that
            // address anyway, so having entries now does not show an attempt went
            // through.)
            Ok(Ok(line))
                if line.contains("already a voter")
                    && (has_data || (maybe_joined && raft.is_initialized().await.unwrap_or(false))) =>
            {
                tracing::info!("joined the cluster through {member} (an earlier attempt went through): {line}");
                return Ok(());
            }
            Ok(Ok(line)) if line.contains("already a voter") => {
                return Err(NodeError::Fatal(format!(
                    "node {id} is already a voter of the cluster {member} belongs to, and this node's data \
                     directory is empty: a voter that lost its data must not come back under its old id. \
                     Remove it (CLUSTER.REMOVE {id}) and join with a new --node-id"
                )));
            }
            Ok(Ok(line)) if line.starts_with('+') => {
                tracing::info!("joined the cluster through {member}: {}", &line[1..]);
                return Ok(());
            }
            Ok(Ok(line)) if line.starts_with("-TRYAGAIN") || line.is_empty() => {
                // "it may still" / "may have been applied": the change may commit.
                maybe_joined |= line.contains("may ");
                tracing::info!(attempt, "join through {member}: {line}; retrying");
            }
            Ok(Ok(line)) => {
                return Err(NodeError::Fatal(format!("{member} refused the join: {}", line.trim_start_matches('-'))))
            }
            Ok(Err(e)) => {
                maybe_joined |= sent;
                tracing::info!(attempt, "join through {member}: {e}; retrying");
            }
            Err(_) => {
                maybe_joined |= sent;
                tracing::info!(attempt, "join through {member}: no answer; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(NodeError::Fatal(format!("could not join through {member} after {JOIN_ATTEMPTS_MAX} attempts")))
}
