//! `check_invariants`: the cross-table consistency every apply must preserve. Tests
//! call it after every step; `restore` calls it on every snapshot it reads.

use std::collections::BTreeSet;

use crate::lock::{Holders, LockEntry};
use crate::state::{Owned, StateMachine, Timer, NEVER};
use crate::waiter::WaiterKind;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl StateMachine {
    /// Verifies every invariant linking the tables: at most one exclusive holder and
    /// never readers beside a writer, fences at or below the last fence, every finite
    /// deadline indexed exactly once, every session-owned resource owned by a live
    /// session record, every queued waiter present in its queues and vice versa.
    pub fn check_invariants(&self) -> Result<(), String> {
        let st = &self.st;
        let mut timers: BTreeSet<(u64, Timer)> = BTreeSet::new();
        let mut owned: BTreeSet<(u64, Owned)> = BTreeSet::new();
        let mut queued: BTreeSet<u64> = BTreeSet::new();
        let mut shared_timers: BTreeSet<(u64, Timer)> = BTreeSet::new();
        let mut add_shared_timer = |deadline: u64, timer: Timer| {
            if deadline != NEVER {
                shared_timers.insert((deadline, timer));
            }
        };
        let mut add_timer = |deadline: u64, timer: Timer| -> Result<(), String> {
            if deadline != NEVER {
                ensure!(timers.insert((deadline, timer.clone())), "timer {timer:?} twice");
            }
            Ok(())
        };
        for (name, entry) in &st.locks {
            ensure!(!entry.is_empty(), "empty lock entry {name:?} kept");
            if let LockEntry::Busy(busy) = entry {
                if let Holders::Shared(holders) = &busy.holders {
                    ensure!(!holders.is_empty(), "shared lock {name:?} without holders");
                }
                let lone_writer = busy.queue.is_empty() && matches!(busy.holders, Holders::Exclusive(_));
                ensure!(!lone_writer, "lock {name:?} not compacted");
            }
            for holder in entry.holders() {
                ensure!(
                    holder.fence > 0 && holder.fence <= st.last_fence,
                    "fence {} above last {}",
                    holder.fence,
                    st.last_fence
                );
                ensure!(holder.holds > 0, "holder without holds on {name:?}");
                add_shared_timer(holder.deadline_ms, Timer::Holder(name.clone()));
                if holder.session != 0 {
                    owned.insert((holder.session, Owned::Holder { name: name.clone(), fence: holder.fence }));
                }
            }
            for &(_, id) in entry.queue().into_iter().flatten() {
                let Some(w) = st.waiters.get(&id) else { return Err(format!("queued waiter {id} missing")) };
                ensure!(
                    matches!(&w.kind, WaiterKind::Lock { names, .. } if names.contains(name)),
                    "waiter {id} not for {name:?}"
                );
                queued.insert(id);
            }
        }
        for (key, ids) in &st.pop_queues {
            ensure!(!ids.is_empty(), "empty pop queue kept");
            for id in ids {
                ensure!(
                    matches!(st.waiters.get(id).map(|w| &w.kind), Some(WaiterKind::Pop { keys, .. }) if keys.contains(key)),
                    "pop waiter {id}"
                );
                queued.insert(*id);
            }
        }
        for (name, sem) in &st.semaphores {
            let used: u32 = sem.holders.iter().map(|h| h.permits).sum();
            ensure!(used == sem.used && used <= sem.limit, "semaphore {name:?} uses {used} of {}", sem.limit);
            sem.holders.check().map_err(|e| format!("semaphore {name:?}: {e}"))?;
            for holder in sem.holders.iter() {
                ensure!(holder.fence <= st.last_fence, "permit fence above last");
                add_shared_timer(holder.deadline_ms, Timer::Permit(name.clone()));
                if holder.session != 0 {
                    owned.insert((holder.session, Owned::Permit { name: name.clone(), fence: holder.fence }));
                }
            }
            for &(_, id) in &sem.queue {
                ensure!(
                    matches!(st.waiters.get(&id).map(|w| &w.kind), Some(WaiterKind::Permit { name: n, .. }) if n == name),
                    "permit waiter {id}"
                );
                queued.insert(id);
            }
        }
        for (name, queue) in &st.queues {
            ensure!(!queue.items.is_empty() || !queue.poppers.is_empty(), "empty queue {name:?} kept");
            for (item_slot, item) in &queue.items {
                if item.session != 0 {
                    owned.insert((item.session, Owned::Item { name: name.clone(), slot: *item_slot }));
                }
            }
            for &(_, id) in &queue.poppers {
                ensure!(
                    matches!(st.waiters.get(&id).map(|w| &w.kind), Some(WaiterKind::QueuePop { name: n, .. }) if n == name),
                    "queue waiter {id}"
                );
                queued.insert(id);
            }
        }
        for (name, barrier) in &st.barriers {
            for &(_, id) in &barrier.members {
                if id != 0 {
                    ensure!(
                        matches!(st.waiters.get(&id).map(|w| &w.kind), Some(WaiterKind::BarrierArrive { name: n, .. }) if n == name),
                        "barrier waiter {id}"
                    );
                    queued.insert(id);
                }
            }
            if let Some(bound) = st.barrier_sessions.get(name) {
                ensure!(barrier.double && !bound.is_empty(), "barrier {name:?}: owned members of a counting barrier");
                for (participant, &session) in bound {
                    ensure!(
                        barrier.members.iter().any(|(p, _)| p == participant),
                        "owned participant {participant:?} is not at barrier {name:?}"
                    );
                    owned.insert((session, Owned::Member { name: name.clone(), participant: participant.clone() }));
                }
            }
            for &id in &barrier.leavers {
                ensure!(
                    matches!(st.waiters.get(&id).map(|w| &w.kind), Some(WaiterKind::BarrierLeave { name: n, .. }) if n == name),
                    "leave waiter {id}"
                );
                queued.insert(id);
            }
        }
        for name in st.barrier_sessions.keys() {
            ensure!(st.barriers.contains_key(name), "owned members of a missing barrier {name:?}");
        }
        for (name, election) in &st.elections {
            if let Some(leader) = &election.leader {
                ensure!(leader.fence <= st.last_fence, "leader fence above last");
                add_timer(leader.deadline_ms, Timer::Leader(name.clone()))?;
                if leader.session != 0 {
                    owned.insert((leader.session, Owned::Leader { name: name.clone(), fence: leader.fence }));
                }
            }
            for &(_, id) in &election.queue {
                ensure!(
                    matches!(st.waiters.get(&id).map(|w| &w.kind), Some(WaiterKind::Campaign { name: n, .. }) if n == name),
                    "campaign waiter {id}"
                );
                queued.insert(id);
            }
        }
        for (id, waiter) in &st.waiters {
            ensure!(queued.contains(id), "waiter {id} is in no queue");
            add_timer(waiter.deadline_ms, Timer::Waiter(*id))?;
            if waiter.session != 0 {
                owned.insert((waiter.session, Owned::Waiter(*id)));
            }
        }
        for (name, entry) in &st.keys {
            add_timer(entry.deadline_ms, Timer::Key(name.clone()))?;
            if entry.session != 0 {
                owned.insert((entry.session, Owned::Key(name.clone())));
            }
        }
        for (id, session) in &st.sessions {
            add_timer(session.deadline_ms, Timer::Session(*id))?;
            for item in &session.owned {
                ensure!(owned.remove(&(*id, item.clone())), "session {id} owns {item:?} which does not point back");
            }
        }
        self.check_identities_and_slots()?;
        ensure!(owned.is_empty(), "resources owned by missing sessions: {owned:?}");
        timers.extend(shared_timers);
        ensure!(
            timers.iter().eq(st.deadlines.iter()),
            "deadline index out of step: expected {} timers, have {}",
            timers.len(),
            st.deadlines.len()
        );
        Ok(())
    }

    /// Identities fit their packed bytes, every queue slot is its waiter's own slot,
    /// and barrier members are their waiters' participants: a snapshot that breaks any
    /// of these would panic later, so `restore` refuses it. (The waiters named here were
    /// already found to exist.)
    fn check_identities_and_slots(&self) -> Result<(), String> {
        let st = &self.st;
        let fits = |blob: &[u8], owner: u16, token: u16| usize::from(owner) + usize::from(token) <= blob.len();
        for (name, entry) in &st.locks {
            for h in entry.holders() {
                ensure!(fits(&h.blob, h.owner_len, h.token_len), "holder identity of {name:?} overruns its bytes");
            }
            for &queued in entry.queue().into_iter().flatten() {
                let ok = matches!(&st.waiters[&queued.1].kind, WaiterKind::Lock { slot, .. } if *slot == queued);
                ensure!(ok, "lock waiter {} of {name:?} is not at its own slot", queued.1);
            }
        }
        for (name, sem) in &st.semaphores {
            for h in sem.holders.iter() {
                ensure!(
                    fits(&h.ident.blob, h.ident.owner_len, h.ident.token_len),
                    "permit identity of {name:?} overruns"
                );
            }
            for &queued in &sem.queue {
                let ok = matches!(&st.waiters[&queued.1].kind, WaiterKind::Permit { slot, .. } if *slot == queued);
                ensure!(ok, "permit waiter {} of {name:?} is not at its own slot", queued.1);
            }
        }
        for (name, queue) in &st.queues {
            for &queued in &queue.poppers {
                let ok = matches!(&st.waiters[&queued.1].kind, WaiterKind::QueuePop { slot, .. } if *slot == queued);
                ensure!(ok, "queue waiter {} of {name:?} is not at its own slot", queued.1);
            }
        }
        for (name, barrier) in &st.barriers {
            for (member, id) in &barrier.members {
                if *id != 0 {
                    let ok = matches!(&st.waiters[id].kind, WaiterKind::BarrierArrive { participant, .. } if participant == member);
                    ensure!(ok, "barrier waiter {id} of {name:?} is not its member");
                }
            }
        }
        for (name, election) in &st.elections {
            if let Some(l) = &election.leader {
                ensure!(
                    fits(&l.ident.blob, l.ident.owner_len, l.ident.token_len),
                    "leader identity of {name:?} overruns"
                );
            }
            for &queued in &election.queue {
                let ok = matches!(&st.waiters[&queued.1].kind, WaiterKind::Campaign { slot, .. } if *slot == queued);
                ensure!(ok, "campaign waiter {} of {name:?} is not at its own slot", queued.1);
            }
        }
        for (id, waiter) in &st.waiters {
            if let WaiterKind::Lock { ident, .. }
            | WaiterKind::Permit { ident, .. }
            | WaiterKind::Campaign { ident, .. } = &waiter.kind
            {
                ensure!(fits(&ident.blob, ident.owner_len, ident.token_len), "waiter {id} identity overruns its bytes");
            }
        }
        self.check_configs()
    }
}
