//! Counters and FIFO / priority queues with blocking dequeue.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{Event, PutBackTo, Reply, SessionId, Wait};
use crate::error::{over, Error, Result};
use crate::limits::Limit;
use crate::name::Name;
use crate::state::{slot, Dirty, Owned, QueueSlot, StateMachine, NEVER};
use crate::waiter::{Waiter, WaiterKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueItem {
    pub value: Bytes,
    pub session: SessionId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    /// Ordered by (negated priority, sequence): the first item is dequeued first.
    pub items: BTreeMap<(i64, u64), QueueItem>,
    pub next_seq: u64,
    /// Blocked dequeuers, served in their own priority/FIFO order.
    pub poppers: BTreeSet<QueueSlot>,
}

impl StateMachine {
    pub(crate) fn counter_add(&mut self, name: &[u8], delta: i64) -> Result<Reply> {
        self.check_key(name)?;
        let current = self.st.counters.get(name).copied();
        let value = current.unwrap_or(0).checked_add(delta).ok_or(Error::Overflow)?;
        if current.is_none() && value != 0 {
            self.check_entries(1)?;
        }
        if value == 0 {
            // A counter at zero is the same as no counter; keep the table small.
            self.st.counters.remove(name);
        } else {
            self.st.counters.insert(Name::from(name), value);
        }
        Ok(Reply::Int(value))
    }

    pub(crate) fn queue_push(
        &mut self,
        name: &[u8],
        values: Vec<Bytes>,
        priority: i32,
        session: Option<SessionId>,
    ) -> Result<Reply> {
        self.check_key(name)?;
        if values.is_empty() {
            return Err(Error::invalid("push needs at least one item"));
        }
        for value in &values {
            self.check_value(value)?;
        }
        let len = self.st.queues.get(name).map_or(0, |q| q.items.len());
        if len + values.len() > self.limits.queue_length_max {
            return Err(over(Limit::QueueLength, self.limits.queue_length_max as u64));
        }
        if !self.st.queues.contains_key(name) {
            self.check_entries(1)?;
        }
        let session = self.session_check(session, values.len())?;
        let name = Name::from(name);
        for value in values {
            let queue = self.st.queues.entry(name.clone()).or_default();
            let item_slot = (-i64::from(priority), queue.next_seq);
            queue.next_seq += 1;
            self.queue_store(&name, item_slot, QueueItem { value, session });
        }
        let len = self.st.queues[&name].items.len();
        self.mark(Dirty::Queue(name));
        Ok(Reply::Int(len as i64))
    }

    /// The first item: its value, priority, session and slot sequence.
    fn queue_take_first(&mut self, name: &Name) -> Option<(Bytes, i32, SessionId, u64)> {
        let queue = self.st.queues.get_mut(name)?;
        let (item_slot, item) = queue.items.pop_first()?;
        if item.session != 0 {
            self.disown(item.session, &Owned::Item { name: name.clone(), slot: item_slot });
        }
        // The slot holds the negated priority (`queue_push`), which fits an i32.
        let priority = i32::try_from(-item_slot.0).expect("a priority pushed as an i32");
        Some((item.value, priority, item.session, item_slot.1))
    }

    /// `Command::PutBack`: 1 if the element is back, 0 if it was dropped.
    pub(crate) fn put_back(&mut self, key: &[u8], value: Bytes, to: PutBackTo) -> Result<Reply> {
        self.check_key(key)?;
        self.check_value(&value)?;
        let back = match to {
            PutBackTo::List { left } => self.list_put_back(key, value, left),
            PutBackTo::Queue { priority, seq, session } => self.queue_put_back(key, value, priority, seq, session),
        };
        Ok(Reply::Int(i64::from(back)))
    }

    /// Returns an item a blocking pop took for a client that had gone, with its
    /// priority and session, past the length, entry and per-session limits it was
    /// counted against before: into the slot it left while that is free and below the
    /// queue's next sequence (a sequence is never handed out twice, so nothing pushed
    /// later can collide with it), else behind the items of its priority. False, and
    /// dropped as it would have been with its session, if that session has ended.
    fn queue_put_back(&mut self, name: &[u8], value: Bytes, priority: i32, seq: u64, session: SessionId) -> bool {
        if !self.owner_live(session) {
            return false;
        }
        let name = Name::from(name);
        let queue = self.st.queues.entry(name.clone()).or_default();
        let mut item_slot = (-i64::from(priority), seq);
        if seq >= queue.next_seq || queue.items.contains_key(&item_slot) {
            item_slot.1 = queue.next_seq;
            queue.next_seq += 1;
        }
        self.queue_store(&name, item_slot, QueueItem { value, session });
        self.mark(Dirty::Queue(name));
        true
    }

    /// Puts `item` in `item_slot` of the queue (which exists), owned by its session if
    /// it has one.
    fn queue_store(&mut self, name: &Name, item_slot: (i64, u64), item: QueueItem) {
        let session = item.session;
        let queue = self.st.queues.get_mut(name).expect("queue exists");
        assert!(queue.items.insert(item_slot, item).is_none(), "a queue slot holds one item");
        if session != 0 {
            self.own(session, Owned::Item { name: name.clone(), slot: item_slot });
        }
    }

    pub(crate) fn queue_pop(&mut self, name: &[u8], wait: Wait) -> Result<Reply> {
        self.check_key(name)?;
        let name = Name::from(name);
        let poppers = self.st.queues.get(&name).map_or(0, |q| q.poppers.len());
        if poppers == 0 {
            if let Some((value, ..)) = self.queue_take_first(&name) {
                self.queue_gc(&name);
                return Ok(Reply::Bulk(value));
            }
        }
        let (wait_ms, priority) = match wait {
            Wait::Queue { wait_ms, priority } if wait_ms != Some(0) => (wait_ms, priority),
            _ => return Ok(Reply::Nil),
        };
        self.check_wait(wait_ms)?;
        if poppers >= self.limits.waiters_per_lock_max {
            return Err(over(Limit::WaitersPerLock, self.limits.waiters_per_lock_max as u64));
        }
        if !self.st.queues.contains_key(&name) {
            self.check_entries(1)?;
        }
        let queue_slot = slot(priority, self.index);
        self.st.queues.entry(name.clone()).or_default().poppers.insert(queue_slot);
        self.mark(Dirty::Queue(name.clone()));
        let deadline_ms = wait_ms.map_or(NEVER, |ms| self.deadline_after(ms));
        let id = self.waiter_insert(Waiter {
            deadline_ms,
            session: 0,
            kind: WaiterKind::QueuePop { name, slot: queue_slot },
        });
        Ok(Reply::Queued(id))
    }

    pub(crate) fn queue_waiter_remove(&mut self, name: &Name, queue_slot: QueueSlot) {
        let queue = self.st.queues.get_mut(name).expect("queue exists");
        assert!(queue.poppers.remove(&queue_slot));
        self.queue_gc(name);
    }

    /// Removes an item because its session ended.
    pub(crate) fn queue_item_remove(&mut self, name: &Name, item_slot: (i64, u64)) {
        let queue = self.st.queues.get_mut(name).expect("queue exists");
        assert!(queue.items.remove(&item_slot).is_some());
        self.queue_gc(name);
    }

    fn queue_gc(&mut self, name: &Name) {
        if self.st.queues.get(name).is_some_and(|q| q.items.is_empty() && q.poppers.is_empty()) {
            self.st.queues.remove(name);
        }
    }

    /// Hands items to blocked dequeuers in their order.
    pub(crate) fn queue_pump(&mut self, name: &Name) {
        loop {
            let Some(queue) = self.st.queues.get(name) else { return };
            let (Some(&(_, id)), false) = (queue.poppers.first(), queue.items.is_empty()) else { break };
            let waiter = self.waiter_take(id);
            let WaiterKind::QueuePop { slot: queue_slot, .. } = waiter.kind else { panic!("queue pop waiter") };
            self.st.queues.get_mut(name).expect("exists").poppers.remove(&queue_slot);
            let (value, priority, session, seq) = self.queue_take_first(name).expect("non-empty");
            self.emit(Event::Popped { waiter: id, key: name.to_bytes(), value, priority, session, seq });
        }
        self.queue_gc(name);
    }
}
