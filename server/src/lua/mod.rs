//! Lua 5.1 scripting inside the replicated state machine (EVAL / EVALSHA).
//!
//! One VM per node, reused: a fresh VM per script would cap script-based locking
//! (redis-py, node-redlock, Redisson) at a few thousand operations a second. Reuse
//! must not make replicas diverge, because a replica restored from a snapshot starts
//! with a fresh VM. So nothing a script does may outlive it:
//! - every run gets a fresh global table whose reads fall through to a read-only view
//!   of the libraries (`__newindex` raises, `__metatable` hides the real tables);
//! - `rawset`, `setfenv`/`getfenv`, `collectgarbage`, `gcinfo`, `newproxy`, `load*`,
//!   `dofile`, `require`, `os`, `io`, `debug` and `coroutine` are absent, and the string
//!   metatable is locked;
//! - `math.random` is a Park-Miller generator reset before every run, and `tostring`
//!   of a table or function does not print an address;
//! - `pairs`, `next` and `table.foreach` refuse tables keyed by tables or functions,
//!   whose order follows their addresses.
//!
//! A run is bounded by an instruction budget counted by a Lua hook, set afresh for
//! every run (deterministic on every replica, unlike a wall-clock limit). A script
//! that errors or exhausts the budget is rolled back whole by
//! `fencelock_core::StateMachine::apply_script`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fencelock_core::{Error as CoreError, Script};
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::cmd::{self, render, Request};
use crate::errors::core_error_text;
use crate::resp::Wire;

pub mod known;

/// Instructions one script may run: about a second of Lua on this machine's class of
/// CPU. Counted in units of `HOOK_EVERY`.
pub const INSTRUCTIONS_MAX: u64 = 200_000_000;
const HOOK_EVERY: u32 = 10_000;
/// Lua heap bound. Generous on purpose: a run near a memory bound could succeed on one
/// replica and fail on another whose VM has a different history.
const MEMORY_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Compiled scripts kept (a cache: dropping one only costs a recompile).
const COMPILED_MAX: usize = 1_024;
/// Nesting allowed when converting a Lua table to a reply (tables can refer to
/// themselves).
const REPLY_DEPTH_MAX: usize = 64;

/// A script's reply, in the log's response (serializable, unlike `Wire`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScriptReply {
    /// `{ok = "..."}`.
    Status(String),
    /// `{err = "..."}`, or a failed script.
    Error(String),
    /// A Lua number (truncated) or `true` (1).
    Int(i64),
    /// A Lua string.
    Bulk(Bytes),
    /// `nil` or `false`.
    Nil,
    /// A Lua array.
    Array(Vec<ScriptReply>),
}

impl ScriptReply {
    /// As a wire reply.
    pub fn into_wire(self) -> Wire {
        match self {
            ScriptReply::Status(s) => Wire::StatusOwned(s),
            ScriptReply::Error(e) => Wire::Error(e),
            ScriptReply::Int(i) => Wire::Int(i),
            ScriptReply::Bulk(b) => Wire::Bulk(b),
            ScriptReply::Nil => Wire::Null,
            ScriptReply::Array(items) => Wire::Array(items.into_iter().map(ScriptReply::into_wire).collect()),
        }
    }
}

/// Compiles a script in a throwaway VM to report syntax errors as EVAL would.
pub fn check_syntax(script: &[u8]) -> Result<(), String> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(lua_err)?;
    lua.load(script)
        .set_name("@user_script")
        .set_mode(mlua::chunk::ChunkMode::Text)
        .into_function()
        .map(|_| ())
        .map_err(|e| format!("ERR Error compiling script (new function): {e}"))
}

/// Lowercase hex SHA1 of a script: its EVALSHA name.
pub fn sha1_hex(script: &[u8]) -> String {
    cmd::lock::lower_hex(&Sha1::digest(script))
}

const PRELUDE: &str = r#"
local error, type, tostring, pairs, setmetatable, getmetatable, floor =
      error, type, tostring, pairs, setmetatable, getmetatable, math.floor
local function readonly(t, name)
  return setmetatable({}, {
    __index = t,
    __newindex = function() error("Attempt to modify a readonly table: " .. name, 2) end,
    __metatable = false,
  })
end
local seed = 1
local function reset_random() seed = 1 end
local function next_random()
  seed = (seed * 16807) % 2147483647
  return seed / 2147483647
end
local math_copy = {}
for k, v in pairs(math) do math_copy[k] = v end
math_copy.random = function(m, n)
  local r = next_random()
  if m == nil then return r end
  if n == nil then m, n = 1, m end
  if m > n then error("bad argument #2 to 'random' (interval is empty)", 2) end
  return floor(r * (n - m + 1)) + m
end
math_copy.randomseed = function(s) seed = (floor(tonumber(s) or 0) % 2147483646) + 1 end
-- Lua 5.1 places keys that are tables, functions or coroutines by their address, so
-- their traversal order differs between replicas (each VM has its own history): a
-- traversal that would meet one is refused. Checked over the whole table when a
-- traversal starts, so no replica does part of the loop first (under pcall, that part
-- would stay), and on every key after that, for keys added during the traversal.
local raw_next = next
local function placed_by_address(k)
  local t = type(k)
  return t == "table" or t == "function" or t == "userdata" or t == "thread"
end
local function refuse(k)
  error("cannot traverse a table with a " .. type(k) .. " as a key: its order would differ between replicas", 3)
end
local function checked_next(t, k)
  if k == nil then
    local scan = raw_next(t)
    while scan ~= nil do
      if placed_by_address(scan) then refuse(scan) end
      scan = raw_next(t, scan)
    end
  end
  local nk, nv = raw_next(t, k)
  if placed_by_address(nk) then refuse(nk) end
  return nk, nv
end
local function checked_pairs(t)
  if type(t) ~= "table" then error("bad argument #1 to 'pairs' (table expected, got " .. type(t) .. ")", 2) end
  return checked_next, t, nil
end
local table_copy = {}
for k, v in pairs(table) do table_copy[k] = v end
table_copy.foreach = function(t, f)
  for k, v in checked_pairs(t) do
    local r = f(k, v)
    if r ~= nil then return r end
  end
end
local base = {
  assert = assert, error = error, ipairs = ipairs, next = checked_next, pairs = checked_pairs, pcall = pcall,
  select = select, tonumber = tonumber, type = type, unpack = unpack, xpcall = xpcall,
  _VERSION = _VERSION,
  print = function() end,
  tostring = function(v)
    local t = type(v)
    if t == "table" or t == "function" or t == "userdata" or t == "thread" then return t end
    return tostring(v)
  end,
  string = readonly(string, "string"),
  table = readonly(table_copy, "table"),
  math = readonly(math_copy, "math"),
}
getmetatable("").__metatable = false
return readonly(base, "_G"), reset_random
"#;

struct Compiled {
    by_sha: HashMap<String, Function>,
    order: VecDeque<String>,
}

/// The node's Lua VM.
pub struct LuaEngine {
    lua: Lua,
    base: Table,
    env_meta: Table,
    helpers: Table,
    reset_random: Function,
    /// Instructions one run may take (`INSTRUCTIONS_MAX`; tests set less).
    instructions_max: u64,
    compiled: Compiled,
    runs: ScriptRuns,
}

/// How scripts ran on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptRuns {
    /// Well-known lock scripts run without the VM.
    pub native: u64,
    /// Scripts run in the VM.
    pub vm: u64,
}

fn lua_err(e: mlua::Error) -> String {
    e.to_string()
}

impl LuaEngine {
    /// A fresh, sandboxed VM.
    pub fn new() -> Result<LuaEngine, String> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH;
        let lua = Lua::new_with(libs, LuaOptions::default()).map_err(lua_err)?;
        lua.set_memory_limit(MEMORY_BYTES_MAX).map_err(lua_err)?;
        let (base, reset_random): (Table, Function) =
            lua.load(PRELUDE).set_name("=prelude").call(()).map_err(lua_err)?;
        // Nothing reachable from scripts points at the real globals any more.
        for name in [
            "rawset",
            "rawget",
            "rawequal",
            "setfenv",
            "getfenv",
            "collectgarbage",
            "gcinfo",
            "newproxy",
            "load",
            "loadstring",
            "loadfile",
            "dofile",
            "require",
            "module",
        ] {
            lua.globals().raw_set(name, Value::Nil).map_err(lua_err)?;
        }
        let env_meta = lua.create_table().map_err(lua_err)?;
        env_meta.raw_set("__index", base.clone()).map_err(lua_err)?;
        let helpers = Self::helpers(&lua)?;
        Ok(LuaEngine {
            lua,
            base,
            env_meta,
            helpers,
            reset_random,
            instructions_max: INSTRUCTIONS_MAX,
            compiled: Compiled { by_sha: HashMap::new(), order: VecDeque::new() },
            runs: ScriptRuns::default(),
        })
    }

    /// `redis.error_reply`, `redis.status_reply`, `redis.sha1hex`, `redis.log` and the
    /// log level constants, shared read-only by every run.
    fn helpers(lua: &Lua) -> Result<Table, String> {
        let t = lua.create_table().map_err(lua_err)?;
        let error_reply = lua
            .create_function(|lua, message: String| {
                let reply = lua.create_table()?;
                reply.raw_set("err", message)?;
                Ok(reply)
            })
            .map_err(lua_err)?;
        let status_reply = lua
            .create_function(|lua, message: String| {
                let reply = lua.create_table()?;
                reply.raw_set("ok", message)?;
                Ok(reply)
            })
            .map_err(lua_err)?;
        let sha1hex = lua.create_function(|_, s: mlua::LuaString| Ok(sha1_hex(&s.as_bytes()))).map_err(lua_err)?;
        let log = lua.create_function(|_, _: mlua::MultiValue| Ok(())).map_err(lua_err)?;
        t.raw_set("error_reply", error_reply).map_err(lua_err)?;
        t.raw_set("status_reply", status_reply).map_err(lua_err)?;
        t.raw_set("sha1hex", sha1hex).map_err(lua_err)?;
        t.raw_set("log", log).map_err(lua_err)?;
        for (i, level) in ["LOG_DEBUG", "LOG_VERBOSE", "LOG_NOTICE", "LOG_WARNING"].iter().enumerate() {
            t.raw_set(*level, i as i64).map_err(lua_err)?;
        }
        Ok(t)
    }

    fn compile(&mut self, sha: &str, script: &[u8]) -> Result<Function, String> {
        if let Some(f) = self.compiled.by_sha.get(sha) {
            return Ok(f.clone());
        }
        let f = self
            .lua
            .load(script)
            .set_name(format!("@user_script:{sha}"))
            // Source only: Lua 5.1 does not verify bytecode, and a crafted binary chunk
            // can corrupt the VM (CVE-2015-4335 in Redis). Every replica runs scripts.
            .set_mode(mlua::chunk::ChunkMode::Text)
            .into_function()
            .map_err(|e| format!("ERR Error compiling script (new function): {e}"))?;
        self.compiled.by_sha.insert(sha.to_string(), f.clone());
        self.compiled.order.push_back(sha.to_string());
        if self.compiled.order.len() > COMPILED_MAX {
            if let Some(old) = self.compiled.order.pop_front() {
                self.compiled.by_sha.remove(&old);
            }
        }
        Ok(f)
    }

    /// Runs a script with `KEYS` and `ARGV`, its `redis.call`s going to `script`.
    /// `Err` carries the error reply text; the caller rolls the entry back.
    ///
    /// A lock client's well-known script (see `known`) runs natively when its inputs
    /// allow; everything else runs in the VM.
    pub fn run(
        &mut self,
        body: &[u8],
        keys: &[Bytes],
        args: &[Bytes],
        script: &mut Script<'_>,
    ) -> Result<ScriptReply, String> {
        if let Some(which) = known::recognize(body) {
            if let Some(result) = known::run(which, keys, args, script) {
                self.runs.native += 1;
                return result;
            }
        }
        self.runs.vm += 1;
        self.run_in_vm(body, keys, args, script)
    }

    /// Scripts run so far, natively and in the VM (node-local statistics for INFO,
    /// never part of the replicated state).
    pub fn runs(&self) -> ScriptRuns {
        self.runs
    }

    /// Gives the next run its instruction budget. The hook is set again for every run:
    /// setting it restarts Lua's instruction count, which otherwise carries over from
    /// the run before, so the limit would fall up to `HOOK_EVERY` instructions earlier
    /// or later on a replica whose VM ran other scripts (or none, after a restart), and
    /// the same script could pass on one replica and be rolled back on another.
    fn arm_budget(&mut self) -> Result<(), String> {
        let limit = self.instructions_max;
        let budget = AtomicU64::new(limit.div_ceil(u64::from(HOOK_EVERY)));
        self.lua
            .set_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_, _| {
                if budget.fetch_sub(1, Ordering::Relaxed) <= 1 {
                    return Err(mlua::Error::runtime(format!(
                        "BUSY script exceeded the instruction limit ({limit}) and was rolled back"
                    )));
                }
                Ok(VmState::Continue)
            })
            .map_err(lua_err)
    }

    /// Runs a script in the VM.
    fn run_in_vm(
        &mut self,
        body: &[u8],
        keys: &[Bytes],
        args: &[Bytes],
        script: &mut Script<'_>,
    ) -> Result<ScriptReply, String> {
        let sha = sha1_hex(body);
        let function = self.compile(&sha, body)?;
        self.reset_random.call::<()>(()).map_err(lua_err)?;
        self.arm_budget()?;
        let raised: RefCell<Option<String>> = RefCell::new(None);
        let script = RefCell::new(script);
        let result = self.lua.scope(|scope| {
            let env = self.lua.create_table()?;
            env.set_metatable(Some(self.env_meta.clone()))?;
            env.raw_set(
                "KEYS",
                self.lua.create_sequence_from(
                    keys.iter().map(|k| self.lua.create_string(k)).collect::<mlua::Result<Vec<_>>>()?,
                )?,
            )?;
            env.raw_set(
                "ARGV",
                self.lua.create_sequence_from(
                    args.iter().map(|a| self.lua.create_string(a)).collect::<mlua::Result<Vec<_>>>()?,
                )?,
            )?;
            let redis = self.lua.create_table()?;
            let redis_meta = self.lua.create_table()?;
            redis_meta.raw_set("__index", self.helpers.clone())?;
            redis.set_metatable(Some(redis_meta))?;
            let call = scope.create_function(|lua, argv: mlua::MultiValue| {
                match redis_command(lua, &argv, &mut script.borrow_mut())? {
                    Ok(value) => Ok(value),
                    Err(text) => {
                        *raised.borrow_mut() = Some(text.clone());
                        Err(mlua::Error::runtime(text))
                    }
                }
            })?;
            let pcall = scope.create_function(|lua, argv: mlua::MultiValue| {
                match redis_command(lua, &argv, &mut script.borrow_mut())? {
                    Ok(value) => Ok(value),
                    Err(text) => {
                        let reply = lua.create_table()?;
                        reply.raw_set("err", text)?;
                        Ok(Value::Table(reply))
                    }
                }
            })?;
            redis.raw_set("call", call)?;
            redis.raw_set("pcall", pcall)?;
            env.raw_set("redis", redis)?;
            function.set_environment(env)?;
            let value: Value = function.call(())?;
            to_reply(&value, 0)
        });
        // Drop the environment's reference to this run's state at once.
        let _ = function.set_environment(self.base.clone());
        match result {
            Ok(reply) => Ok(reply),
            Err(e) => Err(match raised.into_inner() {
                // A redis.call error the script did not catch is the script's error,
                // as in Redis.
                Some(text) if e.to_string().contains(&text) => text,
                _ => script_error(&e),
            }),
        }
    }
}

/// The text of a failed script's error reply.
fn script_error(e: &mlua::Error) -> String {
    let mut message = e.to_string();
    if let Some(first) = message.lines().next() {
        message = first.to_string();
    }
    if message.contains("BUSY script exceeded") {
        return message.trim_start_matches("runtime error: ").to_string();
    }
    format!("ERR Error running script: {}", message.trim_start_matches("runtime error: "))
}

/// Runs one `redis.call` / `redis.pcall`. The outer `Result` is a Lua error (bad
/// arguments); the inner one is the command's error reply text.
fn redis_command(lua: &Lua, argv: &mlua::MultiValue, script: &mut Script<'_>) -> mlua::Result<Result<Value, String>> {
    if argv.is_empty() {
        return Err(mlua::Error::runtime("Please specify at least one argument for this redis lib call"));
    }
    let mut args = Vec::with_capacity(argv.len());
    for value in argv.iter() {
        match value {
            Value::String(s) => args.push(Bytes::copy_from_slice(&s.as_bytes())),
            Value::Integer(i) => args.push(Bytes::from(i.to_string())),
            Value::Number(n) => args.push(Bytes::from(format_number(*n))),
            _ => return Err(mlua::Error::runtime("Lua redis lib command arguments must be strings or integers")),
        }
    }
    match run_command(args, script) {
        Ok(wire) => Ok(Ok(to_lua(lua, &wire)?)),
        Err(text) => Ok(Err(text)),
    }
}

/// One command issued by a script (through `redis.call` or a native body in `known`):
/// its reply, or its error reply text. Both paths go through here, so they cannot
/// disagree about a command.
fn run_command(args: Vec<Bytes>, script: &mut Script<'_>) -> Result<Wire, String> {
    // No wall clock inside the state machine: EXAT / PXAT are refused here.
    let request = cmd::parse_in_script(args).map_err(|e| e.to_string())?;
    let Request::Core(command, shape) = request else {
        return Err("ERR This Redis command is not allowed from script".into());
    };
    match script.call(command) {
        Ok(reply) => Ok(render::render(reply, shape)),
        Err(CoreError::Invalid(what)) if what.contains("not allowed in scripts") => {
            Err("ERR This Redis command is not allowed from script".into())
        }
        Err(e) => Err(core_error_text(&e)),
    }
}

/// Lua 5.1 turns numbers into strings with C's "%.14g"; arguments are converted the
/// same way, so `redis.call("PEXPIRE", k, 1.5e3)` sends "1500" as Redis would.
pub fn format_number(n: f64) -> String {
    if !n.is_finite() {
        return if n.is_nan() {
            "nan".into()
        } else if n > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    if n == 0.0 {
        return "0".into();
    }
    let exponent = n.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..14).contains(&exponent) {
        let formatted = format!("{n:.13e}");
        let (mantissa, exp) = formatted.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("integer exponent");
        format!("{}e{}{:02}", trim(mantissa.to_string()), if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        let decimals = (13 - exponent).max(0) as usize;
        trim(format!("{n:.decimals$}"))
    }
}

/// A command's reply as Redis hands it to Lua (RESP2 rules).
fn to_lua(lua: &Lua, wire: &Wire) -> mlua::Result<Value> {
    Ok(match wire {
        Wire::Status(s) => status_table(lua, s)?,
        Wire::StatusOwned(s) => status_table(lua, s)?,
        Wire::Error(e) => {
            let t = lua.create_table()?;
            t.raw_set("err", e.as_str())?;
            Value::Table(t)
        }
        Wire::Int(i) => Value::Integer(*i),
        Wire::Bulk(b) => Value::String(lua.create_string(b)?),
        Wire::Null | Wire::NullArray => Value::Boolean(false),
        Wire::Bool(b) => Value::Integer(i64::from(*b)),
        Wire::Double(d) => Value::String(lua.create_string(d.to_string())?),
        Wire::Array(items) | Wire::Push(items) | Wire::Sequence(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        Wire::Map(pairs) => {
            let t = lua.create_table()?;
            for (i, (k, v)) in pairs.iter().enumerate() {
                t.raw_set(2 * i + 1, to_lua(lua, k)?)?;
                t.raw_set(2 * i + 2, to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

fn status_table(lua: &Lua, s: &str) -> mlua::Result<Value> {
    let t = lua.create_table()?;
    t.raw_set("ok", s)?;
    Ok(Value::Table(t))
}

/// A script's return value as Redis converts it.
fn to_reply(value: &Value, depth: usize) -> mlua::Result<ScriptReply> {
    if depth > REPLY_DEPTH_MAX {
        return Err(mlua::Error::runtime("reached lua stack limit"));
    }
    Ok(match value {
        Value::Nil | Value::Boolean(false) => ScriptReply::Nil,
        Value::Boolean(true) => ScriptReply::Int(1),
        Value::Integer(i) => ScriptReply::Int(*i),
        Value::Number(n) => ScriptReply::Int(*n as i64),
        Value::String(s) => ScriptReply::Bulk(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Table(t) => {
            if let Value::String(e) = t.raw_get::<Value>("err")? {
                return Ok(ScriptReply::Error(e.to_string_lossy()));
            }
            if let Value::String(s) = t.raw_get::<Value>("ok")? {
                return Ok(ScriptReply::Status(s.to_string_lossy()));
            }
            let mut items = Vec::new();
            for i in 1.. {
                let item: Value = t.raw_get(i)?;
                if item.is_nil() {
                    break;
                }
                items.push(to_reply(&item, depth + 1)?);
            }
            ScriptReply::Array(items)
        }
        _ => ScriptReply::Nil,
    })
}

#[cfg(test)]
mod tests {
    use super::{format_number, LuaEngine, ScriptReply};
    use bytes::Bytes;
    use fencelock_core::{Limits, StateMachine};

    /// Runs `script` on `engine` against `sm` as the next entry.
    fn run(engine: &mut LuaEngine, sm: &mut StateMachine, script: &str, keys: &[&str]) -> Result<ScriptReply, String> {
        // Log indexes only grow; one counter serves every state machine here.
        static INDEX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000);
        run_at(INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed), engine, sm, script, keys)
    }

    /// Runs `script` on `engine` against `sm` as the entry at `index`.
    fn run_at(
        index: u64,
        engine: &mut LuaEngine,
        sm: &mut StateMachine,
        script: &str,
        keys: &[&str],
    ) -> Result<ScriptReply, String> {
        let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect();
        sm.apply_script(index, index, |s| engine.run(script.as_bytes(), &keys, &[], s)).result
    }

    /// A VM with another history: many scripts run, many tables made and dropped, so
    /// the addresses it hands out and its instruction count are its own.
    fn used_engine() -> LuaEngine {
        let mut engine = LuaEngine::new().expect("a VM");
        let mut sm = StateMachine::new(Limits::default());
        for i in 0..50 {
            let script = format!("local t = {{}} for i = 1, {} do t[i] = {{}} end return 1", 100 + i * 37);
            run(&mut engine, &mut sm, &script, &[]).expect("runs");
        }
        engine
    }

    #[test]
    fn bytecode_is_refused_as_redis_refuses_it() {
        // A binary chunk's signature: Lua 5.1 would load it unverified.
        let chunk = b"\x1bLuaQ\x00\x01\x04\x08\x04\x08\x00";
        let checked = super::check_syntax(chunk).expect_err("refused");
        assert!(checked.starts_with("ERR Error compiling script"), "{checked}");
        assert!(checked.contains("binary"), "says why: {checked}");
        let mut engine = LuaEngine::new().expect("a VM");
        let mut sm = StateMachine::new(Limits::default());
        let ran = run(&mut engine, &mut sm, std::str::from_utf8(chunk).expect("ascii"), &[]).expect_err("refused");
        assert!(ran.contains("binary"), "{ran}");
        assert_eq!(run(&mut engine, &mut sm, "return 1", &[]), Ok(ScriptReply::Int(1)), "the VM goes on");
    }

    #[test]
    fn the_instruction_limit_falls_at_the_same_point_on_every_replica() {
        let limited = |mut engine: LuaEngine| {
            engine.instructions_max = 50_000;
            engine
        };
        let mut used = limited(used_engine());
        let mut sm = StateMachine::new(Limits::default());
        let (mut passed, mut refused) = (0, 0);
        for n in (40_000..56_000).step_by(250) {
            let script = format!("for i = 1, {n} do end return 1");
            let fresh = run(&mut limited(LuaEngine::new().expect("a VM")), &mut sm, &script, &[]);
            // `used` runs one more script of its own in between, so its count moves on.
            let _ = run(&mut used, &mut sm, &format!("for i = 1, {} do end return 1", n % 7_919), &[]);
            let again = run(&mut used, &mut sm, &script, &[]);
            assert_eq!(fresh.is_ok(), again.is_ok(), "a loop of {n}: {fresh:?} on a fresh VM, {again:?} on a used one");
            if fresh.is_ok() {
                passed += 1
            } else {
                refused += 1
            }
        }
        assert!(passed > 0 && refused > 0, "the loops straddle the limit: {passed} passed, {refused} refused");
        let busy = run(&mut used, &mut sm, "while true do end", &[]).expect_err("over the limit");
        assert!(busy.starts_with("BUSY script exceeded the instruction limit (50000)"), "{busy}");
    }

    #[test]
    fn traversing_a_table_keyed_by_tables_is_refused_alike_on_every_replica() {
        // Keys placed by address: the order differs with the VM's history, and so would
        // the order the keys are created in (each new key takes the next fence).
        let script = "local t = {} \
            for i = 1, #KEYS do t[{}] = KEYS[i] end \
            local created = {} \
            local ok, err = pcall(function() \
              for _, key in pairs(t) do redis.call('SET', key, '1') created[#created + 1] = key end \
            end) \
            if ok then return created end \
            return {err = err}";
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let (mut fresh, mut used) = (LuaEngine::new().expect("a VM"), used_engine());
        let (mut one, mut other) = (StateMachine::new(Limits::default()), StateMachine::new(Limits::default()));
        let first = run_at(1, &mut fresh, &mut one, script, &keys);
        let second = run_at(1, &mut used, &mut other, script, &keys);
        assert_eq!(first, second, "the same reply on both replicas");
        assert_eq!(one.state_hash(), other.state_hash(), "the same state on both replicas");
        let Ok(ScriptReply::Error(text)) = first else { panic!("refused: {first:?}") };
        assert!(text.contains("cannot traverse a table with a table as a key"), "{text}");
        let count = format!("return redis.call('EXISTS', {})", keys.map(|k| format!("'{k}'")).join(", "));
        assert_eq!(run(&mut fresh, &mut one, &count, &[]), Ok(ScriptReply::Int(0)), "no key was set");
        for traversal in ["next(t)", "table.foreach(t, print)"] {
            let script = format!("local t = {{}} t[{{}}] = 1 t.x = 2 return {traversal}");
            let refused = run(&mut fresh, &mut one, &script, &[]).expect_err("refused");
            assert!(refused.contains("cannot traverse a table with a table as a key"), "{traversal}: {refused}");
        }
        // Strings, numbers and booleans are placed by value: allowed, and ordered alike.
        let plain = "local t = {x = 1, y = 2, [3] = 3, [true] = 4} local n = 0 \
            for k, v in pairs(t) do n = n + v end return n";
        assert_eq!(run(&mut fresh, &mut one, plain, &[]), Ok(ScriptReply::Int(10)));
        assert_eq!(run(&mut used, &mut other, plain, &[]), Ok(ScriptReply::Int(10)));
    }

    #[test]
    fn numbers_format_as_lua_51_does() {
        assert_eq!(format_number(1500.0), "1500");
        assert_eq!(format_number(1.5), "1.5");
        assert_eq!(format_number(-0.25), "-0.25");
        assert_eq!(format_number(1e20), "1e+20");
        assert_eq!(format_number(123456789012345678.0), "1.2345678901235e+17");
        assert_eq!(format_number(0.0001), "0.0001");
        assert_eq!(format_number(0.00001), "1e-05");
        assert_eq!(format_number(1.0 / 3.0), "0.33333333333333");
    }
}
