//! Admission by memory: redis-server's `maxmemory` with its `noeviction` policy, and
//! the reason etcd has `--quota-backend-bytes`.
//!
//! Every write goes through the log to every replica and is replayed from it after a
//! restart. Without a bound, clients that keep adding data drive every node out of
//! memory together, and each one that restarts replays the same log into the same
//! end: the whole cluster crash-loops. So past `--maxmemory-mib` of resident memory a
//! node refuses the commands that add data (SET, pushes, a new lock or session, ...)
//! with Redis's `OOM` error, before they reach the log, and keeps serving reads and
//! everything that frees memory (DEL, UNLOCK, pops, releases, renewals).
//!
//! The check is admission, not part of apply: it reads this process's resident size,
//! which differs between nodes, so it must never decide what an entry does. A write
//! admitted just before the bound is crossed still applies everywhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fencelock_core::Command;

/// The error a refused command gets, as Redis words it (clients map the `OOM` prefix
/// to their out-of-memory error).
pub const OOM_ERROR: &str = "OOM command not allowed when used memory > 'maxmemory'";

/// How often the resident size is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The bound and the last resident size read.
pub struct MemoryGate {
    max_bytes: u64,
    rss_bytes: AtomicU64,
}

impl MemoryGate {
    /// A gate at `max_bytes` of resident memory (0: none). Reads the size once now.
    pub fn new(max_bytes: u64) -> Arc<MemoryGate> {
        Arc::new(MemoryGate { max_bytes, rss_bytes: AtomicU64::new(rss_bytes()) })
    }

    /// The bound in bytes (0: none).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The resident size as last read.
    pub fn rss_bytes(&self) -> u64 {
        self.rss_bytes.load(Ordering::Relaxed)
    }

    /// Whether commands that add data are refused now.
    pub fn over(&self) -> bool {
        self.max_bytes != 0 && self.rss_bytes() > self.max_bytes
    }

    /// The error for a refused command, with the sizes.
    pub fn refusal(&self) -> String {
        format!(
            "{OOM_ERROR}: {} MiB resident, --maxmemory-mib {}; delete data or raise the bound",
            self.rss_bytes() >> 20,
            self.max_bytes >> 20
        )
    }

    /// Reads the resident size every `SAMPLE_EVERY` for as long as the process runs.
    pub async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.rss_bytes.store(rss_bytes(), Ordering::Relaxed);
        }
    }
}

/// This process's resident set size (0 where /proc is not there: no refusals).
fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * page_bytes()
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Half of the memory this process may use: the machine's, or its cgroup's limit when
/// that is lower (a container's: the kernel's OOM killer acts on it long before the
/// machine runs out). 0 where neither can be read: no bound. Half leaves room for a
/// snapshot being built, which briefly holds an encoded copy of the state.
pub fn default_max_bytes() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| mem_total_bytes(&m)).unwrap_or(0);
    let cgroup = cgroup_limit_bytes();
    let total = match (machine, cgroup) {
        (0, Some(limit)) => limit,
        (machine, Some(limit)) => machine.min(limit),
        (machine, None) => machine,
    };
    total / 2
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), if it has one.
fn cgroup_limit_bytes() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        // v2: "0::/path"; v1: "N:memory:/path" (or a list of controllers).
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Some(limit) = parse_limit(&std::fs::read_to_string(file).unwrap_or_default()) {
            return Some(limit);
        }
    }
    // In a container with a cgroup namespace of its own (or v1 without one, where the
    // path above does not exist inside it), the limit is at the mount's root.
    ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|file| parse_limit(&std::fs::read_to_string(file).unwrap_or_default()))
}

/// A cgroup memory limit file's value: "max" (v2) or a huge v1 number mean none.
fn parse_limit(text: &str) -> Option<u64> {
    let limit: u64 = text.trim().parse().ok()?;
    // v1 reports "no limit" as a page-rounded i64::MAX.
    (limit < (1 << 60)).then_some(limit)
}

/// Whether applying `command` may leave the state larger (Redis's `denyoom` commands):
/// what only reads, deletes, releases, renews or pops is let through past the bound,
/// so clients can always make room.
pub fn may_grow(command: &Command) -> bool {
    matches!(
        command,
        Command::Set(_)
            | Command::IncrBy { .. }
            | Command::HSet { .. }
            | Command::HIncrBy { .. }
            | Command::Push { .. }
            | Command::Lock(_)
            | Command::SemAcquire(_)
            | Command::Campaign(_)
            | Command::Proclaim { .. }
            | Command::SessionOpen { .. }
            | Command::CounterAdd { .. }
            | Command::QueuePush { .. }
            | Command::BarrierWait { .. }
            | Command::BarrierEnter { .. }
            | Command::BarrierEnterSession { .. }
            | Command::ConfigSet { .. }
    )
}

/// Commands a script may issue past the bound (`script_only_frees`): they read,
/// delete, pop or change a TTL, and add nothing.
const SCRIPT_FREES: &[&str] = &[
    "GET",
    "EXISTS",
    "DEL",
    "UNLINK",
    "PEXPIRE",
    "EXPIRE",
    "PERSIST",
    "PTTL",
    "TTL",
    "TYPE",
    "HGET",
    "HEXISTS",
    "HGETALL",
    "HDEL",
    "LPOP",
    "RPOP",
    "PUBLISH",
    "KEYS",
    "SCAN",
    "DBSIZE",
    "FENCE",
    "LOCK.INFO",
];

/// Parts of `redis` a script may use that issue no command.
const SCRIPT_HELPERS: &[&str] = &[
    "log",
    "sha1hex",
    "error_reply",
    "status_reply",
    "setresp",
    "LOG_DEBUG",
    "LOG_VERBOSE",
    "LOG_NOTICE",
    "LOG_WARNING",
];

/// Whether every command the script `body` can issue is named literally and adds
/// nothing (`SCRIPT_FREES`), so it may run past the bound: a release script such as
/// `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1])
/// end`. Judged on the text: every use of `redis` must be `redis.call(` or
/// `redis.pcall(` followed by a quoted name, or one of `SCRIPT_HELPERS`. A script that
/// names a command any other way (a variable, an alias of `redis`, code built from
/// strings) is taken as one that may add data.
pub fn script_only_frees(body: &[u8]) -> bool {
    const BUILDS_CODE: &[&[u8]] = &[b"loadstring", b"load(", b"_G", b"getfenv", b"setfenv", b"rawget", b"require"];
    if BUILDS_CODE.iter().any(|word| body.windows(word.len()).any(|w| w == *word)) {
        return false;
    }
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut at = 0;
    while let Some(found) = body[at..].windows(5).position(|w| w == b"redis") {
        let start = at + found;
        at = start + 5;
        if start > 0 && is_ident(body[start - 1]) || body.get(at).is_some_and(|&b| is_ident(b)) {
            continue; // part of another name
        }
        let Some(rest) = body[at..].strip_prefix(b".") else { return false };
        let name_len = rest.iter().take_while(|&&b| is_ident(b)).count();
        let (member, rest) = rest.split_at(name_len);
        if SCRIPT_HELPERS.iter().any(|h| h.as_bytes() == member) {
            continue;
        }
        if member != b"call" && member != b"pcall" {
            return false;
        }
        let rest = rest.trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b"(") else { return false };
        let rest = rest.trim_ascii_start();
        let Some((&quote, rest)) = rest.split_first().filter(|(q, _)| **q == b'\'' || **q == b'"') else {
            return false;
        };
        let Some(end) = rest.iter().position(|&b| b == quote) else { return false };
        let command = rest[..end].to_ascii_uppercase();
        if !SCRIPT_FREES.iter().any(|c| c.as_bytes() == command.as_slice()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_parse_and_no_limit_is_none() {
        assert_eq!(parse_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_limit("max\n"), None, "cgroup v2 without a limit");
        assert_eq!(parse_limit("9223372036854771712\n"), None, "cgroup v1 without a limit");
        assert_eq!(mem_total_bytes("MemTotal:       16384 kB\nMemFree: 1 kB\n"), Some(16384 * 1024));
        // Whatever this machine's cgroup says, the default is at most half its memory.
        let machine = mem_total_bytes(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        assert!(default_max_bytes() <= machine / 2);
    }

    #[test]
    fn the_resident_size_and_the_machines_memory_are_read() {
        let rss = rss_bytes();
        assert!(rss > 1 << 20, "a running test process is bigger than 1 MiB: {rss}");
        assert!(default_max_bytes() > rss, "half the machine is more than this test");
        let gate = MemoryGate::new(1 << 20);
        assert!(gate.over());
        assert!(gate.refusal().starts_with("OOM command not allowed when used memory > 'maxmemory': "));
        assert!(!MemoryGate::new(0).over(), "0 is no bound");
        assert!(!MemoryGate::new(u64::MAX).over());
    }

    #[test]
    fn a_script_runs_past_the_bound_only_if_its_commands_are_named_and_add_nothing() {
        let release =
            "if redis.call('get', KEYS[1]) == ARGV[1] then\n  return redis.call(\"DEL\", KEYS[1])\nend\nreturn 0";
        assert!(script_only_frees(release.as_bytes()));
        assert!(script_only_frees(b"redis.log(redis.LOG_NOTICE, 'x'); return redis.pcall( 'pexpire', KEYS[1], 100)"));
        assert!(script_only_frees(b"return 1"), "no command at all");
        for grows in [
            "return redis.call('SET', KEYS[1], 'x')",
            "redis.call('del', KEYS[1]); return redis.call('hincrby', KEYS[2], 'f', -1)",
            "local c = 'SET'; return redis.call(c, KEYS[1], 'x')",
            "local r = redis; return r.call('SET', KEYS[1], 'x')",
            "return redis['call']('SET', KEYS[1], 'x')",
            "return loadstring('return 1')()",
            "return _G.redis.call('get', KEYS[1])",
            "return redis.call(string.upper('set'), KEYS[1], 'x')",
        ] {
            assert!(!script_only_frees(grows.as_bytes()), "{grows}");
        }
        assert!(script_only_frees(b"local predis = 1; local redis_x = 2; return predis + redis_x"));
    }

    /// The lock clients' release and extend scripts pass on their text alone, but for
    /// node-redlock's extend, which SETs the keys it has just found holding its value
    /// (`eval` admits it by name); their acquire scripts do not pass.
    #[test]
    fn the_lock_clients_release_and_extend_scripts_only_free() {
        use crate::lua::known::{Known, SCRIPTS};
        for (which, text) in SCRIPTS {
            let frees =
                matches!(which, Known::PyRelease | Known::PyExtend | Known::PyReacquire | Known::RedlockRelease);
            assert_eq!(script_only_frees(text.as_bytes()), frees, "{which:?}");
        }
    }
}
