//! Idle connections: opens N connections that CONNECT and then send nothing, and reports
//! how much the broker's resident memory grew per connection. A PINGREQ round on every
//! connection at the end checks they were all still alive.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::Target;
use crate::client::Conn;
use crate::parse_duration;
use crate::procstat::Proc;
use crate::report::Report;
use crate::wire::{self, Login, PINGRESP};

/// Keep-alive of the idle connections: longer than any hold, so they need no pings.
const KEEP_ALIVE: u16 = 600;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connection handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Wait after the last CONNACK before reading the broker's memory.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
    /// Keep the connections open this much longer before the liveness check.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    hold: Duration,
    /// Loopback source addresses to spread the connections over (127.0.0.1,
    /// 127.0.0.2, …): one address has about 28 000 ephemeral ports, so 50 000
    /// connections need 2 or more. Needs a loopback broker address.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
}

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    let Some(pid) = target.broker_pid else { bail!("idle needs --broker-pid to read the broker's memory") };
    let broker = Proc(Some(pid));
    let tag = format!("lg-{}-idle", std::process::id());
    let rss_before = broker.status_kib("VmRSS")?;
    let started = Instant::now();

    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut opening = JoinSet::new();
    for i in 0..args.connections {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let (addr, id) = (target.addr, format!("{tag}-{i}"));
        let local = (args.sources > 1).then(|| {
            let n = u8::try_from(i % usize::from(args.sources)).unwrap_or(0);
            std::net::IpAddr::from([127, 0, 0, 1 + n])
        });
        opening.spawn(async move {
            let conn = timeout(
                Duration::from_secs(30),
                Conn::connect_from(addr, local, &id, KEEP_ALIVE, &Login::anonymous(), 16),
            )
            .await;
            drop(permit);
            conn.map_err(anyhow::Error::from).and_then(|c| c)
        });
    }
    let mut conns = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = opening.join_next().await {
        match r.context("connect task panicked")? {
            Ok(c) => conns.push(c),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &first_error {
        eprintln!("{failed} connections failed; first: {e:#}");
    }
    let open_time = started.elapsed();
    tokio::time::sleep(args.settle).await;
    let rss_after = broker.status_kib("VmRSS")?;
    tokio::time::sleep(args.hold).await;

    let alive = ping_all(conns, args.concurrency).await;
    let connected = (args.connections - failed).max(1);
    let per_conn = (rss_after.saturating_sub(rss_before) * 1024) as f64 / connected as f64;
    let mut report = Report::new("idle");
    report
        .add("connections", args.connections - failed)
        .add("failed", failed)
        .add("open_s", format!("{:.2}", open_time.as_secs_f64()))
        .add("rss_before_kib", rss_before)
        .add("rss_after_kib", rss_after)
        .add("bytes_per_conn", format!("{per_conn:.0}"))
        .add("alive", alive)
        .add("broker_hwm_kib", broker.status_kib("VmHWM")?);
    Ok(report)
}

/// Sends PINGREQ on every connection and counts PINGRESPs within 10 s.
async fn ping_all(conns: Vec<Conn>, concurrency: usize) -> usize {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut pings = JoinSet::new();
    for mut conn in conns {
        let Ok(permit) = Arc::clone(&gate).acquire_owned().await else { break };
        pings.spawn(async move {
            let answered = timeout(Duration::from_secs(10), async {
                let mut out = BytesMut::new();
                wire::pingreq(&mut out);
                conn.stream.write_all(&out).await?;
                loop {
                    if let Some((frame, _)) = wire::parse(&conn.rbuf)? {
                        return anyhow::Ok(frame.kind() == PINGRESP);
                    }
                    conn.fill().await?;
                }
            })
            .await;
            // closed with a reset: no TIME_WAIT left on the loopback ports, which would
            // slow down the connects of the next run (the next broker) to this port
            let _ = conn.stream.set_zero_linger();
            drop(permit);
            matches!(answered, Ok(Ok(true)))
        });
    }
    let mut alive = 0;
    while let Some(r) = pings.join_next().await {
        alive += usize::from(matches!(r, Ok(true)));
    }
    alive
}
