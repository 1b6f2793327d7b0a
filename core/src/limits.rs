//! Every bound the state machine enforces, with its documented default.
//!
//! A bound is part of the replicated configuration: all replicas must run with the
//! same limits, or they could disagree on whether a command is refused.

use serde::{Deserialize, Serialize};

/// Which bound a [`crate::Error::LimitExceeded`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Limit {
    /// Bytes in a key or in a lock, semaphore, queue, barrier or election name.
    KeyBytes,
    /// Bytes in a string value, hash field or value, list element or queue item.
    ValueBytes,
    /// Bytes of lock metadata or of an election value.
    MetadataBytes,
    /// Bytes of an owner, token or participant identity.
    OwnerBytes,
    /// Largest TTL or wait bound in milliseconds.
    TtlMs,
    /// Waiters queued on one lock, semaphore, list, queue or election.
    WaitersPerLock,
    /// Locks (and permits, candidacies, ephemeral keys, items) owned by one session.
    LocksPerSession,
    /// Names in one lock group.
    GroupSize,
    /// Permits of one semaphore.
    Permits,
    /// Items in one queue, elements in one list, fields in one hash.
    QueueLength,
    /// Participants of one barrier.
    BarrierParties,
    /// Open sessions.
    Sessions,
    /// Named entries of every table: keys, locks, semaphores, counters, queues,
    /// barriers, elections and config entries.
    Entries,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Limit::KeyBytes => "key-bytes",
            Limit::ValueBytes => "value-bytes",
            Limit::MetadataBytes => "metadata-bytes",
            Limit::OwnerBytes => "owner-bytes",
            Limit::TtlMs => "ttl-ms",
            Limit::WaitersPerLock => "waiters-per-lock",
            Limit::LocksPerSession => "locks-per-session",
            Limit::GroupSize => "group-size",
            Limit::Permits => "permits",
            Limit::QueueLength => "queue-length",
            Limit::BarrierParties => "barrier-parties",
            Limit::Sessions => "sessions",
            Limit::Entries => "entries",
        };
        f.write_str(name)
    }
}

/// The bounds in force. `Limits::default()` documents each default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Default 4 KiB: lock names and Redis keys are identifiers, not payloads.
    pub key_bytes_max: usize,
    /// Default 1 MiB: every write travels through the Raft log; big values belong in
    /// a blob store, not a lock server.
    pub value_bytes_max: usize,
    /// Default 64 KiB.
    pub metadata_bytes_max: usize,
    /// Default 1 KiB: owner identities and tokens are UUID-sized in practice.
    pub owner_bytes_max: usize,
    /// Default one year: longer leases defeat the point of a lease.
    pub ttl_ms_max: u64,
    /// Default 10,000.
    pub waiters_per_lock_max: usize,
    /// Default 10,000.
    pub locks_per_session_max: usize,
    /// Default 64 names per atomic group.
    pub group_size_max: usize,
    /// Default 1,000,000 permits per semaphore.
    pub permits_max: u32,
    /// Default 1,000,000 items per queue, list or hash.
    pub queue_length_max: usize,
    /// Default 10,000 participants.
    pub barrier_parties_max: u32,
    /// Default 1,000,000 open sessions.
    pub sessions_max: usize,
    /// Default 20,000,000 named entries (keys, lock names, and the names of every other
    /// table): about 6 GB of table at the measured ~300 bytes per entry.
    pub entries_max: usize,
    /// Default 100,000 expirations handled by one log entry (a session that ends counts
    /// once plus once per thing it owns). Anything still due is treated as expired on
    /// access and swept by the next entry, so one entry's apply time stays bounded even
    /// when a million leases end at once.
    pub expirations_per_apply_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 4 * 1024,
            value_bytes_max: 1024 * 1024,
            metadata_bytes_max: 64 * 1024,
            owner_bytes_max: 1024,
            ttl_ms_max: 365 * 24 * 3600 * 1000,
            waiters_per_lock_max: 10_000,
            locks_per_session_max: 10_000,
            group_size_max: 64,
            permits_max: 1_000_000,
            queue_length_max: 1_000_000,
            barrier_parties_max: 10_000,
            sessions_max: 1_000_000,
            entries_max: 20_000_000,
            expirations_per_apply_max: 100_000,
        }
    }
}
