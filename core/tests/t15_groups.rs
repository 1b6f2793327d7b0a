//! Grouped entries (`apply_group`): concurrent clients' writes applied in one log entry
//! must answer and leave the state exactly as the same commands in entries of their
//! own, except for fence values, which stay unique and increasing.

mod common;

use common::*;
use fencelock_core::{Command, Event, Reply, StateMachine};
use proptest::prelude::*;

/// The debug text of a value with every fence number replaced: the one thing a group
/// may number differently.
fn without_fences(text: String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("fence: ") {
        out.push_str(&rest[..at + "fence: ".len()]);
        rest = rest[at + "fence: ".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('_');
    }
    out.push_str(rest);
    out
}

/// Every fence a reply or event hands out, in order.
fn fences(replies: &[Reply], events: &[Event]) -> Vec<u64> {
    let from_replies = replies.iter().filter_map(|r| match r {
        Reply::Grant(g) => Some(g.fence),
        _ => None,
    });
    let from_events = events.iter().filter_map(|e| match e {
        Event::Granted { grant, .. } => Some(grant.fence),
        _ => None,
    });
    from_replies.chain(from_events).collect()
}

const NAMES: [&str; 3] = ["a", "b", "c"];
const OWNERS: [&str; 3] = ["alice", "bob", "carol"];

/// One groupable command from a small space, so that commands in a group meet.
fn command(kind: u8, name: usize, owner: usize) -> Command {
    let (name, owner) = (NAMES[name % 3], OWNERS[owner % 3]);
    match kind % 6 {
        0 => Command::Lock(lock(&[name], owner, 10_000)),
        1 => Command::Lock(lock(&[name, NAMES[(name.len() + 1) % 3]], owner, 5_000)),
        2 => unlock(&[name], owner),
        3 => renew(&[name], owner, 20_000),
        4 => set_nx_px(&format!("k{name}"), owner, 30_000),
        _ => Command::Del { keys: vec![b(&format!("k{name}"))] },
    }
}

/// A state with holders and a queued waiter on `a`, so that a release in the group
/// grants it.
fn seeded() -> Driver {
    let mut d = Driver::with(StateMachine::default());
    d.ok(Command::Lock(lock(&["a"], "alice", 10_000)));
    d.ok(Command::Lock(queued(lock(&["a"], "dave", 10_000), None, 0)));
    d.ok(set_nx_px("kb", "bob", 30_000));
    d
}

/// What reads show of every name and key, fences left out.
fn view(sm: &StateMachine) -> String {
    let mut out = String::new();
    for name in NAMES {
        out += &format!("{:?}\n", sm.read(&Command::LockInfo { name: b(name) }));
        out += &format!("{:?}\n", sm.read(&Command::Get { key: b(&format!("k{name}")) }));
    }
    out += &format!("{:?}\n", sm.read(&Command::Exists { keys: vec![b("list")] }));
    without_fences(out)
}

proptest! {
    #[test]
    fn a_group_answers_and_ends_as_its_commands_in_entries_of_their_own(
        picks in prop::collection::vec((0u8..6, 0usize..3, 0usize..3), 1..24)
    ) {
        let commands: Vec<Command> = picks.iter().map(|&(k, n, o)| command(k, n, o)).collect();
        let (mut alone, mut grouped) = (seeded(), seeded());
        let last_fence = |d: &Driver| d.sm.read(&Command::Fence { name: b("a") }).ok();
        prop_assert_eq!(last_fence(&alone), last_fence(&grouped));

        let mut replies = Vec::new();
        let mut events = Vec::new();
        for c in &commands {
            let out = alone.run(c.clone());
            replies.push(out.reply);
            events.extend(out.events);
        }
        grouped.index += 1;
        let out = grouped.sm.apply_group(grouped.index, grouped.now_ms, &commands);
        grouped.sm.check_invariants().map_err(TestCaseError::fail)?;

        prop_assert_eq!(without_fences(format!("{replies:?}")), without_fences(format!("{:?}", out.replies)));
        prop_assert_eq!(without_fences(format!("{events:?}")), without_fences(format!("{:?}", out.events)));
        prop_assert_eq!(view(&alone.sm), view(&grouped.sm));

        // The fences are the same up to renumbering: equal where they were equal (a
        // reentrant acquire keeps its fence), in the same order where they differed.
        let ok = |r: &Vec<_>| r.iter().filter_map(|r: &fencelock_core::Result<Reply>| r.clone().ok()).collect::<Vec<_>>();
        let (was, now) = (fences(&ok(&replies), &events), fences(&ok(&out.replies), &out.events));
        prop_assert_eq!(was.len(), now.len());
        for i in 0..was.len() {
            for j in 0..was.len() {
                prop_assert_eq!(was[i].cmp(&was[j]), now[i].cmp(&now[j]), "fences {:?} against {:?}", was, now);
            }
        }
        // New fences (above the seeded state's last, 3) are at or above the group's index.
        prop_assert!(now.iter().all(|&f| f <= 3 || f >= grouped.index), "fences {:?} at index {}", now, grouped.index);
        let sorted = now.clone();
        // The next entry's grant still gets a fence above all of them.
        let after = grant(grouped.ok(Command::Lock(lock(&["fresh"], "erin", 1_000))));
        prop_assert!(sorted.iter().all(|&f| f < after.fence));
    }
}

#[test]
fn a_release_in_a_group_grants_the_queued_waiter_before_the_next_command_runs() {
    let mut d = seeded();
    d.index += 1;
    // alice releases `a`, so dave (queued) holds it; bob's try-acquire after that in the
    // same entry finds it held, as it would in the next entry.
    let out =
        d.sm.apply_group(d.index, d.now_ms, &[unlock(&["a"], "alice"), Command::Lock(lock(&["a"], "bob", 10_000))]);
    assert_eq!(out.replies[0], Ok(Reply::Int(0)));
    assert_eq!(out.replies[1], Err(fencelock_core::Error::Locked));
    let granted: Vec<u64> = fences(&[], &out.events);
    assert_eq!(granted, vec![d.index], "dave's grant takes the entry's index as its fence");
    d.sm.check_invariants().unwrap();
}

#[test]
fn a_command_that_draws_an_id_from_the_index_is_refused_in_a_group_and_changes_nothing() {
    let mut d = Driver::default();
    // A queued acquire's waiter id is the entry's index: two in one entry would collide.
    // Such an entry can only come from a bug or a peer that groups differently; every
    // replica refuses the command the same way instead of stopping.
    let queued_lock = Command::Lock(queued(lock(&["a"], "alice", 10_000), None, 0));
    let out = d.sm.apply_group(1, d.now_ms, &[queued_lock, Command::Lock(lock(&["b"], "bob", 10_000))]);
    assert!(matches!(out.replies[0], Err(fencelock_core::Error::Invalid(_))), "{:?}", out.replies[0]);
    assert!(matches!(out.replies[1], Ok(Reply::Grant(_))), "the others in the entry still apply");
    assert_eq!(d.read(Command::Fence { name: b("a") }), Reply::Nil, "a was not granted");
    d.sm.check_invariants().unwrap();
}

#[test]
fn which_commands_may_share_an_entry() {
    assert!(Command::Lock(lock(&["a"], "alice", 1)).is_groupable());
    assert!(unlock(&["a"], "alice").is_groupable());
    assert!(renew(&["a"], "alice", 1).is_groupable());
    assert!(set_nx_px("k", "v", 1).is_groupable());
    assert!(Command::Del { keys: vec![b("k")] }.is_groupable());
    assert!(!Command::Lock(queued(lock(&["a"], "alice", 1), Some(5), 0)).is_groupable());
    assert!(!Command::SessionOpen { ttl_ms: 1_000 }.is_groupable());
    assert!(!Command::Tick.is_groupable());
}

/// A member of a group that also runs scripts (`apply_group_with`).
#[derive(Debug, Clone)]
enum Member {
    Command(Command),
    /// redis-py's release script: GET the key, DEL it if it holds the token.
    Release {
        key: String,
        token: String,
    },
    /// A script that writes and then fails: all of it must be undone.
    Failing {
        key: String,
    },
}

type ScriptResult = std::result::Result<Vec<fencelock_core::Result<Reply>>, String>;

#[derive(Debug)]
enum Answer {
    Command(fencelock_core::Result<Reply>),
    Script(ScriptResult),
}

fn run_script(member: &Member, s: &mut fencelock_core::Script<'_>) -> ScriptResult {
    match member {
        Member::Release { key, token } => {
            let got = s.call(Command::Get { key: b(key) });
            let mut calls = vec![got.clone()];
            if got == Ok(Reply::Bulk(b(token))) {
                calls.push(s.call(Command::Del { keys: vec![b(key)] }));
            }
            Ok(calls)
        }
        Member::Failing { key } => {
            let _ = s.call(set_nx_px(key, "failed-writer", 30_000));
            let _ = s.call(Command::Del { keys: vec![b("kb")] });
            // A list push marks the key for poppers: the rollback must clear that too.
            let _ = s.call(Command::Push { key: b("list"), values: vec![b("x")], left: false });
            Err("ERR the script failed after writing".into())
        }
        Member::Command(_) => unreachable!("not a script"),
    }
}

fn member(kind: u8, name: usize, owner: usize) -> Member {
    let key = format!("k{}", NAMES[name % 3]);
    match kind % 8 {
        6 => Member::Release { key, token: OWNERS[owner % 3].into() },
        7 => Member::Failing { key },
        k => Member::Command(command(k, name, owner)),
    }
}

proptest! {
    #[test]
    fn a_group_with_scripts_answers_and_ends_as_its_members_in_entries_of_their_own(
        picks in prop::collection::vec((0u8..8, 0usize..3, 0usize..3), 1..24)
    ) {
        let members: Vec<Member> = picks.iter().map(|&(k, n, o)| member(k, n, o)).collect();
        let (mut alone, mut grouped) = (seeded(), seeded());

        let mut answers = Vec::new();
        let mut events = Vec::new();
        for m in &members {
            match m {
                Member::Command(c) => {
                    let out = alone.run(c.clone());
                    answers.push(Answer::Command(out.reply));
                    events.extend(out.events);
                }
                script => {
                    alone.index += 1;
                    let out = alone.sm.apply_script(alone.index, alone.now_ms, |s| run_script(script, s));
                    alone.sm.check_invariants().map_err(TestCaseError::fail)?;
                    answers.push(Answer::Script(out.result));
                    events.extend(out.events);
                }
            }
        }
        grouped.index += 1;
        let out = grouped.sm.apply_group_with(grouped.index, grouped.now_ms, &members, |g, m| match m {
            Member::Command(c) => Answer::Command(g.command(c)),
            script => Answer::Script(g.script(|s| run_script(script, s))),
        });
        grouped.sm.check_invariants().map_err(TestCaseError::fail)?;

        prop_assert_eq!(without_fences(format!("{answers:?}")), without_fences(format!("{:?}", out.replies)));
        prop_assert_eq!(without_fences(format!("{events:?}")), without_fences(format!("{:?}", out.events)));
        prop_assert_eq!(view(&alone.sm), view(&grouped.sm));
        // A failed script's key write never shows, in the group or alone.
        prop_assert!(!view(&grouped.sm).contains("failed-writer"));
        let after = grant(grouped.ok(Command::Lock(lock(&["fresh"], "erin", 1_000))));
        let granted = fences(&[], &out.events);
        prop_assert!(granted.iter().all(|&f| f < after.fence));
    }
}

#[test]
fn a_failing_script_in_a_group_is_undone_alone() {
    let mut d = seeded();
    d.index += 1;
    let members = [
        Member::Command(set_nx_px("kc", "carol", 30_000)),
        Member::Failing { key: "ka".into() },
        Member::Release { key: "kb".into(), token: "bob".into() },
    ];
    let out = d.sm.apply_group_with(d.index, d.now_ms, &members, |g, m| match m {
        Member::Command(c) => Answer::Command(g.command(c)),
        script => Answer::Script(g.script(|s| run_script(script, s))),
    });
    assert!(matches!(&out.replies[0], Answer::Command(Ok(Reply::Ok))), "{:?}", out.replies[0]);
    assert!(matches!(&out.replies[1], Answer::Script(Err(e)) if e.contains("failed after writing")));
    // The failed script had deleted kb; the release after it still finds bob's token.
    assert!(matches!(&out.replies[2], Answer::Script(Ok(calls)) if calls.len() == 2), "{:?}", out.replies[2]);
    assert_eq!(d.read(Command::Get { key: b("kc") }), Reply::Bulk(b("carol")), "the write before it stays");
    assert_eq!(d.read(Command::Get { key: b("ka") }), Reply::Nil, "the failed script's write is gone");
    assert_eq!(d.read(Command::Get { key: b("kb") }), Reply::Nil, "released by the last member");
    d.sm.check_invariants().unwrap();
}

#[test]
fn a_member_that_applies_a_command_and_then_a_script_grants_in_between() {
    // `GroupMember` is public: a caller may apply a command and then run a script in
    // one member. What the command freed is granted before the script starts, so the
    // script's rollback cannot drop the pending grant (nor panic every replica).
    let mut d = seeded();
    d.index += 1;
    let items = [()];
    let out = d.sm.apply_group_with(d.index, d.now_ms, &items, |member, ()| {
        let released = member.command(&unlock(&["a"], "alice"));
        let failed = member.script(|s| run_script(&Member::Failing { key: "kc".into() }, s));
        (released, failed.is_err())
    });
    assert_eq!(out.replies[0], (Ok(Reply::Int(0)), true));
    assert_eq!(fences(&[], &out.events), vec![d.index], "dave got a while alice's release was pending");
    assert_eq!(d.read(Command::Get { key: b("kc") }), Reply::Nil);
    d.sm.check_invariants().unwrap();
}
