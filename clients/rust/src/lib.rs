//! # fencelock-client
//!
//! The client core that the Python, Node and Swift bindings wrap, so the safety logic
//! is written once:
//! - **Failover**: any number of endpoints (more are discovered); a request that is
//!   safe to repeat is retried on another node with bounded backoff for
//!   [`Options::retry_for`]; one that is not comes back as [`Error::Unknown`] when its
//!   answer is lost.
//! - **At-most-once acquires**: every LOCK carries a fresh random token as its request
//!   id and the `IDEMPOTENT` flag, so a retry after a lost reply answers the grant that
//!   token already has instead of taking a second hold; an acquire that ends in an
//!   error after an uncertain attempt gives the lock back.
//! - **Guards**: [`Lock`] (and [`Permit`], [`Leadership`], [`Session`]) hold the token
//!   and the fence, renew in the background at a third of the TTL, know their validity
//!   by the client's own conservative clock (send time + TTL × (1 − drift)), fire a
//!   [`LostSignal`] the moment renewal fails or validity runs out, and release on drop.
//! - Watches that resume on any node from the next revision, a [`blocking`] facade,
//!   and an [`EmbeddedServer`] for tests (feature `embedded`, on by default).
//!
//! ```no_run
//! # async fn demo() -> fencelock_client::Result<()> {
//! use std::time::Duration;
//! use fencelock_client::{Client, LockOptions};
//!
//! let client = Client::connect_to("127.0.0.1:6379").await?;
//! let lock = client.lock("orders:1", LockOptions::ttl(Duration::from_secs(10))).await?;
//! // Hand the fence to the storage you protect; it refuses smaller fences.
//! println!("holding with fence {}", lock.fence());
//! lock.release().await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod blocking;
mod client;
mod conn;
mod coord;
#[cfg(feature = "embedded")]
mod embedded;
mod error;
mod lease;
mod lock;
pub mod resp;
mod session;
mod watch;

pub use client::{Client, Options};
pub use coord::{Leader, Leadership, Permit, Proclaimer};
#[cfg(feature = "embedded")]
pub use embedded::EmbeddedServer;
pub use error::{Error, Result};
pub use lease::LostSignal;
pub use lock::{Lock, LockOptions};
pub use session::{Session, SessionRef};
pub use watch::{Target, Watch, WatchEvent};
