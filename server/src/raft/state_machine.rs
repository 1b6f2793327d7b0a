//! openraft's `RaftStateMachine` over fencelock-core.
//!
//! Applying an entry: rebase if the clock epoch changed, `core.apply(index, stamp,
//! command)`, send the reply to the proposer, and hand each event to the waiter it
//! names (`Waiters`). The waiter's channel is created *at apply time* of the entry
//! that queued it, on the node that proposed it (openraft gives a responder only
//! there), so an event can never arrive before the connection is listening.
//!
//! Snapshots are the core's snapshot bytes plus the last epoch, written atomically to
//! `<dir>/snapshot`; a restart loads it and openraft re-applies the log after it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fencelock_core::{Event, FrozenState, Limits, Reply, StateMachine};
use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::wal::{read_small, write_atomic_with};
use super::{Applied, GroupWrite, LogId, Op, Proposal, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::lua::LuaEngine;

/// Where waiting connections receive their one terminal event (grant, pop, barrier
/// pass, or the end of the wait).
#[derive(Default)]
pub struct Waiters {
    senders: Mutex<HashMap<u64, oneshot::Sender<Event>>>,
    receivers: Mutex<HashMap<u64, oneshot::Receiver<Event>>>,
}

impl Waiters {
    fn register(&self, waiter: u64) {
        let (tx, rx) = oneshot::channel();
        self.senders.lock().expect("not poisoned").insert(waiter, tx);
        self.receivers.lock().expect("not poisoned").insert(waiter, rx);
    }

    fn deliver(&self, waiter: u64, event: Event) {
        if let Some(tx) = self.senders.lock().expect("not poisoned").remove(&waiter) {
            // The connection may be gone; its CancelWait is on its way.
            let _ = tx.send(event);
        }
    }

    /// The receiver for a waiter this node queued. Taken once.
    pub fn take(&self, waiter: u64) -> Option<oneshot::Receiver<Event>> {
        self.receivers.lock().expect("not poisoned").remove(&waiter)
    }

    /// Waiters whose channel is still held (for INFO and tests).
    pub fn len(&self) -> usize {
        self.senders.lock().expect("not poisoned").len()
    }

    /// No waiter is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The snapshot body. The waiter origins follow it (`ImageWriter::finish`): builds
/// from before them read the image and ignore what follows (postcard stops at the
/// image's end), and an image without them reads as no origins.
#[derive(Serialize, Deserialize)]
struct Image {
    epoch: Option<u64>,
    core: Vec<u8>,
    retired: std::collections::BTreeSet<u64>,
}

/// Which node's connection queued each live waiter (waiter id → node id).
pub type WaiterOrigins = std::collections::BTreeMap<u64, u64>;

/// Writes `postcard(Image { epoch, core: core.snapshot(), retired })` without a second
/// copy of the core's bytes (about 90 MB at 1M locks): the core snapshots straight into
/// the image after room for its length prefix, and the gap is closed afterwards.
struct ImageWriter {
    out: Vec<u8>,
    /// Where the core's length prefix goes; the core's bytes start `VARINT_MAX` later.
    prefix_at: usize,
}

/// The longest postcard varint (a u64).
const VARINT_MAX: usize = 10;

impl ImageWriter {
    fn start(epoch: Option<u64>) -> io::Result<ImageWriter> {
        let mut out = postcard::to_stdvec(&epoch).map_err(io_err)?;
        let prefix_at = out.len();
        out.resize(prefix_at + VARINT_MAX, 0);
        Ok(ImageWriter { out, prefix_at })
    }

    /// The core's bytes, from a copy frozen under the state lock.
    fn core(mut self, core: &FrozenState) -> ImageWriter {
        core.snapshot_into(&mut self.out);
        self
    }

    fn finish(mut self, retired: &std::collections::BTreeSet<u64>, origins: &WaiterOrigins) -> io::Result<Vec<u8>> {
        let body_at = self.prefix_at + VARINT_MAX;
        let body_len = (self.out.len() - body_at) as u64;
        let prefix = postcard::to_stdvec(&body_len).map_err(io_err)?;
        let end = self.prefix_at + prefix.len();
        self.out[self.prefix_at..end].copy_from_slice(&prefix);
        self.out.copy_within(body_at.., end);
        self.out.truncate(self.out.len() - (VARINT_MAX - prefix.len()));
        postcard::to_io(retired, &mut self.out).map_err(io_err)?;
        postcard::to_io(origins, &mut self.out).map_err(io_err)?;
        Ok(self.out)
    }
}

/// The on-disk snapshot file.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Everything behind the lock.
pub struct Inner {
    /// The deterministic state.
    pub core: StateMachine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    epoch: Option<u64>,
    /// Node ids that were members and were removed: never admitted again, because a
    /// node replaying the log from empty under an old id would pass through historical
    /// memberships that name it, and could form a second quorum (openraft's "node ids
    /// must not be reused").
    pub retired: std::collections::BTreeSet<u64>,
    /// Which node queued each live waiter, so that a restarted or removed node's
    /// waits can be ended (`Op::CancelWaitsOf`). Replicated: every node applies the
    /// same entries, and snapshots carry it.
    pub waiter_origins: WaiterOrigins,
    /// The last snapshot's metadata. Its data lives only in the file: at a million
    /// held locks it is about 90 MB, read back only for a follower that needs it.
    current: Option<SnapshotMeta>,
    /// The node's Lua VM; scripts run inside apply, under this lock.
    pub lua: LuaEngine,
}

/// Shared between openraft's state-machine worker and the connections' read path.
pub struct Shared {
    /// The state, behind a std mutex that is never held across an await.
    pub inner: Mutex<Inner>,
    /// Waiting connections.
    pub waiters: Waiters,
    /// This node's pub/sub subscribers.
    pub pubsub: crate::pubsub::Hub,
    /// This node's watches (OBSERVE) and their history.
    pub watches: crate::watch::Watches,
    /// This node's id: waiter channels are registered for entries it originated.
    local_node: std::sync::atomic::AtomicU64,
    /// The size of the last snapshot built, installed or loaded (0: none yet): the
    /// snapshot policy lets the log grow by this much before the next one.
    snapshot_bytes: std::sync::atomic::AtomicU64,
    dir: PathBuf,
    /// The core's limits (the key limit also bounds what a watch looks at).
    pub limits: Limits,
}

/// The state machine handle given to openraft (cheap to clone).
#[derive(Clone)]
pub struct SmStore {
    /// Shared state.
    pub shared: Arc<Shared>,
}

fn io_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl SmStore {
    /// Opens the state machine, loading the last snapshot in `dir` if there is one.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<SmStore> {
        crate::raft::wal::create_dir_durably(dir)?;
        let mut inner = Inner {
            core: StateMachine::new(limits.clone()),
            last_applied: None,
            membership: StoredMembership::default(),
            epoch: None,
            retired: Default::default(),
            waiter_origins: Default::default(),
            current: None,
            lua: LuaEngine::new().map_err(io::Error::other)?,
        };
        let mut snapshot_bytes = 0;
        if let Some(file) = read_snapshot_file(dir)? {
            inner.install(Loaded::decode(&file, &limits)?);
            inner.current = Some(file.meta);
            snapshot_bytes = file.data.len() as u64;
        }
        let applied = inner.last_applied.map_or(0, |l| l.index);
        let shared = Shared {
            inner: Mutex::new(inner),
            waiters: Waiters::default(),
            pubsub: crate::pubsub::Hub::default(),
            watches: crate::watch::Watches::new(applied),
            local_node: Default::default(),
            snapshot_bytes: snapshot_bytes.into(),
            dir: dir.to_path_buf(),
            limits,
        };
        Ok(SmStore { shared: Arc::new(shared) })
    }

    /// The size in bytes of the last snapshot this node built, installed or loaded (0:
    /// none yet).
    pub fn snapshot_bytes(&self) -> u64 {
        self.shared.snapshot_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("state lock is never poisoned: apply does not panic while holding it")
    }

    /// Applies a normal entry's op at `index` (the epoch already rebased), releasing
    /// the state lock before events go out.
    fn apply_op(&self, mut inner: std::sync::MutexGuard<'_, Inner>, index: u64, proposal: &Proposal) -> Applied {
        // The log store keeps its own reference to the op, so the core
        // borrows the command (copying only what it keeps).
        match &*proposal.op {
            Op::Core(command) => {
                let publish = matches!(command, fencelock_core::Command::Publish { .. });
                let out = inner.core.apply(index, proposal.stamp_ms, command);
                if let Ok(Reply::Queued(waiter)) = &out.reply {
                    inner.waiter_origins.insert(*waiter, proposal.origin);
                }
                drop(inner);
                if proposal.origin == self.shared.local_node.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(Reply::Queued(waiter)) = &out.reply {
                        self.shared.waiters.register(*waiter);
                    }
                }
                let delivered = self.dispatch(index, out.events);
                match out.reply {
                    // PUBLISH answers how many of this node's subscribers got it.
                    Ok(Reply::Int(0)) if publish => Applied::Core(Ok(Reply::Int(delivered as i64))),
                    reply => Applied::Core(reply),
                }
            }
            Op::Group(commands) => {
                let out = inner.core.apply_group(index, proposal.stamp_ms, commands);
                drop(inner);
                self.dispatch(index, out.events);
                Applied::Multi(out.replies)
            }
            Op::GroupWrites(writes) => {
                let Inner { core, lua, .. } = &mut *inner;
                let out = core.apply_group_with(index, proposal.stamp_ms, writes, |member, write| match write {
                    GroupWrite::Core(command) => Applied::Core(member.command(command)),
                    GroupWrite::Eval { script, keys, args } => {
                        Applied::Script(member.script(|s| lua.run(script, keys, args, s)))
                    }
                });
                drop(inner);
                self.dispatch(index, out.events);
                Applied::Group(out.replies)
            }
            Op::Multi(commands) => {
                let out = inner.core.apply_script(index, proposal.stamp_ms, |s| {
                    Ok::<_, std::convert::Infallible>(commands.iter().map(|c| s.call(c.clone())).collect::<Vec<_>>())
                });
                drop(inner);
                self.dispatch(index, out.events);
                let Ok(replies) = out.result;
                Applied::Multi(replies)
            }
            Op::Eval { script, keys, args } => {
                let Inner { core, lua, .. } = &mut *inner;
                let out = core.apply_script(index, proposal.stamp_ms, |s| lua.run(script, keys, args, s));
                drop(inner);
                self.dispatch(index, out.events);
                Applied::Script(out.result)
            }
            Op::CancelWaitsOf { origin } => {
                // Every waiter this node queued before this entry (ids are the indexes
                // of the entries that queued them).
                let ended: Vec<u64> = inner
                    .waiter_origins
                    .iter()
                    .filter(|(waiter, from)| **from == *origin && **waiter < index)
                    .map(|(waiter, _)| *waiter)
                    .collect();
                for waiter in &ended {
                    inner.waiter_origins.remove(waiter);
                }
                let out = inner.core.apply_cancel_waits(index, proposal.stamp_ms, &ended);
                drop(inner);
                self.dispatch(index, out.events);
                Applied::Core(out.reply)
            }
        }
    }

    /// Tells the adapter which node it runs on (before any entry is applied).
    pub fn set_local_node(&self, id: u64) {
        self.shared.local_node.store(id, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Inner {
    /// The clock epoch of the last applied proposal.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Puts a decoded snapshot in place; hands back the state it replaces.
    fn install(&mut self, loaded: Loaded) -> StateMachine {
        self.epoch = loaded.epoch;
        self.retired = loaded.retired;
        self.waiter_origins = loaded.waiter_origins;
        self.last_applied = loaded.last_applied;
        self.membership = loaded.membership;
        std::mem::replace(&mut self.core, loaded.core)
    }
}

/// A snapshot file decoded, ready to put in place.
struct Loaded {
    core: StateMachine,
    epoch: Option<u64>,
    retired: std::collections::BTreeSet<u64>,
    waiter_origins: WaiterOrigins,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl Loaded {
    fn decode(file: &SnapshotFile, limits: &Limits) -> io::Result<Loaded> {
        let (image, rest): (Image, &[u8]) = postcard::take_from_bytes(&file.data).map_err(io_err)?;
        // Images from before the waiter origins end here.
        let waiter_origins =
            if rest.is_empty() { WaiterOrigins::new() } else { postcard::from_bytes(rest).map_err(io_err)? };
        Ok(Loaded {
            core: StateMachine::restore(limits.clone(), &image.core).map_err(io_err)?,
            epoch: image.epoch,
            retired: image.retired,
            waiter_origins,
            last_applied: file.meta.last_log_id,
            membership: file.meta.last_membership.clone(),
        })
    }
}

impl SmStore {
    /// Hands each event to the waiter it names, pub/sub messages to subscribers, the
    /// rest to the broadcast for watchers. Returns how many subscribers got messages.
    fn dispatch(&self, revision: u64, events: Vec<Event>) -> usize {
        self.forget_ended_waiters(&events);
        for conn in self.shared.watches.record(revision, &events) {
            // Its queue is full: dropping its senders closes it, with the reason.
            self.shared.pubsub.detach(conn);
        }
        let mut delivered = 0;
        for event in events {
            self.notify_channels(&event);
            if let Event::Published { channel, message } = &event {
                delivered += self.shared.pubsub.publish(channel, message);
                continue;
            }
            let waiter = match &event {
                Event::Granted { waiter, .. }
                | Event::Popped { waiter, .. }
                | Event::BarrierPassed { waiter }
                | Event::WaitEnded { waiter, .. } => Some(*waiter),
                _ => None,
            };
            // Other events reached their watchers through `record` above.
            if let Some(waiter) = waiter {
                self.shared.waiters.deliver(waiter, event);
            }
        }
        // A subscriber that overflowed also loses its watches: they hold clones of its
        // queue's sender, and while any is alive the queue never closes, so the
        // connection would go on without its subscriptions and never be told.
        for conn in self.shared.pubsub.take_overflowed() {
            self.shared.watches.drop_conn(conn);
        }
        delivered
    }
}

impl SmStore {
    /// Drops the origins of the waiters whose wait `events` end (granted, popped,
    /// passed, or ended).
    fn forget_ended_waiters(&self, events: &[Event]) {
        let ended = |e: &Event| match e {
            Event::Granted { waiter, .. }
            | Event::Popped { waiter, .. }
            | Event::BarrierPassed { waiter }
            | Event::WaitEnded { waiter, .. } => Some(*waiter),
            _ => None,
        };
        if !events.iter().any(|e| ended(e).is_some()) {
            return;
        }
        let mut inner = self.lock();
        for waiter in events.iter().filter_map(ended) {
            inner.waiter_origins.remove(&waiter);
        }
    }

    /// Pub/sub notifications for RESP2 clients: Redis's keyspace notifications
    /// (`__keyspace@0__:<key>` → event, `__keyevent@0__:<event>` → key) and
    /// `__election__:<name>` → the new leader's candidate id (empty: nobody leads).
    fn notify_channels(&self, event: &Event) {
        let hub = &self.shared.pubsub;
        if !hub.has_subscriptions() {
            return;
        }
        match crate::watch::Change::from_event(0, event) {
            Some(c) if c.class == crate::watch::Class::Key => {
                let mut keyspace = bytes::BytesMut::from(&b"__keyspace@0__:"[..]);
                keyspace.extend_from_slice(&c.target);
                hub.publish(&keyspace.freeze(), &bytes::Bytes::from_static(c.kind.as_bytes()));
                let keyevent = bytes::Bytes::from(format!("__keyevent@0__:{}", c.kind));
                hub.publish(&keyevent, &c.target);
            }
            Some(c) if c.class == crate::watch::Class::Election => {
                let mut channel = bytes::BytesMut::from(&b"__election__:"[..]);
                channel.extend_from_slice(&c.target);
                hub.publish(&channel.freeze(), &c.leader.map(|l| l.0).unwrap_or_default());
            }
            _ => {}
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // With a large table this takes hundreds of milliseconds (1M held locks: about
        // 100 MB to encode and fsync). On a runtime worker it stalled Raft: on 2 cores a
        // 3-node cluster lost its leader to missed heartbeats while filling 1M locks. A
        // blocking thread leaves the workers free for heartbeats and connections.
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.build_snapshot_now()).await.map_err(io_err)?
    }
}

impl SmStore {
    fn build_snapshot_now(&self) -> Result<Snapshot, io::Error> {
        // Under the lock only a frozen copy is taken (microseconds: the big tables are
        // persistent maps). Encoding it under the lock took 260 ms at 1M locks on an
        // idle machine and 1.5 s on 3 loaded nodes, and every apply and read waited:
        // a one-thread node stopped answering heartbeats, and an election followed.
        let started = std::time::Instant::now();
        let (frozen, epoch, retired, origins, meta, locked) = {
            let inner = self.lock();
            let meta = SnapshotMeta { last_log_id: inner.last_applied, last_membership: inner.membership.clone() };
            let origins = inner.waiter_origins.clone();
            (inner.core.freeze(), inner.epoch, inner.retired.clone(), origins, meta, started.elapsed())
        };
        let data = ImageWriter::start(epoch)?.core(&frozen).finish(&retired, &origins)?;
        drop(frozen);
        let file = SnapshotFile { meta, data };
        write_snapshot_file(&self.shared.dir, &file)?;
        self.lock().current = Some(file.meta.clone());
        self.shared.snapshot_bytes.store(file.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            index = file.meta.last_log_id.map_or(0, |l| l.index),
            bytes = file.data.len(),
            state_locked_us = locked.as_micros() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot { meta: file.meta, snapshot: file.data })
    }

    fn install_snapshot_now(&self, file: SnapshotFile) -> Result<(), io::Error> {
        // Decoded before the lock and the old state dropped after it: both take as
        // long as encoding (see build_snapshot_now).
        let loaded = Loaded::decode(&file, &self.shared.limits)?;
        let replaced = self.lock().install(loaded);
        drop(replaced);
        let index = file.meta.last_log_id.map_or(0, |l| l.index);
        for conn in self.shared.watches.reset(index) {
            self.shared.pubsub.detach_for(
                conn,
                format!(
                    "ERR this node installed a snapshot through revision {index} and cannot replay the changes it skipped; closing: observe again (FROM your last revision is refused with COMPACTED: observe, then re-read)"
                ),
            );
        }
        write_snapshot_file(&self.shared.dir, &file)?;
        self.shared.snapshot_bytes.store(file.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.lock().current = Some(file.meta);
        Ok(())
    }

    /// The last snapshot, read back from its file.
    fn read_current_snapshot(&self) -> Result<Option<Snapshot>, io::Error> {
        if self.lock().current.is_none() {
            return Ok(None);
        }
        Ok(read_snapshot_file(&self.shared.dir)?.map(|file| Snapshot { meta: file.meta, snapshot: file.data }))
    }
}

/// The snapshot file in `dir`, if there is one.
fn read_snapshot_file(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    read_small(dir, "snapshot")?.map(|bytes| postcard::from_bytes(&bytes).map_err(io_err)).transpose()
}

/// Streams the snapshot file to disk (no second in-memory copy of the data).
fn write_snapshot_file(dir: &Path, file: &SnapshotFile) -> io::Result<()> {
    write_atomic_with(dir, "snapshot", |out| postcard::to_io(file, out).map(|_| ()).map_err(io::Error::other))
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let applied = {
                let mut inner = self.lock();
                inner.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Applied::Nothing,
                    EntryPayload::Membership(m) => {
                        let before: Vec<u64> = inner.membership.membership().nodes().map(|(id, _)| *id).collect();
                        for id in before {
                            if m.get_node(&id).is_none() {
                                inner.retired.insert(id);
                            }
                        }
                        inner.membership = StoredMembership::new(Some(entry.log_id), m);
                        Applied::Nothing
                    }
                    EntryPayload::Normal(proposal) => {
                        if inner.epoch != Some(proposal.epoch) {
                            inner.core.rebase(proposal.stamp_ms);
                            inner.epoch = Some(proposal.epoch);
                        }
                        self.apply_op(inner, entry.log_id.index, &proposal)
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        // Restoring and writing a large snapshot takes as long as building one: off the
        // runtime thread too (see build_snapshot). Awaited, so the file is durable
        // before openraft purges the log it replaces.
        let store = self.clone();
        let file = SnapshotFile { meta: meta.clone(), data: snapshot };
        tokio::task::spawn_blocking(move || store.install_snapshot_now(file)).await.map_err(io_err)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        // Reading a large file must not stall the runtime thread (see build_snapshot).
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_current_snapshot()).await.map_err(io_err)?
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use fencelock_core::StateMachine;

    use super::{Image, ImageWriter, Loaded, SnapshotFile, WaiterOrigins};
    use crate::cmd::{self, Request};

    /// The image written in place is byte for byte the serde encoding it replaces,
    /// followed by the waiter origins: snapshot files written before them still load
    /// (with none), and older readers read the image and stop before them.
    #[test]
    fn the_image_written_in_place_is_the_postcard_encoding_then_the_waiter_origins() {
        for keys in [0usize, 3, 2_000] {
            let mut core = StateMachine::default();
            for i in 0..keys {
                let args = vec![Bytes::from("SET"), Bytes::from(format!("key-{i}")), Bytes::from("v")];
                let Ok(Request::Core(set, _)) = cmd::parse_in_script(args) else { panic!("SET parses") };
                assert!(core.apply(i as u64 + 1, 1_000, set).reply.is_ok());
            }
            for (epoch, retired) in [(None, vec![]), (Some(u64::MAX), vec![2, 300, u64::MAX])] {
                let retired: std::collections::BTreeSet<u64> = retired.into_iter().collect();
                let expected = postcard::to_stdvec(&Image { epoch, core: core.snapshot(), retired: retired.clone() })
                    .expect("encodes");
                let origins: WaiterOrigins = [(5, 1), (9, 3)].into_iter().collect();
                let written = ImageWriter::start(epoch)
                    .expect("starts")
                    .core(&core.freeze())
                    .finish(&retired, &origins)
                    .expect("finishes");
                assert_eq!(&written[..expected.len()], &expected[..], "{keys} keys, epoch {epoch:?}");
                let (old, rest): (Image, &[u8]) = postcard::take_from_bytes(&written).expect("an older reader");
                assert_eq!((old.epoch, old.retired), (epoch, retired.clone()));
                assert_eq!(postcard::from_bytes::<WaiterOrigins>(rest).expect("origins"), origins);
                let limits = fencelock_core::Limits::default();
                let file = |data: Vec<u8>| SnapshotFile { meta: Default::default(), data };
                let loaded = Loaded::decode(&file(written), &limits).expect("loads");
                assert_eq!(loaded.waiter_origins, origins);
                let before = Loaded::decode(&file(expected), &limits).expect("a file from before the origins loads");
                assert!(before.waiter_origins.is_empty());
            }
        }
    }
}
