//! The leader ends the waits of a member it has not heard from for `--silent-node-ms`.
//!
//! A blocking command's waiter lives in the replicated state; only its connection's task
//! ends it early, and a node that restarts ends the waits of its previous run
//! (`Op::CancelWaitsOf`, `node::end_previous_waits`). A node that stays down, or is cut
//! off, does neither: a lock freed later would be granted to one of its waiters (held by
//! nobody until its lease runs out) and a queue item popped for one would be lost. So
//! the leader, which hears from every member at least every heartbeat (50 ms), ends a
//! member's waits once it has gone unheard that long, as ZooKeeper ends a session its
//! client stopped renewing. A member that was only cut off and comes back finds its
//! clients' waits ended: they are answered as if their wait had run out, and may ask
//! again. Once per silence: a member heard from again starts over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;

use crate::node::Node;
use crate::raft::NodeId;

/// How often the leader looks.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs for the node's life; acts only while it leads.
pub async fn run(node: Arc<Node>, silent_after: Duration) {
    let mut unheard_since: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut ended: BTreeSet<NodeId> = BTreeSet::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let metrics = node.raft.metrics().borrow_watched().clone();
        if metrics.state == openraft::ServerState::Shutdown {
            return;
        }
        // Only the leader hears from every member (heartbeat metrics are the leader's).
        let Some(heartbeat) = metrics.heartbeat.as_ref().filter(|_| node.raft.is_leader()) else {
            unheard_since.clear();
            ended.clear();
            continue;
        };
        let now = Instant::now();
        let mut silent = Vec::new();
        for (id, last) in heartbeat.iter().filter(|(id, _)| **id != node.id) {
            let heard_recently = last.as_ref().is_some_and(|at| openraft::Instant::elapsed(&**at) < silent_after);
            if heard_recently {
                unheard_since.remove(id);
                ended.remove(id);
                continue;
            }
            // Never heard since this node took the lead: count from when it noticed.
            let since = *unheard_since.entry(*id).or_insert(now);
            let long_enough = last.is_some() || now.duration_since(since) >= silent_after;
            if long_enough && !ended.contains(id) {
                silent.push(*id);
            }
        }
        for id in silent {
            if node.levels.cluster() < crate::raft::levels::CANCEL_WAITS_FROM_LEVEL {
                break;
            }
            let waiting = node.sm.shared.inner.lock().expect("not poisoned").waiter_origins.values().any(|o| *o == id);
            if !waiting {
                ended.insert(id);
                continue;
            }
            match node.end_waits_of(id).await {
                Ok(waits) => {
                    tracing::info!(
                        node = id,
                        waits,
                        unheard_ms = silent_after.as_millis() as u64,
                        "ended the waits of a silent member"
                    );
                    ended.insert(id);
                }
                Err(e) => tracing::info!(node = id, "could not end a silent member's waits yet: {e}"),
            }
        }
    }
}
