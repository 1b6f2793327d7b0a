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
//! (`Command::is_groupable`: try-acquires, releases, renewals, SET, DEL). A writer alone
//! in its group is proposed as a plain entry, as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fencelock_core::{Command, Reply};
use tokio::sync::oneshot;

use crate::node::{Node, NodeError};
use crate::raft::{Applied, Op};

/// Commands in one group entry. A bound on the entry (each command is at most
/// `COMMAND_BYTES_MAX`), and at 256 clients a round still forms a few groups.
pub const GROUP_COMMANDS_MAX: usize = 128;
/// A command larger than this is proposed on its own: a group entry stays under
/// `GROUP_COMMANDS_MAX` × this (8 MiB), far below the WAL's record bound.
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;

/// One writer's answer.
type Answer = Result<fencelock_core::Result<Reply>, NodeError>;

struct Member {
    command: Command,
    answer: oneshot::Sender<Answer>,
}

/// The group being gathered, if any, and counts for INFO.
#[derive(Default)]
pub struct WriteGroups {
    open: Mutex<Option<Vec<Member>>>,
    /// Group entries proposed from this node.
    entries: AtomicU64,
    /// Writes those entries carried.
    writes: AtomicU64,
}

/// The bytes a command carries, for the group bound (names, tokens, values).
fn command_bytes(command: &Command) -> usize {
    let sum = |names: &[bytes::Bytes]| names.iter().map(|n| n.len()).sum::<usize>();
    match command {
        // A condition can carry a value of up to the bulk limit: such a LOCK goes alone.
        Command::Lock(r) if r.condition.is_some() => usize::MAX,
        Command::Lock(r) => sum(&r.names) + r.owner.len() + r.token.len() + r.metadata.len(),
        Command::Unlock { names, token } | Command::Renew { names, token, .. } => sum(names) + token.len(),
        Command::Set(r) => r.key.len() + r.value.len(),
        Command::Del { keys } => sum(keys),
        _ => usize::MAX,
    }
}

/// Whether `command` may join a group.
pub fn groupable(command: &Command) -> bool {
    command.is_groupable() && command_bytes(command) <= COMMAND_BYTES_MAX
}

/// Whether `commands` may be proposed as one group entry: the leader checks a group
/// before proposing it, whoever formed it (a follower forwards its groups).
pub fn valid_group(commands: &[Command]) -> bool {
    (2..=GROUP_COMMANDS_MAX).contains(&commands.len()) && commands.iter().all(groupable)
}

impl WriteGroups {
    /// Adds `command` to the open group, or opens one. Returns the receiver for its
    /// answer and whether this writer opened the group (and must see it proposed); a
    /// full group hands the command back, to go alone.
    fn join(&self, command: Command) -> Result<(oneshot::Receiver<Answer>, bool), Box<Command>> {
        let (answer, receiver) = oneshot::channel();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *open {
            Some(group) if group.len() >= GROUP_COMMANDS_MAX => Err(Box::new(command)),
            Some(group) => {
                group.push(Member { command, answer });
                Ok((receiver, false))
            }
            None => {
                *open = Some(vec![Member { command, answer }]);
                Ok((receiver, true))
            }
        }
    }

    /// Group entries proposed from this node, and the writes they carried.
    pub fn counts(&self) -> (u64, u64) {
        (self.entries.load(Ordering::Relaxed), self.writes.load(Ordering::Relaxed))
    }

    fn close(&self) -> Vec<Member> {
        let group = self.open.lock().unwrap_or_else(|e| e.into_inner()).take();
        group.expect("the writer that opened a group closes it")
    }
}

/// Commits `command` (which must be `groupable`) in a group with whatever concurrent
/// writes join it, and returns its own reply.
pub async fn write(node: &Arc<Node>, command: Command) -> Answer {
    debug_assert!(groupable(&command));
    let (receiver, opened) = match node.groups().join(command) {
        Ok(joined) => joined,
        // A full group: this one goes alone rather than wait for the next.
        Err(command) => return node.write_alone(*command).await,
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
        let Member { command, answer } = group.pop().expect("one member");
        let _ = answer.send(node.write_alone(command).await);
        return;
    }
    let (commands, answers): (Vec<Command>, Vec<oneshot::Sender<Answer>>) =
        group.into_iter().map(|m| (m.command, m.answer)).unzip();
    let count = commands.len();
    node.groups().entries.fetch_add(1, Ordering::Relaxed);
    node.groups().writes.fetch_add(count as u64, Ordering::Relaxed);
    // `propose` counts the entry as one write in flight; the others count too, so the
    // log store's inline-sync gate ("one client write in flight") stays shut.
    let _others = node.write_load().start_writes(count - 1);
    let outcome = match node.propose(Op::Group(commands)).await {
        Ok(Applied::Multi(replies)) if replies.len() == count => Ok(replies),
        Ok(other) => Err(NodeError::Fatal(format!("unexpected apply result for a group of {count}: {other:?}"))),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(replies) => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = answer.send(Ok(reply));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn unlock(name: &str) -> Command {
        Command::Unlock { names: vec![Bytes::copy_from_slice(name.as_bytes())], token: Bytes::from_static(b"t") }
    }

    #[test]
    fn the_first_writer_opens_a_group_and_the_others_join_it_up_to_the_bound() {
        let groups = WriteGroups::default();
        let (_first, opened) = groups.join(unlock("a")).ok().unwrap();
        assert!(opened);
        let mut receivers = Vec::new();
        for i in 1..GROUP_COMMANDS_MAX {
            let (receiver, opened) = groups.join(unlock(&format!("n{i}"))).ok().unwrap();
            assert!(!opened);
            receivers.push(receiver);
        }
        // Full: the next writer is refused and goes alone.
        assert!(groups.join(unlock("late")).is_err());
        assert_eq!(groups.close().len(), GROUP_COMMANDS_MAX);
        // Closed: the next writer opens a new group.
        assert!(groups.join(unlock("next")).ok().unwrap().1);
    }

    #[test]
    fn large_or_id_drawing_commands_are_not_grouped() {
        assert!(groupable(&unlock("a")));
        let big = Command::Unlock { names: vec![Bytes::from(vec![b'x'; COMMAND_BYTES_MAX + 1])], token: Bytes::new() };
        assert!(!groupable(&big));
        assert!(!groupable(&Command::SessionOpen { ttl_ms: 1_000 }));
        assert!(valid_group(&[unlock("a"), unlock("b")]));
        assert!(!valid_group(&[unlock("a")]), "one command is a plain entry");
        assert!(!valid_group(&[unlock("a"), big]));
        assert!(!valid_group(&vec![unlock("a"); GROUP_COMMANDS_MAX + 1]));
    }
}
