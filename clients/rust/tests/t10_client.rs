//! The client against a real (embedded) single-node server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fencelock_client::{Client, EmbeddedServer, Error, LockOptions, Options, Target};

async fn client(server: &EmbeddedServer) -> Client {
    Client::connect(Options::new([server.endpoint()])).await.expect("connect")
}

fn embedded() -> EmbeddedServer {
    EmbeddedServer::start().expect("embedded server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_unlock_and_fences_rise() {
    let server = embedded();
    let c = client(&server).await;
    let a = c.lock("orders:1", LockOptions::ttl(Duration::from_secs(10))).await.unwrap();
    assert!(a.is_valid());
    assert_eq!(a.holds(), 1);
    assert_eq!(c.fence(b"orders:1").await.unwrap(), Some(a.fence()));
    let first = a.fence();
    assert!(a.release().await.unwrap(), "it was still held");
    assert_eq!(c.fence(b"orders:1").await.unwrap(), None);
    let mut last = first;
    for _ in 0..5 {
        let l = c.lock("orders:1", LockOptions::ttl(Duration::from_secs(10))).await.unwrap();
        assert!(l.fence() > last, "fences strictly increase");
        last = l.fence();
        l.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_contend_and_the_waiter_gets_it_on_release() {
    let server = embedded();
    let (c1, c2) = (client(&server).await, client(&server).await);
    let held = c1.lock("res", LockOptions::ttl(Duration::from_secs(10))).await.unwrap();
    assert!(c2.try_lock("res", LockOptions::ttl(Duration::from_secs(10))).await.unwrap().is_none());
    let timed_out = c2.lock("res", LockOptions::ttl(Duration::from_secs(10)).wait(Duration::from_millis(200))).await;
    assert!(matches!(timed_out, Err(Error::Timeout(_))), "{timed_out:?}");
    let waiter = tokio::spawn(async move { c2.lock("res", LockOptions::ttl(Duration::from_secs(10))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fence = held.fence();
    held.release().await.unwrap();
    let next = waiter.await.unwrap().unwrap();
    assert!(next.fence() > fence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_renew_keeps_a_lock_past_its_ttl_and_drop_releases() {
    let server = embedded();
    let c = client(&server).await;
    let lock = c.lock("renewed", LockOptions::ttl(Duration::from_millis(600))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(lock.is_valid(), "renewed in the background: {:?}", lock.lost_reason());
    assert_eq!(c.fence(b"renewed").await.unwrap(), Some(lock.fence()), "still held on the server");
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.fence(b"renewed").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "drop released it in the background");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without auto-renew the client's own window closes before the server's lease.
    let o = LockOptions { auto_renew: false, ..LockOptions::ttl(Duration::from_millis(300)) };
    let lock = c.lock("plain", o).await.unwrap();
    // The window is computed from when the request was sent, less drift: shorter than
    // the TTL whatever the machine's speed. (Timing the signal against the TTL failed
    // on a loaded CI machine: the timer itself fired late.)
    let remaining = lock.remaining();
    assert!(remaining < Duration::from_millis(300), "conservative: {remaining:?} left of a 300 ms TTL");
    let reason = tokio::time::timeout(Duration::from_secs(5), lock.lost_signal().wait()).await.expect("fired");
    assert!(reason.contains("validity ran out"), "{reason}");
    // The server's lease ends a little later; a release after it finds nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.fence(b"plain").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the server's 300 ms lease ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!lock.release().await.unwrap(), "nothing was held any more");
}

/// Polls `f` once (its request goes out) and drops it before its answer, as a timeout
/// around it or a cancelled task would.
async fn cut_off<F: std::future::Future>(f: F) {
    tokio::pin!(f);
    tokio::select! {
        biased;
        _ = &mut f => panic!("answered within one poll"),
        _ = std::future::ready(()) => {}
    }
}

async fn until_free(c: &Client, name: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.fence(name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An acquire or a release whose future is dropped before its answer (a timeout
/// around it; a cancelled Python task) must not leave the lock held for its whole
/// lease: the server keeps an IDEMPOTENT grant when the asking connection goes, and
/// nobody would renew or release it. (Both used to hold it for the full 30 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_or_release_gives_the_lock_back() {
    let server = embedded();
    let c = client(&server).await;
    let ttl = LockOptions::ttl(Duration::from_secs(30));
    for _ in 0..5 {
        cut_off(c.lock("cancelled", ttl.clone())).await;
        until_free(&c, b"cancelled", "the grant the cancelled acquire may have got was given back").await;
    }
    let lock = c.lock("cancelled", ttl.clone()).await.unwrap();
    cut_off(lock.release()).await;
    until_free(&c, b"cancelled", "the cancelled release was sent again").await;
    // The same for a semaphore's permit.
    cut_off(c.acquire_permit("cancelled-pool", 1, Duration::from_secs(30), None)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.acquire_permit("cancelled-pool", 1, Duration::from_secs(30), None).await.unwrap() {
            Some(permit) => {
                permit.release().await.unwrap();
                break;
            }
            None => assert!(Instant::now() < deadline, "the cancelled acquire's permit was given back"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lost_signal_fires_when_the_server_stops() {
    let server = embedded();
    let c = client(&server).await;
    let lock = c.lock("job", LockOptions::ttl(Duration::from_millis(900))).await.unwrap();
    let fired = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&fired);
    lock.on_lost(move |_| flag.store(true, Ordering::SeqCst));
    let mut signal = lock.lost_signal();
    tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    // A renewal can land until the server has stopped (stopping took over 300 ms on a
    // loaded CI machine, time enough for one), so the TTL is counted from then: no
    // lease on the server can outlive that.
    let stopped = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), signal.wait()).await.expect("fired");
    assert!(stopped.elapsed() < Duration::from_millis(900), "within the TTL: {:?}", stopped.elapsed());
    assert!(!lock.is_valid());
    assert!(reason.contains("validity ran out"), "{reason}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fired.load(Ordering::SeqCst), "the callback ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_map_to_their_kinds() {
    let server = embedded();
    let c = client(&server).await;
    let e = c.command(&[b"UNLOCK", b"nobody", b"tok"]).await.unwrap_err();
    assert!(matches!(e, Error::NotHolder(_)), "{e:?}");
    assert_eq!(e.kind(), "NotHolder");
    let e = c.command(&[b"LOCK", b"x", b"1000", b"SESSION", b"999999"]).await.unwrap_err();
    assert!(matches!(e, Error::NoSession(_)), "{e:?}");
    let e = c.command(&[b"LOCK", b"x", b"abc"]).await.unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    let e = c.lock("x", LockOptions::ttl(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    // A wait far past anything the server takes is its error, not a panic on an
    // overflowing deadline.
    let far = LockOptions::ttl(Duration::from_secs(10)).wait(Duration::from_secs(u64::MAX));
    let e = c.lock("x", far).await.unwrap_err();
    assert!(e.kind() == "InvalidRequest" && e.to_string().contains("WAIT"), "{e:?}");
    let years = LockOptions::ttl(Duration::from_secs(10)).wait(Duration::from_secs(10 * 365 * 24 * 3600));
    assert_eq!(c.lock("x", years).await.unwrap_err().kind(), "LimitExceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_waited_most_of_its_ttl_is_not_reported_lost() {
    let server = embedded();
    let (a, b) = (client(&server).await, client(&server).await);
    let ttl = Duration::from_secs(3);
    let held = a.lock("late", LockOptions::ttl(ttl)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let lock = b.lock("late", LockOptions::ttl(ttl).wait(Duration::from_secs(10))).await.unwrap();
        (b, lock)
    });
    // The holder lets go after most of the waiter's TTL has passed since it asked.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(held.release().await.unwrap());
    let (_b, lock) = waiter.await.unwrap();
    // Its window counted from the request would end about 0.5 s after the grant.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(lock.is_valid(), "reported lost although the server holds it: {:?}", lock.lost_reason());
    assert_eq!(a.fence(b"late").await.unwrap(), Some(lock.fence()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_under_a_session_goes_with_the_session_and_is_let_go_of_alone() {
    let server = embedded();
    let c = client(&server).await;
    let session = c.session(Duration::from_secs(3)).await.unwrap();
    // Releasing one of the session's locks leaves the session and its other locks.
    let one = c.lock("s:one", LockOptions::default().session(&session)).await.unwrap();
    let two = c.lock("s:two", LockOptions::default().session(&session)).await.unwrap();
    assert!(one.release().await.unwrap());
    assert!(session.is_valid() && two.is_valid(), "releasing one lock lost the session: {:?}", two.lost_reason());
    // A lock with a lease of its own, longer than the session's, under the session: the
    // server revokes it when the session ends, so the client must stop trusting it then
    // (not 30 s later).
    let mut options = LockOptions::ttl(Duration::from_secs(30));
    options.session = Some(session.reference());
    let leased = c.lock("s:leased", options).await.unwrap();
    let mut lost = leased.lost_signal();
    let other = client(&server).await;
    other.command(&[b"SESSION.CLOSE", session.id().to_string().as_bytes()]).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), lost.wait()).await.expect("lost with its session");
    assert!(reason.contains("session"), "{reason}");
    assert!(!leased.is_valid() && !two.is_valid() && !session.is_valid());
    assert_eq!(c.fence(b"s:leased").await.unwrap(), None, "the server revoked it with the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_semaphores_elections_and_watches() {
    let server = embedded();
    let c = client(&server).await;
    // A session-held lock is valid while the session is, and goes when it closes.
    let session = c.session(Duration::from_secs(2)).await.unwrap();
    let lock = c.lock("by-session", LockOptions::default().session(&session)).await.unwrap();
    assert!(lock.is_valid());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(lock.is_valid() && session.is_valid(), "the session is kept alive");
    session.close().await.unwrap();
    assert!(!lock.is_valid());
    assert_eq!(c.fence(b"by-session").await.unwrap(), None);
    drop(lock);

    // Two permits of a semaphore of two; a third waits in vain.
    let ttl = Duration::from_secs(10);
    let p1 = c.acquire_permit("pool", 2, ttl, None).await.unwrap().expect("free");
    let p2 = c.acquire_permit("pool", 2, ttl, None).await.unwrap().expect("free");
    assert!(c.acquire_permit("pool", 2, ttl, Some(Duration::from_millis(100))).await.unwrap().is_none());
    assert!(p2.fence() > p1.fence());
    p1.release().await.unwrap();
    assert!(c.acquire_permit("pool", 2, ttl, None).await.unwrap().is_some());

    // Election: a watcher sees the leader change.
    let mut watch = c.watch(Target::Election("leader".into()), None).await.unwrap();
    let lead = c.campaign("leader", "n1", "addr-1", ttl, None).await.unwrap().expect("leads");
    let current = c.leader(b"leader").await.unwrap().expect("a leader");
    assert_eq!((current.candidate.as_ref(), current.fence), (&b"n1"[..], lead.fence()));
    let event = watch.next(Duration::from_secs(5)).await.unwrap().expect("an event");
    assert_eq!(event.kind, "leader");
    assert_eq!(event.candidate.as_deref(), Some(&b"n1"[..]));
    lead.proclaim("addr-2").await.unwrap();
    assert_eq!(c.leader(b"leader").await.unwrap().unwrap().value.as_ref(), b"addr-2");
    lead.release().await.unwrap();
    assert_eq!(c.leader(b"leader").await.unwrap(), None);

    // Key watch: every change, in revision order.
    let mut keys = c.watch(Target::Prefix("cfg/".into()), None).await.unwrap();
    c.set(b"cfg/a", b"1").await.unwrap();
    c.set(b"cfg/b", b"2").await.unwrap();
    let a = keys.next(Duration::from_secs(5)).await.unwrap().unwrap();
    let b = keys.next(Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!((a.kind.as_str(), a.target.as_ref()), ("set", &b"cfg/a"[..]));
    assert!(b.revision > a.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_every_change_of_a_revision() {
    use std::io::{Read, Write};
    let server = embedded();
    let c = client(&server).await;
    let mut keys = c.watch(Target::Prefix("multi/".into()), None).await.unwrap();
    // MULTI applies both SETs in one log entry: two changes at one revision (as a
    // release granting several waiters, or writes the leader grouped, give).
    let mut raw = std::net::TcpStream::connect(server.endpoint()).unwrap();
    let resp = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        out
    };
    let exec = [&["MULTI"][..], &["SET", "multi/a", "1"], &["SET", "multi/b", "2"], &["EXEC"]];
    raw.write_all(exec.iter().map(|a| resp(a)).collect::<String>().as_bytes()).unwrap();
    let mut replies = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&replies).contains("+OK\r\n+OK\r\n") {
        let n = raw.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed the connection: {}", String::from_utf8_lossy(&replies));
        replies.extend_from_slice(&buf[..n]);
    }
    let a = keys.next(Duration::from_secs(5)).await.unwrap().expect("the first change");
    let b = keys.next(Duration::from_secs(5)).await.unwrap().expect("the second change, same revision");
    assert_eq!((a.target.as_ref(), b.target.as_ref()), (&b"multi/a"[..], &b"multi/b"[..]));
    assert_eq!(a.revision, b.revision);
}

#[test]
fn the_blocking_facade_locks_and_releases() {
    let server = embedded();
    let c = fencelock_client::blocking::Client::connect(Options::new([server.endpoint()])).unwrap();
    let lock = c.lock("sync", LockOptions::ttl(Duration::from_secs(5))).unwrap();
    assert!(lock.is_valid());
    assert!(c.try_lock("sync", LockOptions::ttl(Duration::from_secs(5))).unwrap().is_none());
    assert_eq!(c.fence(b"sync").unwrap(), Some(lock.fence()));
    assert!(lock.release().unwrap());
    assert_eq!(c.fence(b"sync").unwrap(), None);
}
