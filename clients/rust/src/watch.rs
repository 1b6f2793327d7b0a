//! Watches: OBSERVE on a connection of its own. A broken connection is resumed on any
//! node from the last revision seen, skipping the changes of it already delivered (a
//! revision can carry several), so nothing is missed or repeated.

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
    /// The endpoint the next subscription tries first.
    next_endpoint: usize,
    /// Where delivery stands, for resuming without a gap or a repeat.
    cursor: Cursor,
}

/// The last revision delivered and how many of its changes were, since a revision can
/// carry several (MULTI, a release that grants several waiters, concurrent writes the
/// leader grouped into one entry). A resumed watch starts at that revision again and
/// skips the changes already delivered: every node replays a revision's changes in
/// the same order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Cursor {
    /// The revision of the last event delivered.
    revision: u64,
    /// Changes of `revision` delivered; 0 when the watch started after it (the whole
    /// revision is behind it).
    seen: usize,
    /// Changes of `revision` a resumed watch replays that were delivered before it.
    skip: usize,
}

impl Cursor {
    /// The revision to resume from after a lost connection.
    fn resume_from(&mut self) -> u64 {
        self.skip = self.seen;
        if self.seen > 0 {
            self.revision
        } else {
            self.revision + 1
        }
    }

    /// Whether a change at `revision` is new (and counts it), or a repeat.
    fn admit(&mut self, revision: u64) -> bool {
        if revision > self.revision {
            *self = Cursor { revision, seen: 1, skip: 0 };
            return true;
        }
        if revision < self.revision || self.seen == 0 {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        self.seen += 1;
        true
    }
}

impl Client {
    /// Starts watching `target` from now (or from `from_revision` when given).
    pub async fn watch(&self, target: Target, from_revision: Option<u64>) -> Result<Watch> {
        let mut watch = Watch {
            client: self.clone(),
            target,
            conn: None,
            next_endpoint: 0,
            cursor: Cursor { revision: from_revision.map_or(0, |r| r.saturating_sub(1)), ..Cursor::default() },
        };
        watch.subscribe(from_revision).await?;
        Ok(watch)
    }
}

/// The pause before resuming a watch whose connection was lost.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(100);

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
        while tokio::time::Instant::now() < deadline {
            // Rotating across calls too: a node that takes OBSERVE and then drops the
            // connection is not the first one tried again and again.
            let endpoint = &endpoints[self.next_endpoint % endpoints.len()];
            self.next_endpoint = self.next_endpoint.wrapping_add(1);
            let mut conn = match Conn::open(endpoint, o.password.as_deref(), o.connect_timeout).await {
                Ok(conn) => conn,
                Err(ConnError::Auth(e)) => return Err(Error::Auth(e)),
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
                        self.cursor =
                            Cursor { revision: reply.int("revision").unwrap_or(0) as u64, ..Cursor::default() };
                    }
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(ConnError::Auth(e)) => return Err(Error::Auth(e)),
                Err(ConnError::NotSent(e) | ConnError::Lost(e) | ConnError::Protocol(e)) => problem = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Unavailable(problem))
    }

    /// The revision of the last event delivered (or the one the watch started at).
    pub fn revision(&self) -> u64 {
        self.cursor.revision
    }

    /// The next change, waiting up to `timeout` (`Ok(None)` if none came). A lost
    /// connection is resumed on another node from the next revision.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.conn.is_none() {
                // Not past the caller's deadline, however long resubscribing may take.
                let from = self.cursor.resume_from();
                match tokio::time::timeout_at(deadline, self.subscribe(Some(from))).await {
                    Ok(subscribed) => subscribed?,
                    Err(_) => return Ok(None),
                }
            }
            let conn = self.conn.as_mut().expect("subscribed above");
            match conn.next_push(deadline).await {
                Ok(None) => return Ok(None),
                Ok(Some(Value::Push(items))) => {
                    if let Some(event) = parse_event(&items) {
                        if self.cursor.admit(event.revision) {
                            return Ok(Some(event));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Err(_) => {
                    // Resumed after a pause, and not past the caller's deadline: a node
                    // that accepts OBSERVE and drops it at once is not hammered.
                    self.conn = None;
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(RESUBSCRIBE_PAUSE.min(deadline - now)).await;
                }
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

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn every_change_of_a_revision_is_delivered_once_across_a_resume() {
        let mut c = Cursor { revision: 10, ..Cursor::default() };
        assert!(!c.admit(10), "the revision the watch started at is not new");
        assert!(c.admit(11));
        assert!(c.admit(11), "a second change in the same revision is delivered too");
        // The connection breaks after two of revision 11's changes: resume at 11 and
        // skip the two the server replays first.
        assert_eq!(c.resume_from(), 11);
        assert!(!c.admit(11));
        assert!(!c.admit(11));
        assert!(c.admit(11), "the third change of 11 was not delivered before");
        assert!(c.admit(12));
        assert!(!c.admit(11), "older revisions are repeats");
        // A break right after a whole revision... resumes after it when nothing of the
        // next was seen; here one change of 12 was, so from 12, skipping one.
        assert_eq!(c.resume_from(), 12);
        assert!(!c.admit(12));
        assert!(c.admit(13));
    }

    #[test]
    fn a_fresh_cursor_resumes_after_its_revision() {
        let mut c = Cursor { revision: 7, ..Cursor::default() };
        assert_eq!(c.resume_from(), 8);
        assert!(c.admit(8));
    }
}
