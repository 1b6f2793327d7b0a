//! Counting semaphores: N permits, each grant fenced, FIFO/priority waiters that are
//! served strictly in order (a large request at the head is not overtaken).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::command::{Event, Grant, Holding, Reply, SemaphoreRequest, SessionId, Wait};
use crate::error::{over, Error, Result};
use crate::limits::Limit;
use crate::name::Name;
use crate::state::{slot, Dirty, Owned, QueueSlot, StateMachine, Timer, NEVER};
use crate::waiter::{Ident, Waiter, WaiterKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PermitHolder {
    pub ident: Ident,
    pub permits: u32,
    pub fence: u64,
    pub deadline_ms: u64,
    pub session: SessionId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Semaphore {
    pub limit: u32,
    pub used: u32,
    pub holders: PermitHolders,
    pub queue: BTreeSet<QueueSlot>,
}

/// A semaphore's holders in grant (fence) order, with the two lookups apply needs kept
/// beside them: by token (RELEASE, RENEW, one grant per token) and by deadline (expiry,
/// and whether a shared timer is still in use). A list scanned on every acquire made
/// filling a semaphore of many permits quadratic.
///
/// A token holds one grant since 6750616, but a state from before it may hold two
/// under one token (two waits granted); the list took that, so this does too: a token
/// names its lowest fence, as the first match in the list did.
///
/// Encoded as the list of holders in fence order, exactly as the `Vec` it replaced
/// (fences only grow, so that list was in fence order): snapshots did not change. The
/// lookups are rebuilt when a snapshot is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PermitHolders {
    by_fence: BTreeMap<u64, PermitHolder>,
    /// (token, fence).
    by_token: BTreeSet<(Bytes, u64)>,
    /// (deadline, fence); `NEVER` (session-bound) sorts last.
    by_deadline: BTreeSet<(u64, u64)>,
}

impl PermitHolders {
    pub fn iter(&self) -> impl Iterator<Item = &PermitHolder> {
        self.by_fence.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fence.is_empty()
    }

    pub fn fence_of(&self, token: &[u8]) -> Option<u64> {
        let token = Bytes::copy_from_slice(token);
        self.by_token.range((token.clone(), 0)..=(token, u64::MAX)).next().map(|(_, fence)| *fence)
    }

    pub fn get(&self, fence: u64) -> Option<&PermitHolder> {
        self.by_fence.get(&fence)
    }

    /// Adds a grant: its fence is above every holder's.
    pub fn insert(&mut self, holder: PermitHolder) {
        assert!(self.by_fence.last_key_value().is_none_or(|(last, _)| *last < holder.fence), "fences only grow");
        self.by_token.insert((Bytes::copy_from_slice(holder.ident.token()), holder.fence));
        self.by_deadline.insert((holder.deadline_ms, holder.fence));
        self.by_fence.insert(holder.fence, holder);
    }

    pub fn remove(&mut self, fence: u64) -> Option<PermitHolder> {
        let holder = self.by_fence.remove(&fence)?;
        self.by_token.remove(&(Bytes::copy_from_slice(holder.ident.token()), fence));
        self.by_deadline.remove(&(holder.deadline_ms, fence));
        Some(holder)
    }

    /// Moves a holder's deadline; returns the old one.
    pub fn set_deadline(&mut self, fence: u64, deadline_ms: u64) -> u64 {
        let holder = self.by_fence.get_mut(&fence).expect("holder exists");
        let old = std::mem::replace(&mut holder.deadline_ms, deadline_ms);
        self.by_deadline.remove(&(old, fence));
        self.by_deadline.insert((deadline_ms, fence));
        old
    }

    /// Whether some holder's lease ends at `deadline_ms` (they share a timer).
    pub fn any_with_deadline(&self, deadline_ms: u64) -> bool {
        self.by_deadline.range((deadline_ms, 0)..=(deadline_ms, u64::MAX)).next().is_some()
    }

    /// The holders whose deadline satisfies `due`, earliest first (`due` must hold for
    /// a prefix of the deadlines, as "before now" does).
    pub fn due(&self, due: impl Fn(u64) -> bool) -> impl Iterator<Item = &PermitHolder> {
        self.by_deadline.iter().take_while(move |(d, _)| due(*d)).map(|(_, fence)| &self.by_fence[fence])
    }

    /// The lookups agree with the holders (`check_invariants`).
    pub fn check(&self) -> std::result::Result<(), String> {
        let tokens: BTreeSet<(Bytes, u64)> =
            self.iter().map(|h| (Bytes::copy_from_slice(h.ident.token()), h.fence)).collect();
        let deadlines: BTreeSet<(u64, u64)> = self.iter().map(|h| (h.deadline_ms, h.fence)).collect();
        if self.by_fence.iter().any(|(fence, h)| *fence != h.fence) || tokens != self.by_token {
            return Err("permit holders' token lookup out of step".into());
        }
        if deadlines != self.by_deadline {
            return Err("permit holders' deadline lookup out of step".into());
        }
        Ok(())
    }
}

impl Serialize for PermitHolders {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.by_fence.values())
    }
}

impl<'de> Deserialize<'de> for PermitHolders {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let list = Vec::<PermitHolder>::deserialize(deserializer)?;
        let mut holders = PermitHolders::default();
        for holder in list {
            if !holder.ident.fits() {
                return Err(serde::de::Error::custom("a permit holder's identity overruns its bytes"));
            }
            if holders.by_fence.last_key_value().is_some_and(|(last, _)| *last >= holder.fence) {
                return Err(serde::de::Error::custom("permit holders out of fence order"));
            }
            holders.insert(holder);
        }
        Ok(holders)
    }
}

impl StateMachine {
    pub(crate) fn semaphore_acquire(&mut self, request: SemaphoreRequest) -> Result<Reply> {
        self.check_key(&request.name)?;
        self.check_owner(&request.owner)?;
        self.check_owner(&request.token)?;
        if request.limit == 0 || request.count == 0 {
            return Err(Error::invalid("semaphore limit and permit count must be positive"));
        }
        if request.limit > self.limits.permits_max {
            return Err(over(Limit::Permits, u64::from(self.limits.permits_max)));
        }
        if request.count > request.limit {
            return Err(Error::invalid("more permits requested than the semaphore has"));
        }
        self.check_ttl(request.ttl_ms, request.session.is_some())?;
        if let Wait::Queue { wait_ms, .. } = request.wait {
            self.check_wait(wait_ms)?;
        }
        let session = self.session_check(request.session, 1)?;
        let name = Name::from(request.name.as_ref());
        self.semaphore_expire_due(&name);
        if !self.st.semaphores.contains_key(&name) {
            self.check_entries(1)?;
        }
        if let Some(sem) = self.st.semaphores.get(&name) {
            if sem.limit != request.limit {
                return Err(Error::invalid("semaphore exists with a different limit"));
            }
            if sem.holders.fence_of(&request.token).is_some() {
                return Err(Error::invalid("this token already holds permits of the semaphore"));
            }
            // Nor may a token wait twice: both would be granted under it, and RENEW,
            // RELEASE and the disconnect undo would act on one of them only.
            let waiting = sem.queue.iter().any(|&(_, id)| {
                matches!(&self.st.waiters[&id].kind,
                    WaiterKind::Permit { ident, .. } if ident.token() == request.token.as_ref())
            });
            if waiting {
                return Err(Error::invalid("this token already waits for permits of the semaphore"));
            }
        }
        let ident = Ident::new(&request.owner, &request.token, &[]);
        let (used, queued) = self.st.semaphores.get(&name).map_or((0, 0), |s| (s.used, s.queue.len()));
        if queued == 0 && used + request.count <= request.limit {
            self.semaphore_entry(&name, request.limit);
            let grant = self.semaphore_install(&name, ident, request.count, request.ttl_ms, session);
            return Ok(Reply::Grant(grant));
        }
        let (wait_ms, priority) = match request.wait {
            Wait::Queue { wait_ms, priority } if wait_ms != Some(0) => (wait_ms, priority),
            _ => return Err(Error::Locked),
        };
        if queued >= self.limits.waiters_per_lock_max {
            return Err(over(Limit::WaitersPerLock, self.limits.waiters_per_lock_max as u64));
        }
        let queue_slot = slot(priority, self.index);
        self.semaphore_entry(&name, request.limit).queue.insert(queue_slot);
        // A higher priority can put this request at the head while permits are free.
        self.mark(Dirty::Semaphore(name.clone()));
        let deadline_ms = wait_ms.map_or(NEVER, |ms| self.deadline_after(ms));
        let kind = WaiterKind::Permit { name, ident, count: request.count, ttl_ms: request.ttl_ms, slot: queue_slot };
        Ok(Reply::Queued(self.waiter_insert(Waiter { deadline_ms, session, kind })))
    }

    fn semaphore_entry(&mut self, name: &Name, limit: u32) -> &mut Semaphore {
        self.st.semaphores.entry(name.clone()).or_insert(Semaphore {
            limit,
            used: 0,
            holders: PermitHolders::default(),
            queue: BTreeSet::new(),
        })
    }

    fn semaphore_install(&mut self, name: &Name, ident: Ident, count: u32, ttl_ms: u64, session: SessionId) -> Grant {
        let fence = self.next_fence();
        let deadline_ms = self.deadline_after(ttl_ms);
        let sem = self.st.semaphores.get_mut(name).expect("semaphore exists");
        assert!(sem.used + count <= sem.limit, "never more permits out than the limit");
        sem.used += count;
        sem.holders.insert(PermitHolder { ident, permits: count, fence, deadline_ms, session });
        self.schedule_shared(deadline_ms, Timer::Permit(name.clone()));
        if session != 0 {
            self.own(session, Owned::Permit { name: name.clone(), fence });
        }
        Grant { fence, holds: count, deadline_ms }
    }

    fn semaphore_holder_fence(&self, name: &[u8], token: &[u8]) -> Option<u64> {
        self.st.semaphores.get(name)?.holders.fence_of(token)
    }

    pub(crate) fn semaphore_release(&mut self, name: &[u8], token: &[u8]) -> Result<Reply> {
        let name = Name::from(name);
        self.semaphore_expire_due(&name);
        let Some(fence) = self.semaphore_holder_fence(&name, token) else {
            return Err(Error::NotHolder { name: name.lossy() });
        };
        let holder = self.semaphore_remove(&name, fence);
        if holder.session != 0 {
            self.disown(holder.session, &Owned::Permit { name: name.clone(), fence });
        }
        self.emit(Event::Released { name: name.to_bytes(), of: Holding::Permit, fence });
        Ok(Reply::Int(i64::from(holder.permits)))
    }

    pub(crate) fn semaphore_renew(&mut self, name: &[u8], token: &[u8], ttl_ms: u64) -> Result<Reply> {
        self.check_ttl(ttl_ms, false)?;
        let name = Name::from(name);
        self.semaphore_expire_due(&name);
        let Some(fence) = self.semaphore_holder_fence(&name, token) else {
            return Err(Error::NotHolder { name: name.lossy() });
        };
        // As for a lock: a session past its deadline but not yet ended (expirations
        // backed up past one entry's budget) has lost what it owns.
        let session = self.st.semaphores.get(&name).and_then(|s| s.holders.get(fence)).map_or(0, |h| h.session);
        if !self.owner_live(session) {
            return Err(Error::NotHolder { name: name.lossy() });
        }
        let deadline_ms = self.deadline_after(ttl_ms);
        let sem = self.st.semaphores.get_mut(&name).expect("exists");
        let old = sem.holders.set_deadline(fence, deadline_ms);
        let permits = sem.holders.get(fence).expect("holder exists").permits;
        let still_used = sem.holders.any_with_deadline(old);
        self.unschedule_shared(old, Timer::Permit(name.clone()), still_used);
        self.schedule_shared(deadline_ms, Timer::Permit(name.clone()));
        Ok(Reply::Grant(Grant { fence, holds: permits, deadline_ms }))
    }

    /// Removes a permit grant and its timer; marks the semaphore for the pump.
    fn semaphore_remove(&mut self, name: &Name, fence: u64) -> PermitHolder {
        let sem = self.st.semaphores.get_mut(name).expect("semaphore exists");
        let holder = sem.holders.remove(fence).expect("holder exists");
        sem.used -= holder.permits;
        let still_used = sem.holders.any_with_deadline(holder.deadline_ms);
        self.unschedule_shared(holder.deadline_ms, Timer::Permit(name.clone()), still_used);
        self.mark(Dirty::Semaphore(name.clone()));
        holder
    }

    pub(crate) fn semaphore_expire_due(&mut self, name: &Name) {
        let Some(sem) = self.st.semaphores.get(name) else { return };
        let due: Vec<u64> = sem.holders.due(|deadline_ms| self.is_due(deadline_ms)).map(|h| h.fence).collect();
        for fence in due {
            let holder = self.semaphore_remove(name, fence);
            if holder.session != 0 {
                self.disown(holder.session, &Owned::Permit { name: name.clone(), fence });
            }
            self.emit(Event::Expired { name: name.to_bytes(), of: Holding::Permit, fence });
        }
    }

    pub(crate) fn semaphore_revoke(&mut self, name: &Name, fence: u64, session: SessionId) {
        let holder = self.semaphore_remove(name, fence);
        assert_eq!(holder.session, session);
        self.emit(Event::Revoked { name: name.to_bytes(), of: Holding::Permit, fence, session });
    }

    pub(crate) fn semaphore_queue_remove(&mut self, name: &Name, queue_slot: QueueSlot) {
        let sem = self.st.semaphores.get_mut(name).expect("semaphore exists");
        assert!(sem.queue.remove(&queue_slot));
    }

    /// Grants waiters from the head while their permits fit.
    pub(crate) fn semaphore_pump(&mut self, name: &Name) {
        self.semaphore_expire_due(name);
        loop {
            let Some(sem) = self.st.semaphores.get(name) else { return };
            let Some(&(_, id)) = sem.queue.first() else { break };
            let (limit, used) = (sem.limit, sem.used);
            if !self.waiter_alive(id) {
                continue;
            }
            let waiter = &self.st.waiters[&id];
            let session = waiter.session;
            let WaiterKind::Permit { count, .. } = waiter.kind else { panic!("permit waiter") };
            if used + count > limit {
                break;
            }
            let waiter = self.waiter_take(id);
            let WaiterKind::Permit { ident, count, ttl_ms, slot: queue_slot, .. } = waiter.kind else { unreachable!() };
            self.semaphore_queue_remove(name, queue_slot);
            let grant = self.semaphore_install(name, ident, count, ttl_ms, session);
            self.emit(Event::Granted { waiter: id, grant });
        }
        if let Some(sem) = self.st.semaphores.get(name) {
            if sem.holders.is_empty() && sem.queue.is_empty() {
                self.st.semaphores.remove(name);
            }
        }
    }

    pub(crate) fn semaphore_info(&self, name: &[u8]) -> Reply {
        match self.st.semaphores.get(name) {
            None => Reply::Array(vec![Reply::Int(0), Reply::Int(0), Reply::Int(0)]),
            Some(sem) => {
                let lapsed: u32 = sem.holders.due(|deadline_ms| self.is_due(deadline_ms)).map(|h| h.permits).sum();
                let used = sem.used - lapsed;
                Reply::Array(vec![
                    Reply::Int(i64::from(sem.limit)),
                    Reply::Int(i64::from(used)),
                    Reply::Int(sem.queue.len() as i64),
                ])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(fence: u64, token: &str, deadline_ms: u64) -> PermitHolder {
        PermitHolder { ident: Ident::new(b"owner", token.as_bytes(), &[]), permits: 1, fence, deadline_ms, session: 0 }
    }

    /// Snapshots written while the holders were a `Vec` read the same, and write the
    /// same bytes.
    #[test]
    fn the_holders_encode_as_the_list_they_replaced() {
        let list = vec![holder(3, "a", 900), holder(8, "b", NEVER), holder(9, "c", 900)];
        let mut holders = PermitHolders::default();
        for h in list.clone() {
            holders.insert(h);
        }
        let bytes = postcard::to_stdvec(&list).unwrap();
        assert_eq!(postcard::to_stdvec(&holders).unwrap(), bytes);
        let back: PermitHolders = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, holders);
        back.check().unwrap();
        assert_eq!(back.fence_of(b"b"), Some(8));
        assert!(back.any_with_deadline(900) && !back.any_with_deadline(901));
        let due: Vec<u64> = back.due(|d| d < 1_000).map(|h| h.fence).collect();
        assert_eq!(due, vec![3, 9]);
        // A list out of fence order is not a state apply makes.
        let swapped = vec![holder(8, "b", 1), holder(3, "a", 1)];
        assert!(postcard::from_bytes::<PermitHolders>(&postcard::to_stdvec(&swapped).unwrap()).is_err());
        // Two grants under one token are, from builds before 6750616: the token names
        // the lower fence, as the list's first match did, and the other stays reachable.
        let twice = vec![holder(3, "a", 1), holder(8, "a", 2)];
        let bytes = postcard::to_stdvec(&twice).unwrap();
        let mut back: PermitHolders = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
        back.check().unwrap();
        assert_eq!(back.fence_of(b"a"), Some(3));
        back.remove(3);
        assert_eq!(back.fence_of(b"a"), Some(8));
        back.insert(holder(9, "a", 1));
        back.check().unwrap();
    }
}
