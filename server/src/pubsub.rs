//! Pub/sub delivery to this node's subscribers.
//!
//! PUBLISH goes through the log (so scripts can publish, and in a cluster every node
//! delivers to its own subscribers); applying it hands the message to this hub. Each
//! subscribed connection has a bounded queue: a subscriber that falls
//! `SUBSCRIBER_QUEUE_MAX` messages or `SUBSCRIBER_QUEUE_BYTES_MAX` behind is dropped
//! (its connection is closed with a reason), as Redis's pubsub output-buffer limit
//! does, so a slow reader cannot grow the server's memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::resp::Wire;

/// Messages queued per subscribed connection before it is dropped.
pub const SUBSCRIBER_QUEUE_MAX: usize = 4_096;

/// Bytes of pushes queued per connection before it is dropped (Redis's pubsub
/// output-buffer hard limit): 4,096 messages of up to 1 MiB would be 4 GiB, and 4,096
/// election events carrying a leader's 64 KiB value 256 MiB.
pub const SUBSCRIBER_QUEUE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Channels and patterns one connection may subscribe to. Every PUBLISH is matched
/// against every pattern while it applies, so their number is bounded (Redisson, the
/// heaviest user, spreads a few channels over each of several connections).
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 10_000;

/// The bytes a push counts against `SUBSCRIBER_QUEUE_BYTES_MAX`: its payloads (the
/// channel and message of a pub/sub message, the target and leader of a watch event).
pub fn push_bytes(push: &Wire) -> usize {
    let Wire::Push(items) = push else { return 0 };
    items.iter().map(|i| if let Wire::Bulk(b) = i { b.len() } else { 0 }).sum()
}

/// What the producers and the consumer of one connection's queue share.
#[derive(Default)]
struct QueueState {
    /// `push_bytes` of the pushes in the queue.
    bytes: AtomicUsize,
    /// A producer found the queue full: nothing more may be queued or registered on it,
    /// and the connection closes once its senders are gone.
    overflowed: AtomicBool,
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is full (by count or bytes), or overflowed before.
    Overflow,
    /// The connection is gone.
    Closed,
}

/// The sending side of a connection's push queue (pub/sub messages and watch events),
/// bounded by count and by bytes. Producers (apply's pub/sub delivery and watches)
/// hold clones; the byte count is shared with the connection, so taking a message off
/// takes no lock.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Wire>,
    state: Arc<QueueState>,
}

impl Outbox {
    /// Queues `push`, or says why not. A queue that is full once stays refused, so a
    /// client never gets a later push after one it missed.
    pub fn try_push(&self, push: Wire) -> Result<(), PushError> {
        if self.state.overflowed.load(Ordering::Acquire) {
            return Err(PushError::Overflow);
        }
        let bytes = push_bytes(&push);
        // Counted before the send: the connection may take the push off (and subtract)
        // before this thread runs again.
        let queued = self.state.bytes.fetch_add(bytes, Ordering::AcqRel);
        if queued + bytes > SUBSCRIBER_QUEUE_BYTES_MAX {
            self.state.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.state.overflowed.store(true, Ordering::Release);
            return Err(PushError::Overflow);
        }
        match self.tx.try_send(push) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.state.bytes.fetch_sub(bytes, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.state.overflowed.store(true, Ordering::Release);
                        Err(PushError::Overflow)
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(PushError::Closed),
                }
            }
        }
    }

    /// Refuses every later push and watch on this queue, as an overflow does (its
    /// connection is being closed for another reason).
    pub fn close(&self) {
        self.state.overflowed.store(true, Ordering::Release);
    }

    /// True once a push was refused for want of room (or the queue was closed).
    pub fn overflowed(&self) -> bool {
        self.state.overflowed.load(Ordering::Acquire)
    }

    /// Pushes the queue has room for now (by count).
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }
}

/// The receiving side of a connection's push queue.
pub struct Inbox {
    rx: mpsc::Receiver<Wire>,
    state: Arc<QueueState>,
}

impl Inbox {
    /// The next push; None once every sender is gone (the connection was dropped for
    /// overflowing, or detached).
    pub async fn recv(&mut self) -> Option<Wire> {
        let push = self.rx.recv().await?;
        self.state.bytes.fetch_sub(push_bytes(&push), Ordering::AcqRel);
        Some(push)
    }

    /// A push already queued, if any.
    pub fn try_recv(&mut self) -> Option<Wire> {
        let push = self.rx.try_recv().ok()?;
        self.state.bytes.fetch_sub(push_bytes(&push), Ordering::AcqRel);
        Some(push)
    }

    /// Every push already queued, in order (what must go out before a reply that ends
    /// a RESP2 connection's push mode).
    pub fn take_queued(&mut self) -> Vec<Wire> {
        std::iter::from_fn(|| self.try_recv()).collect()
    }
}

/// A new connection queue: producers' side and the connection's.
pub fn queue() -> (Outbox, Inbox) {
    queue_with(SUBSCRIBER_QUEUE_MAX)
}

/// A queue of `capacity` pushes (tests use small ones).
pub fn queue_with(capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity);
    let state = Arc::new(QueueState::default());
    (Outbox { tx, state: Arc::clone(&state) }, Inbox { rx, state })
}

#[derive(Default)]
struct Inner {
    channels: HashMap<Bytes, BTreeSet<u64>>,
    patterns: BTreeMap<Bytes, BTreeSet<u64>>,
    senders: HashMap<u64, Outbox>,
    /// Connections dropped for overflowing since `take_overflowed` last ran.
    overflowed: Vec<u64>,
    /// Why a connection was detached, when it was not for overflowing (`detach_for`).
    reasons: HashMap<u64, String>,
}

/// Subscriptions of this node's connections.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    /// Registers a connection's queue (once, at its first subscription or watch).
    pub fn attach(&self, conn: u64) -> Inbox {
        let (outbox, inbox) = queue();
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.senders.insert(conn, outbox);
        inner.reasons.remove(&conn);
        inbox
    }

    /// True if any connection subscribes to anything (notifications are skipped
    /// otherwise).
    pub fn has_subscriptions(&self) -> bool {
        let inner = self.inner.lock().expect("not poisoned");
        !inner.channels.is_empty() || !inner.patterns.is_empty()
    }

    /// The queue's sender of an attached connection (watches deliver through it).
    pub fn sender(&self, conn: u64) -> Option<Outbox> {
        self.inner.lock().expect("not poisoned").senders.get(&conn).cloned()
    }

    /// Subscribes `conn` to a channel (`pattern`: a glob).
    pub fn subscribe(&self, conn: u64, name: Bytes, pattern: bool) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let map =
            if pattern { inner.patterns.entry(name).or_default() } else { inner.channels.entry(name).or_default() };
        map.insert(conn);
    }

    /// Unsubscribes `conn` from one channel or pattern.
    pub fn unsubscribe(&self, conn: u64, name: &Bytes, pattern: bool) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if pattern {
            if let Some(set) = inner.patterns.get_mut(name) {
                set.remove(&conn);
                if set.is_empty() {
                    inner.patterns.remove(name);
                }
            }
        } else if let Some(set) = inner.channels.get_mut(name) {
            set.remove(&conn);
            if set.is_empty() {
                inner.channels.remove(name);
            }
        }
    }

    /// Forgets a connection entirely (it closed, or overflowed).
    pub fn detach(&self, conn: u64) {
        let mut inner = self.inner.lock().expect("not poisoned");
        Self::drop_conn(&mut inner, conn);
        inner.reasons.remove(&conn);
    }

    /// Drops a connection's queue for `reason`, which it reports as it closes (once its
    /// watches' clones of the sender are gone too).
    pub fn detach_for(&self, conn: u64, reason: String) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if inner.senders.contains_key(&conn) {
            Self::drop_conn(&mut inner, conn);
            inner.reasons.insert(conn, reason);
        }
    }

    /// Why the connection's queue was closed, if not for overflowing.
    pub fn take_reason(&self, conn: u64) -> Option<String> {
        self.inner.lock().expect("not poisoned").reasons.remove(&conn)
    }

    fn drop_conn(inner: &mut Inner, conn: u64) {
        inner.senders.remove(&conn);
        inner.channels.retain(|_, set| {
            set.remove(&conn);
            !set.is_empty()
        });
        inner.patterns.retain(|_, set| {
            set.remove(&conn);
            !set.is_empty()
        });
    }

    /// Delivers a message; returns how many subscriptions received it (Redis's count).
    pub fn publish(&self, channel: &Bytes, message: &Bytes) -> usize {
        let mut inner = self.inner.lock().expect("not poisoned");
        let mut deliveries: Vec<(u64, Wire)> = Vec::new();
        if let Some(set) = inner.channels.get(channel) {
            for &conn in set {
                let push = vec![Wire::text("message"), Wire::Bulk(channel.clone()), Wire::Bulk(message.clone())];
                deliveries.push((conn, Wire::Push(push)));
            }
        }
        for (pattern, set) in &inner.patterns {
            if fencelock_core::glob::matches(pattern, channel) {
                for &conn in set {
                    let push = vec![
                        Wire::text("pmessage"),
                        Wire::Bulk(pattern.clone()),
                        Wire::Bulk(channel.clone()),
                        Wire::Bulk(message.clone()),
                    ];
                    deliveries.push((conn, Wire::Push(push)));
                }
            }
        }
        let mut delivered = 0;
        let mut overflowed = Vec::new();
        for (conn, push) in deliveries {
            match inner.senders.get(&conn).map(|outbox| outbox.try_push(push)) {
                Some(Ok(())) => delivered += 1,
                Some(Err(PushError::Overflow)) if !overflowed.contains(&conn) => overflowed.push(conn),
                _ => {}
            }
        }
        for conn in overflowed {
            // Dropping the sender ends the connection's stream of messages: it then
            // closes with the reason, once its watches' clones of the sender are gone
            // too (`take_overflowed`).
            Self::drop_conn(&mut inner, conn);
            inner.overflowed.push(conn);
        }
        delivered
    }

    /// The connections dropped for overflowing since the last call, whose watches must
    /// go too. At most one entry per connection between two calls (a dropped connection
    /// has no sender left to overflow).
    pub fn take_overflowed(&self) -> Vec<u64> {
        std::mem::take(&mut self.inner.lock().expect("not poisoned").overflowed)
    }
}
