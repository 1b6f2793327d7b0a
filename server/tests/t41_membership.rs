//! Growing, shrinking and steering a cluster of real processes on 127.0.0.1: five-node
//! formation, a node joining from empty through a snapshot, a follower that fell behind
//! the leader's purge catching up through one, removal (and the removed id
//! refused forever), leadership transfer on request and on SIGTERM, WAIT, READONLY, and
//! pub/sub across nodes.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    free_port, info_field, led_cluster, member_addrs, run_to_exit, start_cluster, start_cluster_with, status_field,
    until_accepted, wait_applied, wait_for_leader,
};
use common::{encode, wait_until, Client, Reply, Server};

/// Sets `key:0` .. `key:{n-1}` to `value-{i}`, pipelined: with `--snapshot-every 200`,
/// enough for the leader to snapshot and purge its log.
fn set_keys(c: &mut Client, n: usize) {
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend(encode(&["SET", &format!("key:{i}"), &format!("value-{i}")]));
    }
    c.send(&batch);
    for _ in 0..n {
        assert_eq!(c.read(), ok());
    }
}

/// Runs a node with an empty data directory that joins through `leader_port` as
/// `id` on `peer_port`, until it exits: its exit code and stderr.
fn join_from_empty(id: &str, peer_port: &str, leader_port: u16) -> (i32, String) {
    let wiped = tempfile::tempdir().expect("tempdir");
    let join = format!("127.0.0.1:{leader_port}");
    run_to_exit(&["--node-id", id, "--peer-port", peer_port, "--join", &join], &wiped.path().join("data"))
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

#[test]
fn five_nodes_form_and_a_write_on_one_follower_is_read_on_another() {
    let mut servers = start_cluster(5);
    let leader = wait_for_leader(&mut servers);
    let followers: Vec<usize> = (0..5).filter(|i| *i != leader).collect();
    let mut a = servers[followers[0]].connect();
    let mut b = servers[followers[3]].connect();
    assert_eq!(until_accepted(&mut a, &["SET", "written-on-a", "1"]), ok());
    assert_eq!(b.raw(&["GET", "written-on-a"]), "$1\r\n1\r\n");
    let fence = until_accepted(&mut b, &["LOCK", "five", "30000", "TOKEN", "b"]).field("fence").int();
    assert_eq!(a.cmd(&["FENCE", "five"]).int(), fence);
    // Every node reports the same five voters and the same leader.
    let leader_id = status_field(&mut servers[leader].connect(), "node_id");
    // (A node learns the leader from its first heartbeat, possibly before the log
    // that carries the membership reaches it: wait for that too.)
    for s in &servers {
        let mut c = s.connect();
        wait_until(Duration::from_secs(10), "every node to know the membership and leader", || {
            let agreed =
                status_field(&mut c, "voters") == "1,2,3,4,5" && status_field(&mut c, "leader_id") == leader_id;
            agreed.then_some(())
        });
    }
    let status = servers[leader].connect().cmd(&["CLUSTER.STATUS"]).text();
    assert_eq!(status.lines().filter(|l| l.starts_with("member:")).count(), 5, "{status}");
    assert_eq!(status.lines().filter(|l| l.contains("role=follower")).count(), 4, "{status}");
    // WAIT counts the followers holding everything: all four, soon.
    assert_eq!(servers[leader].connect().cmd(&["WAIT", "4", "5000"]).int(), 4);
}

#[test]
fn nodes_join_from_empty_by_snapshot_and_a_removed_id_is_never_reused() {
    // Small snapshot interval: the leader purges its log, so newcomers need a snapshot.
    let mut servers = start_cluster_with(3, &["--snapshot-every", "200"]);
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    until_accepted(&mut l, &["SET", "warm", "up"]);
    set_keys(&mut l, 3_000);
    wait_until(Duration::from_secs(20), "the leader to purge its log", || {
        (status_field(&mut l, "purged_index").parse::<u64>().unwrap_or(0) > 0).then_some(())
    });

    // Nodes 4 and 5 start empty and join through a follower's client port.
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let via = format!("127.0.0.1:{}", servers[follower].port());
    for id in [4u64, 5] {
        let peer_port = free_port().to_string();
        let node = Server::start_with(&["--node-id", &id.to_string(), "--peer-port", &peer_port, "--join", &via]);
        servers.push(node);
    }
    let target = info_field(&mut l, "raft_applied_index").parse::<u64>().expect("applied");
    for s in &servers[3..] {
        let mut c = s.connect();
        wait_applied(&mut c, target);
        assert!(
            status_field(&mut c, "snapshot_index").parse::<u64>().unwrap_or(0) > 0,
            "the newcomer caught up through a snapshot"
        );
        assert_eq!(c.raw(&["GET", "key:2999"]), "$10\r\nvalue-2999\r\n");
        assert_eq!(c.raw(&["GET", "key:0"]), "$7\r\nvalue-0\r\n");
    }
    assert_eq!(status_field(&mut l, "voters"), "1,2,3,4,5");

    // Remove a follower (not the leader): four voters remain and writes go on.
    let removed = (0..3).find(|i| *i != leader).expect("a follower");
    let removed_id = status_field(&mut servers[removed].connect(), "node_id");
    assert_eq!(l.cmd(&["CLUSTER.REMOVE", &removed_id]), ok());
    let voters = status_field(&mut l, "voters");
    assert_eq!(voters.split(',').count(), 4, "{voters}");
    assert!(!voters.split(',').any(|v| v == removed_id), "{voters}");
    // Still running, the removed node may still forward its clients' writes to the
    // leader: refused there, so nothing commits that it would never apply.
    let from_removed = servers[removed].connect().raw(&["SET", "from-removed", "1"]);
    assert!(from_removed.contains("not a member of this cluster"), "{from_removed}");
    assert_eq!(l.raw(&["GET", "from-removed"]), "$-1\r\n");
    servers[removed].kill();
    assert_eq!(until_accepted(&mut l, &["SET", "after-remove", "1"]), ok());
    assert_eq!(servers[4].connect().raw(&["GET", "after-remove"]), "$1\r\n1\r\n");

    // Its data directory wiped, the removed node may not come back under its old id:
    // replaying from empty under an old id could form a second quorum.
    let leader_port = servers[leader].port();
    let (code, stderr) = join_from_empty(&removed_id, &free_port().to_string(), leader_port);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("never reused"), "{stderr}");
    // A voter that lost its data may not come back under its id either: with an empty
    // log and no memory of its votes it could elect a leader without committed entries.
    // Both at another address and at its own (the same command line on a new disk:
    // the leader answered that as a retried join's success, +OK, which hid it).
    let lost = 4; // node 5, a voter
    let lost_id = status_field(&mut servers[lost].connect(), "node_id");
    let members = member_addrs(&mut servers[lost].connect());
    let own_port = members
        .get(&lost_id)
        .and_then(|addr| addr.rsplit_once(':'))
        .map(|(_, port)| port.to_string())
        .expect("its peer address");
    servers[lost].kill();
    for peer_port in [free_port().to_string(), own_port] {
        let (code, stderr) = join_from_empty(&lost_id, &peer_port, leader_port);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("must not come back under its old id"), "peer port {peer_port}: {stderr}");
    }
    // Under a new id it joins.
    let node = Server::start_with(&[
        "--node-id",
        "6",
        "--peer-port",
        &free_port().to_string(),
        "--join",
        &format!("127.0.0.1:{}", servers[leader].port()),
    ]);
    let mut c = node.connect();
    assert_eq!(until_accepted(&mut c, &["GET", "after-remove"]), Reply::Bulk(b"1".to_vec()));
    wait_until(Duration::from_secs(10), "the newcomer to see five voters", || {
        (status_field(&mut c, "voters").split(',').count() == 5).then_some(())
    });
    // Membership commands refuse what makes no sense, with the reason.
    assert!(l.raw(&["CLUSTER.PROMOTE", "42"]).contains("not a learner"));
    assert!(l.raw(&["CLUSTER.REMOVE", "42"]).contains("not a member"));
    assert!(l.raw(&["CLUSTER.ADDLEARNER", "6", "127.0.0.1:1"]).contains("already a voter"));
    // A wildcard address would name every node, the leader included.
    for wildcard in ["0.0.0.0:16390", "[::]:16390"] {
        let refused = l.raw(&["CLUSTER.ADDLEARNER", "7", wildcard]);
        assert!(refused.contains("not an address other nodes can reach"), "{refused}");
    }
}

/// A follower that was down while the leader snapshotted and purged its log comes back
/// behind the leader's first entry: it installs a snapshot beyond its own last entry
/// (purging past the end of its log), then appends the entries after it. Its WAL could
/// take that append before the purge and refuse the gap, which stops the node; the race
/// needs the append to come while the purge marker is being written, so
/// `an_append_right_after_a_purge_past_the_end_of_the_log` (t05) pins the order itself,
/// and this runs the whole path on real processes.
#[test]
fn a_follower_behind_the_leaders_purge_catches_up_by_snapshot_and_keeps_appending() {
    follower_catches_up_after_a_purge(&["--snapshot-every", "200"], |l| {
        set_keys(l, 3_000);
        vec![("key:2999".into(), "value-2999".into())]
    });
}

/// The same when the leader snapshotted by the log's size and purged through the
/// snapshot (its 1,000 kept entries outweighed the 1 MiB bound): 40 writes of 128 KiB,
/// far fewer entries than `--snapshot-every`, leave the follower nothing to catch up
/// from but the snapshot.
#[test]
fn a_follower_behind_a_purge_by_the_logs_size_catches_up_by_snapshot() {
    follower_catches_up_after_a_purge(&["--snapshot-every", "1000000", "--snapshot-log-mib", "1"], |l| {
        let value = |i: usize| format!("{i:04}").repeat(32 * 1024);
        for i in 0..40 {
            assert_eq!(until_accepted(l, &["SET", &format!("big:{}", i % 4), &value(i)]), ok());
        }
        (36..40).map(|i| (format!("big:{}", i % 4), value(i))).collect()
    });
}

/// Starts 3 nodes with `flags`, takes a follower down after it holds some entries, runs
/// `write` on the leader until the leader has purged past the follower's log, restarts
/// the follower, and checks that it caught up through a snapshot, holds the values
/// `write` returned, and goes on taking entries.
fn follower_catches_up_after_a_purge(flags: &[&str], write: impl FnOnce(&mut Client) -> Vec<(String, String)>) {
    let mut servers = start_cluster_with(3, flags);
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    until_accepted(&mut l, &["SET", "before", "1"]);
    // The follower holds entries when it goes down, so the snapshot lands past the
    // end of a log, not on an empty one.
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let held = info_field(&mut l, "raft_applied_index").parse::<u64>().expect("applied");
    wait_applied(&mut servers[follower].connect(), held);
    servers[follower].kill();
    let expected = write(&mut l);
    wait_until(Duration::from_secs(20), "the leader to purge past the follower's log", || {
        (status_field(&mut l, "purged_index").parse::<u64>().unwrap_or(0) > held + 1).then_some(())
    });
    servers[follower].restart();
    let target = info_field(&mut l, "raft_applied_index").parse::<u64>().expect("applied");
    let mut back = servers[follower].connect();
    wait_applied(&mut back, target);
    assert!(
        status_field(&mut back, "snapshot_index").parse::<u64>().unwrap_or(0) > held,
        "the follower caught up through a snapshot"
    );
    for (key, value) in &expected {
        assert!(back.cmd(&["GET", key]) == Reply::Bulk(value.clone().into_bytes()), "{key} on the follower");
    }
    // It goes on taking entries: writes after the snapshot reach it.
    for i in 0..50 {
        assert_eq!(until_accepted(&mut l, &["SET", "after", &i.to_string()]), ok());
    }
    let target = info_field(&mut l, "raft_applied_index").parse::<u64>().expect("applied");
    wait_applied(&mut back, target);
    assert_eq!(back.raw(&["GET", "after"]), "$2\r\n49\r\n");
    assert!(servers[follower].is_running(), "{}", servers[follower].log_tail(20));
}

#[test]
fn leadership_moves_on_request_and_on_sigterm_without_waiting_for_an_election() {
    let (mut servers, leader, _) = led_cluster(3, &["SET", "k", "v"]);
    // CLUSTER.TRANSFER sent to a follower, naming the other follower.
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut f = servers[followers[0]].connect();
    let target_id = status_field(&mut servers[followers[1]].connect(), "node_id");
    let term = status_field(&mut f, "term").parse::<u64>().expect("term");
    // A follower that has not yet heard from the new leader answers TRYAGAIN (nothing
    // was done): retry, as a client would.
    assert_eq!(until_accepted(&mut f, &["CLUSTER.TRANSFER", &target_id]), ok());
    let now_leader = wait_for_leader(&mut servers);
    assert_eq!(now_leader, followers[1]);
    assert!(status_field(&mut f, "term").parse::<u64>().expect("term") > term);

    // SIGTERM on a node with a blocked client: it ends that wait through the log before
    // it goes, so an item pushed while it is down stays queued (it used to be popped
    // for the wait of a client that was gone, and lost).
    let stopping = followers[0];
    let mut popper = servers[stopping].connect();
    popper.send_cmd(&["QUEUE.POP", "sigterm-jobs", "WAIT", "FOREVER"]);
    let mut on_leader = servers[now_leader].connect();
    let mut on_stopping = servers[stopping].connect();
    wait_until(Duration::from_secs(10), "the pop to be queued", || {
        let info = on_stopping.cmd(&["INFO", "clients"]).text();
        info.contains("blocked_clients:1").then_some(())
    });
    popper.set_read_timeout(Duration::from_millis(200));
    servers[stopping].signal("TERM");
    assert_eq!(servers[stopping].wait_exit(Duration::from_secs(10)), Some(0), "a clean exit on SIGTERM");
    // The blocked client is told to go elsewhere (or just loses its connection), never
    // answered nil as if its FOREVER wait had run out.
    let (answer, _) = popper.read_to_close(Duration::from_secs(5), 4096);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("-TRYAGAIN the node is shutting down"), "{answer}");
    assert_eq!(until_accepted(&mut on_leader, &["QUEUE.PUSH", "sigterm-jobs", "x"]), Reply::Int(1));
    assert_eq!(
        on_leader.cmd(&["QUEUE.LEN", "sigterm-jobs"]),
        Reply::Int(1),
        "the item went to a wait whose node is gone"
    );
    // INFO counts only the followers it hears from, as Redis counts connected replicas.
    wait_until(Duration::from_secs(10), "INFO to count one connected follower", || {
        on_leader.cmd(&["INFO", "replication"]).text().contains("connected_slaves:1\r\n").then_some(())
    });
    servers[stopping].restart();
    wait_for_leader(&mut servers);

    // SIGTERM on the leader: it hands over, then exits 0; the next write comes at once.
    let mut c = servers[followers[0]].connect();
    let fence = until_accepted(&mut c, &["LOCK", "graceful", "30000", "TOKEN", "a"]).field("fence").int();
    servers[now_leader].signal("TERM");
    let stopped = Instant::now();
    assert_eq!(servers[now_leader].wait_exit(Duration::from_secs(10)), Some(0), "a clean exit on SIGTERM");
    let newest = until_accepted(&mut c, &["LOCK", "graceful-2", "30000", "TOKEN", "b"]).field("fence").int();
    println!("sigterm: next grant {} ms after SIGTERM of the leader", stopped.elapsed().as_millis());
    assert!(newest > fence);
    assert!(c.cmd(&["LOCK", "graceful", "30000", "TOKEN", "other"]).is_null(), "the lock survived the hand-off");
    // A hand-off, not a removal: the stopped node is still a voter.
    assert_eq!(status_field(&mut c, "voters"), "1,2,3");
}

#[test]
fn pubsub_readonly_and_wait_work_across_nodes() {
    let mut servers = start_cluster(3);
    let leader = wait_for_leader(&mut servers);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut l = servers[leader].connect();
    until_accepted(&mut l, &["SET", "k", "v"]);

    // A subscriber on one follower hears a message published on the other.
    let mut sub = servers[followers[0]].connect();
    sub.send_cmd(&["SUBSCRIBE", "news"]);
    assert_eq!(sub.read().items()[0].text(), "subscribe");
    let mut publisher = servers[followers[1]].connect();
    until_accepted(&mut publisher, &["PUBLISH", "news", "hello"]);
    let message = sub.read();
    assert_eq!(message.items().iter().map(Reply::text).collect::<Vec<_>>(), ["message", "news", "hello"]);

    // READONLY reads this replica as it is (no read index); READWRITE restores
    // linearizable reads. Either way a value written long enough ago is there.
    let mut r = servers[followers[1]].connect();
    assert_eq!(r.cmd(&["READONLY"]), ok());
    wait_until(Duration::from_secs(5), "the replica to have k", || {
        (r.raw(&["GET", "k"]) == "$1\r\nv\r\n").then_some(())
    });
    assert_eq!(r.cmd(&["READWRITE"]), ok());
    assert_eq!(l.raw(&["SET", "fresh", "1"]), "+OK\r\n");
    assert_eq!(r.raw(&["GET", "fresh"]), "$1\r\n1\r\n");

    // WAIT: both followers hold the write; asking for more than exist times out with 2.
    assert_eq!(l.cmd(&["WAIT", "2", "5000"]).int(), 2);
    let started = Instant::now();
    assert_eq!(l.cmd(&["WAIT", "3", "300"]).int(), 2);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // On a follower WAIT asks the leader.
    assert_eq!(r.cmd(&["WAIT", "2", "5000"]).int(), 2);
}

/// etcd's strict reconfiguration check: a voter change whose new voters would be
/// mostly unreachable is refused, since its joint configuration would stop every write
/// until they came back (and refuse a corrective change meanwhile). Removing the
/// voter that is down, what an operator means, goes through.
#[test]
fn a_voter_change_that_would_leave_no_reachable_majority_is_refused() {
    let mut servers = start_cluster_with(3, &[]);
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    until_accepted(&mut l, &["SET", "warm", "up"]);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (down, up) = (followers[0], followers[1]);
    let down_id = status_field(&mut servers[down].connect(), "node_id");
    let up_id = status_field(&mut servers[up].connect(), "node_id");
    servers[down].kill();
    std::thread::sleep(Duration::from_millis(1_500));
    let refused = l.raw(&["CLUSTER.REMOVE", &up_id]);
    assert!(refused.contains("answered in the last 1000 ms"), "{refused}");
    assert_eq!(until_accepted(&mut l, &["SET", "still", "writable"]), ok());
    assert_eq!(l.cmd(&["CLUSTER.REMOVE", &down_id]), ok());
    assert_eq!(status_field(&mut l, "voters").split(',').count(), 2);
    assert_eq!(until_accepted(&mut l, &["SET", "after", "removal"]), ok());
}

/// A cluster that requires a password can be grown with `--join`: the joiner sends
/// AUTH with its own `--requirepass` first (it was answered NOAUTH, and exited).
#[test]
fn join_authenticates_with_the_nodes_password() {
    let first = Server::start_with(&["--requirepass", "s3cret"]);
    let mut c = first.connect();
    assert!(c.raw(&["SET", "k", "v"]).starts_with("-NOAUTH"));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    let join = format!("127.0.0.1:{}", first.port());
    let peer_port = free_port().to_string();
    // The wrong password is refused, with the reason.
    let wrong = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = run_to_exit(
        &["--node-id", "2", "--peer-port", &peer_port, "--requirepass", "other", "--join", &join],
        &wrong.path().join("data"),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("refused the join: AUTH"), "{stderr}");
    let second =
        Server::start_with(&["--node-id", "2", "--peer-port", &peer_port, "--requirepass", "s3cret", "--join", &join]);
    let mut d = second.connect();
    assert_eq!(d.cmd(&["AUTH", "s3cret"]), ok());
    wait_until(Duration::from_secs(20), "the joiner to be a voter", || {
        (status_field(&mut d, "voters") == "1,2").then_some(())
    });
    assert_eq!(d.raw(&["GET", "k"]), "$1\r\nv\r\n");
}

/// A joiner whose promotion never happened (it stopped while catching up, or the
/// change was refused) restarts as a learner; with `--join` on its command line it
/// asks again, and is promoted (it stayed a learner for good: `--join` was skipped once
/// its data held a membership).
#[test]
fn a_learner_restarted_with_join_is_promoted() {
    let first = Server::start();
    let mut l = first.connect();
    assert_eq!(until_accepted(&mut l, &["SET", "k", "v"]), ok());
    let first_peer = member_addrs(&mut l).remove("1").expect("node 1's peer address");
    let peer_port = free_port().to_string();
    let own = format!("127.0.0.1:{peer_port}");
    // Added as a learner (the leader waits for it to catch up), then started into a
    // static list where it is not the lowest id: it waits to be reached, and is.
    l.send_cmd(&["CLUSTER.ADDLEARNER", "2", &own]);
    let peers = format!("1={first_peer},2={own}");
    let mut second = Server::start_with(&["--node-id", "2", "--peer-port", &peer_port, "--peers", &peers]);
    assert_eq!(l.read(), ok());
    assert_eq!(status_field(&mut l, "learners"), "2");
    let join = format!("127.0.0.1:{}", first.port());
    second.restart_with(&["--node-id", "2", "--peer-port", &peer_port, "--join", &join]);
    wait_until(Duration::from_secs(20), "the restarted learner to be promoted", || {
        (status_field(&mut l, "voters") == "1,2").then_some(())
    });
    assert_eq!(second.connect().raw(&["GET", "k"]), "$1\r\nv\r\n");
}

/// A static cluster's voter whose data directory was wiped restarted empty under its id
/// and voted again: with no log and no memory of its votes it could elect a leader that
/// lacks entries committed with its help. It is now refused, because a node that
/// relied on it wrote down that it held state: its leader for a follower, its
/// followers for a leader (which answers nobody). A node that starts for the first time
/// after the others formed the cluster is not refused: nobody saw it hold anything.
fn a_wiped_static_voter_is_refused(wipe_leader: bool) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let peers = peers.join(",");
    let args = |id: u64| vec!["--node-id".to_string(), id.to_string(), "--peers".into(), peers.clone()];
    let start = |id: u64| {
        let args = args(id);
        std::thread::spawn(move || Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    // Nodes 1 and 2 form the cluster; node 3 has never run.
    let (one, two) = (start(1), start(2));
    let mut servers = vec![one.join().expect("node 1"), two.join().expect("node 2")];
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    assert_eq!(until_accepted(&mut l, &["SET", "before", "3"]), ok());
    servers.push(start(3).join().expect("node 3 starts for the first time"));
    let applied: u64 = info_field(&mut l, "raft_applied_index").parse().expect("an index");
    wait_applied(&mut servers[2].connect(), applied);
    assert_eq!(until_accepted(&mut l, &["SET", "after", "3"]), ok());

    // A node loses its data and starts again under its id.
    let leader = wait_for_leader(&mut servers);
    let wiped = if wipe_leader { leader } else { (0..3).rev().find(|i| *i != leader).expect("a follower") };
    let id = wiped as u64 + 1;
    servers[wiped].kill();
    std::fs::remove_dir_all(servers[wiped].data_dir()).expect("wipe the data directory");
    let arg_strings = args(id);
    let args: Vec<&str> = arg_strings.iter().map(String::as_str).collect();
    let (code, stderr) = run_to_exit(&args, &servers[wiped].data_dir());
    assert_ne!(code, 0, "the wiped node started: {stderr}");
    assert!(stderr.contains(&format!("saw node {id} hold Raft state before")), "the refusal says why: {stderr}");
    assert!(stderr.contains(&format!("CLUSTER.REMOVE {id}")), "and what to do: {stderr}");
    // The two others still commit.
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    assert_eq!(until_accepted(&mut l, &["SET", "still", "2"]), ok());
}

#[test]
fn a_wiped_static_follower_is_refused_and_a_late_first_start_is_not() {
    a_wiped_static_voter_is_refused(false);
}

#[test]
fn a_wiped_static_leader_is_refused() {
    a_wiped_static_voter_is_refused(true);
}

/// A node of another cluster at an address listed in `--peers` (a redeployment beside
/// an old cluster still running, a list copied from another environment): the two
/// cluster ids differ, so each side refuses the other's connections. The stray node
/// neither raises its own cluster's term nor takes the other leader's log (which
/// would overwrite entries its own cluster committed), and both clusters commit.
#[test]
fn a_node_of_another_cluster_at_a_listed_address_is_refused() {
    let mut a = start_cluster(3);
    let leader = wait_for_leader(&mut a);
    let mut la = a[leader].connect();
    assert_eq!(until_accepted(&mut la, &["SET", "in-a", "1"]), ok());
    let a_id = info_field(&mut la, "cluster_id");
    assert_eq!(a_id.len(), 32, "the cluster drew an id: {a_id:?}");
    for server in a.iter_mut() {
        let mut c = server.connect();
        wait_until(Duration::from_secs(10), "every member to learn the id", || {
            (info_field(&mut c, "cluster_id") == a_id).then_some(())
        });
    }
    let stray = (0..3).find(|i| *i != leader).expect("a follower");
    let stray_addr = member_addrs(&mut la)[&(stray + 1).to_string()].clone();

    // Cluster B lists the stray node as its node 6.
    let (p4, p5) = (free_port(), free_port());
    let peers = format!("4=127.0.0.1:{p4},5=127.0.0.1:{p5},6={stray_addr}");
    let start = |id: &str| {
        let args = ["--node-id".to_string(), id.to_string(), "--peers".into(), peers.clone()];
        std::thread::spawn(move || Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let (four, five) = (start("4"), start("5"));
    let mut b = vec![four.join().expect("node 4"), five.join().expect("node 5")];
    let b_leader = wait_for_leader(&mut b);
    let mut lb = b[b_leader].connect();
    for i in 0..50 {
        assert_eq!(until_accepted(&mut lb, &["SET", "in-b", &i.to_string()]), ok());
    }
    let b_id = info_field(&mut lb, "cluster_id");
    assert!(b_id.len() == 32 && b_id != a_id, "B has an id of its own: {b_id:?}");
    // Each side names the other's id as the peer's and its own as its own.
    let said = format!("belongs to another cluster (its id {a_id}, this node's {b_id})");
    wait_until(Duration::from_secs(10), "B's leader to say why node 6 is refused", || {
        b.iter().any(|s| s.log_tail(400).contains(&said)).then_some(())
    });
    let said = format!("(its id {b_id}, this node's {a_id})");
    assert!(a[stray].log_tail(400).contains(&said), "{}", a[stray].log_tail(40));

    // The stray node is still A's: its id, A's writes, none of B's.
    assert_eq!(info_field(&mut a[stray].connect(), "cluster_id"), a_id);
    let leader = wait_for_leader(&mut a);
    let mut la = a[leader].connect();
    assert_eq!(until_accepted(&mut la, &["SET", "after-b", "1"]), ok());
    let applied: u64 = info_field(&mut la, "raft_applied_index").parse().expect("an index");
    let mut r = a[stray].connect();
    wait_applied(&mut r, applied);
    assert_eq!(r.cmd(&["READONLY"]), ok());
    assert_eq!(r.raw(&["GET", "after-b"]), "$1\r\n1\r\n");
    assert_eq!(r.raw(&["GET", "in-a"]), "$1\r\n1\r\n");
    assert_eq!(r.raw(&["GET", "in-b"]), "$-1\r\n", "B's log reached A's node");
    let members: Vec<String> = member_addrs(&mut la).into_keys().collect();
    assert_eq!(members, ["1", "2", "3"], "A still has its three members");
}
