//! The client against a real 3-node cluster of `fencelock` processes: the leader is
//! SIGKILLed while a lock is held, and the lock survives (renewed through another node,
//! same fence), and new requests go on through the survivors.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fencelock_client::{Client, LockOptions, Options};
use fencelock_testkit::{free_port, Relay};

/// The `fencelock` binary cargo built beside this test (target/<profile>/fencelock), or
/// `$FENCELOCK_BIN`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FENCELOCK_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test exe");
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("fencelock");
    assert!(path.exists(), "{} missing: build it with `cargo build --bin fencelock`", path.display());
    path
}

struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(id: u64, peers: &str, dir: &std::path::Path) -> Node {
    start_with(id, peers, dir, &["--port", "0"])
}

/// Starts node `id` with `extra` flags, which must include `--port`.
fn start_with(id: u64, peers: &str, dir: &std::path::Path, extra: &[&str]) -> Node {
    let data = dir.join(format!("n{id}"));
    let mut child = Command::new(binary())
        .args(["--bind", "127.0.0.1", "--node-id", &id.to_string(), "--peers", peers, "--data-dir"])
        .arg(&data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fencelock");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("fencelock ready on 127.0.0.1:") {
                let port: u16 = rest.split(' ').next().and_then(|p| p.parse().ok()).expect("port");
                let _ = tx.send(port);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(30)).expect("node ready");
    Node { child, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_survives_the_leader_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", free_port())).collect();
    let peers = peers.join(",");
    let handles: Vec<_> = (1..=3u64)
        .map(|id| {
            let (peers, dir) = (peers.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || start(id, &peers, &dir))
        })
        .collect();
    let mut nodes: Vec<Node> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let endpoints: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let client = Client::connect(Options { discover: false, ..Options::new(endpoints.clone()) }).await.unwrap();

    // Long enough to ride out an election (about 0.5 s here) between two renewals.
    let ttl = Duration::from_millis(3_000);
    let lock = client.lock("failover", LockOptions::ttl(ttl)).await.unwrap();
    let fence = lock.fence();

    // Find and SIGKILL the leader.
    let status = client.command(&[b"CLUSTER.STATUS"]).await.unwrap();
    let fencelock_client::resp::Value::Bulk(text) = status else { panic!("{status:?}") };
    let text = String::from_utf8_lossy(&text).into_owned();
    let leader: u64 = text.lines().find_map(|l| l.strip_prefix("leader_id:")).unwrap().trim().parse().unwrap();
    let killed_at = Instant::now();
    nodes[leader as usize - 1].child.kill().unwrap();

    // Two TTLs later the lock is still ours: renewed through a survivor, same fence.
    tokio::time::sleep(ttl * 2).await;
    assert!(lock.is_valid(), "lost: {:?}", lock.lost_reason());
    assert_eq!(client.fence(b"failover").await.unwrap(), Some(fence), "still held with the same fence");
    // Another client cannot take it; a new lock goes through the survivors.
    let other = Client::connect(Options { discover: false, ..Options::new(endpoints) }).await.unwrap();
    assert!(other.try_lock("failover", LockOptions::ttl(ttl)).await.unwrap().is_none());
    let next = other.lock("after", LockOptions::ttl(ttl)).await.unwrap();
    assert!(next.fence() > fence);
    eprintln!("the leader was killed {:?} ago; the lock held throughout", killed_at.elapsed());
    assert!(lock.release().await.unwrap());
    next.release().await.unwrap();
    nodes.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_at_once_not_unavailable_after_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        start_with(1, &format!("1=127.0.0.1:{}", free_port()), dir.path(), &["--port", "0", "--requirepass", "secret"]);
    let endpoint = format!("127.0.0.1:{}", node.port);
    let started = Instant::now();
    let wrong = Options { password: Some("wrong".into()), ..Options::new([endpoint.clone()]) };
    let e = Client::connect(wrong).await.unwrap_err();
    assert_eq!(e.kind(), "AuthError", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "refused after {:?}", started.elapsed());
    let right = Options { password: Some("secret".into()), ..Options::new([endpoint]) };
    let client = Client::connect(right).await.expect("the right password connects");
    client.lock("k", LockOptions::ttl(Duration::from_secs(5))).await.unwrap().release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_the_server_restarted_is_sent_on_a_fresh_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (peers, port) = (format!("1=127.0.0.1:{}", free_port()), free_port().to_string());
    let node = start_with(1, &peers, dir.path(), &["--port", &port]);
    let client =
        Client::connect(Options { discover: false, ..Options::new([format!("127.0.0.1:{port}")]) }).await.unwrap();
    client.command(&[b"SET", b"n", b"0"]).await.unwrap();
    // Restarted on the same port and data: the client's idle connection is closed.
    drop(node);
    let _node = start_with(1, &peers, dir.path(), &["--port", &port]);
    // Not retried once sent, so a request on the dead idle connection would come back
    // as an unknown outcome although the server never read it.
    let value = client.command(&[b"INCR", b"n"]).await.expect("sent on a fresh connection");
    assert_eq!(value, fencelock_client::resp::Value::Int(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_reply_was_lost_is_not_reported_as_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(1, &format!("1=127.0.0.1:{}", free_port()), dir.path());
    let relay = Relay::start(format!("127.0.0.1:{}", node.port));
    let endpoint = format!("127.0.0.1:{}", relay.port);
    let client = Client::connect(Options { discover: false, ..Options::new([endpoint]) }).await.unwrap();
    let lock = client.lock("job", LockOptions { auto_renew: false, ..LockOptions::ttl(Duration::from_secs(30)) });
    let lock = lock.await.unwrap();
    // The UNLOCK is applied and its reply lost; the retry finds the lock gone.
    relay.cut_after_next_request();
    let e = lock.release().await.expect_err("not a plain 'no longer held'");
    assert_eq!(e.kind(), "OutcomeUnknown", "{e:?}");
    assert_eq!(client.fence(b"job").await.unwrap(), None, "released");
}
