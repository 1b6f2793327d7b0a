//! fencelock-bench: the same lock workloads against fencelock, Redis and etcd, from one
//! load generator, in one run. Every target is started by the tool on 127.0.0.1 (ports
//! it picks, temporary directories) and stopped at the end.
//!
//! ```sh
//! cargo build --release --bin fencelock
//! cargo run --release -p fencelock-bench -- --duration 5s
//! ```
//!
//! Progress lines go to stderr; the markdown table and the goals to stdout, and both
//! plus a PNG chart into `--out`. See compat-tests/bench/README.md.

mod cell;
mod conn;
mod report;
mod scale;
mod targets;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fencelock_client::resp::Value;

use crate::targets::Kind;
use crate::workloads::{Params, Style, Workload, EXTEND_SCRIPT, RELEASE_SCRIPT};

#[derive(Parser, Debug)]
#[command(about = "fencelock vs Redis vs etcd: the same lock workloads, one run")]
struct Args {
    /// Client counts for the lock cycle (workload `lock`).
    #[arg(long, default_value = "1,16,64,256")]
    clients: String,
    /// Measured time per cell (e.g. 10s).
    #[arg(long, default_value = "5s")]
    duration: String,
    /// Measure each cell for this many operations instead of for --duration (0: use
    /// --duration). A cell that does not reach it in 10 minutes fails.
    #[arg(long, default_value_t = 0)]
    ops: u64,
    /// Warm-up per cell, not measured.
    #[arg(long, default_value = "1s")]
    warmup: String,
    /// Workloads: lock, contended, renew, fence, connections, million.
    #[arg(long, default_value = "lock,contended,renew,fence,connections,million")]
    workloads: String,
    /// Targets: fencelock, fencelock-3, redis, redis-aof, etcd-3.
    #[arg(long, default_value = "fencelock,fencelock-3,redis,redis-aof,etcd-3")]
    targets: String,
    /// Requests per pipelined batch for lock, renew and fence over RESP.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// After the lock cycle at every client count, run it again at this many clients (one
    /// of --clients) paced at half the highest ops/s the target measured in that style
    /// at any client count (0: skip).
    #[arg(long, default_value_t = 64)]
    half_load_at: usize,
    /// Pace that cell at this many operations per second instead of half the best
    /// measured (0: half the best). A fixed rate makes runs of two binaries comparable.
    #[arg(long, default_value_t = 0.0)]
    paced_rate: f64,
    /// Clients for contended, renew and fence.
    #[arg(long, default_value_t = 64)]
    clients_other: usize,
    /// Lock names the contended workload shares.
    #[arg(long, default_value_t = 8)]
    contended_names: usize,
    /// How often a Redlock client retries a held lock, ms (Redis cannot block).
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Locks held by the renew workload, over all clients.
    #[arg(long, default_value_t = 10_000)]
    renew_locks: usize,
    /// Locks held for the `million` workload.
    #[arg(long, default_value_t = 1_000_000)]
    million: usize,
    /// Connections held open in the `connections` workload ...
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// ... of which this many run the lock cycle (also the client count with the full table).
    #[arg(long, default_value_t = 1_000)]
    active: usize,
    /// Lock cycles per second over all the active connections (0: flat out). Flat out,
    /// 1,000 closed-loop clients only measure queueing (p99 ≈ 1,000 / throughput).
    #[arg(long, default_value_t = 2_000.0)]
    active_rate: f64,
    /// Clients running the lock cycle against the full table of `million`.
    #[arg(long, default_value_t = 16)]
    million_clients: usize,
    /// Where the table (results.md) and the chart (lock.png) go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The fencelock binary (default: next to this program, or $FENCELOCK_BIN).
    #[arg(long)]
    binary: Option<PathBuf>,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let n: f64 = text.trim_end_matches('s').parse().map_err(|_| format!("bad duration {text:?} (use e.g. 10s)"))?;
    Duration::try_from_secs_f64(n).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // On SIGINT / SIGTERM the run is dropped before the exit, and with it the running
    // target, whose drop kills its servers and removes its temporary directory
    // (`process::exit` runs no destructors, and the default action would run none).
    let result = tokio::select! {
        result = run(args) => result,
        (name, code) = stop_signal() => {
            eprintln!("fencelock-bench: stopped by {name}; the running target's servers were killed");
            std::process::exit(code);
        }
    };
    if let Err(e) = result {
        eprintln!("fencelock-bench: {e}");
        std::process::exit(2);
    }
}

/// Waits for SIGINT or SIGTERM; returns its name and the exit status it calls for
/// (128 + the signal's number).
async fn stop_signal() -> (&'static str, i32) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        // The servers still die with this process (PR_SET_PDEATHSIG); their temporary
        // directories would stay.
        eprintln!("note: cannot catch SIGINT / SIGTERM; an interrupted run leaves its temporary directories");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => ("SIGINT", 128 + libc::SIGINT),
        _ = terminate.recv() => ("SIGTERM", 128 + libc::SIGTERM),
    }
}

async fn load_script(port: u16, script: &str) -> Result<String, String> {
    let mut c = conn::Conn::open(port).await.map_err(|e| e.to_string())?;
    match c.call(&[b"SCRIPT", b"LOAD", script.as_bytes()]).await {
        Ok(Value::Bulk(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => Err(format!("SCRIPT LOAD: {other:?}")),
    }
}

/// A failed cell becomes a row that says why (and the run goes on with the next one),
/// so one target's trouble does not throw away the rest of a long run.
fn settle(result: Result<cell::Cell, String>, p: &Params, kind: Kind, failures: &mut usize) -> cell::Cell {
    result.unwrap_or_else(|e| {
        eprintln!("    FAILED: {e}");
        *failures += 1;
        cell::Cell::failed(kind.name(), p, e)
    })
}

/// A rate flag's value: operations per second, 0 for the flag's default behaviour.
/// A negative or non-finite rate would silently mean "not set" below, so it is refused.
fn check_rate(flag: &str, rate: f64) -> Result<f64, String> {
    if rate.is_finite() && rate >= 0.0 {
        Ok(rate)
    } else {
        Err(format!("bad {flag} {rate} (operations per second, 0 or more)"))
    }
}

async fn run(args: Args) -> Result<(), String> {
    let warmup = parse_secs(&args.warmup)?;
    let measure = match args.ops {
        0 => cell::Window::Time(parse_secs(&args.duration)?),
        n => cell::Window::Ops(n),
    };
    check_rate("--paced-rate", args.paced_rate)?;
    check_rate("--active-rate", args.active_rate)?;
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|c| c.trim().parse().map_err(|_| format!("bad client count {c:?}")))
        .collect::<Result<_, _>>()?;
    let names: Vec<&str> = args.workloads.split(',').map(str::trim).collect();
    for name in &names {
        if Workload::parse(name).is_none() && !matches!(*name, "connections" | "million") {
            return Err(format!("unknown workload {name:?} (lock, contended, renew, fence, connections, million)"));
        }
    }
    let kinds: Vec<Kind> = args.targets.split(',').map(|t| Kind::parse(t.trim())).collect::<Result<_, _>>()?;
    let fencelock = targets::fencelock_binary(args.binary.clone())?;
    let open_files = scale::raise_open_files();
    // The load generator and each server hold one end of every connection, each in its
    // own process (and file table), plus a few dozen files of their own.
    let per_process = args.connections + 100;
    if names.contains(&"connections") && (open_files as usize) < per_process {
        eprintln!("note: the open-file limit is {open_files}; `connections` needs about {per_process} per process");
    }
    let data_fs = targets::data_filesystem();
    eprintln!("{data_fs}");
    let mut cells = Vec::new();
    let mut failures = 0;
    let mut cell_no = 0;
    for kind in kinds {
        eprintln!("starting {} ...", kind.name());
        // A target that does not start becomes a FAILED row and the run goes on with the
        // next one (a failed script load drops the started target, killing it).
        let started = async {
            let t = targets::start(kind, &fencelock).await?;
            let shas = if kind.is_resp() {
                (load_script(t.port, RELEASE_SCRIPT).await?, load_script(t.port, EXTEND_SCRIPT).await?)
            } else {
                Default::default()
            };
            Ok::<_, String>((t, shas))
        }
        .await;
        let (t, (release_sha, extend_sha)) = match started {
            Ok(started) => started,
            Err(e) => {
                eprintln!("    FAILED: {e}");
                failures += 1;
                cells.push(cell::Cell::failed_start(kind.name(), e));
                continue;
            }
        };
        let mut params = |workload, style, clients| {
            cell_no += 1;
            Params {
                workload,
                style,
                clients,
                // The contended workload always sends one request at a time.
                pipeline: if style == Style::Etcd || workload == Workload::Contended { 1 } else { args.pipeline },
                renew_locks: args.renew_locks,
                contended_names: args.contended_names,
                poll: Duration::from_millis(args.poll_ms),
                port: t.port,
                etcd: t.etcd_endpoints.clone(),
                release_sha: release_sha.clone(),
                extend_sha: extend_sha.clone(),
                prefix: format!("bench/{cell_no}/"),
            }
        };
        for workload in names.iter().filter_map(|n| Workload::parse(n)) {
            for style in Style::for_target(kind, workload) {
                let counts = if workload == Workload::Lock { clients.clone() } else { vec![args.clients_other] };
                // The highest closed-loop ops/s and its client count: the one reference
                // "half load" means for this target and style, whatever the count the
                // paced cell runs at.
                let mut best: Option<(f64, usize)> = None;
                for &n in &counts {
                    eprintln!("  {} / {} {} / {n} clients", kind.name(), workload.name(), style.name());
                    let p = params(workload, style, n);
                    let cell = settle(cell::run(p.clone(), None, warmup, measure, &t).await, &p, kind, &mut failures);
                    if !cell.is_failed() && best.is_none_or(|(ops_per_s, _)| cell.ops_per_s > ops_per_s) {
                        best = Some((cell.ops_per_s, n));
                    }
                    cells.push(cell);
                }
                let n = args.half_load_at;
                if workload == Workload::Lock && n > 0 && counts.contains(&n) {
                    let rate = match best {
                        _ if args.paced_rate > 0.0 => args.paced_rate,
                        Some((ops_per_s, _)) => ops_per_s / 2.0,
                        None => 0.0,
                    };
                    let basis = match best {
                        Some((ops_per_s, at)) => format!(
                            "{}: {:.0}% of the best closed-loop {ops_per_s:.0}/s of {} {} (at {at} clients)",
                            if args.paced_rate > 0.0 { "--paced-rate" } else { "half of best" },
                            100.0 * rate / ops_per_s,
                            kind.name(),
                            style.name()
                        ),
                        None => "--paced-rate; no closed-loop cell of this style measured".to_string(),
                    };
                    if rate > 0.0 {
                        eprintln!("  {} / lock {} / {n} clients at {rate:.0}/s ({basis})", kind.name(), style.name());
                        let paced = params(workload, style, n);
                        let run = cell::run(paced.clone(), Some(rate), warmup, measure, &t).await;
                        let mut cell = settle(run, &paced, kind, &mut failures);
                        if !cell.is_failed() {
                            cell.note = basis;
                        }
                        cells.push(cell);
                    } else {
                        eprintln!(
                            "  {} / lock {} / {n} clients paced: skipped (no closed-loop cell measured a rate to halve)",
                            kind.name(),
                            style.name()
                        );
                    }
                }
            }
        }
        if names.contains(&"connections") {
            if kind.is_resp() {
                eprintln!("  {} / {} connections, {} active", kind.name(), args.connections, args.active);
                let base = scale::lock_params(&params(Workload::Lock, Style::primary(kind), 0), &t, args.active);
                let run = scale::connections(
                    &t,
                    base.clone(),
                    args.connections,
                    (args.active_rate > 0.0).then_some(args.active_rate),
                    warmup,
                    measure,
                )
                .await;
                cells.push(settle(run, &base, kind, &mut failures).named("connections"));
            } else {
                eprintln!("  {}: connections skipped (gRPC multiplexes one connection; 10,000 etcd clients are not how etcd is used)", kind.name());
            }
        }
        if names.contains(&"million") {
            eprintln!("  {} / {} held locks", kind.name(), args.million);
            let base = scale::lock_params(&params(Workload::Lock, Style::primary(kind), 0), &t, args.million_clients);
            let run = scale::million(&t, base.clone(), args.million, warmup, measure).await;
            cells.push(settle(run, &base, kind, &mut failures).named("million"));
        }
        drop(t);
    }
    let table = report::table(&cells);
    let goals = report::goals(&cells, args.half_load_at == 64 && clients.contains(&64));
    println!("{data_fs}\n\n{table}\n{goals}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    std::fs::write(args.out.join("results.md"), format!("{data_fs}\n\n{table}\n{goals}")).map_err(|e| e.to_string())?;
    report::chart(&cells, &args.out.join("lock.png"))?;
    eprintln!("wrote {} and {}", args.out.join("results.md").display(), args.out.join("lock.png").display());
    if failures > 0 {
        return Err(format!("{failures} cell(s) failed; see the table's notes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_rate;

    #[test]
    fn rates_below_zero_or_not_finite_are_refused() {
        assert_eq!(check_rate("--paced-rate", 0.0), Ok(0.0));
        assert_eq!(check_rate("--paced-rate", 8_000.0), Ok(8_000.0));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let refused = check_rate("--paced-rate", bad).expect_err("refused");
            assert!(refused.starts_with("bad --paced-rate"), "{refused}");
        }
    }
}
