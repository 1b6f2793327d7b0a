//! # fencelock-chaos
//!
//! A fault-injection correctness harness in the spirit of Jepsen and etcd's robustness
//! tests: it starts a real fencelock cluster, routes every peer link through its own
//! proxies, runs concurrent clients while it kills, pauses, partitions, skews and
//! restarts nodes, records every operation, and checks the history: mutual exclusion,
//! fence order, the protected resource's fencing, linearizability of registers, no
//! acknowledged write lost, and recovery after healing.

#![deny(missing_docs)]

pub mod check;
pub mod cluster;
pub mod history;
pub mod proxy;
pub mod resp;
pub mod workload;
