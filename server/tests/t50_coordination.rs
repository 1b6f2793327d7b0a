//! Coordination primitives on the wire, against a real 3-node cluster with clients on
//! different nodes: semaphores, counters, queues, barriers, elections, and sessions
//! that release everything they owned when they expire.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{start_cluster, until_accepted, wait_for_leader};
use common::{wait_until, Client, Reply, Server};

/// One client on each node (leader first), once the cluster accepts writes.
fn clients(servers: &mut [Server]) -> Vec<Client> {
    let leader = wait_for_leader(servers);
    let mut order: Vec<usize> = vec![leader];
    order.extend((0..servers.len()).filter(|i| *i != leader));
    let mut clients: Vec<Client> = order.iter().map(|i| servers[*i].connect()).collect();
    for c in clients.iter_mut() {
        until_accepted(c, &["COUNTER.ADD", "warm-up", "1"]);
    }
    clients
}

#[test]
fn semaphores_grant_fenced_permits_fifo_and_a_dead_session_frees_them() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    let a = c[1].cmd(&["SEM.ACQUIRE", "pool", "2", "30000", "TOKEN", "a"]);
    let b = c[2].cmd(&["SEM.ACQUIRE", "pool", "2", "30000", "TOKEN", "b"]);
    assert!(b.field("fence").int() > a.field("fence").int());
    assert_eq!(b.field("token").text(), "b");
    // Full: without WAIT the answer is null at once.
    assert!(c[0].cmd(&["SEM.ACQUIRE", "pool", "2", "30000", "TOKEN", "c"]).is_null());
    let info = c[0].cmd(&["SEM.INFO", "pool"]);
    assert_eq!((info.field("limit").int(), info.field("in_use").int()), (2, 2));

    // A waiter on a follower gets the permit released on another node.
    c[2].send_cmd(&["SEM.ACQUIRE", "pool", "2", "30000", "TOKEN", "w", "WAIT", "10000"]);
    wait_until(Duration::from_secs(5), "the waiter to queue", || {
        (c[0].cmd(&["SEM.INFO", "pool"]).field("waiters").int() == 1).then_some(())
    });
    assert_eq!(c[1].cmd(&["SEM.RELEASE", "pool", "a"]).int(), 1);
    let w = c[2].read();
    assert_eq!(w.field("token").text(), "w");
    assert!(w.field("fence").int() > b.field("fence").int());
    assert_eq!(c[0].cmd(&["SEM.RENEW", "pool", "w", "60000"]).field("ttl").int(), 60000);

    // A session-owned permit goes when the session expires, and wakes the next waiter.
    let session = c[1].cmd(&["SESSION.OPEN", "1000"]).int().to_string();
    assert_eq!(c[1].cmd(&["SEM.RELEASE", "pool", "b"]).int(), 1);
    c[1].cmd(&["SEM.ACQUIRE", "pool", "2", "0", "TOKEN", "s", "SESSION", &session]).field("fence").int();
    c[2].send_cmd(&["SEM.ACQUIRE", "pool", "2", "30000", "TOKEN", "next", "WAIT", "10000"]);
    let started = Instant::now();
    let next = c[2].read();
    assert_eq!(next.field("token").text(), "next");
    assert!(started.elapsed() >= Duration::from_millis(900), "the session's permit was freed early");
    // Bad input keeps the connection working.
    assert!(c[0].raw(&["SEM.ACQUIRE", "pool", "3", "100"]).starts_with("-ERR"), "a changed limit is refused");
    assert_eq!(c[0].cmd(&["SEM.INFO", "pool"]).field("limit").int(), 2);
}

#[test]
fn counters_and_queues_across_nodes() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    assert_eq!(c[1].cmd(&["COUNTER.ADD", "hits", "5"]).int(), 5);
    assert_eq!(c[2].cmd(&["COUNTER.ADD", "hits", "-2"]).int(), 3);
    assert_eq!(c[0].cmd(&["COUNTER.GET", "hits"]).int(), 3);
    assert!(c[0].raw(&["COUNTER.ADD", "hits", "9223372036854775807"]).starts_with("-ERR"), "overflow is refused");

    // Priority first, FIFO within a priority.
    assert_eq!(c[1].cmd(&["QUEUE.PUSH", "jobs", "low-1", "low-2"]).int(), 2);
    assert_eq!(c[2].cmd(&["QUEUE.PUSH", "jobs", "PRIORITY", "9", "urgent"]).int(), 3);
    assert_eq!(c[0].cmd(&["QUEUE.LEN", "jobs"]).int(), 3);
    let popped: Vec<String> = (0..3).map(|_| c[1].cmd(&["QUEUE.POP", "jobs"]).text()).collect();
    assert_eq!(popped, ["urgent", "low-1", "low-2"]);
    assert!(c[1].cmd(&["QUEUE.POP", "jobs"]).is_null());
    // A blocked pop on one follower gets an item pushed on the other.
    c[1].send_cmd(&["QUEUE.POP", "jobs", "WAIT", "10000"]);
    std::thread::sleep(Duration::from_millis(200));
    c[2].cmd(&["QUEUE.PUSH", "jobs", "late"]);
    assert_eq!(c[1].read().text(), "late");
    // A bounded pop times out with null.
    let started = Instant::now();
    assert!(c[2].cmd(&["QUEUE.POP", "jobs", "WAIT", "200"]).is_null());
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn a_barrier_releases_all_waiters_exactly_once() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    // Three parties on three nodes; the first two block until the third arrives.
    c[1].send_cmd(&["BARRIER.WAIT", "phase", "3", "p1", "WAIT", "10000"]);
    c[2].send_cmd(&["BARRIER.WAIT", "phase", "3", "p2", "WAIT", "10000"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c[0].cmd(&["BARRIER.WAIT", "phase", "3", "p3"]), Reply::Simple("OK".into()));
    assert_eq!(c[1].read(), Reply::Simple("OK".into()));
    assert_eq!(c[2].read(), Reply::Simple("OK".into()));
    // Exactly once: nothing more arrives, and the barrier has reset for a next round.
    for client in c.iter_mut().skip(1) {
        client.set_read_timeout(Duration::from_millis(300));
        assert!(client.try_read().is_err(), "a waiter was released twice");
        client.set_read_timeout(Duration::from_secs(15));
    }
    assert!(c[0].cmd(&["BARRIER.WAIT", "phase", "3", "p1", "WAIT", "100"]).is_null(), "a new round waits again");

    // Double barrier: enter waits for 2, leave waits for both to leave.
    c[1].send_cmd(&["BARRIER.ENTER", "dbl", "2", "x", "WAIT", "10000"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c[2].cmd(&["BARRIER.ENTER", "dbl", "2", "y"]), Reply::Simple("OK".into()));
    assert_eq!(c[1].read(), Reply::Simple("OK".into()));
    c[1].send_cmd(&["BARRIER.LEAVE", "dbl", "x", "WAIT", "10000"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c[2].cmd(&["BARRIER.LEAVE", "dbl", "y"]), Reply::Simple("OK".into()));
    assert_eq!(c[1].read(), Reply::Simple("OK".into()));
}

#[test]
fn a_double_barrier_participant_whose_session_ends_leaves_instead_of_wedging_it() {
    let server = Server::start();
    let (mut a, mut b) = (server.connect(), server.connect());
    let session = until_accepted(&mut a, &["SESSION.OPEN", "1000"]).int().to_string();
    a.send_cmd(&["BARRIER.ENTER", "job", "2", "a", "SESSION", &session, "WAIT", "10000"]);
    wait_until(Duration::from_secs(5), "a to wait inside", || {
        let info = b.cmd(&["SESSION.INFO", &session]);
        assert!(!info.is_error(), "{info:?}; a: {:?}", a.try_read());
        (info.field("owned").int() == 1).then_some(())
    });
    assert_eq!(b.cmd(&["BARRIER.ENTER", "job", "2", "b"]), Reply::Simple("OK".into()));
    assert_eq!(a.read(), Reply::Simple("OK".into()));
    // a's process dies inside: it never leaves, and nobody keeps its session alive.
    // Without the session b would wait for it for as long as it asked to.
    drop(a);
    let started = Instant::now();
    assert_eq!(b.cmd(&["BARRIER.LEAVE", "job", "b", "WAIT", "20000"]), Reply::Simple("OK".into()));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "b waited {waited:?} for a participant whose session had ended");
    assert!(b.cmd(&["SESSION.INFO", &session]).is_error(), "the session is gone");
    // The barrier is free for the next round.
    assert!(b.cmd(&["BARRIER.ENTER", "job", "2", "b", "WAIT", "0"]).is_null());
}

#[test]
fn leadership_is_fenced_fifo_transferable_and_moves_when_the_leaders_session_expires() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    let session = c[1].cmd(&["SESSION.OPEN", "1000"]).int().to_string();
    let first =
        c[1].cmd(&["ELECT.CAMPAIGN", "ctl", "node-a", "0", "VALUE", "10.0.0.1", "SESSION", &session, "TOKEN", "ta"]);
    let leader = c[0].cmd(&["ELECT.LEADER", "ctl"]);
    assert_eq!(leader.field("candidate").text(), "node-a");
    assert_eq!(leader.field("value").text(), "10.0.0.1");
    assert_eq!(leader.field("fence").int(), first.field("fence").int());
    assert_eq!(c[1].cmd(&["ELECT.PROCLAIM", "ctl", "ta", "10.0.0.9"]), Reply::Simple("OK".into()));
    assert_eq!(c[2].cmd(&["ELECT.LEADER", "ctl"]).field("value").text(), "10.0.0.9");
    // Only the leader's token proclaims.
    assert!(c[2].raw(&["ELECT.PROCLAIM", "ctl", "wrong", "x"]).starts_with("-NOTHOLDER"));

    // Two candidates queue (FIFO); the leader's session stops being kept alive, so it
    // expires: leadership passes to the first candidate in line, with a higher fence.
    c[2].send_cmd(&["ELECT.CAMPAIGN", "ctl", "node-b", "30000", "TOKEN", "tb", "WAIT", "20000"]);
    std::thread::sleep(Duration::from_millis(100));
    let mut third = servers[0].connect();
    third.send_cmd(&["ELECT.CAMPAIGN", "ctl", "node-c", "30000", "TOKEN", "tc", "WAIT", "20000"]);
    let started = Instant::now();
    let b = c[2].read();
    let moved_after = started.elapsed();
    println!(
        "election: leadership moved {} ms after the leader stopped keeping its 1000 ms session alive",
        moved_after.as_millis()
    );
    assert!(moved_after < Duration::from_millis(2000), "within the session TTL plus one second");
    assert!(b.field("fence").int() > first.field("fence").int());
    assert_eq!(c[0].cmd(&["ELECT.LEADER", "ctl"]).field("candidate").text(), "node-b");
    // The leader hands over to node-c by name.
    assert_eq!(c[2].cmd(&["ELECT.TRANSFER", "ctl", "tb", "node-c"]), Reply::Simple("OK".into()));
    let grant_c = third.read();
    assert!(grant_c.field("fence").int() > b.field("fence").int());
    assert_eq!(c[1].cmd(&["ELECT.LEADER", "ctl"]).field("candidate").text(), "node-c");
    // Resigning leaves nobody leading.
    assert_eq!(third.cmd(&["ELECT.RESIGN", "ctl", "tc"]), Reply::Simple("OK".into()));
    assert!(c[1].cmd(&["ELECT.LEADER", "ctl"]).is_null());
}

#[test]
fn a_bound_session_lives_with_its_connection_and_its_expiry_releases_everything() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    // The client on a follower opens a 1 s session and binds it: its LOCK, SEM.ACQUIRE
    // and ELECT.CAMPAIGN default to it, and the node keeps it alive while connected.
    let mut owner = servers[1].connect();
    let session = owner.cmd(&["SESSION.OPEN", "1000"]).int();
    let id = session.to_string();
    assert_eq!(owner.cmd(&["SESSION.BIND", &id]), Reply::Simple("OK".into()));
    owner.cmd(&["LOCK", "inventory:42", "0", "TOKEN", "o"]).field("fence").int();
    owner.cmd(&["SEM.ACQUIRE", "slots", "1", "0", "TOKEN", "o"]).field("fence").int();
    owner.cmd(&["ELECT.CAMPAIGN", "cron", "worker-1", "0", "TOKEN", "o"]).field("fence").int();
    assert_eq!(owner.cmd(&["SET", "instances/worker-1", "10.0.0.1:80", "SESSION", &id]), Reply::Simple("OK".into()));
    assert_eq!(c[0].cmd(&["ELECT.LEADER", "cron"]).field("session").int(), session);
    // Alive well past its TTL, because the connection is open.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(c[0].cmd(&["SESSION.INFO", &id]).field("ttl").int(), 1000);
    assert!(c[2].cmd(&["LOCK", "inventory:42", "30000", "TOKEN", "x"]).is_null(), "still held");

    // Waiters on other nodes; then the owner's process dies (its connection closes).
    c[2].send_cmd(&["LOCK", "inventory:42", "30000", "TOKEN", "next", "WAIT", "10000"]);
    c[0].send_cmd(&["ELECT.CAMPAIGN", "cron", "worker-2", "30000", "TOKEN", "w2", "WAIT", "10000"]);
    std::thread::sleep(Duration::from_millis(200));
    drop(owner);
    let closed = Instant::now();
    let lock = c[2].read();
    let leader = c[0].read();
    println!(
        "session: everything was released {} ms after the owner's connection closed (TTL 1000 ms)",
        closed.elapsed().as_millis()
    );
    assert!(closed.elapsed() < Duration::from_millis(2000), "within the TTL plus one second");
    assert_eq!(lock.field("token").text(), "next");
    assert_eq!(leader.field("token").text(), "w2");
    assert!(c[1].cmd(&["GET", "instances/worker-1"]).is_null(), "the ephemeral key went with the session");
    assert_eq!(c[1].cmd(&["SEM.INFO", "slots"]).field("in_use").int(), 0);
    assert!(c[1].raw(&["SESSION.BIND", &id]).starts_with("-NOSESSION"));
    assert!(c[1].raw(&["SESSION.BIND", "x"]).starts_with("-ERR"));
}

/// `(revision, kind, target)` of an OBSERVE push.
fn change(push: &Reply) -> (i64, String, String) {
    let items = push.items();
    assert_eq!(items[0].text(), "observe", "{push:?}");
    (items[2].int(), items[3].text(), items[4].text())
}

#[test]
fn a_watch_resumed_after_a_reconnect_to_another_node_misses_nothing() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    // RESP3: notifications arrive as pushes beside ordinary replies.
    let mut w = servers[1].connect();
    w.cmd(&["HELLO", "3"]);
    let start = w.cmd(&["OBSERVE", "PREFIX", "cfg/"]);
    assert!(start.field("revision").int() > 0);
    assert_eq!(c[0].cmd(&["SET", "cfg/a", "1"]), Reply::Simple("OK".into()));
    let (seen, kind, key) = change(&w.read());
    assert_eq!((kind.as_str(), key.as_str()), ("set", "cfg/a"));
    // Ordinary commands work on the observing connection.
    assert_eq!(w.cmd(&["GET", "cfg/a"]).text(), "1");
    drop(w);

    // While nobody watches: two matching changes and one that does not match.
    c[0].cmd(&["SET", "cfg/b", "2"]);
    c[2].cmd(&["DEL", "cfg/a"]);
    c[0].cmd(&["SET", "other", "3"]);
    c[0].cmd(&["SET", "cfg/ttl", "x", "PX", "100"]);

    // Reconnect to another node and resume from the next revision.
    let mut w = servers[2].connect();
    w.cmd(&["HELLO", "3"]);
    let from = (seen + 1).to_string();
    w.cmd(&["OBSERVE", "PREFIX", "cfg/", "FROM", &from]);
    let replayed: Vec<(i64, String, String)> = (0..3).map(|_| change(&w.read())).collect();
    let kinds: Vec<(&str, &str)> = replayed.iter().map(|(_, k, t)| (k.as_str(), t.as_str())).collect();
    assert_eq!(kinds, [("set", "cfg/b"), ("del", "cfg/a"), ("set", "cfg/ttl")]);
    assert!(replayed.windows(2).all(|p| p[0].0 < p[1].0), "revisions increase: {replayed:?}");
    // Then live: the TTL running out, and a new write.
    let (_, kind, key) = change(&w.read());
    assert_eq!((kind.as_str(), key.as_str()), ("expired", "cfg/ttl"));
    c[1].cmd(&["SET", "cfg/c", "4"]);
    let (last, kind, key) = change(&w.read());
    assert_eq!((kind.as_str(), key.as_str()), ("set", "cfg/c"));
    assert!(last > replayed[2].0);

    // History before the node's start is compacted; bad arguments are refused.
    assert!(w.raw(&["OBSERVE", "KEY", "x", "FROM", "0"]).starts_with("-COMPACTED"));
    assert!(w.raw(&["OBSERVE", "KEY", "x", "EVENTS", "bogus"]).starts_with("-ERR unknown event"));
    assert!(w.raw(&["OBSERVE", "TABLE", "x"]).starts_with("-ERR OBSERVE takes"));
}

#[test]
fn observers_see_leadership_changes_and_resignations_and_lock_releases() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    // A RESP2 observer: the connection enters push mode, like SUBSCRIBE.
    let mut o = servers[2].connect();
    o.cmd(&["ELECT.OBSERVE", "ctl"]);
    assert!(o.raw(&["GET", "x"]).starts_with("-ERR Can't execute 'get'"));
    let mut locks = servers[1].connect();
    locks.cmd(&["HELLO", "3"]);
    locks.cmd(&["OBSERVE", "LOCK", "res", "EVENTS", "released,expired", "ONCE"]);
    // RESP2 pub/sub: Redis's keyspace notifications and the election channel.
    let mut sub = servers[0].connect();
    sub.cmd(&["SUBSCRIBE", "__keyspace@0__:k", "__election__:ctl"]);
    sub.read();

    c[1].cmd(&["ELECT.CAMPAIGN", "ctl", "node-a", "30000", "TOKEN", "ta", "VALUE", "10.0.0.1"]);
    let push = o.read();
    let items = push.items();
    assert_eq!(
        (change(&push).1.as_str(), items[5].text().as_str(), items[7].text().as_str()),
        ("leader", "node-a", "10.0.0.1")
    );
    assert_eq!(sub.read().items()[2].text(), "node-a");
    c[1].cmd(&["ELECT.RESIGN", "ctl", "ta"]);
    let resigned = o.read();
    assert!(resigned.items()[5].is_null(), "observers see the resignation: {resigned:?}");
    assert_eq!(sub.read().items()[2].text(), "");

    c[0].cmd(&["SET", "k", "v"]);
    assert_eq!(sub.read().items().iter().map(Reply::text).collect::<Vec<_>>(), ["message", "__keyspace@0__:k", "set"]);

    // A semaphore of the same name is another namespace: its release is not the
    // lock's (it used to arrive on the lock's watch, and end this ONCE watch).
    c[2].cmd(&["SEM.ACQUIRE", "res", "2", "30000", "TOKEN", "s"]);
    c[2].cmd(&["SEM.RELEASE", "res", "s"]);
    let semaphore_done = common::cluster::info_field(&mut c[2], "raft_applied_index").parse::<i64>().unwrap();
    c[2].cmd(&["LOCK", "res", "30000", "TOKEN", "h"]);
    c[2].cmd(&["UNLOCK", "res", "h"]);
    let (revision, kind, name) = change(&locks.read());
    assert_eq!((kind.as_str(), name.as_str()), ("released", "res"));
    assert!(revision > semaphore_done, "the lock's release, not the semaphore's ({revision} <= {semaphore_done})");
    // ONCE: the watch is gone; a cancel of it finds nothing.
    assert_eq!(locks.cmd(&["OBSERVE.CANCEL", "1"]).int(), 0);
}

#[test]
fn the_config_store_versions_keys_with_compare_and_set_and_history() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    let mut w = servers[1].connect();
    w.cmd(&["HELLO", "3"]);
    w.cmd(&["OBSERVE", "CONFIGPREFIX", "app/"]);
    let v1 = c[1].cmd(&["CFG.SET", "app/db", "postgres://a", "IFVERSION", "0"]).int();
    assert!(c[2].raw(&["CFG.SET", "app/db", "x", "IFVERSION", "0"]).starts_with("-CONDFAILED"), "create-only");
    let v2 = c[2].cmd(&["CFG.SET", "app/db", "postgres://b", "IFVERSION", &v1.to_string()]).int();
    assert!(v2 > v1);
    assert!(
        c[0].raw(&["CFG.SET", "app/db", "y", "IFVERSION", &v1.to_string()]).starts_with("-CONDFAILED"),
        "stale version"
    );
    let now = c[0].cmd(&["CFG.GET", "app/db"]);
    assert_eq!((now.field("value").text(), now.field("version").int()), ("postgres://b".to_string(), v2));
    assert_eq!(c[1].cmd(&["CFG.GET", "app/db", "AT", &v1.to_string()]).field("value").text(), "postgres://a");
    let history = c[1].cmd(&["CFG.HISTORY", "app/db"]);
    assert_eq!(history.items().iter().map(|h| h.items()[0].int()).collect::<Vec<_>>(), [v2, v1]);
    c[0].cmd(&["CFG.SET", "app/cache", "redis://c"]);
    let listed = c[2].cmd(&["CFG.LIST", "app/"]);
    assert_eq!(listed.keys(), ["app/cache", "app/db"]);
    let v3 = c[0].cmd(&["CFG.DEL", "app/db", "IFVERSION", &v2.to_string()]).int();
    assert!(c[0].cmd(&["CFG.GET", "app/db"]).is_null());
    // The watcher saw every change with its version as the revision.
    let seen: Vec<(i64, String, String)> = (0..4).map(|_| change(&w.read())).collect();
    let kinds: Vec<(i64, &str)> = seen.iter().map(|(r, k, _)| (*r, k.as_str())).collect();
    assert_eq!(kinds[0], (v1, "set"));
    assert_eq!(kinds[1], (v2, "set"));
    assert_eq!(kinds[3], (v3, "del"));
    assert!(c[0].raw(&["CFG.LIST", "app/", "COUNT", "0"]).starts_with("-ERR COUNT"));
}

#[test]
fn service_instances_register_under_a_session_and_vanish_with_it() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    let mut watcher = servers[2].connect();
    watcher.cmd(&["HELLO", "3"]);
    watcher.cmd(&["SVC.WATCH", "payments"]);
    let session = c[1].cmd(&["SESSION.OPEN", "1000"]).int().to_string();
    assert!(c[1]
        .raw(&["SVC.REGISTER", "payments", "p1", "10.0.0.1:80"])
        .starts_with("-ERR SVC.REGISTER needs SESSION"));
    // `payments/eu`'s keys would sit under `payments`'s prefix.
    let nested = ["SVC.REGISTER", "payments/eu", "p9", "10.0.0.9:80", "SESSION", "1"];
    assert_eq!(c[1].raw(&nested), "-ERR a service name may not contain '/'\r\n");
    assert!(c[1].raw(&["SVC.LIST", "a/b"]).starts_with("-ERR a service name"));
    let ok = c[1].cmd(&["SVC.REGISTER", "payments", "p1", "10.0.0.1:80", "SESSION", &session, "META", "zone=a"]);
    assert_eq!(ok, Reply::Simple("OK".into()));
    let keep = c[0].cmd(&["SESSION.OPEN", "60000"]).int().to_string();
    c[0].cmd(&["SVC.REGISTER", "payments", "p2", "10.0.0.2:80", "SESSION", &keep]);
    let list = c[2].cmd(&["SVC.LIST", "payments"]);
    assert_eq!(list.keys(), ["p1", "p2"]);
    assert_eq!(list.field("p1").items()[1].text(), "zone=a");
    assert!(list.field("p2").items()[1].is_null() || list.field("p2").items()[1].text().is_empty());
    let (_, kind, key) = change(&watcher.read());
    assert_eq!((kind.as_str(), key.as_str()), ("set", "__svc__/payments/p1"));
    change(&watcher.read());
    // p1's session is not kept alive: p1 leaves the list within its TTL (plus a tick).
    let (_, kind, key) = change(&watcher.read());
    assert_eq!((kind.as_str(), key.as_str()), ("expired", "__svc__/payments/p1"));
    assert_eq!(c[1].cmd(&["SVC.LIST", "payments"]).keys(), ["p2"]);
    assert_eq!(c[0].cmd(&["SVC.DEREGISTER", "payments", "p2"]).int(), 2);
    assert!(c[0].cmd(&["SVC.LIST", "payments"]).keys().is_empty());
}

#[test]
fn a_campaign_whose_session_dies_is_abandoned_never_granted_late() {
    let mut servers = start_cluster(3);
    let mut c = clients(&mut servers);
    let leader = c[0].cmd(&["ELECT.CAMPAIGN", "jobs", "leader", "60000", "TOKEN", "tl"]);
    // A candidate queues under a 500 ms session nobody keeps alive; a second candidate
    // queues behind it with a plain lease.
    let session = c[1].cmd(&["SESSION.OPEN", "500"]).int().to_string();
    c[1].send_cmd(&["ELECT.CAMPAIGN", "jobs", "doomed", "0", "SESSION", &session, "TOKEN", "td", "WAIT", "20000"]);
    std::thread::sleep(Duration::from_millis(100));
    c[2].send_cmd(&["ELECT.CAMPAIGN", "jobs", "next", "60000", "TOKEN", "tn", "WAIT", "20000"]);
    // The session expires while the candidate waits: its campaign ends with NOSESSION.
    let abandoned = c[1].read();
    assert!(matches!(&abandoned, Reply::Error(e) if e.starts_with("NOSESSION")), "{abandoned:?}");
    // When the leader resigns, leadership skips the dead candidate.
    assert_eq!(c[0].cmd(&["ELECT.RESIGN", "jobs", "tl"]), Reply::Simple("OK".into()));
    let next = c[2].read();
    assert_eq!(next.field("token").text(), "tn");
    assert!(next.field("fence").int() > leader.field("fence").int());
    assert_eq!(c[0].cmd(&["ELECT.LEADER", "jobs"]).field("candidate").text(), "next");
}
