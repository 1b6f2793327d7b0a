//! Rolling upgrades (`raft::levels`): a member of an older build holds the cluster's
//! write groups off (it would stop on the first one), they start once it is upgraded,
//! and a node of an older build cannot join a cluster whose log may hold groups.
//! `--protocol-level 0` makes a node stand in for a build from before the level
//! exchange: it closes the connection on the request, as such a build does.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::cluster::{
    info_field, run_to_exit, section_field, start_cluster_each, until_accepted, wait_applied, wait_for_leader,
};
use common::{wait_until, Client, Reply, Server};
use fencelock_testkit::Relay;

const CLIENTS: usize = 16;
/// `raft::levels::PROTOCOL_LEVEL`, as INFO shows it.
const THIS_LEVEL: &str = "5";
const CYCLES: usize = 25;

fn stat(c: &mut Client, field: &str) -> u64 {
    let value = section_field(c, "stats", field);
    value.parse().unwrap_or_else(|_| panic!("INFO stats has no count {field}: {value:?}"))
}

fn level(server: &Server) -> String {
    info_field(&mut server.connect(), "cluster_protocol_level")
}

/// Three nodes, node 3 reporting `older_level` if given (standing in for an older
/// build), once they accept writes; and the leader's index.
fn start_three(older_level: Option<&str>) -> (Vec<Server>, usize) {
    let mut servers = start_cluster_each(3, |id| match older_level {
        Some(level) if id == 3 => vec!["--protocol-level".into(), level.into()],
        _ => Vec::new(),
    });
    let leader = wait_for_leader(&mut servers);
    assert_eq!(until_accepted(&mut servers[leader].connect(), &["SET", "ready", "1"]), Reply::Simple("OK".into()));
    (servers, leader)
}

/// Waits until every node sees the cluster at `expected`.
fn wait_all_at(servers: &[Server], expected: &str) {
    for s in servers {
        wait_until(Duration::from_secs(10), &format!("every node at level {expected}"), || {
            (level(s) == expected).then_some(())
        });
    }
}

/// `CLIENTS` concurrent clients lock and release names of their own and set and delete
/// keys, `CYCLES` times each, all through `port`; every answer is checked.
fn run_clients(port: u16, tag: &str) {
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (start, tag) = (Arc::clone(&start), tag.to_string());
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                start.wait();
                for n in 0..CYCLES {
                    let (name, token) = (format!("{tag}:lock:{id}"), format!("{tag}-{id}-{n}"));
                    let grant = c.cmd(&["LOCK", &name, "30000", "TOKEN", &token]);
                    assert!(!grant.is_error() && !grant.is_null(), "client {id}: LOCK {name}: {grant:?}");
                    assert_eq!(c.cmd(&["UNLOCK", &name, &token]), Reply::Int(0), "client {id} releases {name}");
                    let key = format!("{tag}:key:{id}");
                    assert_eq!(c.cmd(&["SET", &key, &token, "NX", "PX", "30000"]), Reply::Simple("OK".into()));
                    assert_eq!(c.cmd(&["DEL", &key]), Reply::Int(1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
}

#[test]
fn an_older_member_holds_write_groups_off_until_it_is_upgraded() {
    let older = 3u64;
    let (mut servers, leader) = start_three(Some("0"));
    let old = (older - 1) as usize;
    assert_eq!(info_field(&mut servers[old].connect(), "protocol_level"), "0");
    for s in &servers {
        assert_eq!(level(s), "0", "a cluster with an older member is at level 0");
    }
    // The node that formed the cluster (node 1) drew an id; the older member neither
    // greets nor takes one, and replicates all the same.
    let cluster_id = info_field(&mut servers[0].connect(), "cluster_id");
    assert_eq!(cluster_id.len(), 32, "{cluster_id:?}");
    assert_eq!(info_field(&mut servers[old].connect(), "cluster_id"), "", "a build from before ids takes none");

    // Concurrent writes through the leader and through the other follower: all
    // answered, none grouped anywhere.
    let follower = (0..3).find(|i| *i != leader && *i != old).unwrap_or(old);
    run_clients(servers[leader].port(), "a");
    run_clients(servers[follower].port(), "b");
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(stat(&mut s.connect(), "fencelock_write_groups"), 0, "node {} grouped writes", i + 1);
    }

    // The older member is upgraded: restarted as this build on its data directory.
    let peers = peers_of(&servers);
    servers[old].restart_with(&["--node-id", &older.to_string(), "--peers", &peers]);
    wait_all_at(&servers, THIS_LEVEL);
    // A member holding data takes no id (a stranger's could reach it first): it stays
    // without one, unchecked, as it was; the others keep theirs.
    assert_eq!(info_field(&mut servers[old].connect(), "cluster_id"), "", "an upgraded member takes no id");
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    run_clients(servers[leader].port(), "c");
    assert!(stat(&mut l, "fencelock_write_groups") > 0, "no group once every member reads them");
    // The upgraded node applied the grouped entries to the same state.
    let applied: u64 = info_field(&mut l, "raft_applied_index").parse().expect("applied index");
    let mut upgraded = servers[old].connect();
    wait_applied(&mut upgraded, applied);
    for id in 0..CLIENTS {
        for tag in ["a", "b", "c"] {
            assert!(upgraded.cmd(&["FENCE", &format!("{tag}:lock:{id}")]).is_null());
            assert_eq!(upgraded.cmd(&["EXISTS", &format!("{tag}:key:{id}")]), Reply::Int(0));
        }
    }
}

/// The `--peers` list the cluster was started with, read back from a node.
fn peers_of(servers: &[Server]) -> String {
    let members = common::cluster::member_addrs(&mut servers[0].connect());
    let mut peers: Vec<String> = members.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
    peers.sort();
    assert_eq!(peers.len(), servers.len(), "CLUSTER.STATUS names every member: {members:?}");
    peers.join(",")
}

#[test]
fn a_node_of_an_older_build_cannot_join_a_cluster_that_writes_groups() {
    let server = Server::start();
    let mut c = server.connect();
    assert_eq!(until_accepted(&mut c, &["SET", "k", "v"]), Reply::Simple("OK".into()));
    assert_eq!(level(&server), THIS_LEVEL, "a node alone is at its own level");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (code, stderr) = run_to_exit(
        &[
            "--node-id",
            "2",
            "--peer-port",
            &common::cluster::free_port().to_string(),
            "--join",
            &format!("127.0.0.1:{}", server.port()),
            "--protocol-level",
            "0",
        ],
        &dir.path().join("data"),
    );
    assert_ne!(code, 0, "an older node joined: {stderr}");
    assert!(
        stderr.contains(&format!("runs an older fencelock (protocol level 0) than this cluster (level {THIS_LEVEL})")),
        "the refusal names the levels: {stderr}"
    );
    // The cluster is unchanged and still alone at its level.
    assert_eq!(c.cmd(&["GET", "k"]), Reply::Bulk(b"v".to_vec()));
    assert_eq!(level(&server), THIS_LEVEL);
}

#[test]
fn a_group_the_leader_refuses_is_proposed_write_by_write() {
    // Nodes 1 and 2 reach node 3 through relays. Whichever of them leads is then made
    // to see node 3 as an older build (its relay closes the level request), while the
    // other still sees it as this build: that follower forms groups, the leader refuses
    // them, and the follower proposes each write alone.
    let ports: Vec<u16> = (0..3).map(|_| common::cluster::free_port()).collect();
    let peers: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let peers = peers.join(",");
    let relays: Vec<Relay> = (0..2).map(|_| Relay::start(format!("127.0.0.1:{}", ports[2]))).collect();
    let handles: Vec<_> = (1..=3u64)
        .map(|id| {
            let mut args = vec!["--node-id".to_string(), id.to_string(), "--peers".into(), peers.clone()];
            if id < 3 {
                args.extend(["--peer-route".into(), format!("3=127.0.0.1:{}", relays[id as usize - 1].port)]);
            }
            std::thread::spawn(move || Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        })
        .collect();
    let mut servers: Vec<Server> = handles.into_iter().map(|h| h.join().expect("a node started")).collect();
    let mut leader = wait_for_leader(&mut servers);
    if leader == 2 {
        let mut c = servers[2].connect();
        let moved = until_accepted(&mut c, &["CLUSTER.TRANSFER", "1"]);
        assert!(!moved.is_error(), "CLUSTER.TRANSFER 1: {moved:?}");
        leader = wait_until(Duration::from_secs(10), "node 1 to lead", || {
            let l = common::cluster::leader_of(&mut servers)?;
            (l != 2).then_some(l)
        });
    }
    let follower = 1 - leader;
    let mut l = servers[leader].connect();
    assert_eq!(until_accepted(&mut l, &["SET", "ready", "1"]), Reply::Simple("OK".into()));
    wait_all_at(&servers, THIS_LEVEL);

    relays[leader].refuse_new_connections();
    wait_until(Duration::from_secs(10), "the leader to see an older member", || {
        (level(&servers[leader]) == "0").then_some(())
    });
    assert_eq!(level(&servers[follower]), THIS_LEVEL, "the follower still sees every member at its level");

    run_clients(servers[follower].port(), "f");
    let mut f = servers[follower].connect();
    let (formed, refused) = (stat(&mut f, "fencelock_write_groups"), stat(&mut f, "fencelock_refused_groups"));
    assert!(formed > 0, "the follower formed no group");
    assert!(refused > 0, "the leader refused none of the follower's {formed} groups");
    assert_eq!(stat(&mut l, "fencelock_write_groups"), 0, "the leader grouped writes at level 0");
    // Every write went in: nothing is left held or set, and a fresh lock still works.
    for id in 0..CLIENTS {
        assert!(l.cmd(&["FENCE", &format!("f:lock:{id}")]).is_null());
        assert_eq!(l.cmd(&["EXISTS", &format!("f:key:{id}")]), Reply::Int(0));
    }
}

#[test]
fn a_write_newer_than_a_member_reads_is_refused_until_it_is_upgraded() {
    // Node 3 stands in for a build of level 1: it reads groups, not session-owned
    // barrier members.
    let older = 3u64;
    let (mut servers, leader) = start_three(Some("1"));
    let mut l = servers[leader].connect();
    wait_all_at(&servers, "1");
    let session = l.cmd(&["SESSION.OPEN", "60000"]).int().to_string();
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    for i in [leader, follower] {
        let mut c = servers[i].connect();
        let refused = c.cmd(&["BARRIER.ENTER", "job", "2", "a", "WAIT", "0", "SESSION", &session]);
        assert!(
            refused.is_error()
                && format!("{refused:?}")
                    .contains("needs every member of the cluster at protocol level 2, and the cluster is at 1"),
            "node {}: {refused:?}",
            i + 1
        );
        // The connection goes on, and the barrier without a session works.
        assert!(c.cmd(&["BARRIER.ENTER", "job", "2", "a", "WAIT", "0"]).is_null());
        // So is withdrawing a queued acquire by token (level 5); closing the waiting
        // connection still ends a wait.
        let refused = c.cmd(&["LOCK.WITHDRAW", "job", "t"]);
        assert!(
            format!("{refused:?}").contains("needs every member of the cluster at protocol level 5"),
            "{refused:?}"
        );
    }

    // Upgraded: the same entry is accepted, and every node applies it.
    let old = (older - 1) as usize;
    let peers = peers_of(&servers);
    servers[old].restart_with(&["--node-id", &older.to_string(), "--peers", &peers]);
    wait_all_at(&servers, THIS_LEVEL);
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    assert_eq!(l.cmd(&["LOCK.WITHDRAW", "job", "t"]), Reply::Int(0), "nothing queued under that token");
    l.send_cmd(&["BARRIER.ENTER", "job", "2", "a", "SESSION", &session, "WAIT", "10000"]);
    let mut other = servers[old].connect();
    wait_until(Duration::from_secs(10), "a to be inside", || {
        (other.cmd(&["SESSION.INFO", &session]).field("owned").int() == 1).then_some(())
    });
    assert_eq!(other.cmd(&["BARRIER.ENTER", "job", "2", "b"]), Reply::Simple("OK".into()));
    assert_eq!(l.read(), Reply::Simple("OK".into()));
}

#[test]
fn a_node_restarted_while_a_member_is_down_keeps_the_level_that_member_answered() {
    let (mut servers, _) = start_three(None);
    wait_all_at(&servers, THIS_LEVEL);
    // Node 3 goes down; node 1 crashes and comes back while it is down. It cannot
    // ask node 3, and counts it at the level node 3 last answered: before this was
    // kept on disk, it counted node 3 as 0 (no groups, no ending its previous waits).
    servers[2].kill();
    servers[0].restart();
    let leader = wait_for_leader(&mut servers[..2]);
    assert_eq!(until_accepted(&mut servers[leader].connect(), &["SET", "again", "1"]), Reply::Simple("OK".into()));
    wait_until(Duration::from_secs(10), "node 1 at this build's level", || {
        (level(&servers[0]) == THIS_LEVEL).then_some(())
    });
    run_clients(servers[0].port(), "r");
}

/// Sets and deletes `count` config keys `cfg/<i>` on `server`, pipelined over 8
/// connections (each write is an entry of its own; concurrent ones share a sync); the
/// versions of each key's set and delete.
fn set_and_delete(server: &Server, count: usize) -> Vec<(u64, u64)> {
    const CONNECTIONS: usize = 8;
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|t| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                let mine: Vec<usize> = (t..count).step_by(CONNECTIONS).collect();
                let mut versions = Vec::with_capacity(mine.len());
                for batch in mine.chunks(200) {
                    for i in batch {
                        let key = format!("cfg/{i}");
                        c.send_cmd(&["CFG.SET", key.as_str(), "v"]);
                        c.send_cmd(&["CFG.DEL", key.as_str()]);
                    }
                    for i in batch {
                        let Reply::Int(set) = c.read() else { panic!("CFG.SET answers its version") };
                        let Reply::Int(deleted) = c.read() else { panic!("CFG.DEL answers its version") };
                        assert!(deleted > set && set > 0);
                        versions.push((*i, (set as u64, deleted as u64)));
                    }
                }
                versions
            })
        })
        .collect();
    let mut versions = vec![(0, 0); count];
    for thread in threads {
        for (i, version) in thread.join().expect("a writer") {
            versions[i] = version;
        }
    }
    versions
}

/// Deleted config keys stayed forever (and counted against the entry limit). At level
/// 3 the leader has the oldest forgotten past KEPT + SLACK; a node at level 2 keeps
/// them all, as builds before did, because a level-2 member could not read the entry.
#[test]
fn the_leader_forgets_old_deleted_config_keys_only_at_level_3() {
    use fencelock_core::{CONFIG_DELETED_KEPT as KEPT, CONFIG_DELETED_SLACK as SLACK};
    let deleted = |c: &mut Client| stat(c, "fencelock_config_deleted_keys") as usize;
    let history_len = |c: &mut Client, key: &str| match c.cmd(&["CFG.HISTORY", key]) {
        Reply::Array(versions) => versions.len(),
        other => panic!("CFG.HISTORY: {other:?}"),
    };
    let count = KEPT + SLACK + 1;

    let server = Server::start();
    let versions = set_and_delete(&server, count);
    let mut c = server.connect();
    wait_until(Duration::from_secs(10), "the oldest deletes forgotten", || (deleted(&mut c) == KEPT).then_some(()));
    // The keys whose deletes came last keep their history, the others have none.
    let mut by_version: Vec<(u64, usize)> = versions.iter().enumerate().map(|(i, (_, del))| (*del, i)).collect();
    by_version.sort();
    let (_, oldest) = by_version[0];
    let first_set = versions[oldest].0;
    assert_eq!(history_len(&mut c, &format!("cfg/{oldest}")), 0, "a forgotten key has no history");
    let refused = c.raw(&["CFG.GET", &format!("cfg/{oldest}"), "AT", &first_set.to_string()]);
    assert!(refused.starts_with("-ERR version") && refused.contains("forgotten"), "{refused}");
    let kept: Vec<usize> = by_version.iter().map(|(_, i)| history_len(&mut c, &format!("cfg/{i}"))).collect();
    assert_eq!(kept[..count - KEPT], vec![0; count - KEPT][..], "the oldest deletes are forgotten");
    assert_eq!(kept[count - KEPT..], vec![2; KEPT][..], "the newest keep their history");

    let older = Server::start_with(&["--protocol-level", "2"]);
    set_and_delete(&older, count);
    let mut c = older.connect();
    // The leader checks every expiry tick (10 ms); give it many.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(deleted(&mut c), count, "a level-2 cluster keeps every deleted key");
    assert_eq!(history_len(&mut c, &format!("cfg/{oldest}")), 2);
}
