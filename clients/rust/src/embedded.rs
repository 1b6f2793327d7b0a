//! An in-process single-node fencelock on an ephemeral port with a temporary data
//! directory, for users' tests. It runs on a thread and runtime of its own, so it works
//! from sync and async code alike, and stops (data removed) when dropped.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use clap::Parser;
use fencelock_server::config::{Flags, Settings};

use crate::error::{Error, Result};

/// A running embedded server.
pub struct EmbeddedServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    // Dropped after the thread has stopped.
    _dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
}

impl EmbeddedServer {
    /// Starts a single node on 127.0.0.1, an ephemeral port, data in a new temp dir.
    pub fn start() -> Result<EmbeddedServer> {
        let dir = tempfile::Builder::new()
            .prefix("fencelock-embedded-")
            .tempdir()
            .map_err(|e| Error::Invalid(format!("cannot create a temp dir: {e}")))?;
        let path = dir.path().to_path_buf();
        let mut server = EmbeddedServer::start_in(path)?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts a single node keeping its data in `data_dir` (kept after it stops).
    pub fn start_in(data_dir: PathBuf) -> Result<EmbeddedServer> {
        let flags = Flags::try_parse_from([
            "fencelock".as_ref(),
            "--port".as_ref(),
            "0".as_ref(),
            "--bind".as_ref(),
            "127.0.0.1".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ])
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let settings = Settings::resolve(flags).map_err(Error::Invalid)?;
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<u16, String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fencelock-embedded".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match fencelock_server::launch::launch(&settings).await {
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                        Ok(launched) => {
                            let _ = ready_tx.send(Ok(launched.port));
                            let _ = stop_rx.await;
                            launched.shut_down().await;
                        }
                    }
                });
            })
            .map_err(|e| Error::Invalid(format!("cannot start a thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(port)) => {
                Ok(EmbeddedServer { port, stop: Some(stop_tx), thread: Some(thread), _dir: None, data_dir })
            }
            Ok(Err(e)) => Err(Error::Unavailable(format!("embedded server did not start: {e}"))),
            Err(_) => Err(Error::Unavailable("embedded server thread ended before it was ready".into())),
        }
    }

    /// Its client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, for [`crate::Options::new`].
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where it keeps its data.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Stops it and waits until it has.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}
