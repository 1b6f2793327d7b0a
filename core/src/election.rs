//! Leader election: campaign (FIFO among candidates), proclaim, resign, renew, leader
//! query, transfer, and `LeaderChanged` events for observers. Each leadership gets a
//! fresh fence, so "never two leaders whose terms overlap" can be checked downstream.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{
    CampaignRequest, Event, Grant, HolderInfo, Holding, LockInfo, LockMode, Reply, SessionId, Wait, WaitEnd,
};
use crate::error::{over, Error, Result};
use crate::limits::Limit;
use crate::name::Name;
use crate::state::{slot, Dirty, Owned, QueueSlot, StateMachine, Timer, NEVER};
use crate::waiter::{Ident, Waiter, WaiterKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Leader {
    /// candidate ‖ token ‖ value
    pub ident: Ident,
    pub fence: u64,
    pub deadline_ms: u64,
    pub session: SessionId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Election {
    pub leader: Option<Leader>,
    pub queue: BTreeSet<QueueSlot>,
}

impl StateMachine {
    fn leader_info(&self, leader: &Leader) -> HolderInfo {
        HolderInfo {
            owner: Bytes::copy_from_slice(leader.ident.owner()),
            fence: leader.fence,
            holds: 1,
            ttl_ms: self.remaining(leader.deadline_ms),
            session: (leader.session != 0).then_some(leader.session),
            metadata: Bytes::copy_from_slice(leader.ident.payload()),
        }
    }

    fn emit_leader(&mut self, name: &Name) {
        let leader = self.st.elections.get(name).and_then(|e| e.leader.as_ref()).map(|l| self.leader_info(l));
        self.emit(Event::LeaderChanged { name: name.to_bytes(), leader });
    }

    /// The waiter id of a queued candidate with this identity (or token).
    fn election_find(&self, name: &Name, matches: impl Fn(&Ident) -> bool) -> Option<u64> {
        let election = self.st.elections.get(name)?;
        election.queue.iter().map(|&(_, id)| id).find(|id| match &self.st.waiters[id].kind {
            WaiterKind::Campaign { ident, .. } => matches(ident),
            _ => false,
        })
    }

    pub(crate) fn election_campaign(&mut self, request: CampaignRequest) -> Result<Reply> {
        self.check_key(&request.name)?;
        self.check_owner(&request.candidate)?;
        self.check_owner(&request.token)?;
        if request.value.len() > self.limits.metadata_bytes_max {
            return Err(over(Limit::MetadataBytes, self.limits.metadata_bytes_max as u64));
        }
        self.check_ttl(request.ttl_ms, request.session.is_some())?;
        if let Wait::Queue { wait_ms, .. } = request.wait {
            self.check_wait(wait_ms)?;
        }
        // Live for any campaign; counted against the session's limit only when it
        // would add a leadership or a wait (below): a retry of a won campaign adds none.
        let session = self.session_check(request.session, 0)?;
        let name = Name::from(request.name.as_ref());
        self.election_expire_due(&name);
        if let Some(leader) = self.st.elections.get(&name).and_then(|e| e.leader.as_ref()) {
            if leader.ident.owner() == request.candidate.as_ref() {
                if leader.ident.token() != request.token.as_ref() {
                    return Err(Error::TokenMismatch);
                }
                // Leadership stays bound to the session it was won under (as a lock).
                if leader.session != session {
                    return Err(Error::HeldDifferently);
                }
                return Ok(Reply::Grant(Grant { fence: leader.fence, holds: 1, deadline_ms: leader.deadline_ms }));
            }
        }
        self.session_check(request.session, 1)?;
        if self.election_find(&name, |i| i.owner() == request.candidate.as_ref()).is_some() {
            return Err(Error::invalid("candidate is already campaigning"));
        }
        if !self.st.elections.contains_key(&name) {
            self.check_entries(1)?;
        }
        let ident = Ident::new(&request.candidate, &request.token, &request.value);
        let election = self.st.elections.get(&name);
        let queued = election.map_or(0, |e| e.queue.len());
        if election.is_none_or(|e| e.leader.is_none() && e.queue.is_empty()) {
            return Ok(Reply::Grant(self.election_install(&name, ident, request.ttl_ms, session)));
        }
        let (wait_ms, priority) = match request.wait {
            Wait::Queue { wait_ms, priority } if wait_ms != Some(0) => (wait_ms, priority),
            _ => return Err(Error::Locked),
        };
        if queued >= self.limits.waiters_per_lock_max {
            return Err(over(Limit::WaitersPerLock, self.limits.waiters_per_lock_max as u64));
        }
        let queue_slot = slot(priority, self.index);
        self.st.elections.get_mut(&name).expect("exists").queue.insert(queue_slot);
        self.mark(Dirty::Election(name.clone()));
        let deadline_ms = wait_ms.map_or(NEVER, |ms| self.deadline_after(ms));
        let kind = WaiterKind::Campaign { name, ident, ttl_ms: request.ttl_ms, slot: queue_slot };
        Ok(Reply::Queued(self.waiter_insert(Waiter { deadline_ms, session, kind })))
    }

    fn election_install(&mut self, name: &Name, ident: Ident, ttl_ms: u64, session: SessionId) -> Grant {
        let fence = self.next_fence();
        let deadline_ms = self.deadline_after(ttl_ms);
        let election = self.st.elections.entry(name.clone()).or_default();
        assert!(election.leader.is_none(), "one leader at a time");
        election.leader = Some(Leader { ident, fence, deadline_ms, session });
        self.schedule(deadline_ms, Timer::Leader(name.clone()));
        if session != 0 {
            self.own(session, Owned::Leader { name: name.clone(), fence });
        }
        self.emit_leader(name);
        Grant { fence, holds: 1, deadline_ms }
    }

    fn election_remove_leader(&mut self, name: &Name) -> Leader {
        let leader = self.st.elections.get_mut(name).and_then(|e| e.leader.take()).expect("leader exists");
        self.unschedule(leader.deadline_ms, Timer::Leader(name.clone()));
        self.mark(Dirty::Election(name.clone()));
        leader
    }

    /// The leader, if `token` is its token.
    fn election_leader_by_token(&mut self, name: &Name, token: &[u8]) -> Result<&Leader> {
        self.election_expire_due(name);
        let session = match self.st.elections.get(name).and_then(|e| e.leader.as_ref()) {
            Some(leader) if leader.ident.token() == token => leader.session,
            _ => return Err(Error::NotHolder { name: name.lossy() }),
        };
        // As for a lock: a session past its deadline but not yet ended (expirations
        // backed up past one entry's budget) has lost its leadership.
        if !self.owner_live(session) {
            return Err(Error::NotHolder { name: name.lossy() });
        }
        Ok(self.st.elections.get(name).and_then(|e| e.leader.as_ref()).expect("checked above"))
    }

    pub(crate) fn election_proclaim(&mut self, name: &[u8], token: &[u8], value: Bytes) -> Result<Reply> {
        if value.len() > self.limits.metadata_bytes_max {
            return Err(over(Limit::MetadataBytes, self.limits.metadata_bytes_max as u64));
        }
        let name = Name::from(name);
        let leader = self.election_leader_by_token(&name, token)?;
        let ident = Ident::new(leader.ident.owner(), leader.ident.token(), &value);
        self.st.elections.get_mut(&name).and_then(|e| e.leader.as_mut()).expect("leader").ident = ident;
        self.emit_leader(&name);
        Ok(Reply::Ok)
    }

    pub(crate) fn election_resign(&mut self, name: &[u8], token: &[u8]) -> Result<Reply> {
        let name = Name::from(name);
        if self.election_leader_by_token(&name, token).is_ok() {
            let leader = self.election_remove_leader(&name);
            if leader.session != 0 {
                self.disown(leader.session, &Owned::Leader { name: name.clone(), fence: leader.fence });
            }
            // Observers see the resignation itself, then whoever leads next.
            self.emit_leader(&name);
            return Ok(Reply::Ok);
        }
        match self.election_find(&name, |i| i.token() == token) {
            Some(id) => {
                self.wait_end(id, WaitEnd::Cancelled);
                Ok(Reply::Ok)
            }
            None => Err(Error::NotHolder { name: name.lossy() }),
        }
    }

    pub(crate) fn election_renew(&mut self, name: &[u8], token: &[u8], ttl_ms: u64) -> Result<Reply> {
        self.check_ttl(ttl_ms, false)?;
        let name = Name::from(name);
        let fence = self.election_leader_by_token(&name, token)?.fence;
        let deadline_ms = self.deadline_after(ttl_ms);
        let leader = self.st.elections.get_mut(&name).and_then(|e| e.leader.as_mut()).expect("leader");
        let old = std::mem::replace(&mut leader.deadline_ms, deadline_ms);
        self.unschedule(old, Timer::Leader(name.clone()));
        self.schedule(deadline_ms, Timer::Leader(name.clone()));
        Ok(Reply::Grant(Grant { fence, holds: 1, deadline_ms }))
    }

    pub(crate) fn election_transfer(&mut self, name: &[u8], token: &[u8], to: &[u8]) -> Result<Reply> {
        let name = Name::from(name);
        self.election_leader_by_token(&name, token)?;
        let Some(id) = self.election_find(&name, |i| i.owner() == to) else {
            return Err(Error::invalid("no such candidate is waiting"));
        };
        if !self.waiter_alive(id) {
            return Err(Error::invalid("no such candidate is waiting"));
        }
        let leader = self.election_remove_leader(&name);
        if leader.session != 0 {
            self.disown(leader.session, &Owned::Leader { name: name.clone(), fence: leader.fence });
        }
        self.election_grant_waiter(&name, id);
        Ok(Reply::Ok)
    }

    fn election_grant_waiter(&mut self, name: &Name, id: u64) {
        let waiter = self.waiter_take(id);
        let WaiterKind::Campaign { ident, ttl_ms, slot: queue_slot, .. } = waiter.kind else {
            panic!("campaign waiter")
        };
        self.election_queue_remove(name, queue_slot);
        let grant = self.election_install(name, ident, ttl_ms, waiter.session);
        self.emit(Event::Granted { waiter: id, grant });
    }

    pub(crate) fn election_leader(&self, name: &[u8]) -> Reply {
        let Some(election) = self.st.elections.get(name) else {
            return Reply::Info(LockInfo { mode: None, holders: Vec::new(), waiters: 0 });
        };
        let holders: Vec<HolderInfo> =
            election.leader.iter().filter(|l| !self.is_due(l.deadline_ms)).map(|l| self.leader_info(l)).collect();
        let mode = (!holders.is_empty()).then_some(LockMode::Exclusive);
        Reply::Info(LockInfo { mode, holders, waiters: election.queue.len() as u64 })
    }

    pub(crate) fn election_expire_due(&mut self, name: &Name) {
        let due =
            self.st.elections.get(name).and_then(|e| e.leader.as_ref()).is_some_and(|l| self.is_due(l.deadline_ms));
        if due {
            let leader = self.election_remove_leader(name);
            if leader.session != 0 {
                self.disown(leader.session, &Owned::Leader { name: name.clone(), fence: leader.fence });
            }
            self.emit(Event::Expired { name: name.to_bytes(), of: Holding::Leadership, fence: leader.fence });
            self.emit_leader(name);
        }
    }

    pub(crate) fn election_revoke(&mut self, name: &Name, fence: u64, session: SessionId) {
        let leader = self.election_remove_leader(name);
        assert_eq!((leader.fence, leader.session), (fence, session));
        self.emit(Event::Revoked { name: name.to_bytes(), of: Holding::Leadership, fence, session });
        self.emit_leader(name);
    }

    pub(crate) fn election_queue_remove(&mut self, name: &Name, queue_slot: QueueSlot) {
        let election = self.st.elections.get_mut(name).expect("election exists");
        assert!(election.queue.remove(&queue_slot));
    }

    /// Hands leadership to the first live candidate when nobody leads.
    pub(crate) fn election_pump(&mut self, name: &Name) {
        self.election_expire_due(name);
        loop {
            let Some(election) = self.st.elections.get(name) else { return };
            if election.leader.is_some() {
                return;
            }
            let Some(&(_, id)) = election.queue.first() else { break };
            if !self.waiter_alive(id) {
                continue;
            }
            self.election_grant_waiter(name, id);
        }
        if self.st.elections.get(name).is_some_and(|e| e.leader.is_none() && e.queue.is_empty()) {
            self.st.elections.remove(name);
        }
    }
}
