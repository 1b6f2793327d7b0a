//! The `fencelock` binary: `fencelock` alone serves a single-node cluster on
//! 127.0.0.1:6379 with its data in ./fencelock-data.

use clap::Parser;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fencelock_server::config::{Flags, Settings};
use fencelock_server::idle_spin::IdleSpin;
use fencelock_server::launch::launch;

/// glibc malloc stalled the runtime thread for 40–60 ms at a time in
/// `malloc_consolidate`, sweeping the chunks a log purge had freed (every snapshot,
/// that is every 100,000 writes); every client waited. mimalloc has no such sweep.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // No transparent huge pages for this process. mimalloc asks for them on its
    // arenas (MADV_HUGEPAGE), so every first touch of fresh memory zeroed a whole
    // 2 MiB page, and memory mimalloc purged and reused was zeroed again: on 3 nodes
    // under the 64-client lock load, 4-8% of the servers' CPU samples were in those
    // page faults, 2-3% with small pages. Lookups gain nothing from huge pages here:
    // the tables are trees of small nodes spread over the heap.
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
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
    raise_open_file_limit(settings.maxclients);
    // One thread by default (see `--io-threads`): connections, Raft and apply share it,
    // so a write crosses threads only to the WAL's fsync and back.
    // On one thread an idle single node polls briefly before sleeping (see idle_spin).
    let spin = (settings.io_threads == 1 && settings.idle_spin_us > 0).then(|| IdleSpin::new(settings.idle_spin_us));
    let runtime = match (settings.io_threads, &spin) {
        (1, Some(spin)) => spin.build(tokio::runtime::Builder::new_current_thread().enable_all()),
        (1, None) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        (n, _) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fencelock: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Some(spin) = &spin {
        if !spin.knows_driver() {
            tracing::warn!("the runtime's epoll descriptor was not found: --idle-spin-us has no effect");
        }
    }
    if let Err(e) = runtime.block_on(run(settings, spin)) {
        eprintln!("fencelock: {e}");
        std::process::exit(1);
    }
}

/// Descriptors beyond the clients' (peers, WAL segments, snapshots, listeners).
const DESCRIPTORS_RESERVED: u64 = 64;

/// Raises this process's open-file limit toward what `maxclients` needs, as far as the
/// hard limit allows (redis-server does the same). A service manager's default soft
/// limit of 1,024 would otherwise refuse connections long before `maxclients`.
fn raise_open_file_limit(maxclients: usize) {
    let wanted = maxclients as u64 + DESCRIPTORS_RESERVED;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit / setrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: as above.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    let now = if ok { raised.rlim_cur } else { limit.rlim_cur };
    if now < wanted {
        tracing::warn!(
            maxclients,
            open_files = now,
            "the open-file limit is below what maxclients needs; connections past it wait until others close \
             (raise it with `ulimit -n` or LimitNOFILE=)"
        );
    }
}

async fn run(settings: Settings, spin: Option<Arc<IdleSpin>>) -> Result<(), String> {
    let launched = launch(&settings).await?;
    if let Some(spin) = spin {
        let server = Arc::clone(&launched.server);
        spin.watch(launched.node.write_load(), move || server.stats.commands.load(Ordering::Relaxed));
    }
    let port = launched.port;
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
    let node = Arc::clone(&launched.node);
    tokio::select! {
        served = launched.serving => match served {
            Ok(served) => served.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
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
