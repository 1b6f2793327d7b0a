//! Starting and stopping the servers under test, all on 127.0.0.1 with ports picked here
//! and data in temporary directories; every process is killed when its `Target` drops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fencelock_client::resp::Value;
use tokio::process::{Child, Command};

use crate::conn::Conn;

/// The kinds of server the tool can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One fencelock node (every write fsynced before its reply).
    Fencelock,
    /// Three fencelock nodes; clients talk to the leader.
    Fencelock3,
    /// redis-server with persistence off.
    Redis,
    /// redis-server with `appendonly yes`, `appendfsync always`.
    RedisAof,
    /// Three etcd 3.4 members; clients talk to the leader over gRPC.
    Etcd3,
}

impl Kind {
    /// Parses a `--targets` entry.
    pub fn parse(name: &str) -> Result<Kind, String> {
        Ok(match name {
            "fencelock" => Kind::Fencelock,
            "fencelock-3" => Kind::Fencelock3,
            "redis" => Kind::Redis,
            "redis-aof" => Kind::RedisAof,
            "etcd-3" => Kind::Etcd3,
            other => {
                return Err(format!("unknown target {other:?} (fencelock, fencelock-3, redis, redis-aof, etcd-3)"))
            }
        })
    }

    /// The name used in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fencelock => "fencelock",
            Kind::Fencelock3 => "fencelock-3",
            Kind::Redis => "redis",
            Kind::RedisAof => "redis-aof",
            Kind::Etcd3 => "etcd-3",
        }
    }

    /// Spoken to over RESP (everything but etcd).
    pub fn is_resp(self) -> bool {
        self != Kind::Etcd3
    }
}

/// A started target; its processes are killed on drop.
pub struct Target {
    /// What it is.
    pub kind: Kind,
    /// The RESP port clients use (the leader's, for a cluster); 0 for etcd.
    pub port: u16,
    /// etcd client URLs, the leader's alone (followers would only proxy to it).
    pub etcd_endpoints: Vec<String>,
    children: Vec<Child>,
    /// Which of `children` the clients talk to (the leader, for a cluster).
    client_index: usize,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
    }
}

impl Target {
    /// Resident set size of each of the target's processes, in KiB (from /proc).
    pub fn rss_kib(&self) -> Vec<u64> {
        self.children.iter().filter_map(|c| c.id()).map(|pid| status_kib(pid, "VmRSS:")).collect()
    }

    /// Peak resident set size of each process over its life so far, in KiB: a snapshot
    /// of a large table peaks between two RSS samples.
    pub fn peak_rss_kib(&self) -> Vec<u64> {
        self.children.iter().filter_map(|c| c.id()).map(|pid| status_kib(pid, "VmHWM:")).collect()
    }

    /// Resident set size of the process the clients talk to, in KiB (0 once it exited):
    /// growth is measured on one process, never the largest after less the largest
    /// before, which may be two different nodes.
    pub fn client_rss_kib(&self) -> u64 {
        self.children.get(self.client_index).and_then(|c| c.id()).map_or(0, |pid| status_kib(pid, "VmRSS:"))
    }
}

impl Target {
    /// CPU time (user + system) the target's processes have used, in µs.
    pub fn cpu_us(&self) -> u64 {
        self.children.iter().filter_map(|c| c.id()).map(cpu_us_of).sum()
    }
}

/// utime + stime from `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
pub fn cpu_us_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / per_second
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub use fencelock_testkit::free_port;

fn spawn(command: &mut Command, what: &str) -> Result<Child, String> {
    command.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    // Both servers read their settings from the environment too (fencelock FENCELOCK_*,
    // etcd ETCD_*): a variable left in the shell would silently reconfigure a target.
    // FENCELOCK_LOG only sets logging, and is how the servers' logs are asked for.
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if (name.starts_with("FENCELOCK_") && name != "FENCELOCK_LOG") || name.starts_with("ETCD_") {
            command.env_remove(&key);
        }
    }
    // Killed with this tool even when it dies without dropping its `Target`s (SIGKILL, a
    // panic that aborts). The signal follows the thread that forked, not the process:
    // targets are started from `run`, which `main` blocks on, so that is the main thread.
    let parent = std::process::id();
    // SAFETY: runs in the child between fork and exec, so it calls only async-signal-safe
    // functions (prctl, getppid, _exit) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl took effect: nobody is left to kill us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn().map_err(|e| format!("cannot start {what}: {e}"))
}

/// Where the targets' data directories go (the temporary directory) and the filesystem
/// it is on, from the longest mount point in /proc/mounts that holds it: on tmpfs a sync
/// costs next to nothing, so a table measured there is not the disk's.
pub fn data_filesystem() -> String {
    let dir = std::env::temp_dir();
    let real = std::fs::canonicalize(&dir).unwrap_or(dir);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(PathBuf, String, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let &[device, mount_point, fstype, ..] = fields.as_slice() else { continue };
        let mount_point = PathBuf::from(unescape_mount_field(mount_point));
        // A later line mounted over an earlier one at the same point: it is what is seen.
        let longer = best.as_ref().is_none_or(|(p, _, _)| mount_point.as_os_str().len() >= p.as_os_str().len());
        if real.starts_with(&mount_point) && longer {
            best = Some((mount_point, fstype.to_string(), unescape_mount_field(device)));
        }
    }
    match best {
        Some((mount_point, fstype, device)) => format!(
            "Data directories under {}: filesystem {fstype} ({device} on {}).",
            real.display(),
            mount_point.display()
        ),
        None => format!("Data directories under {}: filesystem unknown (no /proc/mounts entry).", real.display()),
    }
}

/// /proc/mounts writes a space, tab, newline or backslash in a field as `\ooo` (octal).
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(u8::is_ascii_digit))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts a target and waits until it takes writes.
pub async fn start(kind: Kind, fencelock: &Path) -> Result<Target, String> {
    let dir = tempfile::Builder::new().prefix("fencelock-bench-").tempdir().map_err(|e| e.to_string())?;
    let mut target =
        Target { kind, port: 0, etcd_endpoints: Vec::new(), children: Vec::new(), client_index: 0, _dir: dir };
    let root = target._dir.path().to_path_buf();
    match kind {
        Kind::Fencelock => {
            target.port = free_port();
            // The peer port too: its default (the port + 10,000) falls in Linux's
            // ephemeral range, where a connection the last cell closed can still hold
            // it in TIME-WAIT ("Address already in use" after the `connections` cell).
            let peer_port = free_port().to_string();
            let mut c = Command::new(fencelock);
            c.args(["--port", &target.port.to_string(), "--peer-port", &peer_port, "--maxclients", "20000"])
                .arg("--data-dir")
                .arg(root.join("data"));
            target.children.push(spawn(&mut c, "fencelock")?);
            wait_resp_ready(target.port).await?;
        }
        Kind::Fencelock3 => {
            let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
            let peers: Vec<String> =
                ports.iter().enumerate().map(|(i, (_, peer))| format!("{}=127.0.0.1:{peer}", i + 1)).collect();
            for (i, (port, peer)) in ports.iter().enumerate() {
                let mut c = Command::new(fencelock);
                c.args(["--port", &port.to_string(), "--peer-port", &peer.to_string(), "--maxclients", "20000"])
                    .args(["--node-id", &(i + 1).to_string(), "--peers", &peers.join(","), "--data-dir"])
                    .arg(root.join(format!("n{}", i + 1)));
                target.children.push(spawn(&mut c, "fencelock")?);
            }
            target.port = fencelock_leader(&ports.iter().map(|p| p.0).collect::<Vec<_>>()).await?;
            // Node i is children[i].
            target.client_index = ports.iter().position(|p| p.0 == target.port).unwrap_or(0);
        }
        Kind::Redis | Kind::RedisAof => {
            target.port = free_port();
            let mut c = Command::new("redis-server");
            c.args(["--port", &target.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--maxclients", "20000", "--dir"])
                .arg(&root);
            if kind == Kind::RedisAof {
                c.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                c.args(["--appendonly", "no"]);
            }
            target.children.push(spawn(&mut c, "redis-server")?);
            wait_resp_ready(target.port).await?;
        }
        Kind::Etcd3 => {
            let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
            let cluster: Vec<String> =
                ports.iter().enumerate().map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1)).collect();
            for (i, (port, peer)) in ports.iter().enumerate() {
                let (client_url, peer_url) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{peer}"));
                let mut c = Command::new("etcd");
                c.args(["--name", &format!("e{}", i + 1), "--data-dir"])
                    .arg(root.join(format!("e{}", i + 1)))
                    .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                    .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "fencelock-bench", "--quota-backend-bytes", "8589934592"]);
                target.children.push(spawn(&mut c, "etcd (apt-get install etcd-server)")?);
            }
            let urls: Vec<String> = ports.iter().map(|(p, _)| format!("http://127.0.0.1:{p}")).collect();
            let leader = etcd_leader(&urls).await?;
            // Member i is children[i].
            target.client_index = urls.iter().position(|u| *u == leader).unwrap_or(0);
            target.etcd_endpoints = vec![leader];
        }
    }
    Ok(target)
}

async fn wait_resp_ready(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut c) = Conn::open(port).await {
            if let Ok(Value::Simple(_)) = c.call(&[b"SET", b"bench:ready", b"1"]).await {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the target on port {port} never accepted a write"))
}

/// The client port of the node that reports `role:master` once a write went through.
async fn fencelock_leader(ports: &[u16]) -> Result<u16, String> {
    wait_resp_ready(ports[0]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for &port in ports {
            let Ok(mut c) = Conn::open(port).await else { continue };
            if let Ok(Value::Bulk(info)) = c.call(&[b"INFO", b"replication"]).await {
                if String::from_utf8_lossy(&info).contains("role:master") {
                    return Ok(port);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("no fencelock node became leader".into())
}

/// The client URL of the member that every member names as leader.
async fn etcd_leader(urls: &[String]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for url in urls {
            let Ok(mut c) = etcd_client::Client::connect([url.as_str()], None).await else { continue };
            let Ok(status) = c.status().await else { continue };
            let me = status.header().map(|h| h.member_id()).unwrap_or(0);
            if status.leader() != 0 && status.leader() == me && c.put("bench/ready", "1", None).await.is_ok() {
                return Ok(url.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err("the etcd cluster never elected a leader (is etcd-server installed?)".into())
}

/// The fencelock binary: `--binary`, `$FENCELOCK_BIN`, or next to this program.
pub fn fencelock_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let candidate = given
        .or_else(|| std::env::var_os("FENCELOCK_BIN").map(PathBuf::from))
        .or_else(|| std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("fencelock"))));
    match candidate {
        Some(path) if path.exists() => Ok(path),
        _ => Err("no fencelock binary: run `cargo build --release --bin fencelock` first, or pass --binary".into()),
    }
}
