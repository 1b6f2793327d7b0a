//! One RESP3 connection to one node: a request at a time (blocking commands hold their
//! connection while they wait, so the client keeps a small pool of these).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resp::{self, Value};

/// How a request failed at the transport level.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// Nothing was sent: the request certainly did not apply.
    NotSent(String),
    /// Sent, but no answer came (timeout, connection lost): it may have applied.
    Lost(String),
    /// The peer broke the protocol.
    Protocol(String),
    /// The server refused the password (NOAUTH / WRONGPASS): no other node or retry
    /// will take it either.
    Auth(String),
}

/// The most bytes buffered for one reply before the connection is dropped.
const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Silence on a connection before the kernel's first keepalive probe. A node that
/// vanished without closing its connections (power lost, or a partition that drops
/// packets) would otherwise leave a waiting request, or a watch, reading nothing for as
/// long as it may wait: up to a year for `WAIT FOREVER`. With the probes below the
/// connection fails within about 10 + 3 × 5 = 25 s of silence, the request ends as
/// "outcome unknown" and the client goes to another node.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Between unanswered probes.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel drops the connection.
pub(crate) const KEEPALIVE_PROBES: u32 = 3;

fn set_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_vendor = "apple"))]
    let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// A connected, handshaken node connection.
pub(crate) struct Conn {
    stream: TcpStream,
    input: BytesMut,
    /// `host:port` it is connected to.
    pub endpoint: String,
    /// Push messages that arrived while waiting for a reply (watch connections).
    pub pushes: std::collections::VecDeque<Value>,
}

impl Conn {
    /// Connects and says HELLO 3 (with AUTH when a password is set).
    pub async fn open(endpoint: &str, password: Option<&str>, timeout: Duration) -> Result<Conn, ConnError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ConnError::NotSent(format!("{endpoint}: {e}"))),
            Err(_) => return Err(ConnError::NotSent(format!("{endpoint}: connect timed out"))),
        };
        let _ = stream.set_nodelay(true);
        // Best effort, as nodelay: a connection without it still works.
        let _ = set_keepalive(&stream);
        let mut conn = Conn {
            stream,
            input: BytesMut::with_capacity(4096),
            endpoint: endpoint.to_string(),
            pushes: Default::default(),
        };
        let hello: Vec<&[u8]> = match password {
            Some(pass) => vec![b"HELLO", b"3", b"AUTH", b"default", pass.as_bytes()],
            None => vec![b"HELLO", b"3"],
        };
        match conn.request(&hello, timeout).await {
            Ok(Value::Error(e)) if e.starts_with("WRONGPASS") || e.starts_with("NOAUTH") => Err(ConnError::Auth(e)),
            Ok(Value::Error(e)) => Err(ConnError::NotSent(format!("{endpoint}: {e}"))),
            Ok(_) => Ok(conn),
            // The handshake changes nothing on the server: a failure is "not sent".
            Err(ConnError::Lost(e) | ConnError::NotSent(e) | ConnError::Protocol(e) | ConnError::Auth(e)) => {
                Err(ConnError::NotSent(e))
            }
        }
    }

    /// Whether an idle connection is still open: nothing to read yet. (An idle
    /// connection is owed nothing, so readable means closed, or a server fault.)
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends one command and waits up to `timeout` for its reply (pushes that come
    /// first are kept in `pushes`).
    pub async fn request(&mut self, args: &[&[u8]], timeout: Duration) -> Result<Value, ConnError> {
        let mut out = Vec::with_capacity(64);
        resp::encode(args, &mut out);
        if let Err(e) = self.stream.write_all(&out).await {
            // A partial write may still have reached the server.
            return Err(ConnError::Lost(format!("{}: {e}", self.endpoint)));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.read_one(deadline).await? {
                Value::Push(items) => self.pushes.push_back(Value::Push(items)),
                reply => return Ok(reply),
            }
        }
    }

    /// Waits for the next push (or any value) until `deadline`; `Ok(None)` on timeout.
    pub async fn next_push(&mut self, deadline: tokio::time::Instant) -> Result<Option<Value>, ConnError> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(Some(push));
        }
        match self.read_one(deadline).await {
            Ok(v) => Ok(Some(v)),
            Err(ConnError::Lost(e)) if e.ends_with("timed out") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read_one(&mut self, deadline: tokio::time::Instant) -> Result<Value, ConnError> {
        loop {
            match resp::parse(&mut self.input) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(ConnError::Protocol(e.0)),
            }
            if self.input.len() > REPLY_BYTES_MAX {
                return Err(ConnError::Protocol(format!("a reply over {REPLY_BYTES_MAX} bytes")));
            }
            self.input.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Ok(Ok(0)) => return Err(ConnError::Lost(format!("{}: connection closed", self.endpoint))),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ConnError::Lost(format!("{}: {e}", self.endpoint))),
                Err(_) => return Err(ConnError::Lost(format!("{}: timed out", self.endpoint))),
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_probes_a_silent_peer() {
        // A stand-in node that answers the handshake and then says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = listener.local_addr().expect("address").to_string();
        let node = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut hello = [0u8; 64];
            let _ = stream.read(&mut hello).await;
            stream.write_all(b"+OK\r\n").await.expect("answer");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let conn = Conn::open(&endpoint, None, Duration::from_secs(5)).await.expect("handshake");
        let socket = socket2::SockRef::from(&conn.stream);
        assert!(socket.keepalive().expect("read back"), "tokio leaves it off: the OS's two hours");
        assert_eq!(socket.tcp_keepalive_time().expect("read back"), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().expect("read back"), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().expect("read back"), KEEPALIVE_PROBES);
        node.abort();
    }
}
