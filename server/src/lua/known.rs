//! The lock scripts of the popular Redis lock clients, run without the VM.
//!
//! redis-py's `Lock` and node-redlock send the same few scripts for every release and
//! extend. In the VM one such run cost a node about 19 µs of CPU (a fresh environment,
//! KEYS / ARGV tables and `redis.call` closures per run, VM entry, garbage collection),
//! against about 20 µs for the whole durable write it rides in; every replica pays it
//! again when it applies the entry.
//!
//! Safety rests on three rules:
//! - a script is recognised only by its exact bytes (a client that changes a space gets
//!   the VM, never a wrong guess);
//! - the native body issues exactly the `redis.call`s the Lua would, in the same order,
//!   through the same command path (`super::run_command`), and converts their replies
//!   as the VM would, so replies, error texts, state and events are the same; the
//!   differential test below runs every body both ways over many states and inputs;
//! - where an input would lead the Lua somewhere the body does not mirror (a missing
//!   KEYS or ARGV element, a number Lua would coerce on its own terms), the body
//!   declines before its first write and the VM runs the script from the start.
//!
//! Recognition happens where the entry is applied, not where it is proposed: the log
//! still carries the script, so a node without this table computes the same result.

use bytes::Bytes;
use fencelock_core::Script;

use super::{run_command, ScriptReply};
use crate::resp::Wire;

/// A script this module runs natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// redis-py `Lock.LUA_RELEASE_SCRIPT` (redis 4.x to 8.x).
    PyRelease,
    /// redis-py `Lock.LUA_EXTEND_SCRIPT`.
    PyExtend,
    /// redis-py `Lock.LUA_REACQUIRE_SCRIPT`.
    PyReacquire,
    /// node-redlock 5 `ACQUIRE_SCRIPT`.
    RedlockAcquire,
    /// node-redlock 5 `EXTEND_SCRIPT`.
    RedlockExtend,
    /// node-redlock 5 `RELEASE_SCRIPT`.
    RedlockRelease,
}

/// The scripts, byte for byte as the clients send them (copied from redis 8.1.0's
/// `redis/lock.py` and redlock 5.0.0-beta.2's `dist/cjs/index.js`; the compat tests
/// check that the installed packages still send these bytes).
pub const SCRIPTS: [(Known, &str); 6] = [
    (
        Known::PyRelease,
        "\n        local token = redis.call('get', KEYS[1])\n        if not token or token ~= ARGV[1] then\n            return 0\n        end\n        redis.call('del', KEYS[1])\n        return 1\n    ",
    ),
    (
        Known::PyExtend,
        "\n        local token = redis.call('get', KEYS[1])\n        if not token or token ~= ARGV[1] then\n            return 0\n        end\n        local expiration = redis.call('pttl', KEYS[1])\n        if not expiration then\n            expiration = 0\n        end\n        if expiration < 0 then\n            return 0\n        end\n\n        local newttl = ARGV[2]\n        if ARGV[3] == \"0\" then\n            newttl = ARGV[2] + expiration\n        end\n        redis.call('pexpire', KEYS[1], newttl)\n        return 1\n    ",
    ),
    (
        Known::PyReacquire,
        "\n        local token = redis.call('get', KEYS[1])\n        if not token or token ~= ARGV[1] then\n            return 0\n        end\n        redis.call('pexpire', KEYS[1], ARGV[2])\n        return 1\n    ",
    ),
    (
        Known::RedlockAcquire,
        "\n  -- Return 0 if an entry already exists.\n  for i, key in ipairs(KEYS) do\n    if redis.call(\"exists\", key) == 1 then\n      return 0\n    end\n  end\n\n  -- Create an entry for each provided key.\n  for i, key in ipairs(KEYS) do\n    redis.call(\"set\", key, ARGV[1], \"PX\", ARGV[2])\n  end\n\n  -- Return the number of entries added.\n  return #KEYS\n",
    ),
    (
        Known::RedlockExtend,
        "\n  -- Return 0 if an entry exists with a *different* lock value.\n  for i, key in ipairs(KEYS) do\n    if redis.call(\"get\", key) ~= ARGV[1] then\n      return 0\n    end\n  end\n\n  -- Update the entry for each provided key.\n  for i, key in ipairs(KEYS) do\n    redis.call(\"set\", key, ARGV[1], \"PX\", ARGV[2])\n  end\n\n  -- Return the number of entries updated.\n  return #KEYS\n",
    ),
    (
        Known::RedlockRelease,
        "\n  local count = 0\n  for i, key in ipairs(KEYS) do\n    -- Only remove entries for *this* lock value.\n    if redis.call(\"get\", key) == ARGV[1] then\n      redis.pcall(\"del\", key)\n      count = count + 1\n    end\n  end\n\n  -- Return the number of entries removed.\n  return count\n",
    ),
];

/// More keys than this and the VM runs node-redlock's scripts: a native loop must not
/// finish a script the VM's instruction budget would have stopped.
const KEYS_NATIVE_MAX: usize = 1_000;

/// Lua 5.1 converts an integer-valued double to text exactly below 10^14 (`%.14g`).
const LUA_EXACT_INTEGER_BELOW: i64 = 100_000_000_000_000;

/// The well-known script with exactly these bytes, if any.
pub fn recognize(body: &[u8]) -> Option<Known> {
    // Slice equality compares lengths first, so a miss costs six length checks.
    SCRIPTS.iter().find(|(_, text)| text.as_bytes() == body).map(|(which, _)| *which)
}

/// Whether `which`'s native body takes these inputs, as far as they alone decide it:
/// the KEYS and ARGV it reads are there, the key count is within the native bound, and
/// a number it must add is plain digits. A body may still decline on what it finds in
/// the state (redis-py's extend, when the sum would not be exact in Lua), and the VM
/// then runs the script, correctly, only slower. Write groups take a known script only
/// when this holds, so a group does not wait on the VM.
pub fn accepts(which: Known, keys: &[Bytes], args: &[Bytes]) -> bool {
    match which {
        Known::PyRelease => !keys.is_empty() && !args.is_empty(),
        Known::PyReacquire => !keys.is_empty() && args.len() >= 2,
        Known::PyExtend => {
            !keys.is_empty()
                && args.len() >= 2
                && (args.get(2).is_none_or(|replace| replace.as_ref() != b"0") || plain_digits(&args[1]).is_some())
        }
        Known::RedlockAcquire | Known::RedlockExtend => args.len() >= 2 && keys.len() <= KEYS_NATIVE_MAX,
        Known::RedlockRelease => !args.is_empty() && keys.len() <= KEYS_NATIVE_MAX,
    }
}

/// Runs `which` natively. `None`: declined before any write; the VM must run it.
pub fn run(
    which: Known,
    keys: &[Bytes],
    args: &[Bytes],
    script: &mut Script<'_>,
) -> Option<Result<ScriptReply, String>> {
    let outcome = match which {
        Known::PyRelease => py_release(keys, args, script),
        Known::PyExtend => py_extend(keys, args, script),
        Known::PyReacquire => py_reacquire(keys, args, script),
        Known::RedlockAcquire => redlock_acquire(keys, args, script),
        Known::RedlockExtend => redlock_extend(keys, args, script),
        Known::RedlockRelease => redlock_release(keys, args, script),
    };
    match outcome {
        Outcome::Declined => None,
        Outcome::Reply(n) => Some(Ok(ScriptReply::Int(n))),
        Outcome::Raised(text) => Some(Err(text)),
    }
}

/// How a native body ended.
enum Outcome {
    /// The VM must run the script (nothing was written).
    Declined,
    /// `return n`.
    Reply(i64),
    /// A `redis.call` raised this error reply: the script fails with it, as in the VM.
    Raised(String),
}

/// `redis.call(...)`: the reply, or the error the Lua would raise.
macro_rules! call {
    ($script:expr, $($arg:expr),+) => {
        match run_command(vec![$(Bytes::from($arg)),+], $script) {
            Ok(wire) => wire,
            Err(text) => return Outcome::Raised(text),
        }
    };
}

/// `reply == ARGV[i]` in Lua, for a command reply converted as `to_lua` does: only a
/// string can equal a string (Lua's `==` never coerces).
fn equals_string(reply: &Wire, expected: &[u8]) -> bool {
    match reply {
        Wire::Bulk(b) => b.as_ref() == expected,
        Wire::Double(d) => d.to_string().as_bytes() == expected,
        _ => false,
    }
}

/// `reply == 1` in Lua: `to_lua` makes integers and booleans numbers.
fn equals_one(reply: &Wire) -> bool {
    matches!(reply, Wire::Int(1) | Wire::Bool(true))
}

/// The two opening lines every redis-py script shares:
/// `local token = redis.call('get', KEYS[1])`
/// `if not token or token ~= ARGV[1] then return 0 end`.
/// `None` when the token matches and the script goes on; otherwise how it ended.
fn py_token_mismatch(key: &Bytes, token: &Bytes, script: &mut Script<'_>) -> Option<Outcome> {
    match run_command(vec![Bytes::from_static(b"get"), key.clone()], script) {
        Ok(stored) if equals_string(&stored, token) => None,
        Ok(_) => Some(Outcome::Reply(0)),
        Err(text) => Some(Outcome::Raised(text)),
    }
}

fn py_release(keys: &[Bytes], args: &[Bytes], script: &mut Script<'_>) -> Outcome {
    let (Some(key), Some(token)) = (keys.first(), args.first()) else { return Outcome::Declined };
    if let Some(ended) = py_token_mismatch(key, token, script) {
        return ended;
    }
    call!(script, &b"del"[..], key.clone());
    Outcome::Reply(1)
}

fn py_reacquire(keys: &[Bytes], args: &[Bytes], script: &mut Script<'_>) -> Outcome {
    let (Some(key), Some(token), Some(ttl_ms)) = (keys.first(), args.first(), args.get(1)) else {
        return Outcome::Declined;
    };
    if let Some(ended) = py_token_mismatch(key, token, script) {
        return ended;
    }
    call!(script, &b"pexpire"[..], key.clone(), ttl_ms.clone());
    Outcome::Reply(1)
}

fn py_extend(keys: &[Bytes], args: &[Bytes], script: &mut Script<'_>) -> Outcome {
    let (Some(key), Some(token), Some(additional_ms)) = (keys.first(), args.first(), args.get(1)) else {
        return Outcome::Declined;
    };
    if let Some(ended) = py_token_mismatch(key, token, script) {
        return ended;
    }
    // `local expiration = redis.call('pttl', KEYS[1]); if not expiration then
    // expiration = 0 end`: nil and false become 0; a non-number would make `<` raise.
    let expiration_ms = match call!(script, &b"pttl"[..], key.clone()) {
        Wire::Int(ms) => ms,
        Wire::Bool(b) => i64::from(b),
        Wire::Null | Wire::NullArray => 0,
        _ => return Outcome::Declined,
    };
    if expiration_ms < 0 {
        return Outcome::Reply(0);
    }
    let new_ttl = if args.get(2).is_some_and(|replace| replace.as_ref() == b"0") {
        // `ARGV[2] + expiration`: Lua turns the string into a double (hex, spaces and
        // exponents included) and the sum back into text with `%.14g`. Only plain
        // digits with an exactly representable sum are mirrored.
        match plain_digits(additional_ms).and_then(|n| n.checked_add(expiration_ms)) {
            Some(sum) if sum < LUA_EXACT_INTEGER_BELOW => Bytes::from(sum.to_string()),
            _ => return Outcome::Declined,
        }
    } else {
        additional_ms.clone()
    };
    call!(script, &b"pexpire"[..], key.clone(), new_ttl);
    Outcome::Reply(1)
}

/// `text` as a number when it is 1 to 14 ASCII digits (so the value is exact in a
/// double and Lua reads it the same way).
fn plain_digits(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 14 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn redlock_acquire(keys: &[Bytes], args: &[Bytes], script: &mut Script<'_>) -> Outcome {
    let (Some(value), Some(ttl_ms)) = (args.first(), args.get(1)) else { return Outcome::Declined };
    if keys.len() > KEYS_NATIVE_MAX {
        return Outcome::Declined;
    }
    for key in keys {
        if equals_one(&call!(script, &b"exists"[..], key.clone())) {
            return Outcome::Reply(0);
        }
    }
    for key in keys {
        call!(script, &b"set"[..], key.clone(), value.clone(), &b"PX"[..], ttl_ms.clone());
    }
    Outcome::Reply(keys.len() as i64)
}

fn redlock_extend(keys: &[Bytes], args: &[Bytes], script: &mut Script<'_>) -> Outcome {
    let (Some(value), Some(ttl_ms)) = (args.first(), args.get(1)) else { return Outcome::Declined };
    if keys.len() > KEYS_NATIVE_MAX {
        return Outcome::Declined;
    }
    for key in keys {
        if !equals_string(&call!(script, &b"get"[..], key.clone()), value) {
            return Outcome::Reply(0);
        }
    }
    for key in keys {
        call!(script, &b"set"[..], key.clone(), value.clone(), &b"PX"[..], ttl_ms.clone());
    }
    Outcome::Reply(keys.len() as i64)
}

fn redlock_release(keys: &[Bytes], args: &[Bytes], script: &mut Script<'_>) -> Outcome {
    let Some(value) = args.first() else { return Outcome::Declined };
    if keys.len() > KEYS_NATIVE_MAX {
        return Outcome::Declined;
    }
    let mut count = 0;
    for key in keys {
        if equals_string(&call!(script, &b"get"[..], key.clone()), value) {
            // `redis.pcall`: an error comes back as a value the script ignores.
            let _ = run_command(vec![Bytes::from_static(b"del"), key.clone()], script);
            count += 1;
        }
    }
    Outcome::Reply(count)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use fencelock_core::{Limits, StateMachine};

    use super::super::{run_command, sha1_hex, LuaEngine, ScriptReply};
    use super::{recognize, run, Known, SCRIPTS};
    use crate::cmd::{self, Request};

    fn b(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn words(line: &str) -> Vec<Bytes> {
        line.split_whitespace().map(b).collect()
    }

    /// The SHA1s the clients compute for EVALSHA (from the installed packages), so an
    /// accidental edit of `SCRIPTS` fails here.
    #[test]
    fn the_scripts_are_the_clients_bytes() {
        let expected = [
            (Known::PyRelease, "c3f8721cbb97f72bc19e972846bd7aaf91901658"),
            (Known::PyExtend, "a4e8783852e6b949f9ef3a97212805108459a890"),
            (Known::PyReacquire, "1cac51482acf5858da00f6d685d68f886cd6b6b2"),
            (Known::RedlockAcquire, "96da70f7716f27d278a5218544df37fd8b0a5e4c"),
            (Known::RedlockExtend, "aed6f382e410db8ba7926d4e5e9aab410bf2a78a"),
            (Known::RedlockRelease, "e4612211c9f8f51c257e26e056b0a654b3187242"),
        ];
        for ((which, text), (named, sha)) in SCRIPTS.iter().zip(expected) {
            assert_eq!(*which, named);
            assert_eq!(sha1_hex(text.as_bytes()), sha, "{which:?}");
            assert_eq!(recognize(text.as_bytes()), Some(*which));
        }
        // One byte more or less is another script.
        let release = SCRIPTS[0].1;
        assert_eq!(recognize(release.trim_end().as_bytes()), None);
        assert_eq!(recognize(format!("{release} ").as_bytes()), None);
        assert_eq!(recognize(b"return 1"), None);
    }

    /// The states a script may meet: setup commands, applied before it.
    const STATES: [&[&str]; 9] = [
        &[],
        &["SET k tok PX 30000"],
        &["SET k tok"],
        &["SET k other PX 30000"],
        &["HSET k f tok"],
        &["LPUSH k tok"],
        &["SET k tok PX 30000", "SET k2 tok PX 30000"],
        &["SET k tok PX 30000", "SET k2 other"],
        &["LOCK k 30000 TOKEN tok"],
    ];

    const KEYS: [&str; 6] = ["", "k", "k2", "k k2", "k k", "k2 k"];

    const ARGS: [&str; 17] = [
        "",
        "tok",
        "other",
        "tok 10000",
        "tok 10000 0",
        "tok 10000 1",
        "tok 10000 0 extra",
        "other 10000 0",
        "tok abc",
        "tok -5",
        "tok 0 0",
        "tok 1e3 0",
        "tok 0x10 0",
        "tok 5.5 1",
        "tok 99999999999999 0",
        "tok 9223372036854775807 0",
        "tok 00012 0",
    ];

    fn state(setup: &[&str]) -> StateMachine {
        let mut sm = StateMachine::new(Limits::default());
        for (i, line) in setup.iter().enumerate() {
            let parsed = cmd::parse_in_script(words(line));
            let command = match parsed {
                Ok(Request::Core(command, _)) | Ok(Request::Acquire { command, .. }) => command,
                other => panic!("{line}: {other:?}"),
            };
            let out = sm.apply(i as u64 + 1, 500, command);
            assert!(out.reply.is_ok(), "{line}: {:?}", out.reply);
        }
        sm
    }

    /// Every well-known script, natively and in the VM, over every state, KEYS and
    /// ARGV above: the same reply or error, the same state, the same events.
    #[test]
    fn native_runs_match_the_vm_exactly() {
        let mut engine = LuaEngine::new().expect("a VM");
        let mut native_runs = 0;
        let mut cases = 0;
        for (which, text) in SCRIPTS {
            for setup in STATES {
                for keys in KEYS {
                    for args in ARGS {
                        let (keys, args) = (words(keys), words(args));
                        let mut in_vm = state(setup);
                        let vm = in_vm.apply_script(100, 1_000, |s| engine.run_in_vm(text.as_bytes(), &keys, &args, s));
                        let mut native = state(setup);
                        let mut declined = false;
                        let fast = native.apply_script(100, 1_000, |s| match run(which, &keys, &args, s) {
                            Some(result) => result,
                            None => {
                                declined = true;
                                engine.run_in_vm(text.as_bytes(), &keys, &args, s)
                            }
                        });
                        let case = format!("{which:?} over {setup:?} KEYS {keys:?} ARGV {args:?}");
                        assert_eq!(vm.result, fast.result, "{case}");
                        assert_eq!(vm.events, fast.events, "{case}");
                        assert_eq!(in_vm.snapshot(), native.snapshot(), "{case}");
                        cases += 1;
                        native_runs += usize::from(!declined);
                    }
                }
            }
        }
        // The declines are the rare inputs, not the common ones.
        assert!(native_runs * 4 > cases * 3, "{native_runs} of {cases} ran natively");
    }

    /// The paths the clients take every time do run natively, with the replies they
    /// expect.
    #[test]
    fn the_common_calls_run_natively() {
        let one = |which: Known, setup: &[&str], keys: &str, args: &str| {
            let mut sm = state(setup);
            let out = sm.apply_script(100, 1_000, |s| run(which, &words(keys), &words(args), s).ok_or(()));
            (out.result.expect("ran natively"), sm)
        };
        let held = &["SET k tok PX 30000"][..];
        assert_eq!(one(Known::PyRelease, held, "k", "tok").0, Ok(ScriptReply::Int(1)));
        assert_eq!(one(Known::PyRelease, held, "k", "other").0, Ok(ScriptReply::Int(0)));
        assert_eq!(one(Known::PyExtend, held, "k", "tok 5000 0").0, Ok(ScriptReply::Int(1)));
        let (reply, mut sm) = one(Known::PyExtend, held, "k", "tok 5000 1");
        assert_eq!(reply, Ok(ScriptReply::Int(1)));
        let Ok(Request::Core(pttl, _)) = cmd::parse_in_script(words("PTTL k")) else { panic!() };
        assert_eq!(sm.apply(101, 1_000, pttl).reply, Ok(fencelock_core::Reply::Int(5_000)));
        assert_eq!(one(Known::PyReacquire, held, "k", "tok 5000").0, Ok(ScriptReply::Int(1)));
        assert_eq!(one(Known::RedlockAcquire, &[], "k k2", "tok 5000").0, Ok(ScriptReply::Int(2)));
        assert_eq!(one(Known::RedlockAcquire, held, "k2 k", "tok 5000").0, Ok(ScriptReply::Int(0)));
        assert_eq!(one(Known::RedlockExtend, held, "k", "tok 5000").0, Ok(ScriptReply::Int(1)));
        assert_eq!(one(Known::RedlockRelease, held, "k k2", "tok").0, Ok(ScriptReply::Int(1)));
        // A wrong type raises the command's own error, as `redis.call` does.
        let (reply, _) = one(Known::PyRelease, &["HSET k f v"], "k", "tok");
        assert!(matches!(reply, Err(ref e) if e.starts_with("WRONGTYPE")), "{reply:?}");
        // Keeps `run_command` honest about scripts' command table.
        let mut sm = state(&[]);
        let out = sm.apply_script(1, 1, |s| run_command(words("LOCK k 1000"), s));
        assert_eq!(out.result, Err("ERR This Redis command is not allowed from script".into()));
    }
}
