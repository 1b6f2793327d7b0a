//! One proxy per directed peer link (node a → node b). Node a reaches b only through
//! it (`--peer-route`), so the harness can cut, black-hole or slow any link, in one
//! direction or both, without touching the nodes.

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
}

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
    // Either direction ending ends both.
    tokio::select! {
        _ = pump(in_read, out_write, state.clone()) => {}
        _ = pump(out_read, in_write, state) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
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
