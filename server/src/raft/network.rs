//! The peer network: openraft's RPCs between nodes over TCP.
//!
//! ```text
//!   frame = len:u32 (LE) | postcard(PeerRequest or PeerResponse)
//! ```
//!
//! Each openraft replication stream owns one `PeerClient`, which keeps one connection.
//! AppendEntries can be pipelined on it (`stream_append`): requests go out as openraft
//! produces them, up to `--peer-pipeline` unanswered, and the peer answers them in
//! order on the same connection. Other RPCs are one request, one response. A failure
//! drops the connection and the next call reconnects. Frames are bounded
//! (`FRAME_BYTES_MAX`), so a peer cannot make this node allocate without limit.

use std::future::Future;
use std::sync::Arc;

use futures_util::Stream;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::StreamAppendResult;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::vote::RaftLeaderId;
use openraft::{BasicNode, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{NodeId, Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// Largest frame accepted: a snapshot of millions of locks is a few hundred MB.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Room reserved for a frame before its bytes arrive; a larger one grows as they do.
const FRAME_RESERVE_BYTES_MAX: usize = 1024 * 1024;
/// The most AppendEntries requests `--peer-pipeline` lets one peer connection have
/// unanswered.
pub const PIPELINE_DEPTH_MAX: usize = 64;
/// How long a replication stream's peer may stay silent while requests are unanswered
/// before the connection is dropped and the entries resent.
///
/// openraft gives `stream_append` its heartbeat interval (50 ms) as the deadline, but
/// says that is not a bound on the stream. On this VM all three nodes' disks stall
/// together now and then (three fdatasyncs of 96 ms at the same moment, seen with `perf
/// trace`); with 50 ms the leader dropped both followers' streams in the middle of the
/// stall, reconnected and sent the same entries again, and a 3-node run logged 132
/// such warnings and an 830 ms p99. Dropping the stream never makes the follower answer
/// sooner. A dead follower's connection fails on its own; a silent one (paused,
/// partitioned) is found after this long, and leadership does not depend on it: the
/// leader's lease comes from the heartbeats, which have their own connection and keep
/// openraft's deadline.
const STREAM_SILENCE_MAX: std::time::Duration = std::time::Duration::from_millis(1_000);
/// How long a commit-only AppendEntries may wait for the next request to carry its
/// commit instead (see `Pipeline::held`).
const COMMIT_HOLD: std::time::Duration = std::time::Duration::from_millis(5);

/// Runtime passes a replication stream lets go by between an answer and building
/// its next request (see `Pipeline::next`).
///
/// A round of replication costs about 300 µs of CPU over the three nodes whatever it
/// carries (wake-ups of the WAL threads and the runtimes, frames, syscalls), so the
/// entries per round set the cost per write. Building the next request the moment the
/// last one was answered sent the writes that arrived meanwhile one round later than
/// needed, in small rounds: 3 nodes on tmpfs, 64 clients, took 24–25k lock cycles/s
/// at 51–54 µs of server CPU each. Letting the ready tasks run first: 29–31k at 40–44
/// µs (2, 4 and 8 passes alike; each costs a few µs when nothing is waiting).
const BATCH_YIELDS: usize = 4;

/// What one node asks another.
#[derive(Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    /// A follower's linearizable read: the leader confirms it still leads (a quorum
    /// round) and answers the index the follower must have applied before reading.
    ReadIndex,
    /// A follower's client write, for the leader to stamp, propose and answer.
    Forward {
        origin: NodeId,
        #[serde(deserialize_with = "super::deserialize_shared")]
        op: Arc<super::Op>,
    },
    /// A membership or leadership change for the leader to run.
    Admin(crate::cluster::AdminOp),
    /// The leader's replication view (CLUSTER.STATUS and WAIT on a follower).
    Replication,
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Which entry kinds the node reads (`levels`). After the variants above, so that
    /// they keep their numbers: an older build cannot decode it and closes the connection.
    Level,
    /// Whether the asked node saw this node hold Raft state (`wipe_guard`). After the
    /// others, for the same reason.
    HeldState(NodeId),
    /// The first request on every connection a replication stream or vote opens: the
    /// sender's cluster id, if it has one (`cluster_id`), and its node id. Last, for the
    /// same reason.
    Hello {
        cluster: Option<super::cluster_id::Id>,
        from: NodeId,
    },
}

/// The answer; errors travel as text (the receiver reports them as network errors).
#[derive(Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    /// What applying the forwarded op answered, and the entry's log index.
    Forward(Result<(super::Applied, u64), String>),
    /// The read index, or why the node cannot give one.
    ReadIndex(Result<u64, String>),
    /// What the admin change answered, or the whole wire error.
    Admin(Result<String, String>),
    /// The view, or None if the asked node does not lead.
    Replication(Option<crate::cluster::ReplicationView>),
    AppendEntries(Result<AppendEntriesResponse<TypeConfig>, String>),
    Vote(Result<VoteResponse<TypeConfig>, String>),
    Snapshot(Result<SnapshotResponse<TypeConfig>, String>),
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
    /// The node's protocol level (`levels::PROTOCOL_LEVEL`).
    Level(u32),
    /// Whether the node saw the asked-about node hold Raft state, and whether it holds
    /// any log entry past the initial membership itself.
    HeldState {
        seen: bool,
        holds_state: bool,
    },
    /// The asked node's cluster id (None if it has none), or why the sender belongs to
    /// another cluster (the connection then closes).
    Hello(Result<Option<super::cluster_id::Id>, String>),
}

/// What one request sent on a connection of its own brought back (`ask_once`).
pub(crate) enum Asked {
    /// The node's answer.
    Answer(PeerResponse),
    /// It accepted the request and closed the connection without an answer: an older
    /// build that cannot decode the request, or a node stopping just then.
    Closed,
    /// It could not be reached or did not answer within the timeout: nothing learned.
    Unreachable,
}

/// Sends `request` to the node at `addr` on a connection of its own and reads one
/// answer, within `timeout` (the level exchange and `wipe_guard`'s question).
pub(crate) async fn ask_once(addr: &str, request: &PeerRequest, timeout: std::time::Duration) -> Asked {
    let asked = async {
        let Ok(mut stream) = TcpStream::connect(addr).await else { return Asked::Unreachable };
        let _ = stream.set_nodelay(true);
        if write_frame(&mut stream, request).await.is_err() {
            return Asked::Unreachable;
        }
        match read_frame::<PeerResponse>(&mut stream).await {
            Ok(response) => Asked::Answer(response),
            Err(e) if closed_by_peer(&e) => Asked::Closed,
            Err(_) => Asked::Unreachable,
        }
    };
    tokio::time::timeout(timeout, asked).await.unwrap_or(Asked::Unreachable)
}

/// Whether a read failed because the peer closed the connection (what a build does on
/// a request it cannot decode).
fn closed_by_peer(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset)
}

pub(crate) async fn write_frame<T: Serialize>(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &T,
) -> std::io::Result<()> {
    write_frame_with(stream, value, &mut Vec::new()).await
}

/// `write_frame` building the frame in `scratch`, which a sender that writes many frames
/// keeps between them: a leader's replication stream and a follower's answers then
/// allocate nothing per frame.
pub(crate) async fn write_frame_with<T: Serialize>(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &T,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    scratch.clear();
    scratch.extend_from_slice(&[0; 4]);
    super::encode_into(value, scratch).map_err(std::io::Error::other)?;
    let body_len = scratch.len() - 4;
    if body_len > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!("frame of {body_len} bytes exceeds {FRAME_BYTES_MAX}")));
    }
    scratch[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    let written = stream.write_all(scratch).await;
    if scratch.capacity() > SCRATCH_KEEP_BYTES_MAX {
        // A catch-up frame of large entries (up to 1,024 of them): not worth keeping
        // for the small frames that follow.
        *scratch = Vec::new();
    }
    written
}

/// The largest frame buffer a sender keeps between frames (`write_frame_with`).
const SCRATCH_KEEP_BYTES_MAX: usize = 1024 * 1024;

pub(crate) async fn read_frame<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit"),
        ));
    }
    // Grown as the bytes arrive, not reserved from the length alone: anyone who can
    // reach the peer port could otherwise make this node reserve 1 GiB per connection
    // with four bytes.
    let mut body = Vec::with_capacity(len.min(FRAME_RESERVE_BYTES_MAX));
    (&mut *stream).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection ended inside a frame"));
    }
    postcard::from_bytes(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Creates clients for peers.
pub struct Network {
    /// AppendEntries a peer connection may have unanswered (1: one at a time).
    pub pipeline_depth: usize,
    /// Test only: addresses that override the membership's (fault-injecting proxies).
    pub routes: Arc<std::collections::BTreeMap<NodeId, String>>,
    /// Where a peer's first vote or acknowledgement is written down (`wipe_guard`).
    pub guard: Arc<super::wipe_guard::WipeGuard>,
    /// This node's id, stated on every connection it opens.
    pub id: NodeId,
    /// The cluster's id, stated and checked on every connection (`cluster_id`).
    pub cluster: Arc<super::cluster_id::ClusterId>,
    /// This node's protocol level: below `HELLO_FROM_LEVEL` (a test standing in for an
    /// older build) connections open without the greeting, as such a build's do.
    pub level: u32,
    /// What the peer clients remember about greetings (shared: openraft makes new
    /// clients for every election).
    pub greetings: Arc<Greetings>,
}

/// How long a peer that closed on the greeting and answered a level below it is
/// connected to without one before it is greeted (and asked its level) again: during
/// a rolling upgrade, one probe per peer per this, not one per connection.
const OLDER_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// What a node's peer clients remember about greetings across connections and clients.
/// Keyed by the members' addresses, so bounded by the membership (and the few members
/// removed while this process ran).
#[derive(Default)]
pub struct Greetings {
    /// Addresses that closed on the greeting and answered a level below it, and when.
    older: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Greetings {
    fn known_older(&self, addr: &str) -> bool {
        let older = self.older.lock().expect("not poisoned");
        older.get(addr).is_some_and(|at| at.elapsed() < OLDER_RECHECK)
    }

    fn note_older(&self, addr: &str) {
        self.older.lock().expect("not poisoned").insert(addr.to_string(), std::time::Instant::now());
    }
}

/// A client for one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
    pipeline_depth: usize,
    guard: Arc<super::wipe_guard::WipeGuard>,
    id: NodeId,
    cluster: Arc<super::cluster_id::ClusterId>,
    level: u32,
    greetings: Arc<Greetings>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let addr = self.routes.get(&target).unwrap_or(&node.addr).clone();
        PeerClient {
            target,
            addr,
            stream: None,
            pipeline_depth: self.pipeline_depth,
            guard: Arc::clone(&self.guard),
            id: self.id,
            cluster: Arc::clone(&self.cluster),
            level: self.level,
            greetings: Arc::clone(&self.greetings),
        }
    }
}

enum Failure {
    Unreachable(String),
    Network(String),
}

impl PeerClient {
    /// Writes down that the peer holds Raft state (`wipe_guard`), before its answer is
    /// relied on; a failure to write fails the answer.
    fn note_target(&self) -> Result<(), Failure> {
        self.guard.note(self.target).map_err(Failure::Network)
    }

    async fn open(&self) -> Result<TcpStream, Failure> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| Failure::Unreachable(format!("node {} at {}: {e}", self.target, self.addr)))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A new connection to the peer, once both sides have stated their cluster ids and
    /// found them equal (or one side has none: `cluster_id`).
    async fn connect(&mut self) -> Result<TcpStream, Failure> {
        if self.level < super::levels::HELLO_FROM_LEVEL || self.greetings.known_older(&self.addr) {
            return self.open().await;
        }
        let mut stream = self.open().await?;
        let hello = PeerRequest::Hello { cluster: self.cluster.get(), from: self.id };
        write_frame(&mut stream, &hello).await.map_err(|e| Failure::Network(e.to_string()))?;
        match read_frame::<PeerResponse>(&mut stream).await {
            // The opening side never takes the peer's id (`cluster_id`).
            Ok(PeerResponse::Hello(Ok(theirs))) => match self.cluster.check(theirs, false) {
                Ok(_) => Ok(stream),
                Err(refused) => Err(self.refused(refused.to_string())),
            },
            // The peer could not write down our id: nothing is compared yet.
            Ok(PeerResponse::Hello(Err(e))) => Err(Failure::Network(format!("node {}: {e}", self.target))),
            Ok(_) => Err(Failure::Network(format!("node {} answered another request", self.target))),
            Err(e) if closed_by_peer(&e) => {
                // A build from before the greeting closes on it; so does a node of this
                // build that stopped just then: the level tells them apart.
                match super::levels::closed_on(&self.addr, super::levels::HELLO_FROM_LEVEL).await {
                    super::levels::Closed::Stopped => {
                        Err(Failure::Network(format!("node {} closed the connection", self.target)))
                    }
                    super::levels::Closed::Older => {
                        self.greetings.note_older(&self.addr);
                        self.open().await
                    }
                    super::levels::Closed::Unreachable => {
                        Err(Failure::Unreachable(format!("node {} at {}: no answer", self.target, self.addr)))
                    }
                }
            }
            Err(e) => Err(Failure::Network(e.to_string())),
        }
    }

    /// The peer belongs to another cluster: said in the log (throttled per peer:
    /// openraft retries every heartbeat), and the peer counts as unreachable (openraft
    /// backs off instead of retrying at once).
    fn refused(&mut self, why: String) -> Failure {
        let peer = format!("node {} at {}", self.target, self.addr);
        if super::cluster_id::refusal_due(&peer) {
            tracing::error!("{peer}: {why}");
        }
        Failure::Unreachable(format!("{peer}: {why}"))
    }

    /// One request and its response, within `ttl`. Any failure drops the connection.
    async fn call(&mut self, request: PeerRequest, ttl: std::time::Duration) -> Result<PeerResponse, Failure> {
        let exchange = async {
            if self.stream.is_none() {
                self.stream = Some(self.connect().await?);
            }
            let stream = self.stream.as_mut().expect("connected above");
            write_frame(stream, &request).await.map_err(|e| Failure::Network(e.to_string()))?;
            read_frame::<PeerResponse>(stream).await.map_err(|e| Failure::Network(e.to_string()))
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Network(format!("node {} did not answer within {ttl:?}", self.target))),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

/// Whether an AppendEntries answer says the peer holds the entries: what openraft
/// counts as its acknowledgement, and what `wipe_guard` writes down first.
fn acknowledges(response: &AppendEntriesResponse<TypeConfig>) -> bool {
    matches!(response, AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
}

fn rpc_error(failure: Failure) -> RPCError<TypeConfig> {
    match failure {
        Failure::Unreachable(text) => RPCError::Unreachable(Unreachable::from_string(text)),
        Failure::Network(text) => RPCError::Network(NetworkError::from_string(text)),
    }
}

fn remote(text: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!("peer error: {text}")))
}

fn unexpected() -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string("peer answered another request".to_string()))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::AppendEntries(rpc), option.hard_ttl()).await.map_err(rpc_error)? {
            PeerResponse::AppendEntries(result) => {
                let response = result.map_err(remote)?;
                if acknowledges(&response) {
                    self.note_target().map_err(rpc_error)?;
                }
                Ok(response)
            }
            _ => Err(unexpected()),
        }
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let ttl = option.hard_ttl().max(STREAM_SILENCE_MAX);
            let stream = match self.stream.take() {
                Some(stream) => stream,
                // Bounded: a peer whose packets vanish would otherwise hold this stream
                // through TCP's connect retries (minutes) after the network heals.
                None => match tokio::time::timeout(ttl, self.connect()).await {
                    Ok(connected) => connected.map_err(rpc_error)?,
                    Err(_) => {
                        let text = format!("node {} at {}: no connection within {ttl:?}", self.target, self.addr);
                        return Err(rpc_error(Failure::Unreachable(text)));
                    }
                },
            };
            let pipeline = Pipeline {
                client: self,
                stream: Some(stream),
                input,
                input_done: false,
                unanswered: std::collections::VecDeque::new(),
                received: bytes::BytesMut::new(),
                sent: Vec::new(),
                matched: None,
                held: None,
            };
            let responses = futures_util::stream::unfold(Some(pipeline), move |pipeline| async move {
                let mut pipeline = pipeline?;
                match pipeline.next(ttl).await {
                    None => {
                        // Every request answered: the connection is clean, keep it.
                        pipeline.client.stream = pipeline.stream.take();
                        None
                    }
                    Some(Ok((result, go_on))) => Some((Ok(result), go_on.then_some(pipeline))),
                    Some(Err(failure)) => Some((Err(rpc_error(failure)), None)),
                }
            });
            Ok(Box::pin(responses) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await.map_err(rpc_error)? {
            PeerResponse::Vote(result) => {
                let response = result.map_err(remote)?;
                if response.vote_granted {
                    // Written down before the grant counts (`wipe_guard`).
                    self.note_target().map_err(rpc_error)?;
                }
                Ok(response)
            }
            _ => Err(unexpected()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let sent_vote = vote;
        let request = PeerRequest::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        // A snapshot can be large: allow it ten times the usual bound.
        match self.call(request, option.hard_ttl() * 10).await.map_err(|f| StreamingError::from(rpc_error(f)))? {
            PeerResponse::Snapshot(result) => {
                let response = result.map_err(|e| StreamingError::from(remote(e)))?;
                // Installed, not refused for a higher vote (which openraft answers at
                // once, possibly before that vote is on disk).
                if response.vote == sent_vote {
                    self.note_target().map_err(|f| StreamingError::from(rpc_error(f)))?;
                }
                Ok(response)
            }
            _ => Err(StreamingError::from(unexpected())),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::TransferLeader(req), option.hard_ttl()).await.map_err(rpc_error)? {
            PeerResponse::TransferLeader(result) => result.map_err(remote),
            _ => Err(unexpected()),
        }
    }
}

/// One pipelined AppendEntries session on a peer connection.
struct Pipeline<'s, S> {
    client: &'s mut PeerClient,
    stream: Option<TcpStream>,
    input: S,
    input_done: bool,
    /// `(prev, last)` log ids of each request sent and not yet answered, in order.
    unanswered: std::collections::VecDeque<(Option<super::LogId>, Option<super::LogId>)>,
    /// Bytes read from the peer and not yet parsed into a frame.
    received: bytes::BytesMut,
    /// The frame being sent, kept between requests (see `write_frame_with`).
    sent: Vec<u8>,
    /// The last log id the peer confirmed it holds in this session (`Some(None)`: it
    /// confirmed an empty log); `None` until a request succeeds.
    matched: Option<Option<super::LogId>>,
    /// A request that only tells the peer a newer commit index, held back until
    /// `COMMIT_HOLD` passes or the next request arrives.
    ///
    /// openraft sends one as soon as the commit advances and no new entry is waiting,
    /// so with light load every batch cost a second round trip to each follower: the
    /// entries, then their commit. The next request carries a commit at least as new
    /// (openraft reads it when it builds the request), so the held one is never sent
    /// and never answered on its own: the peer's answer to the next request covers it
    /// (openraft drains every request up to the log id answered). It must not be
    /// answered here: openraft counts an answer as the peer's acknowledgement at the
    /// time it built the request, for its leader lease and to confirm linearizable
    /// reads, and the peer never saw this one (a leader paused between the peer's last
    /// answer and this request would have renewed its lease on nothing). A follower
    /// learns commits up to `COMMIT_HOLD` later when idle; its linearizable reads are
    /// not delayed, since the leader confirms them with a heartbeat round that carries
    /// the commit.
    held: Option<(AppendEntriesRequest<TypeConfig>, tokio::time::Instant)>,
}

type Answer = (StreamAppendResult<TypeConfig>, bool);

impl<S> Pipeline<'_, S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    /// Sends requests while there are some and room in the pipeline, until the oldest
    /// unanswered one is answered: its result and whether to go on. None when the
    /// input has ended and everything is answered. A peer silent for `ttl` while
    /// requests are unanswered is a failure.
    async fn next(&mut self, ttl: std::time::Duration) -> Option<Result<Answer, Failure>> {
        use futures_util::StreamExt;
        if self.unanswered.is_empty() && self.held.is_none() && !self.input_done {
            // Before asking openraft for the next request, let the runtime run what is
            // ready and poll the sockets (a yielded task resumes only after a
            // non-blocking poll of the I/O driver), so that the client writes that
            // arrived during the last round are in the log when the request is built.
            for _ in 0..BATCH_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame.and_then(|response| self.answer(response)));
            }
            if self.input_done && self.unanswered.is_empty() && self.held.is_none() {
                return None;
            }
            let can_send = !self.input_done && self.unanswered.len() < self.client.pipeline_depth;
            let waiting = !self.unanswered.is_empty();
            let hold_until = self.held.as_ref().map(|(_, until)| *until);
            let stream = self.stream.as_mut().expect("present until the session ends");
            tokio::select! {
                request = self.input.next(), if can_send => match request {
                    None => {
                        self.input_done = true;
                        if let Some((held, _)) = self.held.take() {
                            if let Err(failure) = self.send(held, ttl).await {
                                return Some(Err(failure));
                            }
                        }
                    }
                    Some(request) => {
                        // A request held before this one is replaced by it: `request`
                        // carries the held commit or a newer one, and is itself held by
                        // the same deadline if it too carries nothing else. The replaced
                        // one gets no answer of its own (see `held`).
                        let replaced = self.held.take();
                        if request.entries.is_empty() && self.matched == Some(request.prev_log_id) {
                            let until = replaced.as_ref().map_or_else(|| tokio::time::Instant::now() + COMMIT_HOLD, |(_, until)| *until);
                            self.held = Some((request, until));
                        } else if let Err(failure) = self.send(request, ttl).await {
                            return Some(Err(failure));
                        }
                    }
                },
                _ = tokio::time::sleep_until(hold_until.unwrap_or_else(tokio::time::Instant::now)), if hold_until.is_some() => {
                    let (held, _) = self.held.take().expect("a request is held");
                    if let Err(failure) = self.send(held, ttl).await {
                        return Some(Err(failure));
                    }
                }
                // read_buf is cancel-safe: bytes read are in `received` either way.
                read = stream.read_buf(&mut self.received), if waiting => match read {
                    Ok(0) => return Some(Err(Failure::Network(format!("node {} closed the connection", self.client.target)))),
                    Ok(_) => {}
                    Err(e) => return Some(Err(Failure::Network(e.to_string()))),
                },
                _ = tokio::time::sleep(ttl), if waiting => {
                    return Some(Err(Failure::Network(format!("node {} did not answer within {ttl:?}", self.client.target))));
                }
            }
        }
    }

    /// Writes one request to the peer and expects its answer. A peer that takes no
    /// bytes for `ttl` (its receive window full, or the network gone quiet) fails the
    /// session, as one that does not answer does.
    async fn send(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        ttl: std::time::Duration,
    ) -> Result<(), Failure> {
        let prev = request.prev_log_id;
        let last = request.entries.last().map(|e| e.log_id).or(prev);
        let stream = self.stream.as_mut().expect("present until the session ends");
        let request = PeerRequest::AppendEntries(request);
        let write = write_frame_with(stream, &request, &mut self.sent);
        match tokio::time::timeout(ttl, write).await {
            Ok(written) => written.map_err(|e| Failure::Network(e.to_string()))?,
            Err(_) => {
                return Err(Failure::Network(format!("node {} took no bytes within {ttl:?}", self.client.target)))
            }
        }
        self.unanswered.push_back((prev, last));
        Ok(())
    }

    /// A whole response frame from `received`, if one has arrived.
    fn take_frame(&mut self) -> Option<Result<PeerResponse, Failure>> {
        if self.received.len() < 4 {
            return None;
        }
        let len = u32::from_le_bytes(self.received[..4].try_into().expect("4 bytes")) as usize;
        if len > FRAME_BYTES_MAX {
            return Some(Err(Failure::Network(format!("frame of {len} bytes is over the limit"))));
        }
        if self.received.len() < 4 + len {
            self.received.reserve((4 + len - self.received.len()).min(FRAME_RESERVE_BYTES_MAX));
            return None;
        }
        let frame = self.received.split_to(4 + len);
        Some(postcard::from_bytes(&frame[4..]).map_err(|e| Failure::Network(e.to_string())))
    }

    /// Pairs a response with the oldest unanswered request.
    fn answer(&mut self, response: PeerResponse) -> Result<Answer, Failure> {
        let Some((prev, last)) = self.unanswered.pop_front() else {
            return Err(Failure::Network("an answer to no request".into()));
        };
        match response {
            PeerResponse::AppendEntries(Ok(AppendEntriesResponse::Conflict)) if prev.is_none() => {
                // Nothing precedes the log's first entry to conflict with; openraft
                // would panic on it. No follower sends this.
                Err(Failure::Network("peer answered Conflict to a request starting the log".into()))
            }
            PeerResponse::AppendEntries(Ok(response)) => {
                // A partial success ends the session: openraft resends the rest.
                let partial = matches!(&response, AppendEntriesResponse::PartialSuccess(done) if *done != last);
                if acknowledges(&response) {
                    // Written down before openraft counts the acknowledgement (`wipe_guard`).
                    self.client.note_target()?;
                }
                let result = response.into_stream_result(prev, last);
                let go_on = result.is_ok() && !partial;
                if let (true, Ok(matched)) = (go_on, &result) {
                    self.matched = Some(*matched);
                }
                Ok((result, go_on))
            }
            PeerResponse::AppendEntries(Err(text)) => Err(Failure::Network(format!("peer error: {text}"))),
            _ => Err(Failure::Network("peer answered another request".into())),
        }
    }
}

/// The node, once started, for forwarded writes.
pub type NodeSlot = Arc<std::sync::OnceLock<Arc<crate::node::Node>>>;

/// A peer's pipelined AppendEntries: requests go into openraft's `stream_append`; a
/// task writes its answers back, in order, on the connection's write half.
struct AppendSession {
    requests: tokio::sync::mpsc::Sender<AppendEntriesRequest<TypeConfig>>,
    writer: tokio::task::JoinHandle<Option<tokio::net::tcp::OwnedWriteHalf>>,
}

impl AppendSession {
    fn start(raft: &Raft, mut out: tokio::net::tcp::OwnedWriteHalf) -> AppendSession {
        use futures_util::StreamExt;
        let (requests, rx) = tokio::sync::mpsc::channel(PIPELINE_DEPTH_MAX);
        let input = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let answers = raft.stream_append(input);
        let writer = tokio::spawn(async move {
            let mut answers = std::pin::pin!(answers);
            let mut scratch = Vec::new();
            while let Some(answer) = answers.next().await {
                let response = PeerResponse::AppendEntries(match answer {
                    Ok(result) => Ok(AppendEntriesResponse::from(result)),
                    Err(fatal) => Err(fatal.to_string()),
                });
                write_frame_with(&mut out, &response, &mut scratch).await.ok()?;
            }
            Some(out)
        });
        AppendSession { requests, writer }
    }

    /// Ends the input and waits for every answer to be written; the write half back,
    /// or None if writing failed.
    async fn finish(self) -> Option<tokio::net::tcp::OwnedWriteHalf> {
        drop(self.requests);
        self.writer.await.ok().flatten()
    }
}

/// The pause after a failed accept (of a peer or a client connection).
pub const ACCEPT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Serves peers' RPCs on `listener` forever.
///
/// `own_level` is what this node answers a `PeerRequest::Level` with; at 0 it stands in
/// for a build from before that request (tests), and closes the connection as such a
/// build does on a request it cannot decode.
pub async fn serve_peers(
    listener: TcpListener,
    raft: Arc<Raft>,
    node: NodeSlot,
    own_level: u32,
    guard: Arc<super::wipe_guard::WipeGuard>,
    cluster: Arc<super::cluster_id::ClusterId>,
) {
    loop {
        let (stream, peer_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (EMFILE) or an error pending on one new socket:
                // retried after a pause rather than at once, which would spin.
                tracing::warn!(error = %e, "accepting a peer connection failed; retrying in 50 ms");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let raft = Arc::clone(&raft);
        let node = Arc::clone(&node);
        let guard = Arc::clone(&guard);
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            // Buffered: a frame's length and body come in with one read instead of two.
            let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
            // The write half is ours unless an append session's task holds it.
            let mut writer = Some(writer);
            let mut appends: Option<AppendSession> = None;
            // Whether the connection opened with a greeting whose cluster id passed.
            let mut greeted = false;
            while let Ok(request) = read_frame::<PeerRequest>(&mut reader).await {
                let takes_part = matches!(
                    request,
                    PeerRequest::AppendEntries(_)
                        | PeerRequest::Vote(_)
                        | PeerRequest::Snapshot { .. }
                        | PeerRequest::TransferLeader(_)
                );
                if takes_part && !guard.cleared() {
                    // Not yet known not to be a wiped voter (`wipe_guard`): no vote, no
                    // append. The sender retries on a new connection.
                    return;
                }
                if takes_part && !greeted && greeting_required(&cluster, &node) {
                    // Every member greets at this level: only a stranger (or a proxy
                    // that reconnected to one) would not (`cluster_id`).
                    super::cluster_id::log_refusal(
                        &format!("a peer at {peer_addr}"),
                        "it sent a Raft request without the cluster's id first",
                    );
                    return;
                }
                // The sender of a vote request, an append or a snapshot holds state (a
                // vote for itself, or a committed vote and a log): written down before
                // anything of it is answered, so that a leader that never answers
                // anyone is marked too (`wipe_guard`).
                let sender = match &request {
                    PeerRequest::AppendEntries(rpc) => Some(rpc.vote.leader_id().node_id()),
                    PeerRequest::Vote(rpc) => Some(rpc.vote.leader_id().node_id()),
                    PeerRequest::Snapshot { vote, .. } => Some(vote.leader_id().node_id()),
                    _ => None,
                };
                if let Some(sender) = sender {
                    if let Err(e) = guard.note(*sender) {
                        tracing::error!("{e}");
                        return;
                    }
                }
                let request = match request {
                    // AppendEntries go to openraft's pipelined stream_append, so the next
                    // ones reach the log store before the previous flush completes and
                    // share its fdatasync (group commit).
                    PeerRequest::AppendEntries(rpc) => {
                        let session = match appends.as_mut() {
                            Some(session) => session,
                            None => appends.insert(AppendSession::start(&raft, writer.take().expect("held here"))),
                        };
                        if session.requests.send(rpc).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    other => other,
                };
                // Any other request: end the append session first, so answers stay in
                // the order of the requests.
                if let Some(session) = appends.take() {
                    match session.finish().await {
                        Some(returned) => writer = Some(returned),
                        None => return,
                    }
                }
                let stream = writer.as_mut().expect("held here");
                let response = match request {
                    PeerRequest::Forward { origin, op } => PeerResponse::Forward(match node.get() {
                        Some(node) => node.propose_local(op, origin).await.map_err(|e| e.to_string()),
                        None => Err("TRYAGAIN the leader is still starting".to_string()),
                    }),
                    PeerRequest::ReadIndex => PeerResponse::ReadIndex(match node.get() {
                        Some(node) => node.leader_read_index().await.map_err(|e| e.to_string()),
                        None => Err("TRYAGAIN the leader is still starting".to_string()),
                    }),
                    PeerRequest::Admin(op) => PeerResponse::Admin(match node.get() {
                        Some(node) => node.admin_local(op).await.map_err(|e| e.to_string()),
                        None => Err("TRYAGAIN the leader is still starting".to_string()),
                    }),
                    PeerRequest::Replication => {
                        PeerResponse::Replication(node.get().filter(|n| n.raft.is_leader()).map(|n| n.local_view()))
                    }
                    PeerRequest::AppendEntries(_) => unreachable!("handled above"),
                    PeerRequest::Vote(rpc) => PeerResponse::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
                    PeerRequest::Snapshot { vote, meta, data } => PeerResponse::Snapshot(
                        raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data })
                            .await
                            .map_err(|e| e.to_string()),
                    ),
                    PeerRequest::TransferLeader(req) => {
                        PeerResponse::TransferLeader(raft.handle_transfer_leader(req).await.map_err(|e| e.to_string()))
                    }
                    PeerRequest::Level if own_level == 0 => return,
                    PeerRequest::Level => PeerResponse::Level(own_level),
                    // Below the level that knows the question, as such a build does.
                    PeerRequest::HeldState(_) if own_level < super::levels::HELD_STATE_FROM_LEVEL => return,
                    PeerRequest::HeldState(peer) => {
                        // Nothing past the initial membership (index 0): no leader ever
                        // appended here, so nothing was committed with this node. Not
                        // the term: a first node campaigning alone raises it every
                        // election timeout, and the others must still count it.
                        let holds_state = last_log_index(&raft).is_some_and(|index| index > 0);
                        PeerResponse::HeldState { seen: guard.saw(peer), holds_state }
                    }
                    PeerRequest::Hello { .. } if own_level < super::levels::HELLO_FROM_LEVEL => return,
                    PeerRequest::Hello { cluster: theirs, from } => {
                        match cluster.check(theirs, holds_no_state(&raft)) {
                            Ok(ours) => {
                                greeted = true;
                                PeerResponse::Hello(Ok(ours))
                            }
                            Err(super::cluster_id::Refused::Mismatch(why)) => {
                                super::cluster_id::log_refusal(&format!("node {from} at {peer_addr}"), &why);
                                // Our id, so that the sender says in its own words why, then
                                // closed: nothing else is taken from another cluster's node.
                                let _ = write_frame(stream, &PeerResponse::Hello(Ok(cluster.get()))).await;
                                return;
                            }
                            Err(super::cluster_id::Refused::Unwritten(why)) => {
                                tracing::error!("{why}");
                                let _ = write_frame(stream, &PeerResponse::Hello(Err(why))).await;
                                return;
                            }
                        }
                    }
                };
                if write_frame(stream, &response).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Whether this node holds no Raft state at all (no log, not even the initial
/// membership): it belongs to no cluster yet, and may take the id of the first peer
/// that connects to it (`cluster_id`).
fn holds_no_state(raft: &Raft) -> bool {
    last_log_index(raft).is_none()
}

/// The index of the last entry in this node's log (None: no log at all).
fn last_log_index(raft: &Raft) -> Option<u64> {
    openraft::async_runtime::WatchReceiver::borrow_watched(&raft.metrics()).last_log_index
}

/// Whether Raft requests must come on a greeted connection: this node has a cluster id
/// and every member is at the level that greets (as this node last heard).
fn greeting_required(cluster: &super::cluster_id::ClusterId, node: &NodeSlot) -> bool {
    cluster.get().is_some() && node.get().is_some_and(|node| node.levels.cluster() >= super::levels::HELLO_FROM_LEVEL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use openraft::entry::RaftEntry;
    use std::time::Duration;

    fn log_id(index: u64) -> super::super::LogId {
        openraft::testing::log_id::<TypeConfig>(1, 1, index)
    }

    fn request(prev: Option<u64>, entries: &[u64]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: prev.map(log_id),
            entries: entries.iter().map(|&i| super::super::Entry::new_blank(log_id(i))).collect(),
            leader_commit: prev.map(log_id),
        }
    }

    /// A client of the peer at `addr`.
    fn peer(addr: String) -> PeerClient {
        PeerClient {
            target: 2,
            addr,
            stream: None,
            pipeline_depth: 1,
            guard: Arc::new(crate::raft::wipe_guard::WipeGuard::in_memory()),
            id: 1,
            cluster: Arc::new(crate::raft::cluster_id::ClusterId::in_memory(None)),
            level: crate::raft::levels::PROTOCOL_LEVEL,
            greetings: Default::default(),
        }
    }

    /// Accepts one connection on `listener` and answers its greeting as a node with no
    /// cluster id does.
    async fn accept_greeted(listener: &TcpListener) -> TcpStream {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let hello: PeerRequest = read_frame(&mut stream).await.expect("a greeting");
        assert!(matches!(hello, PeerRequest::Hello { cluster: None, from: 1 }), "the first request is the greeting");
        write_frame(&mut stream, &PeerResponse::Hello(Ok(None))).await.expect("answer the greeting");
        stream
    }

    /// A pipelined AppendEntries session of `client` (openraft's `hard_ttl` of
    /// `hard_ttl`), and the sender that feeds it requests.
    async fn pipeline(
        client: &mut PeerClient,
        hard_ttl: Duration,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
        BoxStream<'_, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
    ) {
        let (input, requests) = tokio::sync::mpsc::unbounded_channel();
        let requests = futures_util::stream::unfold(requests, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let answers = client.stream_append(Box::pin(requests), RPCOption::new(hard_ttl)).await.expect("stream");
        (input, answers)
    }

    #[tokio::test]
    async fn a_conflict_before_the_first_entry_is_an_error_not_a_panic() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let follower = tokio::spawn(async move {
            let mut stream = accept_greeted(&listener).await;
            let _: PeerRequest = read_frame(&mut stream).await.expect("a request");
            let conflict = PeerResponse::AppendEntries(Ok(AppendEntriesResponse::Conflict));
            write_frame(&mut stream, &conflict).await.expect("answer");
            stream
        });
        let mut client = peer(addr);
        let (input, mut answers) = pipeline(&mut client, Duration::from_millis(200)).await;
        input.send(request(None, &[1])).expect("queued");
        let answer = answers.next().await.expect("an answer");
        let Err(e) = answer else { panic!("not an error: {answer:?}") };
        assert!(e.to_string().contains("Conflict to a request starting the log"), "{e}");
        drop(follower.await.expect("follower"));
    }

    /// A peer that answers the greeting with `answer`, then counts the requests that
    /// follow on that connection until it closes.
    async fn greeting_peer(answer: PeerResponse) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let _: PeerRequest = read_frame(&mut stream).await.expect("a greeting");
            write_frame(&mut stream, &answer).await.expect("answer");
            let mut after = 0;
            while read_frame::<PeerRequest>(&mut stream).await.is_ok() {
                after += 1;
            }
            after
        });
        (addr, peer)
    }

    #[tokio::test]
    async fn a_peer_of_another_cluster_is_unreachable_and_sent_nothing() {
        // It answers with another id than ours (and closes).
        {
            let answer = PeerResponse::Hello(Ok(Some(8)));
            let (addr, far) = greeting_peer(answer).await;
            let mut client = peer(addr);
            client.cluster = Arc::new(crate::raft::cluster_id::ClusterId::in_memory(Some(7)));
            let vote = VoteRequest::new(Vote::new(2, 1), None);
            let Err(e) = client.vote(vote, RPCOption::new(Duration::from_secs(5))).await else {
                panic!("a vote went to another cluster")
            };
            assert!(matches!(e, RPCError::Unreachable(_)), "{e}");
            let text = e.to_string();
            let (ours, theirs) = (crate::raft::cluster_id::show(7), crate::raft::cluster_id::show(8));
            assert!(text.contains(&format!("its id {theirs}, this node's {ours}")), "{text}");
            let peer = format!("node 2 at {}", client.addr);
            assert!(!crate::raft::cluster_id::refusal_due(&peer), "said in the log, and not again at once");
            drop(client);
            assert_eq!(far.await.expect("peer"), 0, "no request after the greeting");
        }
    }

    #[tokio::test]
    async fn the_opening_side_never_takes_its_peers_id() {
        let (addr, far) = greeting_peer(PeerResponse::Hello(Ok(Some(9)))).await;
        let mut client = peer(addr);
        let stream = client.connect().await.map_err(|_| "connect").expect("greeted");
        assert_eq!(client.cluster.get(), None, "a leader without an id leads a cluster formed before ids");
        drop(stream);
        assert_eq!(far.await.expect("peer"), 0);
    }

    #[tokio::test]
    async fn a_peer_that_closes_on_the_greeting_and_answers_no_level_is_an_older_build() {
        // Closes on the greeting, and on the level probe that follows; then takes a
        // connection without a greeting.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let far = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let _: PeerRequest = read_frame(&mut stream).await.expect("a request it cannot read");
            }
            let (mut stream, _) = listener.accept().await.expect("accept");
            let first: PeerRequest = read_frame(&mut stream).await.expect("a request");
            matches!(first, PeerRequest::Vote(_))
        });
        let mut client = peer(addr);
        client.cluster = Arc::new(crate::raft::cluster_id::ClusterId::in_memory(Some(7)));
        let vote = VoteRequest::new(Vote::new(2, 1), None);
        // The older peer closes on the vote too in this stand-in; what matters is
        // what it was sent.
        let _ = client.vote(vote, RPCOption::new(Duration::from_secs(5))).await;
        assert!(far.await.expect("peer"), "the vote went without a greeting");
    }

    /// Writes `request` on `stream` and reads one answer: None if the node closed the
    /// connection instead.
    async fn ask(stream: &mut TcpStream, request: &PeerRequest) -> Option<PeerResponse> {
        write_frame(stream, request).await.expect("sent");
        read_frame::<PeerResponse>(stream).await.ok()
    }

    /// A running single node (cluster level 4, an id drawn): a Raft request on a
    /// connection that did not open with the cluster's id is refused (closed), one
    /// after a greeting with the same id is answered, and a greeting with another id
    /// is answered with the node's own id and closed.
    #[tokio::test]
    async fn raft_requests_need_a_greeting_once_every_member_greets() {
        use clap::Parser;
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let args = ["fencelock", "--port", "0", "--peer-port", "0", "--data-dir", data.to_str().expect("utf-8")];
        let settings = crate::config::Settings::resolve(crate::config::Flags::parse_from(args)).expect("settings");
        let launched = crate::launch::launch(&settings).await.expect("launched");
        let node = Arc::clone(&launched.node);
        let id = node.cluster_id.get().expect("a single node draws its cluster's id");
        let addr = {
            let metrics = openraft::async_runtime::WatchReceiver::borrow_watched(&node.raft.metrics()).clone();
            metrics.membership_config.membership().get_node(&1).expect("node 1").addr.clone()
        };
        for _ in 0..100 {
            if node.levels.cluster() >= crate::raft::levels::HELLO_FROM_LEVEL {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(node.levels.cluster(), crate::raft::levels::PROTOCOL_LEVEL, "a node alone is at its level");
        let vote = || PeerRequest::Vote(VoteRequest::new(Vote::new(1, 9), None));

        let mut ungreeted = TcpStream::connect(&addr).await.expect("connect");
        assert!(ask(&mut ungreeted, &vote()).await.is_none(), "a vote without a greeting was answered");

        let mut greeted = TcpStream::connect(&addr).await.expect("connect");
        let answer = ask(&mut greeted, &PeerRequest::Hello { cluster: Some(id), from: 9 }).await;
        assert!(matches!(answer, Some(PeerResponse::Hello(Ok(Some(theirs)))) if theirs == id), "greeted");
        assert!(matches!(ask(&mut greeted, &vote()).await, Some(PeerResponse::Vote(_))), "a greeted vote is answered");

        let mut stranger = TcpStream::connect(&addr).await.expect("connect");
        let answer = ask(&mut stranger, &PeerRequest::Hello { cluster: Some(id ^ 1), from: 9 }).await;
        assert!(matches!(answer, Some(PeerResponse::Hello(Ok(Some(theirs)))) if theirs == id), "told the node's id");
        assert!(ask(&mut stranger, &vote()).await.is_none(), "a stranger's vote was answered");
        assert_eq!(node.cluster_id.get(), Some(id), "the node keeps its id");
        launched.shut_down().await;
    }

    #[tokio::test]
    async fn a_peer_that_takes_no_bytes_fails_the_session() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Accepts and never reads: the request below is larger than the socket buffers.
        let follower = tokio::spawn(async move { accept_greeted(&listener).await });
        let mut client = peer(addr);
        let (input, mut answers) = pipeline(&mut client, Duration::from_millis(200)).await;
        let entries: Vec<u64> = (1..=1_000_000).collect();
        input.send(request(None, &entries)).expect("queued");
        let answer =
            tokio::time::timeout(Duration::from_secs(20), answers.next()).await.expect("within the silence bound");
        let Some(Err(e)) = answer else { panic!("not an error: {answer:?}") };
        assert!(e.to_string().contains("took no bytes within"), "{e}");
        drop(follower.await.expect("follower"));
    }

    #[tokio::test]
    async fn a_frame_longer_than_its_connection_is_an_error() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // Says 512 MiB, sends 3 bytes, closes.
            far.write_all(&(512u32 << 20).to_le_bytes()).await.expect("length");
            far.write_all(b"abc").await.expect("bytes");
        });
        let read = read_frame::<PeerRequest>(&mut near).await;
        writer.await.expect("writer");
        let Err(e) = read else { panic!("read a frame") };
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        let (mut near, mut far) = tokio::io::duplex(64);
        far.write_all(&(FRAME_BYTES_MAX as u32 + 1).to_le_bytes()).await.expect("length");
        let Err(over) = read_frame::<PeerRequest>(&mut near).await else { panic!("read a frame over the limit") };
        assert!(over.to_string().contains("over the limit"), "{over}");
    }

    /// openraft takes an answer as the follower's acknowledgement at the time it built
    /// the request answered (its lease and read-index confirmation count on that), so
    /// a held commit-only request that a newer one replaces must not be answered here:
    /// the follower never saw it. Its answer comes with the newer request's.
    #[tokio::test]
    async fn a_replaced_commit_only_request_is_answered_only_by_the_follower() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let follower = tokio::spawn(async move {
            let mut stream = accept_greeted(&listener).await;
            let mut scratch = Vec::new();
            let success = PeerResponse::AppendEntries(Ok(AppendEntriesResponse::Success));
            // The first request (entry 1) is answered at once ...
            let _: PeerRequest = read_frame(&mut stream).await.expect("first request");
            write_frame_with(&mut stream, &success, &mut scratch).await.expect("answer");
            // ... the next one (entry 2) only when the test says so.
            let second: PeerRequest = read_frame(&mut stream).await.expect("second request");
            let PeerRequest::AppendEntries(second) = second else { panic!("not an AppendEntries") };
            assert_eq!(second.entries.len(), 1, "the held commit-only request is not sent");
            released.await.expect("released");
            write_frame_with(&mut stream, &success, &mut scratch).await.expect("answer");
            stream
        });
        let mut client = peer(addr);
        let (input, mut answers) = pipeline(&mut client, Duration::from_secs(5)).await;

        input.send(request(None, &[1])).expect("queued");
        let first = answers.next().await.expect("an answer").expect("no error");
        assert_eq!(first, Ok(Some(log_id(1))));
        // A commit-only request (held), then one with an entry, which replaces it.
        input.send(request(Some(1), &[])).expect("queued");
        input.send(request(Some(1), &[2])).expect("queued");
        let early = tokio::time::timeout(Duration::from_millis(200), answers.next()).await;
        assert!(early.is_err(), "an answer came before the follower answered anything: {early:?}");
        release.send(()).expect("follower waiting");
        let second = answers.next().await.expect("an answer").expect("no error");
        assert_eq!(second, Ok(Some(log_id(2))), "the follower's answer covers the replaced request too");
        drop(input);
        assert!(answers.next().await.is_none(), "every request answered");
        drop(answers);
        drop(follower.await.expect("follower"));
    }

    #[tokio::test]
    async fn a_kept_frame_buffer_is_reused_and_a_large_one_given_back() {
        let mut scratch = Vec::new();
        let mut wire: Vec<u8> = Vec::new();
        write_frame_with(&mut wire, &(1u32, "small"), &mut scratch).await.unwrap();
        let small = wire.clone();
        assert_eq!(u32::from_le_bytes(small[..4].try_into().unwrap()) as usize, small.len() - 4);
        assert_eq!(postcard::from_bytes::<(u32, String)>(&small[4..]).unwrap(), (1, "small".to_string()));
        let kept = scratch.capacity();
        assert!(kept > 0, "a small frame's buffer is kept");

        let big = vec![7u8; SCRATCH_KEEP_BYTES_MAX + 1];
        wire.clear();
        write_frame_with(&mut wire, &big, &mut scratch).await.unwrap();
        assert_eq!(postcard::from_bytes::<Vec<u8>>(&wire[4..]).unwrap(), big, "the large frame is whole");
        assert_eq!(scratch.capacity(), 0, "a buffer over the bound is given back");

        wire.clear();
        write_frame_with(&mut wire, &(1u32, "small"), &mut scratch).await.unwrap();
        assert_eq!(wire, small, "the buffer's past holds nothing over");
    }
}
