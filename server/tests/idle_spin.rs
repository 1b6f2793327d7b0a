//! The idle poll's gates and its use of the runtime's epoll descriptor, on a real
//! tokio runtime. Its own test binary: `IdleSpin::build` takes the first epoll
//! descriptor opened while the runtime was built, which a test building another runtime on a
//! parallel thread could otherwise be.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fencelock_server::idle_spin::{IdleSpin, Polled, IDLE_SPIN_US_MAX};
use fencelock_server::raft::log_store::WriteLoad;

#[test]
fn polls_only_an_idle_lone_node_and_stops_at_an_event() {
    let spin = IdleSpin::new(IDLE_SPIN_US_MAX);
    assert_eq!(spin.before_park(), Polled::Skipped, "no driver or node known yet");
    let runtime = spin.build(tokio::runtime::Builder::new_current_thread().enable_all()).unwrap();
    assert!(spin.knows_driver(), "the runtime opened an epoll descriptor");
    assert_eq!(spin.before_park(), Polled::Skipped, "no node known yet");
    let load = Arc::new(WriteLoad::default());
    let commands = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&commands);
    spin.watch(Arc::clone(&load), move || counter.load(Ordering::Relaxed));
    assert_eq!(spin.before_park(), Polled::Skipped, "a cluster member does not poll");
    load.set_solo(true);
    assert_eq!(spin.before_park(), Polled::Budget, "idle and alone: polls, and nothing comes");

    let counted = load.start_write();
    assert_eq!(spin.before_park(), Polled::Skipped, "a write in flight");
    drop(counted);
    commands.fetch_add(2, Ordering::Relaxed);
    assert_eq!(spin.before_park(), Polled::Skipped, "two commands since the last park");
    commands.fetch_add(1, Ordering::Relaxed);
    spin.after_unpark();
    assert_eq!(spin.before_park(), Polled::Budget, "one command since the last park");

    // A sleep longer than the budget: the next park sleeps at once, and a short
    // one after it turns polling back on.
    std::thread::sleep(Duration::from_millis(5));
    spin.after_unpark();
    assert_eq!(spin.before_park(), Polled::Skipped, "the last sleep was long");
    spin.after_unpark();
    assert_eq!(spin.before_park(), Polled::Budget, "the last sleep was short");

    // An event waiting in the driver (a connection to a registered listener) ends
    // the poll, and the runtime then serves it.
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Let the connection be queued. That sleep counted as idle time: a short one
        // reopens the gate (the first park may find the event already, if the
        // runtime's own park hooks reopened it while this future ran).
        std::thread::sleep(Duration::from_millis(20));
        let _ = spin.before_park();
        spin.after_unpark();
        assert_eq!(spin.before_park(), Polled::Event);
        listener.accept().await.unwrap();
    });
}
