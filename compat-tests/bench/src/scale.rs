//! The scale workloads: (e) a full table of held locks, and (f) many connections of which
//! a few are busy. Each measures the target's memory and then runs the lock cycle on top.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{PutOptions, Txn, TxnOp};
use fencelock_client::resp::Value;

use crate::cell::{self, Cell};
use crate::conn::Conn;
use crate::targets::Target;
use crate::workloads::{Params, Style, Workload};

/// Tasks filling the table at once.
const FILLERS: usize = 16;
/// Requests per pipelined batch (RESP) or puts per txn (etcd allows 128).
const FILL_BATCH: usize = 100;

/// Raises this process's open-file limit to its hard limit (children inherit it), so that
/// 10,000 connections fit in the load generator and in each server (one end each).
/// Returns the new soft limit.
pub fn raise_open_files() -> u64 {
    // SAFETY: getrlimit / setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
        limit.rlim_cur
    }
}

/// (e) Holds `count` locks (one-hour leases), reports how much the node the clients use
/// grew per lock, then runs the lock cycle with `base.clients` clients against the full
/// table.
pub async fn million(
    t: &Target,
    base: Params,
    count: usize,
    warmup: Duration,
    measure: crate::cell::Window,
) -> Result<Cell, String> {
    let before = t.client_rss_kib();
    let filled = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let per = count.div_ceil(FILLERS);
    let fillers: Vec<_> = (0..FILLERS)
        .map(|f| {
            let (p, filled) = (base.clone(), filled.clone());
            let range = (f * per).min(count)..((f + 1) * per).min(count);
            tokio::spawn(async move { fill(&p, range, filled).await })
        })
        .collect();
    let mut last_report = Instant::now();
    while !fillers.iter().all(|f| f.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_report.elapsed() >= Duration::from_secs(1) {
            let n = filled.load(Ordering::Relaxed);
            eprintln!("    {:>5.1} s: {n:>9} locks held", began.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
    }
    for f in fillers {
        f.await.map_err(|e| e.to_string())??;
    }
    let fill_secs = began.elapsed().as_secs_f64();
    let after = t.client_rss_kib();
    let mut cell = cell::run(base, None, warmup, measure, t).await?;
    cell.workload = "million".into();
    // An allocator that keeps memory freed by an earlier workload (mimalloc does) fills
    // the table partly from it, so RSS may grow by less than the table, or shrink.
    let per_lock = match after.checked_sub(before) {
        Some(grown) if grown > 0 => format!("{:.0} B", (grown * 1024) as f64 / count as f64),
        _ => "no RSS growth (memory freed by earlier workloads reused)".to_string(),
    };
    cell.note = format!(
        "{count} held; filled at {:.0}/s; {per_lock} per lock on the node the clients use; peak RSS {:.0} MiB",
        count as f64 / fill_secs,
        cell.peak_rss_mib
    );
    Ok(cell)
}

async fn fill(p: &Params, range: std::ops::Range<usize>, filled: Arc<AtomicU64>) -> Result<(), String> {
    let names: Vec<String> = range.map(|i| format!("{}m:{i}", p.prefix)).collect();
    if p.style == Style::Etcd {
        let mut client = etcd_client::Client::connect(&p.etcd, None).await.map_err(|e| e.to_string())?;
        // One lease per filler: a lease per key would be a million more log entries.
        let lease = client.lease_grant(3600, None).await.map_err(|e| e.to_string())?.id();
        for chunk in names.chunks(FILL_BATCH) {
            let puts: Vec<TxnOp> =
                chunk.iter().map(|k| TxnOp::put(k.as_str(), "t", Some(PutOptions::new().with_lease(lease)))).collect();
            client.txn(Txn::new().and_then(puts)).await.map_err(|e| e.to_string())?;
            filled.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        return Ok(());
    }
    let mut conn = Conn::open(p.port).await.map_err(|e| e.to_string())?;
    let mut replies = Vec::new();
    for chunk in names.chunks(FILL_BATCH) {
        // A batch refused while a cluster elects a leader (TRYAGAIN) is sent again, as
        // a client would: IDEMPOTENT makes a repeated LOCK add no second hold, and a
        // repeated SET NX of our own value answers nil, which counts as held.
        let mut attempts = 0;
        loop {
            for name in chunk {
                match p.style {
                    Style::Native => conn.queue(&[b"LOCK", name.as_bytes(), b"3600000", b"TOKEN", b"t", b"IDEMPOTENT"]),
                    _ => conn.queue(&[b"SET", name.as_bytes(), b"t", b"NX", b"PX", b"3600000"]),
                }
            }
            conn.flush_and_read(chunk.len(), &mut replies).await.map_err(|e| e.to_string())?;
            let refused = replies.iter().find(|v| !matches!(v, Value::Array(_) | Value::Map(_) | Value::Simple(_)));
            match refused {
                None => break,
                Some(Value::Error(e)) if e.starts_with("TRYAGAIN") && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(Value::Nil) if attempts > 0 => break,
                Some(bad) => return Err(format!("filling the table: {bad:?}")),
            }
        }
        filled.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// (f) Opens `total - base.clients` idle connections, reports RSS per idle connection,
/// then runs the lock cycle on `base.clients` more (at `rate` cycles/s over all of them,
/// or flat out) while the idle ones stay open.
pub async fn connections(
    t: &Target,
    base: Params,
    total: usize,
    rate: Option<f64>,
    warmup: Duration,
    measure: crate::cell::Window,
) -> Result<Cell, String> {
    let idle_count = total.saturating_sub(base.clients);
    let before = t.client_rss_kib();
    let mut idle = Vec::with_capacity(idle_count);
    let began = Instant::now();
    let mut last_report = Instant::now();
    while idle.len() < idle_count {
        let mut conn = Conn::open(base.port).await.map_err(|e| format!("idle connection {}: {e}", idle.len()))?;
        match conn.call(&[b"PING"]).await {
            Ok(Value::Simple(_)) => idle.push(conn),
            other => return Err(format!("idle connection {} was refused: {other:?}", idle.len())),
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("    {:>5.1} s: {:>6} idle connections", began.elapsed().as_secs_f64(), idle.len());
            last_report = Instant::now();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = t.client_rss_kib();
    let mut cell = cell::run(base, rate, warmup, measure, t).await?;
    cell.workload = "connections".into();
    cell.note = format!(
        "{idle_count} idle + {} active; {:.1} KiB per idle connection",
        cell.clients,
        after.saturating_sub(before) as f64 / idle_count.max(1) as f64
    );
    drop(idle);
    Ok(cell)
}

/// The lock cycle in the target's main style, for the scale workloads.
pub fn lock_params(base: &Params, t: &Target, clients: usize) -> Params {
    Params { workload: Workload::Lock, style: Style::primary(t.kind), clients, pipeline: 1, ..base.clone() }
}
