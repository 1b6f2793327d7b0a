//! Scripts: several keyspace commands applied in one log entry, all or nothing.
//!
//! The server runs Lua inside `apply_script`; each `redis.call` becomes
//! `Script::call`. Before a command first touches a key, the key's entry is saved; if
//! the script fails (an error, or the server's instruction bound), every touched key,
//! the fence counter and the events are put back, so a failed script leaves no partial
//! writes. (Redis does not roll back; lock scripts that fail halfway are exactly what
//! a lock server must not leave behind.)

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::command::{Command, Event, Reply};
use crate::error::{Error, Result};
use crate::keyspace::KeyEntry;
use crate::name::Name;
use crate::state::{Owned, StateMachine, Timer};

/// The handle a script body uses to run commands.
pub struct Script<'a> {
    sm: &'a mut StateMachine,
    saved: BTreeMap<Name, Option<KeyEntry>>,
    calls: u64,
}

/// The outcome of a script entry.
#[derive(Debug)]
pub struct ScriptOutput<T> {
    /// What the body returned (on `Err`, nothing it did remains).
    pub result: T,
    /// Events, as for `apply` (none from a rolled-back body).
    pub events: Vec<Event>,
}

/// The keys a script command reads or writes, or why it is not allowed in a script.
fn keys_of(command: &Command) -> Result<Vec<&Bytes>> {
    Ok(match command {
        Command::Set(request) => vec![&request.key],
        Command::Get { key }
        | Command::PExpire { key, .. }
        | Command::Persist { key }
        | Command::PTtl { key }
        | Command::IncrBy { key, .. }
        | Command::Type { key }
        | Command::HSet { key, .. }
        | Command::HGet { key, .. }
        | Command::HDel { key, .. }
        | Command::HExists { key, .. }
        | Command::HIncrBy { key, .. }
        | Command::HGetAll { key }
        | Command::Push { key, .. }
        | Command::Pop { key, .. } => vec![key],
        Command::Del { keys } | Command::Exists { keys } => keys.iter().collect(),
        Command::Publish { .. }
        | Command::Keys { .. }
        | Command::Scan { .. }
        | Command::DbSize
        | Command::Fence { .. }
        | Command::LockInfo { .. } => Vec::new(),
        _ => return Err(Error::invalid("this command is not allowed in scripts")),
    })
}

impl Command {
    /// Whether a script (or a MULTI, which runs as one) may run this command: keyspace
    /// commands, PUBLISH, FENCE and LOCK.INFO, without a session.
    pub fn allowed_in_scripts(&self) -> bool {
        let session = matches!(self, Command::Set(request) if request.session.is_some());
        !session && keys_of(self).is_ok()
    }
}

impl Script<'_> {
    /// Runs one command inside the script.
    pub fn call(&mut self, command: Command) -> Result<Reply> {
        if let Command::Set(request) = &command {
            if request.session.is_some() {
                return Err(Error::invalid("sessions are not available in scripts"));
            }
        }
        for key in keys_of(&command)? {
            if !self.saved.contains_key(key.as_ref()) {
                let before = self.sm.st.keys.get(key.as_ref()).cloned();
                self.saved.insert(Name::from(key.as_ref()), before);
            }
        }
        self.calls += 1;
        if command.is_read_only() {
            self.sm.read(&command)
        } else {
            self.sm.dispatch(command)
        }
    }

    /// Commands run so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }
}

/// One member of a group entry, as [`StateMachine::apply_group_with`] hands it out:
/// apply it as a command or as a script body.
pub struct GroupMember<'a> {
    pub(crate) sm: &'a mut StateMachine,
}

impl GroupMember<'_> {
    /// Applies a command that may share an entry ([`Command::is_groupable`]); any
    /// other is answered `Invalid` and changes nothing, so every replica answers the
    /// same and a bad entry cannot stop them.
    pub fn command(&mut self, command: &Command) -> Result<Reply> {
        if !command.is_groupable() {
            return Err(Error::invalid("this command cannot share a log entry with others"));
        }
        self.sm.dispatch_lent(command)
    }

    /// Runs a script body, all or nothing: on `Err`, everything it changed is undone
    /// and the members before it keep their writes.
    pub fn script<T, E>(
        &mut self,
        body: impl FnOnce(&mut Script<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.sm.run_script(body)
    }
}

impl StateMachine {
    /// Applies one log entry that runs a script. `body` issues commands through the
    /// `Script` handle; if it returns `Err`, everything it changed is undone.
    pub fn apply_script<T, E>(
        &mut self,
        log_index: u64,
        leader_time_ms: u64,
        body: impl FnOnce(&mut Script<'_>) -> std::result::Result<T, E>,
    ) -> ScriptOutput<std::result::Result<T, E>> {
        self.begin_entry(log_index, leader_time_ms, false);
        let result = self.run_script(body);
        let events = self.end_entry();
        ScriptOutput { result, events }
    }

    /// Runs a script body inside the current entry; on `Err`, undoes what it did.
    fn run_script<T, E>(
        &mut self,
        body: impl FnOnce(&mut Script<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        // Grant what earlier work in the entry freed first: a rollback clears the
        // pending set, which must then hold only what this body freed. (Within an
        // entry's own flow the set is already empty here.)
        self.pump();
        let fence_before = self.st.last_fence;
        let events_before = self.events.len();
        let mut script = Script { sm: self, saved: BTreeMap::new(), calls: 0 };
        let result = body(&mut script);
        let saved = std::mem::take(&mut script.saved);
        if result.is_err() {
            self.rollback(saved, fence_before, events_before);
        }
        result
    }

    fn rollback(&mut self, saved: BTreeMap<Name, Option<KeyEntry>>, fence_before: u64, events_before: usize) {
        for (name, before) in saved {
            if let Some(now) = self.st.keys.remove(&name) {
                self.unschedule(now.deadline_ms, Timer::Key(name.clone()));
                if now.session != 0 {
                    self.disown(now.session, &Owned::Key(name.clone()));
                }
            }
            if let Some(before) = before {
                self.schedule(before.deadline_ms, Timer::Key(name.clone()));
                if before.session != 0 {
                    self.own(before.session, Owned::Key(name.clone()));
                }
                self.st.keys.insert(name, before);
            }
        }
        self.st.last_fence = fence_before;
        self.events.truncate(events_before);
        self.dirty.clear();
    }
}
