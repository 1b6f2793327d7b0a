//! Raft glue: openraft's type configuration, the durable log store (`wal` +
//! `log_store`), the state-machine adapter over fencelock-core (`state_machine`), the
//! peer network (`network`), and the snapshot policy by the log's size
//! (`snapshot_trigger`).
//!
//! ```text
//!   connection --client_write(Proposal{stamp, cmd})--> openraft --append--> LogStore (WAL, fdatasync)
//!                                                       |--apply--> SmStore --> core::StateMachine
//!   connection <--Applied{reply}----------------------- ' (+ waiter events through Waiters)
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use fencelock_core::{Command, Reply};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

pub mod cluster_id;
pub mod levels;
pub mod log_store;
pub mod network;
pub mod snapshot_trigger;
pub mod state_machine;
pub mod wal;
pub mod wipe_guard;

/// Node ids are small integers chosen by the operator (`--node-id`).
pub type NodeId = u64;

/// One log entry's payload: a command stamped with the proposing node's monotonic
/// clock. The stamp is the state machine's only source of time.
///
/// `epoch` names the clock the stamp was read from: a random number drawn once per
/// process start. Monotonic clocks of different processes (another leader, or this
/// one after a restart) are not comparable, so when the epoch changes the state
/// machine rebases: the new clock continues from the replicated clock, and every
/// lease's remaining time restarts from the first entry of the new epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing process's clock epoch.
    pub epoch: u64,
    /// Milliseconds on the proposing node's monotonic clock.
    pub stamp_ms: u64,
    /// The node whose client asked (a follower forwarding to the leader names itself):
    /// that node registers the channels of any waiter the entry queues, because the
    /// waiting connection is there.
    pub origin: NodeId,
    /// What to apply. Shared, not owned: openraft clones every entry it reads from the
    /// log store (for each follower's AppendEntries, and again for apply), and a
    /// command's deep clone (its name list, ~250 bytes moved) was 3% of a leader's
    /// CPU. The shared `Op` is serialized as the `Op` itself, so the log and the wire
    /// format are unchanged.
    #[serde(deserialize_with = "deserialize_shared")]
    pub op: Arc<Op>,
}

/// Decodes an `Op` straight into its `Arc`. serde's own `Arc<T>` decoder goes
/// through a `Box<T>` and moves it into a second allocation: two allocations, a
/// copy and a free for every entry a follower receives, which was 5% of a
/// follower's CPU (`perf`, DWARF call graphs, 3 nodes at 64 clients).
pub(crate) fn deserialize_shared<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Arc<Op>, D::Error> {
    Op::deserialize(deserializer).map(Arc::new)
}

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// One state-machine command.
    Core(Command),
    /// A Lua script, all or nothing. The entry carries the whole script, so replicas
    /// need no script cache (EVALSHA is resolved on the proposing node).
    Eval {
        /// The script's source.
        script: Bytes,
        /// KEYS.
        keys: Vec<Bytes>,
        /// ARGV.
        args: Vec<Bytes>,
    },
    /// MULTI ... EXEC: every command applied in this one entry, each answering on its
    /// own (a failing command does not undo the others, as in Redis).
    Multi(Vec<Command>),
    /// Concurrent writes of different clients that the leader grouped into one entry
    /// (`write_group`): each applied in turn, each answering on its own
    /// (`Applied::Multi`). Only `Command::is_groupable` commands.
    Group(Vec<Command>),
    /// As `Group`, for a group that also runs scripts: the well-known acquire, release
    /// and extend scripts Redis lock clients send (`write_group`). Each member answers on its own
    /// (`Applied::Group`); a script that fails is rolled back alone. A group of
    /// commands only is still written as `Group`, which nodes that predate this variant
    /// can read.
    GroupWrites(Vec<GroupWrite>),
    /// Ends every wait that a connection of node `origin` queued before this entry
    /// (`SmStore`'s waiter origins): proposed by a node when it starts (its previous
    /// run's connections are gone, and nothing else would end their waits: a queue
    /// item popped for one would be lost, a lock granted to one held by nobody), and by
    /// the leader for a node it removes. Answers `Applied::Core(Ok(Reply::Int(n)))`,
    /// the waits ended. From protocol level 1 (`levels`).
    CancelWaitsOf {
        /// The node whose earlier waits end.
        origin: NodeId,
    },
}

/// One write in an `Op::GroupWrites` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupWrite {
    /// A command that may share an entry (`Command::is_groupable`).
    Core(Command),
    /// A script, all or nothing, as `Op::Eval`.
    Eval {
        /// The script's source.
        script: Bytes,
        /// KEYS.
        keys: Vec<Bytes>,
        /// ARGV.
        args: Vec<Bytes>,
    },
}

impl From<GroupWrite> for Op {
    /// The entry a group member makes when it goes alone.
    fn from(write: GroupWrite) -> Op {
        match write {
            GroupWrite::Core(command) => Op::Core(command),
            GroupWrite::Eval { script, keys, args } => Op::Eval { script, keys, args },
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}:{}", self.op, self.epoch, self.stamp_ms)
    }
}

/// What applying an entry answers to the node that proposed it. Events for waiters
/// travel separately (see `state_machine::Waiters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A blank or membership entry.
    Nothing,
    /// The core's reply to a command.
    Core(Result<Reply, fencelock_core::Error>),
    /// A script's reply, or its error text (it was rolled back).
    Script(Result<crate::lua::ScriptReply, String>),
    /// Each queued (MULTI) or grouped command's reply, in order.
    Multi(Vec<Result<Reply, fencelock_core::Error>>),
    /// Each member's answer of an `Op::GroupWrites` entry, in order: `Core` for a
    /// command, `Script` for a script.
    Group(Vec<Applied>),
}

openraft::declare_raft_types!(
    /// fencelock's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = BasicNode,
);

/// A log id.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// Membership as stored with the state.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot with our data type (the serialized state machine).
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;
/// The leader id recorded in log ids.
pub type CommittedLeaderId = openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig, state_machine::SmStore>;

/// Appends the postcard encoding of `value` to `out`.
///
/// `postcard::to_stdvec` starts from an empty vector and grows it by doubling: five
/// allocations for a 100-byte log entry and ten for a replication frame, which made
/// the encoders' reallocations the largest single source of allocations on a 3-node
/// leader (`perf` with DWARF call graphs). Encoding into a buffer the caller keeps or
/// sizes once costs none of those.
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, AppendTo(out))
}

/// A postcard output that appends to a borrowed vector.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_into_appends_what_to_stdvec_writes() {
        let value = (7u64, Bytes::from_static(b"lock-name"), vec![300u32, 1, u32::MAX], Some("text"));
        let mut out = b"kept".to_vec();
        encode_into(&value, &mut out).unwrap();
        assert_eq!(&out[..4], b"kept", "what the buffer held stays in front");
        assert_eq!(out[4..], postcard::to_stdvec(&value).unwrap()[..]);
    }

    #[test]
    fn a_proposal_decodes_to_what_was_encoded_with_its_own_op() {
        let command = Command::Unlock {
            names: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            token: Bytes::from_static(b"t"),
        };
        let proposal = Proposal { epoch: 9, stamp_ms: 1_234, origin: 2, op: Arc::new(Op::Core(command)) };
        let bytes = postcard::to_stdvec(&proposal).unwrap();
        // The `Arc` is transparent on the wire: the encoding is the plain `Op`'s.
        assert_eq!(bytes, postcard::to_stdvec(&(9u64, 1_234u64, 2u64, &*proposal.op)).unwrap());
        let decoded: Proposal = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, proposal);
        assert_eq!(Arc::strong_count(&decoded.op), 1, "a decoded op is not shared with anything");
    }
}
