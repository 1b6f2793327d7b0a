//! openraft's storage conformance suite (`openraft::testing::log::Suite`) against the
//! real log store (the segmented WAL) and the state-machine adapter, each store in its
//! own temporary directory, plus reopen checks the suite does not make: what a store
//! reports after it is dropped and opened again on the same directory.

use std::io;

use fencelock_core::Limits;
use fencelock_server::raft::log_store::{LogStore, DECODED_ENTRIES};
use fencelock_server::raft::state_machine::SmStore;
use fencelock_server::raft::{Entry, LogId, TypeConfig, Vote};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;

/// `inline`: the store believes it is a one-member cluster with no client write in
/// flight, so every append made while the WAL thread is idle is synced on the caller's
/// thread; otherwise every append goes through the WAL thread. `decoded`: how many of the
/// newest entries stay decoded (the rest are decoded from their bytes when read).
struct Builder {
    inline: bool,
    decoded: usize,
}

fn store_error(e: io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, e)
}

impl StoreBuilder<TypeConfig, LogStore, SmStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, SmStore), StorageError<TypeConfig>> {
        let dir = tempfile::Builder::new().prefix("fencelock-suite-").tempdir().map_err(store_error)?;
        let log = LogStore::open(&dir.path().join("raft")).map_err(store_error)?;
        log.write_load().set_solo(self.inline);
        log.set_decoded_entries(self.decoded);
        let sm = SmStore::open(&dir.path().join("state"), Limits::default()).map_err(store_error)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder { inline: false, decoded: DECODED_ENTRIES })
        .await
        .expect("openraft's storage suite passes");
}

/// The suite's logs are short: with one entry decoded, every other read decodes bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_with_one_entry_decoded() {
    Suite::test_all(Builder { inline: false, decoded: 1 }).await.expect("openraft's storage suite passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_with_lone_writes_synced_inline() {
    Suite::test_all(Builder { inline: true, decoded: DECODED_ENTRIES }).await.expect("openraft's storage suite passes");
}

// --- Reopen: durability the suite does not check. ---

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry::new_blank(log_id(term, index))
}

async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    // Entries are durable when the callback fires (after the WAL thread's sync), as
    // openraft's contract says; only then may a test drop the store and reopen.
    use openraft::type_config::TypeConfigExt;
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::<TypeConfig>::signal(tx)).await.expect("append");
    rx.await.expect("the WAL thread answers").expect("the append is durable");
}

async fn log_ids(store: &mut LogStore) -> Vec<LogId> {
    let entries = store.try_get_log_entries(0..u64::MAX).await.expect("read");
    entries.iter().map(|e| e.log_id()).collect()
}

#[tokio::test]
async fn log_store_state_survives_reopen() {
    state_survives_reopen(false).await;
}

#[tokio::test]
async fn log_store_state_survives_reopen_with_lone_writes_synced_inline() {
    state_survives_reopen(true).await;
}

async fn state_survives_reopen(inline: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raft");
    {
        let mut store = LogStore::open(&path).expect("open");
        store.write_load().set_solo(inline);
        let vote = Vote::new(3, 1);
        store.save_vote(&vote).await.expect("save vote");
        append(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
        // A new leader overwrites 8.. with entries of term 2.
        store.truncate_after(Some(log_id(1, 7))).await.expect("truncate");
        append(&mut store, (8..=12).map(|i| blank(2, i)).collect()).await;
        store.purge(log_id(1, 4)).await.expect("purge");
    }
    let mut store = LogStore::open(&path).expect("reopen");
    assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(2, 12)));
    let expected: Vec<LogId> = (5..=7).map(|i| log_id(1, i)).chain((8..=12).map(|i| log_id(2, i))).collect();
    assert_eq!(log_ids(&mut store).await, expected);
    // Appending after the reopen continues the log.
    append(&mut store, vec![blank(2, 13)]).await;
    drop(store);
    let mut store = LogStore::open(&path).expect("reopen again");
    assert_eq!(store.get_log_state().await.expect("log state").last_log_id, Some(log_id(2, 13)));
}

/// A follower that installs a snapshot beyond its last entry purges past the end of its
/// log, then appends the entries after the snapshot at once. The append must reach the
/// WAL after the purge (whose marker is written on another thread first): the WAL
/// refused the gap when it came first.
#[tokio::test]
async fn an_append_right_after_a_purge_past_the_end_of_the_log() {
    for inline in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("raft");
        let expected = vec![log_id(2, 31), log_id(2, 32), log_id(3, 33)];
        {
            let mut store = LogStore::open(&path).expect("open");
            store.write_load().set_solo(inline);
            append(&mut store, (1..=23).map(|i| blank(1, i)).collect()).await;
            store.purge(log_id(2, 30)).await.expect("purge past the end");
            append(&mut store, (31..=33).map(|i| blank(2, i)).collect()).await;
            store.truncate_after(Some(log_id(2, 32))).await.expect("truncate");
            append(&mut store, vec![blank(3, 33)]).await;
            assert_eq!(log_ids(&mut store).await, expected, "inline {inline}");
        }
        let mut store = LogStore::open(&path).expect("reopen");
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 30)), "inline {inline}");
        assert_eq!(log_ids(&mut store).await, expected, "inline {inline}");
    }
}

/// Reads, truncates and purges on both sides of the decoded window's edge (4 entries
/// decoded of up to 40), against the log ids they must leave.
#[tokio::test]
async fn reads_truncates_and_purges_across_the_decoded_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = LogStore::open(&dir.path().join("raft")).expect("open");
    store.set_decoded_entries(4);
    // Batches of 1, 7 and 32: a batch larger than the window trims within itself.
    append(&mut store, vec![blank(1, 1)]).await;
    append(&mut store, (2..=8).map(|i| blank(1, i)).collect()).await;
    append(&mut store, (9..=40).map(|i| blank(1, i)).collect()).await;
    let ids = |range: std::ops::RangeInclusive<u64>, term: u64| range.map(move |i| log_id(term, i));
    for (from, to) in [(1, 40), (1, 36), (36, 37), (37, 40), (30, 41), (40, 40), (5, 5)] {
        let got: Vec<LogId> =
            store.try_get_log_entries(from..=to).await.expect("read").iter().map(|e| e.log_id()).collect();
        assert_eq!(got, ids(from..=to.min(40), 1).collect::<Vec<_>>(), "read {from}..={to}");
    }
    // A truncate into the bytes-only part empties the window; the last log id is
    // still known, and appends continue from there.
    store.truncate_after(Some(log_id(1, 20))).await.expect("truncate");
    assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(log_id(1, 20)));
    assert_eq!(log_ids(&mut store).await, ids(1..=20, 1).collect::<Vec<_>>());
    append(&mut store, (21..=22).map(|i| blank(2, i)).collect()).await;
    let expected: Vec<LogId> = ids(1..=20, 1).chain(ids(21..=22, 2)).collect();
    assert_eq!(log_ids(&mut store).await, expected);
    // A truncate inside the window keeps its older part.
    append(&mut store, (23..=25).map(|i| blank(2, i)).collect()).await;
    store.truncate_after(Some(log_id(2, 23))).await.expect("truncate");
    let expected: Vec<LogId> = ids(1..=20, 1).chain(ids(21..=23, 2)).collect();
    assert_eq!(log_ids(&mut store).await, expected);
    // A purge into the window, then one past the end.
    store.purge(log_id(2, 22)).await.expect("purge");
    assert_eq!(log_ids(&mut store).await, vec![log_id(2, 23)]);
    assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(log_id(2, 23)));
    store.purge(log_id(2, 30)).await.expect("purge past the end");
    let state = store.get_log_state().await.expect("state");
    assert_eq!((state.last_log_id, state.last_purged_log_id), (Some(log_id(2, 30)), Some(log_id(2, 30))));
    append(&mut store, vec![blank(2, 31)]).await;
    assert_eq!(log_ids(&mut store).await, vec![log_id(2, 31)]);
    drop(store);
    // Reopened with the default window, the log reads the same.
    let mut store = LogStore::open(&dir.path().join("raft")).expect("reopen");
    assert_eq!(log_ids(&mut store).await, vec![log_id(2, 31)]);
}

/// A reopened log longer than the decoded window reads whole: the older entries come
/// back as bytes only.
#[tokio::test]
async fn a_reopened_log_longer_than_the_decoded_window_reads_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let total = DECODED_ENTRIES as u64 + 100;
    {
        let mut store = LogStore::open(&dir.path().join("raft")).expect("open");
        for start in (1..=total).step_by(100) {
            append(&mut store, (start..=(start + 99).min(total)).map(|i| blank(1, i)).collect()).await;
        }
    }
    let mut store = LogStore::open(&dir.path().join("raft")).expect("reopen");
    assert_eq!(log_ids(&mut store).await, (1..=total).map(|i| log_id(1, i)).collect::<Vec<_>>());
    assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(log_id(1, total)));
}

/// A lone write on a one-member cluster is durable when `append` returns (synced on the
/// caller's thread); a second write in flight, or a cluster of more, sends appends to
/// the WAL thread, whose callback comes later. Either way the entries survive reopen.
#[tokio::test]
async fn a_lone_write_is_synced_before_append_returns() {
    use openraft::type_config::TypeConfigExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raft");
    {
        let mut store = LogStore::open(&path).expect("open");
        let load = store.write_load();
        load.set_solo(true);
        let first = load.start_write();
        let (tx, mut rx) = TypeConfig::oneshot();
        store.append(vec![blank(1, 1)], IOFlushed::<TypeConfig>::signal(tx)).await.expect("append");
        assert!(matches!(rx.try_recv(), Ok(Ok(()))), "one write in flight: synced inline");

        // With two writes in flight the append is queued for the WAL thread.
        let second = load.start_write();
        append(&mut store, vec![blank(1, 2)]).await;
        drop((first, second));
        // Alone again, and the WAL thread idle after its callback: inline once more.
        let (tx, mut rx) = TypeConfig::oneshot();
        store.append(vec![blank(1, 3)], IOFlushed::<TypeConfig>::signal(tx)).await.expect("append");
        assert!(matches!(rx.try_recv(), Ok(Ok(()))), "no write in flight: synced inline");
    }
    let mut store = LogStore::open(&path).expect("reopen");
    assert_eq!(log_ids(&mut store).await, vec![log_id(1, 1), log_id(1, 2), log_id(1, 3)]);
}

#[tokio::test]
async fn log_store_purged_to_the_end_survives_reopen() {
    purged_log_survives_reopen(5, log_id(1, 5)).await;
}

/// The same past the end, then a restart before the next append: the WAL still held
/// the entries below the marker and refused that append as a gap, at every start.
#[tokio::test]
async fn an_append_after_a_restart_that_follows_a_purge_past_the_end() {
    purged_log_survives_reopen(23, log_id(2, 30)).await;
}

/// Appends `1..=last`, purges through `purged` (at or past `last`), reopens, appends the
/// next two entries, and reopens again.
async fn purged_log_survives_reopen(last: u64, purged: LogId) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raft");
    {
        let mut store = LogStore::open(&path).expect("open");
        append(&mut store, (1..=last).map(|i| blank(1, i)).collect()).await;
        store.purge(purged).await.expect("purge all");
    }
    let (term, next) = (purged.leader_id.term, purged.index + 1);
    let mut store = LogStore::open(&path).expect("reopen");
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(purged));
    assert_eq!(state.last_log_id, Some(purged));
    assert_eq!(log_ids(&mut store).await, vec![]);
    append(&mut store, vec![blank(term, next), blank(term, next + 1)]).await;
    drop(store);
    let mut store = LogStore::open(&path).expect("reopen again");
    assert_eq!(log_ids(&mut store).await, vec![log_id(term, next), log_id(term, next + 1)]);
    assert_eq!(store.get_log_state().await.expect("log state").last_purged_log_id, Some(purged));
}

#[tokio::test]
async fn state_machine_snapshot_survives_reopen() {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use std::collections::BTreeSet;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state");
    let members: BTreeSet<u64> = [1, 2, 3].into();
    let entries = vec![
        openraft::testing::blank_ent::<TypeConfig>(1, 1, 1),
        openraft::testing::membership_ent::<TypeConfig>(1, 1, 2, vec![members]),
        openraft::testing::blank_ent::<TypeConfig>(2, 1, 3),
    ];
    let (applied, membership, meta) = {
        let mut sm = SmStore::open(&path, Limits::default()).expect("open");
        let stream = futures_util::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
        sm.apply(stream).await.expect("apply");
        let (applied, membership) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(2, 3)));
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 3)));
        (applied, membership, snapshot.meta)
    };
    let mut sm = SmStore::open(&path, Limits::default()).expect("reopen");
    assert_eq!(sm.applied_state().await.expect("applied state"), (applied, membership));
    let current = sm.get_current_snapshot().await.expect("current snapshot").expect("a snapshot");
    assert_eq!(current.meta, meta);
}
