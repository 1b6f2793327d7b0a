//! Sessions: a lease that locks, permits, candidacies and ephemeral keys hang off. The
//! client keeps it alive in the background; when it is lost, so is everything it owns.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::client::{unexpected, Client, Retry};
use crate::error::{Error, Result};
use crate::lease::{spawn_keepalive, LeaseState, LostSignal, Renewal};
use crate::resp::Value;

/// A session's id and validity, for options that attach to it.
#[derive(Debug, Clone)]
pub struct SessionRef {
    pub(crate) id: u64,
    pub(crate) state: Arc<LeaseState>,
}

/// An open session, kept alive until closed or dropped (dropping closes it in the
/// background).
#[derive(Debug)]
pub struct Session {
    client: Client,
    reference: SessionRef,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    closed: bool,
    runtime: tokio::runtime::Handle,
}

impl Client {
    /// Opens a session of `ttl`, renewed at a third of it.
    pub async fn session(&self, ttl: Duration) -> Result<Session> {
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let sent = Instant::now();
        // Not retried once sent: a lost answer would leave a session nobody knows
        // (it expires after its TTL).
        let id = match self.call(&[b"SESSION.OPEN", ttl_ms.as_bytes()], Retry::Unsafe, Duration::ZERO).await? {
            Value::Int(id) => id as u64,
            other => return Err(unexpected("SESSION.OPEN", &other)),
        };
        let state = LeaseState::new(sent + ttl.mul_f64(1.0 - self.options().drift));
        let renewal = Renewal {
            args: vec![Bytes::from_static(b"SESSION.KEEPALIVE"), Bytes::from(id.to_string())],
            ok: |v| matches!(v, Value::Int(_)),
            ttl,
        };
        let keepalive = Some(spawn_keepalive(self.clone(), Arc::clone(&state), renewal));
        Ok(Session {
            client: self.clone(),
            reference: SessionRef { id, state },
            keepalive,
            closed: false,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl Session {
    /// The session id.
    pub fn id(&self) -> u64 {
        self.reference.id
    }

    /// What attaches a lock to this session ([`crate::LockOptions::session`] takes the
    /// session itself; bindings keep this).
    pub fn reference(&self) -> SessionRef {
        self.reference.clone()
    }

    /// Still valid by the client's clock and not known lost.
    pub fn is_valid(&self) -> bool {
        self.reference.state.is_valid()
    }

    /// The signal that fires when the session is lost.
    pub fn lost_signal(&self) -> LostSignal {
        LostSignal::new(&self.reference.state)
    }

    /// Closes it: everything it owns is released now.
    pub async fn close(mut self) -> Result<()> {
        self.closed = true;
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        self.reference.state.set_lost("closed".into());
        let id = self.reference.id.to_string();
        match self.client.call(&[b"SESSION.CLOSE", id.as_bytes()], Retry::Safe, Duration::ZERO).await {
            Ok(_) | Err(Error::NoSession(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        if self.closed {
            return;
        }
        self.reference.state.set_lost("dropped".into());
        let close = vec![Bytes::from_static(b"SESSION.CLOSE"), Bytes::from(self.reference.id.to_string())];
        self.client.send_in_background(&self.runtime, close);
    }
}
