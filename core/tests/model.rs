//! Model-based property tests of the lock table, sessions and time.
//!
//! Random sequences of lock, session and clock commands are applied to the real
//! [`StateMachine`] and, step by step, to [`Model`]: a deliberately naive reference
//! that keeps holders, waiters and sessions in plain vectors and maps and recomputes
//! everything from scratch at each entry (a full sweep of what is due, then a full
//! fixpoint over every queued waiter), so that it can be checked by reading it.
//!
//! After every entry:
//! - `check_invariants()` holds;
//! - the reply, the events (compared as sets; where both a lease and its session ran
//!   out in the same sweep, either `Expired` or `Revoked` is accepted, and likewise
//!   `TimedOut` or `SessionEnded`), lock info, session info, the clock and the next
//!   deadline all agree with the model;
//! - [`History`], which is built only from the core's replies and events (never from
//!   the model), keeps the safety properties over the whole run: one writer or only
//!   readers per name, fences strictly increasing in grant order (reentrant grants
//!   keep theirs), grants from a queue in (priority desc, arrival asc) order, every
//!   queued waiter ending exactly once, nothing expiring before its deadline, and no
//!   waiter of an ended session ever granted (etcd #11456).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use fencelock_core::{
    Command, Error, Event, HolderInfo, LockInfo, LockMode, LockRequest, Output, Reply, StateMachine, Wait, WaitEnd,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

const NAMES: [&str; 3] = ["n0", "n1", "n2"];
const OWNERS: u8 = 5;
/// The core's "no deadline".
const NEVER: u64 = u64::MAX;
const START_MS: u64 = 1_000;
/// Ids at or above this were never produced by any entry.
const BOGUS_ID: u64 = 1_000_000;
/// Generated priorities are MIN_PRIORITY..=1.
const MIN_PRIORITY: i32 = -1;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn name_bytes(n: usize) -> Bytes {
    Bytes::from_static(NAMES[n].as_bytes())
}

fn name_index(name: &[u8]) -> Result<usize, String> {
    NAMES.iter().position(|n| n.as_bytes() == name).ok_or_else(|| format!("event names unknown lock {name:?}"))
}

fn owner_bytes(owner: u8) -> Bytes {
    Bytes::from(format!("o{owner}"))
}

/// Each owner has one token; a "bad" token is another string for the same owner.
fn token_bytes(owner: u8, bad: bool) -> Bytes {
    Bytes::from(format!("{}{owner}", if bad { "x" } else { "t" }))
}

/// Queue order: higher priority first, then arrival (the waiter id is the log index).
fn slot(priority: i32, id: u64) -> (i64, u64) {
    (-i64::from(priority), id)
}

/// Deadline of a lease of `ttl_ms` granted at `clock` (0: no deadline).
fn after(clock: u64, ttl_ms: u64) -> u64 {
    if ttl_ms == 0 {
        NEVER
    } else {
        clock + ttl_ms
    }
}

/// A group's names in canonical order: sorted, no repeats.
fn canonical(names: &[usize]) -> Vec<usize> {
    let set: BTreeSet<usize> = names.iter().copied().collect();
    set.into_iter().collect()
}

// ---------------------------------------------------------------------------------
// Generated operations. They name sessions and waiters by a pick into the ids seen so
// far, resolved when the step runs, so that shrinking (which drops steps) keeps them
// meaningful.

#[derive(Debug, Clone, Copy)]
enum Names {
    One(usize),
    /// Two distinct names, in the order the client gave them.
    Two(usize, usize),
}

impl Names {
    fn list(self) -> Vec<usize> {
        match self {
            Names::One(a) => vec![a],
            Names::Two(a, b) => vec![a, b],
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        names: Names,
        owner: u8,
        bad_token: bool,
        shared: bool,
        ttl_ms: u64,
        session: Option<u8>,
        /// None: try; Some((wait bound, priority)): queue.
        wait: Option<(Option<u64>, i32)>,
    },
    Release {
        names: Names,
        owner: u8,
        bad_token: bool,
    },
    Renew {
        names: Names,
        owner: u8,
        ttl_ms: u64,
    },
    Cancel {
        pick: u8,
    },
    Open {
        ttl_ms: u64,
    },
    KeepAlive {
        pick: u8,
        ttl_ms: Option<u64>,
    },
    Close {
        pick: u8,
    },
    Tick {
        jump_ms: u64,
    },
}

#[derive(Debug, Clone)]
struct Step {
    /// Change of the leader stamp before this entry (may go back: the clock must not).
    dt_ms: i64,
    op: Op,
}

fn names_strategy(n_names: usize) -> impl Strategy<Value = Names> {
    prop_oneof![
        3 => (0..n_names).prop_map(Names::One),
        1 => (0..n_names, 1..n_names).prop_map(move |(a, d)| Names::Two(a, (a + d) % n_names)),
    ]
}

/// 0 (session-bound; refused without a session), short, or long.
fn lease_ttl() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 3 => 50u64..1_000, 3 => 1_000u64..20_000]
}

fn session_ttl() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 3 => 200u64..2_000, 6 => 2_000u64..20_000]
}

fn op_strategy(n_names: usize) -> impl Strategy<Value = Op> {
    let wait = prop::option::weighted(
        0.6,
        (prop_oneof![2 => Just(None), 1 => Just(Some(0u64)), 4 => (20u64..3_000).prop_map(Some)], MIN_PRIORITY..=1),
    );
    let acquire = (
        names_strategy(n_names),
        0..OWNERS,
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.35),
        lease_ttl(),
        prop::option::weighted(0.4, any::<u8>()),
        wait,
    )
        .prop_map(|(names, owner, bad_token, shared, ttl_ms, session, wait)| Op::Acquire {
            names,
            owner,
            bad_token,
            shared,
            ttl_ms,
            session,
            wait,
        });
    prop_oneof![
        40 => acquire,
        15 => (names_strategy(n_names), 0..OWNERS, prop::bool::weighted(0.1))
            .prop_map(|(names, owner, bad_token)| Op::Release { names, owner, bad_token }),
        8 => (names_strategy(n_names), 0..OWNERS, lease_ttl())
            .prop_map(|(names, owner, ttl_ms)| Op::Renew { names, owner, ttl_ms }),
        6 => any::<u8>().prop_map(|pick| Op::Cancel { pick }),
        5 => session_ttl().prop_map(|ttl_ms| Op::Open { ttl_ms }),
        6 => (any::<u8>(), prop::option::weighted(0.5, session_ttl()))
            .prop_map(|(pick, ttl_ms)| Op::KeepAlive { pick, ttl_ms }),
        4 => any::<u8>().prop_map(|pick| Op::Close { pick }),
        10 => prop_oneof![1 => Just(0u64), 1 => 0u64..1_000, 1 => 1_000u64..25_000]
            .prop_map(|jump_ms| Op::Tick { jump_ms }),
    ]
}

fn step_strategy(n_names: usize) -> impl Strategy<Value = Step> {
    let dt = prop_oneof![24 => 0i64..40, 4 => -40i64..0, 1 => 500i64..6_000];
    (dt, op_strategy(n_names)).prop_map(|(dt_ms, op)| Step { dt_ms, op })
}

/// An operation with concrete ids and bytes.
#[derive(Debug, Clone)]
enum ROp {
    Acquire {
        names: Vec<usize>,
        owner: u8,
        token: Bytes,
        mode: LockMode,
        ttl_ms: u64,
        session: Option<u64>,
        wait: Wait,
    },
    Release {
        names: Vec<usize>,
        token: Bytes,
    },
    Renew {
        names: Vec<usize>,
        token: Bytes,
        ttl_ms: u64,
    },
    Cancel(u64),
    Open(u64),
    KeepAlive(u64, Option<u64>),
    Close(u64),
    Tick,
}

impl ROp {
    fn command(&self) -> Command {
        let bytes = |names: &[usize]| names.iter().map(|&n| name_bytes(n)).collect::<Vec<_>>();
        match self {
            ROp::Acquire { names, owner, token, mode, ttl_ms, session, wait } => Command::Lock(LockRequest {
                names: bytes(names),
                owner: owner_bytes(*owner),
                token: token.clone(),
                mode: *mode,
                ttl_ms: *ttl_ms,
                session: *session,
                metadata: Bytes::new(),
                wait: *wait,
                condition: None,
                idempotent: false,
            }),
            ROp::Release { names, token } => Command::Unlock { names: bytes(names), token: token.clone() },
            ROp::Renew { names, token, ttl_ms } => {
                Command::Renew { names: bytes(names), token: token.clone(), ttl_ms: *ttl_ms }
            }
            ROp::Cancel(waiter) => Command::CancelWait { waiter: *waiter },
            ROp::Open(ttl_ms) => Command::SessionOpen { ttl_ms: *ttl_ms },
            ROp::KeepAlive(session, ttl_ms) => Command::SessionKeepAlive { session: *session, ttl_ms: *ttl_ms },
            ROp::Close(session) => Command::SessionClose { session: *session },
            ROp::Tick => Command::Tick,
        }
    }
}

/// A session opened so far (live or not; half the time one of the last two), or now
/// and then one that never was.
fn pick_session(opened: &[u64], pick: u8) -> u64 {
    let span = if pick % 2 == 0 { opened.len().min(2) } else { opened.len() + 1 };
    let k = usize::from(pick / 2) % span.max(1);
    match opened.len().checked_sub(k + 1) {
        Some(at) => opened[at],
        None => BOGUS_ID + u64::from(pick),
    }
}

/// A waiter queued so far: half the time one of the last few (likely still waiting).
fn pick_waiter(queued: &[u64], pick: u8) -> u64 {
    if queued.is_empty() {
        return BOGUS_ID + u64::from(pick);
    }
    let span = if pick % 2 == 0 { queued.len().min(3) } else { queued.len() };
    queued[queued.len() - 1 - usize::from(pick / 2) % span]
}

// ---------------------------------------------------------------------------------
// The naive reference model.

#[derive(Debug, Clone)]
struct MHolder {
    owner: u8,
    token: Bytes,
    mode: LockMode,
    fence: u64,
    holds: u32,
    deadline: u64,
    session: u64,
}

#[derive(Debug, Clone)]
struct MWaiter {
    id: u64,
    names: Vec<usize>,
    owner: u8,
    token: Bytes,
    mode: LockMode,
    ttl_ms: u64,
    session: u64,
    priority: i32,
    deadline: u64,
}

#[derive(Debug, Clone)]
struct MSession {
    ttl_ms: u64,
    deadline: u64,
}

#[derive(Debug, Clone)]
struct Model {
    clock: u64,
    /// Per name, holders in the order they were granted.
    holders: Vec<Vec<MHolder>>,
    /// Everyone waiting, in no particular order.
    waiters: Vec<MWaiter>,
    sessions: BTreeMap<u64, MSession>,
}

/// The reply the model predicts.
#[derive(Debug)]
enum MReply {
    /// A fresh grant: its fence is whatever the core picked (History checks fences).
    NewGrant {
        holds: u32,
        deadline: u64,
    },
    Grant {
        fence: u64,
        holds: u32,
        deadline: u64,
    },
    Queued(u64),
    Int(i64),
    Ok,
    /// `Error::Invalid`, whatever its text.
    Invalid,
    Err(Error),
}

/// Why a holder may leave in a sweep: both are right when both ran out.
#[derive(Debug, Clone, Copy)]
struct Removal {
    may_expire: bool,
    may_revoke: Option<u64>,
}

/// What the model predicts one entry produces.
#[derive(Debug, Default)]
struct Expected {
    granted: Vec<u64>,
    ended: Vec<(u64, Vec<WaitEnd>)>,
    released: Vec<(usize, u64)>,
    removed: Vec<(usize, u64, Removal)>,
    sessions_ended: Vec<(u64, bool)>,
}

/// Fences the core chose in this entry; the model decides who is granted, and takes
/// the fence from here (a grant the core did not make is reported as a divergence).
struct Oracle {
    waiter_fences: BTreeMap<u64, u64>,
    reply_fence: Option<u64>,
    /// A dry run (before the core applies the entry): every fence is 0.
    dry: bool,
}

impl Oracle {
    fn of(out: &Output) -> Oracle {
        let waiter_fences = out
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Granted { waiter, grant } => Some((*waiter, grant.fence)),
                _ => None,
            })
            .collect();
        let reply_fence = match &out.reply {
            Ok(Reply::Grant(g)) => Some(g.fence),
            _ => None,
        };
        Oracle { waiter_fences, reply_fence, dry: false }
    }
}

impl Model {
    fn new(n_names: usize) -> Model {
        Model { clock: 0, holders: vec![Vec::new(); n_names], waiters: Vec::new(), sessions: BTreeMap::new() }
    }

    fn queue_len(&self, n: usize) -> usize {
        self.waiters.iter().filter(|w| w.names.contains(&n)).count()
    }

    fn head(&self, n: usize) -> Option<u64> {
        self.waiters.iter().filter(|w| w.names.contains(&n)).min_by_key(|w| slot(w.priority, w.id)).map(|w| w.id)
    }

    fn held_mode(&self, n: usize) -> Option<LockMode> {
        self.holders[n].first().map(|h| h.mode)
    }

    fn admits(&self, n: usize, mode: LockMode) -> bool {
        match self.held_mode(n) {
            None => true,
            Some(held) => held == LockMode::Shared && mode == LockMode::Shared,
        }
    }

    fn apply(&mut self, index: u64, stamp: u64, op: &ROp, oracle: &Oracle) -> Result<(MReply, Expected), String> {
        let mut ex = Expected::default();
        self.clock = self.clock.max(stamp);
        self.sweep(&mut ex);
        self.pump(oracle, &mut ex)?;
        let reply = self.dispatch(index, op, oracle, &mut ex)?;
        self.pump(oracle, &mut ex)?;
        Ok((reply, ex))
    }

    /// Removes everything whose deadline is at or before the clock.
    fn sweep(&mut self, ex: &mut Expected) {
        let now = self.clock;
        let ending: BTreeSet<u64> = self.sessions.iter().filter(|(_, s)| s.deadline < now).map(|(id, _)| *id).collect();
        for (n, holders) in self.holders.iter_mut().enumerate() {
            holders.retain(|h| {
                let expired = h.deadline < now;
                let revoked = ending.contains(&h.session);
                if expired || revoked {
                    let why = Removal { may_expire: expired, may_revoke: revoked.then_some(h.session) };
                    ex.removed.push((n, h.fence, why));
                }
                !(expired || revoked)
            });
        }
        self.waiters.retain(|w| {
            let mut reasons = Vec::new();
            if w.deadline < now {
                reasons.push(WaitEnd::TimedOut);
            }
            if ending.contains(&w.session) {
                reasons.push(WaitEnd::SessionEnded);
            }
            let gone = !reasons.is_empty();
            if gone {
                ex.ended.push((w.id, reasons));
            }
            !gone
        });
        for id in ending {
            self.sessions.remove(&id);
            ex.sessions_ended.push((id, true));
        }
    }

    /// Grants, best queue slot first, any waiter that heads the queue of each of its
    /// names where that name admits its mode, until none does.
    fn pump(&mut self, oracle: &Oracle, ex: &mut Expected) -> Result<(), String> {
        loop {
            let mut order: Vec<usize> = (0..self.waiters.len()).collect();
            order.sort_by_key(|&i| slot(self.waiters[i].priority, self.waiters[i].id));
            let grantable = order.into_iter().find(|&i| {
                let w = &self.waiters[i];
                w.names.iter().all(|&n| self.head(n) == Some(w.id) && self.admits(n, w.mode))
            });
            let Some(i) = grantable else { return Ok(()) };
            let w = self.waiters.remove(i);
            let fence = match oracle.waiter_fences.get(&w.id) {
                Some(fence) => *fence,
                None if oracle.dry => 0,
                None => {
                    return Err(format!("model grants waiter {} ({:?} {:?}), the core does not", w.id, w.mode, w.names))
                }
            };
            let deadline = after(self.clock, w.ttl_ms);
            for &n in &w.names {
                self.holders[n].push(MHolder {
                    owner: w.owner,
                    token: w.token.clone(),
                    mode: w.mode,
                    fence,
                    holds: 1,
                    deadline,
                    session: w.session,
                });
            }
            ex.granted.push(w.id);
        }
    }

    fn end_session(&mut self, id: u64, ex: &mut Expected) {
        self.sessions.remove(&id);
        self.waiters.retain(|w| {
            if w.session == id {
                ex.ended.push((w.id, vec![WaitEnd::SessionEnded]));
            }
            w.session != id
        });
        for (n, holders) in self.holders.iter_mut().enumerate() {
            holders.retain(|h| {
                if h.session == id {
                    ex.removed.push((n, h.fence, Removal { may_expire: false, may_revoke: Some(id) }));
                }
                h.session != id
            });
        }
        ex.sessions_ended.push((id, false));
    }

    /// The first holder of `n` presenting `token`.
    fn by_token(&self, n: usize, token: &Bytes) -> Option<usize> {
        self.holders[n].iter().position(|h| h.token == *token)
    }

    fn dispatch(&mut self, index: u64, op: &ROp, oracle: &Oracle, ex: &mut Expected) -> Result<MReply, String> {
        let clock = self.clock;
        Ok(match op {
            ROp::Tick => MReply::Ok,
            ROp::Acquire { names, owner, token, mode, ttl_ms, session, wait } => {
                let names = canonical(names);
                if *ttl_ms == 0 && session.is_none() {
                    return Ok(MReply::Invalid);
                }
                if let Some(s) = session {
                    if !self.sessions.contains_key(s) {
                        return Ok(MReply::Err(Error::NoSuchSession(*s)));
                    }
                }
                // Is the owner already holding all of them (reentry), some (refused), none?
                let mut free = true;
                let mut held = 0;
                let mut fence = 0;
                for &n in &names {
                    free &= self.queue_len(n) == 0 && self.admits(n, *mode);
                    let Some(h) = self.holders[n].iter().find(|h| h.owner == *owner) else { continue };
                    if h.token != *token {
                        return Ok(MReply::Err(Error::TokenMismatch));
                    }
                    if self.held_mode(n) != Some(*mode)
                        || (held > 0 && h.fence != fence)
                        || h.session != session.unwrap_or(0)
                    {
                        return Ok(MReply::Err(Error::HeldDifferently));
                    }
                    fence = h.fence;
                    held += 1;
                }
                if held == names.len() {
                    let mut last = (0, 0);
                    for &n in &names {
                        let h = self.holders[n].iter_mut().find(|h| h.fence == fence).expect("held");
                        if *ttl_ms != 0 {
                            h.deadline = h.deadline.max(after(clock, *ttl_ms));
                        }
                        h.holds += 1;
                        last = (h.holds, h.deadline);
                    }
                    return Ok(MReply::Grant { fence, holds: last.0, deadline: last.1 });
                }
                if held > 0 {
                    return Ok(MReply::Err(Error::HeldDifferently));
                }
                if free {
                    let fence = oracle.reply_fence.ok_or("model grants the request at once, the core does not")?;
                    let deadline = after(clock, *ttl_ms);
                    for &n in &names {
                        self.holders[n].push(MHolder {
                            owner: *owner,
                            token: token.clone(),
                            mode: *mode,
                            fence,
                            holds: 1,
                            deadline,
                            session: session.unwrap_or(0),
                        });
                    }
                    return Ok(MReply::NewGrant { holds: 1, deadline });
                }
                match *wait {
                    Wait::Queue { wait_ms, priority } if wait_ms != Some(0) => {
                        self.waiters.push(MWaiter {
                            id: index,
                            names,
                            owner: *owner,
                            token: token.clone(),
                            mode: *mode,
                            ttl_ms: *ttl_ms,
                            session: session.unwrap_or(0),
                            priority,
                            deadline: wait_ms.map_or(NEVER, |ms| clock + ms),
                        });
                        MReply::Queued(index)
                    }
                    _ => MReply::Err(Error::Locked),
                }
            }
            ROp::Release { names, token } => {
                let names = canonical(names);
                let mut found = Vec::new();
                for &n in &names {
                    match self.by_token(n, token) {
                        Some(at) => found.push((n, self.holders[n][at].fence)),
                        None => return Ok(MReply::Err(Error::NotHolder { name: NAMES[n].to_string() })),
                    }
                }
                let mut remaining = u32::MAX;
                for (n, fence) in found {
                    let at = self.holders[n].iter().position(|h| h.fence == fence).expect("held");
                    self.holders[n][at].holds -= 1;
                    remaining = remaining.min(self.holders[n][at].holds);
                    if self.holders[n][at].holds == 0 {
                        self.holders[n].remove(at);
                        ex.released.push((n, fence));
                    }
                }
                MReply::Int(i64::from(remaining))
            }
            ROp::Renew { names, token, ttl_ms } => {
                if *ttl_ms == 0 {
                    return Ok(MReply::Invalid);
                }
                let names = canonical(names);
                let mut found = Vec::new();
                for &n in &names {
                    match self.by_token(n, token) {
                        Some(at) => found.push((n, at)),
                        None => return Ok(MReply::Err(Error::NotHolder { name: NAMES[n].to_string() })),
                    }
                }
                let deadline = clock + ttl_ms;
                for &(n, at) in &found {
                    self.holders[n][at].deadline = deadline;
                }
                let (n, at) = found[0];
                let first = &self.holders[n][at];
                MReply::Grant { fence: first.fence, holds: first.holds, deadline }
            }
            ROp::Cancel(id) => match self.waiters.iter().position(|w| w.id == *id) {
                None => MReply::Err(Error::NoSuchWaiter(*id)),
                Some(at) => {
                    self.waiters.remove(at);
                    ex.ended.push((*id, vec![WaitEnd::Cancelled]));
                    MReply::Ok
                }
            },
            ROp::Open(ttl_ms) => {
                if *ttl_ms == 0 {
                    return Ok(MReply::Invalid);
                }
                self.sessions.insert(index, MSession { ttl_ms: *ttl_ms, deadline: clock + ttl_ms });
                MReply::Int(index as i64)
            }
            ROp::KeepAlive(id, ttl_ms) => {
                if *ttl_ms == Some(0) {
                    return Ok(MReply::Invalid);
                }
                let Some(session) = self.sessions.get_mut(id) else {
                    return Ok(MReply::Err(Error::NoSuchSession(*id)));
                };
                session.ttl_ms = ttl_ms.unwrap_or(session.ttl_ms);
                session.deadline = clock + session.ttl_ms;
                MReply::Int(session.ttl_ms as i64)
            }
            ROp::Close(id) => {
                if !self.sessions.contains_key(id) {
                    return Ok(MReply::Err(Error::NoSuchSession(*id)));
                }
                self.end_session(*id, ex);
                MReply::Ok
            }
        })
    }

    fn lock_info(&self, n: usize) -> LockInfo {
        let holders = self.holders[n]
            .iter()
            .map(|h| HolderInfo {
                owner: owner_bytes(h.owner),
                fence: h.fence,
                holds: h.holds,
                ttl_ms: (h.deadline != NEVER).then(|| h.deadline - self.clock),
                session: (h.session != 0).then_some(h.session),
                metadata: Bytes::new(),
            })
            .collect();
        LockInfo { mode: self.held_mode(n), holders, waiters: self.queue_len(n) as u64 }
    }

    fn session_info(&self, id: u64) -> Result<Reply, Error> {
        let Some(s) = self.sessions.get(&id) else { return Err(Error::NoSuchSession(id)) };
        let owned = self.holders.iter().flatten().filter(|h| h.session == id).count()
            + self.waiters.iter().filter(|w| w.session == id).count();
        Ok(Reply::Array(vec![
            Reply::Int(s.ttl_ms as i64),
            Reply::Int((s.deadline - self.clock) as i64),
            Reply::Int(owned as i64),
        ]))
    }

    fn next_deadline(&self) -> Option<u64> {
        let holders = self.holders.iter().flatten().map(|h| h.deadline);
        let waiters = self.waiters.iter().map(|w| w.deadline);
        let sessions = self.sessions.values().map(|s| s.deadline);
        holders.chain(waiters).chain(sessions).filter(|&d| d != NEVER).min()
    }

    /// Compares the core's reply and events with the model's prediction.
    fn compare(&self, reply: &MReply, ex: &Expected, out: &Output) -> Result<(), String> {
        let same = match (reply, &out.reply) {
            (MReply::NewGrant { holds, deadline }, Ok(Reply::Grant(g))) => {
                g.holds == *holds && g.deadline_ms == *deadline
            }
            (MReply::Grant { fence, holds, deadline }, Ok(Reply::Grant(g))) => {
                g.fence == *fence && g.holds == *holds && g.deadline_ms == *deadline
            }
            (MReply::Queued(id), Ok(Reply::Queued(got))) => id == got,
            (MReply::Int(i), Ok(Reply::Int(got))) => i == got,
            (MReply::Ok, Ok(Reply::Ok)) => true,
            (MReply::Invalid, Err(Error::Invalid(_))) => true,
            (MReply::Err(e), Err(got)) => e == got,
            _ => false,
        };
        ensure!(same, "reply: model {reply:?}, core {:?}", out.reply);

        let mut granted = Vec::new();
        let mut ended = Vec::new();
        let mut released = Vec::new();
        let mut removed = Vec::new();
        let mut sessions_ended = Vec::new();
        for event in &out.events {
            match event {
                Event::Granted { waiter, .. } => granted.push(*waiter),
                Event::WaitEnded { waiter, reason } => ended.push((*waiter, *reason)),
                Event::Released { name, fence, .. } => released.push((name_index(name)?, *fence)),
                Event::Expired { name, fence, .. } => removed.push((name_index(name)?, *fence, None)),
                Event::Revoked { name, fence, session, .. } => {
                    removed.push((name_index(name)?, *fence, Some(*session)))
                }
                Event::SessionEnded { session, expired } => sessions_ended.push((*session, *expired)),
                other => return Err(format!("unexpected event {other:?}")),
            }
        }
        granted.sort_unstable();
        let mut want_granted = ex.granted.clone();
        want_granted.sort_unstable();
        ensure!(granted == want_granted, "granted waiters: model {want_granted:?}, core {granted:?}");

        ended.sort_unstable_by_key(|e| e.0);
        let mut want_ended: Vec<_> = ex.ended.iter().collect();
        want_ended.sort_unstable_by_key(|e| e.0);
        let ids = |v: &[(u64, WaitEnd)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
        let want_ids: Vec<u64> = want_ended.iter().map(|e| e.0).collect();
        ensure!(ids(&ended) == want_ids, "ended waits: model {want_ended:?}, core {ended:?}");
        for ((id, reason), (_, allowed)) in ended.iter().zip(&want_ended) {
            ensure!(allowed.contains(reason), "waiter {id} ended {reason:?}, model allows {allowed:?}");
        }

        released.sort_unstable();
        let mut want_released = ex.released.clone();
        want_released.sort_unstable();
        ensure!(released == want_released, "released: model {want_released:?}, core {released:?}");

        removed.sort_unstable();
        let mut want_removed: Vec<_> = ex.removed.iter().collect();
        want_removed.sort_unstable_by_key(|r| (r.0, r.1));
        let keys: Vec<_> = removed.iter().map(|r| (r.0, r.1)).collect();
        let want_keys: Vec<_> = want_removed.iter().map(|r| (r.0, r.1)).collect();
        ensure!(keys == want_keys, "expired or revoked: model {want_removed:?}, core {removed:?}");
        for ((n, fence, revoked), (_, _, why)) in removed.iter().zip(&want_removed) {
            let fine = match revoked {
                None => why.may_expire,
                Some(s) => why.may_revoke == Some(*s),
            };
            ensure!(fine, "{} fence {fence}: core says revoked by {revoked:?}, model allows {why:?}", NAMES[*n]);
        }

        sessions_ended.sort_unstable();
        let mut want_sessions = ex.sessions_ended.clone();
        want_sessions.sort_unstable();
        ensure!(sessions_ended == want_sessions, "ended sessions: model {want_sessions:?}, core {sessions_ended:?}");
        Ok(())
    }

    /// Compares what the core reads back with the model's state.
    fn compare_reads(&self, sm: &StateMachine, opened: &[u64]) -> Result<(), String> {
        ensure!(sm.clock_ms() == self.clock, "clock: model {}, core {}", self.clock, sm.clock_ms());
        for (n, name) in NAMES.iter().enumerate().take(self.holders.len()) {
            let got = sm.read(&Command::LockInfo { name: name_bytes(n) });
            let want = self.lock_info(n);
            ensure!(got == Ok(Reply::Info(want.clone())), "lock info {name}: model {want:?}, core {got:?}");
        }
        for &id in opened {
            let got = sm.read(&Command::SessionInfo { session: id });
            let want = self.session_info(id);
            ensure!(got == want, "session info {id}: model {want:?}, core {got:?}");
        }
        let want = self.next_deadline();
        ensure!(sm.next_deadline_ms() == want, "next deadline: model {want:?}, core {:?}", sm.next_deadline_ms());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The history: safety properties over the whole run, from replies and events only.

#[derive(Debug, Clone)]
struct HHolder {
    mode: LockMode,
    deadline: u64,
    token: Bytes,
    session: u64,
}

#[derive(Debug, Clone)]
struct HWaiter {
    names: Vec<usize>,
    mode: LockMode,
    token: Bytes,
    priority: i32,
    session: u64,
    ttl_ms: u64,
    deadline: u64,
}

#[derive(Debug, Default)]
struct History {
    /// Live grants by (name, fence).
    holders: BTreeMap<(usize, u64), HHolder>,
    /// Waiters queued and not yet granted or ended.
    pending: BTreeMap<u64, HWaiter>,
    /// Waiters granted or ended.
    finished: BTreeSet<u64>,
    /// Every `Reply::Queued` id, in order.
    queued: Vec<u64>,
    /// Open sessions and their deadlines.
    sessions: BTreeMap<u64, u64>,
    /// Every session id ever opened, in order.
    opened: Vec<u64>,
    ended_sessions: BTreeSet<u64>,
    last_fence: u64,
    stats: Stats,
}

/// What a run exercised, to keep the generator honest.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    direct_grants: u64,
    reentrant_grants: u64,
    queued: u64,
    granted_from_queue: u64,
    group_grants_from_queue: u64,
    shared_overlaps: u64,
    timed_out: u64,
    cancelled: u64,
    wait_session_ended: u64,
    released: u64,
    expired: u64,
    revoked: u64,
    sessions_expired: u64,
    renewed: u64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.direct_grants += o.direct_grants;
        self.reentrant_grants += o.reentrant_grants;
        self.queued += o.queued;
        self.granted_from_queue += o.granted_from_queue;
        self.group_grants_from_queue += o.group_grants_from_queue;
        self.shared_overlaps += o.shared_overlaps;
        self.timed_out += o.timed_out;
        self.cancelled += o.cancelled;
        self.wait_session_ended += o.wait_session_ended;
        self.released += o.released;
        self.expired += o.expired;
        self.revoked += o.revoked;
        self.sessions_expired += o.sessions_expired;
        self.renewed += o.renewed;
    }
}

impl History {
    /// Records a grant of `names`, refusing a writer beside anyone or a reader beside a writer.
    fn install(&mut self, names: &[usize], fence: u64, holder: HHolder) -> Result<(), String> {
        for &n in names {
            for ((_, other), h) in self.holders.range((n, 0)..=(n, u64::MAX)) {
                ensure!(
                    holder.mode == LockMode::Shared && h.mode == LockMode::Shared,
                    "{} granted {:?} (fence {fence}) while fence {other} holds it {:?}",
                    NAMES[n],
                    holder.mode,
                    h.mode
                );
                self.stats.shared_overlaps += 1;
            }
            self.holders.insert((n, fence), holder.clone());
        }
        Ok(())
    }

    /// A waiter is granted only when no waiter queued ahead of it on any of its names
    /// is still waiting. `index` (the waiter the current entry queued) is left out: it
    /// was queued after the grants that precede the command in the entry.
    fn check_order(&self, id: u64, w: &HWaiter, index: u64) -> Result<(), String> {
        let mine = slot(w.priority, id);
        for (&other, o) in &self.pending {
            if other == index || !o.names.iter().any(|n| w.names.contains(n)) || slot(o.priority, other) > mine {
                continue;
            }
            let single_exclusive = |x: &HWaiter| x.names.len() == 1 && x.mode == LockMode::Exclusive;
            ensure!(
                !(single_exclusive(w) && single_exclusive(o) && o.names == w.names),
                "FIFO/priority: exclusive waiter {id} (priority {}) granted on {} while exclusive waiter {other} \
                 (priority {}) queued ahead of it still waits",
                w.priority,
                NAMES[w.names[0]],
                o.priority
            );
            return Err(format!(
                "head of line: waiter {id} {:?} {:?} (priority {}) granted while waiter {other} {:?} {:?} \
                 (priority {}) queued ahead of it on a shared name still waits",
                w.mode, w.names, w.priority, o.mode, o.names, o.priority
            ));
        }
        Ok(())
    }

    fn observe(&mut self, index: u64, clock: u64, op: &ROp, out: &Output, core_fence: u64) -> Result<(), String> {
        let fence_before = self.last_fence;
        let mut new_fences: Vec<u64> = Vec::new();
        let mut ended_now = BTreeSet::new();
        let mut must_end = BTreeSet::new();
        let mut cancelled = BTreeSet::new();

        // A waiter queued by this entry: events of this same entry may name it.
        if let Ok(Reply::Queued(id)) = &out.reply {
            let ROp::Acquire { names, mode, token, ttl_ms, session, wait, .. } = op else {
                return Err("Queued reply to a command that does not queue".into());
            };
            let Wait::Queue { wait_ms, priority } = *wait else { return Err("Queued reply to a try-lock".into()) };
            ensure!(*id == index, "waiter id {id} is not the log index {index}");
            ensure!(!self.pending.contains_key(id) && !self.finished.contains(id), "waiter id {id} reused");
            let deadline = wait_ms.map_or(NEVER, |ms| clock + ms);
            let names = canonical(names);
            let session = session.unwrap_or(0);
            let (mode, token, ttl_ms) = (*mode, token.clone(), *ttl_ms);
            self.pending.insert(*id, HWaiter { names, mode, token, priority, session, ttl_ms, deadline });
            self.queued.push(*id);
            self.stats.queued += 1;
        }

        let mut last_event_fence = fence_before;
        for event in &out.events {
            match event {
                Event::Granted { waiter, grant } => {
                    let w = self.pending.remove(waiter).ok_or_else(|| {
                        let why = if self.finished.contains(waiter) { "granted twice" } else { "never queued" };
                        format!("Granted for waiter {waiter}: {why}")
                    })?;
                    self.finished.insert(*waiter);
                    ensure!(
                        w.session == 0 || !self.ended_sessions.contains(&w.session),
                        "etcd #11456: waiter {waiter} granted after its session {} ended",
                        w.session
                    );
                    self.check_order(*waiter, &w, index)?;
                    ensure!(
                        grant.fence > last_event_fence,
                        "fence {} of waiter {waiter} not above the fence before it, {last_event_fence}",
                        grant.fence
                    );
                    last_event_fence = grant.fence;
                    new_fences.push(grant.fence);
                    ensure!(grant.holds == 1, "a waiter's grant has {} holds", grant.holds);
                    let deadline = after(clock, w.ttl_ms);
                    ensure!(
                        grant.deadline_ms == deadline,
                        "waiter {waiter} deadline {} not {deadline}",
                        grant.deadline_ms
                    );
                    self.stats.granted_from_queue += 1;
                    self.stats.group_grants_from_queue += u64::from(w.names.len() > 1);
                    let holder = HHolder { mode: w.mode, deadline, token: w.token.clone(), session: w.session };
                    self.install(&w.names, grant.fence, holder)?;
                }
                Event::WaitEnded { waiter, reason } => {
                    let w = self
                        .pending
                        .remove(waiter)
                        .ok_or_else(|| format!("WaitEnded for waiter {waiter} not waiting"))?;
                    self.finished.insert(*waiter);
                    match reason {
                        WaitEnd::Cancelled => {
                            ensure!(
                                matches!(op, ROp::Cancel(id) if id == waiter),
                                "waiter {waiter} cancelled by {op:?}"
                            );
                            cancelled.insert(*waiter);
                            self.stats.cancelled += 1;
                        }
                        WaitEnd::TimedOut => {
                            ensure!(
                                w.deadline < clock,
                                "waiter {waiter} timed out early: bound {}, clock {clock}",
                                w.deadline
                            );
                            self.stats.timed_out += 1;
                        }
                        WaitEnd::SessionEnded => {
                            ensure!(w.session != 0, "waiter {waiter} without a session ended with one");
                            must_end.insert(w.session);
                            self.stats.wait_session_ended += 1;
                        }
                    }
                }
                Event::Released { name, fence, .. } => {
                    let n = name_index(name)?;
                    self.holders.remove(&(n, *fence)).ok_or_else(|| format!("Released {name:?} {fence}: not held"))?;
                    ensure!(matches!(op, ROp::Release { .. }), "Released by {op:?}");
                    self.stats.released += 1;
                }
                Event::Expired { name, fence, .. } => {
                    let n = name_index(name)?;
                    let h = self
                        .holders
                        .remove(&(n, *fence))
                        .ok_or_else(|| format!("Expired {name:?} {fence}: not held"))?;
                    ensure!(
                        h.deadline < clock,
                        "{name:?} fence {fence} expired early: deadline {}, clock {clock}",
                        h.deadline
                    );
                    self.stats.expired += 1;
                }
                Event::Revoked { name, fence, session, .. } => {
                    let n = name_index(name)?;
                    let h = self
                        .holders
                        .remove(&(n, *fence))
                        .ok_or_else(|| format!("Revoked {name:?} {fence}: not held"))?;
                    ensure!(
                        h.session == *session,
                        "{name:?} fence {fence} of session {} revoked by {session}",
                        h.session
                    );
                    must_end.insert(*session);
                    self.stats.revoked += 1;
                }
                Event::SessionEnded { session, expired } => {
                    let deadline =
                        self.sessions.remove(session).ok_or_else(|| format!("SessionEnded {session}: not open"))?;
                    ensure!(self.ended_sessions.insert(*session), "session {session} ended twice");
                    if *expired {
                        ensure!(
                            deadline < clock,
                            "session {session} expired early: deadline {deadline}, clock {clock}"
                        );
                        self.stats.sessions_expired += 1;
                    } else {
                        ensure!(matches!(op, ROp::Close(s) if s == session), "session {session} closed by {op:?}");
                    }
                    ended_now.insert(*session);
                }
                other => return Err(format!("unexpected event {other:?}")),
            }
        }
        for s in &must_end {
            ensure!(ended_now.contains(s), "holder or waiter of session {s} ended for it, but the session did not end");
        }

        match (op, &out.reply) {
            (ROp::Acquire { names, token, mode, ttl_ms, session, .. }, Ok(Reply::Grant(g))) => {
                let names = canonical(names);
                if g.fence > fence_before && !new_fences.contains(&g.fence) {
                    ensure!(g.holds == 1, "a fresh grant has {} holds", g.holds);
                    let deadline = after(clock, *ttl_ms);
                    ensure!(g.deadline_ms == deadline, "grant deadline {} not {deadline}", g.deadline_ms);
                    new_fences.push(g.fence);
                    self.stats.direct_grants += 1;
                    let holder = HHolder { mode: *mode, deadline, token: token.clone(), session: session.unwrap_or(0) };
                    self.install(&names, g.fence, holder)?;
                } else {
                    // Reentrant: the very fence it holds on every name, under this token.
                    let mut last = 0;
                    for &n in &names {
                        let h = self.holders.get_mut(&(n, g.fence)).ok_or_else(|| {
                            format!("reentrant grant returned fence {} which does not hold {}", g.fence, NAMES[n])
                        })?;
                        ensure!(h.token == *token && h.mode == *mode, "reentrant grant to another token or mode");
                        if *ttl_ms != 0 {
                            h.deadline = h.deadline.max(after(clock, *ttl_ms));
                        }
                        last = h.deadline;
                    }
                    ensure!(g.deadline_ms == last, "reentrant grant deadline {} not {last}", g.deadline_ms);
                    self.stats.reentrant_grants += 1;
                }
            }
            (ROp::Renew { names, token, ttl_ms }, Ok(Reply::Grant(g))) => {
                let deadline = clock + ttl_ms;
                ensure!(g.deadline_ms == deadline, "renewed deadline {} not {deadline}", g.deadline_ms);
                for (i, n) in canonical(names).into_iter().enumerate() {
                    // The oldest grant on the name under this token (grant order is fence order).
                    let key = self
                        .holders
                        .range((n, 0)..=(n, u64::MAX))
                        .find(|(_, h)| h.token == *token)
                        .map(|(key, _)| *key)
                        .ok_or_else(|| format!("renewed {} which this token does not hold", NAMES[n]))?;
                    ensure!(i > 0 || key.1 == g.fence, "renew replied fence {}, holder has {}", g.fence, key.1);
                    self.holders.get_mut(&key).expect("found").deadline = deadline;
                }
                self.stats.renewed += 1;
            }
            (ROp::Open(ttl_ms), Ok(Reply::Int(id))) => {
                ensure!(*id as u64 == index, "session id {id} is not the log index {index}");
                self.sessions.insert(index, clock + ttl_ms);
                self.opened.push(index);
            }
            (ROp::KeepAlive(id, _), Ok(Reply::Int(ttl_ms))) => {
                let deadline = self.sessions.get_mut(id).ok_or_else(|| format!("kept alive session {id}, not open"))?;
                *deadline = clock + *ttl_ms as u64;
            }
            (ROp::Cancel(id), Ok(Reply::Ok)) => {
                ensure!(cancelled.contains(id), "CancelWait {id} replied Ok without ending the wait");
            }
            (ROp::Close(id), Ok(Reply::Ok)) => {
                ensure!(ended_now.contains(id), "SessionClose {id} replied Ok without ending it");
            }
            _ => {}
        }

        // Fresh fences of this entry: above every earlier one, and the ones next_fence
        // hands out: max(last + 1, index), then one up per further grant.
        if !new_fences.is_empty() {
            new_fences.sort_unstable();
            let start = (fence_before + 1).max(index);
            let want: Vec<u64> = (start..start + new_fences.len() as u64).collect();
            ensure!(new_fences == want, "fences of entry {index}: {new_fences:?}, expected {want:?}");
            self.last_fence = *new_fences.last().expect("not empty");
        }
        ensure!(core_fence == self.last_fence, "last_fence {core_fence}, grants seen up to {}", self.last_fence);

        for s in &ended_now {
            ensure!(!self.holders.values().any(|h| h.session == *s), "a lock of ended session {s} is still held");
            ensure!(!self.pending.values().any(|w| w.session == *s), "a waiter of ended session {s} still waits");
        }
        Ok(())
    }

    /// Holders and waiter counts derived from the output agree with lock info.
    fn compare_reads(&self, sm: &StateMachine, n_names: usize) -> Result<(), String> {
        for (n, name) in NAMES.iter().enumerate().take(n_names) {
            let Ok(Reply::Info(info)) = sm.read(&Command::LockInfo { name: name_bytes(n) }) else {
                return Err("lock info read failed".into());
            };
            let fences: BTreeSet<u64> = info.holders.iter().map(|h| h.fence).collect();
            let mine: BTreeSet<u64> = self.holders.range((n, 0)..=(n, u64::MAX)).map(|((_, f), _)| *f).collect();
            ensure!(fences == mine, "{name} held by fences {fences:?} per lock info, {mine:?} per the events");
            let mode = self.holders.range((n, 0)..=(n, u64::MAX)).next().map(|(_, h)| h.mode);
            ensure!(info.mode == mode, "{name} mode {:?} per lock info, {mode:?} per the events", info.mode);
            let waiting = self.pending.values().filter(|w| w.names.contains(&n)).count() as u64;
            ensure!(
                info.waiters == waiting,
                "{name} has {} waiters per lock info, {waiting} per the events",
                info.waiters
            );
        }
        Ok(())
    }

    /// At the end: every queued waiter was granted or ended exactly once, or still waits.
    fn check_end(&self) -> Result<(), String> {
        for id in &self.queued {
            ensure!(
                self.finished.contains(id) != self.pending.contains_key(id),
                "waiter {id} is both finished and waiting, or neither"
            );
        }
        ensure!(self.finished.len() + self.pending.len() == self.queued.len(), "waiters lost or invented");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The harness.

struct Harness {
    sm: StateMachine,
    model: Model,
    history: History,
    n_names: usize,
    index: u64,
    stamp: u64,
}

impl Harness {
    fn new(n_names: usize) -> Harness {
        Harness {
            sm: StateMachine::default(),
            model: Model::new(n_names),
            history: History::default(),
            n_names,
            index: 0,
            stamp: START_MS,
        }
    }

    fn resolve(&self, op: &Op) -> ROp {
        let h = &self.history;
        match op {
            Op::Acquire { names, owner, bad_token, shared, ttl_ms, session, wait } => ROp::Acquire {
                names: names.list(),
                owner: *owner,
                token: token_bytes(*owner, *bad_token),
                mode: if *shared { LockMode::Shared } else { LockMode::Exclusive },
                ttl_ms: *ttl_ms,
                session: session.map(|pick| pick_session(&h.opened, pick)),
                wait: match wait {
                    None => Wait::Try,
                    Some((wait_ms, priority)) => Wait::Queue { wait_ms: *wait_ms, priority: *priority },
                },
            },
            Op::Release { names, owner, bad_token } => {
                ROp::Release { names: names.list(), token: token_bytes(*owner, *bad_token) }
            }
            Op::Renew { names, owner, ttl_ms } => {
                ROp::Renew { names: names.list(), token: token_bytes(*owner, false), ttl_ms: *ttl_ms }
            }
            Op::Cancel { pick } => ROp::Cancel(pick_waiter(&h.queued, *pick)),
            Op::Open { ttl_ms } => ROp::Open(*ttl_ms),
            Op::KeepAlive { pick, ttl_ms } => ROp::KeepAlive(pick_session(&h.opened, *pick), *ttl_ms),
            Op::Close { pick } => ROp::Close(pick_session(&h.opened, *pick)),
            Op::Tick { .. } => ROp::Tick,
        }
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        self.index += 1;
        let jump = match step.op {
            Op::Tick { jump_ms } => jump_ms as i64,
            _ => 0,
        };
        self.stamp = (self.stamp as i64 + step.dt_ms + jump).max(0) as u64;
        let op = self.resolve(&step.op);
        self.apply(op)
    }

    /// Applies one resolved operation at the current index and stamp and checks everything.
    fn apply(&mut self, op: ROp) -> Result<(), String> {
        let (index, stamp) = (self.index, self.stamp);
        let out = self.sm.apply(index, stamp, op.command());
        let context = |e: String| format!("entry {index} at stamp {stamp}: {op:?}\n  core: {out:?}\n  {e}");
        self.sm.check_invariants().map_err(|e| context(format!("check_invariants: {e}")))?;
        let oracle = Oracle::of(&out);
        let (reply, expected) = self.model.apply(index, stamp, &op, &oracle).map_err(context)?;
        self.model.compare(&reply, &expected, &out).map_err(context)?;
        self.history.observe(index, self.sm.clock_ms(), &op, &out, self.sm.last_fence()).map_err(context)?;
        self.model.compare_reads(&self.sm, &self.history.opened).map_err(context)?;
        self.history.compare_reads(&self.sm, self.n_names).map_err(context)?;
        Ok(())
    }
}

fn run(n_names: usize, steps: &[Step]) -> Result<Stats, String> {
    let mut harness = Harness::new(n_names);
    for step in steps {
        harness.step(step)?;
    }
    harness.history.check_end()?;
    Ok(harness.history.stats)
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Three names, five owners, sessions, big and small time steps.
    #[test]
    fn lock_table_matches_model(steps in prop::collection::vec(step_strategy(3), 1..200)) {
        run(3, &steps).map_err(TestCaseError::fail)?;
    }

    /// Two names only: more contention, longer queues, more group waits.
    #[test]
    fn contended_lock_table_matches_model(steps in prop::collection::vec(step_strategy(2), 1..200)) {
        run(2, &steps).map_err(TestCaseError::fail)?;
    }
}

/// The generator reaches every interesting path; otherwise the properties above would
/// pass vacuously.
#[test]
fn generator_exercises_every_path() {
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(step_strategy(3), 100..200);
    let mut total = Stats::default();
    for _ in 0..40 {
        let steps = strategy.new_tree(&mut runner).expect("generate").current();
        total.add(run(3, &steps).unwrap_or_else(|e| panic!("{e}")));
    }
    println!("{total:#?}");
    let Stats {
        direct_grants,
        reentrant_grants,
        queued,
        granted_from_queue,
        group_grants_from_queue,
        shared_overlaps,
        timed_out,
        cancelled,
        wait_session_ended,
        released,
        expired,
        revoked,
        sessions_expired,
        renewed,
    } = total;
    for (what, count) in [
        ("direct grants", direct_grants),
        ("reentrant grants", reentrant_grants),
        ("queued", queued),
        ("grants from a queue", granted_from_queue),
        ("group grants from a queue", group_grants_from_queue),
        ("readers together", shared_overlaps),
        ("timed-out waits", timed_out),
        ("cancelled waits", cancelled),
        ("waits ended with their session", wait_session_ended),
        ("releases", released),
        ("expiries", expired),
        ("revocations", revoked),
        ("sessions expired", sessions_expired),
        ("renewals", renewed),
    ] {
        assert!(count >= 5, "only {count} {what}: {total:#?}");
    }
}

// ---------------------------------------------------------------------------------
// Fixed scenarios through the same checks.

fn acquire(names: &[usize], owner: u8, mode: LockMode, ttl_ms: u64, session: Option<u64>, wait: Wait) -> ROp {
    ROp::Acquire { names: names.to_vec(), owner, token: token_bytes(owner, false), mode, ttl_ms, session, wait }
}

fn queue(priority: i32) -> Wait {
    Wait::Queue { wait_ms: None, priority }
}

fn run_fixed(n_names: usize, ops: Vec<(u64, ROp)>) {
    let mut harness = Harness::new(n_names);
    for (stamp, op) in ops {
        harness.index += 1;
        harness.stamp = stamp;
        harness.apply(op).unwrap_or_else(|e| panic!("{e}"));
    }
    harness.history.check_end().unwrap_or_else(|e| panic!("{e}"));
}

/// Priority first, then arrival; a waiter of a closed session is skipped, never granted.
#[test]
fn fixed_priority_fifo_and_session_end() {
    use LockMode::Exclusive as X;
    run_fixed(
        1,
        vec![
            (1_000, ROp::Open(10_000)),                                             // session 1
            (1_000, acquire(&[0], 0, X, 5_000, None, Wait::Try)),                   // o0 holds
            (1_001, acquire(&[0], 1, X, 5_000, None, queue(0))),                    // waiter 3
            (1_002, acquire(&[0], 2, X, 5_000, Some(1), queue(1))),                 // waiter 4, session 1, ahead of 3
            (1_003, acquire(&[0], 3, X, 5_000, None, queue(1))),                    // waiter 5, after 4
            (1_004, ROp::Close(1)),                                                 // ends waiter 4
            (1_005, ROp::Release { names: vec![0], token: token_bytes(0, false) }), // grants 5
            (1_006, ROp::Release { names: vec![0], token: token_bytes(3, false) }), // grants 3
            (7_000, ROp::Tick),                                                     // 3's lease runs out
        ],
    );
}

/// Readers share; a queued writer blocks later readers; a group waits for both names.
#[test]
fn fixed_readers_writer_and_group() {
    use LockMode::{Exclusive as X, Shared as S};
    run_fixed(
        2,
        vec![
            (1_000, acquire(&[0], 0, S, 1_000, None, Wait::Try)),
            (1_000, acquire(&[0], 1, S, 2_000, None, Wait::Try)),
            (1_001, acquire(&[1, 0], 2, X, 1_000, None, queue(0))), // waiter 3 on both
            (1_002, acquire(&[0], 3, S, 1_000, None, queue(0))),    // waiter 4 behind it
            (1_003, acquire(&[0], 0, S, 500, None, Wait::Try)),     // reentrant, keeps 2_000
            (2_000, ROp::Tick),                                     // o0 expires
            (3_000, ROp::Tick),                                     // o1 expires: 3 then nothing
            (4_000, ROp::Tick),                                     // 3 expires: 4 granted
        ],
    );
}

// ---------------------------------------------------------------------------------
// Suspected core bugs, reduced to minimal command sequences.

fn lock_cmd(names: &[&'static str], owner: &'static str, wait: Wait) -> Command {
    Command::Lock(LockRequest {
        names: names.iter().map(|n| Bytes::from_static(n.as_bytes())).collect(),
        owner: Bytes::from_static(owner.as_bytes()),
        token: Bytes::from_static(owner.as_bytes()),
        mode: LockMode::Exclusive,
        ttl_ms: 30_000,
        session: None,
        metadata: Bytes::new(),
        wait,
        condition: None,
        idempotent: false,
    })
}

/// A request queued at the head of a free lock (it outranks the only waiter there, a
/// group blocked on another name) is never granted: queueing marks nothing for the
/// pump, and when the other name frees up the group is not the head of "b" and the
/// new head of "b" is never looked at. Both locks end up free with two waiters forever.
#[test]

fn regression_waiter_queued_at_the_head_of_a_free_lock_is_granted() {
    let mut sm = StateMachine::default();
    let b = Bytes::from_static(b"b");
    assert!(matches!(sm.apply(1, 1_000, lock_cmd(&["a"], "A", Wait::Try)).reply, Ok(Reply::Grant(_))));
    let group = sm.apply(2, 1_000, lock_cmd(&["a", "b"], "B", Wait::Queue { wait_ms: None, priority: 0 }));
    assert_eq!(group.reply, Ok(Reply::Queued(2)));
    // "b" is free and C outranks B: C heads the queue of "b" and should be granted now.
    let high = sm.apply(3, 1_000, lock_cmd(&["b"], "C", Wait::Queue { wait_ms: None, priority: 1 }));
    sm.check_invariants().unwrap();
    let granted_now = matches!(high.reply, Ok(Reply::Grant(_)))
        || high.events.iter().any(|e| matches!(e, Event::Granted { waiter: 3, .. }));
    // Even after A's lease on "a" runs out, nobody is granted: both locks free, two waiters.
    let later = sm.apply(4, 31_000, Command::Tick);
    let info = sm.read(&Command::LockInfo { name: b }).unwrap();
    assert!(
        granted_now,
        "waiter 3 not granted at once: {high:?}; after a's expiry: {later:?}; lock info of b: {info:?}"
    );
}

/// The same gap for semaphores: a request that outranks the blocked head and fits in
/// the free permits is queued and never granted.
#[test]

fn regression_permit_request_queued_at_the_head_is_granted() {
    let acquire = |owner: &'static str, count: u32, priority: i32| {
        Command::SemAcquire(fencelock_core::SemaphoreRequest {
            name: Bytes::from_static(b"s"),
            limit: 3,
            count,
            owner: Bytes::from_static(owner.as_bytes()),
            token: Bytes::from_static(owner.as_bytes()),
            ttl_ms: 30_000,
            session: None,
            wait: Wait::Queue { wait_ms: None, priority },
        })
    };
    let mut sm = StateMachine::default();
    assert!(matches!(sm.apply(1, 1_000, acquire("A", 1, 0)).reply, Ok(Reply::Grant(_))));
    assert_eq!(sm.apply(2, 1_000, acquire("B", 3, 0)).reply, Ok(Reply::Queued(2))); // needs all 3
                                                                                    // C outranks B and 1 permit of the 2 free ones is enough: it should be granted now.
    let high = sm.apply(3, 1_000, acquire("C", 1, 1));
    let granted_now = matches!(high.reply, Ok(Reply::Grant(_)))
        || high.events.iter().any(|e| matches!(e, Event::Granted { waiter: 3, .. }));
    let info = sm.read(&Command::SemInfo { name: Bytes::from_static(b"s") });
    assert!(granted_now, "waiter 3 not granted: {high:?}; semaphore info [limit, used, waiters]: {info:?}");
}
