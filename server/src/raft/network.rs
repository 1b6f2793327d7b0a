//! The peer network: openraft's RPCs between nodes over TCP.
//!
//! ```text
//!   frame = len:u32 (LE) | postcard(PeerRequest or PeerResponse)
//! ```
//!
//! Each openraft replication stream owns one `PeerClient`, which keeps one connection
//! and sends one request at a time; a failed exchange drops the connection and the
//! next call reconnects. Frames are bounded (`FRAME_BYTES_MAX`), so a peer cannot make
//! this node allocate without limit.

use std::future::Future;
use std::sync::Arc;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{NodeId, Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// Largest frame accepted: a snapshot of millions of locks is a few hundred MB.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// What one node asks another.
#[derive(Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    /// A follower's linearizable read: the leader confirms it still leads (a quorum
    /// round) and answers the index the follower must have applied before reading.
    ReadIndex,
    /// A follower's client write, for the leader to stamp, propose and answer.
    Forward {
        origin: NodeId,
        op: super::Op,
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
}

pub(crate) async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let body = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!("frame of {} bytes exceeds {FRAME_BYTES_MAX}", body.len())));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

pub(crate) async fn read_frame<T: serde::de::DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Creates clients for peers.
pub struct Network;

/// A client for one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient { target, addr: node.addr.clone(), stream: None }
    }
}

enum Failure {
    Unreachable(String),
    Network(String),
}

impl PeerClient {
    /// One request and its response, within `ttl`. Any failure drops the connection.
    async fn call(&mut self, request: PeerRequest, ttl: std::time::Duration) -> Result<PeerResponse, Failure> {
        let exchange = async {
            if self.stream.is_none() {
                let stream = TcpStream::connect(&self.addr)
                    .await
                    .map_err(|e| Failure::Unreachable(format!("node {} at {}: {e}", self.target, self.addr)))?;
                let _ = stream.set_nodelay(true);
                self.stream = Some(stream);
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
            PeerResponse::AppendEntries(result) => result.map_err(remote),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await.map_err(rpc_error)? {
            PeerResponse::Vote(result) => result.map_err(remote),
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
        let request = PeerRequest::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        // A snapshot can be large: allow it ten times the usual bound.
        match self.call(request, option.hard_ttl() * 10).await.map_err(|f| StreamingError::from(rpc_error(f)))? {
            PeerResponse::Snapshot(result) => result.map_err(|e| StreamingError::from(remote(e))),
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

/// The node, once started, for forwarded writes.
pub type NodeSlot = Arc<std::sync::OnceLock<Arc<crate::node::Node>>>;

/// Serves peers' RPCs on `listener` until it fails.
pub async fn serve_peers(listener: TcpListener, raft: Arc<Raft>, node: NodeSlot) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let raft = Arc::clone(&raft);
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            while let Ok(request) = read_frame::<PeerRequest>(&mut stream).await {
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
                    PeerRequest::AppendEntries(rpc) => {
                        PeerResponse::AppendEntries(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
                    }
                    PeerRequest::Vote(rpc) => PeerResponse::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
                    PeerRequest::Snapshot { vote, meta, data } => PeerResponse::Snapshot(
                        raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data })
                            .await
                            .map_err(|e| e.to_string()),
                    ),
                    PeerRequest::TransferLeader(req) => {
                        PeerResponse::TransferLeader(raft.handle_transfer_leader(req).await.map_err(|e| e.to_string()))
                    }
                };
                if write_frame(&mut stream, &response).await.is_err() {
                    return;
                }
            }
        });
    }
}
