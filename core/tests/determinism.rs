//! Determinism and snapshots.
//!
//! - Two state machines applying the same random log (every kind of command: locks,
//!   sessions, keyspace strings, hashes and lists with blocking pops, semaphores,
//!   counters, queues, barriers, elections, clock rebases, index gaps and stamps that
//!   go back) give identical outputs and end with identical snapshot bytes and hashes.
//! - `restore(snapshot())` of any reachable state snapshots to the same bytes, and the
//!   original and the restored machine then answer the same further log identically.
//! - Corrupt snapshots (bad magic, other version, truncated, trailing bytes) are refused
//!   with the matching `SnapshotError`, and arbitrary byte damage never panics.

use bytes::Bytes;
use fencelock_core::{
    CampaignRequest, Command, Condition, Limits, LockMode, LockRequest, Output, PutBackTo, Reply, SemaphoreRequest,
    SetCondition, SetExpiry, SetRequest, SnapshotError, StateMachine, Wait, SNAPSHOT_VERSION,
};
use proptest::prelude::*;
use proptest::strategy::Union;

/// One log entry: how far the leader stamp moves, how many indexes are skipped (entries
/// that are not commands, such as configuration changes), the command, and for a
/// `Rebase` the new leader's clock reading.
#[derive(Debug, Clone)]
struct Entry {
    dt_ms: i64,
    gap: u64,
    new_leader_ms: u64,
    command: Command,
}

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = Bytes> + Clone {
    prop::sample::select(options).prop_map(|s| Bytes::from_static(s.as_bytes()))
}

/// Lock names; "k1" is also a key, so FENCE and conditions see both tables.
fn lock_name() -> impl Strategy<Value = Bytes> + Clone {
    pick(&["l1", "l2", "k1"])
}

fn key() -> impl Strategy<Value = Bytes> + Clone {
    pick(&["k1", "k2", "h1", "list1", "list2"])
}

fn value() -> impl Strategy<Value = Bytes> + Clone {
    pick(&["", "1", "42", "-7", "x", "9223372036854775807"])
}

fn who() -> impl Strategy<Value = Bytes> + Clone {
    pick(&["o1", "o2", "o3"])
}

fn ttl() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![1 => Just(0u64), 2 => 1u64..5_000, 3 => 5_000u64..60_000]
}

/// Session and waiter ids in generated commands are picks, `PICK + k`, resolved when
/// the entry is applied to the k-th most recent session (or waiter) an earlier reply
/// named, as a client would; sometimes an id that never existed.
const PICK: u64 = 1 << 40;

fn id() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![8 => (0u64..4).prop_map(|k| PICK + k), 1 => 1u64..300, 1 => Just(u64::MAX)]
}

fn session() -> impl Strategy<Value = Option<u64>> + Clone {
    prop::option::weighted(0.3, id())
}

fn wait_ms() -> impl Strategy<Value = Option<u64>> + Clone {
    prop::option::of(prop_oneof![1 => Just(0u64), 4 => 1u64..5_000])
}

fn wait() -> impl Strategy<Value = Wait> + Clone {
    prop_oneof![
        Just(Wait::Try),
        (wait_ms(), -2i32..=2).prop_map(|(wait_ms, priority)| Wait::Queue { wait_ms, priority }),
    ]
}

fn lock_names() -> impl Strategy<Value = Vec<Bytes>> + Clone {
    prop::collection::vec(lock_name(), 1..3)
}

fn lock_commands() -> Vec<(u32, BoxedStrategy<Command>)> {
    let condition = prop::option::weighted(
        0.2,
        prop_oneof![
            (key(), prop::option::of(value())).prop_map(|(key, value)| Condition::KeyEquals { key, value }),
            (lock_name(), 0u64..20).prop_map(|(name, fence)| Condition::FenceEquals { name, fence }),
        ],
    );
    let lock = (lock_names(), who(), any::<bool>(), ttl(), session(), wait(), condition, value()).prop_map(
        |(names, owner, shared, ttl_ms, session, wait, condition, metadata)| {
            Command::Lock(LockRequest {
                names,
                token: owner.clone(),
                owner,
                mode: if shared { LockMode::Shared } else { LockMode::Exclusive },
                ttl_ms,
                session,
                metadata,
                wait,
                condition,
                idempotent: false,
            })
        },
    );
    vec![
        (6, lock.boxed()),
        (3, (lock_names(), who()).prop_map(|(names, token)| Command::Unlock { names, token }).boxed()),
        (1, (lock_names(), who()).prop_map(|(names, token)| Command::LockWithdraw { names, token }).boxed()),
        (
            1,
            (lock_names(), who(), ttl())
                .prop_map(|(names, token, ttl_ms)| Command::Renew { names, token, ttl_ms })
                .boxed(),
        ),
        (1, id().prop_map(|waiter| Command::CancelWait { waiter }).boxed()),
        (1, lock_name().prop_map(|name| Command::Fence { name }).boxed()),
        (1, lock_name().prop_map(|name| Command::LockInfo { name }).boxed()),
        (2, ttl().prop_map(|ttl_ms| Command::SessionOpen { ttl_ms }).boxed()),
        (
            2,
            (id(), prop::option::of(ttl()))
                .prop_map(|(session, ttl_ms)| Command::SessionKeepAlive { session, ttl_ms })
                .boxed(),
        ),
        (1, id().prop_map(|session| Command::SessionClose { session }).boxed()),
        (1, id().prop_map(|session| Command::SessionInfo { session }).boxed()),
    ]
}

fn keyspace_commands() -> Vec<BoxedStrategy<Command>> {
    let set = (
        key(),
        value(),
        prop::sample::select(vec![SetCondition::Always, SetCondition::IfAbsent, SetCondition::IfPresent]),
        prop_oneof![Just(SetExpiry::Clear), Just(SetExpiry::Keep), ttl().prop_map(SetExpiry::InMs)],
        any::<bool>(),
        session(),
    )
        .prop_map(|(key, value, condition, expiry, get, session)| {
            Command::Set(SetRequest { key, value, condition, expiry, get, session })
        });
    let keys = || prop::collection::vec(key(), 1..3);
    let pattern = || pick(&["*", "k*", "list?", "h[0-9]", "[^k]*"]);
    vec![
        set.boxed(),
        key().prop_map(|key| Command::Get { key }).boxed(),
        keys().prop_map(|keys| Command::Del { keys }).boxed(),
        keys().prop_map(|keys| Command::Exists { keys }).boxed(),
        (key(), ttl()).prop_map(|(key, ttl_ms)| Command::PExpire { key, ttl_ms }).boxed(),
        key().prop_map(|key| Command::Persist { key }).boxed(),
        key().prop_map(|key| Command::PTtl { key }).boxed(),
        (key(), prop_oneof![-3i64..4, Just(i64::MAX), Just(i64::MIN)])
            .prop_map(|(key, delta)| Command::IncrBy { key, delta })
            .boxed(),
        pattern().prop_map(|pattern| Command::Keys { pattern }).boxed(),
        (prop::option::of(key()), prop::option::of(pattern()), 0u64..4, prop::option::of(pick(&["string", "hash"])))
            .prop_map(|(after, pattern, count, kind)| Command::Scan { after, pattern, count, kind })
            .boxed(),
        key().prop_map(|key| Command::Type { key }).boxed(),
        Just(Command::DbSize).boxed(),
        (key(), prop::collection::vec((pick(&["f1", "f2"]), value()), 1..3))
            .prop_map(|(key, pairs)| Command::HSet { key, pairs })
            .boxed(),
        (key(), pick(&["f1", "f2"])).prop_map(|(key, field)| Command::HGet { key, field }).boxed(),
        (key(), prop::collection::vec(pick(&["f1", "f2"]), 1..3))
            .prop_map(|(key, fields)| Command::HDel { key, fields })
            .boxed(),
        (key(), pick(&["f1", "f2"])).prop_map(|(key, field)| Command::HExists { key, field }).boxed(),
        (key(), pick(&["f1", "f2"]), -3i64..4)
            .prop_map(|(key, field, delta)| Command::HIncrBy { key, field, delta })
            .boxed(),
        key().prop_map(|key| Command::HGetAll { key }).boxed(),
        (key(), prop::collection::vec(value(), 1..3), any::<bool>())
            .prop_map(|(key, values, left)| Command::Push { key, values, left })
            .boxed(),
        (key(), prop::option::of(0u64..3), any::<bool>())
            .prop_map(|(key, count, left)| Command::Pop { key, count, left })
            .boxed(),
        (keys(), wait_ms(), any::<bool>())
            .prop_map(|(keys, wait_ms, left)| Command::BlockingPop { keys, wait_ms, left })
            .boxed(),
    ]
}

fn coordination_commands() -> Vec<BoxedStrategy<Command>> {
    let sem = || pick(&["s1", "s2"]);
    let queue = || pick(&["q1", "q2"]);
    let barrier = || pick(&["b1", "b2"]);
    let election = || pick(&["e1", "e2"]);
    let sem_acquire = (sem(), 1u32..4, 1u32..3, who(), ttl(), session(), wait()).prop_map(
        |(name, limit, count, owner, ttl_ms, session, wait)| {
            Command::SemAcquire(SemaphoreRequest {
                name,
                limit,
                count,
                token: owner.clone(),
                owner,
                ttl_ms,
                session,
                wait,
            })
        },
    );
    let campaign = (election(), who(), value(), ttl(), session(), wait()).prop_map(
        |(name, candidate, value, ttl_ms, session, wait)| {
            Command::Campaign(CampaignRequest {
                name,
                token: candidate.clone(),
                candidate,
                value,
                ttl_ms,
                session,
                wait,
            })
        },
    );
    vec![
        sem_acquire.boxed(),
        (sem(), who()).prop_map(|(name, token)| Command::SemRelease { name, token }).boxed(),
        (sem(), who(), ttl()).prop_map(|(name, token, ttl_ms)| Command::SemRenew { name, token, ttl_ms }).boxed(),
        sem().prop_map(|name| Command::SemInfo { name }).boxed(),
        (pick(&["c1", "c2"]), -3i64..4).prop_map(|(name, delta)| Command::CounterAdd { name, delta }).boxed(),
        pick(&["c1", "c2"]).prop_map(|name| Command::CounterGet { name }).boxed(),
        (queue(), prop::collection::vec(value(), 0..3), -1i32..=1, session())
            .prop_map(|(name, values, priority, session)| Command::QueuePush { name, values, priority, session })
            .boxed(),
        (queue(), wait()).prop_map(|(name, wait)| Command::QueuePop { name, wait }).boxed(),
        queue().prop_map(|name| Command::QueueLen { name }).boxed(),
        (barrier(), 1u32..4, who(), wait_ms())
            .prop_map(|(name, parties, participant, wait_ms)| Command::BarrierWait {
                name,
                parties,
                participant,
                wait_ms,
            })
            .boxed(),
        (barrier(), 1u32..4, who(), wait_ms())
            .prop_map(|(name, parties, participant, wait_ms)| Command::BarrierEnter {
                name,
                parties,
                participant,
                wait_ms,
            })
            .boxed(),
        (barrier(), 1u32..4, who(), wait_ms(), id())
            .prop_map(|(name, parties, participant, wait_ms, session)| Command::BarrierEnterSession {
                name,
                parties,
                participant,
                wait_ms,
                session,
            })
            .boxed(),
        (barrier(), who(), wait_ms())
            .prop_map(|(name, participant, wait_ms)| Command::BarrierLeave { name, participant, wait_ms })
            .boxed(),
        (queue(), value(), -1i32..=1, 0u64..4, prop::option::of(id()))
            .prop_map(|(key, value, priority, seq, session)| Command::PutBack {
                key,
                value,
                to: PutBackTo::Queue { priority, seq, session: session.unwrap_or(0) },
            })
            .boxed(),
        (pick(&["list1", "list2", "k1"]), value(), any::<bool>())
            .prop_map(|(key, value, left)| Command::PutBack { key, value, to: PutBackTo::List { left } })
            .boxed(),
        campaign.boxed(),
        (election(), who(), value()).prop_map(|(name, token, value)| Command::Proclaim { name, token, value }).boxed(),
        (election(), who()).prop_map(|(name, token)| Command::Resign { name, token }).boxed(),
        (election(), who(), ttl())
            .prop_map(|(name, token, ttl_ms)| Command::ElectionRenew { name, token, ttl_ms })
            .boxed(),
        election().prop_map(|name| Command::Leader { name }).boxed(),
        // Config keys, whose deletes the state indexes (ConfigCompact: `command`).
        (pick(&["cfg1", "cfg2", "cfg3"]), value(), prop::option::of(0u64..40))
            .prop_map(|(key, value, if_version)| Command::ConfigSet { key, value, if_version })
            .boxed(),
        (pick(&["cfg1", "cfg2", "cfg3"]), prop::option::of(0u64..40))
            .prop_map(|(key, if_version)| Command::ConfigDel { key, if_version })
            .boxed(),
        (pick(&["cfg1", "cfg2", "cfg3"]), prop::option::of(0u64..40))
            .prop_map(|(key, at)| Command::ConfigGet { key, at })
            .boxed(),
        (election(), who(), who()).prop_map(|(name, token, to)| Command::Transfer { name, token, to }).boxed(),
    ]
}

/// Every command kind; `ConfigCompact` only if `compact` (see `config_commands`).
fn command(compact: bool) -> impl Strategy<Value = Command> {
    let time = vec![(3, Just(Command::Tick).boxed()), (1, Just(Command::Rebase).boxed())];
    let mut config = vec![Just(Command::Tick).boxed()];
    if compact {
        // Bounds around the indexes these logs reach, so that some forget deletes.
        config = vec![(0u64..300).prop_map(|below| Command::ConfigCompact { below }).boxed()];
    }
    Union::new_weighted(vec![
        (2, Union::new_weighted(time).boxed()),
        (8, Union::new_weighted(lock_commands()).boxed()),
        (5, Union::new(keyspace_commands()).boxed()),
        (7, Union::new(coordination_commands()).boxed()),
        (1, Union::new(config).boxed()),
    ])
}

fn entry(compact: bool) -> impl Strategy<Value = Entry> {
    let dt = prop_oneof![40 => 0i64..50, 6 => -50i64..0, 1 => 1_000i64..30_000];
    let gap = prop_oneof![9 => Just(0u64), 1 => 1u64..3];
    (dt, gap, 0u64..100_000, command(compact)).prop_map(|(dt_ms, gap, new_leader_ms, command)| Entry {
        dt_ms,
        gap,
        new_leader_ms,
        command,
    })
}

fn log(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(entry(true), len)
}

/// As `log`, without `ConfigCompact`: its snapshot section is the last thing written,
/// and a cut right before it restores a state that holds together (bound 0), which
/// `corrupt_snapshots_are_refused` would count as an undetected cut. (The server's
/// snapshot image carries the core bytes' length, so such a cut is caught there.)
fn log_without_compaction(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(entry(false), len)
}

/// Feeds log entries with increasing indexes and the leader's stamps, resolving id
/// picks against the sessions and waiters that earlier replies named.
struct Feeder {
    index: u64,
    stamp: u64,
    sessions: Vec<u64>,
    waiters: Vec<u64>,
}

fn resolve_id(id: &mut u64, known: &[u64]) {
    if (PICK..u64::MAX).contains(id) {
        let k = (*id - PICK) as usize;
        *id = if known.is_empty() { u64::MAX - 1 } else { known[known.len() - 1 - k % known.len()] };
    }
}

impl Feeder {
    fn new() -> Feeder {
        Feeder { index: 0, stamp: 1_000, sessions: Vec::new(), waiters: Vec::new() }
    }

    fn resolve(&self, command: &Command) -> Command {
        let mut command = command.clone();
        let session = match &mut command {
            Command::Lock(LockRequest { session, .. })
            | Command::Set(SetRequest { session, .. })
            | Command::SemAcquire(SemaphoreRequest { session, .. })
            | Command::QueuePush { session, .. }
            | Command::Campaign(CampaignRequest { session, .. }) => session.as_mut(),
            Command::PutBack { to: PutBackTo::Queue { session, .. }, .. } if *session != 0 => Some(session),
            Command::SessionKeepAlive { session, .. }
            | Command::BarrierEnterSession { session, .. }
            | Command::SessionClose { session }
            | Command::SessionInfo { session } => Some(session),
            Command::CancelWait { waiter } => {
                resolve_id(waiter, &self.waiters);
                None
            }
            _ => None,
        };
        if let Some(session) = session {
            resolve_id(session, &self.sessions);
        }
        command
    }

    fn record(&mut self, command: &Command, out: &Output) {
        match (command, &out.reply) {
            (Command::SessionOpen { .. }, Ok(Reply::Int(id))) => self.sessions.push(*id as u64),
            (_, Ok(Reply::Queued(id))) => self.waiters.push(*id),
            _ => {}
        }
    }

    fn next(&mut self, entry: &Entry) -> (u64, u64) {
        self.index += 1 + entry.gap;
        self.stamp = if matches!(entry.command, Command::Rebase) {
            entry.new_leader_ms
        } else {
            self.stamp.saturating_add_signed(entry.dt_ms)
        };
        (self.index, self.stamp)
    }
}

/// Applies `entries` to every machine in lockstep and asserts equal outputs. The first
/// machine is lent each command and the others own theirs, so every comparison also
/// shows the two ways of applying agree.
fn apply_all(feeder: &mut Feeder, machines: &mut [&mut StateMachine], entries: &[Entry]) {
    for entry in entries {
        let (index, stamp) = feeder.next(entry);
        let command = feeder.resolve(&entry.command);
        let (first, rest) = machines.split_first_mut().expect("a machine");
        let out = first.apply(index, stamp, &command);
        first.check_invariants().unwrap_or_else(|e| panic!("entry {index} {command:?}: {e}"));
        for other in rest.iter_mut() {
            let theirs = other.apply(index, stamp, command.clone());
            assert_eq!(out, theirs, "entry {index} {command:?}: outputs differ");
        }
        feeder.record(&command, &out);
    }
}

fn assert_same_state(a: &StateMachine, b: &StateMachine) {
    assert_eq!(a.snapshot(), b.snapshot(), "snapshots differ");
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.clock_ms(), b.clock_ms());
    assert_eq!(a.last_applied(), b.last_applied());
    assert_eq!(a.last_fence(), b.last_fence());
    assert_eq!(a.next_deadline_ms(), b.next_deadline_ms());
    assert_eq!(a.time_offset_ms(), b.time_offset_ms());
}

fn reached(entries: &[Entry]) -> StateMachine {
    let mut sm = StateMachine::default();
    apply_all(&mut Feeder::new(), &mut [&mut sm], entries);
    sm
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Same log, same outputs, same bytes.
    #[test]
    fn same_log_same_state(entries in log(1..250)) {
        let mut a = StateMachine::default();
        let mut b = StateMachine::new(Limits::default());
        let mut feeder = Feeder::new();
        for chunk in entries.chunks(50) {
            apply_all(&mut feeder, &mut [&mut a, &mut b], chunk);
            assert_same_state(&a, &b);
        }
    }

    /// A restored machine is the same machine: same bytes now, same answers later.
    #[test]
    fn snapshot_round_trip(before in log(0..200), after in log(0..100)) {
        let mut original = StateMachine::default();
        let mut feeder = Feeder::new();
        apply_all(&mut feeder, &mut [&mut original], &before);
        let bytes = original.snapshot();
        let mut restored = StateMachine::restore(Limits::default(), &bytes).expect("own snapshot restores");
        prop_assert_eq!(&restored.snapshot(), &bytes);
        assert_same_state(&original, &restored);
        restored.check_invariants().expect("restored invariants");

        let (first, second) = after.split_at(after.len() / 2);
        apply_all(&mut feeder, &mut [&mut original, &mut restored], first);
        assert_same_state(&original, &restored);
        // And once more from the restored machine's own snapshot.
        let mut again = StateMachine::restore(Limits::default(), &restored.snapshot()).expect("restores again");
        apply_all(&mut feeder, &mut [&mut original, &mut restored, &mut again], second);
        assert_same_state(&original, &restored);
        assert_same_state(&original, &again);
    }

    /// A frozen copy encodes the state of its moment, whatever is applied after it
    /// (the server encodes it off the state lock while apply goes on).
    #[test]
    fn a_frozen_copy_keeps_its_moment(before in log(0..200), after in log(1..100)) {
        let mut sm = StateMachine::default();
        let mut feeder = Feeder::new();
        apply_all(&mut feeder, &mut [&mut sm], &before);
        let expected = sm.snapshot();
        let frozen = sm.freeze();
        apply_all(&mut feeder, &mut [&mut sm], &after);
        let mut written = Vec::new();
        frozen.snapshot_into(&mut written);
        prop_assert_eq!(&written, &expected);
        prop_assert_ne!(&sm.snapshot(), &expected, "the live state moved on");
    }

    /// Header damage and truncation get the matching error.
    #[test]
    fn corrupt_snapshots_are_refused(
        entries in log_without_compaction(0..80),
        header_len in 0usize..12,
        magic_at in 0usize..8,
        magic_xor in 1u8..=255,
        version in any::<u32>().prop_filter("another version", |v| *v != SNAPSHOT_VERSION),
        cut in any::<prop::sample::Index>(),
        trailing in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let bytes = reached(&entries).snapshot();
        prop_assert!(bytes.len() > 12);

        prop_assert_eq!(StateMachine::restore(Limits::default(), &bytes[..header_len]).err(), Some(SnapshotError::BadMagic));

        let mut bad_magic = bytes.clone();
        bad_magic[magic_at] ^= magic_xor;
        prop_assert_eq!(StateMachine::restore(Limits::default(), &bad_magic).err(), Some(SnapshotError::BadMagic));

        let mut other_version = bytes.clone();
        other_version[8..12].copy_from_slice(&version.to_le_bytes());
        prop_assert_eq!(
            StateMachine::restore(Limits::default(), &other_version).err(),
            Some(SnapshotError::UnsupportedVersion(version))
        );

        // Any cut inside the body: the state no longer decodes, or (a cut right where
        // the sections begin) it decodes without them and no longer holds together.
        let body_cut = 12 + cut.index(bytes.len() - 12);
        let truncated = StateMachine::restore(Limits::default(), &bytes[..body_cut]);
        prop_assert!(
            matches!(truncated, Err(SnapshotError::Corrupt(_) | SnapshotError::Inconsistent(_))),
            "cut at {} of {}: {:?}", body_cut, bytes.len(), truncated.map(|_| ())
        );

        let mut longer = bytes.clone();
        longer.extend_from_slice(&trailing);
        let longer = StateMachine::restore(Limits::default(), &longer);
        prop_assert!(matches!(longer, Err(SnapshotError::Corrupt(_))), "{:?}", longer.map(|_| ()));
    }

    /// Arbitrary damage to the body never panics: it is refused, or what is accepted
    /// keeps every invariant.
    #[test]
    fn damaged_snapshots_never_panic(
        entries in log(0..80),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let mut bytes = reached(&entries).snapshot();
        let body = bytes.len() - 12;
        for (at, xor) in flips {
            bytes[12 + at.index(body)] ^= xor;
        }
        if let Ok(sm) = StateMachine::restore(Limits::default(), &bytes) {
            prop_assert!(sm.check_invariants().is_ok());
        }
    }
}

#[test]
fn empty_and_foreign_bytes_are_not_snapshots() {
    let restore = |bytes: &[u8]| StateMachine::restore(Limits::default(), bytes).err();
    assert_eq!(restore(b""), Some(SnapshotError::BadMagic));
    assert_eq!(restore(b"FENCELCK"), Some(SnapshotError::BadMagic));
    assert_eq!(restore(b"{\"clock_ms\": 0, \"locks\": {}}"), Some(SnapshotError::BadMagic));
    let mut header = StateMachine::default().snapshot();
    header.truncate(12);
    assert!(matches!(restore(&header), Some(SnapshotError::Corrupt(_))));
    header[8..12].copy_from_slice(&(SNAPSHOT_VERSION + 1).to_le_bytes());
    assert_eq!(restore(&header), Some(SnapshotError::UnsupportedVersion(SNAPSHOT_VERSION + 1)));
}

// ---------------------------------------------------------------------------------
// Suspected core bugs: `restore` accepts snapshots whose tables disagree in ways
// `check_invariants` does not look at, and the replica panics later, on a read or
// when a timer fires, instead of refusing them with `SnapshotError::Inconsistent`.
// Each case patches one field of a real snapshot, found by a marker string.

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Where the `nth` (0-based) occurrence of `needle` ends.
fn end_of(haystack: &[u8], needle: &[u8], nth: usize) -> usize {
    let starts = haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i);
    starts.clone().nth(nth).unwrap_or_else(|| panic!("occurrence {nth} of {needle:?} in {haystack:?}")) + needle.len()
}

/// The panic message of `f`, if it panics.
fn panic_of(f: impl FnOnce()) -> Option<String> {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).err()?;
    let text =
        payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned());
    Some(text.unwrap_or_default())
}

/// Restores `bytes`, and if they are accepted runs `then` on the machine; fails unless
/// they were refused as inconsistent.
fn assert_refused_as_inconsistent(bytes: &[u8], then: impl FnOnce(&mut StateMachine)) {
    match StateMachine::restore(Limits::default(), bytes) {
        Err(SnapshotError::Inconsistent(_)) => {}
        Err(other) => panic!("refused, but as {other:?}"),
        Ok(mut sm) => {
            let later = panic_of(|| then(&mut sm));
            panic!("inconsistent snapshot accepted; afterwards the machine panicked with {later:?}");
        }
    }
}

#[test]

fn regression_restore_refuses_holder_identity_overrun() {
    let mut sm = StateMachine::default();
    let lock = LockRequest {
        names: vec![b("lk")],
        owner: b("OWNER"),
        token: b("TOKEN"),
        mode: LockMode::Exclusive,
        ttl_ms: 60_000,
        session: None,
        metadata: Bytes::new(),
        wait: Wait::Try,
        condition: None,
        idempotent: false,
    };
    assert!(matches!(sm.apply(1, 1_000, Command::Lock(lock)).reply, Ok(Reply::Grant(_))));
    let mut bytes = sm.snapshot();
    // The holder's packed identity "OWNERTOKEN" is followed by owner_len 5, token_len 5.
    let at = end_of(&bytes, b"OWNERTOKEN", 0);
    assert_eq!(bytes[at..at + 2], [5, 5], "snapshot layout changed; find the length fields again");
    bytes[at] = 100;
    assert_refused_as_inconsistent(&bytes, |sm| {
        let _ = sm.read(&Command::LockInfo { name: b("lk") });
    });
}

#[test]

fn regression_restore_refuses_barrier_member_mismatch() {
    let mut sm = StateMachine::default();
    let arrive =
        Command::BarrierWait { name: b("bar"), parties: 2, participant: b("PARTICIPANT"), wait_ms: Some(1_000) };
    assert_eq!(sm.apply(1, 1_000, arrive).reply, Ok(Reply::Queued(1)));
    let mut bytes = sm.snapshot();
    // First copy: the waiter's; second: the barrier's member list.
    let at = end_of(&bytes, b"PARTICIPANT", 1);
    bytes[at - 1] = b'X';
    assert_refused_as_inconsistent(&bytes, |sm| {
        sm.apply(2, 5_000, Command::Tick);
    });
}

#[test]

fn regression_restore_refuses_queue_popper_slot_mismatch() {
    let mut sm = StateMachine::default();
    let pop = Command::QueuePop { name: b("QUEUE"), wait: Wait::Queue { wait_ms: Some(1_000), priority: 0 } };
    assert_eq!(sm.apply(1, 1_000, pop).reply, Ok(Reply::Queued(1)));
    let mut bytes = sm.snapshot();
    // The waiter's kind holds the queue name, then its slot (priority 0 as zigzag 0, id 1).
    let at = end_of(&bytes, b"QUEUE", 0);
    assert_eq!(bytes[at..at + 2], [0, 1], "snapshot layout changed; find the slot again");
    bytes[at] = 2; // priority -1 in the waiter, still 0 in the queue's popper set
    assert_refused_as_inconsistent(&bytes, |sm| {
        sm.apply(2, 5_000, Command::Tick);
    });
}

/// A damaged length before a persistent table (locks, keys, deadlines) made imbl's own
/// reader reserve room for that many entries and panic ("capacity overflow"); found
/// by `damaged_snapshots_never_panic`. They are read entry by entry now.
#[test]
fn regression_restore_refuses_a_huge_table_length() {
    let bytes = StateMachine::default().snapshot();
    // Header (12 bytes), then the clock, offset, last applied and last fence (one zero
    // byte each when empty), then the locks table's length.
    assert_eq!(bytes[12..17], [0, 0, 0, 0, 0], "snapshot layout changed; find the locks length again");
    let mut damaged = bytes[..16].to_vec();
    damaged.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    damaged.extend_from_slice(&bytes[17..]);
    assert!(matches!(StateMachine::restore(Limits::default(), &damaged), Err(SnapshotError::Corrupt(_))));
}
