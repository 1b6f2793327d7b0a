//! Settings: command-line flags (named as redis-server names them where it has them),
//! each also read from a `FENCELOCK_*` environment variable, then from a TOML file
//! given by `--config`, then the defaults. Flag beats environment beats file.

use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

/// `fencelock`: a lock server that speaks Redis and keeps its state in a durable Raft log.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Flags {
    /// Client port [default: 6379].
    #[arg(long, env = "FENCELOCK_PORT")]
    pub port: Option<u16>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "FENCELOCK_BIND")]
    pub bind: Option<String>,
    /// Where the log, vote and snapshots live [default: ./fencelock-data].
    #[arg(long, env = "FENCELOCK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Clients must AUTH with this password.
    #[arg(long, env = "FENCELOCK_REQUIREPASS")]
    pub requirepass: Option<String>,
    /// This node's Raft id [default: 1].
    #[arg(long, env = "FENCELOCK_NODE_ID")]
    pub node_id: Option<u64>,
    /// Port for Raft peers [default: client port + 10000].
    #[arg(long, env = "FENCELOCK_PEER_PORT")]
    pub peer_port: Option<u16>,
    /// Most client connections served at once [default: 10000].
    #[arg(long, env = "FENCELOCK_MAXCLIENTS")]
    pub maxclients: Option<usize>,
    /// Log entries between snapshots [default: 100000].
    #[arg(long, env = "FENCELOCK_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// A snapshot is also taken once the log grows by this many MiB, or by the last
    /// snapshot's size if that is larger [default: 64].
    #[arg(long, env = "FENCELOCK_SNAPSHOT_LOG_MIB")]
    pub snapshot_log_mib: Option<u64>,
    /// How long a member may go unheard before the leader ends the waits its clients
    /// queued (blocking LOCK, QUEUE.POP, BLPOP, ...), so that nothing is granted or
    /// popped for a client on a node that is gone (1000..=86400000) [default: 30000].
    #[arg(long, env = "FENCELOCK_SILENT_NODE_MS")]
    pub silent_node_ms: Option<u64>,
    /// Seconds of silence on a client connection before the kernel sends it keepalive
    /// probes (then every third of that, and after 3 unanswered ones the connection is
    /// dropped), as redis-server's `tcp-keepalive`; 0 turns them off (0..=32767)
    /// [default: 300]. A client whose host vanished without closing its connection is
    /// otherwise never noticed: its blocked LOCK or QUEUE.POP stays queued, and is
    /// granted or handed an item for nobody.
    #[arg(long, env = "FENCELOCK_TCP_KEEPALIVE")]
    pub tcp_keepalive: Option<u64>,
    /// Resident memory, in MiB, past which commands that add data (SET, pushes, a new
    /// lock, semaphore permit, candidacy or session, ...) are refused with Redis's `OOM`
    /// error, as redis-server's `maxmemory` with `noeviction`; reads and whatever frees
    /// memory still run. 0: no bound (0..=1073741824) [default: half of this machine's
    /// memory]. Every node replays the same log, so without a bound clients adding data
    /// would drive all of them out of memory at once, and again on every restart.
    #[arg(long, env = "FENCELOCK_MAXMEMORY_MIB")]
    pub maxmemory_mib: Option<u64>,
    /// Every voter of a static cluster, this node included: `1=host:peer-port,2=...`.
    /// Without it the node runs alone.
    #[arg(long, env = "FENCELOCK_PEERS")]
    pub peers: Option<String>,
    /// AppendEntries sent to a peer before its answers come back (1..=64) [default: 1].
    /// On one machine (loopback, CPU-bound) 1 is fastest: waiting lets each request carry
    /// a bigger batch. Raise it when the network round trip is long next to fsync.
    #[arg(long, env = "FENCELOCK_PEER_PIPELINE")]
    pub peer_pipeline: Option<usize>,
    /// Threads serving clients and Raft [default: 1], as redis-server's `io-threads`.
    /// 1 runs everything on one thread (the WAL's fsync has its own): on a 2-core
    /// machine that measured 1.5x the writes per second of two worker threads and a
    /// third less CPU per write, because every hand-off between threads is a wake-up.
    #[arg(long, env = "FENCELOCK_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// How long, in µs (0..=1000), a single node serving one client polls for its next
    /// request before the thread sleeps [default: 200]; 0 sleeps at once. Skipping the
    /// wake-up measured 522–597 → 475–535 µs for a 1-client lock cycle. Cluster members,
    /// busy nodes and --io-threads above 1 never poll.
    #[arg(long, env = "FENCELOCK_IDLE_SPIN_US")]
    pub idle_spin_us: Option<u64>,
    /// Join an existing cluster through any member's client address (`host:port`): this
    /// node asks it to add this node as a learner, catch it up and promote it to voter.
    /// Ignored once the node has joined (its data directory holds the membership).
    #[arg(long, env = "FENCELOCK_JOIN")]
    pub join: Option<String>,
    /// Test harnesses only: listen for peers here instead of at this node's `--peers`
    /// address (the harness puts a fault-injecting proxy at that address).
    #[arg(long, env = "FENCELOCK_PEER_LISTEN", hide = true)]
    pub peer_listen: Option<String>,
    /// Test harnesses only: reach node `id` at this address instead of its address in
    /// the membership (`1=host:port,...`; one proxy per link lets a harness cut links).
    #[arg(long, env = "FENCELOCK_PEER_ROUTE", hide = true)]
    pub peer_route: Option<String>,
    /// Test harnesses only: the protocol level this node reports to its peers (0 to
    /// stand in for a build from before the level exchange, which holds the cluster's
    /// write groups off; see docs/CLUSTER.md, "Rolling upgrades").
    #[arg(long, env = "FENCELOCK_PROTOCOL_LEVEL", hide = true)]
    pub protocol_level: Option<u32>,
    /// A TOML file with any of the settings above (snake_case keys).
    #[arg(long, env = "FENCELOCK_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The same settings as a TOML file holds them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    port: Option<u16>,
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    requirepass: Option<String>,
    node_id: Option<u64>,
    peer_port: Option<u16>,
    maxclients: Option<usize>,
    snapshot_every: Option<u64>,
    snapshot_log_mib: Option<u64>,
    silent_node_ms: Option<u64>,
    tcp_keepalive: Option<u64>,
    maxmemory_mib: Option<u64>,
    peers: Option<String>,
    join: Option<String>,
    peer_pipeline: Option<usize>,
    io_threads: Option<usize>,
    idle_spin_us: Option<u64>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client port.
    pub port: u16,
    /// Listen address.
    pub bind: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// AUTH password.
    pub requirepass: Option<String>,
    /// Raft node id.
    pub node_id: u64,
    /// Raft peer port.
    pub peer_port: u16,
    /// Connection bound.
    pub maxclients: usize,
    /// Snapshot interval in entries.
    pub snapshot_every: u64,
    /// Log growth between snapshots, at least, in MiB.
    pub snapshot_log_mib: u64,
    /// How long a member may go unheard before the leader ends its clients' waits.
    pub silent_node_ms: u64,
    /// Idle seconds before keepalive probes on client connections (0: off).
    pub tcp_keepalive: u64,
    /// Resident bytes past which commands that add data are refused (0: no bound).
    pub maxmemory_bytes: u64,
    /// Static cluster members: node id → peer address (empty: a single node).
    pub peers: std::collections::BTreeMap<u64, String>,
    /// A member's client address to join through (`--join`).
    pub join: Option<String>,
    /// AppendEntries in flight per peer connection.
    pub peer_pipeline: usize,
    /// Runtime threads (1: a single-threaded runtime).
    pub io_threads: usize,
    /// Longest poll before the runtime thread sleeps on an idle single node, µs.
    pub idle_spin_us: u64,
    /// Test only: where to listen for peers instead of this node's `--peers` address.
    pub peer_listen: Option<String>,
    /// Test only: per-node address overrides for outgoing peer connections.
    pub peer_routes: std::collections::BTreeMap<u64, String>,
    /// Test only (`FENCELOCK_TEST_CLOCK=offset_ms:rate`): this node's clock runs from
    /// `offset_ms` at `rate` times real time, to model clock skew and drift.
    pub test_clock: (u64, f64),
    /// Test only: the protocol level this node reports (`raft::levels`).
    pub protocol_level: u32,
}

/// Most runtime threads `--io-threads` accepts (redis-server caps its own at 128; past
/// the core count more threads only add hand-offs).
pub const IO_THREADS_MAX: usize = 64;
/// Most `--maxclients` (each connection is a descriptor and a task).
pub const MAXCLIENTS_MAX: usize = 1_000_000;
/// Largest `--snapshot-log-mib`: 1 TiB of log between snapshots is already more than a
/// lock server's memory; past it the bound means nothing.
pub const SNAPSHOT_LOG_MIB_MAX: u64 = 1024 * 1024;

/// Parses `FENCELOCK_TEST_CLOCK`'s `offset_ms:rate`.
pub fn parse_test_clock(text: &str) -> Result<(u64, f64), String> {
    let bad = || format!("FENCELOCK_TEST_CLOCK must be offset_ms:rate with rate in 0.5..=2, got '{text}'");
    let (offset, rate) = text.split_once(':').ok_or_else(bad)?;
    let offset: u64 = offset.trim().parse().map_err(|_| bad())?;
    let rate: f64 = rate.trim().parse().map_err(|_| bad())?;
    if !(0.5..=2.0).contains(&rate) {
        return Err(bad());
    }
    Ok((offset, rate))
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut peers = std::collections::BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("bad peer '{item}': expected id=host:port"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("bad peer id in '{item}'"))?;
        if addr.trim().rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("bad peer address in '{item}': expected host:port"));
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer id {id} given twice"));
        }
    }
    Ok(peers)
}

impl Settings {
    /// Merges flags, environment (already in `flags`), the file and the defaults.
    pub fn resolve(flags: Flags) -> Result<Settings, String> {
        let file = match &flags.config {
            None => FileSettings::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("bad config file {}: {e}", path.display()))?
            }
        };
        let port = flags.port.or(file.port).unwrap_or(6379);
        let peer_port = match flags.peer_port.or(file.peer_port) {
            Some(p) => p,
            // An ephemeral client port gets an ephemeral peer port.
            None if port == 0 => 0,
            None => port.checked_add(10_000).ok_or("--peer-port is required when --port is above 55535")?,
        };
        let settings = Settings {
            port,
            bind: flags.bind.or(file.bind).unwrap_or_else(|| "127.0.0.1".into()),
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("fencelock-data")),
            requirepass: flags.requirepass.or(file.requirepass).filter(|p| !p.is_empty()),
            node_id: flags.node_id.or(file.node_id).unwrap_or(1),
            peer_port,
            maxclients: flags.maxclients.or(file.maxclients).unwrap_or(10_000),
            snapshot_every: flags.snapshot_every.or(file.snapshot_every).unwrap_or(100_000),
            snapshot_log_mib: flags.snapshot_log_mib.or(file.snapshot_log_mib).unwrap_or(64),
            silent_node_ms: flags.silent_node_ms.or(file.silent_node_ms).unwrap_or(30_000),
            tcp_keepalive: flags.tcp_keepalive.or(file.tcp_keepalive).unwrap_or(300),
            maxmemory_bytes: match flags.maxmemory_mib.or(file.maxmemory_mib) {
                Some(mib) if mib > MAXMEMORY_MIB_MAX => {
                    return Err(format!("maxmemory-mib must be 0..={MAXMEMORY_MIB_MAX}, got {mib}"))
                }
                Some(mib) => mib << 20,
                None => crate::memory::default_max_bytes(),
            },
            peers: parse_peers(flags.peers.as_deref().or(file.peers.as_deref()).unwrap_or(""))?,
            join: flags.join.or(file.join).filter(|j| !j.is_empty()),
            peer_pipeline: flags.peer_pipeline.or(file.peer_pipeline).unwrap_or(1),
            io_threads: flags.io_threads.or(file.io_threads).unwrap_or(1),
            idle_spin_us: flags.idle_spin_us.or(file.idle_spin_us).unwrap_or(200),
            peer_listen: flags.peer_listen,
            peer_routes: parse_peers(flags.peer_route.as_deref().unwrap_or(""))?,
            protocol_level: flags.protocol_level.unwrap_or(crate::raft::levels::PROTOCOL_LEVEL),
            test_clock: match std::env::var("FENCELOCK_TEST_CLOCK") {
                Ok(text) if !text.is_empty() => parse_test_clock(&text)?,
                _ => (0, 1.0),
            },
        };
        let max = crate::raft::network::PIPELINE_DEPTH_MAX;
        if !(1..=max).contains(&settings.peer_pipeline) {
            return Err(format!("peer-pipeline must be 1..={max}, got {}", settings.peer_pipeline));
        }
        if !(1..=IO_THREADS_MAX).contains(&settings.io_threads) {
            return Err(format!("io-threads must be 1..={IO_THREADS_MAX}, got {}", settings.io_threads));
        }
        let level_max = crate::raft::levels::PROTOCOL_LEVEL;
        if settings.protocol_level > level_max {
            return Err(format!(
                "protocol-level must be 0..={level_max} (this build's), got {}",
                settings.protocol_level
            ));
        }
        let spin_max = crate::idle_spin::IDLE_SPIN_US_MAX;
        if settings.idle_spin_us > spin_max {
            return Err(format!("idle-spin-us must be 0..={spin_max}, got {}", settings.idle_spin_us));
        }
        if settings.join.is_some() && !settings.peers.is_empty() {
            return Err("give either --join (grow a running cluster) or --peers (form a new one), not both".into());
        }
        if !settings.peers.is_empty() && !settings.peers.contains_key(&settings.node_id) {
            return Err(format!("--peers must include this node's id ({})", settings.node_id));
        }
        if !(1..=MAXCLIENTS_MAX).contains(&settings.maxclients) {
            return Err(format!("maxclients must be 1..={MAXCLIENTS_MAX}, got {}", settings.maxclients));
        }
        // 0 is what INFO and the admin commands mean by "none".
        if settings.node_id == 0 || settings.peers.contains_key(&0) {
            return Err("node ids start at 1 (0 means none)".into());
        }
        if settings.snapshot_every == 0 {
            return Err("snapshot-every must be at least 1".into());
        }
        if !(1..=SNAPSHOT_LOG_MIB_MAX).contains(&settings.snapshot_log_mib) {
            return Err(format!(
                "snapshot-log-mib must be 1..={SNAPSHOT_LOG_MIB_MAX}, got {}",
                settings.snapshot_log_mib
            ));
        }
        if settings.tcp_keepalive > TCP_KEEPALIVE_MAX {
            return Err(format!("tcp-keepalive must be 0..={TCP_KEEPALIVE_MAX}, got {}", settings.tcp_keepalive));
        }
        if !(SILENT_NODE_MS_MIN..=SILENT_NODE_MS_MAX).contains(&settings.silent_node_ms) {
            return Err(format!(
                "silent-node-ms must be {SILENT_NODE_MS_MIN}..={SILENT_NODE_MS_MAX}, got {}",
                settings.silent_node_ms
            ));
        }
        Ok(settings)
    }
}

/// Shortest `--silent-node-ms`: below a second a slow disk or a GC-like pause of a
/// healthy member would end its clients' waits.
pub const SILENT_NODE_MS_MIN: u64 = 1_000;
/// Longest `--silent-node-ms`: a day.
pub const SILENT_NODE_MS_MAX: u64 = 86_400_000;
/// Longest `--tcp-keepalive`, in seconds: Linux refuses a longer TCP_KEEPIDLE (and
/// the connection would then keep the kernel's two-hour default without a word).
pub const TCP_KEEPALIVE_MAX: u64 = 32_767;
/// Largest `--maxmemory-mib`: a pebibyte, which keeps the byte count far from
/// overflowing.
pub const MAXMEMORY_MIB_MAX: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fencelock.toml");
        std::fs::write(&path, "port = 7000\nbind = \"0.0.0.0\"\nnode_id = 3\n").unwrap();
        let flags = Flags::parse_from(["fencelock", "--port", "7100", "--config", path.to_str().unwrap()]);
        let s = Settings::resolve(flags).unwrap();
        assert_eq!((s.port, s.bind.as_str(), s.node_id, s.peer_port), (7100, "0.0.0.0", 3, 17100));
        let s = Settings::resolve(Flags::parse_from(["fencelock"])).unwrap();
        assert_eq!(
            (s.port, s.bind.as_str(), s.data_dir, s.maxclients),
            (6379, "127.0.0.1", PathBuf::from("fencelock-data"), 10_000)
        );
    }

    #[test]
    fn peers_parse_and_must_include_this_node() {
        let peers = parse_peers("1=127.0.0.1:17001, 2=127.0.0.1:17002,3=host:17003").unwrap();
        assert_eq!(peers.len(), 3);
        assert!(parse_peers("1=nohost").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        let flags = Flags::parse_from(["fencelock", "--node-id", "4", "--peers", "1=a:1,2=b:2"]);
        assert!(Settings::resolve(flags).unwrap_err().contains("must include"));
        // Id 0 means "none" to INFO and the admin commands (REMOVE 0 is refused).
        let zero = |args: &[&str]| Settings::resolve(Flags::parse_from(args)).unwrap_err();
        assert_eq!(zero(&["fencelock", "--node-id", "0"]), "node ids start at 1 (0 means none)");
        assert_eq!(zero(&["fencelock", "--peers", "0=a:1,1=b:2"]), "node ids start at 1 (0 means none)");
    }

    #[test]
    fn maxclients_is_bounded() {
        let s = Settings::resolve(Flags::parse_from(["fencelock", "--maxclients", "1000000"])).unwrap();
        assert_eq!(s.maxclients, MAXCLIENTS_MAX);
        for bad in ["0", "1000001"] {
            let e = Settings::resolve(Flags::parse_from(["fencelock", "--maxclients", bad])).unwrap_err();
            assert_eq!(e, format!("maxclients must be 1..=1000000, got {bad}"));
        }
    }

    #[test]
    fn the_protocol_level_is_at_most_this_builds() {
        let level = crate::raft::levels::PROTOCOL_LEVEL;
        assert_eq!(Settings::resolve(Flags::parse_from(["fencelock"])).unwrap().protocol_level, level);
        let s = Settings::resolve(Flags::parse_from(["fencelock", "--protocol-level", "0"])).unwrap();
        assert_eq!(s.protocol_level, 0);
        let above = (level + 1).to_string();
        let e = Settings::resolve(Flags::parse_from(["fencelock", "--protocol-level", &above])).unwrap_err();
        assert_eq!(e, format!("protocol-level must be 0..={level} (this build's), got {above}"));
    }

    #[test]
    fn peer_pipeline_io_threads_and_idle_spin_are_bounded_and_join_excludes_peers() {
        let s = Settings::resolve(Flags::parse_from(["fencelock", "--peer-pipeline", "64"])).unwrap();
        assert_eq!(s.peer_pipeline, 64);
        for bad in ["0", "65"] {
            let e = Settings::resolve(Flags::parse_from(["fencelock", "--peer-pipeline", bad])).unwrap_err();
            assert_eq!(e, format!("peer-pipeline must be 1..=64, got {bad}"));
        }
        let flags = Flags::parse_from(["fencelock", "--join", "h:1", "--peers", "1=a:1"]);
        assert!(Settings::resolve(flags).unwrap_err().contains("not both"));
        assert_eq!(Settings::resolve(Flags::parse_from(["fencelock"])).unwrap().io_threads, 1);
        let s = Settings::resolve(Flags::parse_from(["fencelock", "--io-threads", "4"])).unwrap();
        assert_eq!(s.io_threads, 4);
        for bad in ["0", "65"] {
            let e = Settings::resolve(Flags::parse_from(["fencelock", "--io-threads", bad])).unwrap_err();
            assert_eq!(e, format!("io-threads must be 1..=64, got {bad}"));
        }
        assert_eq!(Settings::resolve(Flags::parse_from(["fencelock"])).unwrap().idle_spin_us, 200);
        for good in ["0", "1000"] {
            let s = Settings::resolve(Flags::parse_from(["fencelock", "--idle-spin-us", good])).unwrap();
            assert_eq!(s.idle_spin_us.to_string(), good);
        }
        let e = Settings::resolve(Flags::parse_from(["fencelock", "--idle-spin-us", "1001"])).unwrap_err();
        assert_eq!(e, "idle-spin-us must be 0..=1000, got 1001");
        let s = Settings::resolve(Flags::parse_from(["fencelock", "--port", "0"])).unwrap();
        assert_eq!(s.peer_port, 0, "an ephemeral client port gets an ephemeral peer port");
    }

    /// `--{flag}` defaults to `default`, takes `lo` and `hi`, and refuses one past
    /// either end, naming the range.
    fn assert_bounded(flag: &str, field: fn(&Settings) -> u64, default: u64, lo: u64, hi: u64) {
        assert_eq!(field(&Settings::resolve(Flags::parse_from(["fencelock"])).unwrap()), default);
        let option = format!("--{flag}");
        for good in [lo, hi] {
            let s = Settings::resolve(Flags::parse_from(["fencelock", &option, &good.to_string()])).unwrap();
            assert_eq!(field(&s), good);
        }
        for bad in [lo.checked_sub(1), hi.checked_add(1)].into_iter().flatten() {
            let e = Settings::resolve(Flags::parse_from(["fencelock", &option, &bad.to_string()])).unwrap_err();
            assert_eq!(e, format!("{flag} must be {lo}..={hi}, got {bad}"));
        }
    }

    #[test]
    fn maxmemory_is_bounded_and_defaults_to_half_the_machine() {
        let resolve = |args: &[&str]| Settings::resolve(Flags::parse_from([&["fencelock"], args].concat()));
        assert_eq!(resolve(&[]).unwrap().maxmemory_bytes, crate::memory::default_max_bytes());
        assert_eq!(resolve(&["--maxmemory-mib", "0"]).unwrap().maxmemory_bytes, 0);
        assert_eq!(resolve(&["--maxmemory-mib", "1073741824"]).unwrap().maxmemory_bytes, 1 << 50);
        assert_eq!(
            resolve(&["--maxmemory-mib", "1073741825"]).unwrap_err(),
            "maxmemory-mib must be 0..=1073741824, got 1073741825"
        );
    }

    #[test]
    fn tcp_keepalive_is_bounded() {
        assert_bounded("tcp-keepalive", |s| s.tcp_keepalive, 300, 0, 32_767);
    }

    #[test]
    fn silent_node_ms_is_bounded() {
        assert_bounded("silent-node-ms", |s| s.silent_node_ms, 30_000, 1_000, 86_400_000);
    }

    #[test]
    fn snapshot_log_mib_is_bounded() {
        assert_bounded("snapshot-log-mib", |s| s.snapshot_log_mib, 64, 1, 1_048_576);
    }

    #[test]
    fn the_test_clock_is_bounded() {
        assert_eq!(parse_test_clock("5000:1.01").unwrap(), (5000, 1.01));
        for bad in ["", "5", "x:1", "1:0.1", "1:3", "-1:1"] {
            assert!(parse_test_clock(bad).is_err(), "{bad}");
        }
        let s = Settings::resolve(Flags::parse_from(["fencelock", "--peer-route", "2=127.0.0.1:9"])).unwrap();
        assert_eq!(s.peer_routes.get(&2).map(String::as_str), Some("127.0.0.1:9"));
    }

    #[test]
    fn bad_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "porte = 1\n").unwrap();
        let e = Settings::resolve(Flags::parse_from(["fencelock", "--config", path.to_str().unwrap()])).unwrap_err();
        assert!(e.contains("bad.toml") && e.contains("porte"), "{e}");
    }
}
