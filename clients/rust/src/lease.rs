//! What every held thing (lock, permit, leadership, session) shares: a validity window
//! counted on the client's own clock, a keep-alive task, and a lost signal.
//!
//! The window is conservative: a grant or renewal sent at `t` with a lease of `ttl` is
//! valid until `t + ttl × (1 − drift)`. The server counts the lease from when it applies
//! the request, which is after `t`, so the client stops believing before the server lets
//! anyone else in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Client, Retry};
use crate::error::Error;
use crate::resp::Value;

/// The shared state of one held thing.
///
/// A lock held under a session has a state of its own whose `parent` is the session's:
/// it is valid only while both are, and letting go of the lock (or losing it) leaves
/// the session and its other locks alone.
#[derive(Debug)]
pub(crate) struct LeaseState {
    valid_until: Mutex<Instant>,
    lost: watch::Sender<Option<String>>,
    parent: Option<Arc<LeaseState>>,
}

/// The window of a thing with no lease of its own (a lock held by a session alone):
/// its parent's sets the limit.
const NO_LEASE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl LeaseState {
    pub fn new(valid_until: Instant) -> Arc<LeaseState> {
        Arc::new(LeaseState { valid_until: Mutex::new(valid_until), lost: watch::channel(None).0, parent: None })
    }

    /// A state under `parent`, with a window of its own (`None`: only the parent's).
    pub fn child(parent: &Arc<LeaseState>, valid_until: Option<Instant>) -> Arc<LeaseState> {
        let own = valid_until.unwrap_or_else(|| Instant::now() + NO_LEASE);
        Arc::new(LeaseState {
            valid_until: Mutex::new(own),
            lost: watch::channel(None).0,
            parent: Some(Arc::clone(parent)),
        })
    }

    /// The end of the window: its own, or its parent's if that ends first.
    pub fn valid_until(&self) -> Instant {
        let own = *self.valid_until.lock().expect("not poisoned");
        self.parent.as_ref().map_or(own, |p| own.min(p.valid_until()))
    }

    /// Moves its own window forward (never back).
    pub fn extend(&self, until: Instant) {
        let mut v = self.valid_until.lock().expect("not poisoned");
        *v = (*v).max(until);
    }

    pub fn is_valid(&self) -> bool {
        self.lost_reason().is_none() && Instant::now() < self.valid_until()
    }

    pub fn remaining(&self) -> Duration {
        if self.lost_reason().is_some() {
            return Duration::ZERO;
        }
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// Marks it lost (the first reason wins) and wakes every waiter. A parent is not
    /// touched.
    pub fn set_lost(&self, reason: String) {
        self.lost.send_if_modified(|lost| {
            if lost.is_none() {
                *lost = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why it was lost: its own reason, or its parent's.
    pub fn lost_reason(&self) -> Option<String> {
        if let Some(reason) = self.lost.borrow().clone() {
            return Some(reason);
        }
        let parent = self.parent.as_ref()?.lost_reason()?;
        Some(format!("its session was lost: {parent}"))
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.lost.subscribe()
    }
}

/// A signal that fires once when a held thing is lost. Clone it into the work the lock
/// protects and `select!` on [`LostSignal::wait`] to abort that work.
#[derive(Debug, Clone)]
pub struct LostSignal {
    rx: watch::Receiver<Option<String>>,
    parent_rx: Option<watch::Receiver<Option<String>>>,
    state: Arc<LeaseState>,
}

impl LostSignal {
    pub(crate) fn new(state: &Arc<LeaseState>) -> LostSignal {
        LostSignal {
            rx: state.subscribe(),
            parent_rx: state.parent.as_ref().map(|p| p.subscribe()),
            state: Arc::clone(state),
        }
    }

    /// Waits until it is lost (renewal refused or failing until the validity ran out,
    /// the validity ran out on the client's clock, or, for a lock held under a session,
    /// the session was lost); the reason.
    pub async fn wait(&mut self) -> String {
        loop {
            self.rx.borrow_and_update();
            if let Some(parent) = self.parent_rx.as_mut() {
                parent.borrow_and_update();
            }
            if let Some(reason) = self.state.lost_reason() {
                return reason;
            }
            let until = self.state.valid_until();
            let parent_changed = async {
                match self.parent_rx.as_mut() {
                    Some(parent) => parent.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return "the client dropped the guard".into();
                    }
                }
                changed = parent_changed => {
                    if changed.is_err() {
                        return "the client dropped the session".into();
                    }
                }
                _ = tokio::time::sleep_until(until) => {
                    if Instant::now() >= self.state.valid_until() {
                        self.state.set_lost("validity ran out on the client's clock".into());
                    }
                }
            }
        }
    }

    /// Whether it has been lost (or its validity ran out).
    pub fn is_lost(&self) -> bool {
        !self.state.is_valid()
    }
}

/// How a keep-alive renews: the command, and what a successful reply looks like.
pub(crate) struct Renewal {
    pub args: Vec<Bytes>,
    pub ok: fn(&Value) -> bool,
    pub ttl: Duration,
}

/// Renews at once when the grant arrived late: the window counts from before the
/// request was sent (the server's lease started later, when it granted), so a grant
/// that took most of its TTL to come (a long WAIT behind a holder, a slow failover)
/// would leave a window that ends before the first renewal, and the lock be reported
/// lost while the server holds it. A renewal that succeeds moves the window to its own
/// send time; one that fails leaves it to the keep-alive. RENEW never revives a lease
/// the server let expire, so this cannot extend a lock that was lost.
pub(crate) async fn renew_if_late(client: &Client, state: &LeaseState, renewal: &Renewal) {
    let lifetime = renewal.ttl.mul_f64(1.0 - client.options().drift);
    if state.remaining() * 3 >= lifetime * 2 {
        return;
    }
    let args: Vec<&[u8]> = renewal.args.iter().map(|a| a.as_ref()).collect();
    let sent = Instant::now();
    if let Ok(value) = client.call(&args, Retry::Safe, Duration::ZERO).await {
        if (renewal.ok)(&value) {
            state.extend(sent + lifetime);
        }
    }
}

/// Renews every third of the TTL, extending the window from each renewal's send time;
/// marks the lease lost when the server refuses (not the holder, no session) or when
/// renewals keep failing until the window closes.
pub(crate) fn spawn_keepalive(client: Client, state: Arc<LeaseState>, renewal: Renewal) -> JoinHandle<()> {
    tokio::spawn(async move {
        let drift = client.options().drift;
        let lifetime = renewal.ttl.mul_f64(1.0 - drift);
        let period = (renewal.ttl / 3).max(Duration::from_millis(10));
        let mut next = Instant::now() + period;
        let args: Vec<&[u8]> = renewal.args.iter().map(|a| a.as_ref()).collect();
        loop {
            let until = state.valid_until();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    if Instant::now() >= state.valid_until() {
                        state.set_lost("validity ran out before a renewal succeeded".into());
                        return;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            let sent = Instant::now();
            let attempt = tokio::time::timeout_at(state.valid_until(), client.call(&args, Retry::Safe, Duration::ZERO));
            match attempt.await {
                Ok(Ok(value)) if (renewal.ok)(&value) => {
                    state.extend(sent + lifetime);
                    next = sent + period;
                }
                Ok(Err(e @ (Error::NotHolder(_) | Error::NoSession(_)))) => {
                    state.set_lost(format!("renewal refused: {e}"));
                    return;
                }
                Ok(Ok(value)) => {
                    state.set_lost(format!("unexpected renewal reply {value:?}"));
                    return;
                }
                // Unavailable or timed out: try again soon while the window lasts.
                Ok(Err(_)) | Err(_) => next = Instant::now() + Duration::from_millis(50),
            }
        }
    })
}
