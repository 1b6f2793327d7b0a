//! The `fencelock` binary: `fencelock` alone serves a single-node cluster on
//! 127.0.0.1:6379 with its data in ./fencelock-data.

use clap::Parser;
use fencelock_core::Limits;
use fencelock_server::config::{Flags, Settings};
use fencelock_server::node::{Node, NodeConfig};
use fencelock_server::resp::request::RequestLimits;
use fencelock_server::server::{Server, ServerConfig};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FENCELOCK_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match Settings::resolve(Flags::parse()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("fencelock: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(settings).await {
        eprintln!("fencelock: {e}");
        std::process::exit(1);
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    let address = format!("{}:{}", settings.bind, settings.port);
    // Bind first: a busy port should fail before any storage is touched.
    let listener =
        tokio::net::TcpListener::bind(&address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let node_config = NodeConfig {
        id: settings.node_id,
        data_dir: settings.data_dir.clone(),
        peer_addr: format!("{}:{}", settings.bind, settings.peer_port),
        limits: Limits::default(),
        snapshot_every_entries: settings.snapshot_every,
        peers: settings.peers.clone(),
        join: settings.join.clone(),
        peer_pipeline: settings.peer_pipeline,
        peer_listen: settings.peer_listen.clone(),
        peer_routes: settings.peer_routes.clone(),
        test_clock: settings.test_clock,
    };
    let node = Node::start(node_config).await.map_err(|e| e.to_string())?;
    let config = ServerConfig {
        requirepass: settings.requirepass.clone(),
        request_limits: RequestLimits::default(),
        connections_max: settings.maxclients,
    };
    let server = Server::new(std::sync::Arc::clone(&node), config, port);
    // Tests and scripts wait for this line to learn the port (with --port 0).
    println!(
        "fencelock ready on {}:{port} (node {}, data in {})",
        settings.bind,
        settings.node_id,
        settings.data_dir.display()
    );
    tracing::info!(port, "ready");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        served = server.run(listener) => served.map_err(|e| e.to_string()),
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: shutting down");
            node.shut_down().await;
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: shutting down");
            node.shut_down().await;
            Ok(())
        }
    }
}
