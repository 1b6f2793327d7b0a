//! What fencelock's tests, fault harness and benchmark share for starting servers on
//! 127.0.0.1.

#![deny(missing_docs)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A port nobody listens on right now, for a server the caller is about to start.
///
/// Drawn at random from 20,000–31,999, below Linux's ephemeral range (32768+): a port
/// the OS hands out for `bind :0` is also what it gives outgoing connections, so another
/// process (or a server started with `--port 0`) could take it before the server binds
/// it, or while a killed server is down. Never the same port twice in one process. A
/// port taken between this check and the server's bind is the caller's to retry.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
    loop {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let port = 20_000 + ((seed >> 33) % 12_000) as u16;
        let mut handed_out = HANDED_OUT.lock().expect("not poisoned");
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        for &port in &ports {
            assert!((20_000..32_000).contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}

/// A TCP relay on 127.0.0.1 to a target address, for tests that put something between
/// a client (or a peer, with `--peer-route`) and a server: it passes bytes both ways
/// until told to fail in one of three ways.
pub struct Relay {
    /// Where to connect to reach the target through the relay.
    pub port: u16,
    faults: std::sync::Arc<Faults>,
}

/// What a relay has been told to do, shared with its threads.
#[derive(Default)]
struct Faults {
    /// Close every new connection without relaying it.
    refuse: AtomicBool,
    /// Drop every answer the target sends.
    mute: AtomicBool,
    /// Pass the next request of some connection on, then cut that connection unanswered.
    cut_next: AtomicBool,
    /// Bumped by `partition`: connections made before it are cut at their next chunk.
    epoch: AtomicU64,
}

/// What to do with one chunk read on one direction of a relayed connection.
enum Chunk {
    Pass,
    /// Swallow it.
    Drop,
    /// Pass it, give the target 300 ms to act on it, then close both sides.
    PassThenCut,
    /// Close both sides without passing it.
    Cut,
}

impl Relay {
    /// Starts relaying connections made to `port` to `target`.
    pub fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay");
        let port = listener.local_addr().expect("its address").port();
        let faults = Arc::new(Faults::default());
        let shared = Arc::clone(&faults);
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                if shared.refuse.load(Ordering::SeqCst) {
                    continue; // dropped: closed without an answer
                }
                let Ok(outbound) = TcpStream::connect(&target) else { continue };
                // Set on this connection once its answers are to be lost.
                let cut = Arc::new(AtomicBool::new(false));
                let epoch = shared.epoch.load(Ordering::SeqCst);
                let (faults, cutting) = (Arc::clone(&shared), Arc::clone(&cut));
                pump(inbound.try_clone().expect("clone"), outbound.try_clone().expect("clone"), move || {
                    if faults.epoch.load(Ordering::SeqCst) != epoch {
                        return Chunk::Cut;
                    }
                    if faults.cut_next.swap(false, Ordering::SeqCst) {
                        cutting.store(true, Ordering::SeqCst);
                        return Chunk::PassThenCut;
                    }
                    Chunk::Pass
                });
                let faults = Arc::clone(&shared);
                pump(outbound, inbound, move || {
                    if faults.epoch.load(Ordering::SeqCst) != epoch {
                        return Chunk::Cut;
                    }
                    if faults.mute.load(Ordering::SeqCst) || cut.load(Ordering::SeqCst) {
                        return Chunk::Drop;
                    }
                    Chunk::Pass
                });
            }
        });
        Relay { port, faults }
    }

    /// Closes every connection made from now on without relaying it (what a server
    /// does with a request it cannot decode).
    pub fn refuse_new_connections(&self) {
        self.faults.refuse.store(true, Ordering::SeqCst);
    }

    /// Cuts the link: connections relayed so far are closed at their next chunk, new
    /// ones are refused, until `heal`.
    pub fn partition(&self) {
        self.faults.refuse.store(true, Ordering::SeqCst);
        self.faults.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Relays new connections again (after `partition` or `refuse_new_connections`).
    pub fn heal(&self) {
        self.faults.refuse.store(false, Ordering::SeqCst);
    }

    /// From now on, drops what the target sends back; requests still reach it.
    pub fn drop_answers(&self) {
        self.faults.mute.store(true, Ordering::SeqCst);
    }

    /// Passes the next request on, gives the target 300 ms to act on it, then closes
    /// that connection without its answer: applied, and the reply lost.
    pub fn cut_after_next_request(&self) {
        self.faults.cut_next.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` a chunk at a time on a thread of its own, until either side
/// ends; `each` decides every chunk's fate.
fn pump(mut from: TcpStream, mut to: TcpStream, each: impl Fn() -> Chunk + Send + 'static) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = each();
            if matches!(chunk, Chunk::Drop) {
                continue;
            }
            if matches!(chunk, Chunk::Cut) {
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if matches!(chunk, Chunk::PassThenCut) {
                std::thread::sleep(std::time::Duration::from_millis(300));
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
