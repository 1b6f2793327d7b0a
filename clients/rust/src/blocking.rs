//! A blocking facade: the same client on a runtime of its own, for code that is not
//! async (and for the bindings' sync APIs). Keep-alives run on that runtime's threads.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Result;
use crate::lock::LockOptions;
use crate::Options;

/// A blocking client.
#[derive(Clone)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

/// A held lock (blocking API).
pub struct Lock {
    inner: Option<crate::Lock>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Client {
    /// Connects (see [`crate::Client::connect`]).
    pub fn connect(options: Options) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fencelock-client")
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Invalid(format!("cannot start a runtime: {e}")))?;
        let inner = runtime.block_on(crate::Client::connect(options))?;
        Ok(Client { inner, runtime: Arc::new(runtime) })
    }

    /// The async client underneath.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// See [`crate::Client::lock`].
    pub fn lock(&self, name: impl Into<Bytes>, options: LockOptions) -> Result<Lock> {
        let lock = self.runtime.block_on(self.inner.lock(name, options))?;
        Ok(Lock { inner: Some(lock), runtime: Arc::clone(&self.runtime) })
    }

    /// See [`crate::Client::try_lock`].
    pub fn try_lock(&self, name: impl Into<Bytes>, options: LockOptions) -> Result<Option<Lock>> {
        let lock = self.runtime.block_on(self.inner.try_lock(name, options))?;
        Ok(lock.map(|l| Lock { inner: Some(l), runtime: Arc::clone(&self.runtime) }))
    }

    /// See [`crate::Client::fence`].
    pub fn fence(&self, name: &[u8]) -> Result<Option<u64>> {
        self.runtime.block_on(self.inner.fence(name))
    }

    /// See [`crate::Client::get`].
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.runtime.block_on(self.inner.get(key))
    }

    /// See [`crate::Client::set`].
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.runtime.block_on(self.inner.set(key, value))
    }
}

impl Lock {
    fn lock(&self) -> &crate::Lock {
        self.inner.as_ref().expect("present until released")
    }

    /// See [`crate::Lock::fence`].
    pub fn fence(&self) -> u64 {
        self.lock().fence()
    }

    /// See [`crate::Lock::token`].
    pub fn token(&self) -> &Bytes {
        self.lock().token()
    }

    /// See [`crate::Lock::is_valid`].
    pub fn is_valid(&self) -> bool {
        self.lock().is_valid()
    }

    /// See [`crate::Lock::remaining`].
    pub fn remaining(&self) -> Duration {
        self.lock().remaining()
    }

    /// See [`crate::Lock::lost_reason`].
    pub fn lost_reason(&self) -> Option<String> {
        self.lock().lost_reason()
    }

    /// Blocks until the lock is lost or `timeout` passes; the reason if lost.
    pub fn wait_lost(&self, timeout: Duration) -> Option<String> {
        let mut signal = self.lock().lost_signal();
        self.runtime.block_on(async { tokio::time::timeout(timeout, signal.wait()).await.ok() })
    }

    /// See [`crate::Lock::release`].
    pub fn release(mut self) -> Result<bool> {
        let lock = self.inner.take().expect("present until released");
        self.runtime.block_on(lock.release())
    }
}

/// How long dropping the last handle on the runtime waits for the release to go out.
const RELEASE_ON_DROP_WAIT: Duration = Duration::from_secs(2);

impl Drop for Lock {
    fn drop(&mut self) {
        let Some(lock) = self.inner.take() else { return };
        // Dropping the async lock sends its release on the runtime in the background;
        // if this is the runtime's last handle (the client went first), the runtime
        // shuts down right after and would cancel that release: send it here, bounded.
        // (Not from inside another runtime, where blocking is not allowed.)
        let last = Arc::strong_count(&self.runtime) == 1;
        if last && tokio::runtime::Handle::try_current().is_err() {
            let _ = self.runtime.block_on(tokio::time::timeout(RELEASE_ON_DROP_WAIT, lock.release()));
        }
    }
}
