//! The one table from internal errors to wire errors (etcd's `toGRPCErrorMap`).
//!
//! Redis's own errors keep Redis's exact words (`WRONGTYPE ...`, `ERR value is not an
//! integer or out of range`) because clients match on them. fencelock's own errors get
//! their own first word, so clients and bindings can map each kind to one exception
//! class: `LOCKED`, `NOTHOLDER`, `TOKENMISMATCH`, `HELDDIFFERENTLY`, `NOSESSION`,
//! `NOWAITER`, `CONDFAILED`, `LIMIT`.

use fencelock_core::Error;

use crate::resp::Wire;

/// The RESP error text for a core error.
pub fn core_error_text(error: &Error) -> String {
    match error {
        Error::Locked => "LOCKED resource is held by another owner".into(),
        Error::NotHolder { name } => {
            format!("NOTHOLDER not the holder of '{name}' (released, expired, or another token)")
        }
        Error::TokenMismatch => "TOKENMISMATCH this owner holds the lock under a different token".into(),
        Error::HeldDifferently => "HELDDIFFERENTLY this owner holds it in another mode or group".into(),
        Error::NoSuchSession(id) => format!("NOSESSION no such session {id} (closed or expired)"),
        Error::NoSuchWaiter(id) => format!("NOWAITER no such waiter {id}"),
        Error::ConditionFailed => "CONDFAILED the condition does not hold (the IFVALUE / IFABSENT / IFFENCE of a LOCK, or the IFVERSION of a CFG write)".into(),
        Error::WrongType => "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
        Error::NotInteger => "ERR value is not an integer or out of range".into(),
        Error::Overflow => "ERR increment or decrement would overflow".into(),
        Error::HashNotInteger => "ERR hash value is not an integer".into(),
        Error::LimitExceeded { limit, max } => format!("LIMIT {limit} limit exceeded (max {max})"),
        Error::Invalid(what) => format!("ERR {what}"),
        other => format!("ERR {other}"),
    }
}

/// As a reply.
pub fn core_error(error: &Error) -> Wire {
    Wire::Error(core_error_text(error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fencelock_core::Limit;

    #[test]
    fn every_kind_has_its_own_first_word() {
        let errors = [
            Error::Locked,
            Error::NotHolder { name: "a".into() },
            Error::TokenMismatch,
            Error::HeldDifferently,
            Error::NoSuchSession(1),
            Error::NoSuchWaiter(1),
            Error::ConditionFailed,
            Error::WrongType,
            Error::LimitExceeded { limit: Limit::KeyBytes, max: 4096 },
        ];
        let words: std::collections::BTreeSet<String> =
            errors.iter().map(|e| core_error_text(e).split(' ').next().unwrap().to_string()).collect();
        assert_eq!(words.len(), errors.len());
        assert_eq!(core_error_text(&errors[8]), "LIMIT key-bytes limit exceeded (max 4096)");
    }
}
