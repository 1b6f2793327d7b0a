//! A small driver: applies commands at increasing log indexes and explicit times, and
//! checks every invariant after each entry.
#![allow(dead_code)]

use bytes::Bytes;
use fencelock_core::{
    CampaignRequest, Command, Condition, Error, Event, Grant, LockMode, LockRequest, Output, Reply, SemaphoreRequest,
    SetCondition, SetExpiry, SetRequest, StateMachine, Wait,
};

pub struct Driver {
    pub sm: StateMachine,
    pub index: u64,
    pub now_ms: u64,
}

impl Default for Driver {
    fn default() -> Self {
        Driver { sm: StateMachine::default(), index: 0, now_ms: 1_000 }
    }
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl Driver {
    pub fn with(sm: StateMachine) -> Self {
        Driver { sm, ..Driver::default() }
    }

    /// Applies at the current time.
    pub fn run(&mut self, command: Command) -> Output {
        self.index += 1;
        let out = self.sm.apply(self.index, self.now_ms, command);
        self.sm.check_invariants().unwrap_or_else(|e| panic!("invariant broken after entry {}: {e}", self.index));
        out
    }

    pub fn ok(&mut self, command: Command) -> Reply {
        let out = self.run(command);
        out.reply.unwrap_or_else(|e| panic!("expected success, got {e:?}"))
    }

    pub fn err(&mut self, command: Command) -> Error {
        match self.run(command).reply {
            Err(e) => e,
            Ok(r) => panic!("expected an error, got {r:?}"),
        }
    }

    /// Advances time by `ms` with a Tick and returns its events.
    pub fn advance(&mut self, ms: u64) -> Vec<Event> {
        self.now_ms += ms;
        self.run(Command::Tick).events
    }

    pub fn read(&self, command: Command) -> Reply {
        self.sm.read(&command).expect("read")
    }
}

pub fn lock(names: &[&str], owner: &str, ttl_ms: u64) -> LockRequest {
    LockRequest {
        names: names.iter().map(|n| b(n)).collect(),
        owner: b(owner),
        token: b(&format!("{owner}-token")),
        mode: LockMode::Exclusive,
        ttl_ms,
        session: None,
        metadata: Bytes::new(),
        wait: Wait::Try,
        condition: None,
        idempotent: false,
    }
}

pub fn queued(mut request: LockRequest, wait_ms: Option<u64>, priority: i32) -> LockRequest {
    request.wait = Wait::Queue { wait_ms, priority };
    request
}

pub fn shared(mut request: LockRequest) -> LockRequest {
    request.mode = LockMode::Shared;
    request
}

pub fn unlock(names: &[&str], owner: &str) -> Command {
    Command::Unlock { names: names.iter().map(|n| b(n)).collect(), token: b(&format!("{owner}-token")) }
}

pub fn renew(names: &[&str], owner: &str, ttl_ms: u64) -> Command {
    Command::Renew { names: names.iter().map(|n| b(n)).collect(), token: b(&format!("{owner}-token")), ttl_ms }
}

pub fn grant(reply: Reply) -> Grant {
    match reply {
        Reply::Grant(g) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

pub fn waiter(reply: Reply) -> u64 {
    match reply {
        Reply::Queued(id) => id,
        other => panic!("expected queued, got {other:?}"),
    }
}

pub fn int(reply: Reply) -> i64 {
    match reply {
        Reply::Int(i) => i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

pub fn set(key: &str, value: &str) -> SetRequest {
    SetRequest {
        key: b(key),
        value: b(value),
        condition: SetCondition::Always,
        expiry: SetExpiry::Clear,
        get: false,
        session: None,
    }
}

pub fn set_nx_px(key: &str, value: &str, ttl_ms: u64) -> Command {
    Command::Set(SetRequest { condition: SetCondition::IfAbsent, expiry: SetExpiry::InMs(ttl_ms), ..set(key, value) })
}

pub fn sem(name: &str, limit: u32, count: u32, owner: &str, ttl_ms: u64) -> SemaphoreRequest {
    SemaphoreRequest {
        name: b(name),
        limit,
        count,
        owner: b(owner),
        token: b(&format!("{owner}-token")),
        ttl_ms,
        session: None,
        wait: Wait::Try,
    }
}

pub fn campaign(name: &str, candidate: &str, ttl_ms: u64) -> CampaignRequest {
    CampaignRequest {
        name: b(name),
        candidate: b(candidate),
        token: b(&format!("{candidate}-token")),
        value: b(&format!("{candidate}-addr")),
        ttl_ms,
        session: None,
        wait: Wait::Queue { wait_ms: None, priority: 0 },
    }
}

pub fn key_equals(key: &str, value: Option<&str>) -> Condition {
    Condition::KeyEquals { key: b(key), value: value.map(b) }
}

pub fn granted_waiters(events: &[Event]) -> Vec<u64> {
    events.iter().filter_map(|e| if let Event::Granted { waiter, .. } = e { Some(*waiter) } else { None }).collect()
}

/// The event of a pop that takes a list element, or a queue's first item of priority 0
/// pushed without a session.
pub fn popped(waiter: u64, key: &str, value: &str) -> Event {
    Event::Popped { waiter, key: b(key), value: b(value), priority: 0, session: 0, seq: 0 }
}
