//! Waiters: one table for everything that can block (locks, permits, pops, queue
//! pops, barriers, campaigns), so timeouts, cancellation and session death are
//! handled once.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{Event, LockMode, SessionId, WaitEnd, WaiterId};
use crate::name::{boxed_bytes, Name};
use crate::state::{Dirty, Owned, QueueSlot, StateMachine, Timer};

/// An owner and token (and a trailing payload: lock metadata or an election value)
/// packed in one allocation: one allocation per holder is what keeps a million held
/// locks within the memory budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ident {
    #[serde(with = "boxed_bytes")]
    pub blob: Box<[u8]>,
    pub owner_len: u16,
    pub token_len: u16,
}

impl Ident {
    /// Packs the parts; lengths are checked against the limits before this is called.
    pub fn new(owner: &[u8], token: &[u8], payload: &[u8]) -> Ident {
        let owner_len = u16::try_from(owner.len()).expect("owner length checked");
        let token_len = u16::try_from(token.len()).expect("token length checked");
        let mut blob = Vec::with_capacity(owner.len() + token.len() + payload.len());
        blob.extend_from_slice(owner);
        blob.extend_from_slice(token);
        blob.extend_from_slice(payload);
        Ident { blob: blob.into_boxed_slice(), owner_len, token_len }
    }

    /// Whether the lengths fit the bytes (a damaged snapshot's may not; the accessors
    /// would panic).
    pub fn fits(&self) -> bool {
        usize::from(self.owner_len) + usize::from(self.token_len) <= self.blob.len()
    }

    pub fn owner(&self) -> &[u8] {
        parts(&self.blob, self.owner_len, self.token_len).0
    }

    pub fn token(&self) -> &[u8] {
        parts(&self.blob, self.owner_len, self.token_len).1
    }

    pub fn payload(&self) -> &[u8] {
        parts(&self.blob, self.owner_len, self.token_len).2
    }
}

/// Splits a packed owner ‖ token ‖ payload blob.
pub(crate) fn parts(blob: &[u8], owner_len: u16, token_len: u16) -> (&[u8], &[u8], &[u8]) {
    let owner_end = usize::from(owner_len);
    let token_end = owner_end + usize::from(token_len);
    (&blob[..owner_end], &blob[owner_end..token_end], &blob[token_end..])
}

/// Something waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiter {
    /// Wait bound (`NEVER`: none).
    pub deadline_ms: u64,
    /// Owning session (0: none). A waiter whose session ended is never granted.
    pub session: SessionId,
    pub kind: WaiterKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WaiterKind {
    Lock { names: Vec<Name>, ident: Ident, mode: LockMode, ttl_ms: u64, slot: QueueSlot },
    Pop { keys: Vec<Name>, left: bool },
    Permit { name: Name, ident: Ident, count: u32, ttl_ms: u64, slot: QueueSlot },
    QueuePop { name: Name, slot: QueueSlot },
    BarrierArrive { name: Name, participant: Bytes },
    BarrierLeave { name: Name, participant: Bytes },
    Campaign { name: Name, ident: Ident, ttl_ms: u64, slot: QueueSlot },
}

impl StateMachine {
    /// Records a new waiter named by the current log index; its queue membership is
    /// the caller's to record.
    pub(crate) fn waiter_insert(&mut self, waiter: Waiter) -> WaiterId {
        let id = self.index;
        assert!(id > 0 && !self.st.waiters.contains_key(&id), "one waiter per entry");
        self.schedule(waiter.deadline_ms, Timer::Waiter(id));
        if waiter.session != 0 {
            self.own(waiter.session, Owned::Waiter(id));
        }
        self.st.waiters.insert(id, waiter);
        id
    }

    /// Takes a waiter out of the table, its timer and its session; queue membership
    /// is the caller's to remove.
    pub(crate) fn waiter_take(&mut self, id: WaiterId) -> Waiter {
        let waiter = self.st.waiters.remove(&id).expect("waiter exists");
        self.unschedule(waiter.deadline_ms, Timer::Waiter(id));
        if waiter.session != 0 {
            self.disown(waiter.session, &Owned::Waiter(id));
        }
        waiter
    }

    /// Whether a waiter may still be granted. etcd #11456 (Lock returned after the
    /// waiter's lease had expired) is exactly this check missing: a waiter whose
    /// session has ended, even if not yet swept, is never granted. Checking ends such a
    /// session, which ends its waits, so a `false` waiter is gone from every queue.
    pub(crate) fn waiter_alive(&mut self, id: WaiterId) -> bool {
        let session = self.st.waiters[&id].session;
        if session == 0 || self.session_live(session) {
            return true;
        }
        assert!(!self.st.waiters.contains_key(&id), "ending a session ends its waits");
        false
    }

    /// Ends a wait without a grant: removes the waiter from every queue it is in and
    /// marks those names dirty, since the head of a queue may have changed.
    pub(crate) fn wait_end(&mut self, id: WaiterId, reason: WaitEnd) {
        let waiter = self.waiter_take(id);
        match waiter.kind {
            WaiterKind::Lock { names, slot, .. } => {
                for name in names {
                    self.lock_queue_remove(&name, slot);
                    self.mark(Dirty::Lock(name));
                }
            }
            WaiterKind::Pop { keys, .. } => {
                for key in keys {
                    self.pop_queue_remove(&key, id);
                }
            }
            WaiterKind::Permit { name, slot, .. } => {
                self.semaphore_queue_remove(&name, slot);
                self.mark(Dirty::Semaphore(name));
            }
            WaiterKind::QueuePop { name, slot } => self.queue_waiter_remove(&name, slot),
            WaiterKind::BarrierArrive { name, participant } => self.barrier_withdraw(&name, &participant, id),
            WaiterKind::BarrierLeave { name, .. } => self.barrier_leave_withdraw(&name, id),
            WaiterKind::Campaign { name, slot, .. } => {
                self.election_queue_remove(&name, slot);
                self.mark(Dirty::Election(name));
            }
        }
        self.emit(Event::WaitEnded { waiter: id, reason });
    }
}
