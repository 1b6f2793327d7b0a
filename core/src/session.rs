//! Sessions: a TTL kept alive by the client, owning resources that end with it.
//!
//! As in etcd, a lease is not a lock: the session only says "this client is alive";
//! locks, permits, queue items, keys, candidacies and barrier members point at it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::{Event, Reply, SessionId, WaitEnd};
use crate::error::{over, Error, Result};
use crate::limits::Limit;
use crate::state::{Owned, StateMachine, Timer};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub ttl_ms: u64,
    pub deadline_ms: u64,
    pub owned: BTreeSet<Owned>,
}

impl StateMachine {
    pub(crate) fn session_open(&mut self, ttl_ms: u64) -> Result<Reply> {
        self.check_ttl(ttl_ms, false)?;
        if self.st.sessions.len() >= self.limits.sessions_max {
            return Err(over(Limit::Sessions, self.limits.sessions_max as u64));
        }
        let id = self.index;
        let deadline_ms = self.deadline_after(ttl_ms);
        self.st.sessions.insert(id, Session { ttl_ms, deadline_ms, owned: BTreeSet::new() });
        self.schedule(deadline_ms, Timer::Session(id));
        Ok(Reply::Int(id as i64))
    }

    pub(crate) fn session_keep_alive(&mut self, id: SessionId, ttl_ms: Option<u64>) -> Result<Reply> {
        if let Some(ttl_ms) = ttl_ms {
            self.check_ttl(ttl_ms, false)?;
        }
        self.session_live_or_err(id)?;
        let session = &self.st.sessions[&id];
        let ttl_ms = ttl_ms.unwrap_or(session.ttl_ms);
        let old_deadline = session.deadline_ms;
        let deadline_ms = self.deadline_after(ttl_ms);
        self.unschedule(old_deadline, Timer::Session(id));
        self.schedule(deadline_ms, Timer::Session(id));
        let session = self.st.sessions.get_mut(&id).expect("live");
        session.ttl_ms = ttl_ms;
        session.deadline_ms = deadline_ms;
        Ok(Reply::Int(ttl_ms as i64))
    }

    pub(crate) fn session_close(&mut self, id: SessionId) -> Result<Reply> {
        self.session_live_or_err(id)?;
        self.session_end(id, false);
        Ok(Reply::Ok)
    }

    pub(crate) fn session_info(&self, id: SessionId) -> Result<Reply> {
        match self.st.sessions.get(&id) {
            Some(s) if !self.is_due(s.deadline_ms) => Ok(Reply::Array(vec![
                Reply::Int(s.ttl_ms as i64),
                Reply::Int(self.remaining(s.deadline_ms).unwrap_or(0) as i64),
                Reply::Int(s.owned.len() as i64),
            ])),
            _ => Err(Error::NoSuchSession(id)),
        }
    }

    /// True if the session exists and its deadline has not passed. A session that is
    /// due but not yet swept is ended here, so nothing is ever granted to it.
    pub(crate) fn session_live(&mut self, id: SessionId) -> bool {
        match self.st.sessions.get(&id) {
            None => false,
            Some(s) if self.is_due(s.deadline_ms) => {
                self.session_end(id, true);
                false
            }
            Some(_) => true,
        }
    }

    /// True for what no session owns (0) or what a live session owns (`session_live`,
    /// which ends a session that is due but not yet swept).
    pub(crate) fn owner_live(&mut self, session: SessionId) -> bool {
        session == 0 || self.session_live(session)
    }

    pub(crate) fn session_live_or_err(&mut self, id: SessionId) -> Result<()> {
        if self.session_live(id) {
            Ok(())
        } else {
            Err(Error::NoSuchSession(id))
        }
    }

    /// Validates an optional owning session that will own `adding` more resources.
    /// Returns the session id, 0 for none.
    pub(crate) fn session_check(&mut self, session: Option<SessionId>, adding: usize) -> Result<SessionId> {
        let Some(id) = session else { return Ok(0) };
        self.session_live_or_err(id)?;
        let owned = self.st.sessions[&id].owned.len();
        if owned + adding > self.limits.locks_per_session_max {
            return Err(over(Limit::LocksPerSession, self.limits.locks_per_session_max as u64));
        }
        Ok(id)
    }

    pub(crate) fn own(&mut self, session: SessionId, owned: Owned) {
        let s = self.st.sessions.get_mut(&session).expect("owner session checked live");
        let inserted = s.owned.insert(owned);
        assert!(inserted, "a resource is owned once");
    }

    /// Forgets ownership; the session may already be gone (it is ending).
    pub(crate) fn disown(&mut self, session: SessionId, owned: &Owned) {
        if let Some(s) = self.st.sessions.get_mut(&session) {
            s.owned.remove(owned);
        }
    }

    /// Ends a session and everything it owns. The session leaves the table first, so
    /// none of its waiters can be granted while its resources are released.
    pub(crate) fn session_end(&mut self, id: SessionId, expired: bool) {
        let session = self.st.sessions.remove(&id).expect("session exists");
        self.unschedule(session.deadline_ms, Timer::Session(id));
        // Waiters first: releasing a lock below must not grant it to this session.
        for owned in &session.owned {
            if let Owned::Waiter(waiter) = owned {
                self.wait_end(*waiter, WaitEnd::SessionEnded);
            }
        }
        for owned in session.owned {
            match owned {
                Owned::Waiter(_) => {}
                Owned::Holder { name, fence } => self.lock_revoke(&name, fence, id),
                Owned::Permit { name, fence } => self.semaphore_revoke(&name, fence, id),
                Owned::Leader { name, fence } => self.election_revoke(&name, fence, id),
                Owned::Key(name) => self.key_remove_ephemeral(&name),
                Owned::Item { name, slot } => self.queue_item_remove(&name, slot),
                Owned::Member { name, participant } => self.barrier_session_ended(&name, &participant),
            }
        }
        self.emit(Event::SessionEnded { session: id, expired });
    }
}
