//! The cluster under test: N fencelock processes on 127.0.0.1, each with its own data
//! directory, every directed peer link through its own proxy, and the faults the
//! nemesis applies to them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proxy::{Link, LinkState};
use crate::resp::{Conn, Reply};

pub use fencelock_testkit::free_port;

/// The cluster.
pub struct Cluster {
    binary: PathBuf,
    dir: PathBuf,
    /// Client ports, node i+1 at index i.
    pub client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    links: BTreeMap<(usize, usize), Arc<Link>>,
    procs: Vec<Option<Child>>,
    paused: Vec<bool>,
    /// `FENCELOCK_TEST_CLOCK` per node (None: the real clock).
    pub clocks: Vec<Option<String>>,
    /// Nodes a kill or a SIGTERM found already exited on their own (a crash between
    /// two looks of `exited_on_their_own`).
    pub found_exited: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes and waits until the cluster accepts a write.
    pub async fn start(binary: PathBuf, n: usize, dir: PathBuf) -> std::io::Result<Cluster> {
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut links = BTreeMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|to| *to != from) {
                links.insert((from, to), Link::start(peer_ports[to - 1]).await?);
            }
        }
        let mut cluster = Cluster {
            binary,
            dir,
            client_ports,
            peer_ports,
            links,
            procs: (0..n).map(|_| None).collect(),
            paused: vec![false; n],
            clocks: vec![None; n],
            found_exited: Vec::new(),
        };
        for node in 1..=n {
            cluster.spawn(node)?;
        }
        cluster
            .wait_writable(Duration::from_secs(60))
            .await
            .ok_or_else(|| std::io::Error::other("the cluster never accepted a write"))?;
        Ok(cluster)
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True when the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    fn spawn(&mut self, node: usize) -> std::io::Result<()> {
        let n = self.len();
        let peers: Vec<String> = (1..=n).map(|i| format!("{i}=127.0.0.1:{}", self.peer_ports[i - 1])).collect();
        let routes: Vec<String> =
            (1..=n).filter(|i| *i != node).map(|i| format!("{i}=127.0.0.1:{}", self.links[&(node, i)].port)).collect();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("node-{node}.log")))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["--port", &self.client_ports[node - 1].to_string(), "--bind", "127.0.0.1"])
            .args(["--node-id", &node.to_string(), "--peers", &peers.join(",")])
            .args(["--peer-route", &routes.join(",")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{node}")))
            .env("FENCELOCK_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        match &self.clocks[node - 1] {
            Some(clock) => command.env("FENCELOCK_TEST_CLOCK", clock),
            None => command.env_remove("FENCELOCK_TEST_CLOCK"),
        };
        self.procs[node - 1] = Some(command.spawn()?);
        self.paused[node - 1] = false;
        Ok(())
    }

    fn signal(&self, node: usize, signal: &str) {
        if let Some(child) = &self.procs[node - 1] {
            let _ = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        }
    }

    /// Records a node whose process has already exited, unasked.
    fn note_exited(&mut self, node: usize) {
        if let Some(child) = self.procs[node - 1].as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.found_exited.push(format!("node {node} had exited on its own ({status}) when a fault came"));
            }
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, node: usize) {
        self.note_exited(node);
        if let Some(mut child) = self.procs[node - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused[node - 1] = false;
    }

    /// Starts a node that is down (same ports and data).
    pub fn restart(&mut self, node: usize) -> std::io::Result<()> {
        if self.procs[node - 1].is_none() {
            self.spawn(node)?;
        }
        Ok(())
    }

    /// SIGTERM, wait for the exit (10 s at most, then SIGKILL).
    pub fn terminate(&mut self, node: usize) {
        self.note_exited(node);
        self.signal(node, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(child) = self.procs[node - 1].as_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.procs[node - 1] = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill(node);
    }

    /// SIGSTOP (a GC pause).
    pub fn pause(&mut self, node: usize) {
        self.signal(node, "STOP");
        self.paused[node - 1] = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, node: usize) {
        self.signal(node, "CONT");
        self.paused[node - 1] = false;
    }

    /// Sets the links from every node in `from` to every node in `to`.
    pub fn cut(&self, from: &[usize], to: &[usize], state: LinkState) {
        for a in from {
            for b in to.iter().filter(|b| *b != a) {
                self.links[&(*a, *b)].set(state);
            }
        }
    }

    /// Every link open, every paused node resumed, every dead node started.
    pub fn heal(&mut self) -> std::io::Result<()> {
        for link in self.links.values() {
            link.set(LinkState::Open);
        }
        for node in 1..=self.len() {
            if self.paused[node - 1] {
                self.resume(node);
            }
            self.restart(node)?;
        }
        Ok(())
    }

    /// Waits until a write succeeds through every node; how long that took.
    pub async fn wait_writable(&self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        for port in &self.client_ports {
            loop {
                if started.elapsed() > limit {
                    return None;
                }
                if let Some(mut c) = Conn::connect(*port, Duration::from_secs(1)).await {
                    if let Ok(Reply::Simple(ok)) = c.call(&["SET", "chaos:probe", "1"], Duration::from_secs(5)).await {
                        if ok == "OK" {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(started.elapsed())
    }

    /// Nodes whose process ended without the harness stopping it, with how it ended.
    /// They count as down from here (`heal` starts them again).
    pub fn exited_on_their_own(&mut self) -> Vec<(usize, String)> {
        let mut exited = Vec::new();
        for (i, proc) in self.procs.iter_mut().enumerate() {
            if let Some(child) = proc {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push((i + 1, status.to_string()));
                    *proc = None;
                    self.paused[i] = false;
                }
            }
        }
        exited
    }

    /// The node that leads now, as the nodes say (`INFO replication`): among those
    /// that answer `role:master`, the one with the highest term (a deposed leader that
    /// has not heard yet says master too). None when no node answers as leader.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, port) in self.client_ports.iter().enumerate() {
            if self.procs[i].is_none() || self.paused[i] {
                continue;
            }
            let Some(mut c) = Conn::connect(*port, Duration::from_millis(300)).await else { continue };
            let Ok(Reply::Bulk(info)) = c.call(&["INFO", "replication"], Duration::from_millis(500)).await else {
                continue;
            };
            let field = |name: &str| {
                info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(|v| v.trim().to_string())
            };
            if field("role").as_deref() != Some("master") {
                continue;
            }
            let term = field("raft_term").and_then(|t| t.parse().ok()).unwrap_or(0);
            if best.is_none_or(|(t, _)| term > t) {
                best = Some((term, i + 1));
            }
        }
        best.map(|(_, node)| node)
    }

    /// Kills every node.
    pub fn stop_all(&mut self) {
        for node in 1..=self.len() {
            if self.paused[node - 1] {
                self.resume(node);
            }
            self.kill(node);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
