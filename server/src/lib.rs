//! # fencelock-server
//!
//! The `fencelock` binary as a library:
//! - `resp`: the bounded request parser and reply encoding;
//! - `cmd`: one parser per command family, RESP arguments → core commands;
//! - `raft`: openraft's log store (a segmented WAL), state-machine adapter and network;
//! - `cluster`: membership changes, CLUSTER.STATUS, WAIT, `--join`, hand-off on SIGTERM;
//! - `node`: Raft startup, proposal stamping, reads, the leader's expiry ticker;
//! - `server` / `connection`: the listener and one task per client;
//! - `idle_spin`: the runtime thread's poll before sleeping, on an idle single node;
//! - `silent_nodes`: the leader ends the waits of a member it no longer hears from;
//! - `durable`: small files replaced whole (ids, marks) beside the log;
//! - `launch`: settings → a serving node (the binary and embedded servers);
//! - `errors`: the one table from internal errors to RESP errors.

#![deny(missing_docs)]

pub mod cluster;
pub mod cmd;
pub mod config;
pub mod connection;
pub mod durable;
pub mod errors;
pub mod idle_spin;
pub mod info;
pub mod launch;
pub mod lua;
pub mod memory;
pub mod node;
pub mod pubsub;
pub mod raft;
pub mod resp;
pub mod server;
pub mod silent_nodes;
pub mod watch;
pub mod write_group;
