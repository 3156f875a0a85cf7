//! Fan-in: N publishers → 1 subscriber on `<prefix>/+`. Reports the rate the subscriber
//! received at and, at QoS 1, how many acknowledged messages never arrived.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::Conn;
use crate::counters::Counters;
use crate::procstat::CpuWindow;
use crate::publisher::{self, Limit};
use crate::report::Report;
use crate::subscriber::{self, KEEP_ALIVE};
use crate::wire::PublishTemplate;
use crate::{Run, Target};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Publishing connections.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// QoS of the PUBLISHes and of the subscription (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// In-flight window of each QoS 1 publisher.
    #[arg(long, default_value_t = 100)]
    window: usize,
    #[command(flatten)]
    run: Run,
}

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    let tag = format!("lg-{}", std::process::id());
    let prefix = format!("lg/{}/fan-in", std::process::id());
    let mut sub = Conn::connect(target.addr, &format!("{tag}-sub"), KEEP_ALIVE).await?;
    sub.subscribe(&format!("{prefix}/+"), args.qos).await?;
    let mut pubs = Vec::with_capacity(args.publishers);
    for i in 0..args.publishers {
        pubs.push(Conn::connect(target.addr, &format!("{tag}-pub{i}"), KEEP_ALIVE).await?);
    }

    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let cpu = CpuWindow::start(target.broker_pid)?;
    let started = Instant::now();
    let n = args.publishers.max(1) as u64;
    let limit = Limit {
        started,
        deadline: started + args.run.duration(),
        count: args.run.count.map(|c| c.div_ceil(n)),
        rate: args.run.rate.map(|r| (r / n).max(1)),
    };
    let mut sub_task = JoinSet::new();
    sub_task.spawn(subscriber::run(sub, Arc::clone(&counters), started, stopped));
    let mut tasks = JoinSet::new();
    for (i, conn) in pubs.into_iter().enumerate() {
        let template = PublishTemplate::new(&format!("{prefix}/{i}"), args.qos, args.run.payload);
        let counters = Arc::clone(&counters);
        if args.qos == 0 {
            tasks
                .spawn(async move { publisher::run_qos0(conn, template, limit, counters).await.map(|_| ()) });
        } else {
            let (window, drain) = (args.window, args.run.drain);
            tasks.spawn(async move {
                publisher::run_qos1(conn, template, limit, window, drain, counters).await.map(|_| ())
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.context("publisher panicked")?.context("publisher")?;
    }
    let publish_window = started.elapsed();
    let sent = Counters::get(&counters.sent);
    let acked = Counters::get(&counters.acked);
    let expected = if args.qos == 0 { sent } else { acked };
    counters.wait_drained(expected, args.run.quiet, args.run.drain).await;
    let usage = cpu.stop()?;
    let _ = stop.send(true);
    subscriber::join_all(sub_task).await;

    let received = Counters::get(&counters.received);
    let mut report = Report::new("fan-in");
    report
        .add("qos", args.qos)
        .add("publishers", args.publishers)
        .add("payload", args.run.payload)
        .add_rate("rate", received, counters.receive_window())
        .add("sent", sent)
        .add_rate("send_rate", sent, publish_window)
        .add("received", received);
    if args.qos == 1 {
        report.add("acked", acked).add("lost", acked.saturating_sub(received)).add("window", args.window);
    } else {
        report.add("dropped", sent.saturating_sub(received));
    }
    report.add_per_broker_cpu("per_broker_cpu_s", received, &usage).add_cpu(&usage);
    Ok(report)
}
