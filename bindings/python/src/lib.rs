//! Python bindings for fencelock-client. They convert arguments and results and map
//! errors to exception classes; every decision (retries, renewal, validity, release)
//! is the Rust client's.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use fencelock_client as core;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(fencelock, FencelockError, PyException, "Base class of every fencelock error.");
create_exception!(fencelock, NotHolder, FencelockError, "The token does not hold it (released, expired, taken).");
create_exception!(fencelock, Conflict, FencelockError, "Held by this owner in another way (token, mode, group).");
create_exception!(fencelock, NoSession, FencelockError, "The session ended or never existed.");
create_exception!(fencelock, ConditionFailed, FencelockError, "An acquire's condition did not hold.");
create_exception!(fencelock, LimitExceeded, FencelockError, "A server limit was reached; the message names it.");
create_exception!(fencelock, AuthError, FencelockError, "NOAUTH / WRONGPASS.");
create_exception!(fencelock, InvalidRequest, FencelockError, "The server refused the request itself.");
create_exception!(fencelock, Unavailable, FencelockError, "No node answered in time (down, or no quorum).");
create_exception!(
    fencelock,
    OutcomeUnknown,
    FencelockError,
    "Sent, answer lost, not safe to retry: it may have applied."
);
create_exception!(fencelock, LockLost, FencelockError, "The lock was lost: renewal failed or validity ran out.");
create_exception!(fencelock, ProtocolError, FencelockError, "The peer sent something that is not RESP.");
create_exception!(fencelock, Timeout, FencelockError, "The wait ran out before the grant.");

/// A name or key: `str` (as UTF-8) or `bytes`.
struct Name(Vec<u8>);

impl<'a, 'py> FromPyObject<'a, 'py> for Name {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Name> {
        if let Ok(s) = ob.cast::<pyo3::types::PyString>() {
            return Ok(Name(pyo3::types::PyStringMethods::to_cow(&*s)?.as_bytes().to_vec()));
        }
        if let Ok(b) = ob.cast::<pyo3::types::PyBytes>() {
            return Ok(Name(b.as_bytes().to_vec()));
        }
        Err(pyo3::exceptions::PyTypeError::new_err("a name must be str or bytes"))
    }
}

/// The one mapping from the client's error kinds to exception classes.
fn err(e: core::Error) -> PyErr {
    let text = e.to_string();
    match e {
        core::Error::NotHolder(_) => NotHolder::new_err(text),
        core::Error::Conflict(_) => Conflict::new_err(text),
        core::Error::NoSession(_) => NoSession::new_err(text),
        core::Error::ConditionFailed(_) => ConditionFailed::new_err(text),
        core::Error::Limit(_) => LimitExceeded::new_err(text),
        core::Error::Auth(_) => AuthError::new_err(text),
        core::Error::Invalid(_) => InvalidRequest::new_err(text),
        core::Error::Unavailable(_) => Unavailable::new_err(text),
        core::Error::Unknown(_) => OutcomeUnknown::new_err(text),
        core::Error::Lost(_) => LockLost::new_err(text),
        core::Error::Protocol(_) => ProtocolError::new_err(text),
        core::Error::Timeout(_) => Timeout::new_err(text),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs a future on the shared runtime with the GIL released.
fn block<F: std::future::Future + Send>(py: Python<'_>, f: F) -> F::Output
where
    F::Output: Send,
{
    py.detach(|| runtime().block_on(f))
}

/// How often a blocking wait looks for a pending Python signal (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// `block` for calls that wait as long as the caller lets them (a lock's or permit's
/// wait, a campaign, a watch, `wait_lost`): a Python signal handler that raises
/// (Ctrl-C's KeyboardInterrupt) interrupts it. The call is dropped then; an acquire
/// gives back what it may have been granted.
fn block_interruptible<F: std::future::Future + Send>(py: Python<'_>, f: F) -> PyResult<F::Output>
where
    F::Output: Send,
{
    py.detach(|| {
        runtime().block_on(async {
            tokio::pin!(f);
            loop {
                tokio::select! {
                    out = &mut f => return Ok(out),
                    _ = tokio::time::sleep(SIGNAL_POLL) => Python::attach(|py| py.check_signals())?,
                }
            }
        })
    })
}

fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| InvalidRequest::new_err(format!("{what} must be a non-negative number of seconds")))
}

fn options(endpoints: Vec<String>, password: Option<String>, retry_for: f64, drift: f64) -> PyResult<core::Options> {
    let mut o = core::Options::new(endpoints);
    o.password = password;
    o.retry_for = seconds(retry_for, "retry_for")?;
    o.drift = drift;
    Ok(o)
}

/// A lock's lease when `ttl` is not given and there is no session.
const LOCK_TTL_DEFAULT_S: f64 = 30.0;

/// `ttl` None: 30 s, or none of its own under a session (it lives as long as the
/// session). A `ttl` given with a session is kept: the lock is valid while both are.
fn lock_options(
    ttl: Option<f64>,
    wait: Option<f64>,
    shared: bool,
    auto_renew: bool,
    session: Option<&Session>,
) -> PyResult<core::LockOptions> {
    let ttl = match (ttl, session) {
        (Some(ttl), _) => seconds(ttl, "ttl")?,
        (None, Some(_)) => Duration::ZERO,
        (None, None) => seconds(LOCK_TTL_DEFAULT_S, "ttl")?,
    };
    let mut o = core::LockOptions::ttl(ttl);
    o.wait = wait.map(|w| seconds(w, "wait")).transpose()?;
    o.shared = shared;
    o.auto_renew = auto_renew;
    o.session = session.map(|s| s.reference.clone());
    Ok(o)
}

/// A held lock. Use it as a context manager (`with` / `async with`) or call
/// `release()`; pass `fence` to the storage you protect.
#[pyclass(module = "fencelock")]
struct Lock {
    inner: Mutex<Option<core::Lock>>,
    fence: u64,
    token: String,
    name: Vec<u8>,
}

impl Lock {
    fn wrap(lock: core::Lock) -> Lock {
        Lock {
            fence: lock.fence(),
            token: String::from_utf8_lossy(lock.token()).into_owned(),
            name: lock.name().to_vec(),
            inner: Mutex::new(Some(lock)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&core::Lock) -> T, released: T) -> T {
        match self.inner.lock().expect("not poisoned").as_ref() {
            Some(lock) => f(lock),
            None => released,
        }
    }

    fn take(&self) -> Option<core::Lock> {
        self.inner.lock().expect("not poisoned").take()
    }
}

#[pymethods]
impl Lock {
    /// The fencing token: strictly greater than every fence granted before.
    #[getter]
    fn fence(&self) -> u64 {
        self.fence
    }

    /// The secret that renews and releases it.
    #[getter]
    fn token(&self) -> &str {
        &self.token
    }

    /// The lock's name.
    #[getter]
    fn name(&self) -> &[u8] {
        &self.name
    }

    /// Still valid by the client's own conservative clock and not known lost.
    #[getter]
    fn valid(&self) -> bool {
        self.with(|l| l.is_valid(), false)
    }

    /// Seconds of validity left (0 once lost or released).
    #[getter]
    fn remaining(&self) -> f64 {
        self.with(|l| l.remaining().as_secs_f64(), 0.0)
    }

    /// Why it was lost, if it was.
    #[getter]
    fn lost_reason(&self) -> Option<String> {
        self.with(|l| l.lost_reason(), Some("released".into()))
    }

    /// Blocks until the lock is lost or `timeout` seconds pass; the reason, or None.
    fn wait_lost(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<String>> {
        let timeout = seconds(timeout, "timeout")?;
        let Some(mut signal) = self.with(|l| Some(l.lost_signal()), None) else {
            return Ok(Some("released".into()));
        };
        block_interruptible(py, async move { tokio::time::timeout(timeout, signal.wait()).await.ok() })
    }

    /// Calls `callback(reason)` (on a background thread) the moment the lock is lost.
    /// The thread is one of the client's own: the callback must not call this
    /// client's blocking methods (hand the work to another thread).
    fn on_lost(&self, callback: Py<PyAny>) {
        self.with(
            |l| {
                l.on_lost(move |reason| {
                    Python::attach(|py| {
                        if let Err(e) = callback.call1(py, (reason,)) {
                            e.print(py);
                        }
                    })
                })
            },
            (),
        )
    }

    /// Releases it: True if it was still held, False if it had expired or been taken.
    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        match self.take() {
            None => Ok(false),
            Some(lock) => block(py, lock.release()).map_err(err),
        }
    }

    /// Releases it (awaitable).
    fn release_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let lock = self.take();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            match lock {
                None => Ok(false),
                Some(lock) => lock.release().await.map_err(err),
            }
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<fencelock.Lock {:?} fence={} valid={}>",
            String::from_utf8_lossy(&self.name),
            self.fence,
            self.valid()
        )
    }
}

macro_rules! held_guard {
    ($name:ident, $core:ty, $doc:literal, { $($extra:tt)* }) => {
        #[doc = $doc]
        #[pyclass(module = "fencelock")]
        struct $name {
            inner: Mutex<Option<$core>>,
            fence: u64,
            token: String,
        }

        impl $name {
            fn wrap(held: $core) -> $name {
                $name {
                    fence: held.fence(),
                    token: String::from_utf8_lossy(held.token()).into_owned(),
                    inner: Mutex::new(Some(held)),
                }
            }
        }

        #[pymethods]
        impl $name {
            /// The fencing token of this grant.
            #[getter]
            fn fence(&self) -> u64 {
                self.fence
            }

            /// The secret that renews and releases it.
            #[getter]
            fn token(&self) -> &str {
                &self.token
            }

            /// Still valid by the client's own conservative clock and not known lost.
            #[getter]
            fn valid(&self) -> bool {
                self.inner.lock().expect("not poisoned").as_ref().is_some_and(|h| h.is_valid())
            }

            /// Lets go: True if it was still held.
            fn release(&self, py: Python<'_>) -> PyResult<bool> {
                let held = self.inner.lock().expect("not poisoned").take();
                match held {
                    None => Ok(false),
                    Some(h) => block(py, h.release()).map_err(err),
                }
            }

            fn __enter__(slf: Py<Self>) -> Py<Self> {
                slf
            }

            fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
                self.release(py)?;
                Ok(false)
            }

            $($extra)*
        }
    };
}

held_guard!(Permit, core::Permit, "A permit of a counting semaphore (a context manager).", {});
held_guard!(Leadership, core::Leadership, "Leadership of an election (a context manager; leaving it resigns).", {
    /// Publishes a new value as the leader.
    fn proclaim(&self, py: Python<'_>, value: Name) -> PyResult<()> {
        // Not under the guard's lock: `block` gives up the GIL for the round trip, and
        // a thread reading `valid` (holding the GIL, waiting for this lock) would then
        // deadlock with this one (holding the lock, waiting for the GIL).
        let proclaimer = self.inner.lock().expect("not poisoned").as_ref().map(|held| held.proclaimer());
        let Some(proclaimer) = proclaimer else { return Err(NotHolder::new_err("resigned")) };
        block(py, proclaimer.proclaim(Bytes::from(value.0))).map_err(err)
    }
});

/// A watch: `next(timeout)` returns the next change as a dict, or None.
#[pyclass(module = "fencelock")]
struct Watch {
    inner: tokio::sync::Mutex<core::Watch>,
}

#[pymethods]
impl Watch {
    /// The next change (revision, kind, target, candidate), or None after `timeout` s.
    fn next<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let timeout = seconds(timeout, "timeout")?;
        let event = block_interruptible(py, async { self.inner.lock().await.next(timeout).await })?.map_err(err)?;
        event
            .map(|e| {
                let d = PyDict::new(py);
                d.set_item("revision", e.revision)?;
                d.set_item("kind", e.kind)?;
                d.set_item("target", e.target.to_vec())?;
                d.set_item("candidate", e.candidate.map(|c| c.to_vec()))?;
                Ok(d)
            })
            .transpose()
    }
}

/// A session: locks acquired with `session=` live as long as it does.
#[pyclass(module = "fencelock")]
struct Session {
    inner: Mutex<Option<core::Session>>,
    reference: core::SessionRef,
    id: u64,
}

#[pymethods]
impl Session {
    /// The session id.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Still valid by the client's clock.
    #[getter]
    fn valid(&self) -> bool {
        self.inner.lock().expect("not poisoned").as_ref().is_some_and(|s| s.is_valid())
    }

    /// Closes it: everything it owns is released now.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let session = self.inner.lock().expect("not poisoned").take();
        match session {
            None => Ok(()),
            Some(s) => block(py, s.close()).map_err(err),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// A fencelock client (blocking calls release the GIL).
#[pyclass(module = "fencelock")]
struct Client {
    inner: core::Client,
}

#[pymethods]
impl Client {
    /// Connects to the first endpoint ("host:port") that answers.
    #[new]
    #[pyo3(signature = (endpoints, password=None, retry_for=15.0, drift=0.01))]
    fn new(
        py: Python<'_>,
        endpoints: Vec<String>,
        password: Option<String>,
        retry_for: f64,
        drift: f64,
    ) -> PyResult<Client> {
        let o = options(endpoints, password, retry_for, drift)?;
        Ok(Client { inner: block(py, core::Client::connect(o)).map_err(err)? })
    }

    /// Acquires a lock, waiting up to `wait` seconds (None: as long as it takes);
    /// raises Timeout when the wait runs out. Renewed in the background. `ttl`
    /// (seconds) defaults to 30, or under `session` to none of its own: the lock lives
    /// as long as the session; with both it is valid while both are.
    #[pyo3(signature = (name, ttl=None, wait=None, shared=false, auto_renew=true, session=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments, one per option
    fn lock(
        &self,
        py: Python<'_>,
        name: Name,
        ttl: Option<f64>,
        wait: Option<f64>,
        shared: bool,
        auto_renew: bool,
        session: Option<PyRef<'_, Session>>,
    ) -> PyResult<Lock> {
        let o = lock_options(ttl, wait, shared, auto_renew, session.as_deref())?;
        let client = self.inner.clone();
        block_interruptible(py, async move { client.lock(Bytes::from(name.0), o).await })?.map(Lock::wrap).map_err(err)
    }

    /// Acquires a lock if it is free now; None when held. `ttl` as for `lock`.
    #[pyo3(signature = (name, ttl=None, shared=false, auto_renew=true, session=None))]
    fn try_lock(
        &self,
        py: Python<'_>,
        name: Name,
        ttl: Option<f64>,
        shared: bool,
        auto_renew: bool,
        session: Option<PyRef<'_, Session>>,
    ) -> PyResult<Option<Lock>> {
        let o = lock_options(ttl, None, shared, auto_renew, session.as_deref())?;
        let client = self.inner.clone();
        Ok(block(py, async move { client.try_lock(Bytes::from(name.0), o).await }).map_err(err)?.map(Lock::wrap))
    }

    /// The current fence of a lock, or None when it is free.
    fn fence(&self, py: Python<'_>, name: Name) -> PyResult<Option<u64>> {
        let client = self.inner.clone();
        block(py, async move { client.fence(&name.0).await }).map_err(err)
    }

    /// Opens a session of `ttl` seconds, kept alive in the background.
    fn session(&self, py: Python<'_>, ttl: f64) -> PyResult<Session> {
        let client = self.inner.clone();
        let ttl = seconds(ttl, "ttl")?;
        let s = block(py, async move { client.session(ttl).await }).map_err(err)?;
        Ok(Session { id: s.id(), reference: s.reference(), inner: Mutex::new(Some(s)) })
    }

    /// The current leader of an election as a dict (candidate, fence, value), or None.
    fn leader<'py>(&self, py: Python<'py>, name: Name) -> PyResult<Option<Bound<'py, PyDict>>> {
        let client = self.inner.clone();
        let leader = block(py, async move { client.leader(&name.0).await }).map_err(err)?;
        leader
            .map(|l| {
                let d = PyDict::new(py);
                d.set_item("candidate", l.candidate.to_vec())?;
                d.set_item("fence", l.fence)?;
                d.set_item("value", l.value.to_vec())?;
                Ok(d)
            })
            .transpose()
    }

    /// Takes a permit of semaphore `name` (at most `limit` at once), queueing up to
    /// `wait` seconds (None: only if one is free now); None when none came free.
    #[pyo3(signature = (name, limit, ttl=30.0, wait=None))]
    fn acquire_permit(
        &self,
        py: Python<'_>,
        name: Name,
        limit: u32,
        ttl: f64,
        wait: Option<f64>,
    ) -> PyResult<Option<Permit>> {
        let (ttl, wait) = (seconds(ttl, "ttl")?, wait.map(|w| seconds(w, "wait")).transpose()?);
        let client = self.inner.clone();
        let permit =
            block_interruptible(py, async move { client.acquire_permit(Bytes::from(name.0), limit, ttl, wait).await })?;
        Ok(permit.map_err(err)?.map(Permit::wrap))
    }

    /// Campaigns to lead election `name`, queueing up to `wait` seconds (None: only if
    /// nobody leads); None when another candidate still leads.
    #[pyo3(signature = (name, candidate, value=None, ttl=30.0, wait=None))]
    fn campaign(
        &self,
        py: Python<'_>,
        name: Name,
        candidate: Name,
        value: Option<Name>,
        ttl: f64,
        wait: Option<f64>,
    ) -> PyResult<Option<Leadership>> {
        let (ttl, wait) = (seconds(ttl, "ttl")?, wait.map(|w| seconds(w, "wait")).transpose()?);
        let value = Bytes::from(value.map_or_else(Vec::new, |v| v.0));
        let client = self.inner.clone();
        let lead = block_interruptible(py, async move {
            client.campaign(Bytes::from(name.0), Bytes::from(candidate.0), value, ttl, wait).await
        })?;
        Ok(lead.map_err(err)?.map(Leadership::wrap))
    }

    /// Watches "key", "prefix", "lock" or "election" `name`, from now or from a revision.
    #[pyo3(signature = (kind, name, from_revision=None))]
    fn watch(&self, py: Python<'_>, kind: &str, name: Name, from_revision: Option<u64>) -> PyResult<Watch> {
        let name = Bytes::from(name.0);
        let target = match kind {
            "key" => core::Target::Key(name),
            "prefix" => core::Target::Prefix(name),
            "lock" => core::Target::Lock(name),
            "election" => core::Target::Election(name),
            other => {
                return Err(InvalidRequest::new_err(format!(
                    "unknown watch kind {other:?} (key, prefix, lock, election)"
                )))
            }
        };
        let client = self.inner.clone();
        let watch = block(py, async move { client.watch(target, from_revision).await }).map_err(err)?;
        Ok(Watch { inner: tokio::sync::Mutex::new(watch) })
    }

    /// SET key value.
    fn set(&self, py: Python<'_>, key: Name, value: Name) -> PyResult<()> {
        let client = self.inner.clone();
        block(py, async move { client.set(&key.0, &value.0).await }).map_err(err)
    }

    /// GET key (linearizable).
    fn get(&self, py: Python<'_>, key: Name) -> PyResult<Option<Vec<u8>>> {
        let client = self.inner.clone();
        Ok(block(py, async move { client.get(&key.0).await }).map_err(err)?.map(|b| b.to_vec()))
    }
}

/// The asyncio client: `await AsyncClient.connect(...)`.
#[pyclass(module = "fencelock")]
struct AsyncClient {
    inner: core::Client,
}

/// `async with client.lock(...) as lock:` acquires on enter and releases on exit.
#[pyclass(module = "fencelock")]
struct PendingLock {
    client: core::Client,
    name: Vec<u8>,
    options: core::LockOptions,
    lock: Mutex<Option<Py<Lock>>>,
}

#[pymethods]
impl AsyncClient {
    /// Connects (a coroutine).
    #[staticmethod]
    #[pyo3(signature = (endpoints, password=None, retry_for=15.0, drift=0.01))]
    fn connect(
        py: Python<'_>,
        endpoints: Vec<String>,
        password: Option<String>,
        retry_for: f64,
        drift: f64,
    ) -> PyResult<Bound<'_, PyAny>> {
        let o = options(endpoints, password, retry_for, drift)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            core::Client::connect(o).await.map(|inner| AsyncClient { inner }).map_err(err)
        })
    }

    /// An async context manager that acquires on enter and releases on exit.
    #[pyo3(signature = (name, ttl=30.0, wait=None, shared=false, auto_renew=true))]
    fn lock(&self, name: Name, ttl: f64, wait: Option<f64>, shared: bool, auto_renew: bool) -> PyResult<PendingLock> {
        let options = lock_options(Some(ttl), wait, shared, auto_renew, None)?;
        Ok(PendingLock { client: self.inner.clone(), name: name.0, options, lock: Mutex::new(None) })
    }

    /// Acquires a lock (a coroutine returning a Lock; release with `await lock.release_async()`).
    #[pyo3(signature = (name, ttl=30.0, wait=None, shared=false, auto_renew=true))]
    fn acquire<'py>(
        &self,
        py: Python<'py>,
        name: Name,
        ttl: f64,
        wait: Option<f64>,
        shared: bool,
        auto_renew: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let o = lock_options(Some(ttl), wait, shared, auto_renew, None)?;
        let client = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            client.lock(Bytes::from(name.0), o).await.map(Lock::wrap).map_err(err)
        })
    }

    /// The current fence of a lock, or None (a coroutine).
    fn fence<'py>(&self, py: Python<'py>, name: Name) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { client.fence(&name.0).await.map_err(err) })
    }
}

#[pymethods]
impl PendingLock {
    fn __aenter__<'py>(slf: PyRef<'py, Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = slf.client.clone();
        let (name, o) = (slf.name.clone(), slf.options.clone());
        let me: Py<PendingLock> = slf.into();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let lock = client.lock(Bytes::from(name), o).await.map_err(err)?;
            Python::attach(|py| {
                let lock = Py::new(py, Lock::wrap(lock))?;
                *me.borrow(py).lock.lock().expect("not poisoned") = Some(lock.clone_ref(py));
                Ok(lock)
            })
        })
    }

    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _t: Py<PyAny>,
        _v: Py<PyAny>,
        _tb: Py<PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.lock.lock().expect("not poisoned").take().and_then(|l| l.borrow(py).take());
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            if let Some(lock) = inner {
                lock.release().await.map_err(err)?;
            }
            Ok(false)
        })
    }
}

/// An in-process single-node fencelock on an ephemeral port with a temp data dir,
/// for tests. Stops when `stop()` is called or it is garbage-collected.
#[pyclass(module = "fencelock")]
struct EmbeddedServer {
    inner: Mutex<Option<core::EmbeddedServer>>,
    port: u16,
}

#[pymethods]
impl EmbeddedServer {
    #[new]
    fn new(py: Python<'_>) -> PyResult<EmbeddedServer> {
        let server = py.detach(core::EmbeddedServer::start).map_err(err)?;
        Ok(EmbeddedServer { port: server.port(), inner: Mutex::new(Some(server)) })
    }

    /// Its client port.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:<port>".
    #[getter]
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it (data removed).
    fn stop(&self, py: Python<'_>) {
        let server = self.inner.lock().expect("not poisoned").take();
        if let Some(server) = server {
            py.detach(move || server.stop());
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.stop(py);
        false
    }
}

#[pymodule]
fn fencelock(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Client>()?;
    m.add_class::<AsyncClient>()?;
    m.add_class::<Lock>()?;
    m.add_class::<PendingLock>()?;
    m.add_class::<Session>()?;
    m.add_class::<Permit>()?;
    m.add_class::<Leadership>()?;
    m.add_class::<Watch>()?;
    m.add_class::<EmbeddedServer>()?;
    m.add("FencelockError", py.get_type::<FencelockError>())?;
    m.add("NotHolder", py.get_type::<NotHolder>())?;
    m.add("Conflict", py.get_type::<Conflict>())?;
    m.add("NoSession", py.get_type::<NoSession>())?;
    m.add("ConditionFailed", py.get_type::<ConditionFailed>())?;
    m.add("LimitExceeded", py.get_type::<LimitExceeded>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("InvalidRequest", py.get_type::<InvalidRequest>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("OutcomeUnknown", py.get_type::<OutcomeUnknown>())?;
    m.add("LockLost", py.get_type::<LockLost>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    Ok(())
}
