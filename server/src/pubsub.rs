//! Pub/sub delivery to this node's subscribers.
//!
//! PUBLISH goes through the log (so scripts can publish, and in a cluster every node
//! delivers to its own subscribers); applying it hands the message to this hub. Each
//! subscribed connection has a bounded queue: a subscriber that falls
//! `SUBSCRIBER_QUEUE_MAX` messages or `SUBSCRIBER_QUEUE_BYTES_MAX` behind is dropped
//! (its connection is closed with a reason), as Redis's pubsub output-buffer limit
//! does, so a slow reader cannot grow the server's memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::resp::Wire;

/// Messages queued per subscribed connection before it is dropped.
pub const SUBSCRIBER_QUEUE_MAX: usize = 4_096;

/// Bytes of messages queued per subscribed connection before it is dropped (Redis's
/// pubsub output-buffer hard limit): 4,096 messages of up to 1 MiB would be 4 GiB.
pub const SUBSCRIBER_QUEUE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Channels and patterns one connection may subscribe to. Every PUBLISH is matched
/// against every pattern while it applies, so their number is bounded (Redisson, the
/// heaviest user, spreads a few channels over each of several connections).
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 10_000;

#[derive(Default)]
struct Inner {
    channels: HashMap<Bytes, BTreeSet<u64>>,
    patterns: BTreeMap<Bytes, BTreeSet<u64>>,
    senders: HashMap<u64, mpsc::Sender<Wire>>,
    /// Connections dropped for overflowing since `take_overflowed` last ran.
    overflowed: Vec<u64>,
    /// Bytes of pub/sub messages queued per connection (`message_bytes`).
    queued_bytes: HashMap<u64, usize>,
}

/// The bytes a pub/sub message counts against `SUBSCRIBER_QUEUE_BYTES_MAX`: its
/// payloads. Other pushes on the same queue (watch events) count 0; the count of
/// messages bounds them.
pub fn message_bytes(push: &Wire) -> usize {
    let Wire::Push(items) = push else { return 0 };
    let is_message =
        matches!(items.first(), Some(Wire::Bulk(kind)) if kind.as_ref() == b"message" || kind.as_ref() == b"pmessage");
    if !is_message {
        return 0;
    }
    items.iter().map(|i| if let Wire::Bulk(b) = i { b.len() } else { 0 }).sum()
}

/// Subscriptions of this node's connections.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    /// Registers a connection's queue (once, at its first subscription).
    pub fn attach(&self, conn: u64) -> mpsc::Receiver<Wire> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_MAX);
        self.inner.lock().expect("not poisoned").senders.insert(conn, tx);
        rx
    }

    /// True if any connection subscribes to anything (notifications are skipped
    /// otherwise).
    pub fn has_subscriptions(&self) -> bool {
        let inner = self.inner.lock().expect("not poisoned");
        !inner.channels.is_empty() || !inner.patterns.is_empty()
    }

    /// The queue's sender of an attached connection (watches deliver through it).
    pub fn sender(&self, conn: u64) -> Option<mpsc::Sender<Wire>> {
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
    }

    /// The connection took a message off its queue.
    pub fn taken(&self, conn: u64, message: &Wire) {
        let bytes = message_bytes(message);
        if bytes > 0 {
            if let Some(queued) = self.inner.lock().expect("not poisoned").queued_bytes.get_mut(&conn) {
                *queued = queued.saturating_sub(bytes);
            }
        }
    }

    fn drop_conn(inner: &mut Inner, conn: u64) {
        inner.senders.remove(&conn);
        inner.queued_bytes.remove(&conn);
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
            let bytes = message_bytes(&push);
            let queued = inner.queued_bytes.get(&conn).copied().unwrap_or(0);
            if queued + bytes > SUBSCRIBER_QUEUE_BYTES_MAX {
                if inner.senders.contains_key(&conn) && !overflowed.contains(&conn) {
                    overflowed.push(conn);
                }
                continue;
            }
            match inner.senders.get(&conn).map(|tx| tx.try_send(push)) {
                Some(Ok(())) => {
                    delivered += 1;
                    *inner.queued_bytes.entry(conn).or_default() += bytes;
                }
                Some(Err(mpsc::error::TrySendError::Full(_))) if !overflowed.contains(&conn) => overflowed.push(conn),
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
