//! Starting a node and its listener from resolved settings: what the `fencelock`
//! binary does before it waits for a signal, and what an embedded server (for users'
//! tests, through fencelock-client) does in-process.

use std::sync::Arc;

use fencelock_core::Limits;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::node::{Node, NodeConfig};
use crate::resp::request::RequestLimits;
use crate::server::{Server, ServerConfig};

/// A node serving clients.
pub struct Launched {
    /// The client port (the one bound: useful with port 0).
    pub port: u16,
    /// The Raft node.
    pub node: Arc<Node>,
    /// The connections' shared state (settings, counters).
    pub server: Arc<Server>,
    /// The accept loop; it ends only on a listener error.
    pub serving: JoinHandle<std::io::Result<()>>,
}

impl Launched {
    /// Hands leadership over if this node leads, then stops Raft and the listener.
    pub async fn shut_down(self) {
        self.node.shut_down().await;
        self.serving.abort();
    }
}

/// Binds the client port (before touching storage, so a busy port fails first), starts
/// the node, and serves clients on a spawned task.
pub async fn launch(settings: &Settings) -> Result<Launched, String> {
    let address = format!("{}:{}", settings.bind, settings.port);
    let listener =
        tokio::net::TcpListener::bind(&address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let node_config = NodeConfig {
        id: settings.node_id,
        data_dir: settings.data_dir.clone(),
        peer_addr: format!("{}:{}", settings.bind, settings.peer_port),
        limits: Limits::default(),
        snapshot_every_entries: settings.snapshot_every,
        snapshot_log_bytes_min: settings.snapshot_log_mib * 1024 * 1024,
        silent_node: std::time::Duration::from_millis(settings.silent_node_ms),
        peers: settings.peers.clone(),
        join: settings.join.clone(),
        join_password: settings.requirepass.clone(),
        peer_pipeline: settings.peer_pipeline,
        peer_listen: settings.peer_listen.clone(),
        peer_routes: settings.peer_routes.clone(),
        protocol_level: settings.protocol_level,
        test_clock: settings.test_clock,
    };
    let node = Node::start(node_config).await.map_err(|e| e.to_string())?;
    let config = ServerConfig {
        requirepass: settings.requirepass.clone(),
        request_limits: RequestLimits::default(),
        connections_max: settings.maxclients,
        tcp_keepalive: std::time::Duration::from_secs(settings.tcp_keepalive),
        maxmemory_bytes: settings.maxmemory_bytes,
    };
    let server = Server::new(Arc::clone(&node), config, port);
    let serving = tokio::spawn(Arc::clone(&server).run(listener));
    Ok(Launched { port, node, server, serving })
}
