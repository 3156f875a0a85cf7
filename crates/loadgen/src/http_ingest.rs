//! Telemetry over HTTP: C keep-alive connections, each a device, each sending one
//! request after the other for a fixed time.
//!
//! * `--endpoint data`: `POST /data` with one JSON document, the Flask tutorial's shape
//!   (`{"device_id": …, "temperature": …, "humidity": …}`), plus `ts` and `msg_id`;
//! * `--endpoint batch`: `POST /api/v1/devices/{id}/telemetry` with `--batch` documents
//!   of `--fields` numbers each, as a JSON array (or NDJSON with `--ndjson`).
//!
//! telehub answers 2xx only after the commit, so 2xx/s is the durable rate. Afterwards
//! the API counts the points stored for each device: every point of a 2xx must be there.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http::{self, HttpConn};
use crate::procstat::CpuWindow;
use crate::report::Report;
use crate::wire::Doc;
use crate::{Target, parse_duration};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /data`, one document per request.
    Data,
    /// `POST /api/v1/devices/{id}/telemetry`, `--batch` documents per request.
    Batch,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Which endpoint.
    #[arg(long, value_enum, default_value_t = Endpoint::Data)]
    endpoint: Endpoint,
    /// Keep-alive connections, one device each, one request in flight each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Documents per request (`batch` only).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Numeric fields per document (`data` sends the tutorial's two: temperature and
    /// humidity).
    #[arg(long, default_value_t = 5)]
    fields: usize,
    /// Send batches as NDJSON instead of a JSON array.
    #[arg(long)]
    ndjson: bool,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Device ids are `lg-<run>-h<i>` [default: the generator's PID].
    #[arg(long)]
    run_id: Option<String>,
    /// Do not count the stored points through the API afterwards.
    #[arg(long)]
    no_verify: bool,
}

/// What one connection did.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Points the 2xx answers said were stored.
    points: u64,
    /// 429 answers (queue full).
    refused: u64,
    /// Other answers.
    failed: u64,
    first_failure: Option<String>,
    /// New connections after the server closed one (`Connection: close`).
    reconnects: u64,
    /// Documents sent (the highest sequence number + 1).
    docs: u64,
    latencies_us: Vec<u32>,
}

/// How long a connection waits after a 429 before its next request.
const BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    let run_id = args.run_id.clone().unwrap_or_else(|| std::process::id().to_string());
    let devices: Vec<String> = (0..args.connections).map(|i| format!("lg-{run_id}-h{i}")).collect();
    let metrics: Vec<String> = match args.endpoint {
        Endpoint::Data => vec!["temperature".into(), "humidity".into()],
        Endpoint::Batch => crate::telemetry::metric_names(args.fields),
    };
    let per_request = match args.endpoint {
        Endpoint::Data => 1,
        Endpoint::Batch => args.batch.max(1) as u64,
    };
    let base_ms = http::now_ms() - 3_600_000;
    let mut conns = Vec::with_capacity(devices.len());
    for _ in &devices {
        conns.push(target.http_conn().await?);
    }

    let cpu = CpuWindow::start(target.broker_pid)?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = JoinSet::new();
    for (device, conn) in devices.iter().zip(conns) {
        let doc = match args.endpoint {
            Endpoint::Data => Doc::new(&format!("\"device_id\":\"{device}\","), &metrics, base_ms, true),
            Endpoint::Batch => Doc::new("", &metrics, base_ms, true),
        };
        let (path, content_type) = match (args.endpoint, args.ndjson) {
            (Endpoint::Data, _) => ("/data".to_owned(), "application/json"),
            (Endpoint::Batch, false) => (format!("/api/v1/devices/{device}/telemetry"), "application/json"),
            (Endpoint::Batch, true) => {
                (format!("/api/v1/devices/{device}/telemetry"), "application/x-ndjson")
            }
        };
        let shape =
            Shape { endpoint: args.endpoint, per_request, ndjson: args.ndjson, fields: metrics.len() };
        tasks.spawn(connection(conn, doc, path, content_type, shape, deadline));
    }
    let mut total = Tally::default();
    while let Some(r) = tasks.join_next().await {
        let t = r.context("connection task panicked")?.context("HTTP connection")?;
        total.ok += t.ok;
        total.points += t.points;
        total.refused += t.refused;
        total.failed += t.failed;
        total.first_failure = total.first_failure.or(t.first_failure);
        total.reconnects += t.reconnects;
        total.docs = total.docs.max(t.docs);
        total.latencies_us.extend(t.latencies_us);
    }
    let window = started.elapsed();
    let usage = cpu.stop()?;
    if total.ok == 0 {
        bail!("no request succeeded: {}", total.first_failure.unwrap_or_default());
    }
    total.latencies_us.sort_unstable();
    let pct = |p: f64| total.latencies_us[((total.latencies_us.len() - 1) as f64 * p) as usize];

    let mut report = Report::new("http");
    report
        .add(
            "endpoint",
            match args.endpoint {
                Endpoint::Data => "data",
                Endpoint::Batch => "batch",
            },
        )
        .add("connections", args.connections)
        .add("docs_per_request", per_request)
        .add("fields", metrics.len())
        .add("format", if args.ndjson && args.endpoint == Endpoint::Batch { "ndjson" } else { "json" })
        .add_rate("rate", total.ok, window)
        .add_rate("points_rate", total.points, window)
        .add("ok", total.ok)
        .add("points", total.points)
        .add("refused_429", total.refused)
        .add("failed", total.failed)
        .add("reconnects", total.reconnects)
        .add("p50_ms", format!("{:.2}", f64::from(pct(0.5)) / 1000.0))
        .add("p99_ms", format!("{:.2}", f64::from(pct(0.99)) / 1000.0));
    if let Some(f) = &total.first_failure {
        eprintln!("telehub-loadgen: first failed request: {f}");
    }
    if !args.no_verify {
        let checked = Instant::now();
        let mut conn = target.http_conn().await?;
        let mut stored = 0;
        for device in &devices {
            stored += http::count_points(&mut conn, device, &metrics, base_ms, base_ms + total.docs).await?;
        }
        report
            .add("stored_points", stored)
            .add("lost", total.points.saturating_sub(stored))
            .add("stored_unacked_points", stored.saturating_sub(total.points))
            .add("verify_s", format!("{:.2}", checked.elapsed().as_secs_f64()));
    }
    report
        .add_per_broker_cpu("req_per_broker_cpu_s", total.ok, &usage)
        .add_per_broker_cpu("points_per_broker_cpu_s", total.points, &usage)
        .add_per_stack_cpu("points_per_stack_cpu_s", total.points, &usage)
        .add_cpu(&usage);
    Ok(report)
}

#[derive(Clone, Copy)]
struct Shape {
    endpoint: Endpoint,
    per_request: u64,
    ndjson: bool,
    fields: usize,
}

/// Sends requests one after the other until `deadline`.
async fn connection(
    mut conn: HttpConn,
    doc: Doc,
    path: String,
    content_type: &'static str,
    shape: Shape,
    deadline: Instant,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut body = BytesMut::with_capacity((doc.len() + 1) * shape.per_request as usize + 2);
    let mut seq = 0u64;
    while Instant::now() < deadline {
        body.clear();
        match (shape.endpoint, shape.ndjson) {
            (Endpoint::Data, _) => doc.put(&mut body, seq),
            (Endpoint::Batch, false) => {
                body.extend_from_slice(b"[");
                for k in 0..shape.per_request {
                    if k > 0 {
                        body.extend_from_slice(b",");
                    }
                    doc.put(&mut body, seq + k);
                }
                body.extend_from_slice(b"]");
            }
            (Endpoint::Batch, true) => {
                for k in 0..shape.per_request {
                    doc.put(&mut body, seq + k);
                    body.extend_from_slice(b"\n");
                }
            }
        }
        seq += shape.per_request;
        let t = Instant::now();
        let response = conn.post(&path, content_type, &body).await?;
        tally.latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        match response.status {
            200..=299 => {
                tally.ok += 1;
                tally.points += match shape.endpoint {
                    Endpoint::Data => shape.fields as u64,
                    Endpoint::Batch => stored_points(&response.body)
                        .with_context(|| format!("POST {path}: unexpected answer {}", response.text()))?,
                };
            }
            429 => {
                tally.refused += 1;
                tokio::time::sleep(BACKOFF).await;
            }
            status => {
                tally.failed += 1;
                if tally.first_failure.is_none() {
                    tally.first_failure = Some(format!("POST {path}: {status} {}", response.text()));
                }
            }
        }
    }
    tally.docs = seq;
    tally.reconnects = conn.reconnects;
    Ok(tally)
}

/// `points` of a telemetry `POST` answer (`{"records": N, "points": M}`).
fn stored_points(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?.get("points")?.as_u64()
}
