//! Latency: one publisher at a fixed rate, QoS 0, to one subscriber; each payload holds
//! the time it was written, and the subscriber takes the time its `read` returned.
//! Both run on their own OS thread with blocking sockets, so no scheduler sits between
//! the socket and the clock.

use std::io::{ErrorKind, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use tokio::time::Instant;

use crate::Target;
use crate::client::SyncConn;
use crate::parse_duration;
use crate::procstat::CpuWindow;
use crate::report::Report;
use crate::subscriber::KEEP_ALIVE;
use crate::wire::{self, PUBLISH, PublishTemplate};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Messages per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// PUBLISH payload size in bytes (at least 8: the timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Samples of the first part of the run are not counted (at most half the run).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
}

pub(crate) fn run(target: &Target, args: &Args) -> Result<Report> {
    let tag = format!("lg-{}", std::process::id());
    let topic = format!("lg/{}/latency", std::process::id());
    let mut sub = SyncConn::connect(target.addr, &format!("{tag}-sub"), KEEP_ALIVE)?;
    sub.subscribe(&topic, 0)?;
    sub.stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut publisher = SyncConn::connect(target.addr, &format!("{tag}-pub"), KEEP_ALIVE)?;

    let cpu = CpuWindow::start(target.broker_pid)?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // a short run keeps at least its second half
    let warmup_ns = args.warmup.min(args.duration / 2).as_nanos() as u64;
    let receiver = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("latency-sub".into())
            .spawn(move || receive(&mut sub, base, warmup_ns, &stop))?
    };

    let rate = args.rate.max(1);
    let total = (args.duration.as_secs_f64() * rate as f64) as u64;
    let template = PublishTemplate::new(&topic, 0, args.payload);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut sent = 0u64;
    let mut bursts = 0u64;
    while sent < total {
        // send everything due by now (more than one only when a sleep overslept)
        let due = ((base.elapsed().as_nanos() as u64).saturating_mul(rate) / 1_000_000_000 + 1).min(total);
        if due > sent {
            bursts += u64::from(due - sent > 1);
            while sent < due {
                template.put(&mut buf, 0, base.elapsed().as_nanos() as u64);
                sent += 1;
            }
            publisher.stream.write_all(&buf)?;
            buf.clear();
        }
        let next = base + Duration::from_nanos(sent * 1_000_000_000 / rate);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            sleep(wait);
        }
    }
    let publish_window = base.elapsed();
    sleep(Duration::from_millis(500));
    let usage = cpu.stop()?;
    stop.store(true, Ordering::Relaxed);
    let (mut samples, received) = receiver.join().map_err(|_| anyhow::anyhow!("subscriber panicked"))??;
    let mut out = BytesMut::new();
    wire::disconnect(&mut out);
    let _ = publisher.stream.write_all(&out);

    samples.sort_unstable();
    let pct = |q: f64| -> String {
        if samples.is_empty() {
            return "-".into();
        }
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        format!("{:.0}", samples[i] as f64 / 1000.0)
    };
    let mut report = Report::new("latency");
    report
        .add("qos", 0)
        .add("payload", args.payload)
        .add("target_rate", rate)
        .add_rate("send_rate", sent, publish_window)
        .add("sent", sent)
        .add("received", received)
        .add("samples", samples.len())
        .add("late_sends", bursts)
        .add("p50_us", pct(0.50))
        .add("p90_us", pct(0.90))
        .add("p99_us", pct(0.99))
        .add("p999_us", pct(0.999))
        .add("max_us", samples.last().map_or("-".into(), |m| format!("{:.0}", *m as f64 / 1000.0)))
        .add_cpu(&usage);
    Ok(report)
}

/// Reads until `stop`: latencies in ns of the messages stamped after the warm-up, and
/// how many messages arrived in all.
fn receive(conn: &mut SyncConn, base: Instant, warmup_ns: u64, stop: &AtomicBool) -> Result<(Vec<u64>, u64)> {
    let mut samples = Vec::with_capacity(1 << 20);
    let mut received = 0;
    let ping_every = Duration::from_secs(u64::from(KEEP_ALIVE) / 2);
    let mut pinged = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if pinged.elapsed() >= ping_every {
            let mut out = BytesMut::new();
            wire::pingreq(&mut out);
            (&conn.stream).write_all(&out)?;
            pinged = Instant::now();
        }
        match conn.fill() {
            Ok(0) => bail!("connection closed by the broker"),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("subscriber read"),
        }
        let now = base.elapsed().as_nanos() as u64;
        while let Some((frame, used)) = wire::parse(&conn.rbuf)? {
            if frame.kind() == PUBLISH {
                received += 1;
                let (_, payload) = frame.publish()?;
                if let Some(stamp) = wire::stamp_of(payload).filter(|s| *s >= warmup_ns) {
                    samples.push(now.saturating_sub(stamp));
                }
            }
            conn.rbuf.advance(used);
        }
    }
    Ok((samples, received))
}

/// Blocks this OS thread: the latency scenario's own thread, never a runtime's.
#[expect(clippy::disallowed_methods, reason = "runs on a dedicated OS thread, not on a tokio runtime")]
fn sleep(d: Duration) {
    std::thread::sleep(d);
}
