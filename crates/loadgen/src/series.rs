//! A long 1 Hz series and the aggregate query over it: loads `--days` × 86 400 points
//! of one metric of one device through batched `POST /api/v1/devices/{id}/telemetry`
//! (ending now), checks that all of them are stored, then times
//! `GET …/telemetry?metric=x&from=<days ago>&to=<now>&step=1h&agg=mean,min,max`.
//!
//! For comparison it also times the same range at `step=61m` (a minute multiple that no
//! hour divides: the store folds the 1-minute rollup) and `step=3601s` (no rollup
//! divides it: the store folds every raw point), which is what the 1 h query would cost
//! without rollups.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Target;
use crate::http::{self, HttpConn};
use crate::procstat::CpuWindow;
use crate::report::Report;
use crate::wire::Doc;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Days of 1 Hz points to load.
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Points per request while loading.
    #[arg(long, default_value_t = 5000)]
    batch: u64,
    /// Connections loading at once.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The device [default: `lg-<generator PID>-series`].
    #[arg(long)]
    device: Option<String>,
    /// The metric.
    #[arg(long, default_value = "x")]
    metric: String,
    /// Timed aggregate queries at `step=1h` (after one untimed warm-up query).
    #[arg(long, default_value_t = 20)]
    queries: usize,
    /// Timed queries at each comparison step (61m, 3601s).
    #[arg(long, default_value_t = 5)]
    compare_queries: usize,
    /// Only query a series loaded before, ending at `--end-ms` (with `--device`).
    #[arg(long, requires_all = ["end_ms", "device"])]
    no_load: bool,
    /// End of the series (exclusive), Unix ms [default: now].
    #[arg(long)]
    end_ms: Option<u64>,
}

/// How long a loader waits after a 429 before sending the same batch again.
const BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    let device = args.device.clone().unwrap_or_else(|| format!("lg-{}-series", std::process::id()));
    let total = args.days * 86_400;
    let end_ms = args.end_ms.unwrap_or_else(http::now_ms);
    // points at end − total s, …, end − 1 s: the query's [from, to) holds every one
    let from_ms = end_ms - args.days * 86_400_000;
    let metrics = vec![args.metric.clone()];
    let mut report = Report::new("series");
    report.add("device", &device).add("days", args.days).add("points", total).add("end_ms", end_ms);

    if !args.no_load {
        let doc = Doc::new("", &metrics, from_ms, false).with_ts_step(1000);
        let batch = args.batch.max(1);
        let chunks = total.div_ceil(batch);
        let next = Arc::new(AtomicU64::new(0));
        let cpu = CpuWindow::start(target.broker_pid)?;
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..args.connections.max(1) {
            let conn = target.http_conn().await?;
            let path = format!("/api/v1/devices/{device}/telemetry");
            tasks.spawn(load(conn, path, doc.clone(), Arc::clone(&next), chunks, batch, total));
        }
        let (mut requests, mut refused) = (0u64, 0u64);
        while let Some(r) = tasks.join_next().await {
            let (n, r) = r.context("loader panicked")??;
            requests += n;
            refused += r;
        }
        let took = started.elapsed();
        let usage = cpu.stop()?;
        report
            .add("load_s", format!("{:.2}", took.as_secs_f64()))
            .add_rate("load_points_rate", total, took)
            .add("load_requests", requests)
            .add("load_refused_429", refused)
            .add("load_batch", batch)
            .add("load_connections", args.connections)
            .add_per_broker_cpu("load_points_per_broker_cpu_s", total, &usage)
            .add_per_stack_cpu("load_points_per_stack_cpu_s", total, &usage)
            .add_cpu(&usage);
    }

    let mut conn = target.http_conn().await?;
    let checked = Instant::now();
    let stored = http::count_points(&mut conn, &device, &metrics, from_ms, end_ms).await?;
    report.add("stored_points", stored).add("count_s", format!("{:.2}", checked.elapsed().as_secs_f64()));
    if stored != total {
        eprintln!("telehub-loadgen: {stored} points stored of the {total} loaded");
    }

    let query = |step: &str| {
        format!(
            "/api/v1/devices/{device}/telemetry?metric={}&from={from_ms}&to={end_ms}&step={step}&agg=mean,min,max",
            args.metric
        )
    };
    let (first, times, answer) = time_queries(&mut conn, &query("1h"), args.queries).await?;
    report
        .add("query", "step=1h&agg=mean,min,max")
        .add("resolution", answer.resolution)
        .add("buckets", answer.buckets)
        .add("answer_bytes", answer.bytes)
        .add("first_ms", ms(first))
        .add("p50_ms", ms(median(&times)))
        .add("min_ms", ms(times[0]))
        .add("max_ms", ms(times[times.len() - 1]))
        .add("queries", times.len());
    if args.compare_queries > 0 {
        for (step, key_res, key_ms) in
            [("61m", "minute_resolution", "minute_p50_ms"), ("3601s", "raw_resolution", "raw_p50_ms")]
        {
            let (_, times, answer) = time_queries(&mut conn, &query(step), args.compare_queries).await?;
            report.add(key_res, answer.resolution).add(key_ms, ms(median(&times)));
        }
    }
    Ok(report)
}

/// Takes batches until none is left; returns (requests, 429s).
async fn load(
    mut conn: HttpConn,
    path: String,
    doc: Doc,
    next: Arc<AtomicU64>,
    chunks: u64,
    batch: u64,
    total: u64,
) -> Result<(u64, u64)> {
    let mut body = BytesMut::with_capacity((doc.len() + 1) * batch as usize + 2);
    let (mut requests, mut refused) = (0, 0);
    loop {
        let chunk = next.fetch_add(1, Ordering::Relaxed);
        if chunk >= chunks {
            return Ok((requests, refused));
        }
        let (start, end) = (chunk * batch, ((chunk + 1) * batch).min(total));
        body.clear();
        body.extend_from_slice(b"[");
        for seq in start..end {
            if seq > start {
                body.extend_from_slice(b",");
            }
            doc.put(&mut body, seq);
        }
        body.extend_from_slice(b"]");
        loop {
            let response = conn.post(&path, "application/json", &body).await?;
            requests += 1;
            match response.status {
                200..=299 => break,
                429 => {
                    refused += 1;
                    tokio::time::sleep(BACKOFF).await;
                }
                status => bail!("POST {path}: {status} {}", response.text()),
            }
        }
    }
}

struct Answer {
    resolution: String,
    buckets: usize,
    bytes: usize,
}

/// One untimed query, then `n` timed ones (sorted). Returns the first's time too.
async fn time_queries(
    conn: &mut HttpConn,
    path: &str,
    n: usize,
) -> Result<(Duration, Vec<Duration>, Answer)> {
    let t = Instant::now();
    let response = conn.get(path).await?;
    let first = t.elapsed();
    if !response.is_success() {
        bail!("GET {path}: {} {}", response.status, response.text());
    }
    let json: serde_json::Value = serde_json::from_slice(&response.body).context("aggregate answer")?;
    let answer = Answer {
        resolution: json.get("resolution").and_then(|r| r.as_str()).unwrap_or("?").to_owned(),
        buckets: json.get("buckets").and_then(|b| b.as_array()).map_or(0, Vec::len),
        bytes: response.body.len(),
    };
    let mut times = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let t = Instant::now();
        let response = conn.get(path).await?;
        times.push(t.elapsed());
        if !response.is_success() {
            bail!("GET {path}: {} {}", response.status, response.text());
        }
    }
    times.sort_unstable();
    Ok((first, times, answer))
}

/// The median of sorted, non-empty `times`.
fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2 }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}
