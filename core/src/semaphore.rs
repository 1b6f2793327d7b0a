//! Counting semaphores: N permits, each grant fenced, FIFO/priority waiters that are
//! served strictly in order (a large request at the head is not overtaken).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::{Event, Grant, Reply, SemaphoreRequest, SessionId, Wait};
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
    pub holders: Vec<PermitHolder>,
    pub queue: BTreeSet<QueueSlot>,
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
            if sem.holders.iter().any(|h| h.ident.token() == request.token.as_ref()) {
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
            holders: Vec::new(),
            queue: BTreeSet::new(),
        })
    }

    fn semaphore_install(&mut self, name: &Name, ident: Ident, count: u32, ttl_ms: u64, session: SessionId) -> Grant {
        let fence = self.next_fence();
        let deadline_ms = self.deadline_after(ttl_ms);
        let sem = self.st.semaphores.get_mut(name).expect("semaphore exists");
        assert!(sem.used + count <= sem.limit, "never more permits out than the limit");
        sem.used += count;
        sem.holders.push(PermitHolder { ident, permits: count, fence, deadline_ms, session });
        self.schedule_shared(deadline_ms, Timer::Permit(name.clone()));
        if session != 0 {
            self.own(session, Owned::Permit { name: name.clone(), fence });
        }
        Grant { fence, holds: count, deadline_ms }
    }

    fn semaphore_holder_at(&self, name: &[u8], token: &[u8]) -> Option<usize> {
        let sem = self.st.semaphores.get(name)?;
        sem.holders.iter().position(|h| h.ident.token() == token)
    }

    pub(crate) fn semaphore_release(&mut self, name: &[u8], token: &[u8]) -> Result<Reply> {
        let name = Name::from(name);
        self.semaphore_expire_due(&name);
        let Some(at) = self.semaphore_holder_at(&name, token) else {
            return Err(Error::NotHolder { name: name.lossy() });
        };
        let fence = self.st.semaphores[&name].holders[at].fence;
        let holder = self.semaphore_remove(&name, fence);
        if holder.session != 0 {
            self.disown(holder.session, &Owned::Permit { name: name.clone(), fence });
        }
        self.emit(Event::Released { name: name.to_bytes(), fence });
        Ok(Reply::Int(i64::from(holder.permits)))
    }

    pub(crate) fn semaphore_renew(&mut self, name: &[u8], token: &[u8], ttl_ms: u64) -> Result<Reply> {
        self.check_ttl(ttl_ms, false)?;
        let name = Name::from(name);
        self.semaphore_expire_due(&name);
        let Some(at) = self.semaphore_holder_at(&name, token) else {
            return Err(Error::NotHolder { name: name.lossy() });
        };
        let deadline_ms = self.deadline_after(ttl_ms);
        let sem = self.st.semaphores.get_mut(&name).expect("exists");
        let holder = &mut sem.holders[at];
        let old = std::mem::replace(&mut holder.deadline_ms, deadline_ms);
        let (fence, permits) = (holder.fence, holder.permits);
        let still_used = old == deadline_ms || sem.holders.iter().any(|h| h.deadline_ms == old);
        self.unschedule_shared(old, Timer::Permit(name.clone()), still_used);
        self.schedule_shared(deadline_ms, Timer::Permit(name.clone()));
        Ok(Reply::Grant(Grant { fence, holds: permits, deadline_ms }))
    }

    /// Removes a permit grant and its timer; marks the semaphore for the pump.
    fn semaphore_remove(&mut self, name: &Name, fence: u64) -> PermitHolder {
        let sem = self.st.semaphores.get_mut(name).expect("semaphore exists");
        let at = sem.holders.iter().position(|h| h.fence == fence).expect("holder exists");
        let holder = sem.holders.remove(at);
        sem.used -= holder.permits;
        let still_used = sem.holders.iter().any(|h| h.deadline_ms == holder.deadline_ms);
        self.unschedule_shared(holder.deadline_ms, Timer::Permit(name.clone()), still_used);
        self.mark(Dirty::Semaphore(name.clone()));
        holder
    }

    pub(crate) fn semaphore_expire_due(&mut self, name: &Name) {
        let Some(sem) = self.st.semaphores.get(name) else { return };
        let due: Vec<u64> = sem.holders.iter().filter(|h| self.is_due(h.deadline_ms)).map(|h| h.fence).collect();
        for fence in due {
            let holder = self.semaphore_remove(name, fence);
            if holder.session != 0 {
                self.disown(holder.session, &Owned::Permit { name: name.clone(), fence });
            }
            self.emit(Event::Expired { name: name.to_bytes(), fence });
        }
    }

    pub(crate) fn semaphore_revoke(&mut self, name: &Name, fence: u64, session: SessionId) {
        let holder = self.semaphore_remove(name, fence);
        assert_eq!(holder.session, session);
        self.emit(Event::Revoked { name: name.to_bytes(), fence, session });
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
                let used: u32 = sem.holders.iter().filter(|h| !self.is_due(h.deadline_ms)).map(|h| h.permits).sum();
                Reply::Array(vec![
                    Reply::Int(i64::from(sem.limit)),
                    Reply::Int(i64::from(used)),
                    Reply::Int(sem.queue.len() as i64),
                ])
            }
        }
    }
}
