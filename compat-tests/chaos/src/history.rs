//! What the workers record. Times are milliseconds since the run began, on the
//! harness's one monotonic clock.

/// One grant of a lock (or a permit) as its client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Which worker.
    pub worker: usize,
    /// `native` (LOCK with a TTL), `session` (LOCK held by a session), `redlock` (SET NX
    /// PX), `permit` (SEM.ACQUIRE) or `election` (ELECT.CAMPAIGN).
    pub kind: &'static str,
    /// Lock or semaphore name.
    pub name: String,
    /// The token (unique per attempt).
    pub token: String,
    /// The fence (native locks and permits).
    pub fence: Option<u64>,
    /// When the acquire was sent.
    pub invoked_ms: f64,
    /// When the grant arrived: the client may act from here.
    pub granted_ms: f64,
    /// Until when the client may believe it holds it: the last successful acquire or
    /// renew's send time + TTL × (1 − drift), or the release's send time if earlier.
    pub valid_until_ms: f64,
}

/// A register operation's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegOp {
    /// SET key v.
    Write(i64),
    /// GET key → the value (0 when absent).
    Read,
    /// INCR key → the new value.
    Incr,
}

/// One register operation.
#[derive(Debug, Clone, PartialEq)]
pub struct RegCall {
    /// Which worker.
    pub worker: usize,
    /// The key.
    pub key: String,
    /// What it did.
    pub op: RegOp,
    /// Sent.
    pub invoked_ms: f64,
    /// Answered; None when the outcome is unknown (timeout, TRYAGAIN, broken
    /// connection after sending): it may have taken effect at any later time.
    pub completed_ms: Option<f64>,
    /// The value a read or INCR returned.
    pub result: Option<i64>,
    /// The client port of the node that answered (diagnosis).
    pub port: u16,
}

/// A write to the protected resource with a fence.
#[derive(Debug, Clone, PartialEq)]
pub struct FencedWrite {
    /// Which worker.
    pub worker: usize,
    /// The lock it held.
    pub name: String,
    /// Its fence.
    pub fence: u64,
    /// When it wrote.
    pub at_ms: f64,
    /// Whether the resource accepted it.
    pub accepted: bool,
    /// Whether the writer was, by its own conservative reckoning, still the holder.
    pub within_validity: bool,
    /// The highest fence the resource had seen before.
    pub highest_before: u64,
}

/// Everything recorded in a run.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Lock and permit grants.
    pub grants: Vec<Grant>,
    /// Register operations.
    pub registers: Vec<RegCall>,
    /// Writes to the protected resource.
    pub fenced_writes: Vec<FencedWrite>,
    /// Acknowledged unique writes (key, value) for the lost-write check.
    pub acked: Vec<(String, String)>,
    /// Operations by outcome: ok, fail (definite), unknown.
    pub outcomes: std::collections::BTreeMap<String, [u64; 3]>,
    /// Queue and list deliveries.
    pub queues: Deliveries,
    /// Reads of keys written with a TTL.
    pub expiring: Vec<ExpiringRead>,
}

/// A read of a key one worker wrote with `SET key value PX ttl` (only that worker
/// writes the key, and every value once), from any node.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiringRead {
    /// Which worker.
    pub worker: usize,
    /// The key.
    pub key: String,
    /// The value the acknowledged SET wrote.
    pub value: String,
    /// When that SET was sent.
    pub set_invoked_ms: f64,
    /// The SET's TTL.
    pub ttl_ms: u64,
    /// When the read was sent.
    pub invoked_ms: f64,
    /// When its answer came.
    pub completed_ms: f64,
    /// True: it returned the value; false: nil (the key had expired).
    pub present: bool,
    /// The client port of the node that answered.
    pub port: u16,
}

/// A push's outcome as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Acknowledged: the item must be delivered once or still be there at the end.
    Acked,
    /// Refused before it could apply: the item must never appear.
    Refused,
    /// No answer, or an answer that says it may have applied.
    Unknown,
}

impl PushOutcome {
    /// The outcome as `History::count` takes it: 0 ok, 1 definite failure, 2 unknown.
    pub fn counted(self) -> usize {
        match self {
            PushOutcome::Acked => 0,
            PushOutcome::Refused => 1,
            PushOutcome::Unknown => 2,
        }
    }
}

/// What went into and came out of the queues and lists, per key. Values are unique per
/// push attempt.
#[derive(Debug, Default, Clone)]
pub struct Deliveries {
    /// Every push attempt: (key, value, outcome).
    pub pushed: Vec<(String, String, PushOutcome)>,
    /// Every value a pop returned: (key, value).
    pub popped: Vec<(String, String)>,
    /// Pops sent whose answer never came, per key: each may have taken one item.
    pub unknown_pops: std::collections::BTreeMap<String, u64>,
    /// What was left at the end (drained after every node restarted): (key, value).
    pub remaining: Vec<(String, String)>,
}

impl History {
    /// Counts an operation's outcome (0 ok, 1 definite failure, 2 unknown).
    pub fn count(&mut self, what: &str, outcome: usize) {
        self.outcomes.entry(what.to_string()).or_default()[outcome] += 1;
    }
}
