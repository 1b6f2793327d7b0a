//! The Redis keyspace commands lock clients use: strings, TTLs, counters, hashes,
//! lists, KEYS / SCAN.

use fencelock_core::{Command, SetCondition, SetExpiry, SetRequest};

use super::args::{Args, CmdError};
use super::{Request, Shape};

fn core(command: Command) -> Result<Option<Request>, CmdError> {
    Ok(Some(Request::Core(command, Shape::Plain)))
}

fn invalid_expire(command: &str) -> CmdError {
    CmdError::Other(format!("ERR invalid expire time in '{command}' command"))
}

/// Parses a keyspace command; `None` if `name` is not one. `wall_ms` is this node's
/// Unix time, used only to turn EXAT / PXAT into a relative TTL.
pub fn parse(name: &[u8], a: &mut Args, wall_ms: Option<u64>) -> Result<Option<Request>, CmdError> {
    match name {
        b"SET" => parse_set(a, wall_ms).map(Some),
        b"GET" => {
            let key = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            core(Command::Get { key })
        }
        b"DEL" | b"UNLINK" => {
            a.arity_min(1)?;
            core(Command::Del { keys: a.rest() })
        }
        b"EXISTS" => {
            a.arity_min(1)?;
            core(Command::Exists { keys: a.rest() })
        }
        b"EXPIRE" | b"PEXPIRE" => {
            let millis = name == b"PEXPIRE";
            let key = a.bytes()?;
            let amount = a.i64()?;
            if a.remaining() > 0 {
                return Err(CmdError::Other(format!(
                    "ERR {} options NX / XX / GT / LT are not supported",
                    if millis { "PEXPIRE" } else { "EXPIRE" }
                )));
            }
            let ttl_ms = if millis { Some(amount) } else { amount.checked_mul(1000) };
            let ttl_ms = ttl_ms.ok_or_else(|| invalid_expire(if millis { "pexpire" } else { "expire" }))?;
            // Zero or negative deletes the key, as in Redis.
            core(Command::PExpire { key, ttl_ms: ttl_ms.max(0) as u64 })
        }
        b"TTL" | b"PTTL" => {
            let key = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            let shape = if name == b"TTL" { Shape::Seconds } else { Shape::Plain };
            Ok(Some(Request::Core(Command::PTtl { key }, shape)))
        }
        b"PERSIST" => {
            let key = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            core(Command::Persist { key })
        }
        b"INCR" | b"DECR" => {
            let key = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            core(Command::IncrBy { key, delta: if name == b"INCR" { 1 } else { -1 } })
        }
        b"INCRBY" | b"DECRBY" => {
            let key = a.bytes()?;
            let delta = a.i64()?;
            a.finish().map_err(|_| a.arity())?;
            let delta = if name == b"INCRBY" {
                delta
            } else {
                delta.checked_neg().ok_or(CmdError::Other("ERR decrement would overflow".into()))?
            };
            core(Command::IncrBy { key, delta })
        }
        b"KEYS" => {
            let pattern = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            super::args::check_pattern(&pattern)?;
            core(Command::Keys { pattern })
        }
        b"SCAN" => parse_scan(a).map(Some),
        b"TYPE" => {
            let key = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Ok(Some(Request::Core(Command::Type { key }, Shape::Status)))
        }
        b"DBSIZE" => {
            a.finish().map_err(|_| a.arity())?;
            core(Command::DbSize)
        }
        b"HSET" | b"HMSET" => {
            let key = a.bytes()?;
            let rest = a.rest();
            if rest.is_empty() || rest.len() % 2 != 0 {
                return Err(a.arity());
            }
            let pairs = rest.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
            let command = Command::HSet { key, pairs };
            if name == b"HMSET" {
                // HMSET answers +OK where HSET answers the number of new fields.
                return Ok(Some(Request::Core(command, Shape::Ok)));
            }
            core(command)
        }
        b"HGET" | b"HEXISTS" => {
            let key = a.bytes()?;
            let field = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            core(if name == b"HGET" { Command::HGet { key, field } } else { Command::HExists { key, field } })
        }
        b"HDEL" => {
            let key = a.bytes()?;
            a.arity_min(2)?;
            core(Command::HDel { key, fields: a.rest() })
        }
        b"HINCRBY" => {
            let key = a.bytes()?;
            let field = a.bytes()?;
            let delta = a.i64()?;
            a.finish().map_err(|_| a.arity())?;
            core(Command::HIncrBy { key, field, delta })
        }
        b"HGETALL" => {
            let key = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Ok(Some(Request::Core(Command::HGetAll { key }, Shape::Map)))
        }
        b"LPUSH" | b"RPUSH" => {
            let key = a.bytes()?;
            a.arity_min(2)?;
            core(Command::Push { key, values: a.rest(), left: name == b"LPUSH" })
        }
        b"LPOP" | b"RPOP" => {
            let key = a.bytes()?;
            let count = match a.optional() {
                None => None,
                Some(c) => {
                    let c = super::args::parse_i64(&c).filter(|c| *c >= 0);
                    Some(c.ok_or(CmdError::Other("ERR value is out of range, must be positive".into()))? as u64)
                }
            };
            a.finish().map_err(|_| a.arity())?;
            let shape = if count.is_some() { Shape::NullArray } else { Shape::Plain };
            Ok(Some(Request::Core(Command::Pop { key, count, left: name == b"LPOP" }, shape)))
        }
        b"PUBLISH" => {
            let channel = a.bytes()?;
            let message = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            core(Command::Publish { channel, message })
        }
        b"BLPOP" | b"BRPOP" => {
            a.arity_min(2)?;
            let mut keys = a.rest();
            let timeout = keys.pop().expect("arity checked");
            let wait_ms = parse_timeout(&timeout)?;
            Ok(Some(Request::Core(Command::BlockingPop { keys, wait_ms, left: name == b"BLPOP" }, Shape::BlockingPop)))
        }
        _ => Ok(None),
    }
}

/// A blocking command's timeout in seconds (a float, 0 = forever), as Redis reads it.
pub fn parse_timeout(arg: &[u8]) -> Result<Option<u64>, CmdError> {
    let seconds: f64 = std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|s: &f64| s.is_finite())
        .ok_or(CmdError::Other("ERR timeout is not a float or out of range".into()))?;
    if seconds < 0.0 {
        return Err(CmdError::Other("ERR timeout is negative".into()));
    }
    let ms = (seconds * 1000.0).ceil();
    if ms > u64::MAX as f64 / 2.0 {
        return Err(CmdError::Other("ERR timeout is out of range".into()));
    }
    Ok(if ms == 0.0 { None } else { Some(ms as u64) })
}

fn parse_set(a: &mut Args, wall_ms: Option<u64>) -> Result<Request, CmdError> {
    let key = a.bytes()?;
    let value = a.bytes()?;
    let mut condition = SetCondition::Always;
    let mut expiry = SetExpiry::Clear;
    let mut expiry_given = false;
    let mut get = false;
    let mut session = None;
    while let Some(option) = a.keyword() {
        match option.as_slice() {
            // fencelock's extension: an ephemeral key, deleted when the session ends.
            b"SESSION" if session.is_none() => {
                let id = a.optional().ok_or(CmdError::Syntax)?;
                let id = super::args::parse_i64(&id)
                    .filter(|id| *id >= 0)
                    .ok_or(CmdError::Other("ERR SESSION must be a non-negative integer".into()))?;
                session = Some(id as u64);
            }
            b"NX" | b"XX" => {
                if condition != SetCondition::Always {
                    return Err(CmdError::Syntax);
                }
                condition = if option == b"NX" { SetCondition::IfAbsent } else { SetCondition::IfPresent };
            }
            b"GET" => get = true,
            b"KEEPTTL" => {
                if expiry_given {
                    return Err(CmdError::Syntax);
                }
                expiry_given = true;
                expiry = SetExpiry::Keep;
            }
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                if expiry_given {
                    return Err(CmdError::Syntax);
                }
                expiry_given = true;
                let amount = a.optional().ok_or(CmdError::Syntax)?;
                let amount = super::args::parse_i64(&amount).ok_or(CmdError::NotInteger)?;
                if amount <= 0 {
                    return Err(invalid_expire("set"));
                }
                let millis = match option.as_slice() {
                    b"EX" | b"EXAT" => amount.checked_mul(1000).ok_or_else(|| invalid_expire("set"))?,
                    _ => amount,
                } as u64;
                expiry = match option.as_slice() {
                    b"EX" | b"PX" => SetExpiry::InMs(millis),
                    // Absolute times become relative on this node's wall clock; a time
                    // already past writes the key and deletes it at once, as Redis does.
                    _ => match wall_ms {
                        Some(wall_ms) => SetExpiry::InMs(millis.saturating_sub(wall_ms)),
                        None => {
                            return Err(CmdError::Other(
                                "ERR EXAT / PXAT are not allowed in scripts: the state machine has no wall clock"
                                    .into(),
                            ))
                        }
                    },
                };
            }
            _ => return Err(CmdError::Syntax),
        }
    }
    Ok(Request::Core(Command::Set(SetRequest { key, value, condition, expiry, get, session }), Shape::Plain))
}

fn parse_scan(a: &mut Args) -> Result<Request, CmdError> {
    let cursor = a.bytes()?;
    let cursor: u64 = std::str::from_utf8(&cursor)
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or(CmdError::Other("ERR invalid cursor".into()))?;
    let mut pattern = None;
    let mut count = 10;
    let mut kind = None;
    while let Some(option) = a.keyword() {
        match option.as_slice() {
            b"MATCH" => {
                let matching = a.optional().ok_or(CmdError::Syntax)?;
                super::args::check_pattern(&matching)?;
                pattern = Some(matching)
            }
            b"COUNT" => {
                let n = a.optional().ok_or(CmdError::Syntax)?;
                let n = super::args::parse_i64(&n).ok_or(CmdError::NotInteger)?;
                if n < 1 {
                    return Err(CmdError::Syntax);
                }
                count = n as u64;
            }
            b"TYPE" => kind = Some(a.optional().ok_or(CmdError::Syntax)?),
            _ => return Err(CmdError::Syntax),
        }
    }
    Ok(Request::Scan { cursor, pattern, count, kind })
}

/// Test helper: a command line split on spaces.
#[cfg(test)]
pub(crate) fn words(line: &str) -> Vec<bytes::Bytes> {
    line.split(' ').map(|w| bytes::Bytes::copy_from_slice(w.as_bytes())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::parse_at;

    fn p(line: &str) -> Result<Request, CmdError> {
        parse_at(words(line), 1_000_000)
    }

    fn set_of(line: &str) -> SetRequest {
        match p(line) {
            Ok(Request::Core(Command::Set(s), Shape::Plain)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_options_in_any_order() {
        let s = set_of("SET k v PX 30000 NX");
        assert_eq!((s.condition, s.expiry, s.get), (SetCondition::IfAbsent, SetExpiry::InMs(30_000), false));
        let s = set_of("set k v nx ex 30");
        assert_eq!((s.condition, s.expiry), (SetCondition::IfAbsent, SetExpiry::InMs(30_000)));
        let s = set_of("SET k v GET XX KEEPTTL");
        assert_eq!((s.condition, s.expiry, s.get), (SetCondition::IfPresent, SetExpiry::Keep, true));
        assert_eq!(set_of("SET k v PXAT 1005000").expiry, SetExpiry::InMs(5_000));
        assert_eq!(set_of("SET k v EXAT 1").expiry, SetExpiry::InMs(0), "a past EXAT expires at once");
    }

    #[test]
    fn set_errors_are_redis_texts() {
        assert_eq!(p("SET k v NX XX"), Err(CmdError::Syntax));
        assert_eq!(p("SET k v EX 1 PX 1"), Err(CmdError::Syntax));
        assert_eq!(p("SET k v KEEPTTL EX 1"), Err(CmdError::Syntax));
        assert_eq!(p("SET k v EX"), Err(CmdError::Syntax));
        assert_eq!(p("SET k v BOGUS"), Err(CmdError::Syntax));
        assert_eq!(p("SET k v PX abc"), Err(CmdError::NotInteger));
        assert_eq!(p("SET k v PX 0").unwrap_err().to_string(), "ERR invalid expire time in 'set' command");
        assert_eq!(
            p("SET k v EX 9223372036854775807").unwrap_err().to_string(),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(p("SET k").unwrap_err().to_string(), "ERR wrong number of arguments for 'set' command");
    }

    #[test]
    fn arity_and_unknown() {
        assert_eq!(p("GET").unwrap_err().to_string(), "ERR wrong number of arguments for 'get' command");
        assert_eq!(p("GET a b").unwrap_err().to_string(), "ERR wrong number of arguments for 'get' command");
        assert_eq!(p("HSET h f").unwrap_err().to_string(), "ERR wrong number of arguments for 'hset' command");
        assert_eq!(
            p("FOO a b").unwrap_err().to_string(),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert_eq!(p("FOO").unwrap_err().to_string(), "ERR unknown command 'FOO', with args beginning with: ");
    }

    #[test]
    fn expire_ttl_incr_and_lists() {
        assert_eq!(
            p("EXPIRE k 10"),
            Ok(Request::Core(Command::PExpire { key: words("k")[0].clone(), ttl_ms: 10_000 }, Shape::Plain))
        );
        assert_eq!(
            p("PEXPIRE k -5"),
            Ok(Request::Core(Command::PExpire { key: words("k")[0].clone(), ttl_ms: 0 }, Shape::Plain))
        );
        assert!(matches!(p("EXPIRE k 10 NX"), Err(CmdError::Other(_))));
        assert!(matches!(p("TTL k"), Ok(Request::Core(Command::PTtl { .. }, Shape::Seconds))));
        assert!(matches!(p("DECRBY k 5"), Ok(Request::Core(Command::IncrBy { delta: -5, .. }, _))));
        assert!(matches!(p("DECRBY k -9223372036854775808"), Err(CmdError::Other(_))));
        assert!(matches!(p("INCRBY k 1.5"), Err(CmdError::NotInteger)));
        assert!(matches!(
            p("BLPOP a b 0"),
            Ok(Request::Core(Command::BlockingPop { wait_ms: None, .. }, Shape::BlockingPop))
        ));
        assert!(matches!(p("BLPOP a 0.25"), Ok(Request::Core(Command::BlockingPop { wait_ms: Some(250), .. }, _))));
        assert_eq!(p("BLPOP a -1").unwrap_err().to_string(), "ERR timeout is negative");
        assert_eq!(p("BLPOP a x").unwrap_err().to_string(), "ERR timeout is not a float or out of range");
        assert!(matches!(p("LPOP k 2"), Ok(Request::Core(Command::Pop { count: Some(2), .. }, _))));
        assert!(matches!(p("LPOP k -2"), Err(CmdError::Other(_))));
    }

    #[test]
    fn scan_options() {
        assert!(matches!(
            p("SCAN 0 MATCH lock:* COUNT 100 TYPE string"),
            Ok(Request::Scan { cursor: 0, count: 100, .. })
        ));
        assert_eq!(p("SCAN x").unwrap_err().to_string(), "ERR invalid cursor");
        assert_eq!(p("SCAN 0 COUNT 0"), Err(CmdError::Syntax));
    }
}
