//! Coordination primitives: semaphores (SEM.*), counters (COUNTER.*), queues (QUEUE.*),
//! barriers (BARRIER.*) and leader election (ELECT.*). Syntax and replies are in
//! docs/COMMANDS.md; semantics in docs/CORE.md.

use bytes::Bytes;
use fencelock_core::{CampaignRequest, Command, SemaphoreRequest, Wait};

use super::args::{parse_i64, Args, CmdError};
use super::lock::random_token;
use super::{Request, Shape};

fn non_negative(arg: Option<Bytes>, what: &str) -> Result<u64, CmdError> {
    let arg = arg.ok_or(CmdError::Syntax)?;
    match parse_i64(&arg) {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(CmdError::Other(format!("ERR {what} must be a non-negative integer"))),
    }
}

fn positive_u32(arg: Option<Bytes>, what: &str) -> Result<u32, CmdError> {
    let arg = arg.ok_or(CmdError::Syntax)?;
    match parse_i64(&arg) {
        Some(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(n as u32),
        _ => Err(CmdError::Other(format!("ERR {what} must be a positive 32-bit integer"))),
    }
}

/// `WAIT ms | WAIT FOREVER`'s bound.
fn wait_bound(a: &mut Args) -> Result<Option<u64>, CmdError> {
    let bound = a.optional().ok_or(CmdError::Syntax)?;
    if bound.eq_ignore_ascii_case(b"FOREVER") {
        return Ok(None);
    }
    Ok(Some(non_negative(Some(bound), "WAIT")?))
}

/// Options shared by the acquiring commands (SEM.ACQUIRE, ELECT.CAMPAIGN).
#[derive(Default)]
struct Acquire {
    token: Option<Bytes>,
    owner: Option<Bytes>,
    wait: Option<Option<u64>>,
    session: Option<u64>,
    count: Option<u32>,
    value: Option<Bytes>,
}

impl Acquire {
    fn parse(a: &mut Args, allowed: &[&[u8]]) -> Result<Acquire, CmdError> {
        let mut o = Acquire::default();
        while let Some(option) = a.keyword() {
            if !allowed.contains(&option.as_slice()) {
                return Err(CmdError::Syntax);
            }
            match option.as_slice() {
                b"TOKEN" => o.token = Some(a.optional().ok_or(CmdError::Syntax)?),
                b"OWNER" => o.owner = Some(a.optional().ok_or(CmdError::Syntax)?),
                b"WAIT" => o.wait = Some(wait_bound(a)?),
                b"SESSION" => o.session = Some(non_negative(a.optional(), "SESSION")?),
                b"COUNT" => o.count = Some(positive_u32(a.optional(), "COUNT")?),
                b"VALUE" => o.value = Some(a.optional().ok_or(CmdError::Syntax)?),
                _ => return Err(CmdError::Syntax),
            }
        }
        Ok(o)
    }

    fn wait(&self) -> Wait {
        match self.wait {
            None => Wait::Try,
            Some(wait_ms) => Wait::Queue { wait_ms, priority: 0 },
        }
    }
}

/// Parses a coordination command; `None` if `name` is not one.
pub fn parse(name: &[u8], a: &mut Args) -> Result<Option<Request>, CmdError> {
    let request = match name {
        b"SEM.ACQUIRE" => {
            let name = a.bytes()?;
            let limit = positive_u32(Some(a.bytes()?), "limit")?;
            let ttl_ms = non_negative(Some(a.bytes()?), "ttl")?;
            let o = Acquire::parse(a, &[b"TOKEN", b"OWNER", b"WAIT", b"SESSION", b"COUNT"])?;
            let token = o.token.clone().unwrap_or_else(random_token);
            let owner = o.owner.clone().unwrap_or_else(|| token.clone());
            let count = o.count.unwrap_or(1);
            if count > limit {
                return Err(CmdError::Other(format!("ERR COUNT {count} is more than the limit {limit}")));
            }
            let wait = o.wait();
            let undo = Box::new(Command::SemRelease { name: name.clone(), token: token.clone() });
            let request =
                SemaphoreRequest { name, limit, count, owner, token: token.clone(), ttl_ms, session: o.session, wait };
            Request::Acquire { command: Command::SemAcquire(request), token, ttl_ms, undo: Some(undo) }
        }
        b"SEM.RELEASE" => {
            let (name, token) = (a.bytes()?, a.bytes()?);
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::SemRelease { name, token }, Shape::Plain)
        }
        b"SEM.RENEW" => {
            let (name, token) = (a.bytes()?, a.bytes()?);
            let ttl_ms = non_negative(Some(a.bytes()?), "ttl")?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::SemRenew { name, token, ttl_ms }, Shape::Grant(ttl_ms))
        }
        b"SEM.INFO" => {
            let name = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::SemInfo { name }, Shape::Fields(&["limit", "in_use", "waiters"]))
        }
        b"COUNTER.ADD" => {
            let name = a.bytes()?;
            let delta = a.i64()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::CounterAdd { name, delta }, Shape::Plain)
        }
        b"COUNTER.GET" => {
            let name = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::CounterGet { name }, Shape::Plain)
        }
        b"QUEUE.PUSH" => parse_queue_push(a)?,
        b"QUEUE.POP" => {
            let name = a.bytes()?;
            let wait = match a.keyword() {
                None => Wait::Try,
                Some(k) if k == b"WAIT" => Wait::Queue { wait_ms: wait_bound(a)?, priority: 0 },
                Some(_) => return Err(CmdError::Syntax),
            };
            a.finish()?;
            Request::Core(Command::QueuePop { name, wait }, Shape::QueuePop)
        }
        b"QUEUE.LEN" => {
            let name = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::QueueLen { name }, Shape::Plain)
        }
        b"BARRIER.WAIT" | b"BARRIER.ENTER" => {
            let barrier = a.bytes()?;
            let parties = positive_u32(Some(a.bytes()?), "parties")?;
            let participant = a.bytes()?;
            let enter = name == b"BARRIER.ENTER";
            let (wait_ms, session) = barrier_options(a, enter)?;
            let command = match session {
                _ if !enter => Command::BarrierWait { name: barrier, parties, participant, wait_ms },
                None => Command::BarrierEnter { name: barrier, parties, participant, wait_ms },
                Some(session) => Command::BarrierEnterSession { name: barrier, parties, participant, wait_ms, session },
            };
            Request::Core(command, Shape::Barrier)
        }
        b"BARRIER.LEAVE" => {
            let barrier = a.bytes()?;
            let participant = a.bytes()?;
            let (wait_ms, _) = barrier_options(a, false)?;
            Request::Core(Command::BarrierLeave { name: barrier, participant, wait_ms }, Shape::Barrier)
        }
        b"ELECT.CAMPAIGN" => {
            let name = a.bytes()?;
            let candidate = a.bytes()?;
            let ttl_ms = non_negative(Some(a.bytes()?), "ttl")?;
            let o = Acquire::parse(a, &[b"TOKEN", b"WAIT", b"SESSION", b"VALUE"])?;
            let token = o.token.clone().unwrap_or_else(random_token);
            let wait = o.wait();
            let undo = Box::new(Command::Resign { name: name.clone(), token: token.clone() });
            let request = CampaignRequest {
                name,
                candidate,
                token: token.clone(),
                value: o.value.unwrap_or_default(),
                ttl_ms,
                session: o.session,
                wait,
            };
            Request::Acquire { command: Command::Campaign(request), token, ttl_ms, undo: Some(undo) }
        }
        b"ELECT.PROCLAIM" => {
            let (name, token, value) = (a.bytes()?, a.bytes()?, a.bytes()?);
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::Proclaim { name, token, value }, Shape::Plain)
        }
        b"ELECT.RESIGN" => {
            let (name, token) = (a.bytes()?, a.bytes()?);
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::Resign { name, token }, Shape::Plain)
        }
        b"ELECT.RENEW" => {
            let (name, token) = (a.bytes()?, a.bytes()?);
            let ttl_ms = non_negative(Some(a.bytes()?), "ttl")?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::ElectionRenew { name, token, ttl_ms }, Shape::Grant(ttl_ms))
        }
        b"ELECT.LEADER" => {
            let name = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::Leader { name }, Shape::Leader)
        }
        b"ELECT.TRANSFER" => {
            let (name, token, to) = (a.bytes()?, a.bytes()?, a.bytes()?);
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::Transfer { name, token, to }, Shape::Plain)
        }
        b"CFG.SET" => {
            let (key, value) = (a.bytes()?, a.bytes()?);
            let if_version = version_option(a, b"IFVERSION")?;
            Request::Core(Command::ConfigSet { key, value, if_version }, Shape::Plain)
        }
        b"CFG.DEL" => {
            let key = a.bytes()?;
            let if_version = version_option(a, b"IFVERSION")?;
            Request::Core(Command::ConfigDel { key, if_version }, Shape::Plain)
        }
        b"CFG.GET" => {
            let key = a.bytes()?;
            let at = version_option(a, b"AT")?;
            Request::Core(Command::ConfigGet { key, at }, Shape::Fields(&["value", "version"]))
        }
        b"CFG.HISTORY" => {
            let key = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            Request::Core(Command::ConfigHistory { key }, Shape::Plain)
        }
        b"CFG.LIST" => {
            let prefix = a.bytes()?;
            let (mut after, mut count) = (None, CFG_LIST_DEFAULT);
            while let Some(option) = a.keyword() {
                match option.as_slice() {
                    b"AFTER" => after = Some(a.optional().ok_or(CmdError::Syntax)?),
                    b"COUNT" => {
                        count = non_negative(a.optional(), "COUNT")?;
                        if count == 0 || count > CFG_LIST_MAX {
                            return Err(CmdError::Other(format!("ERR COUNT must be 1..={CFG_LIST_MAX}")));
                        }
                    }
                    _ => return Err(CmdError::Syntax),
                }
            }
            Request::Core(Command::ConfigList { prefix, after, count }, Shape::Map)
        }
        b"SVC.REGISTER" => {
            let (service, instance, addr) = (service_name(a.bytes()?)?, a.bytes()?, a.bytes()?);
            let (mut session, mut meta) = (None, Bytes::new());
            while let Some(option) = a.keyword() {
                match option.as_slice() {
                    b"SESSION" => session = Some(non_negative(a.optional(), "SESSION")?),
                    b"META" => meta = a.optional().ok_or(CmdError::Syntax)?,
                    _ => return Err(CmdError::Syntax),
                }
            }
            let Some(session) = session else {
                return Err(CmdError::Other(
                    "ERR SVC.REGISTER needs SESSION id: an instance lives as long as its session".into(),
                ));
            };
            let set = |key: Bytes, value: Bytes| {
                Command::Set(fencelock_core::SetRequest {
                    key,
                    value,
                    condition: fencelock_core::SetCondition::Always,
                    expiry: fencelock_core::SetExpiry::Clear,
                    get: false,
                    session: Some(session),
                })
            };
            Request::ServiceRegister(vec![
                set(service_key(SERVICE_PREFIX, &service, Some(&instance)), addr),
                set(service_key(SERVICE_META_PREFIX, &service, Some(&instance)), meta),
            ])
        }
        b"SVC.DEREGISTER" => {
            let (service, instance) = (service_name(a.bytes()?)?, a.bytes()?);
            a.finish().map_err(|_| a.arity())?;
            let keys = vec![
                service_key(SERVICE_PREFIX, &service, Some(&instance)),
                service_key(SERVICE_META_PREFIX, &service, Some(&instance)),
            ];
            Request::Core(Command::Del { keys }, Shape::Plain)
        }
        b"SVC.LIST" => {
            let service = service_name(a.bytes()?)?;
            a.finish().map_err(|_| a.arity())?;
            Request::ServiceList(service)
        }
        _ => return Ok(None),
    };
    Ok(Some(request))
}

/// Where service instances live in the keyspace: `__svc__/<service>/<instance>` holds
/// the address, `__svcmeta__/<service>/<instance>` the metadata; both owned by the
/// instance's session. SVC.WATCH observes the first prefix.
pub const SERVICE_PREFIX: &str = "__svc__/";
/// See `SERVICE_PREFIX`.
pub const SERVICE_META_PREFIX: &str = "__svcmeta__/";

/// A service name as given, if it has no `/`: `__svc__/a/` is a prefix of service
/// `a/b`'s keys, so `SVC.LIST a` and `SVC.WATCH a` would report `a/b`'s instances as
/// `a`'s.
pub fn service_name(name: Bytes) -> Result<Bytes, CmdError> {
    if name.contains(&b'/') {
        return Err(CmdError::Other("ERR a service name may not contain '/'".into()));
    }
    Ok(name)
}

/// `<prefix><service>/` or `<prefix><service>/<instance>`.
pub fn service_key(prefix: &str, service: &[u8], instance: Option<&[u8]>) -> Bytes {
    let mut key = prefix.as_bytes().to_vec();
    key.extend_from_slice(service);
    key.push(b'/');
    if let Some(instance) = instance {
        key.extend_from_slice(instance);
    }
    Bytes::from(key)
}

/// Keys CFG.LIST answers without COUNT, and at most.
const CFG_LIST_DEFAULT: u64 = 1_000;
const CFG_LIST_MAX: u64 = 100_000;

/// An optional `<KEYWORD> version` as the command's last two arguments.
fn version_option(a: &mut Args, keyword: &[u8]) -> Result<Option<u64>, CmdError> {
    match a.keyword() {
        None => Ok(None),
        Some(k) if k == keyword => {
            let version = non_negative(a.optional(), "version")?;
            a.finish()?;
            Ok(Some(version))
        }
        Some(_) => Err(CmdError::Syntax),
    }
}

/// `[WAIT ms | WAIT FOREVER]` after a barrier's arguments (default: forever).
/// A barrier command's options: `[WAIT ms|FOREVER]`, and where `session_ok`
/// (BARRIER.ENTER) `[SESSION id]`, in either order, each at most once.
fn barrier_options(a: &mut Args, session_ok: bool) -> Result<(Option<u64>, Option<u64>), CmdError> {
    let (mut wait_ms, mut waits, mut session) = (None, false, None);
    while let Some(k) = a.keyword() {
        if k == b"WAIT" && !waits {
            wait_ms = wait_bound(a)?;
            waits = true;
        } else if k == b"SESSION" && session_ok && session.is_none() {
            session = Some(non_negative(a.optional(), "SESSION")?);
        } else {
            return Err(CmdError::Syntax);
        }
    }
    Ok((wait_ms, session))
}

/// `QUEUE.PUSH name [PRIORITY p] [SESSION id] value [value ...]`: options come first;
/// the first argument that is not one starts the values.
fn parse_queue_push(a: &mut Args) -> Result<Request, CmdError> {
    let name = a.bytes()?;
    let mut priority = 0i32;
    let mut session = None;
    let mut values = Vec::new();
    while let Some(arg) = a.optional() {
        if values.is_empty() && arg.eq_ignore_ascii_case(b"PRIORITY") {
            let p = a.optional().ok_or(CmdError::Syntax)?;
            priority = parse_i64(&p)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or(CmdError::Other("ERR PRIORITY must be a 32-bit integer".into()))?;
        } else if values.is_empty() && arg.eq_ignore_ascii_case(b"SESSION") {
            session = Some(non_negative(a.optional(), "SESSION")?);
        } else {
            values.push(arg);
        }
    }
    if values.is_empty() {
        return Err(a.arity());
    }
    Ok(Request::Core(Command::QueuePush { name, values, priority, session }, Shape::Plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::keyspace::words;
    use crate::cmd::parse_at;

    fn p(line: &str) -> Result<Request, CmdError> {
        parse_at(words(line), 0)
    }

    #[test]
    fn acquiring_commands_carry_their_undo_and_token() {
        match p("SEM.ACQUIRE pool 3 5000 COUNT 2 TOKEN t WAIT 100 SESSION 7").unwrap() {
            Request::Acquire { command: Command::SemAcquire(r), token, ttl_ms, undo } => {
                assert_eq!((r.limit, r.count, r.ttl_ms, r.session), (3, 2, 5000, Some(7)));
                assert_eq!(r.wait, Wait::Queue { wait_ms: Some(100), priority: 0 });
                assert_eq!((token.as_ref(), ttl_ms), (b"t".as_ref(), 5000));
                assert_eq!(*undo.expect("an undo"), Command::SemRelease { name: "pool".into(), token: "t".into() });
            }
            other => panic!("{other:?}"),
        }
        match p("ELECT.CAMPAIGN ctl node-a 3000 VALUE addr WAIT FOREVER").unwrap() {
            Request::Acquire { command: Command::Campaign(r), token, .. } => {
                assert_eq!((r.candidate.as_ref(), r.value.as_ref()), (b"node-a".as_ref(), b"addr".as_ref()));
                assert_eq!(r.wait, Wait::Queue { wait_ms: None, priority: 0 });
                assert_eq!(token.len(), 32, "a random token when none is given");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        let e = |line: &str| p(line).unwrap_err().to_string();
        assert_eq!(e("SEM.ACQUIRE pool 0 100"), "ERR limit must be a positive 32-bit integer");
        assert_eq!(e("SEM.ACQUIRE pool 2 100 COUNT 3"), "ERR COUNT 3 is more than the limit 2");
        assert_eq!(e("SEM.ACQUIRE pool 2 100 VALUE x"), "ERR syntax error");
        assert_eq!(e("ELECT.CAMPAIGN e c -1"), "ERR ttl must be a non-negative integer");
        assert_eq!(e("QUEUE.PUSH q"), "ERR wrong number of arguments for 'queue.push' command");
        assert_eq!(e("QUEUE.PUSH q PRIORITY x v"), "ERR PRIORITY must be a 32-bit integer");
        assert_eq!(e("QUEUE.POP q WAIT"), "ERR syntax error");
        assert_eq!(e("BARRIER.WAIT b 0 me"), "ERR parties must be a positive 32-bit integer");
        assert_eq!(e("BARRIER.WAIT b 2 me SESSION 4"), "ERR syntax error", "only a double barrier's members");
        assert_eq!(e("BARRIER.ENTER b 2 me SESSION 4 SESSION 5"), "ERR syntax error");
        assert_eq!(e("BARRIER.ENTER b 2 me SESSION"), "ERR syntax error");
        assert_eq!(e("BARRIER.ENTER b 2 me SESSION -1"), "ERR SESSION must be a non-negative integer");
        assert_eq!(e("BARRIER.LEAVE b me SESSION 4"), "ERR syntax error");
        assert_eq!(e("COUNTER.ADD c x"), "ERR value is not an integer or out of range");
    }

    #[test]
    fn a_double_barrier_entry_may_name_its_session_before_or_after_the_wait() {
        for line in ["BARRIER.ENTER job 3 me SESSION 7 WAIT 500", "BARRIER.ENTER job 3 me wait 500 session 7"] {
            match p(line).unwrap() {
                Request::Core(Command::BarrierEnterSession { parties, wait_ms, session, .. }, Shape::Barrier) => {
                    assert_eq!((parties, wait_ms, session), (3, Some(500), 7));
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        assert!(matches!(p("BARRIER.ENTER job 3 me").unwrap(), Request::Core(Command::BarrierEnter { .. }, _)));
    }

    #[test]
    fn queue_push_options_come_before_the_values() {
        match p("QUEUE.PUSH jobs PRIORITY 5 SESSION 2 a PRIORITY b").unwrap() {
            Request::Core(Command::QueuePush { values, priority, session, .. }, _) => {
                assert_eq!((priority, session), (5, Some(2)));
                assert_eq!(values, vec![Bytes::from("a"), Bytes::from("PRIORITY"), Bytes::from("b")]);
            }
            other => panic!("{other:?}"),
        }
    }
}
