//! The config store: versioned keys with compare-and-set on the version, and each
//! key's recent history. A key's version is the log index of the entry that last wrote
//! it (0: absent), so versions are unique and increase across the whole store, as
//! etcd's mod revisions do. Each key keeps its last `CONFIG_HISTORY_MAX` versions
//! (deletes included); older ones are compacted.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{Event, Reply};
use crate::error::{Error, Result};
use crate::name::Name;
use crate::state::StateMachine;

/// Versions kept per config key.
pub const CONFIG_HISTORY_MAX: usize = 16;
/// Deleted config keys whose history is kept (`CFG.HISTORY`, `CFG.GET ... AT`, a
/// watch resuming across the delete). Past this plus `CONFIG_DELETED_SLACK`, the
/// leader has the oldest deletes forgotten (`Command::ConfigCompact`): before, every
/// key ever deleted stayed, with up to 16 values, and counted against the entry limit.
pub const CONFIG_DELETED_KEPT: usize = 10_000;
/// How many deletes past `CONFIG_DELETED_KEPT` gather before one `ConfigCompact`
/// forgets them together (one log entry per this many deletes, not one per delete).
pub const CONFIG_DELETED_SLACK: usize = 1_000;
/// The most deleted keys one `ConfigCompact` forgets: a backlog (deletes gathered
/// while some member was below protocol level 3) drains over several entries instead
/// of holding every replica's state lock for one long apply.
pub const CONFIG_FORGET_PER_ENTRY_MAX: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigEntry {
    /// `(version, value)` oldest first; `None` is a delete.
    pub versions: VecDeque<(u64, Option<Bytes>)>,
    /// Versions below this were compacted away (0: nothing was).
    pub compacted_below: u64,
}

impl ConfigEntry {
    /// The live version (0 if the newest version is a delete).
    fn current(&self) -> u64 {
        match self.versions.back() {
            Some((version, Some(_))) => *version,
            _ => 0,
        }
    }
}

impl StateMachine {
    fn config_version(&self, key: &[u8]) -> u64 {
        self.st.configs.get(key).map_or(0, ConfigEntry::current)
    }

    fn config_check_version(&self, key: &[u8], if_version: Option<u64>) -> Result<()> {
        match if_version {
            Some(expected) if expected != self.config_version(key) => Err(Error::ConditionFailed),
            _ => Ok(()),
        }
    }

    fn config_record(&mut self, key: &[u8], value: Option<Bytes>) -> u64 {
        let version = self.index;
        // A key created after deleted keys were forgotten may be one of them written
        // again: what it held before the bound is unknown (the `compacted_below` gap).
        let forgotten_below = self.st.configs_forgotten_below;
        let entry = self
            .st
            .configs
            .entry(Name::from(key))
            .or_insert_with(|| ConfigEntry { versions: VecDeque::new(), compacted_below: forgotten_below });
        debug_assert!(entry.versions.back().is_none_or(|(v, _)| *v < version), "versions increase");
        let deleted = value.is_none();
        if let Some((was_deleted_at, None)) = entry.versions.back() {
            let removed = self.st.config_deletes.remove(&(*was_deleted_at, Name::from(key)));
            debug_assert!(removed, "every deleted key is indexed");
        }
        if deleted {
            self.st.config_deletes.insert((version, Name::from(key)));
        }
        entry.versions.push_back((version, value));
        while entry.versions.len() > CONFIG_HISTORY_MAX {
            if let Some((old, _)) = entry.versions.pop_front() {
                entry.compacted_below = old + 1;
            }
        }
        self.emit(Event::ConfigChanged { key: Bytes::copy_from_slice(key), version, deleted });
        version
    }

    /// CFG.SET: writes `value` if the key's version is `if_version` (0: absent).
    pub(crate) fn config_set(&mut self, key: &[u8], value: Bytes, if_version: Option<u64>) -> Result<Reply> {
        self.check_key(key)?;
        self.check_value(&value)?;
        self.config_check_version(key, if_version)?;
        if !self.st.configs.contains_key(key) {
            self.check_entries(1)?;
        }
        Ok(Reply::Int(self.config_record(key, Some(value)) as i64))
    }

    /// CFG.DEL: deletes the key if its version is `if_version`; the delete's version,
    /// or 0 if the key was absent (nothing recorded).
    pub(crate) fn config_del(&mut self, key: &[u8], if_version: Option<u64>) -> Result<Reply> {
        self.config_check_version(key, if_version)?;
        if self.config_version(key) == 0 {
            return Ok(Reply::Int(0));
        }
        Ok(Reply::Int(self.config_record(key, None) as i64))
    }

    /// CFG.GET: `[value, version]` now, or as of version `at`; nil if absent then.
    pub(crate) fn config_get(&self, key: &[u8], at: Option<u64>) -> Result<Reply> {
        if let Some(at) = at.filter(|at| *at > self.st.last_applied) {
            // A later write would change the answer: reads at a version repeat.
            return Err(Error::Invalid(std::borrow::Cow::Owned(format!(
                "version {at} is in the future: the last applied is {}",
                self.st.last_applied
            ))));
        }
        let forgotten = |at: u64| {
            Err(Error::Invalid(std::borrow::Cow::Owned(format!(
                "version {at} of this key is compacted: deleted keys' history before version {} is forgotten",
                self.st.configs_forgotten_below
            ))))
        };
        let Some(entry) = self.st.configs.get(key) else {
            // A key deleted before `configs_forgotten_below` left no entry: what it held
            // then is unknown, not absent.
            return match at {
                Some(at) if at < self.st.configs_forgotten_below => forgotten(at),
                _ => Ok(Reply::Nil),
            };
        };
        let at = at.unwrap_or(u64::MAX);
        // Versions are log indexes, so a key's versions have gaps: once any was
        // compacted, what held between the oldest kept version and the one compacted
        // before it is unknown, not absent. (`compacted_below` is one past the
        // compacted version, which says nothing about that gap.)
        let history_starts = match entry.versions.front() {
            Some((oldest, _)) if entry.compacted_below > 0 => *oldest,
            _ => entry.compacted_below,
        };
        if at < history_starts {
            return Err(Error::Invalid(std::borrow::Cow::Owned(format!(
                "version {at} of this key is compacted: its history starts at version {history_starts}"
            ))));
        }
        match entry.versions.iter().rev().find(|(v, _)| *v <= at) {
            Some((version, Some(value))) => {
                Ok(Reply::Array(vec![Reply::Bulk(value.clone()), Reply::Int(*version as i64)]))
            }
            _ => Ok(Reply::Nil),
        }
    }

    /// CFG.HISTORY: `[[version, value or nil], ...]`, newest first.
    pub(crate) fn config_history(&self, key: &[u8]) -> Reply {
        let versions =
            self.st.configs.get(key).map(|e| e.versions.iter().rev().collect::<Vec<_>>()).unwrap_or_default();
        Reply::Array(
            versions
                .into_iter()
                .map(|(v, value)| {
                    Reply::Array(vec![Reply::Int(*v as i64), value.clone().map_or(Reply::Nil, Reply::Bulk)])
                })
                .collect(),
        )
    }

    /// CFG.LIST: `[key, version, ...]` for live keys starting with `prefix`, in key
    /// order, at most `count`, after `after` (exclusive) when resuming.
    pub(crate) fn config_list(&self, prefix: &[u8], after: Option<&Bytes>, count: usize) -> Reply {
        // Resuming after a key that sorts before the prefix starts at the prefix: a
        // range from there would meet a key outside it first and stop.
        let start = match after {
            Some(after) if after.as_ref() >= prefix => Bound::Excluded(after.as_ref()),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for (key, entry) in self.st.configs.range::<[u8], _>((start, Bound::Unbounded)) {
            if !key.starts_with(prefix) || out.len() >= 2 * count {
                break;
            }
            if entry.current() > 0 {
                out.push(Reply::Bulk(Bytes::copy_from_slice(key)));
                out.push(Reply::Int(entry.current() as i64));
            }
        }
        Reply::Array(out)
    }

    /// `Command::ConfigCompact`: forgets every deleted key whose delete is older than
    /// `below`, and replies how many.
    pub(crate) fn config_compact(&mut self, below: u64) -> Reply {
        let mut forgotten = 0_i64;
        while let Some((version, key)) = self.st.config_deletes.first().cloned() {
            if version >= below {
                break;
            }
            self.st.config_deletes.pop_first();
            let entry = self.st.configs.remove(&key);
            debug_assert!(
                entry.is_some_and(|e| e.versions.back().is_some_and(|(v, value)| *v == version && value.is_none())),
                "the index names a key whose newest version is that delete"
            );
            forgotten += 1;
        }
        // The bound moves even when nothing went: it says what a read AT can trust.
        self.st.configs_forgotten_below =
            self.st.configs_forgotten_below.max(below.min(self.st.last_applied.saturating_add(1)));
        Reply::Int(forgotten)
    }

    /// The `below` of the `Command::ConfigCompact` due now, if more than
    /// `CONFIG_DELETED_KEPT + CONFIG_DELETED_SLACK` deleted keys are held: the version
    /// of the oldest delete to keep, so that `CONFIG_DELETED_KEPT` stay, or fewer go
    /// when more than `CONFIG_FORGET_PER_ENTRY_MAX` would (the next entry takes more);
    /// at least the oldest goes. Walks at most that many deletes.
    pub fn config_compaction_due(&self) -> Option<u64> {
        let held = self.st.config_deletes.len();
        if held <= CONFIG_DELETED_KEPT + CONFIG_DELETED_SLACK {
            return None;
        }
        let oldest = self.st.config_deletes.first()?.0;
        let forget = (held - CONFIG_DELETED_KEPT).min(CONFIG_FORGET_PER_ENTRY_MAX);
        let first_kept = self.st.config_deletes.iter().nth(forget)?.0;
        Some(first_kept.max(oldest.saturating_add(1)))
    }

    /// Deleted config keys held (INFO).
    pub fn config_deletes_held(&self) -> usize {
        self.st.config_deletes.len()
    }

    /// What `config_deletes` holds by definition: every key whose newest version is a
    /// delete, by that version.
    fn config_deletes_of(configs: &std::collections::BTreeMap<Name, ConfigEntry>) -> BTreeSet<(u64, Name)> {
        configs
            .iter()
            .filter_map(|(key, entry)| match entry.versions.back() {
                Some((version, None)) => Some((*version, key.clone())),
                _ => None,
            })
            .collect()
    }

    /// Rebuilds `config_deletes` from `configs` (after a restore, where it is not
    /// encoded).
    pub(crate) fn index_config_deletes(&mut self) {
        self.st.config_deletes = Self::config_deletes_of(&self.st.configs);
    }

    /// Invariants of the config store (called by `check_invariants`).
    pub(crate) fn check_configs(&self) -> std::result::Result<(), String> {
        if Self::config_deletes_of(&self.st.configs) != self.st.config_deletes {
            return Err("the index of deletes is not the set of deleted config keys".into());
        }
        if let Some((version, key)) = self.st.config_deletes.first() {
            if *version < self.st.configs_forgotten_below {
                return Err(format!("config {key:?} was deleted at {version}, before the forgotten bound"));
            }
        }
        if self.st.configs_forgotten_below > self.st.last_applied.saturating_add(1) {
            return Err("deleted config keys are forgotten past the last applied entry".into());
        }
        for (key, entry) in &self.st.configs {
            if entry.versions.is_empty() || entry.versions.len() > CONFIG_HISTORY_MAX {
                return Err(format!("config {key:?} keeps {} versions", entry.versions.len()));
            }
            if !entry.versions.iter().zip(entry.versions.iter().skip(1)).all(|(a, b)| a.0 < b.0) {
                return Err(format!("config {key:?} versions do not increase"));
            }
            if entry.versions.back().is_some_and(|(v, _)| *v > self.st.last_applied) {
                return Err(format!("config {key:?} has a version after the last applied entry"));
            }
        }
        Ok(())
    }
}
