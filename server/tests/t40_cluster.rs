//! A static three-node cluster of real processes on 127.0.0.1: formation, replication,
//! forwarding from followers, and failover after SIGKILL of the leader with locks,
//! fences and leases intact.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{wait_until, Client, Reply, Server};

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

/// Sends a command until it is not refused with TRYAGAIN (a new leader refuses writes
/// until a quorum has acknowledged it; clients retry TRYAGAIN).
fn until_accepted(c: &mut Client, args: &[&str]) -> Reply {
    wait_until(Duration::from_secs(10), "the command to be accepted", || match c.cmd(args) {
        Reply::Error(e) if e.starts_with("TRYAGAIN") => None,
        reply => Some(reply),
    })
}

#[test]
fn three_nodes_form_replicate_forward_and_fail_over_with_locks_intact() {
    let mut servers = start_cluster(3);
    let leader = wait_until(Duration::from_secs(10), "a leader", || leader_of(&mut servers));
    let mut l = servers[leader].connect();
    assert_eq!(until_accepted(&mut l, &["SET", "k", "v"]), Reply::Simple("OK".into()));
    let fence = until_accepted(&mut l, &["LOCK", "orders:1", "60000", "TOKEN", "holder"]).field("fence").int();
    let applied = info_field(&mut l, "raft_applied_index").parse::<u64>().expect("applied index");
    for (i, s) in servers.iter().enumerate().filter(|(i, _)| *i != leader) {
        let mut f = s.connect();
        assert_eq!(info_field(&mut f, "role"), "slave");
        wait_until(Duration::from_secs(5), "the follower to apply the writes", || {
            (info_field(&mut f, "raft_applied_index").parse::<u64>().unwrap_or(0) >= applied).then_some(())
        });
        // A follower forwards writes to the leader and answers with the leader's reply.
        let key = format!("via-follower-{i}");
        assert_eq!(until_accepted(&mut f, &["SET", &key, "forwarded"]), Reply::Simple("OK".into()));
        assert_eq!(l.raw(&["GET", &key]), "$9\r\nforwarded\r\n");
        // Reads on a follower are linearizable: a write acknowledged by the leader is
        // visible on the follower at once (read index through the leader).
        for n in 0..20 {
            let fresh = format!("fresh-{i}-{n}");
            assert_eq!(l.raw(&["SET", &fresh, "x"]), "+OK\r\n");
            assert_eq!(f.raw(&["GET", &fresh]), "$1\r\nx\r\n", "a follower missed an acknowledged write");
        }
    }

    // SIGKILL the leader and time the next successful write on a survivor.
    servers[leader].kill();
    let killed = Instant::now();
    let new_leader = wait_until(Duration::from_secs(10), "a new leader that accepts writes", || {
        let candidate = leader_of(&mut servers)?;
        let mut c = Client::try_connect(servers[candidate].port()).ok()?;
        let reply = c.try_cmd(&["SET", "after", "failover"]).ok()?;
        matches!(&reply, Reply::Simple(ok) if ok == "OK").then_some(candidate)
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

#[test]
fn a_blocking_lock_through_a_follower_is_granted_when_the_leader_side_unlocks() {
    let mut servers = start_cluster(3);
    let leader = wait_until(Duration::from_secs(10), "a leader", || leader_of(&mut servers));
    let follower = (0..servers.len()).find(|i| *i != leader).expect("a follower");
    let mut l = servers[leader].connect();
    let holder = until_accepted(&mut l, &["LOCK", "shared-resource", "60000", "TOKEN", "h"]).field("fence").int();
    // The waiter's connection is on a follower: the LOCK is forwarded, queued by the
    // leader, and the grant reaches the follower's connection through its own replica.
    // (First make sure the follower knows the leader: a client would retry TRYAGAIN.)
    let mut w = servers[follower].connect();
    assert_eq!(until_accepted(&mut w, &["SET", "ready", "1"]), Reply::Simple("OK".into()));
    w.send_cmd(&["LOCK", "shared-resource", "60000", "TOKEN", "w", "WAIT", "10000"]);
    wait_until(Duration::from_secs(5), "the waiter to queue", || {
        (l.cmd(&["LOCK.INFO", "shared-resource"]).field("waiters").int() == 1).then_some(())
    });
    assert_eq!(l.raw(&["UNLOCK", "shared-resource", "h"]), ":0\r\n");
    let grant = w.read();
    assert_eq!(grant.field("token").text(), "w");
    assert!(grant.field("fence").int() > holder);
}
