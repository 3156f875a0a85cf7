//! Fan-in: N publishers → 1 subscriber on `<prefix>/+`. Reports the rate the subscriber
//! received at and, at QoS 1, how many acknowledged messages never arrived.
//!
//! With `--lanes`, each publisher publishes in its device's own lane,
//! `devices/{device}/bench`, and the subscriber subscribes `devices/+/bench`; with
//! `--pub-credentials` and `--sub-username`/`--sub-password` they authenticate, so a
//! broker that checks ACLs checks every PUBLISH against the publisher's lane and the
//! subscription against its rules.

use std::path::{Path, PathBuf};
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
use crate::wire::{Login, PublishTemplate};
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
    /// Publish in device lanes: `devices/{device}/bench`, subscribed as
    /// `devices/+/bench`. The device is the publisher's user name from
    /// `--pub-credentials`, else `lg-<generator PID>-p<i>`.
    #[arg(long)]
    lanes: bool,
    /// The publishers' credentials: a file of `<user name> <password>` lines, line i
    /// for publisher i (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    pub_credentials: Option<PathBuf>,
    /// The subscriber's user name.
    #[arg(long, requires = "sub_password")]
    sub_username: Option<String>,
    /// The subscriber's password.
    #[arg(long, requires = "sub_username")]
    sub_password: Option<String>,
    /// The subscriber keeps its session (clean session 0): a broker that persists
    /// sessions writes every QoS 1 message for it to disk before the PUBACK (telehub),
    /// or keeps it in its persistence database (Mosquitto with `persistence true`).
    #[arg(long)]
    persistent_sub: bool,
    #[command(flatten)]
    run: Run,
}

pub(crate) async fn run(target: &Target, args: &Args) -> Result<Report> {
    let tag = format!("lg-{}", std::process::id());
    let prefix = format!("lg/{}/fan-in", std::process::id());
    let logins = match &args.pub_credentials {
        Some(path) => read_credentials(path, args.publishers)?,
        None => vec![Login::anonymous(); args.publishers],
    };
    let topics: Vec<String> = logins
        .iter()
        .enumerate()
        .map(|(i, login)| match (args.lanes, &login.username) {
            (true, Some(device)) => format!("devices/{device}/bench"),
            (true, None) => format!("devices/{tag}-p{i}/bench"),
            (false, _) => format!("{prefix}/{i}"),
        })
        .collect();
    let filter = if args.lanes { "devices/+/bench".to_owned() } else { format!("{prefix}/+") };
    let sub_login = match (&args.sub_username, &args.sub_password) {
        (Some(u), Some(p)) => Login::new(u.clone(), p.clone()),
        _ => Login::anonymous(),
    };
    let sub_login = Login { persistent: args.persistent_sub, ..sub_login };
    let mut sub = Conn::connect_as(target.addr, &format!("{tag}-sub"), KEEP_ALIVE, &sub_login).await?;
    sub.subscribe(&filter, args.qos).await?;
    let mut pubs = Vec::with_capacity(args.publishers);
    for (i, login) in logins.iter().enumerate() {
        pubs.push(Conn::connect_as(target.addr, &format!("{tag}-pub{i}"), KEEP_ALIVE, login).await?);
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
    for (conn, topic) in pubs.into_iter().zip(&topics) {
        let template = PublishTemplate::new(topic, args.qos, args.run.payload);
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
        .add("lanes", args.lanes)
        .add("auth", if args.pub_credentials.is_some() { "credentials" } else { "none" })
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

/// `n` logins from a file of `<user name> <password>` lines.
fn read_credentials(path: &Path, n: usize) -> Result<Vec<Login>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let logins = parse_credentials(&text).with_context(|| format!("in {}", path.display()))?;
    if logins.len() < n {
        anyhow::bail!("{}: {} credentials for {n} publishers", path.display(), logins.len());
    }
    Ok(logins.into_iter().take(n).collect())
}

fn parse_credentials(text: &str) -> Result<Vec<Login>> {
    let mut logins = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(user), Some(password), None) => logins.push(Login::new(user, password)),
            _ => anyhow::bail!("line {}: expected `<user name> <password>`", no + 1),
        }
    }
    Ok(logins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_parse() {
        let logins = parse_credentials("# device token\nd1 thd_a\n\n  d2   thd_b \n").unwrap();
        let pairs: Vec<(String, Vec<u8>)> =
            logins.into_iter().map(|l| (l.username.unwrap(), l.password.unwrap())).collect();
        assert_eq!(pairs, [("d1".into(), b"thd_a".to_vec()), ("d2".into(), b"thd_b".to_vec())]);
        assert!(parse_credentials("d1\n").is_err());
        assert!(parse_credentials("d1 a b\n").is_err());
    }
}
