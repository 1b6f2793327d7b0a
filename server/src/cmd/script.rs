//! EVAL, EVALSHA and SCRIPT LOAD / EXISTS / FLUSH.

use bytes::Bytes;

use super::args::{parse_i64, Args, CmdError};
use super::Request;

/// Where a script's source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// EVAL: the source itself (and it is cached for later EVALSHA).
    Body(Bytes),
    /// EVALSHA: a lowercase SHA1 looked up in this node's script cache.
    Sha(String),
}

/// SCRIPT subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptAdmin {
    /// SCRIPT LOAD source.
    Load(Bytes),
    /// SCRIPT EXISTS sha ...
    Exists(Vec<Bytes>),
    /// SCRIPT FLUSH [ASYNC|SYNC].
    Flush,
}

/// Parses EVAL / EVALSHA / SCRIPT; `None` if `name` is none of them.
pub fn parse(name: &[u8], a: &mut Args) -> Result<Option<Request>, CmdError> {
    match name {
        b"EVAL" | b"EVALSHA" => {
            a.arity_min(2)?;
            let first = a.bytes()?;
            let numkeys = a.bytes()?;
            let numkeys = parse_i64(&numkeys).ok_or(CmdError::NotInteger)?;
            if numkeys < 0 {
                return Err(CmdError::Other("ERR Number of keys can't be negative".into()));
            }
            if numkeys as usize > a.remaining() {
                return Err(CmdError::Other("ERR Number of keys can't be greater than number of args".into()));
            }
            let mut rest = a.rest();
            let args = rest.split_off(numkeys as usize);
            let source = if name == b"EVAL" {
                Source::Body(first)
            } else {
                Source::Sha(String::from_utf8_lossy(&first).to_ascii_lowercase())
            };
            Ok(Some(Request::Eval { source, keys: rest, args }))
        }
        b"SCRIPT" => {
            let sub = a.keyword().ok_or_else(|| a.arity())?;
            let admin = match sub.as_slice() {
                b"LOAD" => {
                    let body = a.bytes()?;
                    a.finish().map_err(|_| a.arity())?;
                    ScriptAdmin::Load(body)
                }
                b"EXISTS" => {
                    a.arity_min(2)?;
                    ScriptAdmin::Exists(a.rest())
                }
                b"FLUSH" => {
                    if let Some(mode) = a.keyword() {
                        if mode != b"ASYNC" && mode != b"SYNC" {
                            return Err(CmdError::Other("ERR SCRIPT FLUSH only support SYNC|ASYNC option".into()));
                        }
                    }
                    a.finish()?;
                    ScriptAdmin::Flush
                }
                _ => {
                    let sub = String::from_utf8_lossy(&sub).to_lowercase();
                    return Err(CmdError::Other(format!("ERR unknown subcommand '{sub}'. Try SCRIPT HELP.")));
                }
            };
            Ok(Some(Request::Script(admin)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::keyspace::words;
    use crate::cmd::parse_at;

    #[test]
    fn eval_splits_keys_and_args() {
        match parse_at(words("EVAL return 2 k1 k2 a1"), 0) {
            Ok(Request::Eval { source: Source::Body(_), keys, args }) => {
                assert_eq!((keys, args), (words("k1 k2"), words("a1")));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse_at(words("EVALSHA ABCDEF 0"), 0), Ok(Request::Eval { source: Source::Sha(s), .. }) if s == "abcdef")
        );
        let e = |line: &str| parse_at(words(line), 0).unwrap_err().to_string();
        assert_eq!(e("EVAL s 3 a b"), "ERR Number of keys can't be greater than number of args");
        assert_eq!(e("EVAL s -1"), "ERR Number of keys can't be negative");
        assert_eq!(e("EVAL s x"), "ERR value is not an integer or out of range");
        assert_eq!(e("EVAL s"), "ERR wrong number of arguments for 'eval' command");
        assert_eq!(e("SCRIPT BOGUS"), "ERR unknown subcommand 'bogus'. Try SCRIPT HELP.");
        assert!(matches!(parse_at(words("SCRIPT FLUSH ASYNC"), 0), Ok(Request::Script(ScriptAdmin::Flush))));
    }
}
