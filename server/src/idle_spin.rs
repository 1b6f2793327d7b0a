//! Busy-polling before the runtime thread sleeps, when a single node serves one client.
//!
//! At one client, every request found the server's thread asleep in `epoll_wait`,
//! and waking a sleeping thread on this VM (an inter-processor interrupt through the
//! hypervisor) cost about as much as the rest of the request. A lone client's next
//! request arrives within tens of microseconds of our reply, so polling for it that
//! long before sleeping skips the wake-up. It also spares the client a wake-up: the
//! reply comes before its thread has gone to sleep (the load generator's CPU per
//! cycle fell from 78–87 to 58–64 µs).
//!
//! Polling takes a core from whoever else wants it, so it is gated:
//! - only when this node is its cluster's only member: three nodes on one 2-core
//!   machine polling in turn made their 1-client cycle slower (p50 919–925 against
//!   1,010–1,151 µs) and cost half again as much CPU;
//! - only when no client write is in flight here and at most one command was
//!   answered since the thread last went to sleep: with many clients the thread has
//!   work again soon anyway, and polling whenever no write was in flight took CPU from
//!   the WAL thread and the clients (1 node, 64 clients: 21–22k cycles/s at 42–45 µs
//!   of server CPU each, against 25–27k at 36–37 µs not polling);
//! - only when the thread's last idle time was shorter than the budget: a client
//!   that pauses longer between requests would make every poll a loss.
//!
//! Measured with the bench on one node, alternated (`--idle-spin-us` 0 against the
//! default 200):
//! - 1 client, three rounds: p50 597 / 578 / 522 against 535 / 512 / 475 µs per lock
//!   cycle, 1,604–1,841 against 1,816–2,027 cycles/s. With these gates a 50 µs budget
//!   gained nothing (593 / 633 / 525), 100 µs about as much as 200;
//! - 64 clients, three rounds: 24.3–27.7k against 23.5–30.4k cycles/s, server CPU
//!   34.6–37.7 against 31.6–41.0 µs per cycle: within this VM's noise;
//! - 10,000 connections, 1,000 of them active at 2,000 cycles/s (gaps of about 250 µs
//!   between requests), twice: active p99 27.4 / 31.9 against 11.1 / 9.8 ms, for
//!   176–188 against 218–227 µs of server CPU per cycle.
//!
//! tokio offers no way to poll its driver, but its `epoll` descriptor is readable
//! whenever events wait in it, so `poll(2)` on it with no timeout tells, without
//! taking them, whether `epoll_wait` would return at once. The descriptor is found as
//! the `eventpoll` file the runtime's construction opened.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};

use crate::raft::log_store::WriteLoad;

/// Longest `--idle-spin-us` accepted: past a millisecond polling is a second core's
/// worth of CPU for a latency the wake-up it saves (tens of µs) never reaches.
pub const IDLE_SPIN_US_MAX: u64 = 1_000;

/// What the gate reads: the node's write counter and the server's count of commands
/// answered.
struct Watched {
    load: Arc<WriteLoad>,
    commands: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// What one park hook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// A gate said no: the thread sleeps at once.
    Skipped,
    /// An event was waiting: the thread will not sleep.
    Event,
    /// Nothing came within the budget: the thread sleeps.
    Budget,
}

/// The runtime's park hooks and what they need to decide whether to poll. The hooks
/// run on the runtime's one thread; the atomics are only there to make them `Sync`.
pub struct IdleSpin {
    budget: Duration,
    /// The runtime driver's epoll descriptor; -1 until found (no polling until then).
    epoll_fd: AtomicI32,
    /// The node and server, once started (no polling until then).
    watched: OnceLock<Watched>,
    /// Commands answered when the thread last parked.
    commands_at_park: AtomicU64,
    /// When the thread last went to sleep, in ns since `epoch`.
    slept_at_ns: AtomicU64,
    /// Whether the last sleep ended within the budget.
    last_sleep_short: AtomicBool,
    epoch: Instant,
}

impl IdleSpin {
    /// Hooks that poll up to `budget_us` before a sleep, once they know the driver and
    /// the node.
    pub fn new(budget_us: u64) -> Arc<IdleSpin> {
        debug_assert!(budget_us <= IDLE_SPIN_US_MAX);
        Arc::new(IdleSpin {
            budget: Duration::from_micros(budget_us),
            epoll_fd: AtomicI32::new(-1),
            watched: OnceLock::new(),
            commands_at_park: AtomicU64::new(0),
            slept_at_ns: AtomicU64::new(0),
            last_sleep_short: AtomicBool::new(true),
            epoch: Instant::now(),
        })
    }

    /// Builds `builder`'s runtime (one thread) with this poll's park hooks, and learns
    /// its driver's epoll descriptor: the first `eventpoll` file that building it
    /// opened. Without one the hooks never poll (`knows_driver` says so).
    pub fn build(self: &Arc<Self>, builder: &mut Builder) -> io::Result<Runtime> {
        let before = eventpoll_fds();
        let (park, unpark) = (Arc::clone(self), Arc::clone(self));
        let runtime = builder
            .on_thread_park(move || {
                park.before_park();
            })
            .on_thread_unpark(move || unpark.after_unpark())
            .build()?;
        if let Some(fd) = eventpoll_fds().into_iter().find(|fd| !before.contains(fd)) {
            self.epoll_fd.store(fd, Ordering::Relaxed);
        }
        Ok(runtime)
    }

    /// Whether the runtime's epoll descriptor was found (else nothing ever polls).
    pub fn knows_driver(&self) -> bool {
        self.epoll_fd.load(Ordering::Relaxed) >= 0
    }

    /// Starts consulting the node's write counter and the count of commands answered.
    pub fn watch(&self, load: Arc<WriteLoad>, commands: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.watched.set(Watched { load, commands: Box::new(commands) });
    }

    /// Whether a poll may pay now (the gates in the module's comment).
    fn worth_polling(&self) -> bool {
        let Some(watched) = self.watched.get() else { return false };
        let commands = (watched.commands)();
        let since_park = commands.wrapping_sub(self.commands_at_park.swap(commands, Ordering::Relaxed));
        self.knows_driver()
            && watched.load.idle_solo()
            && since_park <= 1
            && self.last_sleep_short.load(Ordering::Relaxed)
    }

    /// The park hook: returns at once unless polling may pay, else when an event is
    /// waiting in the driver or the budget has passed.
    pub fn before_park(&self) -> Polled {
        self.slept_at_ns.store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if !self.worth_polling() {
            return Polled::Skipped;
        }
        let fd = self.epoll_fd.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut wanted = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // Bounded by the budget: at most IDLE_SPIN_US_MAX of polling per sleep.
        while start.elapsed() < self.budget {
            // SAFETY: one valid pollfd, zero timeout; the descriptor stays open for the
            // runtime's life, which outlives its hooks.
            if unsafe { libc::poll(&mut wanted, 1, 0) } != 0 {
                return Polled::Event; // or an error, which epoll_wait will report
            }
            std::hint::spin_loop();
        }
        Polled::Budget
    }

    /// The unpark hook: remembers whether the thread's idle time (from the park hook on,
    /// polling included) was short enough for a poll to catch its end.
    pub fn after_unpark(&self) {
        let slept_ns =
            (self.epoch.elapsed().as_nanos() as u64).saturating_sub(self.slept_at_ns.load(Ordering::Relaxed));
        self.last_sleep_short.store(slept_ns < self.budget.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// This process's open `eventpoll` descriptors, lowest first.
fn eventpoll_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    let mut fds: Vec<RawFd> = dir
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}
