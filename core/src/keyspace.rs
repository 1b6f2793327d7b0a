//! The Redis keyspace that lock clients use: strings, hashes and lists with per-key
//! TTLs, and blocking pops. A key created by SET records a fence (FENCE key).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{Event, KeyChange, Reply, SessionId, SetCondition, SetExpiry, SetRequest};
use crate::error::{over, Error, Result};
use crate::limits::Limit;
use crate::name::Name;
use crate::state::{Dirty, Owned, StateMachine, Timer, NEVER};
use crate::waiter::{Waiter, WaiterKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Value {
    Str(Bytes),
    Hash(BTreeMap<Bytes, Bytes>),
    List(VecDeque<Bytes>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyEntry {
    pub value: Value,
    pub deadline_ms: u64,
    /// Fence recorded when SET NX created the key (0: none).
    pub fence: u64,
    /// Owning session (0: none): the key is deleted when it ends.
    pub session: SessionId,
}

/// Parses an integer exactly as Redis's `string2ll` does: optional minus, digits, no
/// leading zeros, no spaces or plus sign, within i64.
pub(crate) fn parse_i64(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let (negative, digits) = match bytes[0] {
        b'-' => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || negative) {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative { value.checked_sub(d)? } else { value.checked_add(d)? };
    }
    Some(value)
}

fn int_bytes(value: i64) -> Bytes {
    Bytes::from(value.to_string())
}

/// The literal prefix of a glob (before any special character), for range scans.
fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern.iter().position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\')).unwrap_or(pattern.len());
    &pattern[..end]
}

fn type_name(value: &Value) -> &'static [u8] {
    match value {
        Value::Str(_) => b"string",
        Value::Hash(_) => b"hash",
        Value::List(_) => b"list",
    }
}

/// Keys INFO's keyspace line looks at; past this it estimates (`keyspace_stats`).
pub const KEYSPACE_STATS_SAMPLE: usize = 10_000;

impl StateMachine {
    /// A key whose TTL has not run out on the replicated clock.
    pub(crate) fn key_live(&self, key: &[u8]) -> Option<&KeyEntry> {
        self.st.keys.get(key).filter(|entry| !self.is_due(entry.deadline_ms))
    }

    /// The string value of a live key.
    pub(crate) fn key_string(&self, key: &[u8]) -> Option<&[u8]> {
        match &self.key_live(key)?.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn key_expire_if_due(&mut self, key: &[u8]) {
        if let Some(entry) = self.st.keys.get(key) {
            if self.is_due(entry.deadline_ms) {
                self.key_remove(key, KeyChange::Expired);
            }
        }
    }

    /// Removes a key with its timer and session ownership.
    fn key_remove(&mut self, key: &[u8], change: KeyChange) -> KeyEntry {
        let (name, entry) = self.st.keys.remove_with_key(key).expect("key exists");
        self.unschedule(entry.deadline_ms, Timer::Key(name.clone()));
        if entry.session != 0 {
            self.disown(entry.session, &Owned::Key(name.clone()));
        }
        self.emit(Event::KeyChanged { key: name.to_bytes(), change });
        entry
    }

    /// Deletes a key because its owning session ended.
    pub(crate) fn key_remove_ephemeral(&mut self, key: &Name) {
        self.key_remove(key, KeyChange::Expired);
    }

    /// Moves a key's deadline, keeping the timer index in step.
    fn key_set_deadline(&mut self, name: &Name, deadline_ms: u64) {
        let entry = self.st.keys.get_mut(name).expect("key exists");
        let old = std::mem::replace(&mut entry.deadline_ms, deadline_ms);
        if old != deadline_ms {
            self.unschedule(old, Timer::Key(name.clone()));
            self.schedule(deadline_ms, Timer::Key(name.clone()));
        }
    }

    /// Creates a key (the caller checked the entry bound) or replaces its value.
    fn key_write(&mut self, key: &[u8], value: Value) -> Name {
        let name = Name::from(key);
        match self.st.keys.get_mut(key) {
            Some(entry) => entry.value = value,
            None => {
                let entry = KeyEntry { value, deadline_ms: NEVER, fence: 0, session: 0 };
                self.st.keys.insert(name.clone(), entry);
            }
        }
        self.emit(Event::KeyChanged { key: name.to_bytes(), change: KeyChange::Set });
        name
    }

    pub(crate) fn key_set(&mut self, request: SetRequest) -> Result<Reply> {
        self.check_key(&request.key)?;
        self.check_value(&request.value)?;
        if let SetExpiry::InMs(ms) = request.expiry {
            if ms > self.limits.ttl_ms_max {
                return Err(over(Limit::TtlMs, self.limits.ttl_ms_max));
            }
        }
        let session = self.session_check(request.session, 1)?;
        self.key_expire_if_due(&request.key);
        let existing = self.st.keys.get(request.key.as_ref());
        let old_value = match existing.map(|e| &e.value) {
            Some(Value::Str(s)) => Some(s.clone()),
            Some(_) if request.get => return Err(Error::WrongType),
            _ => None,
        };
        let exists = existing.is_some();
        let (old_deadline, old_fence, old_session) =
            existing.map_or((NEVER, 0, 0), |e| (e.deadline_ms, e.fence, e.session));
        let proceed = match request.condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => !exists,
            SetCondition::IfPresent => exists,
        };
        let reply = match (request.get, proceed) {
            (true, _) => old_value.map_or(Reply::Nil, Reply::Bulk),
            (false, true) => Reply::Ok,
            (false, false) => Reply::Nil,
        };
        if !proceed {
            return Ok(reply);
        }
        if !exists {
            self.check_entries(1)?;
        }
        if request.expiry == SetExpiry::InMs(0) {
            // A past PXAT / EXAT: Redis accepts the write and the key is gone at once.
            if exists {
                self.key_remove(&request.key, KeyChange::Deleted);
            }
            return Ok(reply);
        }
        let deadline_ms = match request.expiry {
            SetExpiry::Clear => NEVER,
            SetExpiry::Keep => old_deadline,
            SetExpiry::InMs(ms) => self.deadline_after(ms),
        };
        // Creating a key is how every SET-based lock client acquires (redis-py and
        // redsync with NX, node-redlock with a plain SET after its own EXISTS check), so
        // every creation records a fence; overwriting keeps the key's fence.
        let fence = if exists { old_fence } else { self.next_fence() };
        let name = self.key_write(&request.key, Value::Str(request.value));
        self.key_set_deadline(&name, deadline_ms);
        if old_session != session {
            if old_session != 0 {
                self.disown(old_session, &Owned::Key(name.clone()));
            }
            if session != 0 {
                self.own(session, Owned::Key(name.clone()));
            }
        }
        let entry = self.st.keys.get_mut(&name).expect("written");
        entry.fence = fence;
        entry.session = session;
        Ok(reply)
    }

    pub(crate) fn key_get(&self, key: &[u8]) -> Result<Reply> {
        match self.key_live(key).map(|e| &e.value) {
            None => Ok(Reply::Nil),
            Some(Value::Str(s)) => Ok(Reply::Bulk(s.clone())),
            Some(_) => Err(Error::WrongType),
        }
    }

    pub(crate) fn key_del(&mut self, keys: &[Bytes]) -> Result<Reply> {
        let mut removed = 0;
        for key in keys {
            self.key_expire_if_due(key);
            if self.st.keys.contains_key(key.as_ref()) {
                self.key_remove(key, KeyChange::Deleted);
                removed += 1;
            }
        }
        Ok(Reply::Int(removed))
    }

    pub(crate) fn key_exists(&self, keys: &[Bytes]) -> Reply {
        Reply::Int(keys.iter().filter(|k| self.key_live(k).is_some()).count() as i64)
    }

    pub(crate) fn key_pexpire(&mut self, key: &[u8], ttl_ms: u64) -> Result<Reply> {
        if ttl_ms > self.limits.ttl_ms_max {
            return Err(over(Limit::TtlMs, self.limits.ttl_ms_max));
        }
        self.key_expire_if_due(key);
        let Some((name, _)) = self.st.keys.get_key_value(key) else { return Ok(Reply::Int(0)) };
        let name = name.clone();
        if ttl_ms == 0 {
            self.key_remove(key, KeyChange::Deleted);
        } else {
            let deadline_ms = self.deadline_after(ttl_ms);
            self.key_set_deadline(&name, deadline_ms);
        }
        Ok(Reply::Int(1))
    }

    pub(crate) fn key_persist(&mut self, key: &[u8]) -> Result<Reply> {
        self.key_expire_if_due(key);
        match self.st.keys.get_key_value(key) {
            Some((name, entry)) if entry.deadline_ms != NEVER => {
                let name = name.clone();
                self.key_set_deadline(&name, NEVER);
                Ok(Reply::Int(1))
            }
            _ => Ok(Reply::Int(0)),
        }
    }

    pub(crate) fn key_pttl(&self, key: &[u8]) -> Reply {
        match self.key_live(key) {
            None => Reply::Int(-2),
            Some(entry) => Reply::Int(self.remaining(entry.deadline_ms).map_or(-1, |ms| ms as i64)),
        }
    }

    pub(crate) fn key_incr_by(&mut self, key: &[u8], delta: i64) -> Result<Reply> {
        self.check_key(key)?;
        self.key_expire_if_due(key);
        let current = match self.st.keys.get(key).map(|e| &e.value) {
            None => {
                self.check_entries(1)?;
                0
            }
            Some(Value::Str(s)) => parse_i64(s).ok_or(Error::NotInteger)?,
            Some(_) => return Err(Error::WrongType),
        };
        let value = current.checked_add(delta).ok_or(Error::Overflow)?;
        // INCR keeps the key's TTL, as in Redis.
        self.key_write(key, Value::Str(int_bytes(value)));
        Ok(Reply::Int(value))
    }

    /// Live keys matching a glob, in key order (deterministic even inside scripts).
    pub(crate) fn key_keys(&self, pattern: &[u8]) -> Reply {
        let prefix = literal_prefix(pattern);
        let keys = self
            .st
            .keys
            .range::<_, [u8]>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.as_bytes().starts_with(prefix))
            .filter(|(k, e)| !self.is_due(e.deadline_ms) && crate::glob::matches(pattern, k.as_bytes()))
            .map(|(k, _)| Reply::Bulk(k.to_bytes()))
            .collect();
        Reply::Array(keys)
    }

    pub(crate) fn key_scan(
        &self,
        after: Option<&Bytes>,
        pattern: Option<&Bytes>,
        count: u64,
        kind: Option<&Bytes>,
    ) -> Reply {
        let count = count.clamp(1, 100_000) as usize;
        let start = match after {
            Some(key) => Bound::Excluded(key.as_ref()),
            None => Bound::Unbounded,
        };
        let mut next = None;
        let mut keys = Vec::new();
        for (key, entry) in self.st.keys.range::<_, [u8]>((start, Bound::Unbounded)).take(count) {
            next = Some(key);
            let live = !self.is_due(entry.deadline_ms);
            let matches = pattern.is_none_or(|p| crate::glob::matches(p, key.as_bytes()));
            let typed = kind.is_none_or(|t| t.eq_ignore_ascii_case(type_name(&entry.value)));
            if live && matches && typed {
                keys.push(Reply::Bulk(key.to_bytes()));
            }
        }
        let more = next.is_some_and(|k| {
            self.st.keys.range::<_, [u8]>((Bound::Excluded(k.as_bytes()), Bound::Unbounded)).next().is_some()
        });
        let cursor = match (more, next) {
            (true, Some(k)) => Reply::Bulk(k.to_bytes()),
            _ => Reply::Nil,
        };
        Reply::Array(vec![cursor, Reply::Array(keys)])
    }

    pub(crate) fn key_type(&self, key: &[u8]) -> Reply {
        let name: &[u8] = self.key_live(key).map_or(b"none", |e| type_name(&e.value));
        Reply::Bulk(Bytes::from_static(name))
    }

    pub(crate) fn key_count(&self) -> usize {
        self.st.keys.len()
    }

    /// Live keys, and how many of them have a TTL, with their mean remaining time in
    /// ms (INFO's `db0:keys=..,expires=..,avg_ttl=..`). Exact up to
    /// `KEYSPACE_STATS_SAMPLE` keys; past that, estimated from the first that many
    /// (Redis's avg_ttl is an estimate too): INFO runs under the state lock, and
    /// walking millions of keys there stalled every client and the heartbeats.
    pub fn keyspace_stats(&self) -> (u64, u64, u64) {
        let total = self.st.keys.len() as u64;
        let (mut seen, mut keys, mut expires, mut ttl_sum) = (0u64, 0u64, 0u64, 0u128);
        for entry in self.st.keys.values().take(KEYSPACE_STATS_SAMPLE) {
            seen += 1;
            if self.is_due(entry.deadline_ms) {
                continue;
            }
            keys += 1;
            if let Some(ms) = self.remaining(entry.deadline_ms) {
                expires += 1;
                ttl_sum += u128::from(ms);
            }
        }
        let avg_ttl = if expires == 0 { 0 } else { (ttl_sum / u128::from(expires)) as u64 };
        if seen < total {
            // Scaled from the sample (u128: no overflow for any table size).
            let scale = |n: u64| (u128::from(n) * u128::from(total) / u128::from(seen)) as u64;
            return (scale(keys), scale(expires), avg_ttl);
        }
        (keys, expires, avg_ttl)
    }

    fn hash_mut(&mut self, key: &[u8]) -> &mut BTreeMap<Bytes, Bytes> {
        match &mut self.st.keys.get_mut(key).expect("hash exists").value {
            Value::Hash(h) => h,
            _ => panic!("type checked"),
        }
    }

    pub(crate) fn hash_set(&mut self, key: &[u8], pairs: Vec<(Bytes, Bytes)>) -> Result<Reply> {
        self.check_key(key)?;
        if pairs.is_empty() {
            return Err(Error::invalid("HSET needs at least one field and value"));
        }
        for (field, value) in &pairs {
            self.check_value(field)?;
            self.check_value(value)?;
        }
        self.key_expire_if_due(key);
        let existing = self.hash_live(key)?;
        let distinct: std::collections::BTreeSet<&Bytes> = pairs.iter().map(|(f, _)| f).collect();
        let new_fields = distinct.into_iter().filter(|f| existing.is_none_or(|h| !h.contains_key(*f))).count();
        let len = existing.map_or(0, BTreeMap::len);
        if len + new_fields > self.limits.queue_length_max {
            return Err(over(Limit::QueueLength, self.limits.queue_length_max as u64));
        }
        if existing.is_none() {
            self.check_entries(1)?;
            self.key_write(key, Value::Hash(BTreeMap::new()));
        } else {
            self.emit(Event::KeyChanged { key: Bytes::copy_from_slice(key), change: KeyChange::Set });
        }
        let hash = self.hash_mut(key);
        for (field, value) in pairs {
            hash.insert(field, value);
        }
        Ok(Reply::Int(new_fields as i64))
    }

    fn hash_live(&self, key: &[u8]) -> Result<Option<&BTreeMap<Bytes, Bytes>>> {
        match self.key_live(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Hash(h)) => Ok(Some(h)),
            Some(_) => Err(Error::WrongType),
        }
    }

    pub(crate) fn hash_get(&self, key: &[u8], field: &[u8]) -> Result<Reply> {
        Ok(self.hash_live(key)?.and_then(|h| h.get(field)).map_or(Reply::Nil, |v| Reply::Bulk(v.clone())))
    }

    pub(crate) fn hash_exists(&self, key: &[u8], field: &[u8]) -> Result<Reply> {
        Ok(Reply::Int(i64::from(self.hash_live(key)?.is_some_and(|h| h.contains_key(field)))))
    }

    pub(crate) fn hash_get_all(&self, key: &[u8]) -> Result<Reply> {
        let Some(hash) = self.hash_live(key)? else { return Ok(Reply::Array(Vec::new())) };
        let flat = hash.iter().flat_map(|(f, v)| [Reply::Bulk(f.clone()), Reply::Bulk(v.clone())]).collect();
        Ok(Reply::Array(flat))
    }

    pub(crate) fn hash_del(&mut self, key: &[u8], fields: &[Bytes]) -> Result<Reply> {
        self.key_expire_if_due(key);
        if self.hash_live(key)?.is_none() {
            return Ok(Reply::Int(0));
        }
        let hash = self.hash_mut(key);
        let removed = fields.iter().filter(|f| hash.remove(f.as_ref()).is_some()).count();
        if hash.is_empty() {
            self.key_remove(key, KeyChange::Deleted);
        } else if removed > 0 {
            self.emit(Event::KeyChanged { key: Bytes::copy_from_slice(key), change: KeyChange::Set });
        }
        Ok(Reply::Int(removed as i64))
    }

    pub(crate) fn hash_incr_by(&mut self, key: &[u8], field: Bytes, delta: i64) -> Result<Reply> {
        self.check_key(key)?;
        self.check_value(&field)?;
        self.key_expire_if_due(key);
        let existing = self.hash_live(key)?;
        let current = match existing.and_then(|h| h.get(&field)) {
            Some(v) => parse_i64(v).ok_or(Error::HashNotInteger)?,
            None => 0,
        };
        let len = existing.map_or(0, BTreeMap::len);
        let value = current.checked_add(delta).ok_or(Error::Overflow)?;
        if existing.is_none() {
            self.check_entries(1)?;
            self.key_write(key, Value::Hash(BTreeMap::new()));
        } else {
            if len >= self.limits.queue_length_max && !existing.is_some_and(|h| h.contains_key(&field)) {
                return Err(over(Limit::QueueLength, self.limits.queue_length_max as u64));
            }
            self.emit(Event::KeyChanged { key: Bytes::copy_from_slice(key), change: KeyChange::Set });
        }
        self.hash_mut(key).insert(field, int_bytes(value));
        Ok(Reply::Int(value))
    }

    fn list_live(&self, key: &[u8]) -> Result<Option<&VecDeque<Bytes>>> {
        match self.key_live(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::List(l)) => Ok(Some(l)),
            Some(_) => Err(Error::WrongType),
        }
    }

    fn list_mut(&mut self, key: &[u8]) -> &mut VecDeque<Bytes> {
        match &mut self.st.keys.get_mut(key).expect("list exists").value {
            Value::List(l) => l,
            _ => panic!("type checked"),
        }
    }

    pub(crate) fn list_push(&mut self, key: &[u8], values: Vec<Bytes>, left: bool) -> Result<Reply> {
        self.check_key(key)?;
        if values.is_empty() {
            return Err(Error::invalid("push needs at least one element"));
        }
        for value in &values {
            self.check_value(value)?;
        }
        self.key_expire_if_due(key);
        let existing = self.list_live(key)?;
        let len = existing.map_or(0, VecDeque::len);
        if len + values.len() > self.limits.queue_length_max {
            return Err(over(Limit::QueueLength, self.limits.queue_length_max as u64));
        }
        let fresh = existing.is_none();
        if fresh {
            self.check_entries(1)?;
        }
        // The reply counts the pushed elements even if blocked poppers take them next,
        // as Redis does.
        Ok(Reply::Int(self.list_extend(key, fresh, values, left) as i64))
    }

    /// Pushes checked `values` onto the list at `key` (`fresh`: there is none yet) and
    /// wakes its poppers. Returns the length.
    fn list_extend(&mut self, key: &[u8], fresh: bool, values: Vec<Bytes>, left: bool) -> usize {
        let name = if fresh {
            self.key_write(key, Value::List(VecDeque::new()))
        } else {
            self.emit(Event::KeyChanged { key: Bytes::copy_from_slice(key), change: KeyChange::Set });
            self.st.keys.get_key_value(key).expect("exists").0.clone()
        };
        let list = self.list_mut(key);
        for value in values {
            if left {
                list.push_front(value);
            } else {
                list.push_back(value);
            }
        }
        let len = list.len();
        self.mark(Dirty::List(name));
        len
    }

    /// Returns an element a blocking pop took for a client that had gone to the end it
    /// came from (`Command::PutBack`), past the length and entry limits it was counted
    /// against before. False, and dropped, if the key now holds another type.
    pub(crate) fn list_put_back(&mut self, key: &[u8], value: Bytes, left: bool) -> bool {
        self.key_expire_if_due(key);
        let Ok(existing) = self.list_live(key) else { return false };
        let fresh = existing.is_none();
        self.list_extend(key, fresh, vec![value], left);
        true
    }

    pub(crate) fn list_pop(&mut self, key: &[u8], count: Option<u64>, left: bool) -> Result<Reply> {
        self.key_expire_if_due(key);
        if self.list_live(key)?.is_none() {
            return Ok(Reply::Nil);
        }
        let list = self.list_mut(key);
        let take = count.unwrap_or(1).min(list.len() as u64) as usize;
        let popped: Vec<Bytes> =
            (0..take).map(|_| if left { list.pop_front() } else { list.pop_back() }.expect("counted")).collect();
        let empty = list.is_empty();
        if empty {
            self.key_remove(key, KeyChange::Deleted);
        } else if take > 0 {
            self.emit(Event::KeyChanged { key: Bytes::copy_from_slice(key), change: KeyChange::Set });
        }
        Ok(match count {
            None => popped.into_iter().next().map_or(Reply::Nil, Reply::Bulk),
            Some(_) => Reply::Array(popped.into_iter().map(Reply::Bulk).collect()),
        })
    }

    pub(crate) fn list_blocking_pop(&mut self, keys: &[Bytes], wait_ms: Option<u64>, left: bool) -> Result<Reply> {
        if keys.is_empty() {
            return Err(Error::invalid("at least one key is required"));
        }
        for key in keys {
            self.check_key(key)?;
        }
        self.check_wait(wait_ms)?;
        let mut names: Vec<Name> = Vec::with_capacity(keys.len());
        for key in keys {
            self.key_expire_if_due(key);
            if self.list_live(key)?.is_some_and(|l| !l.is_empty()) {
                let value = match self.list_pop(key, None, left)? {
                    Reply::Bulk(v) => v,
                    _ => unreachable!("non-empty list"),
                };
                return Ok(Reply::Array(vec![Reply::Bulk(key.clone()), Reply::Bulk(value)]));
            }
            if !names.iter().any(|n| n.as_bytes() == key.as_ref()) {
                names.push(Name::from(key.as_ref()));
            }
        }
        if wait_ms == Some(0) {
            return Ok(Reply::Nil);
        }
        for name in &names {
            let queued = self.st.pop_queues.get(name).map_or(0, VecDeque::len);
            if queued >= self.limits.waiters_per_lock_max {
                return Err(over(Limit::WaitersPerLock, self.limits.waiters_per_lock_max as u64));
            }
        }
        for name in &names {
            self.st.pop_queues.entry(name.clone()).or_default().push_back(self.index);
        }
        let deadline_ms = wait_ms.map_or(NEVER, |ms| self.deadline_after(ms));
        let id = self.waiter_insert(Waiter { deadline_ms, session: 0, kind: WaiterKind::Pop { keys: names, left } });
        Ok(Reply::Queued(id))
    }

    pub(crate) fn pop_queue_remove(&mut self, key: &Name, id: u64) {
        let queue = self.st.pop_queues.get_mut(key).expect("pop queue exists");
        let at = queue.iter().position(|w| *w == id).expect("waiter queued");
        queue.remove(at);
        if queue.is_empty() {
            self.st.pop_queues.remove(key);
        }
    }

    /// Hands elements of a list to its blocked poppers, first come first served.
    pub(crate) fn list_pump(&mut self, key: &Name) {
        loop {
            let Some(&id) = self.st.pop_queues.get(key).and_then(|q| q.front()) else { return };
            self.key_expire_if_due(key);
            if !self.list_live(key).is_ok_and(|l| l.is_some_and(|l| !l.is_empty())) {
                return;
            }
            let waiter = self.waiter_take(id);
            let WaiterKind::Pop { keys, left } = waiter.kind else { panic!("pop queues hold pop waiters") };
            for name in &keys {
                self.pop_queue_remove(name, id);
            }
            let value = match self.list_pop(key, None, left) {
                Ok(Reply::Bulk(v)) => v,
                other => panic!("non-empty list pops an element, got {other:?}"),
            };
            self.emit(Event::Popped { waiter: id, key: key.to_bytes(), value, priority: 0, session: 0, seq: 0 });
        }
    }
}
