//! Watches: OBSERVE on a connection of its own. A broken connection is resumed on any
//! node from the revision after the last event seen, so nothing is missed or repeated.

use std::time::Duration;

use bytes::Bytes;

use crate::client::Client;
use crate::conn::{Conn, ConnError};
use crate::error::{Error, Result};
use crate::resp::Value;

/// What to observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One key.
    Key(Bytes),
    /// Every key with this prefix.
    Prefix(Bytes),
    /// A lock becoming free.
    Lock(Bytes),
    /// An election's leader changes.
    Election(Bytes),
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The log index of the entry that made it: the same on every node.
    pub revision: u64,
    /// `set`, `del`, `expired`, `released`, `revoked`, `leader`.
    pub kind: String,
    /// The key, lock or election.
    pub target: Bytes,
    /// For elections: the new leader's candidate name (None: nobody leads).
    pub candidate: Option<Bytes>,
}

/// A running watch.
pub struct Watch {
    client: Client,
    target: Target,
    conn: Option<Conn>,
    /// The revision of the last event delivered.
    last_revision: u64,
}

impl Client {
    /// Starts watching `target` from now (or from `from_revision` when given).
    pub async fn watch(&self, target: Target, from_revision: Option<u64>) -> Result<Watch> {
        let mut watch = Watch {
            client: self.clone(),
            target,
            conn: None,
            last_revision: from_revision.map_or(0, |r| r.saturating_sub(1)),
        };
        watch.subscribe(from_revision).await?;
        Ok(watch)
    }
}

impl Watch {
    async fn subscribe(&mut self, from: Option<u64>) -> Result<()> {
        let (what, name): (&[u8], &Bytes) = match &self.target {
            Target::Key(k) => (b"KEY", k),
            Target::Prefix(p) => (b"PREFIX", p),
            Target::Lock(l) => (b"LOCK", l),
            Target::Election(e) => (b"ELECTION", e),
        };
        let from_text = from.map(|r| r.to_string());
        let mut args: Vec<&[u8]> = vec![b"OBSERVE", what, name];
        if let Some(from) = &from_text {
            args.extend([b"FROM".as_slice(), from.as_bytes()]);
        }
        let o = self.client.options().clone();
        let mut problem = String::new();
        let deadline = tokio::time::Instant::now() + o.retry_for;
        let endpoints = self.client.endpoints();
        let mut i = 0;
        while tokio::time::Instant::now() < deadline {
            let endpoint = &endpoints[i % endpoints.len()];
            i += 1;
            let mut conn = match Conn::open(endpoint, o.password.as_deref(), o.connect_timeout).await {
                Ok(conn) => conn,
                Err(ConnError::NotSent(e) | ConnError::Lost(e) | ConnError::Protocol(e)) => {
                    problem = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match conn.request(&args, o.request_timeout).await {
                Ok(Value::Error(e)) if e.starts_with("TRYAGAIN") => problem = e,
                Ok(Value::Error(e)) => return Err(Error::from_server(&e)),
                Ok(reply) => {
                    if from.is_none() {
                        self.last_revision = reply.int("revision").unwrap_or(0) as u64;
                    }
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(ConnError::NotSent(e) | ConnError::Lost(e) | ConnError::Protocol(e)) => problem = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Unavailable(problem))
    }

    /// The revision of the last event delivered (or the one the watch started at).
    pub fn revision(&self) -> u64 {
        self.last_revision
    }

    /// The next change, waiting up to `timeout` (`Ok(None)` if none came). A lost
    /// connection is resumed on another node from the next revision.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.conn.is_none() {
                self.subscribe(Some(self.last_revision + 1)).await?;
            }
            let conn = self.conn.as_mut().expect("subscribed above");
            match conn.next_push(deadline).await {
                Ok(None) => return Ok(None),
                Ok(Some(Value::Push(items))) => {
                    if let Some(event) = parse_event(&items) {
                        if event.revision > self.last_revision {
                            self.last_revision = event.revision;
                            return Ok(Some(event));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Err(_) => self.conn = None,
            }
        }
    }
}

fn parse_event(items: &[Value]) -> Option<WatchEvent> {
    let text = |v: &Value| match v {
        Value::Bulk(b) => Some(b.clone()),
        Value::Simple(s) => Some(Bytes::from(s.clone())),
        _ => None,
    };
    if text(items.first()?)?.as_ref() != b"observe" {
        return None;
    }
    let Value::Int(revision) = items.get(2)? else { return None };
    Some(WatchEvent {
        revision: *revision as u64,
        kind: String::from_utf8_lossy(&text(items.get(3)?)?).into_owned(),
        target: text(items.get(4)?)?,
        candidate: items.get(5).and_then(text),
    })
}
