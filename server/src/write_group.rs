//! Concurrent client writes grouped into one log entry.
//!
//! Every log entry costs the same whatever it carries: openraft's bookkeeping and a
//! reply channel, a WAL record, a slot in each follower's AppendEntries with its
//! decode, append and apply call on every node. At 64 clients the leader proposed
//! about 60 entries per replication round, one per client. The first writer that finds
//! no open group opens one and spawns a task that yields once, so the connection tasks
//! already woken by the same poll of the sockets join it; then the task closes the
//! group and proposes all of it as one `Op::Group` entry (a client that disconnects
//! must not take the others' writes with it). Each writer gets its own command's reply.
//!
//! Only commands that draw no id from the entry's index may share one
//! (`Command::is_groupable`: try-acquires, releases, renewals, SET, DEL), and the lock
//! clients' well-known scripts (`lua::known`: the six acquire, release and extend
//! scripts of redis-py and node-redlock) when their native body takes the inputs. A
//! group of commands only is an `Op::Group` entry; one that also runs scripts is an
//! `Op::GroupWrites` entry. A writer alone in its group is proposed as a plain entry,
//! as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fencelock_core::Command;
use tokio::sync::oneshot;

use crate::node::{Node, NodeError};
use crate::raft::{Applied, GroupWrite, Op};

/// Writes in one group entry. A bound on the entry (each write is at most
/// `COMMAND_BYTES_MAX`), and at 256 clients a round still forms a few groups.
pub const GROUP_COMMANDS_MAX: usize = 128;
/// A write larger than this is proposed on its own: a group entry stays under
/// `GROUP_COMMANDS_MAX` × this (8 MiB), far below the WAL's record bound.
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;

/// One writer's answer: `Applied::Core` for a command, `Applied::Script` for a script.
type Answer = Result<Applied, NodeError>;

struct Member {
    write: GroupWrite,
    answer: oneshot::Sender<Answer>,
}

/// What `WriteGroups::counts` reports (INFO stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCounts {
    /// Group entries proposed from this node.
    pub entries: u64,
    /// Writes those entries carried.
    pub writes: u64,
    /// Of those writes, the scripts.
    pub scripts: u64,
    /// Entries the leader refused (their writes then went alone).
    pub refused: u64,
}

/// The group being gathered, if any, and counts for INFO.
#[derive(Default)]
pub struct WriteGroups {
    open: Mutex<Option<Vec<Member>>>,
    /// Group entries proposed from this node.
    entries: AtomicU64,
    /// Writes those entries carried.
    writes: AtomicU64,
    /// Of those writes, the scripts.
    scripts: AtomicU64,
    /// Group entries the leader refused, whose writes then went alone.
    refused: AtomicU64,
}

fn bytes_of(items: &[Bytes]) -> usize {
    items.iter().map(|n| n.len()).sum()
}

/// The bytes a command carries, for the group bound (names, tokens, values).
fn command_bytes(command: &Command) -> usize {
    match command {
        // A condition can carry a value of up to the bulk limit: such a LOCK goes alone.
        Command::Lock(r) if r.condition.is_some() => usize::MAX,
        Command::Lock(r) => bytes_of(&r.names) + r.owner.len() + r.token.len() + r.metadata.len(),
        Command::Unlock { names, token } | Command::Renew { names, token, .. } => bytes_of(names) + token.len(),
        Command::Set(r) => r.key.len() + r.value.len(),
        Command::Del { keys } => bytes_of(keys),
        _ => usize::MAX,
    }
}

/// Whether `command` may join a group.
pub fn groupable(command: &Command) -> bool {
    command.is_groupable() && command_bytes(command) <= COMMAND_BYTES_MAX
}

/// Whether a script run may join a group: one of the lock clients' well-known scripts
/// with inputs its native body takes (it then runs in microseconds and touches only its
/// KEYS; `known::accepts`), within the bound.
pub fn groupable_eval(script: &[u8], keys: &[Bytes], args: &[Bytes]) -> bool {
    use crate::lua::known;
    known::recognize(script).is_some_and(|which| known::accepts(which, keys, args))
        && script.len() + bytes_of(keys) + bytes_of(args) <= COMMAND_BYTES_MAX
}

/// Whether `write` may join a group.
pub fn groupable_write(write: &GroupWrite) -> bool {
    match write {
        GroupWrite::Core(command) => groupable(command),
        GroupWrite::Eval { script, keys, args } => groupable_eval(script, keys, args),
    }
}

/// How a group the leader refused before proposing it is answered: nothing of it was
/// applied, so the node that formed it proposes each of its writes alone.
pub const GROUP_REFUSED: &str = "ERR group refused:";

/// Whether `op`, if it is a group entry, may be proposed by a leader whose cluster
/// reads groups (`groups_allowed`, from `levels`): the leader checks a group before
/// proposing it, whoever formed it (a follower forwards its groups, and its view of
/// the members' levels may lag the leader's). `Err` names the problem.
pub fn check_group(op: &Op, groups_allowed: bool) -> Result<(), String> {
    let (len, valid) = match op {
        Op::Group(commands) => (commands.len(), commands.iter().all(groupable)),
        Op::GroupWrites(writes) => (writes.len(), writes.iter().all(groupable_write)),
        _ => return Ok(()),
    };
    if !groups_allowed {
        return Err(format!(
            "{GROUP_REFUSED} not every member of the cluster reads write groups yet (an older build is a member)"
        ));
    }
    if (2..=GROUP_COMMANDS_MAX).contains(&len) && valid {
        return Ok(());
    }
    Err(format!(
        "{GROUP_REFUSED} a group entry holds 2 to {GROUP_COMMANDS_MAX} writes that may share an entry, each of at \
         most {COMMAND_BYTES_MAX} bytes; got {len} writes"
    ))
}

/// Whether `error` is a leader's refusal of a whole group (`check_group`), told
/// directly or through a forward.
fn refused_group(error: &NodeError) -> bool {
    matches!(error, NodeError::Refused(text) | NodeError::Fatal(text) if text.starts_with(GROUP_REFUSED))
}

impl WriteGroups {
    /// Adds `write` to the open group, or opens one. Returns the receiver for its
    /// answer and whether this writer opened the group (and must see it proposed); a
    /// full group hands the write back, to go alone.
    fn join(&self, write: GroupWrite) -> Result<(oneshot::Receiver<Answer>, bool), Box<GroupWrite>> {
        let (answer, receiver) = oneshot::channel();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *open {
            Some(group) if group.len() >= GROUP_COMMANDS_MAX => Err(Box::new(write)),
            Some(group) => {
                group.push(Member { write, answer });
                Ok((receiver, false))
            }
            None => {
                *open = Some(vec![Member { write, answer }]);
                Ok((receiver, true))
            }
        }
    }

    /// Group entries proposed from this node, the writes they carried, how many of
    /// those writes were scripts, and how many entries the leader refused.
    pub fn counts(&self) -> GroupCounts {
        let load = |count: &AtomicU64| count.load(Ordering::Relaxed);
        GroupCounts {
            entries: load(&self.entries),
            writes: load(&self.writes),
            scripts: load(&self.scripts),
            refused: load(&self.refused),
        }
    }

    fn close(&self) -> Vec<Member> {
        let group = self.open.lock().unwrap_or_else(|e| e.into_inner()).take();
        group.expect("the writer that opened a group closes it")
    }
}

/// Commits `write` (which must be `groupable_write`) in a group with whatever
/// concurrent writes join it, and returns its own answer: `Applied::Core` for a
/// command, `Applied::Script` for a script.
pub async fn join(node: &Arc<Node>, write: GroupWrite) -> Answer {
    debug_assert!(groupable_write(&write));
    let (receiver, opened) = match node.groups().join(write) {
        Ok(joined) => joined,
        // A full group: this one goes alone rather than wait for the next.
        Err(write) => return node.propose(Op::from(*write)).await,
    };
    if opened {
        // The group is closed and proposed by a task of its own, so this writer's
        // client going away cannot leave it open (every later writer would wait on it)
        // or take the others' writes with it. The task yields once first: the
        // connection tasks woken by the same poll of the sockets run before it and join.
        let node = Arc::clone(node);
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let group = node.groups().close();
            propose(&node, group).await;
        });
    }
    // The proposing task answers every member; it ends only by answering or by the
    // runtime shutting down.
    receiver.await.unwrap_or(Err(NodeError::Fatal(
        "the node is shutting down; the write may have been applied (check before retrying)".into(),
    )))
}

/// Proposes a closed group and answers its members.
async fn propose(node: &Node, mut group: Vec<Member>) {
    if group.len() == 1 {
        let Member { write, answer } = group.pop().expect("one member");
        let _ = answer.send(node.propose(Op::from(write)).await);
        return;
    }
    let (writes, answers): (Vec<GroupWrite>, Vec<oneshot::Sender<Answer>>) =
        group.into_iter().map(|m| (m.write, m.answer)).unzip();
    let count = writes.len();
    node.groups().entries.fetch_add(1, Ordering::Relaxed);
    node.groups().writes.fetch_add(count as u64, Ordering::Relaxed);
    let scripts = writes.iter().filter(|w| matches!(w, GroupWrite::Eval { .. })).count();
    node.groups().scripts.fetch_add(scripts as u64, Ordering::Relaxed);
    // `propose` counts the entry as one write in flight; the others count too, so the
    // log store's inline-sync gate ("one client write in flight") stays shut.
    let _others = node.write_load().start_writes(count - 1);
    // Commands only: an entry that nodes predating `GroupWrites` can read too.
    let op = Arc::new(if scripts == 0 {
        Op::Group(
            writes
                .into_iter()
                .filter_map(|w| match w {
                    GroupWrite::Core(command) => Some(command),
                    GroupWrite::Eval { .. } => None,
                })
                .collect(),
        )
    } else {
        Op::GroupWrites(writes)
    });
    let outcome = match node.propose_shared(Arc::clone(&op)).await {
        Ok(Applied::Multi(replies)) if scripts == 0 && replies.len() == count => {
            Ok(replies.into_iter().map(|reply| Ok(Applied::Core(reply))).collect())
        }
        Ok(Applied::Group(replies)) if scripts > 0 && replies.len() == count => {
            Ok(replies.into_iter().map(Ok).collect())
        }
        Ok(other) => Err(unexpected_for(count, &other)),
        Err(e) if refused_group(&e) => {
            node.groups().refused.fetch_add(1, Ordering::Relaxed);
            Ok(alone(node, &op).await)
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(replies) => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = answer.send(reply);
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

/// Proposes each write of a group the leader refused in an entry of its own, all at
/// once, and returns their answers in the group's order. The leader refused the group
/// before proposing it, so none of it was applied.
async fn alone(node: &Node, group: &Op) -> Vec<Answer> {
    let writes: Vec<GroupWrite> = match group {
        Op::Group(commands) => commands.iter().cloned().map(GroupWrite::Core).collect(),
        Op::GroupWrites(writes) => writes.clone(),
        other => unreachable!("only groups are refused as groups, not {other:?}"),
    };
    futures_util::future::join_all(writes.into_iter().map(|write| node.propose(Op::from(write)))).await
}

fn unexpected_for(count: usize, applied: &Applied) -> NodeError {
    NodeError::Fatal(format!("unexpected apply result for a group of {count}: {applied:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlock(name: &str) -> Command {
        Command::Unlock { names: vec![Bytes::copy_from_slice(name.as_bytes())], token: Bytes::from_static(b"t") }
    }

    fn release(script: &str, arg: Bytes) -> GroupWrite {
        GroupWrite::Eval {
            script: Bytes::from(script.to_owned()),
            keys: vec![Bytes::from_static(b"k")],
            args: vec![arg],
        }
    }

    fn py_release() -> &'static str {
        let (_, text) =
            crate::lua::known::SCRIPTS.iter().find(|(k, _)| *k == crate::lua::known::Known::PyRelease).unwrap();
        text
    }

    #[test]
    fn the_first_writer_opens_a_group_and_the_others_join_it_up_to_the_bound() {
        let groups = WriteGroups::default();
        let (_first, opened) = groups.join(GroupWrite::Core(unlock("a"))).ok().unwrap();
        assert!(opened);
        let mut receivers = Vec::new();
        for i in 1..GROUP_COMMANDS_MAX {
            let (receiver, opened) = groups.join(GroupWrite::Core(unlock(&format!("n{i}")))).ok().unwrap();
            assert!(!opened);
            receivers.push(receiver);
        }
        // Full: the next writer is refused and goes alone.
        assert!(groups.join(GroupWrite::Core(unlock("late"))).is_err());
        assert_eq!(groups.close().len(), GROUP_COMMANDS_MAX);
        // Closed: the next writer opens a new group.
        assert!(groups.join(GroupWrite::Core(unlock("next"))).ok().unwrap().1);
    }

    #[test]
    fn large_or_id_drawing_commands_are_not_grouped() {
        assert!(groupable(&unlock("a")));
        let big = Command::Unlock { names: vec![Bytes::from(vec![b'x'; COMMAND_BYTES_MAX + 1])], token: Bytes::new() };
        assert!(!groupable(&big));
        assert!(!groupable(&Command::SessionOpen { ttl_ms: 1_000 }));
        assert!(check_group(&Op::Group(vec![unlock("a"), unlock("b")]), true).is_ok());
        let one = check_group(&Op::Group(vec![unlock("a")]), true).unwrap_err();
        assert!(one.contains("2 to 128 writes") && one.contains("got 1 writes"), "{one}");
        assert!(check_group(&Op::Group(vec![unlock("a"), big]), true).is_err());
        assert!(check_group(&Op::Group(vec![unlock("a"); GROUP_COMMANDS_MAX + 1]), true).is_err());
        assert!(check_group(&Op::Core(unlock("a")), true).is_ok(), "not a group: nothing to check");
    }

    #[test]
    fn a_leader_whose_cluster_does_not_read_groups_refuses_them_and_the_refusal_is_recognised() {
        let group = Op::Group(vec![unlock("a"), unlock("b")]);
        let refused = check_group(&group, false).unwrap_err();
        assert!(refused.starts_with(GROUP_REFUSED) && refused.contains("older build"), "{refused}");
        assert!(check_group(&Op::Core(unlock("a")), false).is_ok(), "a write alone is never refused as a group");
        // Told directly (the leader formed it) or through a forward (a follower did).
        assert!(refused_group(&NodeError::Refused(refused.clone())));
        assert!(refused_group(&NodeError::Fatal(refused)));
        let bounds = check_group(&Op::Group(vec![unlock("a")]), true).unwrap_err();
        assert!(refused_group(&NodeError::Refused(bounds)));
        // Anything else may have been applied: never proposed again.
        assert!(!refused_group(&NodeError::Discarded));
        assert!(!refused_group(&NodeError::Refused("TRYAGAIN no quorum".into())));
        assert!(!refused_group(&NodeError::Fatal("disk full".into())));
    }

    /// Entries and answers travel between nodes and sit in the log as postcard, which
    /// numbers enum variants by position: a reorder would make every older log and peer
    /// unreadable.
    #[test]
    fn group_entries_keep_their_wire_numbers() {
        let op_tag = |op: &Op| postcard::to_stdvec(op).expect("encodes")[0];
        assert_eq!(op_tag(&Op::Core(unlock("a"))), 0);
        assert_eq!(op_tag(&Op::Multi(vec![])), 2);
        assert_eq!(op_tag(&Op::Group(vec![])), 3);
        assert_eq!(op_tag(&Op::GroupWrites(vec![])), 4);
        let applied_tag = |a: &Applied| postcard::to_stdvec(a).expect("encodes")[0];
        assert_eq!(applied_tag(&Applied::Multi(vec![])), 3);
        assert_eq!(applied_tag(&Applied::Group(vec![])), 4);
    }

    #[test]
    fn only_the_well_known_scripts_within_the_bound_are_grouped() {
        let token = Bytes::from_static(b"tok");
        assert!(groupable_write(&release(py_release(), token.clone())));
        // One byte different: the VM would run it, so it goes alone.
        let edited = py_release().replacen("return 0", "return  0", 1);
        assert!(!groupable_write(&release(&edited, token.clone())));
        // Inputs the native body would decline (no ARGV): the VM would run it, alone.
        let GroupWrite::Eval { script, keys, .. } = release(py_release(), token.clone()) else { unreachable!() };
        assert!(!groupable_eval(&script, &keys, &[]));
        let huge = Bytes::from(vec![b't'; COMMAND_BYTES_MAX]);
        assert!(!groupable_write(&release(py_release(), huge.clone())));
        let mixed = |arg: Bytes| Op::GroupWrites(vec![GroupWrite::Core(unlock("a")), release(py_release(), arg)]);
        assert!(check_group(&mixed(token), true).is_ok());
        assert!(check_group(&mixed(huge), true).is_err());
        assert!(check_group(
            &Op::GroupWrites(vec![GroupWrite::Core(Command::SessionOpen { ttl_ms: 1 }), GroupWrite::Core(unlock("a"))]),
            true
        )
        .is_err());
    }
}
