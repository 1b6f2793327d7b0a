//! The client workers. Each connects to a random node over plain RESP, switches node
//! when its connection breaks, and records what it invoked and what came back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::history::{ExpiringRead, FencedWrite, Grant, History, PushOutcome, RegCall, RegOp};
use crate::resp::{CallError, Conn, Reply};

/// How long a client waits for any reply (the server answers TRYAGAIN within 3 s).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// Lock and permit lease.
pub const TTL_MS: u64 = 1_500;
/// Lock names, register keys and semaphores the workers share (contention).
const NAMES: u64 = 3;
const RELEASE_SCRIPT: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// A small deterministic generator (xorshift64*), seeded per worker.
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What the workers share.
pub struct Shared {
    /// The history.
    pub history: Mutex<History>,
    /// The protected resource: the highest fence seen per lock name.
    pub resource: Mutex<HashMap<String, u64>>,
    /// When the run began.
    pub start: Instant,
    /// Cleared to stop the workers.
    pub running: AtomicBool,
    /// Client ports of the nodes.
    pub ports: Vec<u16>,
    /// The clock drift the validity windows allow for (fraction).
    pub drift: f64,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    fn count(&self, what: &str, outcome: usize) {
        self.history.lock().unwrap().count(what, outcome);
    }

    /// The resource accepts a write whose fence is at least the highest it has seen.
    fn write_resource(&self, worker: usize, name: &str, fence: u64, valid_until_ms: f64) {
        let at_ms = self.now();
        let mut resource = self.resource.lock().unwrap();
        let highest = resource.entry(name.to_string()).or_insert(0);
        let highest_before = *highest;
        let accepted = fence >= highest_before;
        if accepted {
            *highest = fence;
        }
        drop(resource);
        let write = FencedWrite {
            worker,
            name: name.to_string(),
            fence,
            at_ms,
            accepted,
            within_validity: at_ms < valid_until_ms,
            highest_before,
        };
        self.history.lock().unwrap().fenced_writes.push(write);
    }
}

/// The kinds of worker.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// LOCK / RENEW / UNLOCK with fenced writes to the resource.
    Native,
    /// SET NX PX + the compare-and-delete script, as Redlock clients do.
    Redlock,
    /// SEM.ACQUIRE / SEM.RELEASE on a semaphore of 2.
    Permit,
    /// ELECT.CAMPAIGN / ELECT.RENEW / ELECT.RESIGN: leadership terms.
    Election,
    /// SET / GET / INCR on shared registers.
    Register,
    /// Unique acknowledged writes, read back at the end.
    Ack,
    /// SESSION.OPEN / KEEPALIVE / CLOSE, with native locks held by the session (on the
    /// native workers' lock names and protected resource).
    Session,
    /// Unique items pushed to and popped from a queue (QUEUE.PUSH / QUEUE.POP WAIT)
    /// and a list (RPUSH / BLPOP), each pop blocking.
    Queue,
    /// `SET key value PX 200` on a key of its own, then GETs of it from every node in
    /// turn across its expiry.
    Expiring,
}

/// A session worker's session: its id and until when the client may count on it
/// (the last successful OPEN or KEEPALIVE's send time + TTL × (1 − drift)).
#[derive(Debug, Clone, Copy)]
pub struct Session {
    id: i64,
    valid_until_ms: f64,
}

/// One worker until `running` is cleared.
pub async fn run(shared: Arc<Shared>, worker: usize, kind: Kind, seed: u64) {
    let mut rng = Rng::new(seed ^ (worker as u64).wrapping_mul(0x1000_0001));
    let mut conn: Option<Conn> = None;
    let mut n: u64 = 0;
    let mut session: Option<Session> = None;
    // The Expiring worker's readers, one per node.
    let mut readers: Vec<Option<Conn>> = (0..shared.ports.len()).map(|_| None).collect();
    while shared.running.load(Ordering::Relaxed) {
        if conn.is_none() {
            let port = shared.ports[rng.below(shared.ports.len() as u64) as usize];
            conn = Conn::connect(port, Duration::from_secs(1)).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        n += 1;
        let c = conn.as_mut().expect("connected above");
        let broken = match kind {
            Kind::Native => native(&shared, c, worker, n, &mut rng).await,
            Kind::Redlock => redlock(&shared, c, worker, n, &mut rng).await,
            Kind::Permit => permit(&shared, c, worker, n, &mut rng).await,
            Kind::Election => election(&shared, c, worker, n, &mut rng).await,
            Kind::Register => register(&shared, c, worker, n, &mut rng).await,
            Kind::Ack => ack(&shared, c, worker, n).await,
            Kind::Session => session_locks(&shared, c, worker, n, &mut rng, &mut session).await,
            Kind::Queue => queue(&shared, c, worker, n, &mut rng).await,
            Kind::Expiring => expiring(&shared, c, worker, n, &mut rng, &mut readers).await,
        };
        if broken {
            conn = None;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
    }
}

/// Reply classes: Ok(reply) for an answer, Err(true) for unknown (connection broken).
async fn call(c: &mut Conn, args: &[&str]) -> Result<Reply, bool> {
    match c.call(args, CALL_TIMEOUT).await {
        Ok(reply) => Ok(reply),
        Err(CallError::NotSent) => Err(false),
        Err(CallError::Unknown) => Err(true),
    }
}

/// An error answer after which the command may still have applied: TRYAGAIN (the
/// server says when a write may have been applied, and a client cannot tell the
/// kinds apart without parsing its text), and `ERR node failure` (a node stopping or
/// failing after it proposed the write). Every other error is a refusal before the
/// command could apply.
fn retryable(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with("TRYAGAIN") || e.starts_with("ERR node failure"))
}

async fn native(s: &Shared, c: &mut Conn, worker: usize, n: u64, rng: &mut Rng) -> bool {
    let name = format!("lock:{}", rng.below(NAMES));
    let token = format!("w{worker}-{n}");
    let ttl = TTL_MS.to_string();
    let invoked = s.now();
    let reply = match call(c, &["LOCK", &name, &ttl, "TOKEN", &token, "WAIT", "300"]).await {
        Err(broken) => {
            s.count("lock", 2);
            return broken;
        }
        Ok(reply) => reply,
    };
    let Some(fence) = reply.int_field("fence") else {
        s.count("lock", if retryable(&reply) { 2 } else { 1 });
        return false;
    };
    s.count("lock", 0);
    let mut g = Grant {
        worker,
        kind: "native",
        name: name.clone(),
        token: token.clone(),
        fence: Some(fence as u64),
        invoked_ms: invoked,
        granted_ms: s.now(),
        valid_until_ms: invoked + TTL_MS as f64 * (1.0 - s.drift),
    };
    s.write_resource(worker, &name, fence as u64, g.valid_until_ms);
    let mut broken = false;
    // Most holds are short; one in eight lasts several TTLs, renewed every third of
    // one as clients keep a lock, so a fault that lands mid-hold (a failover, a paused
    // leader) meets a lease that must survive it.
    let renewals = match rng.below(8) {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2 + rng.below(6),
    };
    for round in 0..renewals {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(TTL_MS / 3)).await;
            s.write_resource(worker, &name, fence as u64, g.valid_until_ms);
        }
        let renewed_at = s.now();
        match call(c, &["RENEW", &name, &token, &ttl]).await {
            Ok(reply) if reply.int_field("fence").is_some() => {
                s.count("renew", 0);
                g.valid_until_ms = g.valid_until_ms.max(renewed_at + TTL_MS as f64 * (1.0 - s.drift));
            }
            Ok(reply) => {
                s.count("renew", if retryable(&reply) { 2 } else { 1 });
                break;
            }
            Err(b) => {
                s.count("renew", 2);
                broken = b;
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
    s.write_resource(worker, &name, fence as u64, g.valid_until_ms);
    // The holder stops acting before it sends the release.
    g.valid_until_ms = g.valid_until_ms.min(s.now());
    if !broken {
        match call(c, &["UNLOCK", &name, &token]).await {
            Ok(Reply::Int(_)) => s.count("unlock", 0),
            Ok(reply) => s.count("unlock", if retryable(&reply) { 2 } else { 1 }),
            Err(b) => {
                s.count("unlock", 2);
                broken = b;
            }
        }
    }
    s.history.lock().unwrap().grants.push(g);
    broken
}

async fn redlock(s: &Shared, c: &mut Conn, worker: usize, n: u64, rng: &mut Rng) -> bool {
    let name = format!("redlock:{}", rng.below(NAMES));
    let token = format!("r{worker}-{n}");
    let invoked = s.now();
    match call(c, &["SET", &name, &token, "NX", "PX", &TTL_MS.to_string()]).await {
        Err(broken) => {
            s.count("redlock", 2);
            broken
        }
        Ok(Reply::Simple(ok)) if ok == "OK" => {
            s.count("redlock", 0);
            let granted = s.now();
            tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
            let valid_until = (invoked + TTL_MS as f64 * (1.0 - s.drift)).min(s.now());
            let grant = Grant {
                worker,
                kind: "redlock",
                name: name.clone(),
                token: token.clone(),
                fence: None,
                invoked_ms: invoked,
                granted_ms: granted,
                valid_until_ms: valid_until,
            };
            s.history.lock().unwrap().grants.push(grant);
            match call(c, &["EVAL", RELEASE_SCRIPT, "1", &name, &token]).await {
                Ok(Reply::Int(_)) => {
                    s.count("redlock-release", 0);
                    false
                }
                Ok(_) => {
                    s.count("redlock-release", 2);
                    false
                }
                Err(broken) => {
                    s.count("redlock-release", 2);
                    broken
                }
            }
        }
        Ok(reply) => {
            s.count("redlock", if retryable(&reply) { 2 } else { 1 });
            false
        }
    }
}

async fn permit(s: &Shared, c: &mut Conn, worker: usize, n: u64, rng: &mut Rng) -> bool {
    let name = "sem:0".to_string();
    let token = format!("p{worker}-{n}");
    let invoked = s.now();
    let reply = match call(c, &["SEM.ACQUIRE", &name, "2", &TTL_MS.to_string(), "TOKEN", &token, "WAIT", "300"]).await {
        Err(broken) => {
            s.count("permit", 2);
            return broken;
        }
        Ok(reply) => reply,
    };
    let Some(fence) = reply.int_field("fence") else {
        s.count("permit", if retryable(&reply) { 2 } else { 1 });
        return false;
    };
    s.count("permit", 0);
    let granted = s.now();
    tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
    let grant = Grant {
        worker,
        kind: "permit",
        name: name.clone(),
        token: token.clone(),
        fence: Some(fence as u64),
        invoked_ms: invoked,
        granted_ms: granted,
        valid_until_ms: (invoked + TTL_MS as f64 * (1.0 - s.drift)).min(s.now()),
    };
    s.history.lock().unwrap().grants.push(grant);
    match call(c, &["SEM.RELEASE", &name, &token]).await {
        Ok(_) => false,
        Err(broken) => broken,
    }
}

async fn election(s: &Shared, c: &mut Conn, worker: usize, n: u64, rng: &mut Rng) -> bool {
    let name = "election:0".to_string();
    let token = format!("e{worker}-{n}");
    let candidate = format!("candidate-{worker}");
    let ttl = TTL_MS.to_string();
    let invoked = s.now();
    let reply = match call(c, &["ELECT.CAMPAIGN", &name, &candidate, &ttl, "TOKEN", &token, "WAIT", "300"]).await {
        Err(broken) => {
            s.count("campaign", 2);
            return broken;
        }
        Ok(reply) => reply,
    };
    let Some(fence) = reply.int_field("fence") else {
        s.count("campaign", if retryable(&reply) { 2 } else { 1 });
        return false;
    };
    s.count("campaign", 0);
    let mut term = Grant {
        worker,
        kind: "election",
        name: name.clone(),
        token: token.clone(),
        fence: Some(fence as u64),
        invoked_ms: invoked,
        granted_ms: s.now(),
        valid_until_ms: invoked + TTL_MS as f64 * (1.0 - s.drift),
    };
    let mut broken = false;
    if rng.below(2) == 0 {
        let renewed_at = s.now();
        match call(c, &["ELECT.RENEW", &name, &token, &ttl]).await {
            Ok(reply) if reply.int_field("fence").is_some() => {
                s.count("elect-renew", 0);
                term.valid_until_ms = term.valid_until_ms.max(renewed_at + TTL_MS as f64 * (1.0 - s.drift));
            }
            Ok(reply) => s.count("elect-renew", if retryable(&reply) { 2 } else { 1 }),
            Err(b) => {
                s.count("elect-renew", 2);
                broken = b;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
    term.valid_until_ms = term.valid_until_ms.min(s.now());
    if !broken {
        match call(c, &["ELECT.RESIGN", &name, &token]).await {
            Ok(Reply::Simple(_)) => s.count("resign", 0),
            Ok(reply) => s.count("resign", if retryable(&reply) { 2 } else { 1 }),
            Err(b) => {
                s.count("resign", 2);
                broken = b;
            }
        }
    }
    s.history.lock().unwrap().grants.push(term);
    broken
}

async fn register(s: &Shared, c: &mut Conn, worker: usize, n: u64, rng: &mut Rng) -> bool {
    let key = format!("reg:{}", rng.below(NAMES));
    let roll = rng.below(10);
    let (op, value) = if roll < 4 {
        let v = (worker as i64) * 1_000_000 + n as i64;
        (RegOp::Write(v), v.to_string())
    } else if roll < 8 {
        (RegOp::Read, String::new())
    } else {
        (RegOp::Incr, String::new())
    };
    let invoked = s.now();
    let answer = match op {
        RegOp::Write(_) => call(c, &["SET", &key, &value]).await,
        RegOp::Read => call(c, &["GET", &key]).await,
        RegOp::Incr => call(c, &["INCR", &key]).await,
    };
    let completed = s.now();
    let (completed_ms, result, outcome, broken) = match answer {
        Err(broken) => (None, None, 2, broken),
        Ok(reply) if retryable(&reply) => (None, None, 2, false),
        Ok(Reply::Error(_)) => {
            // A definite failure (a refusal, `retryable` says which): it did not apply.
            s.count("register", 1);
            return false;
        }
        Ok(Reply::Simple(_)) => (Some(completed), None, 0, false),
        Ok(Reply::Nil) => (Some(completed), Some(0), 0, false),
        Ok(Reply::Int(i)) => (Some(completed), Some(i), 0, false),
        Ok(Reply::Bulk(text)) => (Some(completed), text.parse().ok(), 0, false),
        Ok(Reply::Array(_)) => (Some(completed), None, 1, false),
    };
    s.count("register", outcome);
    let call = RegCall { worker, key, op, invoked_ms: invoked, completed_ms, result, port: c.port };
    s.history.lock().unwrap().registers.push(call);
    broken
}

/// Keeps the session alive (or opens one), takes a lock owned by it, writes to the
/// resource, and lets go by UNLOCK or by closing the whole session.
async fn session_locks(
    s: &Shared,
    c: &mut Conn,
    worker: usize,
    n: u64,
    rng: &mut Rng,
    session: &mut Option<Session>,
) -> bool {
    let ttl = TTL_MS.to_string();
    let lifetime = TTL_MS as f64 * (1.0 - s.drift);
    let Some(mut current) = *session else {
        let invoked = s.now();
        return match call(c, &["SESSION.OPEN", &ttl]).await {
            Ok(Reply::Int(id)) => {
                s.count("session-open", 0);
                *session = Some(Session { id, valid_until_ms: invoked + lifetime });
                false
            }
            Ok(reply) => {
                s.count("session-open", if retryable(&reply) { 2 } else { 1 });
                false
            }
            Err(broken) => {
                s.count("session-open", 2);
                broken
            }
        };
    };
    let id = current.id.to_string();
    // Keep-alive: success extends what the client counts on; NOSESSION means it is gone.
    let keep_alive =
        |current: &mut Session, session: &mut Option<Session>, reply: Result<Reply, bool>, sent: f64| match reply {
            Ok(Reply::Int(_)) => {
                s.count("session-keepalive", 0);
                current.valid_until_ms = current.valid_until_ms.max(sent + lifetime);
                *session = Some(*current);
                Ok(true)
            }
            Ok(Reply::Error(e)) if e.starts_with("NOSESSION") => {
                s.count("session-keepalive", 1);
                *session = None;
                Ok(false)
            }
            Ok(reply) => {
                s.count("session-keepalive", if retryable(&reply) { 2 } else { 1 });
                Ok(true)
            }
            Err(broken) => {
                s.count("session-keepalive", 2);
                Err(broken)
            }
        };
    let sent = s.now();
    let reply = call(c, &["SESSION.KEEPALIVE", &id]).await;
    match keep_alive(&mut current, session, reply, sent) {
        Ok(true) => {}
        Ok(false) => return false,
        Err(broken) => return broken,
    }
    if current.valid_until_ms <= s.now() {
        // Nothing the client can count on: start over with a fresh session.
        *session = None;
        return false;
    }
    let name = format!("lock:{}", rng.below(NAMES));
    let token = format!("s{worker}-{n}");
    let invoked = s.now();
    let reply = match call(c, &["LOCK", &name, "0", "TOKEN", &token, "SESSION", &id, "WAIT", "300"]).await {
        Err(broken) => {
            s.count("session-lock", 2);
            return broken;
        }
        Ok(reply) => reply,
    };
    let Some(fence) = reply.int_field("fence") else {
        match &reply {
            Reply::Error(e) if e.starts_with("NOSESSION") => *session = None,
            _ => {}
        }
        s.count("session-lock", if retryable(&reply) { 2 } else { 1 });
        return false;
    };
    s.count("session-lock", 0);
    // The lock lives as long as the session: the client may count on it until the
    // session's own validity.
    let mut g = Grant {
        worker,
        kind: "session",
        name: name.clone(),
        token: token.clone(),
        fence: Some(fence as u64),
        invoked_ms: invoked,
        granted_ms: s.now(),
        valid_until_ms: current.valid_until_ms,
    };
    s.write_resource(worker, &name, fence as u64, g.valid_until_ms);
    let mut broken = false;
    if rng.below(2) == 0 {
        let sent = s.now();
        let reply = call(c, &["SESSION.KEEPALIVE", &id]).await;
        match keep_alive(&mut current, session, reply, sent) {
            Ok(_) => g.valid_until_ms = current.valid_until_ms,
            Err(b) => broken = b,
        }
    }
    tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
    s.write_resource(worker, &name, fence as u64, g.valid_until_ms);
    g.valid_until_ms = g.valid_until_ms.min(s.now());
    if !broken {
        if rng.below(2) == 0 {
            match call(c, &["UNLOCK", &name, &token]).await {
                Ok(Reply::Int(_)) => s.count("unlock", 0),
                Ok(reply) => s.count("unlock", if retryable(&reply) { 2 } else { 1 }),
                Err(b) => {
                    s.count("unlock", 2);
                    broken = b;
                }
            }
        } else {
            // Closing the session releases its lock with everything else it owns.
            *session = None;
            match call(c, &["SESSION.CLOSE", &id]).await {
                Ok(Reply::Simple(_)) => s.count("session-close", 0),
                Ok(reply) => s.count("session-close", if retryable(&reply) { 2 } else { 1 }),
                Err(b) => {
                    s.count("session-close", 2);
                    broken = b;
                }
            }
        }
    }
    s.history.lock().unwrap().grants.push(g);
    broken
}

async fn ack(s: &Shared, c: &mut Conn, worker: usize, n: u64) -> bool {
    let key = format!("ack:{worker}:{n}");
    let value = format!("v{n}");
    match call(c, &["SET", &key, &value]).await {
        Ok(Reply::Simple(ok)) if ok == "OK" => {
            s.count("ack-write", 0);
            s.history.lock().unwrap().acked.push((key, value));
            false
        }
        Ok(reply) => {
            s.count("ack-write", if retryable(&reply) { 2 } else { 1 });
            false
        }
        Err(broken) => {
            s.count("ack-write", 2);
            broken
        }
    }
}

/// The queue the queue workers share, and the list.
pub const QUEUE_KEY: &str = "queue:0";
/// The list the queue workers share.
pub const LIST_KEY: &str = "list:0";

/// Pushes a unique item or pops one (blocking up to 300 ms), on the queue or the list.
async fn queue(s: &Shared, c: &mut Conn, worker: usize, n: u64, rng: &mut Rng) -> bool {
    let list = rng.below(2) == 0;
    let key = if list { LIST_KEY } else { QUEUE_KEY };
    if rng.below(2) == 0 {
        let value = format!("q{worker}-{n}");
        let command = if list { "RPUSH" } else { "QUEUE.PUSH" };
        let (outcome, broken) = match call(c, &[command, key, &value]).await {
            Ok(Reply::Int(_)) => (PushOutcome::Acked, false),
            Ok(reply) if retryable(&reply) => (PushOutcome::Unknown, false),
            Ok(_) => (PushOutcome::Refused, false),
            Err(broken) => (PushOutcome::Unknown, broken),
        };
        s.count("queue-push", outcome.counted());
        s.history.lock().unwrap().queues.pushed.push((key.to_string(), value, outcome));
        return broken;
    }
    let reply =
        if list { call(c, &["BLPOP", key, "0.3"]).await } else { call(c, &["QUEUE.POP", key, "WAIT", "300"]).await };
    // (outcome as `History::count` takes it, the item, whether the connection broke)
    let (outcome, popped, broken) = match reply {
        Ok(Reply::Bulk(value)) if !list => (0, Some(value), false),
        Ok(Reply::Array(items)) if list && items.len() == 2 => match &items[1] {
            Reply::Bulk(value) => (0, Some(value.clone()), false),
            _ => (1, None, false),
        },
        Ok(reply) if retryable(&reply) => (2, None, false),
        // Nil (nothing came within the wait), or a refusal.
        Ok(_) => (1, None, false),
        Err(broken) => (2, None, broken),
    };
    s.count("queue-pop", outcome);
    let mut history = s.history.lock().unwrap();
    match popped {
        Some(value) => history.queues.popped.push((key.to_string(), value)),
        // A pop that may have applied may have taken an item nobody will see.
        None if outcome == 2 => *history.queues.unknown_pops.entry(key.to_string()).or_default() += 1,
        None => {}
    }
    broken
}

/// The Expiring worker's TTL.
pub const EXPIRING_TTL_MS: u64 = 200;

/// Writes a fresh value with a short TTL to the worker's own key, then reads it from
/// every node in turn, a few milliseconds apart, until well past the TTL: the reads
/// around the expiry are where a node that answered from its own clock, ahead of the
/// log, would disagree with the others.
async fn expiring(
    s: &Shared,
    c: &mut Conn,
    worker: usize,
    n: u64,
    rng: &mut Rng,
    readers: &mut [Option<Conn>],
) -> bool {
    let key = format!("ttl:{worker}");
    let value = format!("t{worker}-{n}");
    let set_invoked = s.now();
    match call(c, &["SET", &key, &value, "PX", &EXPIRING_TTL_MS.to_string()]).await {
        Ok(Reply::Simple(ok)) if ok == "OK" => s.count("expiring-set", 0),
        Ok(reply) => {
            s.count("expiring-set", if retryable(&reply) { 2 } else { 1 });
            return false;
        }
        Err(broken) => {
            s.count("expiring-set", 2);
            return broken;
        }
    }
    let until = set_invoked + EXPIRING_TTL_MS as f64 * 2.0;
    let mut next = rng.below(readers.len() as u64) as usize;
    while s.now() < until {
        let i = next % readers.len();
        next += 1;
        if readers[i].is_none() {
            readers[i] = Conn::connect(s.ports[i], Duration::from_millis(200)).await;
        }
        let Some(reader) = readers[i].as_mut() else { continue };
        let invoked = s.now();
        let present = match reader.call(&["GET", &key], Duration::from_secs(1)).await {
            Ok(Reply::Bulk(v)) if v == value => true,
            Ok(Reply::Nil) => false,
            Ok(_) => continue,
            Err(_) => {
                readers[i] = None;
                continue;
            }
        };
        let read = ExpiringRead {
            worker,
            key: key.clone(),
            value: value.clone(),
            set_invoked_ms: set_invoked,
            ttl_ms: EXPIRING_TTL_MS,
            invoked_ms: invoked,
            completed_ms: s.now(),
            present,
            port: s.ports[i],
        };
        s.count("expiring-read", 0);
        s.history.lock().unwrap().expiring.push(read);
        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
    }
    false
}
