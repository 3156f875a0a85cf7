//! Telemetry over MQTT: N publishers, each a device publishing JSON documents to
//! `devices/lg-<run>-<i>/telemetry` at QoS 1 with a window of unacknowledged PUBLISHes,
//! for a fixed time. telehub acknowledges a mapped message only after its points are
//! committed, so the acknowledged rate is the durable ingest rate. Afterwards the HTTP
//! API counts the points stored for each device: every acknowledged message must be
//! there with all its fields (`lost` = acknowledged × fields − stored).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::Conn;
use crate::counters::Counters;
use crate::http;
use crate::procstat::CpuWindow;
use crate::publisher::{self, Limit};
use crate::report::Report;
use crate::subscriber::KEEP_ALIVE;
use crate::wire::{Doc, PublishTemplate};
use crate::{Run, Target};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Publishing connections, one device each.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// In-flight window of each publisher (unacknowledged QoS 1 PUBLISHes).
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Numeric fields per message (each becomes a point).
    #[arg(long, default_value_t = 5)]
    fields: usize,
    /// Device ids are `lg-<run>-<i>` [default: the generator's PID].
    #[arg(long)]
    run_id: Option<String>,
    /// Do not count the stored points through the HTTP API afterwards.
    #[arg(long)]
    no_verify: bool,
    #[command(flatten)]
    run: Run,
}

pub(crate) fn metric_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("f{i}")).collect()
}

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    if args.run.rate.is_some() || args.run.count.is_some() {
        bail!("telemetry runs for --duration as fast as acknowledgements allow (no --rate or --count)");
    }
    let run_id = args.run_id.clone().unwrap_or_else(|| std::process::id().to_string());
    let devices: Vec<String> = (0..args.publishers).map(|i| format!("lg-{run_id}-{i}")).collect();
    let metrics = metric_names(args.fields);
    // an hour ago, 1 ms per message: every message of a device has its own ts
    let base_ms = http::now_ms() - 3_600_000;
    let mut pubs = Vec::with_capacity(devices.len());
    for device in &devices {
        pubs.push(Conn::connect(target.addr, &format!("{device}-pub"), KEEP_ALIVE).await?);
    }

    let counters = Arc::new(Counters::default());
    let cpu = CpuWindow::start(target.broker_pid)?;
    let started = Instant::now();
    let limit = Limit { started, deadline: started + args.run.duration(), count: None, rate: None };
    let mut tasks = JoinSet::new();
    for (device, conn) in devices.iter().zip(pubs) {
        let doc = Doc::new("", &metrics, base_ms, true);
        let template = PublishTemplate::with_doc(&format!("devices/{device}/telemetry"), 1, doc);
        let counters = Arc::clone(&counters);
        let (window, drain) = (args.window, args.run.drain);
        tasks.spawn(async move { publisher::run_qos1(conn, template, limit, window, drain, counters).await });
    }
    let mut max_sent = 0;
    while let Some(r) = tasks.join_next().await {
        max_sent = max_sent.max(r.context("publisher panicked")?.context("publisher")?);
    }
    let publish_window = started.elapsed();
    let usage = cpu.stop()?;
    let sent = Counters::get(&counters.sent);
    let acked = Counters::get(&counters.acked);
    let fields = args.fields as u64;

    let mut report = Report::new("telemetry");
    report
        .add("qos", 1)
        .add("publishers", args.publishers)
        .add("window", args.window)
        .add("fields", args.fields)
        .add("payload", Doc::new("", &metrics, base_ms, true).len())
        .add_rate("rate", acked, publish_window)
        .add_rate("points_rate", acked * fields, publish_window)
        .add("sent", sent)
        .add("acked", acked)
        .add("unacked", sent - acked.min(sent));
    if !args.no_verify {
        let checked = Instant::now();
        let mut conn = target.http_conn().await?;
        let mut stored = 0;
        for device in &devices {
            stored += http::count_points(&mut conn, device, &metrics, base_ms, base_ms + max_sent).await?;
        }
        let expected = acked * fields;
        report
            .add("expected_points", expected)
            .add("stored_points", stored)
            .add("lost", expected.saturating_sub(stored))
            // stored but never acknowledged: committed after the publisher stopped waiting
            .add("stored_unacked_points", stored.saturating_sub(expected))
            .add("verify_s", format!("{:.2}", checked.elapsed().as_secs_f64()));
    }
    report
        .add_per_broker_cpu("points_per_broker_cpu_s", acked * fields, &usage)
        .add_per_stack_cpu("points_per_stack_cpu_s", acked * fields, &usage)
        .add_cpu(&usage);
    Ok(report)
}
