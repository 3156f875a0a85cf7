//! Fan-out: 1 publisher → M subscribers of one topic at QoS 0. Reports deliveries per
//! second summed over the subscribers.

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
    /// Subscribing connections.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[command(flatten)]
    run: Run,
}

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    let tag = format!("lg-{}", std::process::id());
    let topic = format!("lg/{}/fan-out", std::process::id());
    let mut subs = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let mut conn = Conn::connect(target.addr, &format!("{tag}-sub{i}"), KEEP_ALIVE).await?;
        conn.subscribe(&topic, 0).await?;
        subs.push(conn);
    }
    let publisher = Conn::connect(target.addr, &format!("{tag}-pub"), KEEP_ALIVE).await?;

    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let cpu = CpuWindow::start(target.broker_pid)?;
    let started = Instant::now();
    let limit = Limit {
        started,
        deadline: started + args.run.duration(),
        count: args.run.count,
        rate: args.run.rate,
    };
    let mut sub_tasks = JoinSet::new();
    for conn in subs {
        sub_tasks.spawn(subscriber::run(conn, Arc::clone(&counters), started, stopped.clone()));
    }
    let template = PublishTemplate::new(&topic, 0, args.run.payload);
    publisher::run_qos0(publisher, template, limit, Arc::clone(&counters)).await.context("publisher")?;
    let publish_window = started.elapsed();
    let sent = Counters::get(&counters.sent);
    let expected = sent * args.subscribers as u64;
    counters.wait_drained(expected, args.run.quiet, args.run.drain).await;
    let usage = cpu.stop()?;
    let _ = stop.send(true);
    subscriber::join_all(sub_tasks).await;

    let received = Counters::get(&counters.received);
    let mut report = Report::new("fan-out");
    report
        .add("qos", 0)
        .add("subscribers", args.subscribers)
        .add("payload", args.run.payload)
        .add_rate("rate", received, counters.receive_window())
        .add("sent", sent)
        .add_rate("send_rate", sent, publish_window)
        .add("delivered", received)
        .add("dropped", expected.saturating_sub(received))
        .add_per_broker_cpu("per_broker_cpu_s", received, &usage)
        .add_cpu(&usage);
    Ok(report)
}
