//! Watches (OBSERVE): change notifications for a key, a key prefix, a lock or an
//! election, each carrying its revision (the log index of the entry that caused it).
//!
//! Every node applies the same log, so every node produces the same events with the
//! same revisions, in the same order within a revision (one revision can carry
//! several: MULTI, a release granting several waiters, a leader's group of concurrent
//! writes); each keeps the most recent `HISTORY_EVENTS_MAX` of them. A client that
//! reconnects (to any node) and observes `FROM` the revision after the last one it saw
//! in full (or `FROM` that revision, skipping as many of its changes as it got) gets
//! every event it missed, in order, then the live ones with no gap or duplicate:
//! replay and registration happen under one lock that apply also takes.
//! A revision older than the node's history is refused with `COMPACTED`: the client
//! re-reads the state and observes from now. History starts afresh when a node starts
//! (at its snapshot) or installs a snapshot.
//!
//! Notifications go through the connection's pub/sub queue (bounded): a client that
//! falls behind is disconnected with the reason, and resumes from its last revision.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use fencelock_core::{Event, KeyChange};
use tokio::sync::mpsc;

use crate::resp::Wire;

/// Events kept for resuming watches, per node.
pub const HISTORY_EVENTS_MAX: usize = 100_000;
/// Watches per connection.
pub const WATCHES_PER_CONNECTION_MAX: usize = 1_000;

/// What a watch looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A key of the keyspace (or every key under a prefix).
    Key,
    /// A lock.
    Lock,
    /// An election.
    Election,
    /// A config-store key (or every one under a prefix).
    Config,
}

/// One change, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Log index of the entry that caused it.
    pub revision: u64,
    /// Key, lock or election.
    pub class: Class,
    /// `set`, `del`, `expired` (keys); `released`, `expired`, `revoked` (locks);
    /// `leader` (elections).
    pub kind: &'static str,
    /// The key or name.
    pub target: Bytes,
    /// Elections: the new leader (candidate, fence, value), or None when nobody leads.
    pub leader: Option<(Bytes, u64, Bytes)>,
}

impl Change {
    /// The change an applied event means to watchers, if any.
    pub fn from_event(revision: u64, event: &Event) -> Option<Change> {
        let (class, kind, target, leader) = match event {
            Event::KeyChanged { key, change } => {
                let kind = match change {
                    KeyChange::Set => "set",
                    KeyChange::Deleted => "del",
                    KeyChange::Expired => "expired",
                };
                (Class::Key, kind, key.clone(), None)
            }
            Event::ConfigChanged { key, deleted, .. } => {
                (Class::Config, if *deleted { "del" } else { "set" }, key.clone(), None)
            }
            Event::Released { name, .. } => (Class::Lock, "released", name.clone(), None),
            Event::Expired { name, .. } => (Class::Lock, "expired", name.clone(), None),
            Event::Revoked { name, .. } => (Class::Lock, "revoked", name.clone(), None),
            Event::LeaderChanged { name, leader } => {
                let leader = leader.as_ref().map(|h| (h.owner.clone(), h.fence, h.metadata.clone()));
                (Class::Election, "leader", name.clone(), leader)
            }
            _ => return None,
        };
        Some(Change { revision, class, kind, target, leader })
    }
}

/// What one watch selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Key, lock or election.
    pub class: Class,
    /// The key or name, or the prefix.
    pub target: Bytes,
    /// Every key starting with `target`.
    pub prefix: bool,
    /// Only these kinds (empty: all).
    pub kinds: Vec<Bytes>,
}

impl Filter {
    fn matches(&self, change: &Change) -> bool {
        let class_ok = self.class == change.class;
        let target_ok =
            if self.prefix { change.target.starts_with(&self.target) } else { change.target == self.target };
        let kind_ok =
            self.kinds.is_empty() || self.kinds.iter().any(|k| k.eq_ignore_ascii_case(change.kind.as_bytes()));
        class_ok && target_ok && kind_ok
    }
}

struct Watcher {
    conn: u64,
    filter: Filter,
    once: bool,
    tx: mpsc::Sender<Wire>,
}

struct Inner {
    history: VecDeque<Change>,
    /// History is complete from this revision on.
    start: u64,
    /// The last revision applied.
    current: u64,
    watchers: BTreeMap<u64, Watcher>,
    next_id: u64,
}

/// This node's watches and history.
pub struct Watches {
    inner: Mutex<Inner>,
}

/// Why OBSERVE was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// FROM names a revision before the retained history.
    #[error("COMPACTED revision {asked} is older than this node's history, which starts at {start}: read the current state, then observe without FROM")]
    Compacted {
        /// The revision asked for.
        asked: u64,
        /// The oldest revision this node can replay from.
        start: u64,
    },
    /// Replaying would overflow the connection's queue.
    #[error("LIMIT watch-replay limit exceeded (max {0} events): observe from a later revision")]
    ReplayTooLong(usize),
}

impl Watches {
    /// An empty registry whose history starts after `applied`.
    pub fn new(applied: u64) -> Watches {
        let inner = Inner {
            history: VecDeque::new(),
            start: applied + 1,
            current: applied,
            watchers: BTreeMap::new(),
            next_id: 1,
        };
        Watches { inner: Mutex::new(inner) }
    }

    /// A snapshot replaced the state: history restarts after it.
    pub fn reset(&self, applied: u64) {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.history.clear();
        inner.start = applied + 1;
        inner.current = applied;
    }

    /// Records an applied entry's events and notifies matching watchers. Returns the
    /// connections whose queue overflowed (to be disconnected).
    pub fn record(&self, revision: u64, events: &[Event]) -> Vec<u64> {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.current = inner.current.max(revision);
        let mut overflowed = Vec::new();
        for change in events.iter().filter_map(|e| Change::from_event(revision, e)) {
            let mut done = Vec::new();
            for (id, w) in &inner.watchers {
                // A connection that overflowed gets nothing more, not even a later
                // change of this revision: a client resumes from a revision by counting
                // the changes of it that it got, so what it got must be a prefix.
                if !w.filter.matches(&change) || overflowed.contains(&w.conn) {
                    continue;
                }
                match w.tx.try_send(render(*id, &change)) {
                    Ok(()) if w.once => done.push(*id),
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => overflowed.push(w.conn),
                    Err(mpsc::error::TrySendError::Closed(_)) => done.push(*id),
                }
            }
            for id in done {
                inner.watchers.remove(&id);
            }
            // Kept by value: an `Arc` each was one more allocation for every event
            // applied, watched or not.
            inner.history.push_back(change);
            if inner.history.len() > HISTORY_EVENTS_MAX {
                // Drop the oldest revision whole: a partial revision cannot be replayed.
                let oldest = inner.history.front().map_or(0, |c| c.revision);
                while inner.history.front().is_some_and(|c| c.revision <= oldest) {
                    inner.history.pop_front();
                }
                inner.start = oldest + 1;
            }
        }
        if !overflowed.is_empty() {
            inner.watchers.retain(|_, w| !overflowed.contains(&w.conn));
        }
        overflowed
    }

    /// Registers a watch for `conn`; with `from`, first replays retained changes from
    /// that revision on. Returns the watch id and the current revision.
    pub fn register(
        &self,
        conn: u64,
        filter: Filter,
        from: Option<u64>,
        once: bool,
        tx: mpsc::Sender<Wire>,
    ) -> Result<(u64, u64), WatchError> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let id = inner.next_id;
        let mut replayed = 0;
        if let Some(from) = from {
            if from < inner.start {
                return Err(WatchError::Compacted { asked: from, start: inner.start });
            }
            let matching: Vec<&Change> = inner
                .history
                .iter()
                .filter(|c| c.revision >= from && filter.matches(c))
                .take(if once { 1 } else { usize::MAX })
                .collect();
            if matching.len() > tx.capacity() {
                return Err(WatchError::ReplayTooLong(tx.capacity()));
            }
            for change in &matching {
                // Capacity was checked under the lock that record() also takes.
                let _ = tx.try_send(render(id, change));
            }
            replayed = matching.len();
        }
        inner.next_id += 1;
        let current = inner.current;
        if !(once && replayed > 0) {
            inner.watchers.insert(id, Watcher { conn, filter, once, tx });
        }
        Ok((id, current))
    }

    /// Cancels a watch of `conn`; false if it has no such watch.
    pub fn cancel(&self, conn: u64, id: u64) -> bool {
        let mut inner = self.inner.lock().expect("not poisoned");
        match inner.watchers.get(&id) {
            Some(w) if w.conn == conn => inner.watchers.remove(&id).is_some(),
            _ => false,
        }
    }

    /// Watches `conn` has now.
    pub fn count(&self, conn: u64) -> usize {
        self.inner.lock().expect("not poisoned").watchers.values().filter(|w| w.conn == conn).count()
    }

    /// Forgets a closed connection's watches.
    pub fn drop_conn(&self, conn: u64) {
        self.inner.lock().expect("not poisoned").watchers.retain(|_, w| w.conn != conn);
    }

    /// The last revision applied and the oldest one retained.
    pub fn revisions(&self) -> (u64, u64) {
        let inner = self.inner.lock().expect("not poisoned");
        (inner.current, inner.start)
    }
}

/// `["observe", id, revision, kind, target]`, plus `candidate, fence, value` for an
/// election's new leader (nil, nil, nil when nobody leads).
fn render(id: u64, change: &Change) -> Wire {
    let mut items = vec![
        Wire::text("observe"),
        Wire::Int(id as i64),
        Wire::Int(change.revision as i64),
        Wire::text(change.kind),
        Wire::Bulk(change.target.clone()),
    ];
    if change.class == Class::Election {
        match &change.leader {
            Some((candidate, fence, value)) => {
                items.extend([Wire::Bulk(candidate.clone()), Wire::Int(*fence as i64), Wire::Bulk(value.clone())])
            }
            None => items.extend([Wire::Null, Wire::Null, Wire::Null]),
        }
    }
    Wire::Push(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str) -> Event {
        Event::KeyChanged { key: Bytes::from(key.to_string()), change: KeyChange::Set }
    }

    fn key_filter(target: &str, prefix: bool) -> Filter {
        Filter { class: Class::Key, target: Bytes::from(target.to_string()), prefix, kinds: vec![] }
    }

    fn revision_of(wire: &Wire) -> i64 {
        match wire {
            Wire::Push(items) => match items[2] {
                Wire::Int(r) => r,
                _ => panic!("{wire:?}"),
            },
            _ => panic!("{wire:?}"),
        }
    }

    #[test]
    fn a_resumed_watch_replays_what_it_missed_then_goes_live_without_gaps() {
        let w = Watches::new(0);
        w.record(1, &[set("a/1")]);
        w.record(2, &[set("b/1")]);
        w.record(3, &[set("a/2")]);
        let (tx, mut rx) = mpsc::channel(16);
        let (_, current) = w.register(7, key_filter("a/", true), Some(2), false, tx).unwrap();
        assert_eq!(current, 3);
        w.record(4, &[set("a/3")]);
        let got: Vec<i64> = std::iter::from_fn(|| rx.try_recv().ok()).map(|m| revision_of(&m)).collect();
        assert_eq!(got, [3, 4]);
    }

    #[test]
    fn an_overflowing_watcher_gets_a_prefix_of_a_revision_and_nothing_after() {
        let w = Watches::new(0);
        let (tx, mut rx) = mpsc::channel(1);
        w.register(3, key_filter("k/", true), None, false, tx).unwrap();
        // Three changes in one revision, a queue of one: the first goes, the second
        // overflows, and the third must not follow it (a client resuming inside the
        // revision skips as many changes as it got, so what it got must be the first).
        let (tx_drain, mut drained) = mpsc::channel(8);
        w.register(4, key_filter("k/", true), None, false, tx_drain).unwrap();
        assert_eq!(w.record(5, &[set("k/1"), set("k/2"), set("k/3")]), vec![3]);
        let got: Vec<Wire> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(std::iter::from_fn(|| drained.try_recv().ok()).count(), 3, "the other connection got all");
    }

    #[test]
    fn compacted_history_overflow_once_and_cancel() {
        let w = Watches::new(10);
        let (tx, _rx) = mpsc::channel(2);
        assert_eq!(
            w.register(1, key_filter("k", false), Some(5), false, tx.clone()).unwrap_err(),
            WatchError::Compacted { asked: 5, start: 11 }
        );
        for r in 11..15 {
            w.record(r, &[set("k")]);
        }
        assert_eq!(
            w.register(1, key_filter("k", false), Some(11), false, tx.clone()).unwrap_err(),
            WatchError::ReplayTooLong(2)
        );
        // ONCE: the first matching change, then the watch is gone.
        let (id, _) = w.register(1, key_filter("k", false), None, true, tx.clone()).unwrap();
        w.record(15, &[set("k")]);
        assert_eq!(w.count(1), 0);
        assert!(!w.cancel(1, id));
        // A queue that fills up disconnects its connection's watches.
        let (small, _keep) = mpsc::channel(1);
        w.register(2, key_filter("k", false), None, false, small).unwrap();
        assert!(w.record(16, &[set("k")]).is_empty());
        assert_eq!(w.record(17, &[set("k")]), vec![2]);
        assert_eq!(w.count(2), 0);
    }

    #[test]
    fn history_is_bounded_and_drops_whole_revisions() {
        let w = Watches::new(0);
        for r in 1..=(HISTORY_EVENTS_MAX as u64 + 10) {
            w.record(r, &[set("x")]);
        }
        let (current, start) = w.revisions();
        assert_eq!(current, HISTORY_EVENTS_MAX as u64 + 10);
        assert_eq!(start, 11);
    }
}
