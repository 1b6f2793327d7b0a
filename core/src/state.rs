//! The state machine: tables, the replicated clock, the deadline index, and `apply`.
//!
//! ```text
//!   apply(index, stamp, cmd)
//!     1. clock   <- max(clock, stamp + offset)        (Rebase resets offset)
//!     2. expire  everything in `deadlines` due at clock (bounded per entry)
//!     3. dispatch cmd: validate fully, then mutate; mutations mark names dirty
//!     4. pump    dirty names: grant queued waiters that became grantable
//!     5. return  reply + events (grants, expiries, revocations, changes)
//! ```
//!
//! Every container is ordered (`BTreeMap`, `VecDeque`, and for the tables that grow
//! with use the persistent `imbl::OrdMap` / `OrdSet`, which `freeze` shares), so two
//! replicas that apply the same log iterate in the same order and serialize identical
//! bytes.

use std::borrow::Borrow;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::command::{Command, Event, GroupOutput, Output, Reply, SessionId, WaitEnd, WaiterId};
use crate::error::{over, Error, Result};
use crate::limits::{Limit, Limits};
use crate::name::Name;

/// A deadline that never comes (no TTL).
pub(crate) const NEVER: u64 = u64::MAX;

/// What a deadline in the index refers to. Holder and permit timers name only the
/// lock or semaphore: holders of one name that share a deadline share the timer, and
/// firing it expires every due holder of that name. Leaving the fence out keeps an
/// index entry at 32 bytes instead of 40, a million times over.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Timer {
    Holder(Name),
    Permit(Name),
    Leader(Name),
    Session(SessionId),
    Waiter(WaiterId),
    Key(Name),
}

/// A resource that ends with the session owning it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Owned {
    Holder {
        name: Name,
        fence: u64,
    },
    Permit {
        name: Name,
        fence: u64,
    },
    Leader {
        name: Name,
        fence: u64,
    },
    Waiter(WaiterId),
    Key(Name),
    Item {
        name: Name,
        slot: (i64, u64),
    },
    /// A participant inside a double barrier (`BarrierEnterSession`).
    Member {
        name: Name,
        participant: Bytes,
    },
}

/// A name whose waiters may have become grantable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dirty {
    Lock(Name),
    List(Name),
    Semaphore(Name),
    Queue(Name),
    Election(Name),
}

/// Order of a wait queue: higher priority first (negated), then arrival (log index).
pub(crate) type QueueSlot = (i64, WaiterId);

pub(crate) fn slot(priority: i32, id: WaiterId) -> QueueSlot {
    (-i64::from(priority), id)
}

/// Everything that is replicated and snapshotted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// The replicated clock: the largest (rebased) leader stamp applied so far.
    pub clock_ms: u64,
    /// Added to leader stamps since the last `Rebase`.
    pub time_offset_ms: i128,
    pub last_applied: u64,
    pub last_fence: u64,
    #[serde(deserialize_with = "crate::snapshot::ord_map")]
    pub locks: OrdMap<Name, crate::lock::LockEntry>,
    pub waiters: BTreeMap<WaiterId, crate::waiter::Waiter>,
    pub sessions: BTreeMap<SessionId, crate::session::Session>,
    #[serde(deserialize_with = "crate::snapshot::ord_map")]
    pub keys: OrdMap<Name, crate::keyspace::KeyEntry>,
    /// Blocking-pop waiters per list key, in arrival order.
    pub pop_queues: BTreeMap<Name, VecDeque<WaiterId>>,
    pub semaphores: BTreeMap<Name, crate::semaphore::Semaphore>,
    pub counters: BTreeMap<Name, i64>,
    pub queues: BTreeMap<Name, crate::queue::Queue>,
    pub barriers: BTreeMap<Name, crate::barrier::Barrier>,
    pub elections: BTreeMap<Name, crate::election::Election>,
    pub configs: BTreeMap<Name, crate::config::ConfigEntry>,
    /// Every finite deadline, earliest first.
    #[serde(deserialize_with = "crate::snapshot::ord_set")]
    pub deadlines: OrdSet<(u64, Timer)>,
    /// Double-barrier members that a session owns: barrier → participant → session.
    /// Not in the encoding above: a snapshot carries it in a section after the state,
    /// written only when it holds something (`snapshot`), so that a state without it
    /// encodes byte for byte as before and builds that predate it read it.
    #[serde(skip)]
    pub barrier_sessions: BTreeMap<Name, BTreeMap<Bytes, SessionId>>,
    /// Deletes of config keys at versions below this were forgotten
    /// (`Command::ConfigCompact`; 0: none were). In a snapshot section of its own, as
    /// `barrier_sessions`.
    #[serde(skip)]
    pub configs_forgotten_below: u64,
    /// Every config key whose newest version is a delete, by that version: derived
    /// from `configs` (rebuilt on restore, never encoded), so that the leader finds the
    /// oldest deletes without a walk of every key.
    #[serde(skip)]
    pub config_deletes: std::collections::BTreeSet<(u64, Name)>,
}

/// The deterministic lock and coordination state machine.
///
/// It reads no clock and does no I/O: time arrives as the leader's stamp on each
/// entry, and identities that must be unique (fences, sessions, waiters) derive from
/// the log index. Two machines applying the same entries end byte-identical.
#[derive(Debug, Clone)]
pub struct StateMachine {
    pub(crate) limits: Limits,
    pub(crate) st: State,
    /// Log index of the entry being applied (0 outside apply).
    pub(crate) index: u64,
    pub(crate) events: Vec<Event>,
    pub(crate) dirty: Vec<Dirty>,
    /// Set only during `read_at`: the time a read is evaluated at (never before the
    /// replicated clock). Reads never change state, so this is the one field a `&self`
    /// method may set; apply (`&mut self`) never sees it set.
    read_now_ms: std::cell::Cell<Option<u64>>,
    /// Clock and last fence when the current entry began (postcondition checks).
    entry_clock_ms: u64,
    entry_fence: u64,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl StateMachine {
    /// An empty state machine with these limits.
    pub fn new(limits: Limits) -> Self {
        StateMachine {
            limits,
            st: State::default(),
            index: 0,
            events: Vec::new(),
            dirty: Vec::new(),
            read_now_ms: std::cell::Cell::new(None),
            entry_clock_ms: 0,
            entry_fence: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The replicated clock in milliseconds.
    pub fn clock_ms(&self) -> u64 {
        self.st.clock_ms
    }

    /// Index of the last applied entry.
    pub fn last_applied(&self) -> u64 {
        self.st.last_applied
    }

    /// The largest fence granted so far.
    pub fn last_fence(&self) -> u64 {
        self.st.last_fence
    }

    /// The earliest pending deadline in the replicated clock's time base, if any.
    /// The leader turns it into its own clock (`deadline - offset`) to know when to
    /// propose a `Tick`.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.st.deadlines.get_min().map(|(deadline, _)| *deadline)
    }

    /// How the leader's stamps map to the replicated clock since the last `Rebase`:
    /// replicated = stamp + offset.
    pub fn time_offset_ms(&self) -> i128 {
        self.st.time_offset_ms
    }

    /// Apply one committed log entry. `log_index` must exceed every index applied
    /// before; `leader_time_ms` is the proposing leader's monotonic clock reading.
    ///
    /// The command may be lent (`&Command`): the commands applied most (LOCK, UNLOCK,
    /// RENEW) only read theirs, so a caller that keeps the command, as the Raft log
    /// does, needs no copy of it; any other command is copied for its handler.
    pub fn apply<C: Borrow<Command>>(&mut self, log_index: u64, leader_time_ms: u64, command: C) -> Output {
        let command = command.borrow();
        self.begin_entry(log_index, leader_time_ms, matches!(command, Command::Rebase));
        let reply = self.dispatch_lent(command);
        let events = self.end_entry();
        Output { reply, events }
    }

    /// Apply one committed log entry that ends several waits at once (the server's
    /// record of which node queued them says their connections are gone: the node
    /// restarted or left). Waits that already ended are skipped. The reply is how many
    /// ended.
    pub fn apply_cancel_waits(&mut self, log_index: u64, leader_time_ms: u64, waiters: &[WaiterId]) -> Output {
        self.begin_entry(log_index, leader_time_ms, false);
        let mut ended = 0;
        for &waiter in waiters {
            if self.st.waiters.contains_key(&waiter) {
                self.wait_end(waiter, WaitEnd::Cancelled);
                ended += 1;
            }
        }
        let events = self.end_entry();
        Output { reply: Ok(Reply::Int(ended)), events }
    }

    /// Apply one committed log entry that carries several commands: concurrent writes
    /// of different clients that the leader grouped to spend one entry (one log
    /// record, one replication slot, one apply) on all of them. Every command must be
    /// [`Command::is_groupable`]; one that is not is answered `Invalid` and changes
    /// nothing (every replica answers the same, so a bad entry cannot stop them).
    ///
    /// Each command sees the state the ones before it left, exactly as if each were an
    /// entry of its own with the same stamp (what is freed is granted before the next
    /// runs), with one difference: only the entry's first fence can equal its log
    /// index; later ones count up from it.
    pub fn apply_group<C: Borrow<Command>>(
        &mut self,
        log_index: u64,
        leader_time_ms: u64,
        commands: &[C],
    ) -> GroupOutput {
        self.apply_group_with(log_index, leader_time_ms, commands, |member, command| member.command(command.borrow()))
    }

    /// Apply one log entry that carries several writes of any kind `each` can apply
    /// through a [`crate::GroupMember`]: a groupable command, or a script body (all or
    /// nothing, as [`StateMachine::apply_script`]), one member after the other, each
    /// answering on its own. The same rules as [`StateMachine::apply_group`] hold: each
    /// member sees what the ones before it left, what one frees is granted before the
    /// next runs, and one member's failure leaves the others' writes in place.
    pub fn apply_group_with<T, R>(
        &mut self,
        log_index: u64,
        leader_time_ms: u64,
        items: &[T],
        mut each: impl FnMut(&mut crate::GroupMember<'_>, &T) -> R,
    ) -> GroupOutput<R> {
        self.begin_entry(log_index, leader_time_ms, false);
        let mut replies = Vec::with_capacity(items.len());
        for item in items {
            let mut member = crate::script::GroupMember { sm: self };
            replies.push(each(&mut member, item));
            // What this member freed goes to the waiters before the next one runs, as
            // the end of its own entry would have done.
            self.pump();
        }
        let events = self.end_entry();
        assert_eq!(replies.len(), items.len());
        GroupOutput { replies, events }
    }

    /// The part of applying an entry that comes before its command: advance the clock,
    /// expire what is due, grant what that freed.
    pub(crate) fn begin_entry(&mut self, log_index: u64, leader_time_ms: u64, rebase: bool) {
        assert!(log_index > self.st.last_applied, "log index {log_index} not after {}", self.st.last_applied);
        assert!(self.events.is_empty() && self.dirty.is_empty());
        self.entry_clock_ms = self.st.clock_ms;
        self.entry_fence = self.st.last_fence;
        self.index = log_index;
        self.st.last_applied = log_index;
        self.advance_clock(leader_time_ms, rebase);
        self.expire_due();
        self.pump();
    }

    /// The part after the command: grant what it freed, check the entry's
    /// postconditions, hand back the events.
    pub(crate) fn end_entry(&mut self) -> Vec<Event> {
        self.pump();
        assert!(self.dirty.is_empty());
        assert!(self.st.clock_ms >= self.entry_clock_ms, "the replicated clock never goes back");
        assert!(self.st.last_fence >= self.entry_fence, "fences never go back");
        self.index = 0;
        std::mem::take(&mut self.events)
    }

    /// Answer a read-only command from the current state, without a log entry.
    /// Anything whose deadline has passed on the replicated clock reads as gone.
    pub fn read(&self, command: &Command) -> Result<Reply> {
        if !command.is_read_only() {
            return Err(Error::invalid("not a read-only command"));
        }
        self.dispatch_read(command)
    }

    /// Starts a new time base: the leader clock reading `leader_time_ms` is pinned to
    /// the current replicated time, so the time left on every lease is measured from
    /// here on the new leader's clock, never early whatever the two clocks disagree on.
    ///
    /// The Raft adapter calls this before the first entry of every new leader term (all
    /// replicas see the same terms at the same indexes, so all rebase at the same point);
    /// `Command::Rebase` does the same from the log.
    pub fn rebase(&mut self, leader_time_ms: u64) {
        self.st.time_offset_ms = i128::from(self.st.clock_ms) - i128::from(leader_time_ms);
    }

    /// Like `read`, with remaining TTLs shown at `now_ms` on the replicated time base
    /// (the leader's clock now, say) instead of the last applied stamp, so they count
    /// down between writes, to 0. What has expired is still decided at the replicated
    /// clock: an expiry a read reports must be one the log holds, or a later read (on a
    /// follower, or on the next leader, whose time starts where the log left it) would
    /// see the key, lock or session alive again. Never earlier than the replicated
    /// clock: a read cannot make anything look younger than the log says.
    pub fn read_at(&self, command: &Command, now_ms: u64) -> Result<Reply> {
        let previous = self.read_now_ms.replace(Some(now_ms.max(self.st.clock_ms)));
        let reply = self.read(command);
        self.read_now_ms.set(previous);
        reply
    }

    fn advance_clock(&mut self, leader_time_ms: u64, rebase: bool) {
        if rebase {
            self.rebase(leader_time_ms);
        }
        let stamped = i128::from(leader_time_ms) + self.st.time_offset_ms;
        let stamped = stamped.clamp(0, i128::from(NEVER - 1)) as u64;
        self.st.clock_ms = self.st.clock_ms.max(stamped);
    }

    pub(crate) fn now(&self) -> u64 {
        self.read_now_ms.get().unwrap_or(self.st.clock_ms)
    }

    /// Deadline of a lease of `ttl_ms` granted now; 0 means no deadline.
    pub(crate) fn deadline_after(&self, ttl_ms: u64) -> u64 {
        if ttl_ms == 0 {
            NEVER
        } else {
            self.now().saturating_add(ttl_ms).min(NEVER - 1)
        }
    }

    /// Remaining milliseconds of a deadline (None: no deadline).
    pub(crate) fn remaining(&self, deadline_ms: u64) -> Option<u64> {
        (deadline_ms != NEVER).then(|| deadline_ms.saturating_sub(self.now()))
    }

    /// Whether a deadline has passed on the replicated clock (also during `read_at`,
    /// which only shows TTLs at a later time). Strictly after, as Redis's `now > when`:
    /// the clock is whole milliseconds, and a lease granted late in millisecond `t` with
    /// a TTL of `ttl_ms` must not end before `ttl_ms` real milliseconds have gone by, so
    /// it still holds during millisecond `t + ttl_ms` and ends in the next one.
    pub(crate) fn is_due(&self, deadline_ms: u64) -> bool {
        deadline_ms != NEVER && deadline_ms < self.st.clock_ms
    }

    /// The next fencing token: strictly above every fence before, and equal to the log
    /// index when this entry grants only once (the usual case), so a fence also says
    /// where in the log the grant happened.
    pub(crate) fn next_fence(&mut self) -> u64 {
        let fence = (self.st.last_fence + 1).max(self.index);
        assert!(fence > self.st.last_fence);
        self.st.last_fence = fence;
        fence
    }

    pub(crate) fn schedule(&mut self, deadline_ms: u64, timer: Timer) {
        if deadline_ms != NEVER {
            let replaced = self.st.deadlines.insert((deadline_ms, timer));
            assert!(replaced.is_none(), "a timer is scheduled once");
        }
    }

    /// Schedules a timer that several holders of one name may share.
    pub(crate) fn schedule_shared(&mut self, deadline_ms: u64, timer: Timer) {
        if deadline_ms != NEVER {
            self.st.deadlines.insert((deadline_ms, timer));
        }
    }

    /// Drops a shared timer once no holder of its name uses that deadline any more.
    pub(crate) fn unschedule_shared(&mut self, deadline_ms: u64, timer: Timer, still_used: bool) {
        if !still_used {
            self.unschedule(deadline_ms, timer);
        }
    }

    pub(crate) fn unschedule(&mut self, deadline_ms: u64, timer: Timer) {
        if deadline_ms != NEVER {
            let removed = self.st.deadlines.remove(&(deadline_ms, timer));
            assert!(removed.is_some(), "an unscheduled timer was scheduled");
        }
    }

    pub(crate) fn emit(&mut self, event: Event) {
        self.events.push(event);
    }

    pub(crate) fn mark(&mut self, dirty: Dirty) {
        self.dirty.push(dirty);
    }

    /// Checks an owner, token or participant identity.
    pub(crate) fn check_owner(&self, bytes: &[u8]) -> Result<()> {
        let max = self.limits.owner_bytes_max;
        if bytes.len() > max || bytes.len() > usize::from(u16::MAX) {
            return Err(over(Limit::OwnerBytes, max as u64));
        }
        Ok(())
    }

    /// Checks a lock, key or other resource name.
    pub(crate) fn check_key(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.limits.key_bytes_max {
            return Err(over(Limit::KeyBytes, self.limits.key_bytes_max as u64));
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.limits.value_bytes_max {
            return Err(over(Limit::ValueBytes, self.limits.value_bytes_max as u64));
        }
        Ok(())
    }

    /// Checks a lease TTL; `allow_zero` for leases a session keeps alive instead.
    pub(crate) fn check_ttl(&self, ttl_ms: u64, allow_zero: bool) -> Result<()> {
        if ttl_ms > self.limits.ttl_ms_max {
            return Err(over(Limit::TtlMs, self.limits.ttl_ms_max));
        }
        if ttl_ms == 0 && !allow_zero {
            return Err(Error::invalid("ttl must be positive (or 0 with a session)"));
        }
        Ok(())
    }

    /// Checks a wait bound.
    pub(crate) fn check_wait(&self, wait_ms: Option<u64>) -> Result<()> {
        match wait_ms {
            Some(ms) if ms > self.limits.ttl_ms_max => Err(over(Limit::TtlMs, self.limits.ttl_ms_max)),
            _ => Ok(()),
        }
    }

    /// Refuses a new lock name or key when the tables are full.
    pub(crate) fn check_entries(&self, adding: usize) -> Result<()> {
        let st = &self.st;
        // Every named table counts: a loop creating counters or queues under new names
        // must meet the bound as keys do.
        let used = st.keys.len()
            + st.locks.len()
            + st.configs.len()
            + st.semaphores.len()
            + st.counters.len()
            + st.queues.len()
            + st.barriers.len()
            + st.elections.len();
        if used + adding > self.limits.entries_max {
            return Err(over(Limit::Entries, self.limits.entries_max as u64));
        }
        Ok(())
    }

    /// Expires what is due at the clock, at most `expirations_per_apply_max` of it.
    /// Whatever is left reads as expired and is expired on access or by the next entry.
    ///
    /// A session's expiry counts as one expiration per thing it owns as well: one
    /// session can own up to `locks_per_session_max` resources, and 100,000 sessions
    /// ending together would otherwise release a billion of them in one apply.
    fn expire_due(&mut self) {
        let now = self.now();
        let mut budget = self.limits.expirations_per_apply_max;
        while budget > 0 {
            let Some((deadline, timer)) = self.st.deadlines.get_min().cloned() else { return };
            if deadline >= now {
                return;
            }
            let cost = match &timer {
                Timer::Session(id) => 1 + self.st.sessions.get(id).map_or(0, |s| s.owned.len()),
                _ => 1,
            };
            self.fire(timer.clone());
            assert!(!self.st.deadlines.contains(&(deadline, timer)), "firing a timer removes it");
            budget = budget.saturating_sub(cost);
        }
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Holder(name) => {
                self.lock_expire_due(&name);
            }
            Timer::Permit(name) => self.semaphore_expire_due(&name),
            Timer::Leader(name) => self.election_expire_due(&name),
            Timer::Session(id) => self.session_end(id, true),
            Timer::Waiter(id) => self.wait_end(id, WaitEnd::TimedOut),
            Timer::Key(name) => self.key_expire_if_due(&name),
        }
    }

    /// Grants every waiter that became grantable. Terminates because each round either
    /// removes a dirty name or grants (and so removes) a waiter, and a grant marks at
    /// most group-size names dirty.
    pub(crate) fn pump(&mut self) {
        while let Some(dirty) = self.dirty.pop() {
            match dirty {
                Dirty::Lock(name) => self.lock_pump(&name),
                Dirty::List(name) => self.list_pump(&name),
                Dirty::Semaphore(name) => self.semaphore_pump(&name),
                Dirty::Queue(name) => self.queue_pump(&name),
                Dirty::Election(name) => self.election_pump(&name),
            }
        }
    }

    /// `dispatch` for a lent command: the handlers that only read their command take
    /// it as it is; the others get a copy.
    pub(crate) fn dispatch_lent(&mut self, command: &Command) -> Result<Reply> {
        match command {
            Command::Lock(request) => self.lock_acquire(request),
            Command::Unlock { names, token } => self.lock_release(names, token),
            Command::Renew { names, token, ttl_ms } => self.lock_renew(names, token, *ttl_ms),
            other => self.dispatch(other.clone()),
        }
    }

    pub(crate) fn dispatch(&mut self, command: Command) -> Result<Reply> {
        if command.is_read_only() {
            return self.dispatch_read(&command);
        }
        match command {
            Command::Tick | Command::Rebase => Ok(Reply::Ok),
            Command::Lock(request) => self.lock_acquire(&request),
            Command::Unlock { names, token } => self.lock_release(&names, &token),
            Command::LockWithdraw { names, token } => self.lock_withdraw(&names, &token),
            Command::Renew { names, token, ttl_ms } => self.lock_renew(&names, &token, ttl_ms),
            Command::CancelWait { waiter } => {
                if !self.st.waiters.contains_key(&waiter) {
                    return Err(Error::NoSuchWaiter(waiter));
                }
                self.wait_end(waiter, WaitEnd::Cancelled);
                Ok(Reply::Ok)
            }
            Command::SessionOpen { ttl_ms } => self.session_open(ttl_ms),
            Command::SessionKeepAlive { session, ttl_ms } => self.session_keep_alive(session, ttl_ms),
            Command::SessionClose { session } => self.session_close(session),
            Command::Set(request) => self.key_set(request),
            Command::Del { keys } => self.key_del(&keys),
            Command::PExpire { key, ttl_ms } => self.key_pexpire(&key, ttl_ms),
            Command::Persist { key } => self.key_persist(&key),
            Command::IncrBy { key, delta } => self.key_incr_by(&key, delta),
            Command::HSet { key, pairs } => self.hash_set(&key, pairs),
            Command::HDel { key, fields } => self.hash_del(&key, &fields),
            Command::HIncrBy { key, field, delta } => self.hash_incr_by(&key, field, delta),
            Command::Push { key, values, left } => self.list_push(&key, values, left),
            Command::Pop { key, count, left } => self.list_pop(&key, count, left),
            Command::BlockingPop { keys, wait_ms, left } => self.list_blocking_pop(&keys, wait_ms, left),
            Command::Publish { channel, message } => {
                self.check_key(&channel)?;
                self.check_value(&message)?;
                self.emit(Event::Published { channel, message });
                Ok(Reply::Int(0))
            }
            Command::SemAcquire(request) => self.semaphore_acquire(request),
            Command::SemRelease { name, token } => self.semaphore_release(&name, &token),
            Command::SemRenew { name, token, ttl_ms } => self.semaphore_renew(&name, &token, ttl_ms),
            Command::CounterAdd { name, delta } => self.counter_add(&name, delta),
            Command::QueuePush { name, values, priority, session } => self.queue_push(&name, values, priority, session),
            Command::QueuePop { name, wait } => self.queue_pop(&name, wait),
            Command::BarrierWait { name, parties, participant, wait_ms } => {
                self.barrier_wait(&name, parties, participant, wait_ms)
            }
            Command::BarrierEnter { name, parties, participant, wait_ms } => {
                self.barrier_enter(&name, parties, participant, wait_ms)
            }
            Command::BarrierEnterSession { name, parties, participant, wait_ms, session } => {
                self.barrier_enter_session(&name, parties, participant, wait_ms, session)
            }
            Command::BarrierLeave { name, participant, wait_ms } => self.barrier_leave(&name, &participant, wait_ms),
            Command::PutBack { key, value, to } => self.put_back(&key, value, to),
            Command::ConfigCompact { below } => Ok(self.config_compact(below)),
            Command::Campaign(request) => self.election_campaign(request),
            Command::Proclaim { name, token, value } => self.election_proclaim(&name, &token, value),
            Command::Resign { name, token } => self.election_resign(&name, &token),
            Command::ElectionRenew { name, token, ttl_ms } => self.election_renew(&name, &token, ttl_ms),
            Command::Transfer { name, token, to } => self.election_transfer(&name, &token, &to),
            Command::ConfigSet { key, value, if_version } => self.config_set(&key, value, if_version),
            Command::ConfigDel { key, if_version } => self.config_del(&key, if_version),
            // Every read-only variant returned above.
            _ => Err(Error::invalid("unhandled command")),
        }
    }

    fn dispatch_read(&self, command: &Command) -> Result<Reply> {
        match command {
            Command::Fence { name } => Ok(self.fence_of(name)),
            Command::LockInfo { name } => Ok(Reply::Info(self.lock_info(name))),
            Command::SessionInfo { session } => self.session_info(*session),
            Command::Get { key } => self.key_get(key),
            Command::Exists { keys } => Ok(self.key_exists(keys)),
            Command::PTtl { key } => Ok(self.key_pttl(key)),
            Command::Keys { pattern } => Ok(self.key_keys(pattern)),
            Command::Scan { after, pattern, count, kind } => {
                Ok(self.key_scan(after.as_ref(), pattern.as_ref(), *count, kind.as_ref()))
            }
            Command::Type { key } => Ok(self.key_type(key)),
            Command::DbSize => Ok(Reply::Int(self.key_count() as i64)),
            Command::HGet { key, field } => self.hash_get(key, field),
            Command::HExists { key, field } => self.hash_exists(key, field),
            Command::HGetAll { key } => self.hash_get_all(key),
            Command::SemInfo { name } => Ok(self.semaphore_info(name)),
            Command::CounterGet { name } => Ok(Reply::Int(self.st.counters.get(name.as_ref()).copied().unwrap_or(0))),
            Command::QueueLen { name } => {
                Ok(Reply::Int(self.st.queues.get(name.as_ref()).map_or(0, |q| q.items.len()) as i64))
            }
            Command::Leader { name } => Ok(self.election_leader(name)),
            Command::ConfigGet { key, at } => self.config_get(key, *at),
            Command::ConfigHistory { key } => Ok(self.config_history(key)),
            Command::ConfigList { prefix, after, count } => {
                Ok(self.config_list(prefix, after.as_ref(), *count as usize))
            }
            _ => Err(Error::invalid("not a read-only command")),
        }
    }

    /// FENCE: the fence of a held lock (the newest holder's, for shared), else the
    /// fence a live key got when SET NX created it.
    fn fence_of(&self, name: &Bytes) -> Reply {
        if let Some(fence) = self.lock_fence(name) {
            return Reply::Int(fence as i64);
        }
        match self.key_live(name) {
            Some(entry) if entry.fence > 0 => Reply::Int(entry.fence as i64),
            _ => Reply::Nil,
        }
    }
}
