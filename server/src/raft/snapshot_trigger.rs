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
//! So a snapshot is also taken once the log has grown, since the last one, by more than
//! the larger of `--snapshot-log-mib` and the last snapshot's own size: like Redis's
//! `auto-aof-rewrite-min-size` and `auto-aof-rewrite-percentage 100`, the log never
//! holds much more than the state it leads to, and a large state is not snapshotted
//! over and over for a log much smaller than itself.
//!
//! After a snapshot openraft keeps the newest [`ENTRIES_KEPT`] entries behind it (so a
//! follower slightly behind catches up from the log). When the log still holds more
//! than its bound after that purge, those entries are large (writes of up to 1 MiB
//! each) and are purged too: a follower that far behind is sent the snapshot instead.
//!
//! The policy runs on every node (each snapshots its own state), and only asks: the
//! Raft core decides, and ignores a request while a snapshot is being built.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::log_store::LogBytes;
use super::state_machine::SmStore;
use super::Raft;

/// Entries openraft keeps behind a snapshot (`max_in_snapshot_log_to_keep`).
pub const ENTRIES_KEPT: u64 = 1_000;

/// How often the log's size is looked at. Writes arrive at up to about 50 MB/s on this
/// machine, so the log overshoots the bound by a few MB at most.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// A request that led to no snapshot (nothing new applied: a leader without a quorum)
/// is repeated after this long.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The bound: the log may grow by this many bytes between snapshots.
pub fn growth_bound(log_bytes_min: u64, snapshot_bytes: u64) -> u64 {
    log_bytes_min.max(snapshot_bytes)
}

/// Watches the log's size until the Raft core stops; asks for a snapshot, or a purge
/// through the last one, when the log passes its bound.
pub async fn run(raft: Raft, log: Arc<LogBytes>, sm: SmStore, log_bytes_min: u64) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let data = raft.data_metrics();
    let mut seen = data.borrow_watched().snapshot;
    // The log's growth is counted from the last snapshot this task saw taken.
    let mut base = log.appended();
    let mut asked: Option<tokio::time::Instant> = None;
    // The snapshot whose kept entries were weighed (once, after openraft's purge).
    let mut weighed = None;
    loop {
        tick.tick().await;
        if raft.metrics().borrow_watched().running_state.is_err() {
            return;
        }
        let (snapshot, purged) = {
            let metrics = data.borrow_watched();
            (metrics.snapshot, metrics.purged)
        };
        let bound = growth_bound(log_bytes_min, sm.snapshot_bytes());
        if snapshot != seen {
            seen = snapshot;
            base = log.appended();
            asked = None;
        }
        if let Some(at) = snapshot {
            // The entries kept behind the snapshot, weighed once openraft's own purge
            // after it has run: what the log held then, less what arrived since this
            // task saw the snapshot (an overestimate by what arrived while it was built).
            let first_kept = purged.map_or(0, |p| p.index + 1);
            let purge_done = first_kept >= at.index.saturating_sub(ENTRIES_KEPT) && first_kept <= at.index;
            if purge_done && weighed != Some(at.index) {
                weighed = Some(at.index);
                let kept = log.held().saturating_sub(log.appended().saturating_sub(base));
                if kept > bound {
                    tracing::info!(through = at.index, kept_bytes = kept, bound, "log purged through the snapshot");
                    if raft.trigger().purge_log(at.index).await.is_err() {
                        return;
                    }
                }
            }
        }
        let grown = log.appended().saturating_sub(base);
        if grown > bound && asked.is_none_or(|at| at.elapsed() >= RETRY_AFTER) {
            asked = Some(tokio::time::Instant::now());
            tracing::info!(grown_bytes = grown, bound, "snapshot asked for: the log outgrew its bound");
            if raft.trigger().snapshot().await.is_err() {
                return;
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
