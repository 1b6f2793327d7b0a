//! One proxy per directed peer link (node a → node b). Node a reaches b only through
//! it (`--peer-route`), so the harness can cut, black-hole, slow or reorder any link, in
//! one direction or both, without touching the nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkState {
    /// Forward as is.
    Open,
    /// Close every connection and refuse new ones (packets dropped, RST).
    Drop,
    /// Accept, but forward nothing (packets silently lost: the sender times out).
    BlackHole,
    /// Forward each chunk after this many milliseconds.
    Delay(u64),
    /// Forward each chunk after a random 0..=n ms, and close the connection on one
    /// chunk in `REORDER_CUT_ONE_IN` (its bytes in flight are lost). TCP keeps order
    /// within a connection, so messages are reordered the way a real network reorders
    /// them for a TCP protocol: across connections (votes, appends and snapshots travel
    /// on separate ones, and a resent request on a fresh connection overtakes an old one
    /// still crawling).
    Reorder(u64),
}

/// During `Reorder`, one chunk in this many closes its connection.
const REORDER_CUT_ONE_IN: u64 = 50;

/// Seeds the per-connection generators (deterministic per run order, distinct per
/// connection).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// A running link proxy.
pub struct Link {
    state: watch::Sender<LinkState>,
    /// Where node a connects.
    pub port: u16,
}

impl Link {
    /// Listens on an ephemeral port and forwards to `target_port`.
    pub async fn start(target_port: u16) -> std::io::Result<Arc<Link>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (state, _) = watch::channel(LinkState::Open);
        let link = Arc::new(Link { state, port });
        let accepting = Arc::clone(&link);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let state = accepting.state.subscribe();
                tokio::spawn(serve(inbound, target_port, state));
            }
        });
        Ok(link)
    }

    /// Changes what the link does (existing connections follow).
    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }
}

async fn serve(inbound: TcpStream, target_port: u16, state: watch::Receiver<LinkState>) {
    if *state.borrow() == LinkState::Drop {
        return;
    }
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else { return };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let seed = CONNECTIONS.fetch_add(1, Ordering::Relaxed).wrapping_add(u64::from(target_port) << 32);
    // Either direction ending ends both.
    tokio::select! {
        _ = pump(in_read, out_write, state.clone(), crate::workload::Rng::new(seed * 2)) => {}
        _ = pump(out_read, in_write, state, crate::workload::Rng::new(seed * 2 + 1)) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
    mut rng: crate::workload::Rng,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() == LinkState::Drop {
                    return;
                }
                continue;
            }
        };
        loop {
            let now = *state.borrow();
            match now {
                LinkState::Open => break,
                LinkState::Delay(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    break;
                }
                LinkState::Reorder(max_ms) => {
                    if rng.below(REORDER_CUT_ONE_IN) == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(rng.below(max_ms + 1))).await;
                    break;
                }
                LinkState::Drop => return,
                // Hold the bytes until the link heals or is dropped; they are lost if
                // the connection is closed meanwhile, as packets would be.
                LinkState::BlackHole => {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
