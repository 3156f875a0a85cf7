//! Ingest benchmark: several tasks write points at once, and it prints the committed
//! points per second and the write latency, for SQLite (in a tempdir) and, when
//! `TELEHUB_TEST_POSTGRES_URL` is set, PostgreSQL (in a throwaway schema).
//!
//! ```text
//! cargo run --release -p telehub-store --example ingest_bench [-- TOTAL_POINTS [MAX_COMMIT_DELAY]]
//! ```
//!
//! `MAX_COMMIT_DELAY` (e.g. `2ms`) overrides the config default.
//!
//! Three shapes, each writing TOTAL_POINTS (default 1 000 000):
//! * `per-message`: 64, then 512 tasks, each write one record of 5 points (an MQTT
//!   message each, what the hub does per QoS 1 publish), so throughput comes from group
//!   commit and grows with the writes in flight;
//! * `batched`: 8 tasks, each write 100 records of 10 points (HTTP batch uploads).

use std::path::Path;
use std::time::Duration;

use telehub_core::DeviceId;
use telehub_store::{Config, Metric, Point, Record, Store, TelemetryStore, Timestamp};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// 2023-11-14T22:00:00Z
const T0: i64 = 1_699_999_200_000;

#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    tasks: usize,
    records_per_write: usize,
    points_per_record: usize,
}

const SHAPES: [Shape; 3] = [
    Shape { name: "per-message", tasks: 64, records_per_write: 1, points_per_record: 5 },
    Shape { name: "per-message", tasks: 512, records_per_write: 1, points_per_record: 5 },
    Shape { name: "batched", tasks: 8, records_per_write: 100, points_per_record: 10 },
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    let mut config = Config::default();
    if let Some(delay) = std::env::args().nth(2) {
        config.max_commit_delay = telehub_core::duration::parse(&delay).map_err(anyhow::Error::msg)?;
    }
    println!(
        "ingest_bench: {total} points per shape; max_batch_points={} max_commit_delay={:?}",
        config.max_batch_points, config.max_commit_delay
    );
    for shape in SHAPES {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&config, dir.path()).await?;
        run("sqlite", shape, &store, total).await?;
        store.close().await;
    }
    match std::env::var("TELEHUB_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            for shape in SHAPES {
                let schema =
                    format!("bench_{}_{}_{}", shape.name.replace('-', "_"), shape.tasks, std::process::id());
                admin(&url, &format!("CREATE SCHEMA {schema}")).await?;
                let sep = if url.contains('?') { '&' } else { '?' };
                let pg = Config {
                    url: Some(format!("{url}{sep}options=-csearch_path%3D{schema}")),
                    ..config.clone()
                };
                let store = Store::open(&pg, Path::new(".")).await?;
                let result = run("postgres", shape, &store, total).await;
                store.close().await;
                admin(&url, &format!("DROP SCHEMA {schema} CASCADE")).await?;
                result?;
            }
        }
        _ => println!("postgres: skipped (TELEHUB_TEST_POSTGRES_URL is not set)"),
    }
    Ok(())
}

async fn run(backend: &str, shape: Shape, store: &Store, total: usize) -> anyhow::Result<()> {
    let points_per_write = shape.records_per_write * shape.points_per_record;
    let writes_per_task = total.div_ceil(points_per_write * shape.tasks);
    let metrics: Vec<Metric> = (0..shape.points_per_record).map(|i| Metric(format!("m{i}"))).collect();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..shape.tasks {
        let store = store.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            let device = DeviceId::new(format!("bench-{task}")).expect("valid id");
            let mut latencies = Vec::with_capacity(writes_per_task);
            let mut committed = 0usize;
            for w in 0..writes_per_task {
                let records: Vec<Record> = (0..shape.records_per_write)
                    .map(|r| {
                        let seq = (w * shape.records_per_write + r) as i64;
                        let ts = Timestamp(T0 + seq * 1000);
                        Record {
                            device: device.clone(),
                            msg_id: Some(seq.to_string()),
                            received_at: ts,
                            points: metrics
                                .iter()
                                .enumerate()
                                .map(|(i, m)| Point { metric: m.clone(), ts, value: (seq + i as i64) as f64 })
                                .collect(),
                            document: None,
                        }
                    })
                    .collect();
                let t = Instant::now();
                committed += store.write(records).await?.points;
                latencies.push(t.elapsed());
            }
            Ok::<_, telehub_store::StoreError>((committed, latencies))
        });
    }
    let mut committed = 0;
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (n, l) = done??;
        committed += n;
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{backend:>8} {:<11} {:>2} tasks x {:>4} points/write: {committed} points in {:.2}s = {:>8.0} points/s \
         committed; write latency p50 {:.1?} p99 {:.1?}",
        shape.name,
        shape.tasks,
        points_per_write,
        elapsed.as_secs_f64(),
        committed as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
    );
    Ok(())
}

async fn admin(url: &str, sql: &str) -> anyhow::Result<()> {
    let pg: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager).max_size(1).build()?;
    pool.get().await?.batch_execute(sql).await?;
    Ok(())
}
