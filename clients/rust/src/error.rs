//! The client's one error type. Server errors are mapped once, here, by their RESP
//! error code; the bindings map each variant to one exception class.

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `NOTHOLDER`: the token does not hold it (released, expired, or another token).
    #[error("{0}")]
    NotHolder(String),
    /// `TOKENMISMATCH` / `HELDDIFFERENTLY` / `LOCKED`: held by this owner in another way.
    #[error("{0}")]
    Conflict(String),
    /// `NOSESSION`: the session ended (or never existed).
    #[error("{0}")]
    NoSession(String),
    /// `CONDFAILED`: an acquire's condition did not hold.
    #[error("{0}")]
    ConditionFailed(String),
    /// `LIMIT` (or `OOM`, past the node's memory bound): a server limit was reached; the
    /// message names it.
    #[error("{0}")]
    Limit(String),
    /// `NOAUTH` / `WRONGPASS`.
    #[error("{0}")]
    Auth(String),
    /// `ERR` and other refusals of the request itself (bad arguments, wrong type).
    #[error("{0}")]
    Invalid(String),
    /// No node answered in time (every endpoint down, or no quorum): the request did not
    /// apply, or was safe to retry and every retry failed.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The request was sent but its answer was lost, and it is not safe to retry: it may
    /// or may not have taken effect.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// A wait ran out before the lock (permit, leadership) was granted.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The lock (permit, leadership, session) was lost: a renewal failed or its validity
    /// ran out on the client's own clock.
    #[error("lost: {0}")]
    Lost(String),
    /// The peer sent something that is not RESP, or an unexpected reply.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Maps a RESP error reply by its code (the first word).
    pub fn from_server(text: &str) -> Error {
        let code = text.split(' ').next().unwrap_or("");
        let text = text.to_string();
        // The server says so when a failure left the write possibly applied (a node
        // shutting down under it, for one) whatever the code: never "invalid".
        if code != "TRYAGAIN" && text.contains("may have been applied") {
            return Error::Unknown(text);
        }
        match code {
            "NOTHOLDER" => Error::NotHolder(text),
            "TOKENMISMATCH" | "HELDDIFFERENTLY" | "LOCKED" => Error::Conflict(text),
            "NOSESSION" => Error::NoSession(text),
            "CONDFAILED" => Error::ConditionFailed(text),
            // A node past --maxmemory-mib refuses writes that add data: a bound, as LIMIT.
            "LIMIT" | "OOM" => Error::Limit(text),
            "NOAUTH" | "WRONGPASS" => Error::Auth(text),
            "TRYAGAIN" => Error::Unavailable(text),
            _ => Error::Invalid(text),
        }
    }

    /// Whether the server said "not now, try again" (no leader, no quorum).
    pub(crate) fn is_try_again(&self) -> bool {
        matches!(self, Error::Unavailable(text) if text.starts_with("TRYAGAIN"))
    }

    /// Whether a TRYAGAIN says the write may have been applied all the same: a leader
    /// that no quorum answered in time (the entry may still commit), or one that lost
    /// its leadership after appending it (it may have committed through the new one).
    /// Such a write is not sent again unless it is safe to repeat.
    pub(crate) fn outcome_unknown(text: &str) -> bool {
        text.starts_with("TRYAGAIN") && (text.contains("no quorum") || text.contains("may have been applied"))
    }

    /// The kind's stable name (what the bindings call their exception classes after).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotHolder(_) => "NotHolder",
            Error::Conflict(_) => "Conflict",
            Error::NoSession(_) => "NoSession",
            Error::ConditionFailed(_) => "ConditionFailed",
            Error::Limit(_) => "LimitExceeded",
            Error::Auth(_) => "AuthError",
            Error::Invalid(_) => "InvalidRequest",
            Error::Unavailable(_) => "Unavailable",
            Error::Unknown(_) => "OutcomeUnknown",
            Error::Lost(_) => "LockLost",
            Error::Timeout(_) => "Timeout",
            Error::Protocol(_) => "ProtocolError",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_map_to_kinds() {
        assert_eq!(Error::from_server("NOTHOLDER not the holder of 'a'").kind(), "NotHolder");
        assert_eq!(Error::from_server("LIMIT too many locks (max 10)").kind(), "LimitExceeded");
        let oom = "OOM command not allowed when used memory > 'maxmemory': 2100 MiB resident, --maxmemory-mib 2048";
        assert_eq!(Error::from_server(oom).kind(), "LimitExceeded");
        assert_eq!(Error::from_server("NOSESSION session 5 ended").kind(), "NoSession");
        assert!(Error::from_server("TRYAGAIN no leader available right now").is_try_again());
        let shutting =
            "ERR node failure: the node is shutting down; the write may have been applied (check before retrying)";
        assert_eq!(Error::from_server(shutting).kind(), "OutcomeUnknown");
        assert!(!Error::outcome_unknown("TRYAGAIN no leader available right now, retry shortly"));
        assert!(Error::outcome_unknown(
            "TRYAGAIN no quorum confirmed the request within 3000 ms (this node may be partitioned from the majority)"
        ));
        assert!(Error::outcome_unknown(
            "TRYAGAIN the leader changed before this write was confirmed; it may have been applied (check before retrying)"
        ));
        assert_eq!(Error::from_server("ERR syntax error").kind(), "InvalidRequest");
        assert_eq!(Error::from_server("WRONGPASS invalid password").kind(), "AuthError");
    }
}
