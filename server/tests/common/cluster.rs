//! Helpers for the multi-process cluster tests: start N nodes on 127.0.0.1, find the
//! leader, retry what a client retries, and read INFO / CLUSTER.STATUS fields.

use std::time::Duration;

use super::{wait_until, Client, Reply, Server};

pub use fencelock_testkit::free_port;

/// Starts `n` nodes of a static cluster (ids 1..=n) with `extra` flags each. Every
/// node waits for a leader before it reports ready, so they start together. If a node
/// fails to start (its peer port was taken meanwhile), the cluster starts again on
/// other ports.
pub fn start_cluster_with(n: u64, extra: &[&str]) -> Vec<Server> {
    start_cluster_each(n, |_| extra.iter().map(|s| s.to_string()).collect())
}

/// As `start_cluster_with`, with flags of its own for each node (`extra_of(id)`).
pub fn start_cluster_each(n: u64, extra_of: impl Fn(u64) -> Vec<String>) -> Vec<Server> {
    for _ in 0..3 {
        if let Some(servers) = try_start_cluster(n, &extra_of) {
            return servers;
        }
        eprintln!("a node failed to start; starting the cluster again on other ports");
    }
    panic!("the cluster did not start in 3 attempts");
}

fn try_start_cluster(n: u64, extra_of: &impl Fn(u64) -> Vec<String>) -> Option<Vec<Server>> {
    let peers: Vec<String> = (1..=n).map(|id| format!("{id}=127.0.0.1:{}", free_port())).collect();
    let peers = peers.join(",");
    let handles: Vec<_> = (1..=n)
        .map(|id| {
            let mut args: Vec<String> = vec!["--node-id".into(), id.to_string(), "--peers".into(), peers.clone()];
            args.extend(extra_of(id));
            std::thread::spawn(move || Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        })
        .collect();
    let started: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    // On failure the nodes that did start are dropped (killed) here.
    started.into_iter().collect::<Result<Vec<_>, _>>().ok()
}

/// Starts `n` nodes of a static cluster with default flags.
pub fn start_cluster(n: u64) -> Vec<Server> {
    start_cluster_with(n, &[])
}

/// A field of `INFO replication`.
pub fn info_field(c: &mut Client, field: &str) -> String {
    section_field(c, "replication", field)
}

/// A field of an `INFO` section (empty when the section has no such field).
pub fn section_field(c: &mut Client, section: &str, field: &str) -> String {
    let info = c.cmd(&["INFO", section]).text();
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_default().trim().to_string()
}

/// A `key:value` field of CLUSTER.STATUS.
pub fn status_field(c: &mut Client, field: &str) -> String {
    let status = c.cmd(&["CLUSTER.STATUS"]).text();
    status.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_default().trim().to_string()
}

/// Every member's peer address in CLUSTER.STATUS (`member:id=<id>,addr=<host:port>,...`
/// lines), by node id.
pub fn member_addrs(c: &mut Client) -> std::collections::BTreeMap<String, String> {
    let status = c.cmd(&["CLUSTER.STATUS"]).text();
    status
        .lines()
        .filter_map(|line| {
            let mut fields = line.strip_prefix("member:")?.split(',');
            let id = fields.next()?.strip_prefix("id=")?;
            let addr = fields.next()?.strip_prefix("addr=")?;
            Some((id.to_string(), addr.to_string()))
        })
        .collect()
}

/// The index (into `servers`) of the running node that says it leads.
pub fn leader_of(servers: &mut [Server]) -> Option<usize> {
    servers.iter_mut().position(|s| {
        s.is_running()
            && Client::try_connect(s.port()).is_ok_and(|mut c| {
                c.set_read_timeout(Duration::from_secs(2));
                c.try_cmd(&["INFO", "replication"]).is_ok_and(|r| r.text().contains("role:master"))
            })
    })
}

/// Waits (10 s at most) for a leader.
pub fn wait_for_leader(servers: &mut [Server]) -> usize {
    wait_until(Duration::from_secs(10), "a leader", || leader_of(servers))
}

/// Starts `n` nodes, waits for a leader and for it to accept `first` (a write answered
/// `+OK`, sent until a new leader stops refusing it): the servers, the leader's index
/// and a client connected to it.
pub fn led_cluster(n: u64, first: &[&str]) -> (Vec<Server>, usize, Client) {
    let mut servers = start_cluster(n);
    let leader = wait_for_leader(&mut servers);
    let mut client = servers[leader].connect();
    assert_eq!(until_accepted(&mut client, first), Reply::Simple("OK".into()), "{first:?} on the leader");
    (servers, leader, client)
}

/// Sends a command until it is not refused with TRYAGAIN (a new leader refuses writes
/// until a quorum has acknowledged it; clients retry TRYAGAIN).
pub fn until_accepted(c: &mut Client, args: &[&str]) -> Reply {
    wait_until(Duration::from_secs(10), "the command to be accepted", || match c.cmd(args) {
        Reply::Error(e) if e.starts_with("TRYAGAIN") => None,
        reply => Some(reply),
    })
}

/// Waits until the node behind `c` has applied at least `index`.
pub fn wait_applied(c: &mut Client, index: u64) {
    wait_until(Duration::from_secs(15), "the node to apply the index", || {
        (info_field(c, "raft_applied_index").parse::<u64>().unwrap_or(0) >= index).then_some(())
    });
}

/// Runs the binary with `args` (plus an ephemeral port and `data_dir`) and expects it
/// to exit by itself: its exit code and stderr.
pub fn run_to_exit(args: &[&str], data_dir: &std::path::Path) -> (i32, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(super::binary())
        .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fencelock");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // A node expected to exit that keeps running instead fails the test, not hangs it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fencelock") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fencelock was expected to exit and still ran after 60 s: {}", reader.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), reader.join().unwrap_or_default())
}
