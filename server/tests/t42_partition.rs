//! Pauses and partitions with real processes: a leader frozen with SIGSTOP past the
//! election timeout is replaced, and once resumed it can neither grant nor confirm
//! anything; a node cut off in a minority refuses writes and linearizable reads instead
//! of answering from stale state.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{info_field, led_cluster, start_cluster, start_cluster_with, until_accepted, wait_for_leader};
use common::{encode, wait_until, Client, Reply, Server};
use fencelock_testkit::Relay;

/// Sends `args` until it is granted (not null, not TRYAGAIN); the grant.
fn lock_until_granted(c: &mut Client, args: &[&str]) -> Reply {
    wait_until(Duration::from_secs(20), "the lock to be granted", || match c.cmd(args) {
        Reply::Error(e) if e.starts_with("TRYAGAIN") => None,
        reply if reply.is_null() => {
            std::thread::sleep(Duration::from_millis(20));
            None
        }
        reply => Some(reply),
    })
}

#[test]
fn a_paused_leader_is_replaced_and_after_resuming_grants_and_confirms_nothing() {
    let mut servers = start_cluster(3);
    let old = wait_for_leader(&mut servers);
    let mut a = servers[old].connect();
    let first = until_accepted(&mut a, &["LOCK", "res", "2000", "TOKEN", "a"]).field("fence").int();
    let granted_a = Instant::now();
    // A connection to the old leader made now, used while it is frozen.
    let mut stale = servers[old].connect();
    stale.set_read_timeout(Duration::from_secs(30));
    servers[old].signal("STOP");

    // The other two elect a leader; the lock passes to b only once a's lease has run
    // out on the new leader's clock, which restarts the remaining time when it takes
    // over (never early).
    let survivor = (0..3).find(|i| *i != old).expect("a survivor");
    let mut b = servers[survivor].connect();
    let grant = lock_until_granted(&mut b, &["LOCK", "res", "30000", "TOKEN", "b"]);
    let waited = granted_a.elapsed();
    let second = grant.field("fence").int();
    println!("sigstop: b was granted {} ms after a's 2000 ms lease began", waited.as_millis());
    assert!(waited >= Duration::from_millis(2000), "a's lease ended early: b got the lock after {waited:?}");
    assert!(second > first, "fences increase: {second} > {first}");

    // Requests reach the frozen leader's socket first, then it resumes: it must not
    // renew a's lease, must not grant, and must report b's fence (or ask to retry).
    let mut requests = encode(&["RENEW", "res", "a", "30000"]);
    requests.extend(encode(&["LOCK", "res", "30000", "TOKEN", "a"]));
    requests.extend(encode(&["FENCE", "res"]));
    stale.send(&requests);
    servers[old].signal("CONT");
    let renew = stale.read();
    let lock = stale.read();
    let fence = stale.read();
    println!("sigstop: the resumed leader answered RENEW {renew:?}, LOCK {lock:?}, FENCE {fence:?}");
    assert!(
        matches!(&renew, Reply::Error(e) if e.starts_with("NOTHOLDER") || e.starts_with("TRYAGAIN")),
        "the resumed old leader renewed a lease it no longer has: {renew:?}"
    );
    assert!(
        lock.is_null() || matches!(&lock, Reply::Error(e) if e.starts_with("TRYAGAIN")),
        "the resumed old leader granted a held lock: {lock:?}"
    );
    assert!(
        matches!(&fence, Reply::Int(f) if *f == second)
            || matches!(&fence, Reply::Error(e) if e.starts_with("TRYAGAIN")),
        "the resumed old leader confirmed a stale fence: {fence:?}"
    );
    // It has stepped down; b still holds the lock; fences keep increasing through it.
    wait_until(Duration::from_secs(5), "the old leader to step down", || {
        (info_field(&mut stale, "role") == "slave").then_some(())
    });
    assert_eq!(stale.cmd(&["FENCE", "res"]).int(), second);
    let third = until_accepted(&mut stale, &["LOCK", "res-2", "30000", "TOKEN", "c"]).field("fence").int();
    assert!(third > second);
    assert!(b.cmd(&["LOCK", "res", "30000", "TOKEN", "d"]).is_null(), "b still holds res");
}

#[test]
fn a_node_cut_off_in_the_minority_refuses_writes_and_reads() {
    let (mut servers, leader, mut l) = led_cluster(3, &["SET", "k", "before"]);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // The leader alone: both followers frozen.
    for f in &followers {
        servers[*f].signal("STOP");
    }
    let started = Instant::now();
    let write = l.cmd(&["SET", "k", "in-minority"]);
    println!("minority: the isolated leader answered {write:?} after {} ms", started.elapsed().as_millis());
    assert!(matches!(&write, Reply::Error(e) if e.starts_with("TRYAGAIN")), "{write:?}");
    let read = l.cmd(&["GET", "k"]);
    assert!(matches!(&read, Reply::Error(e) if e.starts_with("TRYAGAIN")), "a stale read: {read:?}");
    for f in &followers {
        servers[*f].signal("CONT");
    }
    // Healed: writes and reads work again. The refused write may or may not have
    // committed (the client was told to retry), so only a fresh write is checked.
    let mut c = servers[followers[0]].connect();
    assert_eq!(until_accepted(&mut c, &["SET", "k", "healed"]), Reply::Simple("OK".into()));
    assert_eq!(until_accepted(&mut c, &["GET", "k"]), Reply::Bulk(b"healed".to_vec()));

    // A follower alone: the leader and the other follower frozen.
    let leader = wait_for_leader(&mut servers);
    let lone = (0..3).find(|i| *i != leader).expect("a follower");
    let other = (0..3).find(|i| *i != leader && *i != lone).expect("another follower");
    servers[leader].signal("STOP");
    servers[other].signal("STOP");
    let mut f = servers[lone].connect();
    let started = Instant::now();
    let write = f.cmd(&["SET", "k", "lonely"]);
    let read = f.cmd(&["GET", "k"]);
    println!(
        "minority: the isolated follower answered {write:?} / {read:?} within {} ms",
        started.elapsed().as_millis()
    );
    assert!(matches!(&write, Reply::Error(e) if e.starts_with("TRYAGAIN")), "{write:?}");
    assert!(matches!(&read, Reply::Error(e) if e.starts_with("TRYAGAIN")), "a stale read: {read:?}");
    // READONLY is the explicit opt-in to this replica's (possibly stale) state.
    f.cmd(&["READONLY"]);
    assert_eq!(f.raw(&["GET", "k"]), "$6\r\nhealed\r\n");
    f.cmd(&["READWRITE"]);
    servers[leader].signal("CONT");
    servers[other].signal("CONT");
    assert_eq!(until_accepted(&mut f, &["SET", "k", "after"]), Reply::Simple("OK".into()));
}

/// Three nodes, each reaching each other through a relay of its own (`relays[from][to]`).
fn relayed_cluster(extra: &[&str]) -> (Vec<Server>, Vec<Vec<Option<Relay>>>) {
    let ports: Vec<u16> = (0..3).map(|_| common::cluster::free_port()).collect();
    let peers: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
    let peers = peers.join(",");
    let relays: Vec<Vec<Option<Relay>>> = (0..3)
        .map(|from| (0..3).map(|to| (from != to).then(|| Relay::start(format!("127.0.0.1:{}", ports[to])))).collect())
        .collect();
    let handles: Vec<_> = (0..3usize)
        .map(|from| {
            let routes: Vec<String> = (0..3)
                .filter_map(|to| relays[from][to].as_ref().map(|r| format!("{}=127.0.0.1:{}", to + 1, r.port)))
                .collect();
            let mut args = vec![
                "--node-id".to_string(),
                (from + 1).to_string(),
                "--peers".into(),
                peers.clone(),
                "--peer-route".into(),
                routes.join(","),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            std::thread::spawn(move || Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        })
        .collect();
    let servers = handles.into_iter().map(|h| h.join().expect("a node started")).collect();
    (servers, relays)
}

#[test]
fn a_forwarded_write_whose_answer_is_lost_is_reported_as_possibly_applied() {
    // Every node reaches every other through a relay of its own.
    let (mut servers, relays) = relayed_cluster(&[]);
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    assert_eq!(until_accepted(&mut l, &["SET", "ready", "1"]), Reply::Simple("OK".into()));
    let follower = (0..3).find(|i| *i != leader).expect("a follower");

    // The follower's forwards reach the leader, which commits them, but its answers
    // never come back: the write went in, so a plain TRYAGAIN (which clients resend)
    // would apply it twice.
    relays[follower][leader].as_ref().expect("a relay").drop_answers();
    let mut c = servers[follower].connect();
    c.set_read_timeout(Duration::from_secs(30));
    let Reply::Error(e) = c.cmd(&["INCR", "n"]) else { panic!("the forwarded INCR was answered") };
    assert!(e.starts_with("TRYAGAIN") && e.contains("may have been applied"), "{e}");
    assert_eq!(l.cmd(&["GET", "n"]), Reply::Bulk(b"1".to_vec()), "applied once, on the leader");
}

#[test]
fn the_leader_ends_the_waits_of_a_member_it_no_longer_hears_from() {
    let mut servers = start_cluster_with(3, &["--silent-node-ms", "1500"]);
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    assert_eq!(until_accepted(&mut l, &["SET", "ready", "1"]), Reply::Simple("OK".into()));
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (gone, alive) = (followers[0], followers[1]);
    // A client on each follower blocks for an item of its own queue.
    let mut doomed = servers[gone].connect();
    doomed.send_cmd(&["QUEUE.POP", "jobs", "WAIT", "FOREVER"]);
    let mut waiting = servers[alive].connect();
    waiting.set_read_timeout(Duration::from_secs(20));
    waiting.send_cmd(&["QUEUE.POP", "other", "WAIT", "FOREVER"]);
    for i in [gone, alive] {
        let mut c = servers[i].connect();
        wait_until(Duration::from_secs(10), "the client to block", || {
            c.cmd(&["INFO", "clients"]).text().contains("blocked_clients:1").then_some(())
        });
    }

    // One follower dies and stays down: nothing else would end its client's wait.
    servers[gone].kill();
    drop(doomed);
    wait_until(Duration::from_secs(20), "the leader to end the silent member's waits", || {
        servers[leader].log_tail(200).contains("ended the waits of a silent member").then_some(())
    });
    // Its wait takes no item: the push stays in the queue.
    assert_eq!(l.cmd(&["QUEUE.PUSH", "jobs", "x"]), Reply::Int(1));
    assert_eq!(l.cmd(&["QUEUE.LEN", "jobs"]), Reply::Int(1), "an item went to the wait of a node that is gone");
    // The live follower's client still waits, and gets its item.
    l.cmd(&["QUEUE.PUSH", "other", "y"]);
    assert_eq!(waiting.read(), Reply::Bulk(b"y".to_vec()));
}

/// A follower cut off while the leader snapshots and purges its log comes back only
/// through a snapshot, which skips the revisions it covers: it cannot tell its
/// observers what changed in them, so each observing connection is closed with the
/// reason (it used to go on from the snapshot's revision, silently missing them), and
/// resuming from the last revision seen there is refused with COMPACTED.
#[test]
fn a_snapshot_install_closes_the_followers_watches_with_the_reason() {
    let (mut servers, relays) = relayed_cluster(&["--snapshot-every", "200"]);
    let leader = wait_for_leader(&mut servers);
    let mut l = servers[leader].connect();
    assert_eq!(until_accepted(&mut l, &["SET", "before", "1"]), Reply::Simple("OK".into()));
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let held = info_field(&mut l, "raft_applied_index").parse::<u64>().expect("applied");
    let mut o = servers[follower].connect();
    common::cluster::wait_applied(&mut o, held);
    o.cmd(&["HELLO", "3"]);
    let seen = o.cmd(&["OBSERVE", "PREFIX", "key:"]).field("revision").int();
    let links = |f: &dyn Fn(&Relay)| {
        for other in (0..3).filter(|i| *i != follower) {
            f(relays[follower][other].as_ref().expect("a relay"));
            f(relays[other][follower].as_ref().expect("a relay"));
        }
    };
    links(&|r| r.partition());
    // Past the 1,000 entries the leader keeps behind a snapshot.
    let mut batch = Vec::new();
    for i in 0..3_000 {
        batch.extend(encode(&["SET", &format!("key:{i}"), "v"]));
    }
    l.send(&batch);
    for _ in 0..3_000 {
        assert_eq!(l.read(), Reply::Simple("OK".into()));
    }
    wait_until(Duration::from_secs(20), "the leader to purge past the follower's log", || {
        (common::cluster::status_field(&mut l, "purged_index").parse::<u64>().unwrap_or(0) > held + 1).then_some(())
    });
    links(&|r| r.heal());
    let (tail, closed) = o.read_to_close(Duration::from_secs(30), 4096);
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.contains("installed a snapshot through revision"), "{tail}");
    assert!(closed, "closed after the reason");
    let mut again = servers[follower].connect();
    let resumed = again.raw(&["OBSERVE", "PREFIX", "key:", "FROM", &(seen + 1).to_string()]);
    assert!(resumed.starts_with("-COMPACTED"), "{resumed}");
}
