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
//! observes from now, then re-reads the state. History starts afresh when a node starts
//! (at its snapshot) or installs a snapshot; installing one skips the revisions it
//! covers, so the node's live watches are closed then, with the reason (their resume
//! gets `COMPACTED`).
//!
//! Notifications go through the connection's pub/sub queue (bounded by count and
//! bytes): a client that falls behind is disconnected with the reason, and resumes
//! from its last revision.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use fencelock_core::{Event, Holding, KeyChange};

use crate::pubsub::{Outbox, PushError};
use crate::resp::Wire;

/// Events kept for resuming watches, per node.
pub const HISTORY_EVENTS_MAX: usize = 100_000;
/// Bytes of events kept for resuming watches, per node (`Change::bytes`): an election's
/// event carries its leader's value (up to 64 KiB), so a count alone would let the
/// history hold gigabytes.
pub const HISTORY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// What an event costs the history beyond its payloads (the `Change` itself).
const CHANGE_OVERHEAD_BYTES: usize = 64;
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
    /// One of `KINDS`: `set`, `del`, `expired` (keys); `released`, `expired`,
    /// `revoked` (locks); `leader` (elections).
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
            // Semaphores and elections report their holders' ends too; a lock watch
            // sees only locks' (an election's watchers get its `leader` change).
            Event::Released { name, of: Holding::Lock, .. } => (Class::Lock, "released", name.clone(), None),
            Event::Expired { name, of: Holding::Lock, .. } => (Class::Lock, "expired", name.clone(), None),
            Event::Revoked { name, of: Holding::Lock, .. } => (Class::Lock, "revoked", name.clone(), None),
            Event::LeaderChanged { name, leader } => {
                let leader = leader.as_ref().map(|h| (h.owner.clone(), h.fence, h.metadata.clone()));
                (Class::Election, "leader", name.clone(), leader)
            }
            _ => return None,
        };
        Some(Change { revision, class, kind, target, leader })
    }

    /// What keeping it in the history costs.
    fn bytes(&self) -> usize {
        let leader = self.leader.as_ref().map_or(0, |(candidate, _, value)| candidate.len() + value.len());
        CHANGE_OVERHEAD_BYTES + self.target.len() + leader
    }
}

/// Every kind of change, in the order of their bits in `Filter::kinds`.
pub const KINDS: [&str; 6] = ["set", "del", "expired", "released", "revoked", "leader"];

/// The bit of `kind` (one of `KINDS`, any case) in `Filter::kinds`.
pub fn kind_bit(kind: &[u8]) -> Option<u8> {
    KINDS.iter().position(|k| k.as_bytes().eq_ignore_ascii_case(kind)).map(|i| 1 << i)
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
    /// Only these kinds, as `kind_bit`s (0: all).
    pub kinds: u8,
}

impl Filter {
    fn matches(&self, change: &Change) -> bool {
        // Cheapest test first: most changes are of another class or target.
        self.class == change.class
            && if self.prefix { change.target.starts_with(&self.target) } else { change.target == self.target }
            && (self.kinds == 0 || kind_bit(change.kind.as_bytes()).is_some_and(|bit| self.kinds & bit != 0))
    }
}

struct Watcher {
    filter: Filter,
    once: bool,
    tx: Outbox,
}

struct Inner {
    history: VecDeque<Change>,
    /// `Change::bytes` of the history.
    history_bytes: usize,
    /// History is complete from this revision on.
    start: u64,
    /// The last revision applied.
    current: u64,
    /// By connection, then watch id: a connection's watches are one range.
    watchers: BTreeMap<(u64, u64), Watcher>,
    next_id: u64,
}

impl Inner {
    /// Removes every watch of `conn`.
    fn remove_conn(&mut self, conn: u64) {
        let ids: Vec<(u64, u64)> = self.watchers.range((conn, 0)..=(conn, u64::MAX)).map(|(k, _)| *k).collect();
        for key in ids {
            self.watchers.remove(&key);
        }
    }
}

/// This node's watches and history.
pub struct Watches {
    inner: Mutex<Inner>,
}

/// Why OBSERVE was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// FROM names a revision before the retained history.
    #[error("COMPACTED revision {asked} is older than this node's history, which starts at {start}: observe without FROM, then read the current state")]
    Compacted {
        /// The revision asked for.
        asked: u64,
        /// The oldest revision this node can replay from.
        start: u64,
    },
    /// Replaying would overflow the connection's queue.
    #[error("LIMIT watch-replay limit exceeded ({wanted} events to replay, the connection's queue has room for {room}): observe from a later revision")]
    ReplayTooLong {
        /// Changes that match from the revision asked for.
        wanted: usize,
        /// Pushes the queue could take.
        room: usize,
    },
    /// The connection's queue overflowed (now, or before): it is being closed.
    #[error("ERR this connection's notification queue overflowed; closing")]
    Overflowed,
}

impl Watches {
    /// An empty registry whose history starts after `applied`.
    pub fn new(applied: u64) -> Watches {
        let inner = Inner {
            history: VecDeque::new(),
            history_bytes: 0,
            start: applied + 1,
            current: applied,
            watchers: BTreeMap::new(),
            next_id: 1,
        };
        Watches { inner: Mutex::new(inner) }
    }

    /// A snapshot replaced the state: history restarts after it. Returns the
    /// connections that were watching, whose watches are gone: the changes the
    /// snapshot covered were never seen here, so each must be closed and resume
    /// (`COMPACTED` tells it to re-read).
    pub fn reset(&self, applied: u64) -> Vec<u64> {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.history.clear();
        inner.history_bytes = 0;
        inner.start = applied + 1;
        inner.current = applied;
        let mut conns: Vec<u64> = inner.watchers.keys().map(|(conn, _)| *conn).collect();
        conns.dedup();
        // Closed under this lock: a watch registered before the caller detaches the
        // connection would otherwise keep its queue open, with this reset unannounced.
        for watcher in inner.watchers.values() {
            watcher.tx.close();
        }
        inner.watchers.clear();
        conns
    }

    /// Records an applied entry's events and notifies matching watchers. Returns the
    /// connections whose queue overflowed (to be disconnected).
    pub fn record(&self, revision: u64, events: &[Event]) -> Vec<u64> {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.current = inner.current.max(revision);
        let mut overflowed = Vec::new();
        for change in events.iter().filter_map(|e| Change::from_event(revision, e)) {
            let mut done = Vec::new();
            for (&(conn, id), w) in &inner.watchers {
                // A connection that overflowed gets nothing more, not even a later
                // change of this revision: a client resumes from a revision by counting
                // the changes of it that it got, so what it got must be a prefix. (Its
                // queue refuses everything after the first refusal, too.)
                if !w.filter.matches(&change) || overflowed.contains(&conn) {
                    continue;
                }
                match w.tx.try_push(render(id, &change)) {
                    Ok(()) if w.once => done.push((conn, id)),
                    Ok(()) => {}
                    Err(PushError::Overflow) => overflowed.push(conn),
                    Err(PushError::Closed) => done.push((conn, id)),
                }
            }
            for key in done {
                inner.watchers.remove(&key);
            }
            // Kept by value: an `Arc` each was one more allocation for every event
            // applied, watched or not.
            inner.history_bytes += change.bytes();
            inner.history.push_back(change);
            while inner.history.len() > HISTORY_EVENTS_MAX || inner.history_bytes > HISTORY_BYTES_MAX {
                // Drop the oldest revision whole: a partial revision cannot be replayed.
                let oldest = inner.history.front().map_or(0, |c| c.revision);
                while inner.history.front().is_some_and(|c| c.revision <= oldest) {
                    let dropped = inner.history.pop_front().expect("front exists");
                    inner.history_bytes -= dropped.bytes();
                }
                inner.start = oldest + 1;
            }
        }
        for &conn in &overflowed {
            inner.remove_conn(conn);
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
        tx: Outbox,
    ) -> Result<(u64, u64), WatchError> {
        let mut inner = self.inner.lock().expect("not poisoned");
        // Checked under the lock record() takes: a queue that overflowed there has no
        // watches left, and must not get new ones before the connection is closed.
        if tx.overflowed() {
            return Err(WatchError::Overflowed);
        }
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
            if matching.len() > tx.room() {
                return Err(WatchError::ReplayTooLong { wanted: matching.len(), room: tx.room() });
            }
            for change in &matching {
                // Room was checked under the lock record() takes, but pub/sub delivery
                // fills the same queue without it (and bytes can run out first): a
                // replay cut short would be a silent gap, so the connection is closed.
                if tx.try_push(render(id, change)).is_err() {
                    return Err(WatchError::Overflowed);
                }
            }
            replayed = matching.len();
        }
        inner.next_id += 1;
        let current = inner.current;
        if !(once && replayed > 0) {
            inner.watchers.insert((conn, id), Watcher { filter, once, tx });
        }
        Ok((id, current))
    }

    /// Cancels a watch of `conn`; false if it has no such watch.
    pub fn cancel(&self, conn: u64, id: u64) -> bool {
        self.inner.lock().expect("not poisoned").watchers.remove(&(conn, id)).is_some()
    }

    /// Watches `conn` has now.
    pub fn count(&self, conn: u64) -> usize {
        self.inner.lock().expect("not poisoned").watchers.range((conn, 0)..=(conn, u64::MAX)).count()
    }

    /// Forgets a closed connection's watches.
    pub fn drop_conn(&self, conn: u64) {
        self.inner.lock().expect("not poisoned").remove_conn(conn);
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
    use crate::pubsub::{queue_with, Inbox};

    fn set(key: &str) -> Event {
        Event::KeyChanged { key: Bytes::from(key.to_string()), change: KeyChange::Set }
    }

    fn key_filter(target: &str, prefix: bool) -> Filter {
        Filter { class: Class::Key, target: Bytes::from(target.to_string()), prefix, kinds: 0 }
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

    fn drain(rx: &mut Inbox) -> Vec<Wire> {
        rx.take_queued()
    }

    #[test]
    fn a_resumed_watch_replays_what_it_missed_then_goes_live_without_gaps() {
        let w = Watches::new(0);
        w.record(1, &[set("a/1")]);
        w.record(2, &[set("b/1")]);
        w.record(3, &[set("a/2")]);
        let (tx, mut rx) = queue_with(16);
        let (_, current) = w.register(7, key_filter("a/", true), Some(2), false, tx).unwrap();
        assert_eq!(current, 3);
        w.record(4, &[set("a/3")]);
        let got: Vec<i64> = drain(&mut rx).iter().map(revision_of).collect();
        assert_eq!(got, [3, 4]);
    }

    #[test]
    fn an_overflowing_watcher_gets_a_prefix_of_a_revision_and_nothing_after() {
        let w = Watches::new(0);
        let (tx, mut rx) = queue_with(1);
        w.register(3, key_filter("k/", true), None, false, tx.clone()).unwrap();
        // Three changes in one revision, a queue of one: the first goes, the second
        // overflows, and the third must not follow it (a client resuming inside the
        // revision skips as many changes as it got, so what it got must be the first).
        let (tx_drain, mut drained) = queue_with(8);
        w.register(4, key_filter("k/", true), None, false, tx_drain).unwrap();
        assert_eq!(w.record(5, &[set("k/1"), set("k/2"), set("k/3")]), vec![3]);
        let got = drain(&mut rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(drain(&mut drained).len(), 3, "the other connection got all");
        // Its queue has room again, but it overflowed: it takes no new watch (the
        // connection is being closed) and no more pushes.
        assert_eq!(w.register(3, key_filter("k/", true), None, false, tx).unwrap_err(), WatchError::Overflowed);
        assert_eq!(w.count(3), 0);
    }

    #[test]
    fn compacted_history_overflow_once_and_cancel() {
        let w = Watches::new(10);
        let (tx, _rx) = queue_with(2);
        assert_eq!(
            w.register(1, key_filter("k", false), Some(5), false, tx.clone()).unwrap_err(),
            WatchError::Compacted { asked: 5, start: 11 }
        );
        for r in 11..15 {
            w.record(r, &[set("k")]);
        }
        assert_eq!(
            w.register(1, key_filter("k", false), Some(11), false, tx.clone()).unwrap_err(),
            WatchError::ReplayTooLong { wanted: 4, room: 2 }
        );
        // ONCE: the first matching change, then the watch is gone.
        let (id, _) = w.register(1, key_filter("k", false), None, true, tx.clone()).unwrap();
        w.record(15, &[set("k")]);
        assert_eq!(w.count(1), 0);
        assert!(!w.cancel(1, id));
        // Another connection cannot cancel a watch it does not own.
        let (id, _) = w.register(1, key_filter("other", false), None, false, tx.clone()).unwrap();
        assert!(!w.cancel(2, id));
        assert!(w.cancel(1, id));
        // A queue that fills up disconnects its connection's watches.
        let (small, _keep) = queue_with(1);
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

    #[test]
    fn history_is_bounded_by_bytes_too() {
        // Elections' events carry the leader's value: 1,100 of 64 KiB are past the
        // byte bound long before the count bound.
        let w = Watches::new(0);
        let value = Bytes::from(vec![b'v'; 64 * 1024]);
        let leader = |fence| fencelock_core::HolderInfo {
            owner: Bytes::from_static(b"candidate"),
            fence,
            holds: 1,
            ttl_ms: Some(30_000),
            session: None,
            metadata: value.clone(),
        };
        let events = 1_100u64;
        for r in 1..=events {
            w.record(r, &[Event::LeaderChanged { name: Bytes::from_static(b"e"), leader: Some(leader(r)) }]);
        }
        let (current, start) = w.revisions();
        assert_eq!(current, events);
        let kept = (events - start + 1) as usize;
        assert!(kept * (64 * 1024) <= HISTORY_BYTES_MAX, "kept {kept} events of 64 KiB");
        assert!(kept >= HISTORY_BYTES_MAX / (64 * 1024 + 128), "kept only {kept}");
    }

    #[test]
    fn a_snapshot_install_closes_the_live_watches_and_restarts_history() {
        let w = Watches::new(0);
        let (a, _ra) = queue_with(8);
        let (b, _rb) = queue_with(8);
        w.register(1, key_filter("k", false), None, false, a.clone()).unwrap();
        w.register(1, key_filter("j", false), None, false, a).unwrap();
        w.register(2, key_filter("k", false), None, false, b).unwrap();
        w.record(3, &[set("k")]);
        // Revisions 4..=100 are in the snapshot: these watches never saw them.
        assert_eq!(w.reset(100), vec![1, 2]);
        assert_eq!((w.count(1), w.count(2)), (0, 0));
        assert_eq!(w.revisions(), (100, 101));
        let (tx, _rx) = queue_with(8);
        assert_eq!(
            w.register(3, key_filter("k", false), Some(4), false, tx).unwrap_err(),
            WatchError::Compacted { asked: 4, start: 101 }
        );
    }

    #[test]
    fn kinds_filter_by_bit_and_unknown_kinds_have_none() {
        assert_eq!(kind_bit(b"SET"), Some(1));
        assert_eq!(kind_bit(b"leader"), Some(32));
        assert_eq!(kind_bit(b"sets"), None);
        let w = Watches::new(0);
        let (tx, mut rx) = queue_with(8);
        let mut filter = key_filter("k", false);
        filter.kinds = kind_bit(b"del").unwrap();
        w.register(1, filter, None, false, tx).unwrap();
        w.record(1, &[set("k")]);
        w.record(2, &[Event::KeyChanged { key: Bytes::from_static(b"k"), change: KeyChange::Deleted }]);
        let got: Vec<i64> = drain(&mut rx).iter().map(revision_of).collect();
        assert_eq!(got, [2]);
    }
}
