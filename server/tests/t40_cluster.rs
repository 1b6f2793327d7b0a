//! A static three-node cluster of real processes on 127.0.0.1: formation, replication,
//! and failover after SIGKILL of the leader with locks, fences and leases intact.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{wait_until, Client, Server};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start_cluster(n: u64) -> Vec<Server> {
    let peers: Vec<String> = (1..=n).map(|id| format!("{id}=127.0.0.1:{}", free_port())).collect();
    let peers = peers.join(",");
    // Every node waits for a leader before it reports ready, so start them together.
    let handles: Vec<_> = (1..=n)
        .map(|id| {
            let peers = peers.clone();
            std::thread::spawn(move || Server::start_with(&["--node-id", &id.to_string(), "--peers", &peers]))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a node started")).collect()
}

fn info_field(c: &mut Client, field: &str) -> String {
    let info = c.cmd(&["INFO", "replication"]).text();
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_default().trim().to_string()
}

fn leader_of(servers: &mut [Server]) -> Option<usize> {
    servers.iter_mut().position(|s| {
        s.is_running()
            && Client::try_connect(s.port())
                .is_ok_and(|mut c| c.try_cmd(&["INFO", "replication"]).is_ok_and(|r| r.text().contains("role:master")))
    })
}

#[test]
fn three_nodes_form_replicate_and_fail_over_with_locks_intact() {
    let mut servers = start_cluster(3);
    let leader = wait_until(Duration::from_secs(10), "a leader", || leader_of(&mut servers));
    let mut l = servers[leader].connect();
    assert_eq!(l.raw(&["SET", "k", "v"]), "+OK\r\n");
    let lock = l.cmd(&["LOCK", "orders:1", "60000", "TOKEN", "holder"]);
    let fence = lock.field("fence").int();
    // Followers say who leads (they do not forward yet) and replicate the writes.
    let applied = info_field(&mut l, "raft_applied_index").parse::<u64>().expect("applied index");
    for (i, s) in servers.iter().enumerate().filter(|(i, _)| *i != leader) {
        let mut f = s.connect();
        assert_eq!(info_field(&mut f, "role"), "slave");
        let common::Reply::Error(e) = f.cmd(&["SET", "x", "y"]) else {
            panic!("node {i}: a follower accepted a write")
        };
        // "the leader is node N", or "no leader" while the follower has not heard from
        // the leader of a just-settled election: either way a retryable refusal.
        assert!(e.starts_with("TRYAGAIN "), "node {i}: {e}");
        wait_until(Duration::from_secs(5), "the follower to apply the writes", || {
            (info_field(&mut f, "raft_applied_index").parse::<u64>().unwrap_or(0) >= applied).then_some(())
        });
    }

    // SIGKILL the leader and time the next successful write on a survivor.
    servers[leader].kill();
    let killed = Instant::now();
    let new_leader = wait_until(Duration::from_secs(10), "a new leader that accepts writes", || {
        let candidate = leader_of(&mut servers)?;
        let mut c = Client::try_connect(servers[candidate].port()).ok()?;
        let reply = c.try_cmd(&["SET", "after", "failover"]).ok()?;
        matches!(&reply, common::Reply::Simple(ok) if ok == "OK").then_some(candidate)
    });
    let failover = killed.elapsed();
    println!("failover: first successful write {} ms after SIGKILL of the leader", failover.as_millis());
    assert_ne!(new_leader, leader);

    let mut n = servers[new_leader].connect();
    assert_eq!(n.raw(&["GET", "k"]), "$1\r\nv\r\n");
    // The lock survived with its fence, and its lease did not end early on the new leader.
    assert_eq!(n.cmd(&["FENCE", "orders:1"]).int(), fence);
    assert!(n.cmd(&["LOCK", "orders:1", "60000", "TOKEN", "other"]).is_null());
    let newer = n.cmd(&["LOCK", "orders:2", "60000", "TOKEN", "t"]).field("fence").int();
    assert!(newer > fence, "fences keep increasing across the failover ({newer} > {fence})");
}
