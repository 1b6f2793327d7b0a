//! # fencelock-core
//!
//! The deterministic lock and coordination state machine behind fencelock. It holds
//! every lock, session, semaphore, queue, barrier, election and Redis key, and
//! changes them only in [`StateMachine::apply`]: one committed Raft log entry in, a
//! reply and events out.
//!
//! The crate does no I/O, reads no clock, draws no random numbers and needs no async
//! runtime, so every replica that applies the same log reaches byte-identical state
//! ([`StateMachine::snapshot`], [`StateMachine::state_hash`]).
//!
//! ## The rules it keeps
//! - **Fencing**: every grant (lock, permit, leadership, SET NX key) gets a fence that
//!   is strictly greater than every fence before it; it equals the log index of the
//!   granting entry unless that entry granted more than once. Reentrant acquires
//!   return the same fence.
//! - **Time**: the replicated clock is the largest leader stamp applied (rebased by
//!   [`Command::Rebase`] after a leader change). Nothing expires before its deadline
//!   on that clock; expiry happens when an entry's stamp reaches it.
//! - **Safety**: at most one exclusive holder; never readers beside a writer; a waiter
//!   whose session ended is never granted; [`StateMachine::check_invariants`] states
//!   the rest.
//! - **Bounds**: every table and queue has a limit in [`Limits`], refused with
//!   [`Error::LimitExceeded`] naming it.
//!
//! ```
//! use bytes::Bytes;
//! use fencelock_core::{Command, LockMode, LockRequest, Reply, StateMachine, Wait};
//!
//! let mut sm = StateMachine::default();
//! let lock = |owner: &'static str| Command::Lock(LockRequest {
//!     names: vec![Bytes::from_static(b"orders:1")],
//!     owner: Bytes::from_static(owner.as_bytes()),
//!     token: Bytes::from_static(owner.as_bytes()),
//!     mode: LockMode::Exclusive,
//!     ttl_ms: 30_000,
//!     session: None,
//!     metadata: Bytes::new(),
//!     wait: Wait::Try,
//!     condition: None,
//!     idempotent: false,
//! });
//! let first = sm.apply(1, 1_000, lock("a"));
//! assert!(matches!(first.reply, Ok(Reply::Grant(g)) if g.fence == 1));
//! let second = sm.apply(2, 1_001, lock("b"));
//! assert!(second.reply.is_err()); // held by "a"
//! let later = sm.apply(3, 31_001, lock("b")); // a's lease held through 31_000
//! assert!(matches!(later.reply, Ok(Reply::Grant(g)) if g.fence == 3));
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod barrier;
mod check;
mod command;
mod config;
mod election;
mod error;
pub mod glob;
mod keyspace;
mod limits;
mod lock;
mod name;
mod queue;
mod script;
mod semaphore;
mod session;
mod snapshot;
mod state;
mod waiter;

pub use command::{
    CampaignRequest, Command, Condition, Event, Grant, GroupOutput, HolderInfo, Holding, KeyChange, LockInfo, LockMode,
    LockRequest, Output, PutBackTo, Reply, SemaphoreRequest, SessionId, SetCondition, SetExpiry, SetRequest, Wait,
    WaitEnd, WaiterId,
};
pub use config::{CONFIG_DELETED_KEPT, CONFIG_DELETED_SLACK, CONFIG_HISTORY_MAX};
pub use error::{Error, Result};
pub use keyspace::KEYSPACE_STATS_SAMPLE;
pub use limits::{Limit, Limits};
pub use name::Name;
pub use script::{GroupMember, Script, ScriptOutput};
pub use snapshot::{FrozenState, SnapshotError, SNAPSHOT_VERSION};
pub use state::StateMachine;
