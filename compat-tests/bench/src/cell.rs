//! One measured cell: a target, a workload in one style, a client count, at full speed
//! or at a fixed offered rate. Clients are set up first, then run a warm-up, then the
//! measured window, recording each operation's latency in an HDR histogram.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::targets::Target;
use crate::workloads::{Client, Params};

/// A cell's result (one row of the table).
#[derive(Debug, Clone)]
pub struct Cell {
    pub target: &'static str,
    pub workload: String,
    pub style: &'static str,
    pub clients: usize,
    pub pipeline: usize,
    /// "peak", or the offered rate when the cell was paced.
    pub load: String,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// The largest resident set of the target's processes at the end, in MiB.
    pub rss_mib: f64,
    /// The largest peak resident set (VmHWM, over each process's life so far) of the
    /// target's processes at the end, in MiB: memory goals are judged on the peak.
    pub peak_rss_mib: f64,
    /// CPU time the target used per operation in the measured window (all its
    /// processes), µs: steadier than ops/s on a shared 2-core machine.
    pub cpu_us_per_op: f64,
    /// CPU time this load generator used per operation in the same window, µs: on a
    /// 2-core machine the client competes with the server for the same cores.
    pub client_cpu_us_per_op: f64,
    pub note: String,
}

impl Cell {
    /// The row for a cell that could not be measured.
    pub fn failed(target: &'static str, p: &Params, error: String) -> Cell {
        Cell::failed_row(target, p.workload.name(), p.style.name(), p.clients, p.pipeline, error)
    }

    /// The one row for a target that could not be started (or set up), so none of its
    /// cells ran.
    pub fn failed_start(target: &'static str, error: String) -> Cell {
        Cell::failed_row(target, "start", "-", 0, 0, error)
    }

    fn failed_row(
        target: &'static str,
        workload: &str,
        style: &'static str,
        clients: usize,
        pipeline: usize,
        error: String,
    ) -> Cell {
        Cell {
            target,
            workload: workload.to_string(),
            style,
            clients,
            pipeline,
            load: "-".into(),
            ops_per_s: 0.0,
            p50_us: 0,
            p99_us: 0,
            p999_us: 0,
            rss_mib: 0.0,
            peak_rss_mib: 0.0,
            cpu_us_per_op: 0.0,
            client_cpu_us_per_op: 0.0,
            note: format!("FAILED: {}", error.replace('|', "/")),
        }
    }

    /// Whether this is the row of a cell (or target) that could not be measured: its
    /// figures are zeros, not measurements.
    pub fn is_failed(&self) -> bool {
        self.note.starts_with("FAILED")
    }

    /// The same row under another workload name (the scale workloads).
    pub fn named(mut self, workload: &str) -> Cell {
        self.workload = workload.to_string();
        self
    }
}

/// How much of a cell is measured: `--duration` or `--ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A fixed time.
    Time(Duration),
    /// A fixed number of operations over all clients (a pipelined batch that crosses the
    /// count is recorded whole), for up to `OPS_WINDOW_MAX`.
    Ops(u64),
}

/// How long a `Window::Ops` cell may take before it fails: a target that stalls must
/// not hold the run forever.
pub const OPS_WINDOW_MAX: Duration = Duration::from_secs(600);

struct Shared {
    ready: AtomicUsize,
    go: AtomicBool,
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Operations done in the measured window (those past `limit` are not recorded).
    ops: AtomicU64,
    /// `Window::Ops`: how many operations the window holds.
    limit: Option<u64>,
    /// When the operation that filled `limit` finished.
    filled_at: std::sync::OnceLock<Instant>,
    /// The slowest operation since the last progress line, µs.
    max_us: AtomicU64,
    /// Operations slower than `SLOW_US` since the last progress line.
    slow: AtomicU64,
}

/// An operation slower than this is counted on the progress line: the goals' p99 bound.
const SLOW_US: u64 = 5_000;

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// The time of day in UTC (`HH:MM:SS.mmm`), as the servers' logs print it.
fn utc_time_of_day() -> String {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ms = since_epoch.as_millis() % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// The resolution of tokio's timer: a sleep ends on the first 1 ms tick at or after
/// its deadline.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Where a paced operation due at `due` starts counting, given whether its client was
/// `idle` at `due` and when the request actually left (`sent`).
///
/// An idle client sleeps until the schedule, and tokio's timer fires on the next 1 ms
/// tick, so up to `TIMER_TICK` of its lateness is this generator's own delay, not the
/// target's: it counts from when the request left. Any later is counted (a generator
/// slowed by the target's load is part of the load). A client behind schedule because
/// its last operation ran long counts from the schedule (no coordinated omission).
fn counted_from(due: Instant, idle: bool, sent: Instant) -> Instant {
    if idle {
        sent.min(due + TIMER_TICK)
    } else {
        due
    }
}

/// What a finished step of `done` operations does in the measured window, given the
/// operations counted `before` it.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// Recorded; the window goes on.
    Record,
    /// Recorded, and it completes an op-count window: its end is the window's end.
    Fills,
    /// Not recorded: the op-count window was full before it.
    Full,
}

fn claim(limit: Option<u64>, before: u64, done: u64) -> Claim {
    match limit {
        Some(limit) if before >= limit => Claim::Full,
        Some(limit) if before + done >= limit => Claim::Fills,
        _ => Claim::Record,
    }
}

/// Runs one client until told to stop. With `interval`, operations are scheduled at
/// that spacing and latency counts from the scheduled start (no coordinated omission),
/// less the timer's rounding when the client was idle at the schedule.
async fn client_task(
    p: Arc<Params>,
    id: usize,
    interval: Option<Duration>,
    s: Arc<Shared>,
) -> Result<Histogram<u64>, String> {
    let mut hist = histogram();
    let mut client = Client::open(&p, id).await;
    s.ready.fetch_add(1, Ordering::SeqCst);
    let Ok(ref mut c) = client else { return Err(client.err().unwrap_or_default()) };
    while !s.go.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Spread paced clients over one interval so they do not fire together.
    let mut next = Instant::now() + interval.map(|i| i.mul_f64(id as f64 / p.clients as f64)).unwrap_or_default();
    let mut n = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        let started = match interval {
            Some(i) => {
                let due = next;
                next += i;
                let idle = Instant::now() < due;
                if idle {
                    tokio::time::sleep_until(due.into()).await;
                }
                counted_from(due, idle, Instant::now())
            }
            None => Instant::now(),
        };
        let done = c.step(&p, n).await?;
        n += 1;
        if s.measuring.load(Ordering::Relaxed) {
            let took_us = started.elapsed().as_micros().max(1) as u64;
            let before = s.ops.fetch_add(done, Ordering::Relaxed);
            match claim(s.limit, before, done) {
                Claim::Full => continue,
                Claim::Fills => {
                    let _ = s.filled_at.set(Instant::now());
                }
                Claim::Record => {}
            }
            let _ = hist.record_n(took_us, done);
            s.max_us.fetch_max(took_us, Ordering::Relaxed);
            if took_us > SLOW_US {
                s.slow.fetch_add(done, Ordering::Relaxed);
            }
        }
    }
    if let Ok(c) = client {
        c.close(&p).await;
    }
    Ok(hist)
}

/// Runs a cell. `rate` (operations per second over all clients) paces it; `None` runs
/// every client flat out.
pub async fn run(p: Params, rate: Option<f64>, warmup: Duration, window: Window, t: &Target) -> Result<Cell, String> {
    let p = Arc::new(p);
    let s = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        limit: match window {
            Window::Ops(n) => Some(n.max(1)),
            Window::Time(_) => None,
        },
        filled_at: std::sync::OnceLock::new(),
        max_us: AtomicU64::new(0),
        slow: AtomicU64::new(0),
    });
    let interval = rate.map(|r| Duration::from_secs_f64(p.clients as f64 / r));
    let tasks: Vec<_> =
        (0..p.clients).map(|id| tokio::spawn(client_task(p.clone(), id, interval, s.clone()))).collect();
    let setup = Instant::now();
    while s.ready.load(Ordering::SeqCst) < p.clients {
        if setup.elapsed() > Duration::from_secs(600) {
            // The clients that did set up wait for `go` forever, and the rest may hang
            // in setup: left alone they would hold their connections (and locks) and
            // load the target through every later cell.
            for task in &tasks {
                task.abort();
            }
            return Err("clients took over 10 minutes to set up".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if setup.elapsed() > Duration::from_secs(2) {
        eprintln!("    set up in {:.1} s", setup.elapsed().as_secs_f64());
    }
    s.go.store(true, Ordering::SeqCst);
    tokio::time::sleep(warmup).await;
    s.measuring.store(true, Ordering::SeqCst);
    let cpu_before = t.cpu_us();
    let client_cpu_before = crate::targets::cpu_us_of(std::process::id());
    let began = Instant::now();
    let measure = match window {
        Window::Time(d) => d,
        Window::Ops(_) => OPS_WINDOW_MAX,
    };
    let window_open = || began.elapsed() < measure && s.filled_at.get().is_none();
    let (mut last, mut last_at) = (0, began);
    let mut next_line = began + Duration::from_secs(1);
    while window_open() {
        // An op-count window is checked every 10 ms; progress lines stay one a second.
        let step = if s.limit.is_some() { Duration::from_millis(10) } else { Duration::from_secs(1) };
        tokio::time::sleep(step.min(measure.saturating_sub(began.elapsed()))).await;
        if Instant::now() < next_line && window_open() {
            continue;
        }
        next_line += Duration::from_secs(1);
        let now = s.ops.load(Ordering::Relaxed);
        // The slowest operation and the count over 5 ms, per line: a tail shows which
        // second it came in, to line it up with the servers' logs.
        let (max_us, slow) = (s.max_us.swap(0, Ordering::Relaxed), s.slow.swap(0, Ordering::Relaxed));
        eprintln!(
            "    {:>5.1} s ({} UTC): {:>9.0} ops/s, slowest {:>8.1} ms, {slow} over {} ms",
            began.elapsed().as_secs_f64(),
            utc_time_of_day(),
            (now - last) as f64 / last_at.elapsed().as_secs_f64().max(1e-3),
            max_us as f64 / 1000.0,
            SLOW_US / 1000
        );
        (last, last_at) = (now, Instant::now());
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    s.measuring.store(false, Ordering::SeqCst);
    let elapsed = s.filled_at.get().map_or_else(|| began.elapsed(), |at| at.duration_since(began));
    let cpu_us = t.cpu_us().saturating_sub(cpu_before);
    let client_cpu_us = crate::targets::cpu_us_of(std::process::id()).saturating_sub(client_cpu_before);
    let rss_mib = t.rss_kib().into_iter().max().unwrap_or(0) as f64 / 1024.0;
    let peak_rss_mib = t.peak_rss_kib().into_iter().max().unwrap_or(0) as f64 / 1024.0;
    s.stop.store(true, Ordering::SeqCst);
    let mut total = histogram();
    let mut failure = None;
    for task in tasks {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(h) => total.add(&h).map_err(|e| e.to_string())?,
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        return Err(format!("{} / {} / {}: {e}", t.kind.name(), p.workload.name(), p.style.name()));
    }
    if let (Some(limit), None) = (s.limit, s.filled_at.get()) {
        return Err(format!(
            "{} of the {limit} operations asked for (--ops) in the {} s limit",
            total.len(),
            OPS_WINDOW_MAX.as_secs()
        ));
    }
    Ok(Cell {
        target: t.kind.name(),
        workload: p.workload.name().to_string(),
        style: p.style.name(),
        clients: p.clients,
        pipeline: p.pipeline,
        load: rate.map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "peak".into()),
        ops_per_s: total.len() as f64 / elapsed.as_secs_f64(),
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
        p999_us: total.value_at_quantile(0.999),
        rss_mib,
        peak_rss_mib,
        cpu_us_per_op: cpu_us as f64 / total.len().max(1) as f64,
        client_cpu_us_per_op: client_cpu_us as f64 / total.len().max(1) as f64,
        note: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_latency_counts_from_the_schedule_except_the_timers_rounding() {
        let due = Instant::now();
        let us = Duration::from_micros;
        // Idle, the timer fired 300 µs late: the request left then, and counts from then.
        assert_eq!(counted_from(due, true, due + us(300)), due + us(300));
        // Idle, but the generator woke 3 ms late: only the tick is excused.
        assert_eq!(counted_from(due, true, due + us(3_000)), due + TIMER_TICK);
        // Behind schedule (the last operation ran long): from the schedule.
        assert_eq!(counted_from(due, false, due + us(3_000)), due);
        assert_eq!(counted_from(due, false, due + us(300)), due);
    }

    #[test]
    fn an_op_count_window_records_up_to_its_count_and_ends_on_the_step_that_fills_it() {
        assert_eq!(claim(None, 1_000_000, 1), Claim::Record, "a timed window takes every step");
        assert_eq!(claim(Some(100), 0, 1), Claim::Record);
        assert_eq!(claim(Some(100), 98, 1), Claim::Record);
        assert_eq!(claim(Some(100), 99, 1), Claim::Fills, "the 100th operation ends it");
        assert_eq!(claim(Some(100), 100, 1), Claim::Full, "the 101st is not recorded");
        // A pipelined batch that crosses the count is recorded whole and ends the window.
        assert_eq!(claim(Some(100), 96, 8), Claim::Fills);
        assert_eq!(claim(Some(100), 104, 8), Claim::Full);
    }
}
