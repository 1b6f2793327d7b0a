//! Barriers: a counting barrier (`BarrierWait`: the N-th arrival lets everyone through,
//! then it resets) and a double barrier (`BarrierEnter` waits until N have entered,
//! `BarrierLeave` waits until all of them have left), as in ZooKeeper's recipes.
//!
//! A double-barrier participant may enter under a session (`BarrierEnterSession`): the
//! session owns its membership (`Owned::Member`, and `State::barrier_sessions` finds
//! the session from the participant), and when the session ends the participant
//! leaves, so one that crashed does not keep the others waiting forever.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{Event, Reply, SessionId, WaitEnd, WaiterId};
use crate::error::{over, Error, Result};
use crate::limits::Limit;
use crate::name::Name;
use crate::state::{Owned, StateMachine, NEVER};
use crate::waiter::{Waiter, WaiterKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Barrier {
    pub parties: u32,
    pub double: bool,
    /// Participants present, with the waiter blocked on entry (0: not waiting).
    pub members: Vec<(Bytes, WaiterId)>,
    /// Double barrier only: everyone has entered, and leaving has begun.
    pub released: bool,
    /// Double barrier only: participants that left and wait for the rest.
    pub leavers: Vec<WaiterId>,
}

impl StateMachine {
    fn barrier_check(&self, name: &[u8], parties: u32, participant: &[u8], double: bool) -> Result<()> {
        self.check_key(name)?;
        self.check_owner(participant)?;
        if parties == 0 {
            return Err(Error::invalid("a barrier needs at least one party"));
        }
        if parties > self.limits.barrier_parties_max {
            return Err(over(Limit::BarrierParties, u64::from(self.limits.barrier_parties_max)));
        }
        if let Some(barrier) = self.st.barriers.get(name) {
            if barrier.double != double || barrier.parties != parties {
                return Err(Error::invalid("barrier exists with a different kind or party count"));
            }
            if barrier.members.iter().any(|(p, _)| p.as_ref() == participant) {
                return Err(Error::invalid("participant is already at the barrier"));
            }
            if barrier.released {
                return Err(Error::invalid("barrier is being left; enter again after all have left"));
            }
        }
        Ok(())
    }

    /// Lets every participant blocked on entry through.
    fn barrier_release_members(&mut self, name: &Name) {
        let members = std::mem::take(&mut self.st.barriers.get_mut(name).expect("barrier").members);
        let mut kept = Vec::with_capacity(members.len());
        for (participant, id) in members {
            if id != 0 {
                self.waiter_take(id);
                self.emit(Event::BarrierPassed { waiter: id });
            }
            kept.push((participant, 0));
        }
        self.st.barriers.get_mut(name).expect("barrier").members = kept;
    }

    fn barrier_arrive(
        &mut self,
        name: &[u8],
        parties: u32,
        participant: Bytes,
        wait_ms: Option<u64>,
        double: bool,
        session: Option<SessionId>,
    ) -> Result<Reply> {
        debug_assert!(double || session.is_none(), "only a double barrier's members are owned");
        self.barrier_check(name, parties, &participant, double)?;
        self.check_wait(wait_ms)?;
        if !self.st.barriers.contains_key(name) {
            self.check_entries(1)?;
        }
        let session = self.session_check(session, 1)?;
        let name = Name::from(name);
        let barrier = self.st.barriers.entry(name.clone()).or_insert(Barrier {
            parties,
            double,
            members: Vec::new(),
            released: false,
            leavers: Vec::new(),
        });
        if barrier.members.len() + 1 == parties as usize {
            barrier.members.push((participant.clone(), 0));
            self.barrier_bind(&name, participant, session);
            self.barrier_release_members(&name);
            if double {
                self.st.barriers.get_mut(&name).expect("barrier").released = true;
            } else {
                self.st.barriers.remove(&name);
            }
            return Ok(Reply::Ok);
        }
        if wait_ms == Some(0) {
            self.barrier_gc(&name);
            return Ok(Reply::Nil);
        }
        let deadline_ms = wait_ms.map_or(NEVER, |ms| self.deadline_after(ms));
        let kind = WaiterKind::BarrierArrive { name: name.clone(), participant: participant.clone() };
        let id = self.waiter_insert(Waiter { deadline_ms, session: 0, kind });
        self.st.barriers.get_mut(&name).expect("barrier").members.push((participant.clone(), id));
        self.barrier_bind(&name, participant, session);
        Ok(Reply::Queued(id))
    }

    /// Records that `session` (0: none) owns `participant`'s membership.
    fn barrier_bind(&mut self, name: &Name, participant: Bytes, session: SessionId) {
        if session == 0 {
            return;
        }
        self.own(session, Owned::Member { name: name.clone(), participant: participant.clone() });
        let bound = self.st.barrier_sessions.entry(name.clone()).or_default().insert(participant, session);
        assert!(bound.is_none(), "a participant is at a barrier once");
    }

    /// `participant` is no longer at the barrier: its session, if any, no longer owns
    /// its membership.
    fn barrier_unbind(&mut self, name: &Name, participant: &[u8]) {
        let Some(bound) = self.st.barrier_sessions.get_mut(name) else { return };
        let Some(session) = bound.remove(participant) else { return };
        if bound.is_empty() {
            self.st.barrier_sessions.remove(name);
        }
        self.disown(session, &Owned::Member { name: name.clone(), participant: Bytes::copy_from_slice(participant) });
    }

    pub(crate) fn barrier_wait(
        &mut self,
        name: &[u8],
        parties: u32,
        participant: Bytes,
        wait_ms: Option<u64>,
    ) -> Result<Reply> {
        self.barrier_arrive(name, parties, participant, wait_ms, false, None)
    }

    pub(crate) fn barrier_enter(
        &mut self,
        name: &[u8],
        parties: u32,
        participant: Bytes,
        wait_ms: Option<u64>,
    ) -> Result<Reply> {
        self.barrier_arrive(name, parties, participant, wait_ms, true, None)
    }

    pub(crate) fn barrier_enter_session(
        &mut self,
        name: &[u8],
        parties: u32,
        participant: Bytes,
        wait_ms: Option<u64>,
        session: SessionId,
    ) -> Result<Reply> {
        self.barrier_arrive(name, parties, participant, wait_ms, true, Some(session))
    }

    pub(crate) fn barrier_leave(&mut self, name: &[u8], participant: &[u8], wait_ms: Option<u64>) -> Result<Reply> {
        self.check_wait(wait_ms)?;
        let name = Name::from(name);
        let Some(barrier) = self.st.barriers.get(&name).filter(|b| b.double) else {
            return Err(Error::NotHolder { name: name.lossy() });
        };
        let Some(at) = barrier.members.iter().position(|(p, _)| p.as_ref() == participant) else {
            return Err(Error::NotHolder { name: name.lossy() });
        };
        // Before everyone entered, leaving withdraws the entry; after, the last one out
        // goes on at once.
        if !self.barrier_depart(&name, at, WaitEnd::Cancelled) {
            return Ok(Reply::Ok);
        }
        if wait_ms == Some(0) {
            return Ok(Reply::Nil);
        }
        let deadline_ms = wait_ms.map_or(NEVER, |ms| self.deadline_after(ms));
        let kind = WaiterKind::BarrierLeave { name: name.clone(), participant: Bytes::copy_from_slice(participant) };
        let id = self.waiter_insert(Waiter { deadline_ms, session: 0, kind });
        self.st.barriers.get_mut(&name).expect("barrier").leavers.push(id);
        Ok(Reply::Queued(id))
    }

    /// Takes member `at` out of the barrier. Before everyone has entered, that withdraws
    /// its entry (a wait on entry ends with `reason`); after, the last one out lets every
    /// leaver through. Returns whether others are still inside a barrier being left:
    /// the one leaving waits for them.
    fn barrier_depart(&mut self, name: &Name, at: usize, reason: WaitEnd) -> bool {
        let barrier = self.st.barriers.get_mut(name).expect("barrier");
        let (participant, entering) = barrier.members.remove(at);
        let (released, others) = (barrier.released, !barrier.members.is_empty());
        self.barrier_unbind(name, &participant);
        if !released {
            if entering != 0 {
                self.waiter_take(entering);
                self.emit(Event::WaitEnded { waiter: entering, reason });
            }
            self.barrier_gc(name);
            return false;
        }
        if !others {
            let barrier = self.st.barriers.remove(name).expect("barrier");
            for id in barrier.leavers {
                self.waiter_take(id);
                self.emit(Event::BarrierPassed { waiter: id });
            }
        }
        others
    }

    /// The session owning `participant`'s membership ended: the participant leaves (and
    /// waits for nobody).
    pub(crate) fn barrier_session_ended(&mut self, name: &Name, participant: &[u8]) {
        let barrier = self.st.barriers.get(name).expect("an owned member's barrier");
        let at = barrier.members.iter().position(|(p, _)| p.as_ref() == participant).expect("owned member");
        self.barrier_depart(name, at, WaitEnd::SessionEnded);
    }

    /// An entering participant gave up (timeout or cancel): it is no longer present.
    pub(crate) fn barrier_withdraw(&mut self, name: &Name, participant: &[u8], id: WaiterId) {
        let barrier = self.st.barriers.get_mut(name).expect("barrier");
        let at = barrier.members.iter().position(|(p, w)| p.as_ref() == participant && *w == id).expect("member");
        barrier.members.remove(at);
        self.barrier_unbind(name, participant);
        self.barrier_gc(name);
    }

    /// A leaver gave up waiting for the others; it has left all the same.
    pub(crate) fn barrier_leave_withdraw(&mut self, name: &Name, id: WaiterId) {
        let barrier = self.st.barriers.get_mut(name).expect("barrier");
        barrier.leavers.retain(|w| *w != id);
    }

    fn barrier_gc(&mut self, name: &Name) {
        if self.st.barriers.get(name).is_some_and(|b| b.members.is_empty() && b.leavers.is_empty()) {
            self.st.barriers.remove(name);
        }
    }
}
