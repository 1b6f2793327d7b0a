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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use fencelock_core::{Event, Limits, Reply, StateMachine};
use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use super::wal::{read_small, write_atomic_with};
use super::{Applied, LogId, Op, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
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

/// The snapshot body.
#[derive(Serialize, Deserialize)]
struct Image {
    epoch: Option<u64>,
    core: Vec<u8>,
    retired: std::collections::BTreeSet<u64>,
}

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

    /// The part that needs the state lock.
    fn core(mut self, core: &StateMachine) -> ImageWriter {
        core.snapshot_into(&mut self.out);
        self
    }

    fn finish(mut self, retired: &std::collections::BTreeSet<u64>) -> io::Result<Vec<u8>> {
        let body_at = self.prefix_at + VARINT_MAX;
        let body_len = (self.out.len() - body_at) as u64;
        let prefix = postcard::to_stdvec(&body_len).map_err(io_err)?;
        let end = self.prefix_at + prefix.len();
        self.out[self.prefix_at..end].copy_from_slice(&prefix);
        self.out.copy_within(body_at.., end);
        self.out.truncate(self.out.len() - (VARINT_MAX - prefix.len()));
        postcard::to_io(retired, &mut self.out).map_err(io_err)?;
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
    /// Every event, for watchers (lagging receivers drop old events).
    pub events: broadcast::Sender<Arc<Event>>,
    /// This node's pub/sub subscribers.
    pub pubsub: crate::pubsub::Hub,
    /// This node's watches (OBSERVE) and their history.
    pub watches: crate::watch::Watches,
    /// This node's id: waiter channels are registered for entries it originated.
    local_node: std::sync::atomic::AtomicU64,
    /// A blocking thread holds (or is about to take) `inner` for long: encoding or
    /// loading a snapshot, hundreds of milliseconds at a million locks.
    long_hold: AtomicBool,
    /// Signalled when a long holder lets go of `inner`.
    long_hold_over: tokio::sync::Notify,
    dir: PathBuf,
    limits: Limits,
}

impl Shared {
    /// The state lock, for async code. Behind a long holder (a snapshot being encoded
    /// or loaded on a blocking thread) it waits without blocking the runtime thread:
    /// blocked, a node answered neither heartbeats nor votes for the whole encode, and
    /// on return it (or its followers) started an election. Seen filling 1M locks on
    /// 3 nodes with one runtime thread each: "node 3 did not answer within 50ms", then
    /// TRYAGAIN for the clients. Anyone else holds the lock for microseconds, so then
    /// it only yields and tries again.
    pub async fn lock_async(&self) -> MutexGuard<'_, Inner> {
        loop {
            let over = self.long_hold_over.notified();
            tokio::pin!(over);
            // Registered before trying, so a release between the try and the await
            // still wakes us.
            over.as_mut().enable();
            // The failed try's result is dropped before awaiting (it is not Send).
            match self.inner.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(_)) => panic!("{POISONED}"),
                Err(TryLockError::WouldBlock) => {}
            }
            if self.long_hold.load(Ordering::Acquire) {
                over.await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// The state lock, for a blocking thread about to hold it for long (see
    /// `lock_async`). The flag goes up before the lock is taken and comes down after it
    /// is released, so every failed `try_lock` against a long hold sees it.
    fn lock_long(&self) -> LongHold<'_> {
        self.long_hold.store(true, Ordering::Release);
        LongHold { guard: Some(self.inner.lock().expect(POISONED)), shared: self }
    }
}

const POISONED: &str = "state lock is never poisoned: apply does not panic while holding it";

/// `inner`, held by a blocking thread for long; releasing wakes the async waiters.
struct LongHold<'a> {
    guard: Option<MutexGuard<'a, Inner>>,
    shared: &'a Shared,
}

impl std::ops::Deref for LongHold<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for LongHold<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for LongHold<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.shared.long_hold.store(false, Ordering::Release);
        self.shared.long_hold_over.notify_waiters();
    }
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
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner {
            core: StateMachine::new(limits.clone()),
            last_applied: None,
            membership: StoredMembership::default(),
            epoch: None,
            retired: Default::default(),
            current: None,
            lua: LuaEngine::new().map_err(io::Error::other)?,
        };
        if let Some(file) = read_snapshot_file(dir)? {
            inner.load(&file, &limits)?;
            inner.current = Some(file.meta);
        }
        let (events, _) = broadcast::channel(4096);
        let applied = inner.last_applied.map_or(0, |l| l.index);
        let shared = Shared {
            inner: Mutex::new(inner),
            waiters: Waiters::default(),
            events,
            pubsub: crate::pubsub::Hub::default(),
            watches: crate::watch::Watches::new(applied),
            local_node: Default::default(),
            long_hold: AtomicBool::new(false),
            long_hold_over: tokio::sync::Notify::new(),
            dir: dir.to_path_buf(),
            limits,
        };
        Ok(SmStore { shared: Arc::new(shared) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect(POISONED)
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

    fn load(&mut self, file: &SnapshotFile, limits: &Limits) -> io::Result<()> {
        let image: Image = postcard::from_bytes(&file.data).map_err(io_err)?;
        self.core = StateMachine::restore(limits.clone(), &image.core).map_err(io_err)?;
        self.epoch = image.epoch;
        self.retired = image.retired;
        self.last_applied = file.meta.last_log_id;
        self.membership = file.meta.last_membership.clone();
        Ok(())
    }
}

impl SmStore {
    /// Hands each event to the waiter it names, pub/sub messages to subscribers, the
    /// rest to the broadcast for watchers. Returns how many subscribers got messages.
    fn dispatch(&self, revision: u64, events: Vec<Event>) -> usize {
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
            match waiter {
                Some(waiter) => self.shared.waiters.deliver(waiter, event),
                // No receiver is fine: nobody watches yet.
                None => {
                    let _ = self.shared.events.send(Arc::new(event));
                }
            }
        }
        delivered
    }
}

impl SmStore {
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
        // Only the state's own encoding needs the lock (consistency); wrapping it in the
        // file image and writing it do not.
        let started = std::time::Instant::now();
        let (core_written, retired, meta, locked) = {
            let inner = self.shared.lock_long();
            let core_written = ImageWriter::start(inner.epoch)?.core(&inner.core);
            let meta = SnapshotMeta { last_log_id: inner.last_applied, last_membership: inner.membership.clone() };
            (core_written, inner.retired.clone(), meta, started.elapsed())
        };
        let file = SnapshotFile { meta, data: core_written.finish(&retired)? };
        write_snapshot_file(&self.shared.dir, &file)?;
        self.lock().current = Some(file.meta.clone());
        tracing::info!(
            index = file.meta.last_log_id.map_or(0, |l| l.index),
            bytes = file.data.len(),
            state_locked_ms = locked.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot { meta: file.meta, snapshot: file.data })
    }

    fn install_snapshot_now(&self, file: SnapshotFile) -> Result<(), io::Error> {
        let limits = self.shared.limits.clone();
        self.shared.lock_long().load(&file, &limits)?;
        self.shared.watches.reset(file.meta.last_log_id.map_or(0, |l| l.index));
        write_snapshot_file(&self.shared.dir, &file)?;
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
        let inner = self.shared.lock_async().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let applied = {
                let mut inner = self.shared.lock_async().await;
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
                        let index = entry.log_id.index;
                        match proposal.op {
                            Op::Core(command) => {
                                let publish = matches!(command, fencelock_core::Command::Publish { .. });
                                let out = inner.core.apply(index, proposal.stamp_ms, command);
                                drop(inner);
                                if proposal.origin == self.shared.local_node.load(std::sync::atomic::Ordering::Relaxed)
                                {
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
                            Op::Multi(commands) => {
                                let out = inner.core.apply_script(index, proposal.stamp_ms, |s| {
                                    Ok::<_, std::convert::Infallible>(
                                        commands.into_iter().map(|c| s.call(c)).collect::<Vec<_>>(),
                                    )
                                });
                                drop(inner);
                                self.dispatch(index, out.events);
                                let Ok(replies) = out.result;
                                Applied::Multi(replies)
                            }
                            Op::Eval { script, keys, args } => {
                                let Inner { core, lua, .. } = &mut *inner;
                                let out =
                                    core.apply_script(index, proposal.stamp_ms, |s| lua.run(&script, &keys, &args, s));
                                drop(inner);
                                self.dispatch(index, out.events);
                                Applied::Script(out.result)
                            }
                        }
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

    use super::{Image, ImageWriter};
    use crate::cmd::{self, Request};

    /// The image written in place is byte for byte the serde encoding it replaces
    /// (snapshot files written before it still load, and after it by older readers).
    #[test]
    fn the_image_written_in_place_is_the_postcard_encoding() {
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
                let written =
                    ImageWriter::start(epoch).expect("starts").core(&core).finish(&retired).expect("finishes");
                assert_eq!(written, expected, "{keys} keys, epoch {epoch:?}");
            }
        }
    }
}

#[cfg(test)]
mod long_hold_tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use fencelock_core::Limits;

    use super::SmStore;

    /// While a blocking thread holds the state for long (a snapshot), the runtime
    /// thread goes on (timers: heartbeats; other connections), and the async waiter
    /// gets the lock once it is released. With a blocking `lock()` on a one-thread
    /// runtime the ticker could not run at all until the release.
    #[test]
    fn a_long_hold_does_not_block_the_runtime_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SmStore::open(dir.path(), Limits::default()).expect("opens");
        let shared = Arc::clone(&store.shared);
        let released = Arc::new(AtomicBool::new(false));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let (shared, released) = (Arc::clone(&shared), Arc::clone(&released));
            std::thread::spawn(move || {
                let hold = shared.lock_long();
                held_tx.send(()).expect("test is waiting");
                std::thread::sleep(Duration::from_millis(300));
                released.store(true, Ordering::SeqCst);
                drop(hold);
            })
        };
        held_rx.recv().expect("holder started");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let ticks = Arc::new(AtomicU64::new(0));
        let ticks_when_locked = runtime.block_on(async {
            let ticker = {
                let ticks = Arc::clone(&ticks);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        ticks.fetch_add(1, Ordering::SeqCst);
                    }
                })
            };
            let guard = shared.lock_async().await;
            assert!(released.load(Ordering::SeqCst), "the lock came only after the long hold ended");
            drop(guard);
            ticker.abort();
            ticks.load(Ordering::SeqCst)
        });
        holder.join().expect("holder ends");
        // 300 ms of 5 ms ticks is about 60; a few show the thread was not blocked.
        assert!(ticks_when_locked >= 3, "the runtime thread ran while waiting: {ticks_when_locked} ticks");
    }
}
