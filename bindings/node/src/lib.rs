//! Node bindings for fencelock-client. They convert arguments and results and prefix
//! each error's message with its kind (`NotHolder: ...`); index.js turns the kind into an
//! error class (napi-rs carries a custom `error.code` only from sync functions).
//! Every decision (retries, renewal, validity, release) is the Rust client's.

#![deny(clippy::all)]

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use fencelock_client as core;
use napi::bindgen_prelude::*;
use napi_derive::napi;

type Res<T> = napi::Result<T>;

/// The one mapping from client errors to JavaScript errors: `<Kind>: <message>`.
fn err(e: core::Error) -> Error {
    Error::new(Status::GenericFailure, format!("{}: {e}", e.kind()))
}

fn invalid(text: String) -> Error {
    Error::new(Status::GenericFailure, format!("InvalidRequest: {text}"))
}

fn seconds(s: f64, what: &str) -> Res<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| invalid(format!("{what} must be a non-negative number of seconds")))
}

/// Connection options.
#[napi(object)]
pub struct ConnectOptions {
    /// The server's requirepass.
    pub password: Option<String>,
    /// Seconds a request that is safe to repeat is retried across nodes (default 15).
    pub retry_for: Option<f64>,
    /// The clock drift allowed for when counting a lease down (default 0.01).
    pub drift: Option<f64>,
}

/// How to acquire a lock.
#[napi(object)]
pub struct LockOptions {
    /// Lease in seconds (default 30), renewed in the background.
    pub ttl: Option<f64>,
    /// Seconds to queue for it (default: as long as it takes). Ignored by tryLock.
    pub wait: Option<f64>,
    /// A shared (read) lock.
    pub shared: Option<bool>,
    /// Renew in the background (default true).
    pub auto_renew: Option<bool>,
}

fn lock_options(o: Option<LockOptions>) -> Res<core::LockOptions> {
    let o = o.unwrap_or(LockOptions { ttl: None, wait: None, shared: None, auto_renew: None });
    let mut l = core::LockOptions::ttl(seconds(o.ttl.unwrap_or(30.0), "ttl")?);
    l.wait = o.wait.map(|w| seconds(w, "wait")).transpose()?;
    l.shared = o.shared.unwrap_or(false);
    l.auto_renew = o.auto_renew.unwrap_or(true);
    Ok(l)
}

/// A fencelock client.
#[napi]
pub struct Client {
    inner: core::Client,
}

/// Connects to the first endpoint ("host:port") that answers.
#[napi]
pub async fn connect(endpoints: Vec<String>, options: Option<ConnectOptions>) -> Res<Client> {
    let mut o = core::Options::new(endpoints);
    if let Some(c) = options {
        o.password = c.password;
        if let Some(r) = c.retry_for {
            o.retry_for = seconds(r, "retryFor")?;
        }
        if let Some(d) = c.drift {
            o.drift = d;
        }
    }
    core::Client::connect(o).await.map(|inner| Client { inner }).map_err(err)
}

#[napi]
impl Client {
    /// Acquires a lock, queueing up to `wait` seconds; rejects with Timeout when the
    /// wait runs out.
    #[napi]
    pub async fn lock(&self, name: String, options: Option<LockOptions>) -> Res<Lock> {
        let o = lock_options(options)?;
        self.inner.lock(Bytes::from(name), o).await.map(Lock::wrap).map_err(err)
    }

    /// Acquires a lock if it is free now; null when held.
    #[napi]
    pub async fn try_lock(&self, name: String, options: Option<LockOptions>) -> Res<Option<Lock>> {
        let o = lock_options(options)?;
        Ok(self.inner.try_lock(Bytes::from(name), o).await.map_err(err)?.map(Lock::wrap))
    }

    /// The current fence of a lock, or null when it is free.
    #[napi]
    pub async fn fence(&self, name: String) -> Res<Option<i64>> {
        Ok(self.inner.fence(name.as_bytes()).await.map_err(err)?.map(|f| f as i64))
    }

    /// GET key (linearizable).
    #[napi]
    pub async fn get(&self, key: String) -> Res<Option<Buffer>> {
        Ok(self.inner.get(key.as_bytes()).await.map_err(err)?.map(|b| b.to_vec().into()))
    }

    /// Opens a session of `ttl` seconds, kept alive in the background; locks taken
    /// with `session.lock` live as long as it does.
    #[napi]
    pub async fn session(&self, ttl: f64) -> Res<Session> {
        let session = self.inner.session(seconds(ttl, "ttl")?).await.map_err(err)?;
        Ok(Session {
            reference: session.reference(),
            id: session.id() as i64,
            client: self.inner.clone(),
            inner: Mutex::new(Some(session)),
        })
    }
}

/// A session: locks taken with `session.lock` are held as long as it lives (closed,
/// expired or lost, they are released by the server).
#[napi]
pub struct Session {
    inner: Mutex<Option<core::Session>>,
    reference: core::SessionRef,
    id: i64,
    client: core::Client,
}

#[napi]
impl Session {
    /// The session id.
    #[napi(getter)]
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Still valid by the client's clock and not known lost.
    #[napi(getter)]
    pub fn valid(&self) -> bool {
        self.inner.lock().expect("not poisoned").as_ref().is_some_and(|s| s.is_valid())
    }

    /// Acquires a lock held by this session. Without `ttl` it has no lease of its
    /// own (it lives as long as the session); with one it is valid while both are.
    #[napi]
    pub async fn lock(&self, name: String, options: Option<LockOptions>) -> Res<Lock> {
        let ttl_given = options.as_ref().is_some_and(|o| o.ttl.is_some());
        let mut o = lock_options(options)?;
        if !ttl_given {
            o.ttl = Duration::ZERO;
        }
        o.session = Some(self.reference.clone());
        self.client.lock(Bytes::from(name), o).await.map(Lock::wrap).map_err(err)
    }

    /// Closes it: everything it holds is released now.
    #[napi]
    pub async fn close(&self) -> Res<()> {
        let session = self.inner.lock().expect("not poisoned").take();
        match session {
            None => Ok(()),
            Some(s) => s.close().await.map_err(err),
        }
    }
}

/// A held lock.
#[napi]
pub struct Lock {
    inner: Mutex<Option<core::Lock>>,
    fence: i64,
    token: String,
    name: String,
}

impl Lock {
    fn wrap(l: core::Lock) -> Lock {
        Lock {
            fence: l.fence() as i64,
            token: String::from_utf8_lossy(l.token()).into_owned(),
            name: String::from_utf8_lossy(l.name()).into_owned(),
            inner: Mutex::new(Some(l)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&core::Lock) -> T, released: T) -> T {
        match self.inner.lock().expect("not poisoned").as_ref() {
            Some(l) => f(l),
            None => released,
        }
    }
}

#[napi]
impl Lock {
    /// The fencing token: strictly greater than every fence granted before.
    #[napi(getter)]
    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// The secret that renews and releases it.
    #[napi(getter)]
    pub fn token(&self) -> String {
        self.token.clone()
    }

    /// The lock's name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Still valid by the client's own conservative clock and not known lost.
    #[napi(getter)]
    pub fn valid(&self) -> bool {
        self.with(|l| l.is_valid(), false)
    }

    /// Seconds of validity left (0 once lost or released).
    #[napi(getter)]
    pub fn remaining(&self) -> f64 {
        self.with(|l| l.remaining().as_secs_f64(), 0.0)
    }

    /// Why it was lost, if it was.
    #[napi(getter)]
    pub fn lost_reason(&self) -> Option<String> {
        self.with(|l| l.lost_reason(), Some("released".into()))
    }

    /// Resolves with the reason when the lock is lost (or "released"), or null after
    /// `timeout` seconds.
    #[napi]
    pub async fn wait_lost(&self, timeout: Option<f64>) -> Res<Option<String>> {
        let Some(mut signal) = self.with(|l| Some(l.lost_signal()), None) else {
            return Ok(Some("released".into()));
        };
        match timeout {
            None => Ok(Some(signal.wait().await)),
            Some(t) => Ok(tokio::time::timeout(seconds(t, "timeout")?, signal.wait()).await.ok()),
        }
    }

    /// Releases it: true if it was still held, false if it had expired or been taken.
    #[napi]
    pub async fn release(&self) -> Res<bool> {
        let taken = self.inner.lock().expect("not poisoned").take();
        match taken {
            None => Ok(false),
            Some(l) => l.release().await.map_err(err),
        }
    }
}

/// How to take a permit or campaign.
#[napi(object)]
pub struct HeldOptions {
    /// Lease in seconds (default 30), renewed in the background.
    pub ttl: Option<f64>,
    /// Seconds to queue (default: only if free now).
    pub wait: Option<f64>,
}

fn held_options(o: Option<HeldOptions>) -> Res<(Duration, Option<Duration>)> {
    let o = o.unwrap_or(HeldOptions { ttl: None, wait: None });
    Ok((seconds(o.ttl.unwrap_or(30.0), "ttl")?, o.wait.map(|w| seconds(w, "wait")).transpose()?))
}

#[napi]
impl Client {
    /// Takes a permit of semaphore `name` (at most `limit` at once); null when none
    /// came free in time.
    #[napi]
    pub async fn acquire_permit(&self, name: String, limit: u32, options: Option<HeldOptions>) -> Res<Option<Permit>> {
        let (ttl, wait) = held_options(options)?;
        let permit = self.inner.acquire_permit(Bytes::from(name), limit, ttl, wait).await.map_err(err)?;
        Ok(permit.map(|p| Permit { fence: p.fence() as i64, inner: Mutex::new(Some(p)) }))
    }

    /// Campaigns to lead election `name` as `candidate` with `value`; null when another
    /// candidate still leads when the wait runs out.
    #[napi]
    pub async fn campaign(
        &self,
        name: String,
        candidate: String,
        value: String,
        options: Option<HeldOptions>,
    ) -> Res<Option<Leadership>> {
        let (ttl, wait) = held_options(options)?;
        let lead = self.inner.campaign(Bytes::from(name), Bytes::from(candidate), Bytes::from(value), ttl, wait);
        Ok(lead.await.map_err(err)?.map(|l| Leadership { fence: l.fence() as i64, inner: Mutex::new(Some(l)) }))
    }

    /// The current leader of election `name`, or null.
    #[napi]
    pub async fn leader(&self, name: String) -> Res<Option<LeaderInfo>> {
        let leader = self.inner.leader(name.as_bytes()).await.map_err(err)?;
        Ok(leader.map(|l| LeaderInfo {
            candidate: String::from_utf8_lossy(&l.candidate).into_owned(),
            fence: l.fence as i64,
            value: String::from_utf8_lossy(&l.value).into_owned(),
        }))
    }

    /// Watches `kind` ("key", "prefix", "lock", "election") `name`, from now or from
    /// `fromRevision`.
    #[napi]
    pub async fn watch(&self, kind: String, name: String, from_revision: Option<i64>) -> Res<Watch> {
        let name = Bytes::from(name);
        let target = match kind.as_str() {
            "key" => core::Target::Key(name),
            "prefix" => core::Target::Prefix(name),
            "lock" => core::Target::Lock(name),
            "election" => core::Target::Election(name),
            other => return Err(invalid(format!("unknown watch kind {other:?} (key, prefix, lock, election)"))),
        };
        let watch = self.inner.watch(target, from_revision.map(|r| r.max(0) as u64)).await.map_err(err)?;
        Ok(Watch { inner: tokio::sync::Mutex::new(watch) })
    }

    /// SET key value.
    #[napi]
    pub async fn set(&self, key: String, value: String) -> Res<()> {
        self.inner.set(key.as_bytes(), value.as_bytes()).await.map_err(err)
    }
}

/// Who leads an election.
#[napi(object)]
pub struct LeaderInfo {
    /// The candidate's name.
    pub candidate: String,
    /// Its fence (term).
    pub fence: i64,
    /// The value it proclaimed.
    pub value: String,
}

/// One change seen by a watch.
#[napi(object)]
pub struct WatchEvent {
    /// The log index of the change (the same on every node).
    pub revision: i64,
    /// set, del, expired, released, revoked, leader.
    pub kind: String,
    /// The key, lock or election.
    pub target: String,
    /// For elections: the new leader (null: nobody leads).
    pub candidate: Option<String>,
}

/// A running watch.
#[napi]
pub struct Watch {
    inner: tokio::sync::Mutex<core::Watch>,
}

#[napi]
impl Watch {
    /// The next change, or null after `timeout` seconds.
    #[napi]
    pub async fn next(&self, timeout: f64) -> Res<Option<WatchEvent>> {
        let timeout = seconds(timeout, "timeout")?;
        let event = self.inner.lock().await.next(timeout).await.map_err(err)?;
        Ok(event.map(|e| WatchEvent {
            revision: e.revision as i64,
            kind: e.kind,
            target: String::from_utf8_lossy(&e.target).into_owned(),
            candidate: e.candidate.map(|c| String::from_utf8_lossy(&c).into_owned()),
        }))
    }
}

/// A permit of a counting semaphore.
#[napi]
pub struct Permit {
    inner: Mutex<Option<core::Permit>>,
    fence: i64,
}

#[napi]
impl Permit {
    /// The fencing token of this grant.
    #[napi(getter)]
    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// Still valid by the client's conservative clock.
    #[napi(getter)]
    pub fn valid(&self) -> bool {
        self.inner.lock().expect("not poisoned").as_ref().is_some_and(|p| p.is_valid())
    }

    /// Gives it back: true if it was still held.
    #[napi]
    pub async fn release(&self) -> Res<bool> {
        let taken = self.inner.lock().expect("not poisoned").take();
        match taken {
            None => Ok(false),
            Some(p) => p.release().await.map_err(err),
        }
    }
}

/// Leadership of an election.
#[napi]
pub struct Leadership {
    inner: Mutex<Option<core::Leadership>>,
    fence: i64,
}

#[napi]
impl Leadership {
    /// The fencing token of this term.
    #[napi(getter)]
    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// Still valid by the client's conservative clock.
    #[napi(getter)]
    pub fn valid(&self) -> bool {
        self.inner.lock().expect("not poisoned").as_ref().is_some_and(|l| l.is_valid())
    }

    /// Resigns: true if it still led.
    #[napi]
    pub async fn release(&self) -> Res<bool> {
        let taken = self.inner.lock().expect("not poisoned").take();
        match taken {
            None => Ok(false),
            Some(l) => l.release().await.map_err(err),
        }
    }
}

/// An in-process single-node fencelock on an ephemeral port (temp data dir), for tests.
#[napi]
pub struct EmbeddedServer {
    inner: Mutex<Option<core::EmbeddedServer>>,
    port: u32,
}

#[napi]
impl EmbeddedServer {
    /// Starts it.
    #[napi(constructor)]
    pub fn new() -> Result<Self> {
        let s = core::EmbeddedServer::start().map_err(err)?;
        Ok(EmbeddedServer { port: u32::from(s.port()), inner: Mutex::new(Some(s)) })
    }

    /// Its client port.
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.port
    }

    /// "127.0.0.1:<port>".
    #[napi(getter)]
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it (data removed).
    #[napi]
    pub fn stop(&self) {
        if let Some(s) = self.inner.lock().expect("not poisoned").take() {
            s.stop();
        }
    }
}
