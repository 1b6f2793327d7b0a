//! RESP arguments → what to do. One file per command family, as in mini-redis: each
//! parses its arguments into a core `Command` (applied through the log) plus the
//! `Shape` that turns the core's reply into Redis's reply, or into a connection-level
//! request handled without the log.

use bytes::Bytes;
use fencelock_core::Command;

use crate::resp::Wire;

pub mod args;
pub mod cluster;
pub mod conn;
pub mod coord;
pub mod keyspace;
pub mod lock;
pub mod render;
pub mod script;

pub use args::{Args, CmdError};
pub use conn::Conn;

/// How a core reply is rendered for the command that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `Ok` → `+OK`, `Nil` → null, `Int`, `Bulk`, `Array` as they are.
    Plain,
    /// PTTL's milliseconds as TTL's seconds (rounded as Redis rounds).
    Seconds,
    /// TYPE: the bulk type name as a status reply.
    Status,
    /// A blocking pop: `Nil` → null array, `Queued` → block until the event.
    BlockingPop,
    /// Any success is `+OK` (HMSET).
    Ok,
    /// A flat `[field, value, ...]` array as a RESP3 map (HGETALL), flat in RESP2.
    Map,
    /// Nil is a null array (LPOP / RPOP with a count, as Redis 7 answers).
    NullArray,
    /// A grant as a map: fence, holds, ttl (RENEW, with the TTL it asked for).
    Grant(u64),
    /// A fixed-length array as a map with these field names (SESSION.INFO, SEM.INFO).
    Fields(&'static [&'static str]),
    /// QUEUE.POP: the item, null when empty or timed out; a blocked pop waits.
    QueuePop,
    /// A barrier: `+OK` once through, null when the wait bound passed.
    Barrier,
    /// ELECT.LEADER: the leader as a map, null when nobody leads.
    Leader,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// A command for the state machine: written through the log, or read through a
    /// read index if read-only.
    Core(Command, Shape),
    /// Answered by the connection or node without touching the state machine.
    Conn(Conn),
    /// LOCK, SEM.ACQUIRE, ELECT.CAMPAIGN: the connection keeps the token to put in
    /// the reply and waits for the grant event when the request queues; if the client
    /// is gone when the grant comes, `undo` gives it back at once (None: an idempotent
    /// acquire, whose grant is kept for the client's retry; it ends with its lease).
    Acquire {
        /// The acquiring command.
        command: Command,
        /// The holder's token (in the reply).
        token: Bytes,
        /// The lease asked for (in the reply).
        ttl_ms: u64,
        /// What releases the grant.
        undo: Option<Box<Command>>,
    },
    /// SCAN with Redis's integer cursor; the connection maps cursors to resume keys.
    Scan {
        /// The client's cursor (0 starts).
        cursor: u64,
        /// MATCH.
        pattern: Option<Bytes>,
        /// COUNT.
        count: u64,
        /// TYPE.
        kind: Option<Bytes>,
    },
    /// EVAL / EVALSHA.
    Eval {
        /// The script or its SHA1.
        source: script::Source,
        /// KEYS.
        keys: Vec<Bytes>,
        /// ARGV.
        args: Vec<Bytes>,
    },
    /// SCRIPT LOAD / EXISTS / FLUSH.
    Script(script::ScriptAdmin),
    /// CLUSTER.JOIN / ADDLEARNER / PROMOTE / REMOVE / TRANSFER.
    Admin(crate::cluster::AdminOp),
    /// CLUSTER.STATUS.
    ClusterStatus,
    /// WAIT numreplicas timeout: the connection answers it, watching its socket while
    /// it waits.
    Wait {
        /// Replicas asked for.
        replicas: i64,
        /// Timeout in ms (0: forever).
        timeout_ms: i64,
    },
    /// SVC.REGISTER: the address key and the metadata key (written metadata first).
    ServiceRegister(Vec<Command>),
    /// SVC.LIST: the instances of a service.
    ServiceList(Bytes),
    /// The reply is already known while parsing.
    Immediate(Wire),
}

/// Parses one request with this node's wall clock (for EXAT / PXAT).
pub fn parse(args: Vec<Bytes>) -> Result<Request, CmdError> {
    let wall_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    parse_with(args, Some(wall_ms))
}

/// Parses a `redis.call` from a script: the state machine has no wall clock, so
/// EXAT / PXAT are refused there.
pub fn parse_in_script(args: Vec<Bytes>) -> Result<Request, CmdError> {
    parse_with(args, None)
}

/// Parses one request at a given wall-clock time (tests).
pub fn parse_at(args: Vec<Bytes>, wall_ms: u64) -> Result<Request, CmdError> {
    parse_with(args, Some(wall_ms))
}

/// Parses one request; `args` is never empty (the request parser guarantees it).
fn parse_with(args: Vec<Bytes>, wall_ms: Option<u64>) -> Result<Request, CmdError> {
    let name = args[0].to_ascii_uppercase();
    let mut a = Args::new(args);
    if let Some(request) = conn::parse(&name, &mut a)? {
        return Ok(request);
    }
    if let Some(request) = keyspace::parse(&name, &mut a, wall_ms)? {
        return Ok(request);
    }
    if let Some(request) = lock::parse(&name, &mut a)? {
        return Ok(request);
    }
    if let Some(request) = script::parse(&name, &mut a)? {
        return Ok(request);
    }
    if let Some(request) = coord::parse(&name, &mut a)? {
        return Ok(request);
    }
    if let Some(request) = cluster::parse(&name, &mut a)? {
        return Ok(request);
    }
    Err(CmdError::unknown(a.all()))
}
