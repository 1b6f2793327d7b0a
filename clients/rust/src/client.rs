//! The client: endpoints, a small connection pool, and the one retry loop every request
//! goes through.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::conn::{Conn, ConnError};
use crate::error::{Error, Result};
use crate::resp::Value;

/// How a client connects and retries.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` of one or more nodes; more are discovered from the first that answers.
    pub endpoints: Vec<String>,
    /// The server's `requirepass`, if any.
    pub password: Option<String>,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one request may wait for its reply (a blocking wait adds its own bound).
    /// A node answers TRYAGAIN within about 3 s when it cannot reach a quorum.
    pub request_timeout: Duration,
    /// How long a request that is safe to repeat is retried, across nodes, before
    /// [`Error::Unavailable`].
    pub retry_for: Duration,
    /// The clock drift the client allows for when it counts a lease down: a lock of
    /// `ttl` sent at `t` is valid until `t + ttl × (1 − drift)` by the client's clock.
    pub drift: f64,
    /// Ask other members for their addresses (CLUSTER.STATUS; assumes each node's peer
    /// port is its client port + 10000, the default).
    pub discover: bool,
}

impl Options {
    /// Defaults for these endpoints: 1 s connect, 5 s request, 15 s of retries, 1% drift.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Options {
        Options {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            password: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(15),
            drift: 0.01,
            discover: true,
        }
    }
}

/// Whether a request may be sent again when its answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Repeating it changes nothing (reads, RENEW, idempotent LOCK, UNLOCK by token).
    Safe,
    /// It may have applied: a lost answer is [`Error::Unknown`].
    Unsafe,
}

/// The most idle connections kept per client.
const IDLE_MAX: usize = 16;
/// Backoff between retries: from this ...
const BACKOFF_MIN: Duration = Duration::from_millis(25);
/// ... doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_millis(800);

pub(crate) struct Inner {
    pub options: Options,
    endpoints: Mutex<Vec<String>>,
    next: AtomicUsize,
    idle: Mutex<Vec<Conn>>,
}

/// A fencelock client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoints", &self.endpoints()).finish()
    }
}

impl Client {
    /// Connects to the first endpoint that answers and learns the other members.
    pub async fn connect(options: Options) -> Result<Client> {
        if options.endpoints.is_empty() {
            return Err(Error::Invalid("no endpoints given".into()));
        }
        if !(0.0..0.5).contains(&options.drift) {
            return Err(Error::Invalid(format!("drift {} is outside 0..0.5", options.drift)));
        }
        let client = Client {
            inner: Arc::new(Inner {
                endpoints: Mutex::new(options.endpoints.clone()),
                options,
                next: AtomicUsize::new(0),
                idle: Mutex::new(Vec::new()),
            }),
        };
        client.call(&[b"PING"], Retry::Safe, Duration::ZERO).await?;
        if client.inner.options.discover {
            client.discover().await;
        }
        Ok(client)
    }

    /// Connects to one endpoint with default options.
    pub async fn connect_to(endpoint: &str) -> Result<Client> {
        Client::connect(Options::new([endpoint])).await
    }

    /// The endpoints it knows.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.lock().expect("not poisoned").clone()
    }

    pub(crate) fn options(&self) -> &Options {
        &self.inner.options
    }

    /// Adds the members CLUSTER.STATUS names (client port = peer port − 10000).
    async fn discover(&self) {
        let Ok(Value::Bulk(text)) = self.call(&[b"CLUSTER.STATUS"], Retry::Safe, Duration::ZERO).await else {
            return;
        };
        let text = String::from_utf8_lossy(&text).into_owned();
        let mut endpoints = self.inner.endpoints.lock().expect("not poisoned");
        for line in text.lines().filter_map(|l| l.strip_prefix("member:")) {
            let Some(addr) = line.split(',').find_map(|f| f.strip_prefix("addr=")) else { continue };
            let Some((host, port)) = addr.rsplit_once(':') else { continue };
            let Some(client_port) = port.parse::<u32>().ok().and_then(|p| p.checked_sub(10_000)) else { continue };
            let endpoint = format!("{host}:{client_port}");
            if !endpoints.contains(&endpoint) && endpoints.len() < 64 {
                endpoints.push(endpoint);
            }
        }
    }

    fn endpoint(&self) -> String {
        let endpoints = self.inner.endpoints.lock().expect("not poisoned");
        endpoints[self.inner.next.load(Ordering::Relaxed) % endpoints.len()].clone()
    }

    /// After a failure on `endpoint`, the next request goes to the next endpoint.
    fn rotate(&self, endpoint: &str) {
        if self.endpoint() == endpoint {
            self.inner.next.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn take_conn(&self) -> std::result::Result<Conn, ConnError> {
        let endpoint = self.endpoint();
        let reused = {
            let mut idle = self.inner.idle.lock().expect("not poisoned");
            // One the server has closed meanwhile (it restarted) is dropped here: a
            // request sent on it would be reported as possibly applied although the
            // server never read it.
            idle.retain(Conn::is_open);
            idle.iter().position(|c| c.endpoint == endpoint).map(|i| idle.swap_remove(i))
        };
        match reused {
            Some(conn) => Ok(conn),
            None => {
                let o = &self.inner.options;
                Conn::open(&endpoint, o.password.as_deref(), o.connect_timeout).await
            }
        }
    }

    fn put_back(&self, conn: Conn) {
        let mut idle = self.inner.idle.lock().expect("not poisoned");
        if idle.len() < IDLE_MAX && conn.pushes.is_empty() {
            idle.push(conn);
        }
    }

    /// Sends a command, retrying across nodes while that is safe. `wait` is how long
    /// the server may legitimately hold the reply back (a blocking acquire).
    pub(crate) async fn call(&self, args: &[&[u8]], retry: Retry, wait: Duration) -> Result<Value> {
        self.call_tracked(args, retry, wait).await.0
    }

    /// `call`, also saying whether an attempt before the one answered may have been
    /// applied (its reply was lost, or the server said it may have been): a release
    /// retried after such an attempt that finds the lock gone cannot tell whether it
    /// released it itself.
    pub(crate) async fn call_tracked(&self, args: &[&[u8]], retry: Retry, wait: Duration) -> (Result<Value>, bool) {
        let mut maybe_applied = false;
        let result = self.call_noting(args, retry, wait, &mut maybe_applied).await;
        (result, maybe_applied)
    }

    async fn call_noting(
        &self,
        args: &[&[u8]],
        retry: Retry,
        wait: Duration,
        maybe_applied: &mut bool,
    ) -> Result<Value> {
        let o = &self.inner.options;
        // Saturating and capped: `retry_for` and `request_timeout` are the caller's, and
        // may be anything; no deadline may overflow.
        let plus_wait = |d: Duration| d.saturating_add(wait).min(WAIT_LOCAL_MAX * 2);
        let deadline = tokio::time::Instant::now() + plus_wait(o.retry_for);
        let mut backoff = BACKOFF_MIN;
        let mut last_problem = String::from("no attempt made");
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(last_problem));
            }
            let mut conn = match self.take_conn().await {
                Ok(conn) => conn,
                Err(ConnError::Auth(e)) => return Err(Error::Auth(e)),
                Err(ConnError::NotSent(e) | ConnError::Lost(e) | ConnError::Protocol(e)) => {
                    self.rotate(&self.endpoint());
                    last_problem = e;
                    sleep_backoff(&mut backoff, deadline).await;
                    continue;
                }
            };
            let endpoint = conn.endpoint.clone();
            match conn.request(args, plus_wait(o.request_timeout)).await {
                Ok(Value::Error(text)) => {
                    self.put_back(conn);
                    let error = Error::from_server(&text);
                    // "may have been applied" without TRYAGAIN (a node shutting down under
                    // the write): a request that is safe to repeat fails over like TRYAGAIN.
                    let unknown = matches!(error, Error::Unknown(_));
                    let retried = error.is_try_again() || (unknown && retry == Retry::Safe);
                    if !retried {
                        return Err(error);
                    }
                    // The entry may still commit, or have committed elsewhere.
                    if unknown || Error::outcome_unknown(&text) {
                        if retry == Retry::Unsafe {
                            return Err(Error::Unknown(text));
                        }
                        *maybe_applied = true;
                    }
                    self.rotate(&endpoint);
                    last_problem = text;
                    sleep_backoff(&mut backoff, deadline).await;
                }
                Ok(value) => {
                    self.put_back(conn);
                    return Ok(value);
                }
                Err(ConnError::Lost(e)) => {
                    self.rotate(&endpoint);
                    if retry == Retry::Unsafe {
                        return Err(Error::Unknown(e));
                    }
                    *maybe_applied = true;
                    last_problem = e;
                    sleep_backoff(&mut backoff, deadline).await;
                }
                Err(ConnError::NotSent(e)) => {
                    self.rotate(&endpoint);
                    last_problem = e;
                    sleep_backoff(&mut backoff, deadline).await;
                }
                Err(ConnError::Protocol(e)) => return Err(Error::Protocol(e)),
                // Only the handshake answers this, and an open connection has done it.
                Err(ConnError::Auth(e)) => return Err(Error::Auth(e)),
            }
        }
    }

    /// Any command, as given (not retried once sent: a lost answer is
    /// [`Error::Unknown`]). Server errors come back as `Err`.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Value> {
        self.call(args, Retry::Unsafe, Duration::ZERO).await
    }

    /// `SET key value` (not retried once sent).
    pub async fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.call(&[b"SET", key, value], Retry::Unsafe, Duration::ZERO).await.map(drop)
    }

    /// `GET key` (linearizable; retried).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        match self.call(&[b"GET", key], Retry::Safe, Duration::ZERO).await? {
            Value::Bulk(b) => Ok(Some(b)),
            Value::Nil => Ok(None),
            other => Err(unexpected("GET", &other)),
        }
    }

    /// The current fence of a lock, or None when it is free.
    pub async fn fence(&self, name: &[u8]) -> Result<Option<u64>> {
        match self.call(&[b"FENCE", name], Retry::Safe, Duration::ZERO).await? {
            Value::Int(f) => Ok(Some(f as u64)),
            Value::Nil => Ok(None),
            other => Err(unexpected("FENCE", &other)),
        }
    }
}

impl Client {
    /// Sends `args` (safe to repeat: a release or close) on `runtime` without waiting for
    /// the answer: the best-effort give-back of guards dropped or acquires that failed.
    pub(crate) fn send_in_background(&self, runtime: &tokio::runtime::Handle, args: Vec<Bytes>) {
        let client = self.clone();
        runtime.spawn(async move {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
            let _ = client.call(&refs, Retry::Safe, Duration::ZERO).await;
        });
    }
}

/// Gives a grant back unless disarmed: armed before an acquire's request goes out, so
/// that an acquire whose future is dropped (a timeout around it, a cancelled Python
/// task) after the server granted it does not leave the grant held with nobody to
/// renew or release it. The server keeps such a grant: the connection that asked is
/// shared and stays open. Releasing by the attempt's token is safe to repeat.
pub(crate) struct GiveBack {
    client: Client,
    runtime: tokio::runtime::Handle,
    release: Option<Vec<Bytes>>,
}

impl GiveBack {
    /// Armed with the release request for the grant an acquire may get.
    pub(crate) fn arm(client: &Client, release: Vec<Bytes>) -> GiveBack {
        GiveBack { client: client.clone(), runtime: tokio::runtime::Handle::current(), release: Some(release) }
    }

    /// Nothing to give back: the grant is in a guard now, or there was none.
    pub(crate) fn disarm(mut self) -> Vec<Bytes> {
        self.release.take().unwrap_or_default()
    }
}

/// Times a give-back is sent while the server answers that nothing is held, and the
/// pause between: the acquire it undoes may still be on its way to the log (it went
/// out on another connection), and a release that arrives first finds nothing.
const GIVE_BACK_ATTEMPTS: u32 = 3;
const GIVE_BACK_PAUSE: Duration = Duration::from_millis(500);

impl Drop for GiveBack {
    fn drop(&mut self) {
        let Some(release) = self.release.take() else { return };
        let client = self.client.clone();
        self.runtime.spawn(async move {
            let refs: Vec<&[u8]> = release.iter().map(|a| a.as_ref()).collect();
            for _ in 0..GIVE_BACK_ATTEMPTS {
                match client.call(&refs, Retry::Safe, Duration::ZERO).await {
                    Err(Error::NotHolder(_)) => tokio::time::sleep(GIVE_BACK_PAUSE).await,
                    _ => return,
                }
            }
        });
    }
}

/// The longest a reply is waited for locally: past the server's one-year bound on waits.
const WAIT_LOCAL_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Appends an acquire's wait option and returns how long the server may hold the reply:
/// `None` is a try (no option), `Duration::MAX` is `WAIT FOREVER`.
pub(crate) fn push_wait(args: &mut Vec<Bytes>, wait: Option<Duration>) -> Duration {
    match wait {
        Some(w) if w == Duration::MAX => {
            args.extend(["WAIT".into(), "FOREVER".into()]);
            Duration::from_secs(365 * 24 * 3600)
        }
        Some(w) => {
            args.extend(["WAIT".into(), w.as_millis().max(1).to_string().into()]);
            // The server refuses a wait past its bound (a year) with LIMIT; locally the
            // time allowed for the reply is capped so no deadline overflows.
            w.min(WAIT_LOCAL_MAX)
        }
        None => Duration::ZERO,
    }
}

pub(crate) fn unexpected(what: &str, value: &Value) -> Error {
    Error::Protocol(format!("unexpected reply to {what}: {value:?}"))
}

async fn sleep_backoff(backoff: &mut Duration, deadline: tokio::time::Instant) {
    let until = (tokio::time::Instant::now() + *backoff).min(deadline);
    tokio::time::sleep_until(until).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// 128 random bits as 32 hex characters: tokens and request ids.
pub(crate) fn random_token() -> Bytes {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).expect("the OS random source works");
    Bytes::from(raw.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
