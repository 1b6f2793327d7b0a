//! Locks: `lock` / `try_lock` return a [`Lock`] guard with the token, the fence, an
//! auto-renewing keep-alive, the client-side validity and the lost signal.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{push_wait, random_token, unexpected, Client, GiveBack, Retry};
use crate::error::{Error, Result};
use crate::lease::{renew_if_late, spawn_keepalive, LeaseState, LostSignal, Renewal};
use crate::resp::Value;
use crate::session::{Session, SessionRef};

/// How to acquire a lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The lease. Renewed automatically at a third of it unless `auto_renew` is off.
    pub ttl: Duration,
    /// How long to queue for it; `None` waits as long as it takes. Ignored by `try_lock`.
    pub wait: Option<Duration>,
    /// A shared (read) lock.
    pub shared: bool,
    /// More names taken with this one, all or none, under one fence.
    pub also: Vec<Bytes>,
    /// Stored with the lock, shown by LOCK.INFO.
    pub metadata: Option<Bytes>,
    /// Queue priority (higher first).
    pub priority: i32,
    /// Renew in the background.
    pub auto_renew: bool,
    /// Hold it under a session instead of a TTL (with `ttl` zero): it lives as long as
    /// the session, and is valid while the session is. With a `ttl` as well, it is
    /// valid while both are (the server revokes it when the session ends). Releasing
    /// or losing the lock leaves the session and its other locks alone.
    pub session: Option<SessionRef>,
}

impl Default for LockOptions {
    fn default() -> LockOptions {
        LockOptions {
            ttl: Duration::from_secs(30),
            wait: None,
            shared: false,
            also: Vec::new(),
            metadata: None,
            priority: 0,
            auto_renew: true,
            session: None,
        }
    }
}

impl LockOptions {
    /// A lease of `ttl`, waiting as long as it takes.
    pub fn ttl(ttl: Duration) -> LockOptions {
        LockOptions { ttl, ..LockOptions::default() }
    }

    /// Wait at most this long.
    pub fn wait(mut self, wait: Duration) -> LockOptions {
        self.wait = Some(wait);
        self
    }

    /// Held by `session`: no TTL or keep-alive of its own; valid while the session is.
    pub fn session(mut self, session: &Session) -> LockOptions {
        self.session = Some(session.reference());
        self.ttl = Duration::ZERO;
        self
    }
}

/// What every guard holds: the grant, the lease window and how to let go.
pub(crate) struct Held {
    pub client: Client,
    pub names: Vec<Bytes>,
    pub token: Bytes,
    pub fence: u64,
    pub state: Arc<LeaseState>,
    pub keepalive: Option<JoinHandle<()>>,
    pub release: Vec<Bytes>,
    pub released: bool,
    /// Where the best-effort release on drop runs (the guard may be dropped outside
    /// any runtime, by the blocking facade or a binding).
    pub runtime: tokio::runtime::Handle,
}

impl Held {
    /// Sends the release; true if this call released it, false if it was no longer
    /// held (expired or taken over), `Error::Unknown` if a retried release found it
    /// gone after an attempt whose reply was lost (that attempt may have released it).
    pub async fn release(&mut self) -> Result<bool> {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        self.state.set_lost("released".into());
        let args: Vec<&[u8]> = self.release.iter().map(|a| a.as_ref()).collect();
        let answer = self.client.call_tracked(&args, Retry::Safe, Duration::ZERO).await;
        // Only now: a release whose future is dropped before its answer (a timeout
        // around it) leaves `drop` to send it again, in the background.
        self.released = true;
        match answer {
            (Ok(Value::Int(_) | Value::Simple(_)), _) => Ok(true),
            (Ok(other), _) => Err(unexpected("release", &other)),
            // An earlier attempt may have released it: "no longer held" would then say
            // it was taken over, a false alarm about the work it protected.
            (Err(Error::NotHolder(text)), true) => Err(Error::Unknown(format!(
                "the release may have been applied by an attempt whose reply was lost, or the lock had \
                 already expired: {text}"
            ))),
            (Err(Error::NotHolder(_)), false) => Ok(false),
            (Err(e), _) => Err(e),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        if self.released {
            return;
        }
        self.state.set_lost("dropped".into());
        // Best effort: give it back now rather than at the end of its lease.
        self.client.send_in_background(&self.runtime, std::mem::take(&mut self.release));
    }
}

/// A held lock. Dropping it releases it in the background (best effort); `release`
/// says whether it was still held.
pub struct Lock {
    pub(crate) held: Held,
    holds: u64,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("name", &self.held.names[0])
            .field("fence", &self.held.fence)
            .field("valid", &self.is_valid())
            .finish()
    }
}

impl Lock {
    /// The (first) name.
    pub fn name(&self) -> &Bytes {
        &self.held.names[0]
    }

    /// Every name of the group.
    pub fn names(&self) -> &[Bytes] {
        &self.held.names
    }

    /// The fencing token: strictly greater than every fence granted before. Pass it to
    /// the storage you protect, and have it refuse writes with a smaller one.
    pub fn fence(&self) -> u64 {
        self.held.fence
    }

    /// The secret that renews and releases it.
    pub fn token(&self) -> &Bytes {
        &self.held.token
    }

    /// Reentrant holds (1 for a fresh grant).
    pub fn holds(&self) -> u64 {
        self.holds
    }

    /// Still valid by the client's own conservative clock, and not known lost.
    pub fn is_valid(&self) -> bool {
        self.held.state.is_valid()
    }

    /// How much of the validity window is left (zero once lost).
    pub fn remaining(&self) -> Duration {
        self.held.state.remaining()
    }

    /// Why it was lost, if it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.held.state.lost_reason()
    }

    /// The signal that fires when the lock is lost.
    pub fn lost_signal(&self) -> LostSignal {
        LostSignal::new(&self.held.state)
    }

    /// Calls `f` with the reason the moment the lock is lost (not on release).
    pub fn on_lost(&self, f: impl FnOnce(String) + Send + 'static) {
        let mut signal = self.lost_signal();
        self.held.runtime.spawn(async move {
            let reason = signal.wait().await;
            if reason != "released" && reason != "dropped" {
                f(reason);
            }
        });
    }

    /// Releases it: true if it was still held, false if it had expired or been taken;
    /// `Error::Unknown` (OutcomeUnknown) when a retry cannot tell, after an attempt whose
    /// reply was lost.
    pub async fn release(mut self) -> Result<bool> {
        self.held.release().await
    }
}

/// `command` with `ALSO n name...` for the group's other names (RENEW and UNLOCK of a
/// multi-name lock name all of it).
fn with_also(mut command: Vec<Bytes>, names: &[Bytes]) -> Vec<Bytes> {
    if names.len() > 1 {
        command.extend(["ALSO".into(), (names.len() - 1).to_string().into()]);
        command.extend(names[1..].iter().cloned());
    }
    command
}

impl Client {
    /// Acquires `name`, queueing up to `options.wait` (forever when `None`).
    /// [`Error::Timeout`] when the wait runs out.
    pub async fn lock(&self, name: impl Into<Bytes>, options: LockOptions) -> Result<Lock> {
        let wait = options.wait.unwrap_or(Duration::MAX);
        match self.acquire(name.into(), &options, Some(wait)).await? {
            Some(lock) => Ok(lock),
            None => Err(Error::Timeout(format!("not acquired within {:?}", options.wait.unwrap_or_default()))),
        }
    }

    /// Acquires `name` if it is free now; `None` when held.
    pub async fn try_lock(&self, name: impl Into<Bytes>, options: LockOptions) -> Result<Option<Lock>> {
        self.acquire(name.into(), &options, None).await
    }

    async fn acquire(&self, name: Bytes, o: &LockOptions, wait: Option<Duration>) -> Result<Option<Lock>> {
        if o.ttl.is_zero() && o.session.is_none() {
            return Err(Error::Invalid("a lock needs a TTL or a session".into()));
        }
        let token = random_token();
        let ttl_ms = if o.session.is_some() && o.ttl.is_zero() {
            0
        } else {
            // Not `as u64`: a TTL past u64 milliseconds would wrap to a short lease the
            // client believed long, and never renewed.
            u64::try_from(o.ttl.as_millis().max(1))
                .map_err(|_| Error::Invalid(format!("TTL of {:?} is too long", o.ttl)))?
        };
        let mut args: Vec<Bytes> = vec![
            "LOCK".into(),
            name.clone(),
            ttl_ms.to_string().into(),
            "TOKEN".into(),
            token.clone(),
            "IDEMPOTENT".into(),
        ];
        if o.shared {
            args.push("SHARED".into());
        }
        if let Some(meta) = &o.metadata {
            args.extend(["META".into(), meta.clone()]);
        }
        if let Some(session) = &o.session {
            args.extend(["SESSION".into(), session.id.to_string().into()]);
        }
        if o.priority != 0 {
            args.extend(["PRIORITY".into(), o.priority.to_string().into()]);
        }
        if !o.also.is_empty() {
            args.extend(["ALSO".into(), o.also.len().to_string().into()]);
            args.extend(o.also.iter().cloned());
        }
        let server_wait = push_wait(&mut args, wait);
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
        let sent = Instant::now();
        let mut names = vec![name];
        names.extend(o.also.iter().cloned());
        let release = with_also(vec!["UNLOCK".into(), names[0].clone(), token.clone()], &names);
        // An attempt may be granted before an error, or before this future is dropped
        // (the server keeps an IDEMPOTENT grant): give it back then.
        let give_back = GiveBack::arm(self, release);
        let reply = match self.call_tracked(&refs, Retry::Safe, server_wait).await {
            (Ok(reply), _) => reply,
            (Err(e), maybe_applied) => {
                // A refusal (LIMIT, OOM) of a retry says nothing of an earlier attempt
                // whose answer was lost: that one may hold the grant.
                if !maybe_applied && !matches!(e, Error::Unavailable(_) | Error::Unknown(_)) {
                    give_back.disarm();
                }
                return Err(e);
            }
        };
        let fence = match reply.int("fence") {
            Some(f) => f as u64,
            None if reply == Value::Nil => {
                give_back.disarm();
                return Ok(None);
            }
            None => return Err(unexpected("LOCK", &reply)),
        };
        let holds = reply.int("holds").unwrap_or(1) as u64;
        let own_window = (ttl_ms > 0).then(|| sent + o.ttl.mul_f64(1.0 - self.options().drift));
        let state = match (&o.session, own_window) {
            // Valid while the session is, and while its own lease is if it has one; let
            // go of on its own (releasing it leaves the session and its other locks).
            (Some(session), own) => LeaseState::child(&session.state, own),
            // Without a session the lease is never zero (`ttl_ms` above).
            (None, own) => LeaseState::new(own.unwrap_or(sent)),
        };
        let keepalive = if o.auto_renew && ttl_ms > 0 {
            let renew =
                with_also(vec!["RENEW".into(), names[0].clone(), token.clone(), ttl_ms.to_string().into()], &names);
            let renewal = Renewal { args: renew, ok: |v| v.int("fence").is_some(), ttl: o.ttl };
            renew_if_late(self, &state, &renewal).await;
            Some(spawn_keepalive(self.clone(), Arc::clone(&state), renewal))
        } else {
            None
        };
        // From here the guard releases it on drop.
        let release = give_back.disarm();
        Ok(Some(Lock {
            held: Held {
                client: self.clone(),
                names,
                token,
                fence,
                state,
                keepalive,
                release,
                released: false,
                runtime: tokio::runtime::Handle::current(),
            },
            holds,
        }))
    }
}
