//! Snapshots by the log's size, beside openraft's count of entries.
//!
//! openraft snapshots after `--snapshot-every` entries, which bounded the log when every
//! write was its own entry. Since concurrent writes share one (up to 128 in a group),
//! and since a write may carry up to 1 MiB, a count of entries bounds neither the
//! memory the log holds (every entry stays in memory, as bytes, until a snapshot covers
//! it) nor the replay after a restart. Measured before this policy: one node after
//! 600,000 `SET`s of 1 KiB from 64 clients held 55,188 entries (no snapshot yet) and
//! 1.0 GB of RSS for about 100 MB of keys.
//!
//! So a snapshot is also taken once the applied entries after the last snapshot hold
//! more than the larger of `--snapshot-log-mib` and the last snapshot's own size: like
//! Redis's `auto-aof-rewrite-min-size` and `auto-aof-rewrite-percentage 100`, the log
//! never holds much more than the state it leads to, and a large state is not
//! snapshotted over and over for a log much smaller than itself. Only applied entries
//! count, because a snapshot can cover no others: a leader without a quorum, whose
//! entries wait, asks for nothing.
//!
//! After a snapshot openraft keeps the newest [`ENTRIES_KEPT`] entries behind it (so a
//! follower slightly behind catches up from the log). When those hold more than the
//! bound, they are large (writes of up to 1 MiB each) and are purged too: a follower
//! that far behind is sent the snapshot instead. openraft purges only what a durable
//! snapshot covers, and a leader holds a purge back while a follower's replication
//! still reads the entries.
//!
//! The policy runs on every node (each snapshots its own state), and only asks: the
//! Raft core decides, and ignores a request while a snapshot is being built.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::log_store::LogSize;
use super::state_machine::SmStore;
use super::Raft;

/// Entries openraft keeps behind a snapshot (`max_in_snapshot_log_to_keep`).
pub const ENTRIES_KEPT: u64 = 1_000;

/// How often the log's size is looked at. The log grew at up to about 500 MB/s in the
/// measurements (3,000 writes of 500 KB), so it can pass the bound by that much per
/// second, while a snapshot is asked for and built.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// A request that led to no snapshot is repeated after this long.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The bound: the applied log may grow by this many bytes between snapshots.
pub fn growth_bound(log_bytes_min: u64, snapshot_bytes: u64) -> u64 {
    log_bytes_min.max(snapshot_bytes)
}

/// Watches the log's size until the Raft core or the log store stops; asks for a
/// snapshot, or a purge through the last one, when the log passes its bound.
pub async fn run(raft: Raft, log: LogSize, sm: SmStore, log_bytes_min: u64) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let data = raft.data_metrics();
    let mut seen = None;
    let mut asked: Option<tokio::time::Instant> = None;
    // The snapshot whose kept entries were weighed (once, after openraft's purge).
    let mut weighed = None;
    loop {
        tick.tick().await;
        if raft.metrics().borrow_watched().running_state.is_err() {
            return;
        }
        let (snapshot, purged, applied) = {
            let metrics = data.borrow_watched();
            (metrics.snapshot, metrics.purged, metrics.last_applied)
        };
        let Some(applied) = applied else { continue };
        if snapshot != seen {
            seen = snapshot;
            asked = None;
        }
        let bound = growth_bound(log_bytes_min, sm.snapshot_bytes());
        let at = snapshot.map(|s| s.index);
        let Some(grown) = log.between(at, applied.index) else { return };
        if grown > bound && asked.is_none_or(|t| t.elapsed() >= RETRY_AFTER) {
            asked = Some(tokio::time::Instant::now());
            tracing::info!(grown_bytes = grown, bound, "snapshot asked for: the applied log outgrew its bound");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
        let Some(at) = at else { continue };
        // The entries kept behind the snapshot, weighed once openraft's own purge after
        // it has run: it purges through `at - ENTRIES_KEPT`, so the first entry left is
        // then at most ENTRIES_KEPT - 1 behind the snapshot.
        let first_left = purged.map(|p| p.index + 1);
        let purge_done = first_left.unwrap_or(0) >= at.saturating_sub(ENTRIES_KEPT - 1);
        if purge_done && first_left.unwrap_or(0) <= at && weighed != Some(at) {
            weighed = Some(at);
            let Some(kept) = log.between(purged.map(|p| p.index), at) else { return };
            if kept > bound {
                tracing::info!(through = at, kept_bytes = kept, bound, "log purged through the snapshot");
                if raft.trigger().purge_log(at).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::growth_bound;

    #[test]
    fn the_log_may_grow_by_the_larger_of_the_floor_and_the_last_snapshot() {
        assert_eq!(growth_bound(64 << 20, 0), 64 << 20, "no snapshot yet: the floor");
        assert_eq!(growth_bound(64 << 20, 10 << 20), 64 << 20);
        assert_eq!(growth_bound(64 << 20, 300 << 20), 300 << 20, "a large state: as much log as state");
    }
}
