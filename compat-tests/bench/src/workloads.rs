//! What one benchmark client does, per workload and wire style. A client is set up
//! (connect, take the locks it will renew or read), then `step` runs one operation, or
//! one pipelined batch of them, and says how many operations completed.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, LockOptions, PutOptions, Txn, TxnOp};
use fencelock_client::resp::Value;

use crate::conn::Conn;
use crate::targets::Kind;

/// The release script redis-py's `Lock` sends (`LUA_RELEASE_SCRIPT`, redis 4.x to 8.x),
/// byte for byte: fencelock runs this one natively, as it would for the real client.
pub const RELEASE_SCRIPT: &str = "\n        local token = redis.call('get', KEYS[1])\n        if not token or token ~= ARGV[1] then\n            return 0\n        end\n        redis.call('del', KEYS[1])\n        return 1\n    ";
/// redis-py's `LUA_EXTEND_SCRIPT`, byte for byte; the bench passes `replace_ttl` = "1"
/// (`lock.extend(30, replace_ttl=True)`).
pub const EXTEND_SCRIPT: &str = "\n        local token = redis.call('get', KEYS[1])\n        if not token or token ~= ARGV[1] then\n            return 0\n        end\n        local expiration = redis.call('pttl', KEYS[1])\n        if not expiration then\n            expiration = 0\n        end\n        if expiration < 0 then\n            return 0\n        end\n\n        local newttl = ARGV[2]\n        if ARGV[3] == \"0\" then\n            newttl = ARGV[2] + expiration\n        end\n        redis.call('pexpire', KEYS[1], newttl)\n        return 1\n    ";

/// The workloads that run at each client count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// (a) Uncontended: acquire a lock on a random name, release it.
    Lock,
    /// (b) Contended: every client on a few names, with a blocking acquire.
    Contended,
    /// (c) Renew-heavy: hold many locks and renew them in turn.
    Renew,
    /// (d) Read-heavy: FENCE (GET on Redis, a linearizable range on etcd) on a held lock.
    Fence,
}

impl Workload {
    /// Parses a `--workloads` entry.
    pub fn parse(name: &str) -> Option<Workload> {
        Some(match name {
            "lock" => Workload::Lock,
            "contended" => Workload::Contended,
            "renew" => Workload::Renew,
            "fence" => Workload::Fence,
            _ => return None,
        })
    }

    /// The name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Lock => "lock",
            Workload::Contended => "contended",
            Workload::Renew => "renew",
            Workload::Fence => "fence",
        }
    }
}

/// How a workload is spoken to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// What Redlock clients send: `SET NX PX`, Lua release / extend by EVALSHA, GET.
    Redlock,
    /// fencelock's own LOCK / UNLOCK / RENEW / FENCE.
    Native,
    /// etcd: a lease per client (per lock when renewing), put-if-absent txn, delete,
    /// etcd's Lock API when contended, linearizable range reads.
    Etcd,
}

impl Style {
    /// The name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Style::Redlock => "redlock",
            Style::Native => "native",
            Style::Etcd => "etcd",
        }
    }

    /// The styles a target is measured in for a workload: fencelock speaks both Redlock
    /// (what unmodified clients send) and native for the plain lock cycle, native for
    /// the rest.
    pub fn for_target(kind: Kind, workload: Workload) -> Vec<Style> {
        match kind {
            Kind::Etcd3 => vec![Style::Etcd],
            Kind::Redis | Kind::RedisAof => vec![Style::Redlock],
            Kind::Fencelock | Kind::Fencelock3 if workload == Workload::Lock => vec![Style::Native, Style::Redlock],
            Kind::Fencelock | Kind::Fencelock3 => vec![Style::Native],
        }
    }

    /// The style used for the scale workloads (a full table, many connections).
    pub fn primary(kind: Kind) -> Style {
        Style::for_target(kind, Workload::Lock)[0]
    }
}

/// Everything a client needs to know about its cell.
#[derive(Debug, Clone)]
pub struct Params {
    pub workload: Workload,
    pub style: Style,
    pub clients: usize,
    /// Operations per pipelined batch (RESP only; etcd runs one at a time).
    pub pipeline: usize,
    /// Locks held in all by the renew workload.
    pub renew_locks: usize,
    /// Lock names the contended workload shares.
    pub contended_names: usize,
    /// How often a Redlock client retries a held lock (Redis has no blocking acquire).
    pub poll: Duration,
    pub port: u16,
    pub etcd: Vec<String>,
    pub release_sha: String,
    pub extend_sha: String,
    /// Unique per cell, so cells never see each other's names.
    pub prefix: String,
}

/// One benchmark client, connected and set up.
pub enum Client {
    Resp(RespClient),
    Etcd(Box<EtcdClient>),
}

pub struct RespClient {
    conn: Conn,
    id: usize,
    /// (name, token) of the locks this client holds for renew / fence.
    held: Vec<(String, String)>,
    replies: Vec<Value>,
    rng: u64,
}

pub struct EtcdClient {
    client: etcd_client::Client,
    id: usize,
    lease: i64,
    held: Vec<(String, i64)>,
    keepers: Vec<(LeaseKeeper, LeaseKeepAliveStream)>,
    rng: u64,
}

fn is_grant(v: &Value) -> bool {
    matches!(v, Value::Array(_) | Value::Map(_))
}

/// A LOCK grant, or SET NX's `+OK`.
fn is_acquired(v: &Value) -> bool {
    is_grant(v) || matches!(v, Value::Simple(_))
}

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn unexpected(what: &str, v: &Value) -> String {
    format!("{what}: unexpected reply {v:?}")
}

/// xorshift64: the contended workload's name choice (no shared state between tasks).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

impl Client {
    /// Connects client `id` and takes the locks its workload holds.
    pub async fn open(p: &Params, id: usize) -> Result<Client, String> {
        if p.style == Style::Etcd {
            return EtcdClient::open(p, id).await.map(|c| Client::Etcd(Box::new(c)));
        }
        let conn = Conn::open(p.port).await.map_err(io)?;
        let mut c = RespClient {
            conn,
            id,
            held: Vec::new(),
            replies: Vec::new(),
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1),
        };
        let hold = match p.workload {
            Workload::Renew => (p.renew_locks / p.clients).max(1),
            Workload::Fence => 1,
            Workload::Lock | Workload::Contended => 0,
        };
        for chunk in (0..hold).collect::<Vec<_>>().chunks(256) {
            for &i in chunk {
                let (name, token) = (format!("{}h:{id}:{i}", p.prefix), format!("t{id}-{i}"));
                c.acquire(p, &name, &token, b"600000");
                c.held.push((name, token));
            }
            c.conn.flush_and_read(chunk.len(), &mut c.replies).await.map_err(io)?;
            if let Some(bad) = c.replies.iter().find(|v| !is_acquired(v)) {
                return Err(unexpected("taking the held locks", bad));
            }
        }
        Ok(Client::Resp(c))
    }

    /// Runs one operation (or one pipelined batch); returns how many completed.
    pub async fn step(&mut self, p: &Params, n: u64) -> Result<u64, String> {
        match self {
            Client::Resp(c) => c.step(p, n).await,
            Client::Etcd(c) => c.step(p, n).await,
        }
    }

    /// Gives back what `open` took.
    pub async fn close(self, p: &Params) {
        match self {
            Client::Resp(mut c) => {
                let held = std::mem::take(&mut c.held);
                for chunk in held.chunks(256) {
                    for (name, token) in chunk {
                        c.release(p, name, token);
                    }
                    if c.conn.flush_and_read(chunk.len(), &mut c.replies).await.is_err() {
                        return;
                    }
                }
            }
            Client::Etcd(mut c) => {
                let _ = c.client.lease_revoke(c.lease).await;
                for (_, lease) in std::mem::take(&mut c.held) {
                    if lease != c.lease {
                        let _ = c.client.lease_revoke(lease).await;
                    }
                }
            }
        }
    }
}

impl RespClient {
    async fn step(&mut self, p: &Params, n: u64) -> Result<u64, String> {
        let batch = if p.workload == Workload::Contended { 1 } else { p.pipeline.max(1) };
        match (p.workload, p.style) {
            (Workload::Lock, _) => {
                let names: Vec<(String, String)> = (0..batch as u64)
                    .map(|j| {
                        let k = n * batch as u64 + j;
                        (format!("{}{}:{}", p.prefix, self.id, k % 1024), format!("{}-{k}", self.id))
                    })
                    .collect();
                for (name, token) in &names {
                    self.acquire(p, name, token, b"30000");
                }
                self.conn.flush_and_read(batch, &mut self.replies).await.map_err(io)?;
                if let Some(bad) = self.replies.iter().find(|v| !is_acquired(v)) {
                    return Err(unexpected("acquire", bad));
                }
                for (name, token) in &names {
                    self.release(p, name, token);
                }
                self.conn.flush_and_read(batch, &mut self.replies).await.map_err(io)?;
                self.check_released(p.style)?;
            }
            (Workload::Contended, style) => {
                let name = format!("{}c:{}", p.prefix, next_random(&mut self.rng) % p.contended_names as u64);
                let token = format!("{}-{n}", self.id);
                loop {
                    let reply = match style {
                        Style::Native => {
                            self.conn
                                .call(&[
                                    b"LOCK",
                                    name.as_bytes(),
                                    b"30000",
                                    b"TOKEN",
                                    token.as_bytes(),
                                    b"WAIT",
                                    b"60000",
                                ])
                                .await
                        }
                        _ => self.conn.call(&[b"SET", name.as_bytes(), token.as_bytes(), b"NX", b"PX", b"30000"]).await,
                    }
                    .map_err(io)?;
                    match reply {
                        v if is_acquired(&v) => break,
                        Value::Nil if style == Style::Redlock => tokio::time::sleep(p.poll).await,
                        other => return Err(unexpected("blocking acquire", &other)),
                    }
                }
                self.release(p, &name, &token);
                self.conn.flush_and_read(1, &mut self.replies).await.map_err(io)?;
                self.check_released(style)?;
            }
            (Workload::Renew, style) => {
                for j in 0..batch as u64 {
                    let (name, token) = &self.held[((n * batch as u64 + j) % self.held.len() as u64) as usize];
                    match style {
                        Style::Native => {
                            self.conn.queue(&[b"RENEW", name.as_bytes(), token.as_bytes(), b"30000"]);
                        }
                        _ => self.conn.queue(&[
                            b"EVALSHA",
                            p.extend_sha.as_bytes(),
                            b"1",
                            name.as_bytes(),
                            token.as_bytes(),
                            b"30000",
                            b"1",
                        ]),
                    }
                }
                self.conn.flush_and_read(batch, &mut self.replies).await.map_err(io)?;
                if let Some(bad) = self.replies.iter().find(|v| !is_grant(v) && !matches!(v, Value::Int(1))) {
                    return Err(unexpected("renew", bad));
                }
            }
            (Workload::Fence, style) => {
                let name = self.held[0].0.clone();
                for _ in 0..batch {
                    match style {
                        Style::Native => self.conn.queue(&[b"FENCE", name.as_bytes()]),
                        _ => self.conn.queue(&[b"GET", name.as_bytes()]),
                    }
                }
                self.conn.flush_and_read(batch, &mut self.replies).await.map_err(io)?;
                if let Some(bad) = self.replies.iter().find(|v| !matches!(v, Value::Int(_) | Value::Bulk(_))) {
                    return Err(unexpected("read", bad));
                }
            }
        }
        Ok(batch as u64)
    }

    /// Queues a non-blocking acquire of `name` with `token` for `ttl_ms`.
    fn acquire(&mut self, p: &Params, name: &str, token: &str, ttl_ms: &[u8]) {
        match p.style {
            Style::Native => self.conn.queue(&[b"LOCK", name.as_bytes(), ttl_ms, b"TOKEN", token.as_bytes()]),
            _ => self.conn.queue(&[b"SET", name.as_bytes(), token.as_bytes(), b"NX", b"PX", ttl_ms]),
        }
    }

    /// Queues the release of `name` held with `token`.
    fn release(&mut self, p: &Params, name: &str, token: &str) {
        match p.style {
            Style::Native => self.conn.queue(&[b"UNLOCK", name.as_bytes(), token.as_bytes()]),
            _ => self.conn.queue(&[b"EVALSHA", p.release_sha.as_bytes(), b"1", name.as_bytes(), token.as_bytes()]),
        }
    }

    /// UNLOCK answers the holds left (docs/COMMANDS.md: 0 is released; these locks are
    /// exclusive, so any other count is a hold left behind), the release script the keys
    /// it deleted (1; 0 means the token no longer held the lock). Any other reply is a
    /// failed release, not a cycle.
    fn check_released(&self, style: Style) -> Result<(), String> {
        let released = |v: &Value| match style {
            Style::Native => matches!(v, Value::Int(0)),
            _ => matches!(v, Value::Int(1)),
        };
        match self.replies.iter().find(|v| !released(v)) {
            Some(bad) => Err(unexpected("release", bad)),
            None => Ok(()),
        }
    }
}

impl EtcdClient {
    async fn open(p: &Params, id: usize) -> Result<EtcdClient, String> {
        let mut client = etcd_client::Client::connect(&p.etcd, None).await.map_err(io)?;
        let lease = client.lease_grant(600, None).await.map_err(io)?.id();
        let rng = 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1);
        let mut c = EtcdClient { client, id, lease, held: Vec::new(), keepers: Vec::new(), rng };
        match p.workload {
            Workload::Fence => {
                let key = format!("{}h:{id}", p.prefix);
                c.client.put(key.as_str(), "t", Some(PutOptions::new().with_lease(lease))).await.map_err(io)?;
                c.held.push((key, lease));
            }
            Workload::Renew => {
                // One lease per lock: a lock's TTL is its own, as with SET PX and LOCK.
                for i in 0..(p.renew_locks / p.clients).max(1) {
                    let key = format!("{}h:{id}:{i}", p.prefix);
                    let own = c.client.lease_grant(600, None).await.map_err(io)?.id();
                    c.client.put(key.as_str(), "t", Some(PutOptions::new().with_lease(own))).await.map_err(io)?;
                    c.keepers.push(c.client.lease_keep_alive(own).await.map_err(io)?);
                    c.held.push((key, own));
                }
            }
            Workload::Lock | Workload::Contended => {}
        }
        Ok(c)
    }

    async fn step(&mut self, p: &Params, n: u64) -> Result<u64, String> {
        match p.workload {
            Workload::Lock => {
                let key = format!("{}{}:{}", p.prefix, self.id, n % 1024);
                let acquire = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), "t", Some(PutOptions::new().with_lease(self.lease)))]);
                if !self.client.txn(acquire).await.map_err(io)?.succeeded() {
                    return Err(format!("etcd acquire of free {key} failed"));
                }
                // A delete that removed nothing released nothing (the key was gone).
                let deleted = self.client.delete(key.as_str(), None).await.map_err(io)?.deleted();
                if deleted != 1 {
                    return Err(format!("etcd release of {key} deleted {deleted} keys"));
                }
            }
            Workload::Contended => {
                let name = format!("{}c:{}", p.prefix, next_random(&mut self.rng) % p.contended_names as u64);
                let options = LockOptions::new().with_lease(self.lease);
                let held = self.client.lock(name.as_str(), Some(options)).await.map_err(io)?;
                self.client.unlock(held.key()).await.map_err(io)?;
            }
            Workload::Renew => {
                let i = (n % self.keepers.len() as u64) as usize;
                let (keeper, stream) = &mut self.keepers[i];
                keeper.keep_alive().await.map_err(io)?;
                match stream.message().await.map_err(io)? {
                    Some(r) if r.ttl() > 0 => {}
                    other => return Err(format!("etcd keep-alive answered {other:?}")),
                }
            }
            Workload::Fence => {
                let got = self.client.get(self.held[0].0.as_str(), None).await.map_err(io)?;
                if got.kvs().is_empty() {
                    return Err("etcd lost a held key".into());
                }
            }
        }
        Ok(1)
    }
}
