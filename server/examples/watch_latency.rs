//! Watch notification latency: W connections each `OBSERVE KEY bench:watched` (spread
//! over the given nodes), one writer SETs the key C times, one change at a time; each
//! watcher timestamps the push it receives. Prints p50/p99/max from the SET being sent
//! and from its acknowledgement (the change is committed and applied on the writer's
//! node by then).
//!
//! ```text
//! cargo run --release --example watch_latency -- --ports 6379,6380,6381 [--watchers 1000] [--changes 200]
//! ```
//! `compat-tests/bench/watch-latency.sh` starts a 3-node cluster and runs this.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const KEY: &str = "bench:watched";

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Reads one RESP2 reply and returns its flattened text parts.
async fn read_reply(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = 1usize;
    while pending > 0 {
        pending -= 1;
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1);
        match kind {
            "*" => pending += rest.parse::<i64>().unwrap_or(0).max(0) as usize,
            "$" => {
                let len: i64 = rest.parse().unwrap_or(-1);
                if len >= 0 {
                    let mut buf = vec![0u8; len as usize + 2];
                    r.read_exact(&mut buf).await?;
                    out.push(String::from_utf8_lossy(&buf[..len as usize]).into_owned());
                }
            }
            "-" => return Err(std::io::Error::other(rest.to_string())),
            _ => out.push(rest.to_string()),
        }
    }
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
    };
    let ports: Vec<u16> = flag("--ports", "6379").split(',').filter_map(|p| p.parse().ok()).collect();
    let watchers: usize = flag("--watchers", "1000").parse().expect("--watchers is a number");
    let changes: usize = flag("--changes", "200").parse().expect("--changes is a number");

    eprintln!("connecting {watchers} watchers over ports {ports:?} ...");
    let (seen_tx, mut seen_rx) = mpsc::channel::<Instant>(watchers * 2);
    for i in 0..watchers {
        let stream = TcpStream::connect(("127.0.0.1", ports[i % ports.len()])).await?;
        stream.set_nodelay(true)?;
        let mut r = BufReader::new(stream);
        r.get_mut().write_all(&command(&["OBSERVE", "KEY", KEY])).await?;
        read_reply(&mut r).await?;
        let seen = seen_tx.clone();
        tokio::spawn(async move {
            while let Ok(push) = read_reply(&mut r).await {
                if push.first().map(String::as_str) == Some("observe") && seen.send(Instant::now()).await.is_err() {
                    return;
                }
            }
        });
    }
    let writer = TcpStream::connect(("127.0.0.1", ports[0])).await?;
    writer.set_nodelay(true)?;
    let mut w = BufReader::new(writer);
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    for n in 0..changes {
        let sent = Instant::now();
        w.get_mut().write_all(&command(&["SET", KEY, &n.to_string()])).await?;
        read_reply(&mut w).await?;
        let acked = Instant::now();
        for _ in 0..watchers {
            let at = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                .await
                .map_err(|_| std::io::Error::other("a watcher got no event within 10 s"))?
                .expect("watchers are running");
            from_send.push(at - sent);
            from_ack.push(at.saturating_duration_since(acked));
        }
        if (n + 1) % 50 == 0 || n + 1 == changes {
            eprintln!("  {}/{changes} changes delivered to {watchers} watchers", n + 1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    from_send.sort();
    from_ack.sort();
    println!(
        "| watch latency ({watchers} watchers, {changes} changes, {} events) | p50 ms | p99 ms | max ms |",
        from_send.len()
    );
    println!("|---|---|---|---|");
    for (name, v) in [("from the SET being sent", &from_send), ("from the SET's acknowledgement", &from_ack)] {
        println!("| {name} | {:.2} | {:.2} | {:.2} |", percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0));
    }
    Ok(())
}
