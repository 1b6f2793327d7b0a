//! The one error type of the state machine.
//!
//! Every refusal the core can give is a variant here, so the server can map each one
//! to exactly one RESP error and each binding to exactly one exception class.

use serde::{Deserialize, Serialize};

use crate::limits::Limit;

/// Why a command was refused. A refused command changes no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// Try-lock (or try-acquire of a permit, or a campaign without waiting) found the
    /// resource taken.
    #[error("resource is held by another owner")]
    Locked,
    /// The caller presented a token that does not hold the resource.
    #[error("not the holder of '{name}'")]
    NotHolder {
        /// The lock, semaphore or election the token does not hold.
        name: String,
    },
    /// A reentrant acquire named a different mode, a group that does not match the
    /// group it already holds, or another session (or none where it holds one).
    #[error("already held by this owner in a different mode, group or session")]
    HeldDifferently,
    /// The same owner asked again with another token: reentrancy needs both to match.
    #[error("held by this owner under a different token")]
    TokenMismatch,
    /// The session named does not exist (never opened, closed, or expired).
    #[error("no such session {0}")]
    NoSuchSession(u64),
    /// The waiter named does not exist (already granted, timed out or cancelled).
    #[error("no such waiter {0}")]
    NoSuchWaiter(u64),
    /// A conditional acquire whose condition did not hold.
    #[error("condition failed")]
    ConditionFailed,
    /// A Redis command on a key of another type.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    /// The value is not an integer or out of range (Redis's wording).
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// An increment would overflow a 64-bit signed integer.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// A hash value is not an integer (Redis's wording).
    #[error("hash value is not an integer")]
    HashNotInteger,
    /// A configured bound was exceeded; names which and its value.
    #[error("{limit} limit exceeded (max {max})")]
    LimitExceeded {
        /// Which bound.
        limit: Limit,
        /// The bound in force.
        max: u64,
    },
    /// An argument is malformed in a way that is not a limit (empty name list, zero
    /// permits, a semaphore or barrier redeclared with another size, ...).
    #[error("invalid argument: {0}")]
    Invalid(std::borrow::Cow<'static, str>),
}

impl Error {
    /// An `Invalid` error with a fixed text (no allocation).
    pub const fn invalid(what: &'static str) -> Error {
        Error::Invalid(std::borrow::Cow::Borrowed(what))
    }
}

/// The result of a command.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand used by the command modules to name a limit breach.
pub(crate) fn over(limit: Limit, max: u64) -> Error {
    Error::LimitExceeded { limit, max }
}
