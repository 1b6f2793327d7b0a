//! fencelock-bench: the same lock workloads against fencelock and Redis, from one load
//! generator, in one run. Every target is started by the tool on 127.0.0.1 (ephemeral
//! ports, temporary directories) and stopped at the end.
//!
//! ```sh
//! cargo build --release --bin fencelock
//! cargo run --release -p fencelock-bench -- --clients 1,16,64 --duration 10s
//! ```
//!
//! Workloads: `native` (LOCK random-name / UNLOCK), `redlock` (SET NX PX + EVALSHA
//! compare-and-delete, what redis-py and node-redlock send), `fence` (FENCE on held
//! locks). Targets: `fencelock` (1 node, durable), `redis` (persistence off),
//! `redis-aof` (appendonly yes, appendfsync always). Each cell: operations per second and
//! latency p50, p99, p99.9 from HDR histograms (µs), where one `native` or `redlock`
//! operation is a whole acquire + release cycle (two round trips). Progress lines go to
//! stderr, the markdown table to stdout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use fencelock_client::resp::{self, Value};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "fencelock vs Redis, same workloads, one run")]
struct Args {
    /// Client connection counts to run each workload at.
    #[arg(long, default_value = "1,16,64")]
    clients: String,
    /// Measured time per cell (e.g. 10s).
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Warm-up per cell, not measured.
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// Workloads: native, redlock, fence.
    #[arg(long, default_value = "redlock,native,fence")]
    workloads: String,
    /// Targets: fencelock, redis, redis-aof.
    #[arg(long, default_value = "fencelock,redis,redis-aof")]
    targets: String,
    /// The fencelock binary (default: next to this program, or $FENCELOCK_BIN).
    #[arg(long)]
    binary: Option<PathBuf>,
}

const RELEASE_SCRIPT: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

fn parse_secs(text: &str) -> Result<Duration, String> {
    let n: f64 = text.trim_end_matches('s').parse().map_err(|_| format!("bad duration {text:?} (use e.g. 10s)"))?;
    Duration::try_from_secs_f64(n).map_err(|e| e.to_string())
}

/// One RESP connection, one request at a time (closed loop).
struct Conn {
    stream: TcpStream,
    input: BytesMut,
    out: Vec<u8>,
}

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, input: BytesMut::with_capacity(4096), out: Vec::with_capacity(256) })
    }

    async fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Value> {
        self.out.clear();
        resp::encode(args, &mut self.out);
        self.stream.write_all(&self.out).await?;
        loop {
            match resp::parse(&mut self.input) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.0)),
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
        }
    }
}

/// A started target; killed on drop.
struct Target {
    name: String,
    port: u16,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

async fn wait_ready(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut c) = Conn::open(port).await {
            if let Ok(Value::Simple(_)) = c.call(&[b"SET", b"bench:ready", b"1"]).await {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the target on port {port} never accepted a write"))
}

async fn start(kind: &str, fencelock: &PathBuf) -> Result<Target, String> {
    let dir = tempfile::Builder::new().prefix("fencelock-bench-").tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let mut command = match kind {
        "fencelock" => {
            let mut c = tokio::process::Command::new(fencelock);
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--data-dir"]).arg(dir.path().join("data"));
            c
        }
        "redis" | "redis-aof" => {
            let mut c = tokio::process::Command::new("redis-server");
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]).arg("--dir").arg(dir.path());
            if kind == "redis-aof" {
                c.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                c.args(["--appendonly", "no"]);
            }
            c
        }
        other => return Err(format!("unknown target {other:?} (fencelock, redis, redis-aof)")),
    };
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
    let child = command.spawn().map_err(|e| format!("cannot start {kind}: {e}"))?;
    let target = Target { name: kind.to_string(), port, child, _dir: dir };
    wait_ready(port).await?;
    Ok(target)
}

/// One client's loop: runs the workload until `stop`, recording each operation's
/// latency (µs) once `measuring` is set.
async fn client(
    port: u16,
    workload: String,
    id: usize,
    sha: String,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> Result<Histogram<u64>, String> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut c = Conn::open(port).await.map_err(|e| e.to_string())?;
    let held = format!("bench:held:{id}");
    if workload == "fence" {
        c.call(&[b"LOCK", held.as_bytes(), b"600000", b"TOKEN", b"t"]).await.map_err(|e| e.to_string())?;
    }
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("bench:{id}:{}", n % 1024);
        let token = format!("{id}-{n}");
        let started = Instant::now();
        let ok = match workload.as_str() {
            "redlock" => {
                let a = c.call(&[b"SET", name.as_bytes(), token.as_bytes(), b"NX", b"PX", b"30000"]).await;
                let b = c.call(&[b"EVALSHA", sha.as_bytes(), b"1", name.as_bytes(), token.as_bytes()]).await;
                matches!((a, b), (Ok(Value::Simple(_)), Ok(Value::Int(1))))
            }
            "native" => {
                let a = c.call(&[b"LOCK", name.as_bytes(), b"30000", b"TOKEN", token.as_bytes()]).await;
                let b = c.call(&[b"UNLOCK", name.as_bytes(), token.as_bytes()]).await;
                matches!((a, b), (Ok(Value::Array(_) | Value::Map(_)), Ok(Value::Int(0))))
            }
            "fence" => matches!(c.call(&[b"FENCE", held.as_bytes()]).await, Ok(Value::Int(_))),
            other => return Err(format!("unknown workload {other:?}")),
        };
        if !ok {
            return Err(format!("{workload}: an operation failed"));
        }
        if measuring.load(Ordering::Relaxed) {
            let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
            ops.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(hist)
}

struct Cell {
    target: String,
    workload: String,
    clients: usize,
    ops_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

async fn run_cell(
    t: &Target,
    workload: &str,
    clients: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Cell, String> {
    let mut c = Conn::open(t.port).await.map_err(|e| e.to_string())?;
    let sha = match c.call(&[b"SCRIPT", b"LOAD", RELEASE_SCRIPT.as_bytes()]).await {
        Ok(Value::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => return Err(format!("SCRIPT LOAD: {other:?}")),
    };
    let (measuring, stop, ops) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(client(
                t.port,
                workload.to_string(),
                i,
                sha.clone(),
                measuring.clone(),
                stop.clone(),
                ops.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    let mut last = 0;
    while began.elapsed() < measure {
        tokio::time::sleep(Duration::from_secs(1).min(measure.saturating_sub(began.elapsed()))).await;
        let now = ops.load(Ordering::Relaxed);
        eprintln!("    {:>5.1} s: {:>9.0} ops/s", began.elapsed().as_secs_f64(), (now - last) as f64);
        last = now;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for task in tasks {
        let hist = task.await.map_err(|e| e.to_string())??;
        total.add(&hist).map_err(|e| e.to_string())?;
    }
    Ok(Cell {
        target: t.name.clone(),
        workload: workload.to_string(),
        clients,
        ops_per_s: total.len() as f64 / elapsed.as_secs_f64(),
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
        p999_us: total.value_at_quantile(0.999),
    })
}

fn binary(args: &Args) -> Result<PathBuf, String> {
    let candidate = args
        .binary
        .clone()
        .or_else(|| std::env::var_os("FENCELOCK_BIN").map(PathBuf::from))
        .or_else(|| std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("fencelock"))));
    match candidate {
        Some(path) if path.exists() => Ok(path),
        _ => Err("no fencelock binary: run `cargo build --release --bin fencelock` first, or pass --binary".into()),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("fencelock-bench: {e}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (warmup, measure) = (parse_secs(&args.warmup)?, parse_secs(&args.duration)?);
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|c| c.trim().parse().map_err(|_| format!("bad client count {c:?}")))
        .collect::<Result<_, _>>()?;
    let workloads: Vec<&str> = args.workloads.split(',').map(str::trim).collect();
    let fencelock = binary(&args)?;
    let mut cells = Vec::new();
    for target in args.targets.split(',').map(str::trim) {
        eprintln!("starting {target} ...");
        let t = start(target, &fencelock).await?;
        for workload in &workloads {
            // LOCK / UNLOCK / FENCE are fencelock's own commands.
            if matches!(*workload, "fence" | "native") && target != "fencelock" {
                continue;
            }
            for &n in &clients {
                eprintln!("  {target} / {workload} / {n} clients");
                cells.push(run_cell(&t, workload, n, warmup, measure).await?);
            }
        }
    }
    println!("| target | workload | clients | ops/s | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|---|---|");
    for c in &cells {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} |",
            c.target, c.workload, c.clients, c.ops_per_s, c.p50_us, c.p99_us, c.p999_us
        );
    }
    Ok(())
}
