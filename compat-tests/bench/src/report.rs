//! The results: a markdown table, a PNG chart of the lock cycle's throughput and p99
//! against client count, and the goals checked against the measured cells.

use std::path::Path;

use plotters::prelude::*;

use crate::cell::Cell;

/// The markdown table of every cell.
pub fn table(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| target | workload | style | clients | pipeline | load | ops/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/op | client CPU µs/op | RSS MiB | note |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} |\n",
            c.target,
            c.workload,
            c.style,
            c.clients,
            c.pipeline,
            c.load,
            c.ops_per_s,
            c.p50_us,
            c.p99_us,
            c.p999_us,
            c.cpu_us_per_op,
            c.client_cpu_us_per_op,
            c.rss_mib,
            c.note
        );
    }
    out
}

/// The measured lock-cycle cell at `clients`, closed-loop (`peak`) or paced. A failed
/// cell's row holds zeros, not figures, so it never stands for a cell here.
fn find<'a>(cells: &'a [Cell], target: &str, style: &str, clients: usize, peak: bool) -> Option<&'a Cell> {
    cells.iter().find(|c| {
        !c.is_failed()
            && c.target == target
            && c.workload == "lock"
            && c.style == style
            && c.clients == clients
            && (c.load == "peak") == peak
    })
}

/// Each goal of issue 6 that the run has the cells for, with the measured figures.
/// `paced_expected`: the run asked for the paced cell at 64 clients (`--half-load-at
/// 64` with 64 among `--clients`); otherwise a missing one is not a miss.
pub fn goals(cells: &[Cell], paced_expected: bool) -> String {
    let mut out = String::new();
    let mut line = |ok: bool, text: String| out += &format!("- [{}] {text}\n", if ok { "x" } else { " " });
    let redis = find(cells, "redis", "redlock", 64, true);
    let etcd = find(cells, "etcd-3", "etcd", 64, true);
    for style in ["native", "redlock"] {
        // Only for a run that had fencelock-3's lock cycle in this style (a failed cell
        // still says it was meant to run).
        if !cells.iter().any(|c| c.target == "fencelock-3" && c.workload == "lock" && c.style == style) {
            continue;
        }
        if let Some(f3) = find(cells, "fencelock-3", style, 64, true) {
            if let Some(e) = etcd {
                let x = f3.ops_per_s / e.ops_per_s;
                line(
                    x >= 10.0,
                    format!(
                        "fencelock-3 {style} at 64 clients: {:.0} ops/s = {x:.1}× etcd-3 ({:.0}); goal ≥ 10×",
                        f3.ops_per_s, e.ops_per_s
                    ),
                );
            }
            if let Some(r) = redis {
                let pct = 100.0 * f3.ops_per_s / r.ops_per_s;
                line(
                    pct >= 50.0,
                    format!(
                        "fencelock-3 {style} at 64 clients: {pct:.0}% of redis without persistence ({:.0}); goal ≥ 50%",
                        r.ops_per_s
                    ),
                );
            }
        }
        // The paced cell's note says which rate it ran at and what share of the best
        // closed-loop rate of fencelock-3 in this style that is.
        match find(cells, "fencelock-3", style, 64, false) {
            Some(half) => line(
                half.p99_us < 5000,
                format!(
                    "fencelock-3 {style} paced at {} ({}): p99 {} µs; goal < 5,000",
                    half.load, half.note, half.p99_us
                ),
            ),
            None if paced_expected => line(
                false,
                format!("fencelock-3 {style} paced at 64 clients: not measured (no paced cell, or it failed); goal p99 < 5,000 µs"),
            ),
            None => {}
        }
    }
    if let Some(one) = find(cells, "fencelock", "native", 1, true) {
        line(one.p50_us < 500, format!("fencelock native, 1 client: p50 {} µs; goal < 500", one.p50_us));
    }
    for c in cells.iter().filter(|c| c.target.starts_with("fencelock")) {
        if c.is_failed() {
            line(false, format!("{} {}: {}", c.target, c.workload, c.note));
            continue;
        }
        match c.workload.as_str() {
            // On the peak (VmHWM), not the RSS at the end: the table has to fit while it
            // is filled and snapshotted, not only once it has settled.
            "million" => line(
                c.peak_rss_mib <= 1024.0,
                format!(
                    "{} with the full table: peak RSS {:.0} MiB on the largest node ({:.0} MiB at the end; {}); goal ≤ 1,024 at peak",
                    c.target, c.peak_rss_mib, c.rss_mib, c.note
                ),
            ),
            "connections" => {
                line(c.p99_us < 5000, format!("{} with {}: active p99 {} µs; goal < 5,000", c.target, c.note, c.p99_us))
            }
            _ => {}
        }
    }
    out
}

fn series(cells: &[Cell]) -> Vec<(String, Vec<&Cell>)> {
    let mut out: Vec<(String, Vec<&Cell>)> = Vec::new();
    for c in cells.iter().filter(|c| c.workload == "lock" && c.load == "peak") {
        let label = format!("{} {}", c.target, c.style);
        match out.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push(c),
            None => out.push((label, vec![c])),
        }
    }
    out
}

/// Draws ops/s (left) and p99 (right, log scale) of the lock cycle against client count.
pub fn chart(cells: &[Cell], path: &Path) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("chart: {e}");
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let series = series(cells);
    if series.is_empty() {
        return Ok(());
    }
    let max_clients = series.iter().flat_map(|(_, v)| v.iter().map(|c| c.clients)).max().unwrap_or(1) as f64;
    let max_ops = series.iter().flat_map(|(_, v)| v.iter().map(|c| c.ops_per_s)).fold(1.0, f64::max);
    let max_p99 = series.iter().flat_map(|(_, v)| v.iter().map(|c| c.p99_us as f64 / 1000.0)).fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(700);
    let x_range = 0.0..max_clients.log2().max(1.0);
    let x_label = |x: &f64| format!("{:.0}", 2f64.powf(*x));
    let mut ops = ChartBuilder::on(&left)
        .caption("lock cycle: acquire + release per second", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), 0.0..max_ops * 1.1)
        .map_err(|x| e(&x))?;
    ops.configure_mesh()
        .x_desc("clients")
        .y_desc("cycles/s")
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y: &f64| format!("{y:.0}"))
        .draw()
        .map_err(|x| e(&x))?;
    let mut p99 = ChartBuilder::on(&right)
        .caption("lock cycle: p99 latency (ms, log)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, (0.05..max_p99 * 1.5).log_scale())
        .map_err(|x| e(&x))?;
    p99.configure_mesh().x_desc("clients").y_desc("p99 ms").x_label_formatter(&x_label).draw().map_err(|x| e(&x))?;
    for (i, (label, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba().stroke_width(3);
        let xy = |c: &&Cell| (c.clients.max(1) as f64).log2();
        ops.draw_series(LineSeries::new(points.iter().map(|c| (xy(c), c.ops_per_s)), color))
            .map_err(|x| e(&x))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        p99.draw_series(LineSeries::new(points.iter().map(|c| (xy(c), (c.p99_us as f64 / 1000.0).max(0.05))), color))
            .map_err(|x| e(&x))?;
    }
    ops.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
