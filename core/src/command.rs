//! What goes into the state machine (`Command`) and what comes out (`Reply`, `Event`).
//!
//! Commands are the payload of Raft log entries, so they are plain data with serde:
//! every field that varies with time or chance (tokens, stamps) is chosen by the
//! client or the leader before the entry is written, never during apply.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A session is named by the log index of the entry that opened it.
pub type SessionId = u64;
/// A waiter is named by the log index of the entry that queued it, so the server can
/// match later `Event`s to the connection whose request produced that entry.
pub type WaiterId = u64;

/// Exclusive (write) or shared (read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LockMode {
    /// One holder at a time.
    Exclusive,
    /// Any number of holders, never together with an exclusive holder.
    Shared,
}

/// What to do when the resource is not available now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// Fail at once (`Error::Locked`, or an empty reply for pops).
    Try,
    /// Join the wait queue: higher `priority` first, FIFO within a priority. The wait
    /// ends by grant, by `wait_ms` passing (None: no bound), by `CancelWait`, or by the
    /// waiter's session ending.
    Queue {
        /// The wait bound; `None` waits until granted or cancelled.
        wait_ms: Option<u64>,
        /// Higher is served first.
        priority: i32,
    },
}

/// A guard checked when a conditional acquire arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The Redis key holds this string value (`None`: the key does not exist).
    KeyEquals {
        /// The key to look at.
        key: Bytes,
        /// The expected value.
        value: Option<Bytes>,
    },
    /// The lock or key `name` currently has this fence (0: not held / no fence).
    FenceEquals {
        /// The lock or key to look at.
        name: Bytes,
        /// The expected fence.
        fence: u64,
    },
}

/// An acquire of one lock or an atomic group of locks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    /// One name, or several acquired all-or-none.
    pub names: Vec<Bytes>,
    /// Who acquires: the same owner (and token) acquiring again is reentrant.
    pub owner: Bytes,
    /// The secret that releases and renews, chosen by the client.
    pub token: Bytes,
    /// Exclusive or shared.
    pub mode: LockMode,
    /// Lease length from the grant; 0 means "as long as the session lives".
    pub ttl_ms: u64,
    /// The session that owns the lock, if any.
    pub session: Option<SessionId>,
    /// Bytes stored with the lock and shown by lock info.
    pub metadata: Bytes,
    /// Try or queue.
    pub wait: Wait,
    /// Checked once, when the request arrives.
    pub condition: Option<Condition>,
    /// The token is this acquire's request id: when the owner already holds every
    /// name with it, answer that grant without adding a hold (the lease is lengthened
    /// to `ttl_ms` from now, as for any reentry: the client counts it from the retry),
    /// so a client retrying after a lost reply never ends up holding twice.
    pub idempotent: bool,
}

/// SET's NX / XX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    /// No condition.
    Always,
    /// NX: only if the key does not exist.
    IfAbsent,
    /// XX: only if the key exists.
    IfPresent,
}

/// SET's expiry options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetExpiry {
    /// No option: the key has no TTL afterwards (Redis clears it).
    Clear,
    /// KEEPTTL.
    Keep,
    /// EX / PX (and EXAT / PXAT, converted by the leader to a relative time).
    /// 0 means the key is written already expired, as Redis does for a past PXAT.
    InMs(u64),
}

/// SET with all of Redis's options. A SET that creates the key (NX or not) records a
/// fence for it, strictly above every fence before: FENCE key returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRequest {
    /// The key.
    pub key: Bytes,
    /// The new string value.
    pub value: Bytes,
    /// NX / XX.
    pub condition: SetCondition,
    /// EX / PX / KEEPTTL.
    pub expiry: SetExpiry,
    /// GET: reply with the old value.
    pub get: bool,
    /// Ephemeral key owned by this session (deleted when it ends).
    pub session: Option<SessionId>,
}

/// Acquire permits of a counting semaphore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaphoreRequest {
    /// The semaphore.
    pub name: Bytes,
    /// Its size; fixed by the first acquire while the semaphore exists.
    pub limit: u32,
    /// Permits taken by this acquire (at least 1).
    pub count: u32,
    /// Who acquires (for lock info; permits are not reentrant).
    pub owner: Bytes,
    /// Releases and renews these permits; unique among the semaphore's holders.
    pub token: Bytes,
    /// Lease length; 0 means "as long as the session lives".
    pub ttl_ms: u64,
    /// Owning session.
    pub session: Option<SessionId>,
    /// Try or queue.
    pub wait: Wait,
}

/// Stand as a candidate in a leader election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRequest {
    /// The election.
    pub name: Bytes,
    /// The candidate's identity (what `Transfer` names).
    pub candidate: Bytes,
    /// Secret for proclaim, resign, transfer and renew.
    pub token: Bytes,
    /// The value the leader publishes (its address, say).
    pub value: Bytes,
    /// Leadership lease; 0 means "as long as the session lives".
    pub ttl_ms: u64,
    /// Owning session.
    pub session: Option<SessionId>,
    /// Try or queue (FIFO among candidates).
    pub wait: Wait,
}

/// Every change and every read the state machine knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Only advances the replicated clock; everything due at the stamp expires. The
    /// leader proposes it when the earliest deadline has passed on its clock.
    Tick,
    /// A new leader's first entry: its stamps start a new time base that continues
    /// from the replicated clock, so every lease's remaining time restarts from the
    /// new leader's clock and nothing expires early because clocks differ.
    Rebase,

    /// Acquire a lock or group (LOCK).
    Lock(LockRequest),
    /// Release one hold of a lock or group (UNLOCK).
    Unlock {
        /// The names, as acquired.
        names: Vec<Bytes>,
        /// The holder's token.
        token: Bytes,
    },
    /// End the queued wait of an acquire by its token (LOCK.WITHDRAW, from another
    /// connection: a client that gave up on a blocking acquire without closing the
    /// connection it waits on). Never touches a holder.
    LockWithdraw {
        /// The names, as asked for.
        names: Vec<Bytes>,
        /// The waiting acquire's token.
        token: Bytes,
    },
    /// Extend a held lease to `ttl_ms` from now (RENEW). Never revives an expired one.
    Renew {
        /// The names, as acquired.
        names: Vec<Bytes>,
        /// The holder's token.
        token: Bytes,
        /// New lease length from now.
        ttl_ms: u64,
    },
    /// Leave any wait queue (the client went away or gave up).
    CancelWait {
        /// The waiter, as returned in `Reply::Queued`.
        waiter: WaiterId,
    },
    /// The current fence of a lock, else of a key created by SET (FENCE).
    Fence {
        /// Lock or key name.
        name: Bytes,
    },
    /// Holders, mode and queue length of a lock.
    LockInfo {
        /// Lock name.
        name: Bytes,
    },

    /// Open a session with this TTL.
    SessionOpen {
        /// Keep-alive interval bound.
        ttl_ms: u64,
    },
    /// Push a session's deadline to now + TTL.
    SessionKeepAlive {
        /// The session.
        session: SessionId,
        /// A new TTL, or keep the current one.
        ttl_ms: Option<u64>,
    },
    /// Close a session, releasing all it owns.
    SessionClose {
        /// The session.
        session: SessionId,
    },
    /// TTL, remaining time and owned-resource count of a session.
    SessionInfo {
        /// The session.
        session: SessionId,
    },

    /// SET.
    Set(SetRequest),
    /// GET.
    Get {
        /// The key.
        key: Bytes,
    },
    /// DEL: replies with the number removed.
    Del {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// EXISTS: replies with the number present (repeats count again, as Redis).
    Exists {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// PEXPIRE / EXPIRE: 0 deletes the key now; replies 1 if the key exists.
    PExpire {
        /// The key.
        key: Bytes,
        /// New TTL.
        ttl_ms: u64,
    },
    /// PERSIST.
    Persist {
        /// The key.
        key: Bytes,
    },
    /// PTTL: -2 no key, -1 no TTL, else milliseconds left.
    PTtl {
        /// The key.
        key: Bytes,
    },
    /// INCRBY / INCR / DECR / DECRBY.
    IncrBy {
        /// The key.
        key: Bytes,
        /// Added to the integer value (missing key counts as 0).
        delta: i64,
    },
    /// KEYS pattern (Redis glob), sorted.
    Keys {
        /// The glob.
        pattern: Bytes,
    },
    /// SCAN [MATCH p] [COUNT n] [TYPE t], resuming after a key: replies
    /// `[next-after-key or nil, [keys...]]`. Resuming after a key (not at a position)
    /// means keys present for the whole scan are returned even if others are deleted;
    /// the server maps Redis's integer cursors onto these keys.
    Scan {
        /// Resume after this key; None starts from the first key.
        after: Option<Bytes>,
        /// MATCH.
        pattern: Option<Bytes>,
        /// COUNT (keys examined per call).
        count: u64,
        /// TYPE filter (`string`, `hash`, `list`).
        kind: Option<Bytes>,
    },
    /// TYPE.
    Type {
        /// The key.
        key: Bytes,
    },
    /// DBSIZE.
    DbSize,
    /// HSET key field value [field value ...].
    HSet {
        /// The key.
        key: Bytes,
        /// Pairs to set.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// HGET.
    HGet {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// HDEL.
    HDel {
        /// The key.
        key: Bytes,
        /// Fields to delete.
        fields: Vec<Bytes>,
    },
    /// HEXISTS.
    HExists {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
    },
    /// HINCRBY.
    HIncrBy {
        /// The key.
        key: Bytes,
        /// The field.
        field: Bytes,
        /// Added to the field's integer value.
        delta: i64,
    },
    /// HGETALL (fields in byte order).
    HGetAll {
        /// The key.
        key: Bytes,
    },
    /// LPUSH (`left`) / RPUSH: replies with the new length.
    Push {
        /// The key.
        key: Bytes,
        /// Elements, pushed one after another.
        values: Vec<Bytes>,
        /// Head (LPUSH) or tail (RPUSH).
        left: bool,
    },
    /// LPOP / RPOP with an optional count.
    Pop {
        /// The key.
        key: Bytes,
        /// None: one element (bulk reply); Some(n): an array of up to n.
        count: Option<u64>,
        /// Head or tail.
        left: bool,
    },
    /// PUBLISH: stateless; it becomes an `Event::Published` that every node delivers to
    /// its own subscribers. Replies 0: receivers are counted by the node, not the log.
    Publish {
        /// The channel.
        channel: Bytes,
        /// The message.
        message: Bytes,
    },
    /// BLPOP / BRPOP: pops now, or queues a waiter served in FIFO order by later pushes.
    BlockingPop {
        /// Keys tried in order.
        keys: Vec<Bytes>,
        /// The timeout; None waits forever (BLPOP ... 0).
        wait_ms: Option<u64>,
        /// Head or tail.
        left: bool,
    },

    /// Acquire semaphore permits.
    SemAcquire(SemaphoreRequest),
    /// Release the permits held under a token.
    SemRelease {
        /// The semaphore.
        name: Bytes,
        /// The holder's token.
        token: Bytes,
    },
    /// Renew the permits held under a token.
    SemRenew {
        /// The semaphore.
        name: Bytes,
        /// The holder's token.
        token: Bytes,
        /// New lease from now.
        ttl_ms: u64,
    },
    /// Permits in use and the limit.
    SemInfo {
        /// The semaphore.
        name: Bytes,
    },

    /// Add to a counter (creating it at 0); replies with the new value.
    CounterAdd {
        /// The counter.
        name: Bytes,
        /// Added, may be negative.
        delta: i64,
    },
    /// A counter's value (0 if it does not exist).
    CounterGet {
        /// The counter.
        name: Bytes,
    },

    /// Append items to a queue; higher priority is dequeued first, FIFO within one.
    QueuePush {
        /// The queue.
        name: Bytes,
        /// Items in order.
        values: Vec<Bytes>,
        /// Priority of these items.
        priority: i32,
        /// Items owned by a session vanish with it.
        session: Option<SessionId>,
    },
    /// Dequeue the first item, or wait for one.
    QueuePop {
        /// The queue.
        name: Bytes,
        /// Try (nil when empty) or wait.
        wait: Wait,
    },
    /// Items in a queue.
    QueueLen {
        /// The queue.
        name: Bytes,
    },

    /// Wait until `parties` participants have arrived, then all go on; the barrier
    /// then resets for its next round.
    BarrierWait {
        /// The barrier.
        name: Bytes,
        /// How many must arrive.
        parties: u32,
        /// Who arrives (one arrival each per round).
        participant: Bytes,
        /// Wait bound.
        wait_ms: Option<u64>,
    },
    /// Double barrier: enter, and go on once `parties` have entered.
    BarrierEnter {
        /// The barrier.
        name: Bytes,
        /// How many must enter.
        parties: u32,
        /// Who enters.
        participant: Bytes,
        /// Wait bound.
        wait_ms: Option<u64>,
    },
    /// Double barrier: leave, and go on once every participant has left.
    BarrierLeave {
        /// The barrier.
        name: Bytes,
        /// Who leaves.
        participant: Bytes,
        /// Wait bound.
        wait_ms: Option<u64>,
    },

    /// Campaign for leadership.
    Campaign(CampaignRequest),
    /// Replace the leader's published value.
    Proclaim {
        /// The election.
        name: Bytes,
        /// The leader's token.
        token: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Give up leadership (or candidacy); the next candidate leads.
    Resign {
        /// The election.
        name: Bytes,
        /// The leader's or candidate's token.
        token: Bytes,
    },
    /// Extend the leader's lease.
    ElectionRenew {
        /// The election.
        name: Bytes,
        /// The leader's token.
        token: Bytes,
        /// New lease from now.
        ttl_ms: u64,
    },
    /// The current leader.
    Leader {
        /// The election.
        name: Bytes,
    },
    /// Write a config key if its version is `if_version` (0: absent); replies with
    /// the new version.
    ConfigSet {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Compare-and-set on the version.
        if_version: Option<u64>,
    },
    /// Delete a config key if its version is `if_version`.
    ConfigDel {
        /// The key.
        key: Bytes,
        /// Compare-and-set on the version.
        if_version: Option<u64>,
    },
    /// A config key's `[value, version]`, now or as of a version.
    ConfigGet {
        /// The key.
        key: Bytes,
        /// As of this version (None: now).
        at: Option<u64>,
    },
    /// A config key's retained versions, newest first.
    ConfigHistory {
        /// The key.
        key: Bytes,
    },
    /// Live config keys under a prefix with their versions.
    ConfigList {
        /// The prefix.
        prefix: Bytes,
        /// Resume after this key.
        after: Option<Bytes>,
        /// At most this many keys.
        count: u64,
    },
    /// Hand leadership to a named waiting candidate.
    Transfer {
        /// The election.
        name: Bytes,
        /// The leader's token.
        token: Bytes,
        /// The candidate identity to lead next.
        to: Bytes,
    },
    /// Double barrier: enter as `BarrierEnter` does, as a member the session owns. If
    /// the session ends before the participant has left, it leaves then, as the
    /// ephemeral node of ZooKeeper's recipe goes with its client: a participant that
    /// crashed cannot wedge the barrier. Newer than the variants above: a server
    /// writes it only once every member of its cluster reads it.
    BarrierEnterSession {
        /// The barrier.
        name: Bytes,
        /// How many must enter.
        parties: u32,
        /// Who enters.
        participant: Bytes,
        /// Wait bound.
        wait_ms: Option<u64>,
        /// The owning session.
        session: SessionId,
    },
    /// Puts back an element that a blocking pop took for a client that had gone by the
    /// time the pop was applied (the server proposes it when it finds the connection
    /// closed), where it was taken from. The element was counted against the length
    /// limit before, so the limit does not refuse it; a queue item whose session has
    /// ended meanwhile, or a list key that now holds another type, drops it. Replies
    /// 1 if the element is back, 0 if dropped. Newer than the variants above, as
    /// `BarrierEnterSession`.
    PutBack {
        /// The list key or queue.
        key: Bytes,
        /// The element.
        value: Bytes,
        /// Where it goes.
        to: PutBackTo,
    },
    /// Forgets every deleted config key whose delete is older than version `below`:
    /// its entry and history go (they counted against the entry limit forever), and
    /// `CFG.GET ... AT` a version before `below` of a key with no history left is
    /// refused as compacted. The leader proposes it once the deleted keys held pass
    /// `CONFIG_DELETED_KEPT` plus `CONFIG_DELETED_SLACK` (`StateMachine::config_compaction_due`).
    /// Replies the number of keys forgotten. Newer than the variants above, as `PutBack`.
    ConfigCompact {
        /// Deletes at versions below this are forgotten.
        below: u64,
    },
}

/// Where `Command::PutBack` returns an element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutBackTo {
    /// A list, at the end it was popped from.
    List {
        /// The head (LPOP / BLPOP) rather than the tail.
        left: bool,
    },
    /// A queue, with the item's priority and session, into the slot it left if the
    /// queue still has that slot free (ahead of the items pushed after it), else
    /// behind the items of its priority.
    Queue {
        /// The item's priority.
        priority: i32,
        /// The sequence number of the slot it was taken from.
        seq: u64,
        /// Its session (0: none).
        session: SessionId,
    },
}

impl Command {
    /// True for commands that never change state (besides the clock and expiry that
    /// every applied entry performs). The server may serve these from a read index
    /// instead of the log.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::Fence { .. }
                | Command::LockInfo { .. }
                | Command::SessionInfo { .. }
                | Command::Get { .. }
                | Command::Exists { .. }
                | Command::PTtl { .. }
                | Command::Keys { .. }
                | Command::Scan { .. }
                | Command::Type { .. }
                | Command::DbSize
                | Command::HGet { .. }
                | Command::HExists { .. }
                | Command::HGetAll { .. }
                | Command::SemInfo { .. }
                | Command::CounterGet { .. }
                | Command::QueueLen { .. }
                | Command::Leader { .. }
                | Command::ConfigGet { .. }
                | Command::ConfigHistory { .. }
                | Command::ConfigList { .. }
        )
    }

    /// Whether applying it may queue a waiter (`Reply::Queued`): a blocking acquire,
    /// campaign or pop, or a barrier. The server records which node queued each one.
    pub fn may_wait(&self) -> bool {
        match self {
            Command::Lock(request) => !matches!(request.wait, Wait::Try),
            Command::SemAcquire(request) => !matches!(request.wait, Wait::Try),
            Command::Campaign(request) => !matches!(request.wait, Wait::Try),
            Command::QueuePop { wait, .. } => !matches!(wait, Wait::Try),
            Command::BlockingPop { .. }
            | Command::BarrierWait { .. }
            | Command::BarrierEnter { .. }
            | Command::BarrierEnterSession { .. }
            | Command::BarrierLeave { .. } => true,
            _ => false,
        }
    }

    /// True for the commands that may share a log entry with others
    /// ([`crate::StateMachine::apply_group`]): a leader groups concurrent clients' writes
    /// of these into one entry. They draw no id from the entry's log index (waiter,
    /// session and queue-slot ids are the index of the entry that made them, so two
    /// in one entry would collide): try-acquires, releases and renewals of locks, and
    /// the keyspace writes Redis lock clients send (SET, DEL).
    pub fn is_groupable(&self) -> bool {
        match self {
            Command::Lock(request) => matches!(request.wait, Wait::Try),
            Command::Unlock { .. } | Command::Renew { .. } | Command::Del { .. } => true,
            Command::Set(request) => request.session.is_none(),
            _ => false,
        }
    }
}

/// A successful grant of a lock, permits or leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The fencing token: strictly greater than every fence granted before.
    pub fence: u64,
    /// Reentrant hold count (1 on a first acquire).
    pub holds: u32,
    /// Replicated-clock deadline of the lease (`u64::MAX`: session-bound, no TTL).
    pub deadline_ms: u64,
}

/// One holder, as lock info shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    /// Owner identity.
    pub owner: Bytes,
    /// Fencing token of the grant.
    pub fence: u64,
    /// Reentrant hold count (permits, for a semaphore).
    pub holds: u32,
    /// Milliseconds left (`None`: session-bound).
    pub ttl_ms: Option<u64>,
    /// Owning session.
    pub session: Option<SessionId>,
    /// Metadata (the leader's value, for an election).
    pub metadata: Bytes,
}

/// State of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Mode of the current holders (`None`: free).
    pub mode: Option<LockMode>,
    /// The holders.
    pub holders: Vec<HolderInfo>,
    /// Waiters queued.
    pub waiters: u64,
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// Done (Redis `+OK`).
    Ok,
    /// Nothing there (Redis null).
    Nil,
    /// An integer.
    Int(i64),
    /// A byte string.
    Bulk(Bytes),
    /// An array.
    Array(Vec<Reply>),
    /// Granted now.
    Grant(Grant),
    /// Queued; the outcome arrives as an `Event` naming this waiter.
    Queued(WaiterId),
    /// Lock (or semaphore, or election) info.
    Info(LockInfo),
}

/// Why a wait ended without a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitEnd {
    /// The wait bound passed.
    TimedOut,
    /// `CancelWait` was applied.
    Cancelled,
    /// The waiter's session ended: never granted afterwards.
    SessionEnded,
}

/// How a key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyChange {
    /// Written.
    Set,
    /// Deleted by a command.
    Deleted,
    /// Its TTL ran out.
    Expired,
}

/// Something a server must tell a waiting or watching client. Events are produced on
/// every replica; only the node whose connection owns the waiter delivers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A queued lock, permit or campaign was granted.
    Granted {
        /// The waiter.
        waiter: WaiterId,
        /// The grant.
        grant: Grant,
    },
    /// A blocking pop (list or queue) got an element.
    Popped {
        /// The waiter.
        waiter: WaiterId,
        /// The key or queue it came from.
        key: Bytes,
        /// The element.
        value: Bytes,
        /// A queue item's priority (0 for a list element): what it is pushed back
        /// with if its client has gone.
        priority: i32,
        /// The session a queue item belonged to (0: none, and for a list element).
        session: SessionId,
        /// The sequence number of the queue slot it left (0 for a list element).
        seq: u64,
    },
    /// A barrier let this waiter through.
    BarrierPassed {
        /// The waiter.
        waiter: WaiterId,
    },
    /// A wait ended without a grant.
    WaitEnded {
        /// The waiter.
        waiter: WaiterId,
        /// Why.
        reason: WaitEnd,
    },
    /// A lock hold (or permit) was released by its holder.
    Released {
        /// Lock or semaphore name.
        name: Bytes,
        /// What was held.
        of: Holding,
        /// Fence of the released grant.
        fence: u64,
    },
    /// A lock (or permit, or leadership) lease ran out.
    Expired {
        /// Lock, semaphore or election name.
        name: Bytes,
        /// What was held.
        of: Holding,
        /// Fence of the expired grant.
        fence: u64,
    },
    /// A lock (or permit, or leadership) was taken away because its session ended.
    Revoked {
        /// Lock, semaphore or election name.
        name: Bytes,
        /// What was held.
        of: Holding,
        /// Fence of the revoked grant.
        fence: u64,
        /// The session.
        session: SessionId,
    },
    /// A session ended by expiry or close.
    SessionEnded {
        /// The session.
        session: SessionId,
        /// True if it expired rather than closed.
        expired: bool,
    },
    /// A key of the Redis keyspace changed.
    KeyChanged {
        /// The key.
        key: Bytes,
        /// How.
        change: KeyChange,
    },
    /// A PUBLISH was applied.
    Published {
        /// The channel.
        channel: Bytes,
        /// The message.
        message: Bytes,
    },
    /// A config key was written or deleted.
    ConfigChanged {
        /// The key.
        key: Bytes,
        /// Its new version (the entry's log index).
        version: u64,
        /// True for a delete.
        deleted: bool,
    },
    /// An election's leader changed (including to nobody).
    LeaderChanged {
        /// The election.
        name: Bytes,
        /// The new leader, if any.
        leader: Option<HolderInfo>,
    },
}

/// What a released, expired or revoked grant was: each primitive has its own
/// namespace, so a lock's watchers must not see a semaphore of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holding {
    /// A lock hold.
    Lock,
    /// A semaphore permit.
    Permit,
    /// An election's leadership.
    Leadership,
}

/// The outcome of one applied entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The reply to the client that proposed the entry.
    pub reply: crate::Result<Reply>,
    /// Notifications for waiting or watching clients, in the order they happened.
    pub events: Vec<Event>,
}

/// What applying a group of writes in one entry produced: each member's result
/// (`R` is the command's reply for a group of commands; see
/// [`crate::StateMachine::apply_group_with`] for groups that also run scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOutput<R = crate::Result<Reply>> {
    /// Each member's result, in the group's order.
    pub replies: Vec<R>,
    /// Notifications for waiting or watching clients, in the order they happened.
    pub events: Vec<Event>,
}
