//! `fencelock-chaos`: attack a real fencelock cluster and check the history.
//!
//! ```text
//! cargo build --release --bin fencelock
//! cargo run --release -p fencelock-chaos -- --nodes 5 --time 120s --faults kill,pause,partition,clock,restart --seed 7
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fencelock_chaos::check::{self, Verdict};
use fencelock_chaos::cluster::Cluster;
use fencelock_chaos::proxy::LinkState;
use fencelock_chaos::resp::{Conn, Reply};
use fencelock_chaos::workload::{self, Kind, Rng, Shared};

/// Fault-injection correctness harness for fencelock.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Cluster size.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// How long to run the workload under faults (`90s`, `10m`, or seconds).
    #[arg(long, default_value = "60s")]
    time: String,
    /// Faults to inject: kill, pause, partition, clock, restart, delay.
    #[arg(long, default_value = "kill,pause,partition,clock,restart")]
    faults: String,
    /// Seed for every random choice (workers and nemesis).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The fencelock binary [default: `fencelock` next to this program, or $FENCELOCK_BIN].
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Clock drift the clients' validity windows allow for, in percent.
    #[arg(long, default_value_t = 1.0)]
    drift_percent: f64,
    /// The clock fault's rate spread, in percent (rates in 1 ± spread/2). Within the
    /// drift allowance nothing may break; far beyond it, leases end early in real time
    /// and the checkers must catch it.
    #[arg(long, default_value_t = 0.5)]
    clock_spread_percent: f64,
    /// Keep the data directories and logs (printed at the end).
    #[arg(long)]
    keep: bool,
}

fn parse_time(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        text.trim().split_at(text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(text.trim().len()));
    let n: u64 = number.parse().map_err(|_| format!("bad --time '{text}'"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad --time unit in '{text}' (use s or m)")),
    }
}

fn binary(args: &Args) -> Result<PathBuf, String> {
    let candidate = args
        .binary
        .clone()
        .or_else(|| std::env::var_os("FENCELOCK_BIN").map(PathBuf::from))
        .or_else(|| std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("fencelock"))));
    match candidate {
        Some(path) if path.exists() => Ok(path),
        _ => Err("no fencelock binary: run `cargo build --release --bin fencelock` first, or pass --binary".into()),
    }
}

/// States the linearizability search may explore per key before it says "unknown".
const LINEARIZABILITY_BUDGET: usize = 3_000_000;

const FAULTS: [&str; 7] = ["kill", "pause", "partition", "clock", "restart", "delay", "reorder"];

/// One fault: applied, held, healed. Returns a description. `target` is the node to
/// hit (the leader, half the time) or None for a random one; `round` counts the earlier
/// faults of this kind, and picks among a fault's variants in turn so that a run of a
/// few of them covers every variant.
async fn inject(
    cluster: &mut Cluster,
    fault: &str,
    target: Option<usize>,
    round: usize,
    rng: &mut Rng,
    spread: f64,
) -> std::io::Result<String> {
    let n = cluster.len();
    let random_node = 1 + rng.below(n as u64) as usize;
    let node = target.unwrap_or(random_node);
    let hold = Duration::from_millis(1_000 + rng.below(3_000));
    let who =
        |node: usize| if Some(node) == target { format!("node {node} (the leader)") } else { format!("node {node}") };
    let what = match fault {
        "kill" if round % 2 == 1 => {
            // A majority at once, the leader among them: nothing can commit until they
            // are back, and what was acknowledged must come back from their disks.
            let mut down = vec![node];
            while down.len() < n / 2 + 1 {
                let other = 1 + rng.below(n as u64) as usize;
                if !down.contains(&other) {
                    down.push(other);
                }
            }
            for d in &down {
                cluster.kill(*d);
            }
            tokio::time::sleep(hold).await;
            for d in &down {
                cluster.restart(*d)?;
            }
            format!(
                "SIGKILL a majority, nodes {down:?}{}, restarted after {} ms",
                if target.is_some() { " (the leader first)" } else { "" },
                hold.as_millis()
            )
        }
        "kill" => {
            cluster.kill(node);
            tokio::time::sleep(hold).await;
            cluster.restart(node)?;
            format!("SIGKILL {}, restarted after {} ms", who(node), hold.as_millis())
        }
        "pause" => {
            cluster.pause(node);
            tokio::time::sleep(hold).await;
            cluster.resume(node);
            format!("SIGSTOP {} for {} ms", who(node), hold.as_millis())
        }
        "partition" => {
            // A minority of one or two nodes, cut off both ways or one way, with
            // connections refused or bytes held (black-holed), the four in turn. One
            // way cuts the links from the minority to the rest: a minority node still
            // takes the leader's appends and answers them on the same connection, but
            // cannot send its own (votes, forwarded writes).
            let mut minority = vec![node];
            if n > 3 && rng.below(2) == 0 {
                let other = 1 + (node + rng.below(n as u64 - 1) as usize) % n;
                minority.push(other);
            }
            let majority: Vec<usize> = (1..=n).filter(|i| !minority.contains(i)).collect();
            let (state, label, one_way) = match round % 4 {
                0 => (LinkState::Drop, "dropped", false),
                1 => (LinkState::BlackHole, "black-holed", false),
                2 => (LinkState::Drop, "dropped", true),
                _ => (LinkState::BlackHole, "black-holed", true),
            };
            cluster.cut(&minority, &majority, state);
            if !one_way {
                cluster.cut(&majority, &minority, state);
            }
            tokio::time::sleep(hold).await;
            cluster.heal()?;
            format!(
                "partition {minority:?}{} | rest, {}{label}, for {} ms",
                if target.is_some() { " (the leader's side)" } else { "" },
                if one_way { "one way (minority → majority), " } else { "both ways, " },
                hold.as_millis()
            )
        }
        "clock" => {
            // Restart the node with an offset and a rate in 1 ± spread/2.
            let rate = 1.0 + (rng.below(1_001) as f64 / 1_000.0 - 0.5) * spread;
            let offset = rng.below(10_000_000);
            cluster.kill(node);
            cluster.clocks[node - 1] = Some(format!("{offset}:{rate:.6}"));
            cluster.restart(node)?;
            format!("{} restarted with its clock at offset {offset} ms, rate {rate:.5}", who(node))
        }
        "restart" => {
            cluster.terminate(node);
            cluster.restart(node)?;
            format!("SIGTERM {} (graceful), restarted", who(node))
        }
        "delay" => {
            let ms = 20 + rng.below(200);
            let all: Vec<usize> = (1..=n).collect();
            cluster.cut(&[node], &all, LinkState::Delay(ms));
            cluster.cut(&all, &[node], LinkState::Delay(ms));
            tokio::time::sleep(hold).await;
            cluster.heal()?;
            format!("links of {} delayed {ms} ms for {} ms", who(node), hold.as_millis())
        }
        "reorder" => {
            // Every link: random per-chunk latency and connections cut now and then,
            // so requests overtake one another across connections.
            let max_ms = 50 + rng.below(250);
            let all: Vec<usize> = (1..=n).collect();
            cluster.cut(&all, &all, LinkState::Reorder(max_ms));
            tokio::time::sleep(hold).await;
            cluster.heal()?;
            format!("every link reordering (0..={max_ms} ms per chunk, 1 in 50 cut) for {} ms", hold.as_millis())
        }
        other => format!("unknown fault {other}"),
    };
    Ok(what)
}

/// Operations that must each succeed `PROGRESS_FLOOR` times in a run.
const PROGRESS_REQUIRED: [&str; 11] = [
    "lock",
    "redlock",
    "permit",
    "campaign",
    "register",
    "ack-write",
    "session-lock",
    "queue-push",
    "queue-pop",
    "expiring-set",
    "expiring-read",
];
/// A 60 s run on 5 nodes succeeds at each of them hundreds of times.
const PROGRESS_FLOOR: u64 = 50;

/// Records nodes that exited without the harness stopping them (a crash: the harness
/// would otherwise start them again at the next heal and say nothing).
fn note_crashes(cluster: &mut Cluster, crashes: &mut Vec<String>, start: Instant) {
    // Found by a fault that went to stop a node already gone.
    for line in cluster.found_exited.drain(..) {
        eprintln!("  {line}");
        crashes.push(line);
    }
    for (node, status) in cluster.exited_on_their_own() {
        let line = format!("node {node} exited on its own ({status}) before {:.0} s", start.elapsed().as_secs_f64());
        eprintln!("  {line}");
        crashes.push(line);
    }
}

/// Every fault asked for was injected at least once.
fn every_fault_ran(faults: &[String], rounds: &std::collections::BTreeMap<String, usize>) -> Verdict {
    let missing: Vec<&str> =
        faults.iter().filter(|f| rounds.get(f.as_str()).copied().unwrap_or(0) == 0).map(|f| f.as_str()).collect();
    if missing.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("never injected (the run is too short for the list): {}", missing.join(", ")))
    }
}

/// Reads after the final restart: retries TRYAGAIN and broken connections (on the
/// next node) for up to 20 s, so an unread key is not mistaken for a lost one. Also
/// returns how many attempts ended without a clear outcome (they may have applied).
async fn read_back(reader: &mut Conn, ports: &[u16], args: &[&str]) -> (Option<Reply>, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next_port = 0;
    let mut ambiguous = 0;
    while Instant::now() < deadline {
        match reader.call(args, Duration::from_secs(5)).await {
            Ok(Reply::Error(e)) if e.starts_with("TRYAGAIN") => {
                ambiguous += 1;
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(reply) => return (Some(reply), ambiguous),
            Err(_) => {
                ambiguous += 1;
                let port = ports[next_port % ports.len()];
                next_port += 1;
                if let Some(c) = Conn::connect(port, Duration::from_secs(2)).await {
                    *reader = c;
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    (None, ambiguous)
}

fn verdict_line(name: &str, v: &Verdict) -> String {
    match v {
        Verdict::Pass => format!("| {name} | pass | |"),
        Verdict::Fail(why) => format!("| {name} | **FAIL** | {} |", why.replace('\n', "<br>")),
        Verdict::Unknown(why) => format!("| {name} | unknown | {why} |"),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let exit = match run(args).await {
        Ok(0) => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("fencelock-chaos: {e}");
            2
        }
    };
    std::process::exit(exit);
}

async fn run(args: Args) -> Result<usize, String> {
    let duration = parse_time(&args.time)?;
    let faults: Vec<String> = args.faults.split(',').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect();
    if let Some(bad) = faults.iter().find(|f| !FAULTS.contains(&f.as_str())) {
        return Err(format!("unknown fault '{bad}' (known: {})", FAULTS.join(", ")));
    }
    if args.nodes < 3 {
        return Err("--nodes must be at least 3".into());
    }
    let binary = binary(&args)?;
    let drift = args.drift_percent / 100.0;
    let dir = std::env::temp_dir().join(format!("fencelock-chaos-{}-{}", std::process::id(), args.seed));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("starting {} nodes ({}), data and logs in {}", args.nodes, binary.display(), dir.display());
    let mut cluster = Cluster::start(binary, args.nodes, dir.clone()).await.map_err(|e| e.to_string())?;

    let shared = Arc::new(Shared {
        history: Mutex::new(Default::default()),
        resource: Mutex::new(Default::default()),
        start: Instant::now(),
        running: AtomicBool::new(true),
        ports: cluster.client_ports.clone(),
        drift,
    });
    let kinds = [
        Kind::Native,
        Kind::Native,
        Kind::Native,
        Kind::Redlock,
        Kind::Redlock,
        Kind::Permit,
        Kind::Permit,
        Kind::Election,
        Kind::Election,
        Kind::Register,
        Kind::Register,
        Kind::Register,
        Kind::Ack,
        Kind::Ack,
        Kind::Session,
        Kind::Session,
        // Four on a semaphore of two, so that an over-grant could show.
        Kind::Permit,
        Kind::Permit,
        Kind::Queue,
        Kind::Queue,
        Kind::Expiring,
        Kind::Expiring,
    ];
    let workers: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| tokio::spawn(workload::run(Arc::clone(&shared), i, *kind, args.seed)))
        .collect();
    let progress = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let h = shared.history.lock().unwrap();
                let [ok, fail, unknown] =
                    h.outcomes.values().fold([0; 3], |t, c| [t[0] + c[0], t[1] + c[1], t[2] + c[2]]);
                eprintln!(
                    "  {:>5.0} s: {ok} ok, {fail} failed, {unknown} unknown; {} grants, {} register ops",
                    shared.start.elapsed().as_secs_f64(),
                    h.grants.len(),
                    h.registers.len()
                );
            }
        })
    };

    let mut rng = Rng::new(args.seed.wrapping_add(0xFA17));
    let mut rounds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut crashes: Vec<String> = Vec::new();
    // The faults are dealt from a shuffled deck, so that every kind comes up once
    // before any comes up twice (uniform draws left kinds out of short runs).
    let mut deck: Vec<String> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2_000))).await;
        note_crashes(&mut cluster, &mut crashes, shared.start);
        if faults.is_empty() || started.elapsed() >= duration {
            continue;
        }
        if deck.is_empty() {
            deck = faults.clone();
            for i in (1..deck.len()).rev() {
                deck.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let fault = deck.pop().expect("dealt above");
        // Half the faults hit the leader: a paused or killed leader is where leases and
        // stale reads break.
        let target = if rng.below(2) == 0 { cluster.leader().await } else { None };
        let round = rounds.entry(fault.clone()).or_default();
        let spread = args.clock_spread_percent / 100.0;
        let what = inject(&mut cluster, &fault, target, *round, &mut rng, spread).await.map_err(|e| e.to_string())?;
        *round += 1;
        eprintln!("  {:>5.0} s: {what}", shared.start.elapsed().as_secs_f64());
    }
    shared.running.store(false, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
    }
    progress.abort();
    note_crashes(&mut cluster, &mut crashes, shared.start);

    // Heal, and time how long until every node takes writes again.
    cluster.heal().map_err(|e| e.to_string())?;
    let recovery = cluster.wait_writable(Duration::from_secs(60)).await;
    eprintln!("healed; writes through every node after {recovery:?}");
    // Every node restarts (SIGKILL, all at once), then every acknowledged write must be there.
    cluster.stop_all();
    cluster.heal().map_err(|e| e.to_string())?;
    let after_restart = cluster.wait_writable(Duration::from_secs(60)).await;
    let history = shared.history.lock().unwrap().clone();
    let mut reader = None;
    for port in &cluster.client_ports {
        reader = Conn::connect(*port, Duration::from_secs(2)).await;
        if reader.is_some() {
            break;
        }
    }
    let mut reader = reader.ok_or("no node answers after the restart")?;
    eprintln!(
        "every node restarted; writable after {after_restart:?}; reading back {} acknowledged writes",
        history.acked.len()
    );
    let mut values = std::collections::HashMap::new();
    for (key, _) in &history.acked {
        let value = match read_back(&mut reader, &cluster.client_ports, &["GET", key]).await.0 {
            Some(Reply::Bulk(v)) => Some(v),
            _ => None,
        };
        values.insert(key.clone(), value);
    }
    // Drain the queue and the list: what is left must be acknowledged items not popped.
    let mut history = history;
    for (key, pop) in [(workload::QUEUE_KEY, "QUEUE.POP"), (workload::LIST_KEY, "LPOP")] {
        let pushed = history.queues.pushed.iter().filter(|p| p.0 == key).count();
        for _ in 0..=pushed {
            let (reply, ambiguous) = read_back(&mut reader, &cluster.client_ports, &[pop, key]).await;
            // A pop sent again after an answer that never came (or said it may have
            // applied) may have taken an item nobody saw.
            *history.queues.unknown_pops.entry(key.to_string()).or_default() += ambiguous;
            match reply {
                Some(Reply::Bulk(v)) => history.queues.remaining.push((key.to_string(), v)),
                Some(Reply::Nil) => break,
                other => return Err(format!("could not drain {key}: {other:?}")),
            }
        }
    }
    note_crashes(&mut cluster, &mut crashes, shared.start);
    for node in 1..=cluster.len() {
        let log = std::fs::read_to_string(dir.join(format!("node-{node}.log"))).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            crashes.push(format!("node {node} logged a panic: {line}"));
        }
    }
    eprintln!("checking the history ...");
    // The raw register history, for a person to read when a check fails.
    let mut dump = String::from("worker\tkey\top\tinvoked_ms\tcompleted_ms\tresult\tport\n");
    for c in &history.registers {
        dump += &format!(
            "{}\t{}\t{:?}\t{:.1}\t{}\t{:?}\t{}\n",
            c.worker,
            c.key,
            c.op,
            c.invoked_ms,
            c.completed_ms.map_or("unknown".into(), |t| format!("{t:.1}")),
            c.result,
            c.port
        );
    }
    let _ = std::fs::write(dir.join("registers.tsv"), dump);

    let verdicts = [
        ("mutual exclusion", check::mutual_exclusion(&history.grants, |kind| if kind == "permit" { 2 } else { 1 })),
        ("fences follow real time", check::fences_increase(&history.grants)),
        ("protected resource fencing", check::resource_fencing(&history.fenced_writes)),
        ("register linearizability", check::linearizable(&history.registers, LINEARIZABILITY_BUDGET)),
        ("no acknowledged write lost", check::no_lost_writes(&history.acked, |k| values.get(k).cloned().flatten())),
        ("queues deliver once, lose nothing", check::queue_delivery(&history.queues)),
        ("keys expire neither early nor twice", check::expiry_is_linearizable(&history.expiring, drift)),
        (
            "recovery after healing",
            match (recovery, after_restart) {
                (Some(_), Some(_)) => Verdict::Pass,
                _ => Verdict::Fail("the cluster did not take writes within 60 s of healing".into()),
            },
        ),
        ("no node crashed", if crashes.is_empty() { Verdict::Pass } else { Verdict::Fail(crashes.join("\n")) }),
        ("every fault ran", every_fault_ran(&faults, &rounds)),
        ("the workload made progress", check::progress(&history.outcomes, &PROGRESS_REQUIRED, PROGRESS_FLOOR)),
    ];
    // A check that could not decide is no evidence of safety: it counts against the run.
    let violations = verdicts.iter().filter(|(_, v)| !matches!(v, Verdict::Pass)).count();

    println!(
        "## fencelock-chaos: {} nodes, {:?}, faults {}, seed {}",
        args.nodes,
        duration,
        faults.join(","),
        args.seed
    );
    println!();
    println!("| operation | ok | failed | unknown |");
    println!("|---|---|---|---|");
    for (what, [ok, fail, unknown]) in &history.outcomes {
        println!("| {what} | {ok} | {fail} | {unknown} |");
    }
    println!();
    println!(
        "{} grants checked ({} fenced resource writes), {} register operations, {} acknowledged writes read back, \
         {} queue and list pushes ({} items popped, {} left at the end)",
        history.grants.len(),
        history.fenced_writes.len(),
        history.registers.len(),
        history.acked.len(),
        history.queues.pushed.len(),
        history.queues.popped.len(),
        history.queues.remaining.len()
    );
    println!("faults injected: {rounds:?} ({} in all)", rounds.values().sum::<usize>());
    println!(
        "recovery: writes through every node {} after healing; {} after restarting every node",
        recovery.map_or("never".into(), |d| format!("{} ms", d.as_millis())),
        after_restart.map_or("never".into(), |d| format!("{} ms", d.as_millis()))
    );
    println!();
    println!("| check | verdict | evidence |");
    println!("|---|---|---|");
    for (name, v) in &verdicts {
        println!("{}", verdict_line(name, v));
    }
    println!();
    println!("{}", if violations == 0 { "no violations".to_string() } else { format!("{violations} VIOLATIONS") });
    drop(cluster);
    if args.keep || violations > 0 {
        eprintln!("data and logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(violations)
}
