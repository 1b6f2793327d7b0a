//! The listener and what all connections share.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::node::Node;
use crate::resp::request::RequestLimits;

/// Connection-facing settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--requirepass`: clients must AUTH with it.
    pub requirepass: Option<String>,
    /// Request size limits.
    pub request_limits: RequestLimits,
    /// Most connections served at once; more wait in the accept queue.
    pub connections_max: usize,
    /// Silence on a client connection before keepalive probes (`--tcp-keepalive`; zero:
    /// none).
    pub tcp_keepalive: Duration,
    /// Resident bytes past which commands that add data are refused (`--maxmemory-mib`;
    /// zero: none).
    pub maxmemory_bytes: u64,
}

/// One client, as CLIENT LIST shows it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Peer address.
    pub addr: SocketAddr,
    /// CLIENT SETNAME / HELLO SETNAME.
    pub name: Option<Bytes>,
    /// CLIENT SETINFO LIB-NAME.
    pub lib_name: Option<Bytes>,
    /// CLIENT SETINFO LIB-VER.
    pub lib_ver: Option<Bytes>,
    /// RESP version.
    pub resp: u8,
    /// Last command name, as sent. Shared with the connection's task, which sets it on
    /// every request: a lock of its own, so connections never contend for the table.
    pub last_command: Arc<Mutex<Bytes>>,
    /// Connected since.
    pub since: Instant,
}

/// Scripts this node knows by SHA1 (EVAL and SCRIPT LOAD add them). Node-local, as
/// in Redis: a client that gets NOSCRIPT sends the script again. The log entries carry
/// whole scripts, so replicas never need this cache.
#[derive(Debug, Default)]
pub struct ScriptCache {
    by_sha: std::collections::HashMap<String, Bytes>,
    order: std::collections::VecDeque<String>,
}

/// Scripts cached per node; the oldest is forgotten past this.
pub const SCRIPTS_MAX: usize = 10_000;

impl ScriptCache {
    /// Caches a script and returns its SHA1.
    pub fn insert(&mut self, body: Bytes) -> String {
        let sha = crate::lua::sha1_hex(&body);
        if self.by_sha.insert(sha.clone(), body).is_none() {
            self.order.push_back(sha.clone());
            if self.order.len() > SCRIPTS_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.by_sha.remove(&old);
                }
            }
        }
        sha
    }

    /// A cached script.
    pub fn get(&self, sha: &str) -> Option<Bytes> {
        self.by_sha.get(sha).cloned()
    }

    /// SCRIPT FLUSH.
    pub fn clear(&mut self) {
        self.by_sha.clear();
        self.order.clear();
    }
}

/// SCAN cursors kept per node, one per scan in progress; the oldest is forgotten past
/// this (its scan then gets `ERR invalid cursor` and restarts). Each names a key of up
/// to the key limit.
pub const SCAN_CURSORS_MAX: usize = 16_384;

/// This node's SCAN cursors, shared by its connections: a pooled client (Redisson, a
/// threaded redis-py) continues a scan on whichever connection it takes next, as Redis
/// allows. A cursor names the key its scan resumes after. Ids are random 63-bit
/// numbers, so a connection's cursor never continues another scan by accident (they
/// were 1, 2, 3 on every connection).
#[derive(Debug)]
pub struct ScanCursors {
    by_id: std::collections::HashMap<u64, Bytes>,
    order: std::collections::VecDeque<u64>,
    seed: u64,
    issued: u64,
}

impl ScanCursors {
    fn new() -> ScanCursors {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).expect("the OS random source works");
        ScanCursors { by_id: Default::default(), order: Default::default(), seed: u64::from_le_bytes(raw), issued: 0 }
    }

    /// Where the scan with cursor `id` resumes, if this node issued it and still has
    /// it. Taken: the scan's next step gets a new cursor, so the table holds one per
    /// scan in progress, and a client scanning fast cannot push out a slow one's.
    pub fn resume(&mut self, id: u64) -> Option<Bytes> {
        let key = self.by_id.remove(&id)?;
        if let Some(at) = self.order.iter().position(|c| *c == id) {
            self.order.remove(at);
        }
        Some(key)
    }

    /// A new cursor for a scan that resumes after `key`.
    pub fn issue(&mut self, key: Bytes) -> u64 {
        let id = loop {
            // splitmix64 of a counter: distinct for distinct counters, unguessable
            // without the seed; 0 is the end of a scan and the top bit is left clear
            // (clients parse the cursor as a signed integer too).
            self.issued += 1;
            let mut z = self.seed.wrapping_add(self.issued.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let id = (z ^ (z >> 31)) >> 1;
            if id != 0 && !self.by_id.contains_key(&id) {
                break id;
            }
        };
        self.by_id.insert(id, key);
        self.order.push_back(id);
        if self.order.len() > SCAN_CURSORS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        id
    }
}

/// Counters for INFO.
#[derive(Debug, Default)]
pub struct Stats {
    /// Commands answered.
    pub commands: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections blocked in a wait.
    pub blocked: AtomicU64,
}

/// Shared by every connection.
pub struct Server {
    /// The Raft node.
    pub node: Arc<Node>,
    /// Settings.
    pub config: ServerConfig,
    /// Connected clients by id.
    pub clients: Mutex<BTreeMap<u64, ClientInfo>>,
    /// EVALSHA's cache.
    pub scripts: Mutex<ScriptCache>,
    /// Counters.
    pub stats: Stats,
    /// The client port (INFO).
    pub port: u16,
    /// Process start (INFO uptime).
    pub started: Instant,
    /// A random id for this process (INFO run_id).
    pub run_id: String,
    /// `--maxmemory-mib` and the resident size.
    pub memory: Arc<crate::memory::MemoryGate>,
    /// SCAN cursors.
    pub scan_cursors: Mutex<ScanCursors>,
    next_client: AtomicU64,
}

impl Server {
    /// Wraps a started node.
    pub fn new(node: Arc<Node>, config: ServerConfig, port: u16) -> Arc<Server> {
        Arc::new(Server {
            node,
            memory: crate::memory::MemoryGate::new(config.maxmemory_bytes),
            config,
            clients: Mutex::new(BTreeMap::new()),
            scripts: Mutex::new(ScriptCache::default()),
            stats: Stats::default(),
            port,
            started: Instant::now(),
            run_id: crate::cmd::lock::random_token().iter().map(|&b| b as char).collect::<String>() + "00000000",
            scan_cursors: Mutex::new(ScanCursors::new()),
            next_client: AtomicU64::new(1),
        })
    }

    /// Accepts connections forever. At most `connections_max` are served at once: the
    /// rest wait in the kernel's accept queue.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.config.connections_max));
        tokio::spawn(Arc::clone(&self.memory).run());
        loop {
            let permit = Arc::clone(&slots).acquire_owned().await.expect("semaphore never closes");
            let (stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or an error pending on one new
                    // socket (ECONNABORTED, EPROTO, ...): the listener itself is fine, and
                    // ending here would stop the node. Retried after a pause, as
                    // redis-server does; once connections close, accepts succeed again.
                    tracing::warn!(error = %e, "accepting a client connection failed; retrying in 50 ms");
                    tokio::time::sleep(crate::raft::network::ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            };
            if !self.config.tcp_keepalive.is_zero() {
                // Best effort: a connection without probes still works.
                let _ = set_keepalive(&stream, self.config.tcp_keepalive);
            }
            let id = self.next_client.fetch_add(1, Ordering::Relaxed);
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            let info = ClientInfo {
                addr,
                name: None,
                lib_name: None,
                lib_ver: None,
                resp: 2,
                last_command: Arc::new(Mutex::new(Bytes::from_static(b"NULL"))),
                since: Instant::now(),
            };
            self.clients.lock().expect("not poisoned").insert(id, info);
            let server = Arc::clone(&self);
            tokio::spawn(async move {
                crate::connection::serve(Arc::clone(&server), stream, id).await;
                server.clients.lock().expect("not poisoned").remove(&id);
                drop(permit);
            });
        }
    }
}

/// Keepalive probes after `idle` of silence, then every third of it; three unanswered
/// ones drop the connection (redis-server's `tcp-keepalive` timing).
fn set_keepalive(stream: &tokio::net::TcpStream, idle: Duration) -> std::io::Result<()> {
    let interval = (idle / 3).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(interval);
    #[cfg(any(target_os = "linux", target_vendor = "apple"))]
    let keepalive = keepalive.with_retries(3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
