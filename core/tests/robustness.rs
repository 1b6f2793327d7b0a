//! Nothing a client can put in a command crashes the state machine or breaks an
//! invariant: arbitrary commands with hostile values (unknown ids, zero and huge TTLs,
//! empty and repeated names, zero and huge counts) applied in random order.

use bytes::Bytes;
use fencelock_core::{
    CampaignRequest, Command, Condition, Limits, LockMode, LockRequest, PutBackTo, SemaphoreRequest, SetCondition,
    SetExpiry, SetRequest, StateMachine, Wait,
};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| Bytes::from_static(s.as_bytes())),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from),
    ]
}

fn names() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(name(), 0..4)
}

fn ttl() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..5_000, Just(u64::MAX), Just(Limits::default().ttl_ms_max + 1)]
}

fn small_id() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..60, Just(u64::MAX)]
}

fn wait() -> impl Strategy<Value = Wait> {
    prop_oneof![
        Just(Wait::Try),
        (prop::option::of(prop_oneof![Just(0u64), 1u64..5_000, Just(u64::MAX)]), any::<i32>())
            .prop_map(|(wait_ms, priority)| Wait::Queue { wait_ms, priority }),
    ]
}

fn owner() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec!["", "o1", "o2", "o3"]).prop_map(|s| Bytes::from_static(s.as_bytes()))
}

fn command() -> impl Strategy<Value = Command> {
    let lock = (names(), owner(), owner(), any::<bool>(), ttl(), prop::option::of(small_id()), wait(), any::<u8>())
        .prop_map(|(names, owner, token, shared, ttl_ms, session, wait, cond)| {
            let condition = match cond % 4 {
                0 => Some(Condition::KeyEquals { key: Bytes::from_static(b"a"), value: None }),
                1 => Some(Condition::FenceEquals { name: Bytes::from_static(b"a"), fence: u64::from(cond) }),
                _ => None,
            };
            Command::Lock(LockRequest {
                names,
                owner,
                token,
                mode: if shared { LockMode::Shared } else { LockMode::Exclusive },
                ttl_ms,
                session,
                metadata: Bytes::new(),
                wait,
                condition,
                idempotent: false,
            })
        });
    let keyspace = prop_oneof![
        (
            name(),
            name(),
            0u8..3,
            prop_oneof![Just(SetExpiry::Clear), Just(SetExpiry::Keep), ttl().prop_map(SetExpiry::InMs)],
            any::<bool>(),
            prop::option::of(small_id())
        )
            .prop_map(|(key, value, c, expiry, get, session)| {
                let condition = [SetCondition::Always, SetCondition::IfAbsent, SetCondition::IfPresent][c as usize];
                Command::Set(SetRequest { key, value, condition, expiry, get, session })
            }),
        name().prop_map(|key| Command::Get { key }),
        names().prop_map(|keys| Command::Del { keys }),
        (name(), ttl()).prop_map(|(key, ttl_ms)| Command::PExpire { key, ttl_ms }),
        name().prop_map(|key| Command::Persist { key }),
        (name(), any::<i64>()).prop_map(|(key, delta)| Command::IncrBy { key, delta }),
        name().prop_map(|pattern| Command::Keys { pattern }),
        (prop::option::of(name()), prop::option::of(name()), any::<u64>())
            .prop_map(|(after, pattern, count)| Command::Scan { after, pattern, count, kind: None }),
        (name(), prop::collection::vec((name(), name()), 0..3)).prop_map(|(key, pairs)| Command::HSet { key, pairs }),
        (name(), names()).prop_map(|(key, fields)| Command::HDel { key, fields }),
        (name(), name(), any::<i64>()).prop_map(|(key, field, delta)| Command::HIncrBy { key, field, delta }),
        (name(), names(), any::<bool>()).prop_map(|(key, values, left)| Command::Push { key, values, left }),
        (name(), prop::option::of(any::<u64>()), any::<bool>()).prop_map(|(key, count, left)| Command::Pop {
            key,
            count,
            left
        }),
        (names(), prop::option::of(prop_oneof![Just(0u64), 1u64..5_000, Just(u64::MAX)]), any::<bool>())
            .prop_map(|(keys, wait_ms, left)| Command::BlockingPop { keys, wait_ms, left }),
    ];
    let coordination =
        prop_oneof![
            (name(), any::<u32>(), any::<u32>(), owner(), owner(), ttl(), prop::option::of(small_id()), wait())
                .prop_map(|(name, limit, count, owner, token, ttl_ms, session, wait)| Command::SemAcquire(
                    SemaphoreRequest { name, limit: limit % 4, count: count % 4, owner, token, ttl_ms, session, wait }
                )),
            (name(), owner()).prop_map(|(name, token)| Command::SemRelease { name, token }),
            (name(), owner(), ttl()).prop_map(|(name, token, ttl_ms)| Command::SemRenew { name, token, ttl_ms }),
            (name(), any::<i64>()).prop_map(|(name, delta)| Command::CounterAdd { name, delta }),
            (name(), names(), any::<i32>(), prop::option::of(small_id()))
                .prop_map(|(name, values, priority, session)| Command::QueuePush { name, values, priority, session }),
            (name(), wait()).prop_map(|(name, wait)| Command::QueuePop { name, wait }),
            (name(), 0u32..4, owner(), prop::option::of(0u64..3_000)).prop_map(
                |(name, parties, participant, wait_ms)| Command::BarrierWait { name, parties, participant, wait_ms }
            ),
            (name(), 0u32..4, owner(), prop::option::of(0u64..3_000)).prop_map(
                |(name, parties, participant, wait_ms)| Command::BarrierEnter { name, parties, participant, wait_ms }
            ),
            (name(), 0u32..4, owner(), prop::option::of(0u64..3_000), small_id()).prop_map(
                |(name, parties, participant, wait_ms, session)| Command::BarrierEnterSession {
                    name,
                    parties,
                    participant,
                    wait_ms,
                    session
                }
            ),
            (name(), owner(), prop::option::of(0u64..3_000))
                .prop_map(|(name, participant, wait_ms)| Command::BarrierLeave { name, participant, wait_ms }),
            (name(), owner(), any::<i32>(), any::<u64>(), small_id(), any::<bool>()).prop_map(
                |(key, value, priority, seq, session, list)| Command::PutBack {
                    key,
                    value,
                    to: if list {
                        PutBackTo::List { left: seq % 2 == 0 }
                    } else {
                        PutBackTo::Queue { priority, seq, session }
                    }
                }
            ),
            (name(), owner(), owner(), ttl(), prop::option::of(small_id()), wait()).prop_map(
                |(name, candidate, token, ttl_ms, session, wait)| Command::Campaign(CampaignRequest {
                    name,
                    candidate,
                    token,
                    value: Bytes::new(),
                    ttl_ms,
                    session,
                    wait
                })
            ),
            (name(), owner(), name()).prop_map(|(name, token, value)| Command::Proclaim { name, token, value }),
            (name(), owner()).prop_map(|(name, token)| Command::Resign { name, token }),
            (name(), owner(), ttl()).prop_map(|(name, token, ttl_ms)| Command::ElectionRenew { name, token, ttl_ms }),
            (name(), owner(), owner()).prop_map(|(name, token, to)| Command::Transfer { name, token, to }),
            (name(), name(), prop::option::of(any::<u64>())).prop_map(|(key, value, if_version)| Command::ConfigSet {
                key,
                value,
                if_version
            }),
            (name(), prop::option::of(any::<u64>()))
                .prop_map(|(key, if_version)| Command::ConfigDel { key, if_version }),
            any::<u64>().prop_map(|below| Command::ConfigCompact { below }),
        ];
    prop_oneof![
        4 => lock,
        2 => (names(), owner()).prop_map(|(names, token)| Command::Unlock { names, token }),
        1 => (names(), owner()).prop_map(|(names, token)| Command::LockWithdraw { names, token }),
        2 => (names(), owner(), ttl()).prop_map(|(names, token, ttl_ms)| Command::Renew { names, token, ttl_ms }),
        1 => small_id().prop_map(|waiter| Command::CancelWait { waiter }),
        1 => ttl().prop_map(|ttl_ms| Command::SessionOpen { ttl_ms }),
        1 => (small_id(), prop::option::of(ttl())).prop_map(|(session, ttl_ms)| Command::SessionKeepAlive { session, ttl_ms }),
        1 => small_id().prop_map(|session| Command::SessionClose { session }),
        1 => Just(Command::Tick),
        1 => Just(Command::Rebase),
        4 => keyspace,
        4 => coordination,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_commands_never_panic_or_break_invariants(
        steps in prop::collection::vec((command(), prop_oneof![Just(0u64), 1u64..100, Just(4_000u64), Just(u64::MAX / 4)]), 1..120)
    ) {
        let mut sm = StateMachine::default();
        let mut stamp = 0u64;
        for (index, (command, advance)) in steps.into_iter().enumerate() {
            stamp = stamp.saturating_add(advance);
            let read_only = command.is_read_only();
            let read = read_only.then(|| sm.read(&command));
            let fence_before = sm.last_fence();
            let may_wait = command.may_wait();
            let out = sm.apply(index as u64 + 1, stamp, command);
            // The server records the origin of every waiter by this test.
            prop_assert!(may_wait || !matches!(out.reply, Ok(fencelock_core::Reply::Queued(_))), "{:?}", out.reply);
            if let Err(e) = sm.check_invariants() {
                return Err(TestCaseError::fail(format!("after entry {}: {e}", index + 1)));
            }
            prop_assert!(sm.last_fence() >= fence_before);
            if let Some(read) = read {
                // A read answered outside the log agrees with the same read applied,
                // whenever the entry's own clock advance expired nothing.
                if out.events.is_empty() {
                    prop_assert_eq!(read, out.reply);
                }
            }
        }
    }
}
