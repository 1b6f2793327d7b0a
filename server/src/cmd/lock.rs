//! Native lock and session commands: LOCK, UNLOCK, RENEW, FENCE, LOCK.INFO, SESSION.*.
//! Syntax and replies are documented in docs/COMMANDS.md.

use bytes::Bytes;
use fencelock_core::{Command, Condition, LockMode, LockRequest, Wait};

use super::args::{parse_i64, Args, CmdError};
use super::{Request, Shape};

/// A fresh random token (32 hex characters) for a LOCK without TOKEN. Randomness is
/// drawn here, on the node that receives the request, never in the state machine.
pub fn random_token() -> Bytes {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).expect("the OS random source works");
    Bytes::from(lower_hex(&raw))
}

/// Lowercase hex, two digits per byte (tokens, script SHA1s). Written digit by digit:
/// a `format!` per byte was 16 allocations per LOCK without TOKEN.
pub fn lower_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

fn non_negative(arg: Option<Bytes>, what: &str) -> Result<u64, CmdError> {
    let arg = arg.ok_or(CmdError::Syntax)?;
    match parse_i64(&arg) {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(CmdError::Other(format!("ERR {what} must be a non-negative integer"))),
    }
}

/// Reads `ALSO <n> <name>...` into `names`.
fn also(a: &mut Args, names: &mut Vec<Bytes>) -> Result<(), CmdError> {
    let n = non_negative(a.optional(), "ALSO count")?;
    if n as usize > a.remaining() {
        return Err(CmdError::Syntax);
    }
    for _ in 0..n {
        names.push(a.optional().ok_or(CmdError::Syntax)?);
    }
    Ok(())
}

/// `name token [ALSO n name ...]`, the arguments of UNLOCK and LOCK.WITHDRAW.
fn names_and_token(a: &mut Args) -> Result<(Vec<Bytes>, Bytes), CmdError> {
    let mut names = vec![a.bytes()?];
    let token = a.bytes()?;
    while let Some(option) = a.keyword() {
        match option.as_slice() {
            b"ALSO" => also(a, &mut names)?,
            _ => return Err(CmdError::Syntax),
        }
    }
    Ok((names, token))
}

/// Parses a native lock or session command; `None` if `name` is not one.
pub fn parse(name: &[u8], a: &mut Args) -> Result<Option<Request>, CmdError> {
    let request = match name {
        b"LOCK" => parse_lock(a)?,
        b"UNLOCK" => {
            let (names, token) = names_and_token(a)?;
            Request::Core(Command::Unlock { names, token }, Shape::Plain)
        }
        b"LOCK.WITHDRAW" => {
            let (names, token) = names_and_token(a)?;
            Request::Core(Command::LockWithdraw { names, token }, Shape::Plain)
        }
        b"RENEW" => {
            let mut names = vec![a.bytes()?];
            let token = a.bytes()?;
            let ttl_ms = non_negative(Some(a.bytes()?), "ttl")?;
            while let Some(option) = a.keyword() {
                match option.as_slice() {
                    b"ALSO" => also(a, &mut names)?,
                    _ => return Err(CmdError::Syntax),
                }
            }
            Request::Core(Command::Renew { names, token, ttl_ms }, Shape::Grant(ttl_ms))
        }
        b"FENCE" => {
            let name = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::Fence { name }, Shape::Plain)
        }
        b"LOCK.INFO" => {
            let name = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::LockInfo { name }, Shape::Plain)
        }
        b"SESSION.OPEN" => {
            let ttl_ms = non_negative(Some(a.bytes()?), "ttl")?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::SessionOpen { ttl_ms }, Shape::Plain)
        }
        b"SESSION.KEEPALIVE" => {
            let session = non_negative(Some(a.bytes()?), "session id")?;
            let ttl_ms = match a.optional() {
                None => None,
                Some(ttl) => Some(non_negative(Some(ttl), "ttl")?),
            };
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::SessionKeepAlive { session, ttl_ms }, Shape::Plain)
        }
        b"SESSION.CLOSE" => {
            let session = non_negative(Some(a.bytes()?), "session id")?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::SessionClose { session }, Shape::Plain)
        }
        b"SESSION.INFO" => {
            let session = non_negative(Some(a.bytes()?), "session id")?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::SessionInfo { session }, Shape::Fields(&["ttl", "remaining", "owned"]))
        }
        _ => return Ok(None),
    };
    Ok(Some(request))
}

fn parse_lock(a: &mut Args) -> Result<Request, CmdError> {
    let mut names = vec![a.bytes()?];
    let ttl_ms = non_negative(Some(a.bytes()?), "ttl")?;
    let mut token = None;
    let mut owner = None;
    let mut mode = LockMode::Exclusive;
    let mut wait_ms: Option<Option<u64>> = None;
    let mut priority = 0i32;
    let mut session = None;
    let mut metadata = Bytes::new();
    let mut condition = None;
    let mut idempotent = false;
    while let Some(option) = a.keyword() {
        match option.as_slice() {
            b"TOKEN" => token = Some(a.optional().ok_or(CmdError::Syntax)?),
            b"OWNER" => owner = Some(a.optional().ok_or(CmdError::Syntax)?),
            b"SHARED" => mode = LockMode::Shared,
            b"WAIT" => {
                let bound = a.optional().ok_or(CmdError::Syntax)?;
                wait_ms = Some(if bound.eq_ignore_ascii_case(b"FOREVER") {
                    None
                } else {
                    Some(non_negative(Some(bound), "WAIT")?)
                });
            }
            b"PRIORITY" => {
                let p = a.optional().ok_or(CmdError::Syntax)?;
                priority = parse_i64(&p)
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or(CmdError::Other("ERR PRIORITY must be a 32-bit integer".into()))?;
            }
            b"SESSION" => session = Some(non_negative(a.optional(), "SESSION")?),
            b"META" => metadata = a.optional().ok_or(CmdError::Syntax)?,
            b"ALSO" => also(a, &mut names)?,
            b"IDEMPOTENT" => idempotent = true,
            b"IFVALUE" | b"IFABSENT" | b"IFFENCE" if condition.is_some() => return Err(CmdError::Syntax),
            b"IFVALUE" => {
                let key = a.optional().ok_or(CmdError::Syntax)?;
                let value = a.optional().ok_or(CmdError::Syntax)?;
                condition = Some(Condition::KeyEquals { key, value: Some(value) });
            }
            b"IFABSENT" => {
                condition = Some(Condition::KeyEquals { key: a.optional().ok_or(CmdError::Syntax)?, value: None })
            }
            b"IFFENCE" => {
                let name = a.optional().ok_or(CmdError::Syntax)?;
                let fence = non_negative(a.optional(), "IFFENCE")?;
                condition = Some(Condition::FenceEquals { name, fence });
            }
            _ => return Err(CmdError::Syntax),
        }
    }
    if idempotent && token.is_none() {
        return Err(CmdError::Other("ERR IDEMPOTENT needs TOKEN: the token is the request id a retry repeats".into()));
    }
    let token = token.unwrap_or_else(random_token);
    let owner = owner.unwrap_or_else(|| token.clone());
    let wait = match wait_ms {
        None => Wait::Try,
        Some(wait_ms) => Wait::Queue { wait_ms, priority },
    };
    // An idempotent acquire's grant is kept for the client's retry even when the
    // connection that asked is gone (undoing it could release what the retry took).
    let undo = (!idempotent).then(|| Box::new(Command::Unlock { names: names.clone(), token: token.clone() }));
    let request = LockRequest {
        names,
        owner,
        token: token.clone(),
        mode,
        ttl_ms,
        session,
        metadata,
        wait,
        condition,
        idempotent,
    };
    Ok(Request::Acquire { command: Command::Lock(request), token, ttl_ms, undo })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::keyspace::words;
    use crate::cmd::parse_at;

    fn lock(line: &str) -> LockRequest {
        match parse_at(words(line), 0) {
            Ok(Request::Acquire { command: Command::Lock(r), .. }) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lock_defaults_and_options() {
        let r = lock("LOCK orders:1 30000");
        assert_eq!((r.ttl_ms, r.mode, r.wait), (30_000, LockMode::Exclusive, Wait::Try));
        assert_eq!(r.token.len(), 32, "a random token is generated");
        assert_eq!(r.owner, r.token, "the owner defaults to the token");
        let r = lock("lock a 0 token t owner o shared wait 5000 priority -3 session 7 meta m also 2 b c ifvalue k v");
        assert_eq!(r.names, words("a b c"));
        assert_eq!((r.token.as_ref(), r.owner.as_ref(), r.mode), (&b"t"[..], &b"o"[..], LockMode::Shared));
        assert_eq!(r.wait, Wait::Queue { wait_ms: Some(5_000), priority: -3 });
        assert_eq!((r.session, r.metadata.as_ref()), (Some(7), &b"m"[..]));
        assert!(matches!(r.condition, Some(Condition::KeyEquals { value: Some(_), .. })));
        assert_eq!(lock("LOCK a 1 WAIT FOREVER").wait, Wait::Queue { wait_ms: None, priority: 0 });
        assert!(matches!(lock("LOCK a 1 IFFENCE b 9").condition, Some(Condition::FenceEquals { fence: 9, .. })));
        assert!(matches!(lock("LOCK a 1 IFABSENT k").condition, Some(Condition::KeyEquals { value: None, .. })));
    }

    #[test]
    fn lock_errors() {
        let e = |line: &str| parse_at(words(line), 0).unwrap_err().to_string();
        assert_eq!(e("LOCK a"), "ERR wrong number of arguments for 'lock' command");
        assert_eq!(e("LOCK a -5"), "ERR ttl must be a non-negative integer");
        assert_eq!(e("LOCK a 10 BOGUS"), "ERR syntax error");
        assert_eq!(e("LOCK a 10 ALSO 3 b"), "ERR syntax error");
        assert_eq!(e("LOCK a 10 IFABSENT k IFFENCE b 1"), "ERR syntax error");
        assert_eq!(e("LOCK a 10 PRIORITY 99999999999"), "ERR PRIORITY must be a 32-bit integer");
        assert_eq!(e("UNLOCK a"), "ERR wrong number of arguments for 'unlock' command");
        assert_eq!(e("SESSION.KEEPALIVE x"), "ERR session id must be a non-negative integer");
    }

    #[test]
    fn unlock_renew_fence_session() {
        assert!(
            matches!(parse_at(words("UNLOCK a t ALSO 1 b"), 0), Ok(Request::Core(Command::Unlock { names, .. }, _)) if names.len() == 2)
        );
        assert!(matches!(
            parse_at(words("RENEW a t 500"), 0),
            Ok(Request::Core(Command::Renew { ttl_ms: 500, .. }, Shape::Grant(500)))
        ));
        assert!(matches!(parse_at(words("FENCE a"), 0), Ok(Request::Core(Command::Fence { .. }, _))));
        assert!(matches!(
            parse_at(words("SESSION.OPEN 10000"), 0),
            Ok(Request::Core(Command::SessionOpen { ttl_ms: 10_000 }, _))
        ));
        assert!(matches!(
            parse_at(words("session.keepalive 5"), 0),
            Ok(Request::Core(Command::SessionKeepAlive { session: 5, ttl_ms: None }, _))
        ));
    }
}
