//! Locks: exclusive and shared, reentrant, atomic groups, FIFO/priority wait queues,
//! conditional acquire, metadata, and fencing tokens.
//!
//! Grant rule for a queue: only its head may be granted, and a waiter is granted
//! once it heads the queue of every name it asked for and every one of them admits
//! its mode. Queue order is one global order (priority, then log index), so two
//! groups can never each head a queue the other needs: no deadlock. A shared request
//! never overtakes a queued exclusive one (writer preference: writers never starve).

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{
    Condition, Event, Grant, HolderInfo, Holding, LockInfo, LockMode, LockRequest, Reply, SessionId, Wait, WaitEnd,
};
use crate::error::{over, Error, Result};
use crate::limits::Limit;
use crate::name::{boxed_bytes, Name};
use crate::state::{slot, Dirty, Owned, QueueSlot, StateMachine, Timer, NEVER};
use crate::waiter::{parts, Ident, Waiter, WaiterKind};

/// One grant of a lock. 48 bytes: owner, token and metadata share one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    #[serde(with = "boxed_bytes")]
    pub blob: Box<[u8]>,
    pub owner_len: u16,
    pub token_len: u16,
    pub holds: u32,
    pub fence: u64,
    pub deadline_ms: u64,
    pub session: SessionId,
}

impl Holder {
    pub fn owner(&self) -> &[u8] {
        parts(&self.blob, self.owner_len, self.token_len).0
    }

    pub fn token(&self) -> &[u8] {
        parts(&self.blob, self.owner_len, self.token_len).1
    }

    pub fn metadata(&self) -> &[u8] {
        parts(&self.blob, self.owner_len, self.token_len).2
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Holders {
    Free,
    Exclusive(Holder),
    /// Never empty: the last reader leaving makes the lock `Free`.
    Shared(Vec<Holder>),
}

impl Holders {
    pub fn as_slice(&self) -> &[Holder] {
        match self {
            Holders::Free => &[],
            Holders::Exclusive(holder) => std::slice::from_ref(holder),
            Holders::Shared(holders) => holders,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Holder] {
        match self {
            Holders::Free => &mut [],
            Holders::Exclusive(holder) => std::slice::from_mut(holder),
            Holders::Shared(holders) => holders,
        }
    }

    pub fn mode(&self) -> Option<LockMode> {
        match self {
            Holders::Free => None,
            Holders::Exclusive(_) => Some(LockMode::Exclusive),
            Holders::Shared(_) => Some(LockMode::Shared),
        }
    }

    /// Whether a new holder in `mode` may join the current holders.
    fn admits(&self, mode: LockMode) -> bool {
        matches!((self, mode), (Holders::Free, _) | (Holders::Shared(_), LockMode::Shared))
    }

    fn add(&mut self, mode: LockMode, holder: Holder) {
        assert!(self.admits(mode), "never two exclusive holders, never readers with a writer");
        match (std::mem::replace(self, Holders::Free), mode) {
            (Holders::Free, LockMode::Exclusive) => *self = Holders::Exclusive(holder),
            (Holders::Free, LockMode::Shared) => *self = Holders::Shared(vec![holder]),
            (Holders::Shared(mut holders), LockMode::Shared) => {
                holders.push(holder);
                *self = Holders::Shared(holders);
            }
            _ => unreachable!("admits() checked the mode"),
        }
    }

    fn remove(&mut self, fence: u64) -> Holder {
        match std::mem::replace(self, Holders::Free) {
            Holders::Exclusive(holder) => {
                assert_eq!(holder.fence, fence);
                holder
            }
            Holders::Shared(mut holders) => {
                let at = holders.iter().position(|h| h.fence == fence).expect("holder exists");
                let holder = holders.remove(at);
                if !holders.is_empty() {
                    *self = Holders::Shared(holders);
                }
                holder
            }
            Holders::Free => panic!("removing a holder from a free lock"),
        }
    }
}

/// A lock name's holders and wait queue.
///
/// Almost every lock in a busy table has exactly one exclusive holder and nobody
/// waiting, so that case is the 48-byte holder itself; shared holders and waiters
/// move behind one box. This layout is what keeps a million held locks near 250
/// bytes each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LockEntry {
    Held(Holder),
    Busy(Box<Busy>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Busy {
    pub holders: Holders,
    pub queue: BTreeSet<QueueSlot>,
}

impl LockEntry {
    fn free() -> LockEntry {
        LockEntry::Busy(Box::new(Busy { holders: Holders::Free, queue: BTreeSet::new() }))
    }

    /// A new entry with its first holder: the unboxed form for an exclusive one, with
    /// no box allocated and dropped on the way.
    fn with(mode: LockMode, holder: Holder) -> LockEntry {
        match mode {
            LockMode::Exclusive => LockEntry::Held(holder),
            LockMode::Shared => {
                let mut entry = LockEntry::free();
                entry.add(mode, holder);
                entry
            }
        }
    }

    pub fn holders(&self) -> &[Holder] {
        match self {
            LockEntry::Held(holder) => std::slice::from_ref(holder),
            LockEntry::Busy(busy) => busy.holders.as_slice(),
        }
    }

    fn holders_mut(&mut self) -> &mut [Holder] {
        match self {
            LockEntry::Held(holder) => std::slice::from_mut(holder),
            LockEntry::Busy(busy) => busy.holders.as_mut_slice(),
        }
    }

    pub fn mode(&self) -> Option<LockMode> {
        match self {
            LockEntry::Held(_) => Some(LockMode::Exclusive),
            LockEntry::Busy(busy) => busy.holders.mode(),
        }
    }

    fn admits(&self, mode: LockMode) -> bool {
        match self {
            LockEntry::Held(_) => false,
            LockEntry::Busy(busy) => busy.holders.admits(mode),
        }
    }

    pub fn queue(&self) -> Option<&BTreeSet<QueueSlot>> {
        match self {
            LockEntry::Busy(busy) if !busy.queue.is_empty() => Some(&busy.queue),
            _ => None,
        }
    }

    fn head(&self) -> Option<QueueSlot> {
        self.queue().and_then(|q| q.first().copied())
    }

    pub fn queue_len(&self) -> usize {
        self.queue().map_or(0, BTreeSet::len)
    }

    /// The boxed form, for adding waiters or readers.
    fn busy(&mut self) -> &mut Busy {
        if let LockEntry::Held(_) = self {
            let LockEntry::Held(holder) = std::mem::replace(self, LockEntry::free()) else { unreachable!() };
            *self = LockEntry::Busy(Box::new(Busy { holders: Holders::Exclusive(holder), queue: BTreeSet::new() }));
        }
        match self {
            LockEntry::Busy(busy) => busy,
            LockEntry::Held(_) => unreachable!("converted above"),
        }
    }

    fn add(&mut self, mode: LockMode, holder: Holder) {
        self.busy().holders.add(mode, holder);
        self.compact();
    }

    fn remove(&mut self, fence: u64) -> Holder {
        let holder = self.busy().holders.remove(fence);
        self.compact();
        holder
    }

    /// Back to the unboxed form when there is one exclusive holder and no queue.
    fn compact(&mut self) {
        if let LockEntry::Busy(busy) = self {
            if busy.queue.is_empty() && matches!(busy.holders, Holders::Exclusive(_)) {
                let Holders::Exclusive(holder) = std::mem::replace(&mut busy.holders, Holders::Free) else {
                    unreachable!()
                };
                *self = LockEntry::Held(holder);
            }
        }
    }

    /// No holder and no waiter: the entry can go.
    pub fn is_empty(&self) -> bool {
        matches!(self, LockEntry::Busy(busy) if busy.queue.is_empty() && matches!(busy.holders, Holders::Free))
    }
}

struct Survey {
    reentry_fence: Option<u64>,
    new_names: usize,
    free: bool,
}

enum Ready {
    Grant,
    Blocked,
    Gone,
}

/// A command's lock names, checked, sorted and deduplicated. One name, the common case,
/// is held without a heap allocation: a vector for it was 2% of a follower's CPU
/// (DWARF profile, 3 nodes at 64 clients).
pub(crate) enum Names {
    One([Name; 1]),
    Many(Vec<Name>),
}

impl std::ops::Deref for Names {
    type Target = [Name];

    fn deref(&self) -> &[Name] {
        match self {
            Names::One(name) => name,
            Names::Many(names) => names,
        }
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a Name;
    type IntoIter = std::slice::Iter<'a, Name>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Names {
    /// The names as a vector, for a waiter that keeps them.
    pub(crate) fn into_vec(self) -> Vec<Name> {
        match self {
            Names::One([name]) => vec![name],
            Names::Many(names) => names,
        }
    }
}

impl StateMachine {
    /// Validates and canonicalizes a name list: non-empty, within the group bound,
    /// sorted and deduplicated (the canonical order of a group).
    pub(crate) fn lock_names(&self, names: &[Bytes]) -> Result<Names> {
        if names.is_empty() {
            return Err(Error::invalid("at least one lock name is required"));
        }
        if names.len() > self.limits.group_size_max {
            return Err(over(Limit::GroupSize, self.limits.group_size_max as u64));
        }
        for name in names {
            self.check_key(name)?;
        }
        if let [name] = names {
            return Ok(Names::One([Name::from(name.as_ref())]));
        }
        let sorted: BTreeSet<Name> = names.iter().map(|n| Name::from(n.as_ref())).collect();
        Ok(Names::Many(sorted.into_iter().collect()))
    }

    pub(crate) fn lock_acquire(&mut self, request: &LockRequest) -> Result<Reply> {
        let names = self.lock_names(&request.names)?;
        self.check_owner(&request.owner)?;
        self.check_owner(&request.token)?;
        if request.metadata.len() > self.limits.metadata_bytes_max {
            return Err(over(Limit::MetadataBytes, self.limits.metadata_bytes_max as u64));
        }
        self.check_ttl(request.ttl_ms, request.session.is_some())?;
        if let Wait::Queue { wait_ms, .. } = request.wait {
            self.check_wait(wait_ms)?;
        }
        // The session must be live for any acquire; its lock count is checked only for
        // names it would add (below): a retried acquire adds none.
        let session = self.session_check(request.session, 0)?;
        let mut present = 0;
        for name in &names {
            present += usize::from(self.lock_expire_due(name));
        }
        let survey = if present == 0 {
            // No name has an entry: all are new and free, which is what the survey would
            // find, without walking the table for each name again.
            Survey { reentry_fence: None, new_names: names.len(), free: true }
        } else {
            self.lock_survey(&names, &request.owner, &request.token, request.mode, session)?
        };
        if let Some(fence) = survey.reentry_fence {
            // A retry of an idempotent acquire that was applied adds no hold; its lease
            // still runs from now, as the client counts it from the retry it sent.
            return Ok(Reply::Grant(self.lock_reenter(&names, fence, request.ttl_ms, !request.idempotent)?));
        }
        // A condition gates taking the lock, not holding it: checked after the
        // reentry above, so a retried acquire whose first attempt was applied is
        // answered with its grant although the condition has changed since.
        if let Some(condition) = &request.condition {
            if !self.condition_holds(condition) {
                return Err(Error::ConditionFailed);
            }
        }
        self.session_check(request.session, names.len())?;
        self.check_entries(survey.new_names)?;
        let ident = Ident::new(&request.owner, &request.token, &request.metadata);
        if survey.free {
            let fence = self.next_fence();
            return Ok(Reply::Grant(self.lock_install(&names, ident, request.mode, request.ttl_ms, session, fence)));
        }
        let (wait_ms, priority) = match request.wait {
            Wait::Queue { wait_ms, priority } if wait_ms != Some(0) => (wait_ms, priority),
            _ => return Err(Error::Locked),
        };
        for name in &names {
            let queued = self.st.locks.get(name).map_or(0, LockEntry::queue_len);
            if queued >= self.limits.waiters_per_lock_max {
                return Err(over(Limit::WaitersPerLock, self.limits.waiters_per_lock_max as u64));
            }
        }
        let queue_slot = slot(priority, self.index);
        for name in &names {
            let entry = self.st.locks.entry(name.clone()).or_insert_with(LockEntry::free);
            let inserted = entry.busy().queue.insert(queue_slot);
            assert!(inserted);
        }
        let deadline_ms = wait_ms.map_or(NEVER, |ms| self.deadline_after(ms));
        // A higher priority can put the new waiter at the head of a free lock's queue
        // (the queue was non-empty, so the try failed): let the pump look at once.
        for name in &names {
            self.mark(Dirty::Lock(name.clone()));
        }
        let kind = WaiterKind::Lock {
            names: names.into_vec(),
            ident,
            mode: request.mode,
            ttl_ms: request.ttl_ms,
            slot: queue_slot,
        };
        let id = self.waiter_insert(Waiter { deadline_ms, session, kind });
        Ok(Reply::Queued(id))
    }

    /// One look at each name: whether `owner` already holds every name (as one grant,
    /// in `mode`, with `token`, under `session`: a reentrant acquire; holding some of
    /// them, or differently, is an error), how many names are new to the table, and
    /// whether all of them are free for `mode` with nobody queued.
    ///
    /// A grant held under another session (or none) is held differently: answering it
    /// as this request's would leave the lock bound to the other session, revoked when
    /// that one ends while the caller counts on the session it named.
    fn lock_survey(
        &self,
        names: &[Name],
        owner: &[u8],
        token: &[u8],
        mode: LockMode,
        session: SessionId,
    ) -> Result<Survey> {
        let mut survey = Survey { reentry_fence: None, new_names: 0, free: true };
        let mut held = 0;
        let mut fence = 0;
        for name in names {
            let Some(entry) = self.st.locks.get(name) else {
                survey.new_names += 1;
                continue;
            };
            survey.free &= entry.queue_len() == 0 && entry.admits(mode);
            let Some(holder) = entry.holders().iter().find(|h| h.owner() == owner) else { continue };
            if holder.token() != token {
                return Err(Error::TokenMismatch);
            }
            if entry.mode() != Some(mode) || (held > 0 && holder.fence != fence) || holder.session != session {
                return Err(Error::HeldDifferently);
            }
            fence = holder.fence;
            held += 1;
        }
        match held {
            0 => Ok(survey),
            n if n == names.len() => Ok(Survey { reentry_fence: Some(fence), ..survey }),
            _ => Err(Error::HeldDifferently),
        }
    }

    fn lock_reenter(&mut self, names: &[Name], fence: u64, ttl_ms: u64, add_hold: bool) -> Result<Grant> {
        // Check every name before changing any: a refused command changes nothing.
        if names.iter().any(|name| self.lock_holder(name, fence).holds == u32::MAX) {
            return Err(Error::Overflow);
        }
        let deadline_ms = self.deadline_after(ttl_ms);
        let mut grant = Grant { fence, holds: 0, deadline_ms };
        for name in names {
            let holder = self.lock_holder_mut(name, fence);
            let old = holder.deadline_ms;
            // A reentrant acquire may lengthen the lease but never shortens it.
            let new = if ttl_ms == 0 { old } else { old.max(deadline_ms) };
            if add_hold {
                holder.holds += 1;
            }
            holder.deadline_ms = new;
            grant = Grant { fence, holds: holder.holds, deadline_ms: new };
            self.lock_move_timer(name, old, new);
        }
        Ok(grant)
    }

    fn lock_install(
        &mut self,
        names: &[Name],
        ident: Ident,
        mode: LockMode,
        ttl_ms: u64,
        session: SessionId,
        fence: u64,
    ) -> Grant {
        let deadline_ms = self.deadline_after(ttl_ms);
        let Ident { blob, owner_len, token_len } = ident;
        let mut blob = Some(blob);
        for (i, name) in names.iter().enumerate() {
            // Every name of a group gets its own copy; the last one takes the original.
            let blob = if i + 1 == names.len() {
                blob.take().expect("taken once")
            } else {
                blob.clone().expect("not taken yet")
            };
            let holder = Holder { blob, owner_len, token_len, holds: 1, fence, deadline_ms, session };
            // get_mut then insert: imbl's entry API walks the tree three times for a
            // new name (look, insert, then find the inserted value again).
            match self.st.locks.get_mut(name) {
                Some(lock) => lock.add(mode, holder),
                None => {
                    self.st.locks.insert(name.clone(), LockEntry::with(mode, holder));
                }
            }
            self.schedule_shared(deadline_ms, Timer::Holder(name.clone()));
            if session != 0 {
                self.own(session, Owned::Holder { name: name.clone(), fence });
            }
        }
        Grant { fence, holds: 1, deadline_ms }
    }

    pub(crate) fn lock_release(&mut self, names: &[Bytes], token: &[u8]) -> Result<Reply> {
        let names = self.lock_names(names)?;
        // A holder whose deadline has passed is not found by token: it is gone, even
        // if no entry has swept it yet.
        let mut found = Vec::with_capacity(names.len());
        for name in &names {
            match self.lock_by_token(name, token) {
                Some(holder) => found.push((holder.fence, holder.holds)),
                None => return Err(Error::NotHolder { name: name.lossy() }),
            }
        }
        // Releasing one name touches no other name's holders, so the holds read above
        // are still current here.
        let mut remaining = u32::MAX;
        for (name, (fence, holds)) in names.iter().zip(found) {
            if holds > 1 {
                let holder = self.lock_holder_mut(name, fence);
                holder.holds -= 1;
                remaining = remaining.min(holder.holds);
            } else {
                remaining = 0;
                let holder = self.lock_remove_holder(name, fence);
                assert_eq!(holder.holds, 1, "the last hold is released");
                if holder.session != 0 {
                    self.disown(holder.session, &Owned::Holder { name: name.clone(), fence });
                }
                self.emit(Event::Released { name: name.to_bytes(), of: Holding::Lock, fence });
            }
        }
        Ok(Reply::Int(i64::from(remaining)))
    }

    /// Ends the queued wait of the acquire whose token is `token` on `names` (LOCK.WITHDRAW):
    /// 1 if one was queued (its connection is answered nil, as when its wait runs out),
    /// 0 if none was (granted already, not yet queued, or never). A holder is never
    /// touched: a client giving up releases a grant with UNLOCK.
    pub(crate) fn lock_withdraw(&mut self, names: &[Bytes], token: &[u8]) -> Result<Reply> {
        let names = self.lock_names(names)?;
        // A group's waiter sits in the queue of every name it asks for: the first
        // name's queue (bounded by `waiters_per_lock_max`) finds it.
        let queue = self.st.locks.get(&names[0]).and_then(LockEntry::queue);
        let waiter = queue.into_iter().flatten().map(|&(_, id)| id).find(|id| {
            matches!(self.st.waiters.get(id), Some(Waiter { kind: WaiterKind::Lock { ident, .. }, .. }) if ident.token() == token)
        });
        let Some(id) = waiter else { return Ok(Reply::Int(0)) };
        self.wait_end(id, WaitEnd::Cancelled);
        debug_assert!(!self.st.waiters.contains_key(&id), "the withdrawn wait ended");
        Ok(Reply::Int(1))
    }

    pub(crate) fn lock_renew(&mut self, names: &[Bytes], token: &[u8], ttl_ms: u64) -> Result<Reply> {
        self.check_ttl(ttl_ms, false)?;
        let names = self.lock_names(names)?;
        // Expire first: a lease whose deadline has passed is gone and cannot be renewed.
        for name in &names {
            self.lock_expire_due(name);
        }
        let mut fences = Vec::with_capacity(names.len());
        for name in &names {
            // A holder's session may be past its deadline and not yet ended, when more
            // expirations were due than one entry may apply: it is gone all the same
            // (`session_live` ends it now, releasing this lock).
            match self.lock_by_token(name, token).map(|h| (h.fence, h.session)) {
                Some((fence, session)) if self.owner_live(session) => fences.push(fence),
                _ => return Err(Error::NotHolder { name: name.lossy() }),
            }
        }
        let deadline_ms = self.deadline_after(ttl_ms);
        let mut grant = None;
        for (name, fence) in names.iter().zip(fences) {
            let holder = self.lock_holder_mut(name, fence);
            let old = std::mem::replace(&mut holder.deadline_ms, deadline_ms);
            grant.get_or_insert(Grant { fence, holds: holder.holds, deadline_ms });
            self.lock_move_timer(name, old, deadline_ms);
        }
        Ok(Reply::Grant(grant.expect("at least one name")))
    }

    /// Expires every holder of `name` whose deadline has passed, and answers whether
    /// `name` still has an entry afterwards. When nothing is due that costs no walk
    /// beyond the one that looked for due holders.
    pub(crate) fn lock_expire_due(&mut self, name: &Name) -> bool {
        let Some(entry) = self.st.locks.get(name) else { return false };
        let now = self.now();
        let due: Vec<u64> =
            entry.holders().iter().filter(|h| h.deadline_ms != NEVER && h.deadline_ms < now).map(|h| h.fence).collect();
        if due.is_empty() {
            return true;
        }
        for fence in due {
            let holder = self.lock_remove_holder(name, fence);
            if holder.session != 0 {
                self.disown(holder.session, &Owned::Holder { name: name.clone(), fence });
            }
            self.emit(Event::Expired { name: name.to_bytes(), of: Holding::Lock, fence });
        }
        self.st.locks.contains_key(name)
    }

    /// Takes a grant away because its session ended.
    pub(crate) fn lock_revoke(&mut self, name: &Name, fence: u64, session: SessionId) {
        let holder = self.lock_remove_holder(name, fence);
        assert_eq!(holder.session, session);
        self.emit(Event::Revoked { name: name.to_bytes(), of: Holding::Lock, fence, session });
    }

    /// Removes a holder and its timer, and marks the name for the pump.
    fn lock_remove_holder(&mut self, name: &Name, fence: u64) -> Holder {
        let lone = matches!(self.st.locks.get(name), Some(LockEntry::Held(holder)) if holder.fence == fence);
        let (holder, still_used, waiters) = if lone {
            // The only holder, nobody waiting (the common case): the entry goes with it.
            // `LockEntry::remove` would box the holder first, only to drop the box.
            let Some(LockEntry::Held(holder)) = self.st.locks.remove(name) else { unreachable!("checked above") };
            (holder, false, false)
        } else {
            let entry = self.st.locks.get_mut(name).expect("lock exists");
            let holder = entry.remove(fence);
            let still_used = entry.holders().iter().any(|h| h.deadline_ms == holder.deadline_ms);
            let waiters = entry.queue_len() > 0;
            if entry.is_empty() {
                // Nobody holds and nobody waits: drop the entry now rather than in the pump.
                self.st.locks.remove(name);
            }
            (holder, still_used, waiters)
        };
        self.unschedule_shared(holder.deadline_ms, Timer::Holder(name.clone()), still_used);
        if waiters {
            self.mark(Dirty::Lock(name.clone()));
        }
        holder
    }

    /// Keeps the shared holder timer in step after one holder's deadline moved.
    fn lock_move_timer(&mut self, name: &Name, old: u64, new: u64) {
        if old == new {
            return;
        }
        let still_used = self.st.locks[name].holders().iter().any(|h| h.deadline_ms == old);
        self.unschedule_shared(old, Timer::Holder(name.clone()), still_used);
        self.schedule_shared(new, Timer::Holder(name.clone()));
    }

    pub(crate) fn lock_queue_remove(&mut self, name: &Name, queue_slot: QueueSlot) {
        let entry = self.st.locks.get_mut(name).expect("queued lock exists");
        assert!(entry.busy().queue.remove(&queue_slot));
        entry.compact();
    }

    /// Grants queued waiters of `name` from the head while they are grantable.
    pub(crate) fn lock_pump(&mut self, name: &Name) {
        self.lock_expire_due(name);
        loop {
            let Some(entry) = self.st.locks.get(name) else { return };
            let Some((_, id)) = entry.head() else { break };
            match self.lock_waiter_ready(id) {
                Ready::Grant => self.lock_grant_waiter(id),
                Ready::Gone => continue,
                Ready::Blocked => break,
            }
        }
        if self.st.locks.get(name).is_some_and(LockEntry::is_empty) {
            self.st.locks.remove(name);
        }
    }

    fn lock_waiter_ready(&mut self, id: u64) -> Ready {
        if !self.waiter_alive(id) {
            return Ready::Gone;
        }
        let WaiterKind::Lock { names, mode, slot: queue_slot, .. } = &self.st.waiters[&id].kind else {
            panic!("lock queues hold lock waiters")
        };
        let (names, mode, queue_slot) = (names.clone(), *mode, *queue_slot);
        for name in &names {
            self.lock_expire_due(name);
        }
        for name in &names {
            let entry = &self.st.locks[name];
            if entry.head() != Some(queue_slot) || !entry.admits(mode) {
                return Ready::Blocked;
            }
        }
        Ready::Grant
    }

    fn lock_grant_waiter(&mut self, id: u64) {
        let waiter = self.waiter_take(id);
        let WaiterKind::Lock { names, ident, mode, ttl_ms, slot: queue_slot } = waiter.kind else {
            panic!("lock waiter")
        };
        for name in &names {
            self.lock_queue_remove(name, queue_slot);
        }
        let fence = self.next_fence();
        let grant = self.lock_install(&names, ident, mode, ttl_ms, waiter.session, fence);
        self.emit(Event::Granted { waiter: id, grant });
        for name in names {
            self.mark(Dirty::Lock(name));
        }
    }

    fn lock_by_token(&self, name: &[u8], token: &[u8]) -> Option<&Holder> {
        let entry = self.st.locks.get(name)?;
        entry.holders().iter().find(|h| h.token() == token && !self.is_due(h.deadline_ms))
    }

    fn lock_holder(&self, name: &Name, fence: u64) -> &Holder {
        let entry = &self.st.locks[name];
        entry.holders().iter().find(|h| h.fence == fence).expect("holder exists")
    }

    fn lock_holder_mut(&mut self, name: &Name, fence: u64) -> &mut Holder {
        let entry = self.st.locks.get_mut(name).expect("lock exists");
        entry.holders_mut().iter_mut().find(|h| h.fence == fence).expect("holder exists")
    }

    /// The fence of the newest live holder of a lock.
    pub(crate) fn lock_fence(&self, name: &[u8]) -> Option<u64> {
        let entry = self.st.locks.get(name)?;
        entry.holders().iter().filter(|h| !self.is_due(h.deadline_ms)).map(|h| h.fence).max()
    }

    pub(crate) fn lock_info(&self, name: &[u8]) -> LockInfo {
        let Some(entry) = self.st.locks.get(name) else {
            return LockInfo { mode: None, holders: Vec::new(), waiters: 0 };
        };
        let holders: Vec<HolderInfo> = entry
            .holders()
            .iter()
            .filter(|h| !self.is_due(h.deadline_ms))
            .map(|h| HolderInfo {
                owner: Bytes::copy_from_slice(h.owner()),
                fence: h.fence,
                holds: h.holds,
                ttl_ms: self.remaining(h.deadline_ms),
                session: (h.session != 0).then_some(h.session),
                metadata: Bytes::copy_from_slice(h.metadata()),
            })
            .collect();
        let mode = if holders.is_empty() { None } else { entry.mode() };
        LockInfo { mode, holders, waiters: entry.queue_len() as u64 }
    }

    fn condition_holds(&self, condition: &Condition) -> bool {
        match condition {
            Condition::KeyEquals { key, value } => self.key_string(key) == value.as_deref(),
            Condition::FenceEquals { name, fence } => {
                let current = match self.read(&crate::Command::Fence { name: name.clone() }) {
                    Ok(Reply::Int(f)) => f as u64,
                    _ => 0,
                };
                current == *fence
            }
        }
    }
}
