//! Snapshots: the whole replicated state as versioned bytes, restored exactly.
//!
//! Layout: 8-byte magic, u32 little-endian format version, then the state in postcard
//! encoding, then, only if some table newer than the format holds something, a list of
//! sections (`Section`). All tables are ordered maps, so equal states give equal bytes,
//! and the state hash is simply a hash of those bytes.
//!
//! A section holds what a newer command kind makes (the server writes those only once
//! every member of its cluster reads them: `levels`). Until one is used, a snapshot is
//! byte for byte what a build before the section wrote and reads.

use std::collections::BTreeMap;

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::command::SessionId;
use crate::limits::Limits;
use crate::name::Name;
use crate::state::{State, StateMachine};

const MAGIC: &[u8; 8] = b"FENCELCK";
/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 2;

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes do not start with the snapshot magic.
    #[error("not a fencelock snapshot")]
    BadMagic,
    /// Written by a format this build does not read.
    #[error("snapshot format version {0} is not supported (this build reads {SNAPSHOT_VERSION})")]
    UnsupportedVersion(u32),
    /// The body does not decode.
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    /// The body decodes but breaks an invariant of the state machine.
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// A copy of the state at one log index, encoded off the state lock
/// (`StateMachine::freeze`).
pub struct FrozenState {
    st: State,
}

impl FrozenState {
    /// Appends the bytes `StateMachine::snapshot` would have given at the moment of
    /// the freeze (a caller that wraps the snapshot in a larger image writes it in
    /// place instead of copying it: 90 MB at 1M locks).
    pub fn snapshot_into(&self, out: &mut Vec<u8>) {
        write_state(&self.st, out);
    }
}

/// A table kept after the state's own encoding. New kinds go at the end.
#[derive(Serialize, Deserialize)]
enum Section {
    /// `State::barrier_sessions`.
    BarrierSessions(BTreeMap<Name, BTreeMap<Bytes, SessionId>>),
    /// `State::configs_forgotten_below`.
    ConfigsForgottenBelow(u64),
}

fn write_state(st: &State, out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    postcard::to_io(st, &mut *out).expect("writing to a Vec cannot fail");
    let mut sections = Vec::new();
    if !st.barrier_sessions.is_empty() {
        sections.push(Section::BarrierSessions(st.barrier_sessions.clone()));
    }
    if st.configs_forgotten_below > 0 {
        sections.push(Section::ConfigsForgottenBelow(st.configs_forgotten_below));
    }
    if !sections.is_empty() {
        postcard::to_io(&sections[..], out).expect("writing to a Vec cannot fail");
    }
}

/// Reads a persistent map entry by entry. imbl's own reader reserves room for as
/// many entries as the length prefix claims, so a damaged length panicked ("capacity
/// overflow") instead of failing to decode; this one grows with what is there.
pub(crate) fn ord_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Entries<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de> + Ord + Clone, V: Deserialize<'de> + Clone> serde::de::Visitor<'de> for Entries<K, V> {
        type Value = OrdMap<K, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = entries.next_entry()? {
                map.insert(key, value);
            }
            Ok(map)
        }
    }
    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

/// As `ord_map`, for a persistent set.
pub(crate) fn ord_set<'de, D, T>(deserializer: D) -> Result<OrdSet<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Ord + Clone,
{
    struct Items<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Ord + Clone> serde::de::Visitor<'de> for Items<T> {
        type Value = OrdSet<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a set")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
            let mut set = OrdSet::new();
            while let Some(item) = items.next_element()? {
                set.insert(item);
            }
            Ok(set)
        }
    }
    deserializer.deserialize_seq(Items(std::marker::PhantomData))
}

/// Reads the sections after the state into it.
fn read_sections(st: &mut State, bytes: &[u8]) -> Result<(), SnapshotError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let (sections, rest): (Vec<Section>, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| SnapshotError::Corrupt(format!("sections: {e}")))?;
    if !rest.is_empty() {
        return Err(SnapshotError::Corrupt(format!("{} trailing bytes", rest.len())));
    }
    // Only what `write_state` writes reads back: a list, if there is one, of sections
    // that each hold something, each kind once. Anything else would restore to a state
    // whose snapshot is other bytes (a trailing zero byte decodes as an empty list).
    if sections.is_empty() {
        return Err(SnapshotError::Corrupt("an empty section list".into()));
    }
    // Sections come in the order of their kinds, as `write_state` writes them.
    let mut last_kind = None;
    for section in sections {
        let kind = match &section {
            Section::BarrierSessions(_) => 0,
            Section::ConfigsForgottenBelow(_) => 1,
        };
        if last_kind.is_some_and(|last| last >= kind) {
            return Err(SnapshotError::Corrupt("a repeated or misplaced section".into()));
        }
        last_kind = Some(kind);
        match section {
            Section::BarrierSessions(bound) if bound.is_empty() => {
                return Err(SnapshotError::Corrupt("an empty section".into()));
            }
            Section::BarrierSessions(bound) => st.barrier_sessions = bound,
            Section::ConfigsForgottenBelow(0) => return Err(SnapshotError::Corrupt("an empty section".into())),
            Section::ConfigsForgottenBelow(below) => st.configs_forgotten_below = below,
        }
    }
    Ok(())
}

impl StateMachine {
    /// Serializes the whole state.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        write_state(&self.st, &mut out);
        out
    }

    /// The state as it is now, to encode later: what a server takes under its state
    /// lock so that applying goes on while the copy is encoded. The big tables (locks,
    /// keys, deadlines) are persistent maps that share their nodes with the live state,
    /// so this costs a few pointer copies there; a node is copied only when apply
    /// changes it while the frozen copy is alive. The smaller tables are cloned.
    pub fn freeze(&self) -> FrozenState {
        FrozenState { st: self.st.clone() }
    }

    /// Rebuilds a state machine from `snapshot()` bytes, checking every invariant.
    pub fn restore(limits: Limits, bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let (mut st, rest): (State, &[u8]) =
            postcard::take_from_bytes(&bytes[12..]).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        read_sections(&mut st, rest)?;
        let mut machine = StateMachine::new(limits);
        machine.st = st;
        machine.index_config_deletes();
        machine.check_invariants().map_err(SnapshotError::Inconsistent)?;
        Ok(machine)
    }

    /// A 64-bit FNV-1a hash of the snapshot bytes: equal states, equal hashes.
    pub fn state_hash(&self) -> u64 {
        self.snapshot()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use imbl::{OrdMap, OrdSet};

    /// The persistent maps encode exactly as the std maps they replaced, so snapshots
    /// written before the change load after it (and the format version stays).
    #[test]
    fn persistent_tables_encode_as_the_std_ones() {
        let pairs: Vec<(Vec<u8>, u64)> =
            (0..500u64).map(|i| (format!("k{}", i * 7919 % 1000).into_bytes(), i)).collect();
        let std_map: BTreeMap<_, _> = pairs.iter().cloned().collect();
        let ord_map: OrdMap<_, _> = pairs.iter().cloned().collect();
        assert_eq!(postcard::to_stdvec(&ord_map).unwrap(), postcard::to_stdvec(&std_map).unwrap());
        let back: OrdMap<Vec<u8>, u64> = postcard::from_bytes(&postcard::to_stdvec(&std_map).unwrap()).unwrap();
        assert_eq!(back, ord_map);
        let std_set: BTreeSet<(u64, u32)> = (0..300u64).map(|i| (i % 17, (i * 31 % 101) as u32)).collect();
        let ord_set: OrdSet<(u64, u32)> = std_set.iter().cloned().collect();
        assert_eq!(postcard::to_stdvec(&ord_set).unwrap(), postcard::to_stdvec(&std_set).unwrap());
    }
}
