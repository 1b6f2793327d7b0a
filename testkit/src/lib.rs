//! What fencelock's tests, fault harness and benchmark share for starting servers on
//! 127.0.0.1.

#![deny(missing_docs)]

use std::net::TcpListener;
use std::sync::Mutex;

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
