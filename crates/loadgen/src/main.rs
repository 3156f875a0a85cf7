//! `telehub-loadgen`: MQTT load for benchmarking telehub against other brokers
//! (fan-in, fan-out, latency, idle connections, connection rate with and without
//! authentication), and telehub's telemetry ingest and queries (MQTT telemetry, HTTP
//! ingest, a long series and its aggregate). It speaks MQTT 3.1.1 and HTTP/1.1 through
//! its own small clients, so it shares no code with the server it measures.

mod client;
mod connect_rate;
mod counters;
mod fan_in;
mod fan_out;
mod http;
mod http_ingest;
mod idle;
mod latency;
mod procstat;
mod publisher;
mod report;
mod series;
mod subscriber;
mod telemetry;
mod wire;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::report::Report;

#[derive(Parser, Debug)]
#[command(
    name = "telehub-loadgen",
    version,
    about = "MQTT and HTTP load generator for broker and telehub benchmarks"
)]
struct Cli {
    /// The broker's MQTT/TCP address.
    #[arg(long, global = true, default_value = "127.0.0.1:1883", value_name = "ADDR:PORT")]
    host: SocketAddr,
    /// telehub's HTTP API address (the telemetry, http and series scenarios).
    #[arg(long, global = true, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    http: SocketAddr,
    /// telehub's admin token, sent as `Authorization: Bearer` on every `/api/v1`
    /// request.
    #[arg(long, global = true, env = "TELEHUB_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// The broker's PID, to report its CPU time and peak memory (read from /proc).
    #[arg(long, global = true, value_name = "PID")]
    broker_pid: Option<u32>,
    /// A database server's PID (PostgreSQL's postmaster), to report the CPU of it and
    /// its child processes as well (the telemetry, http and series scenarios).
    #[arg(long, global = true, value_name = "PID")]
    db_pid: Option<u32>,
    /// Generator threads (1 keeps the generator on one core; the latency scenario
    /// always uses one thread each for its publisher and subscriber).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N publishers → 1 subscriber.
    FanIn(fan_in::Args),
    /// 1 publisher → M subscribers, QoS 0.
    FanOut(fan_out::Args),
    /// Latency percentiles at a fixed QoS 0 publish rate.
    Latency(latency::Args),
    /// Broker memory per idle connection.
    Idle(idle::Args),
    /// Connections per second: CONNECT, CONNACK, DISCONNECT one after the other on W
    /// workers, anonymous, with a token or with a device-signed JWT.
    ConnectRate(connect_rate::Args),
    /// telehub: devices publish JSON telemetry at QoS 1; then the stored points are
    /// counted through the HTTP API (0 lost).
    Telemetry(telemetry::Args),
    /// telehub: HTTP telemetry ingest, `POST /data` or batched `POST
    /// /api/v1/devices/{id}/telemetry`; then the stored points are counted.
    Http(http_ingest::Args),
    /// telehub: loads a 1 Hz series of N days over HTTP, then times its aggregate query.
    Series(series::Args),
}

/// Where the broker is.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// telehub's HTTP API.
    pub(crate) http: SocketAddr,
    /// The admin token for telehub's `/api/v1`.
    pub(crate) token: Option<String>,
    pub(crate) broker_pid: Option<u32>,
}

impl Target {
    /// A keep-alive connection to the HTTP API, with the admin token if there is one.
    pub(crate) async fn http_conn(&self) -> anyhow::Result<http::HttpConn> {
        http::HttpConn::connect(self.http, self.token.as_deref().filter(|t| !t.is_empty())).await
    }
}

/// How long and how fast the throughput scenarios publish.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Run {
    /// PUBLISH payload size in bytes (at least 8).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// How long to publish [default: 10s; with --count, at most 300s].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Messages to publish in all (shared among the publishers).
    #[arg(long)]
    count: Option<u64>,
    /// Messages per second in all [default: as fast as the broker takes them].
    #[arg(long)]
    rate: Option<u64>,
    /// After publishing, how long to wait at most for the last deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// End the drain early once nothing arrived for this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    quiet: Duration,
}

impl Run {
    fn duration(&self) -> Duration {
        match (self.duration, self.count) {
            (Some(d), _) => d,
            (None, Some(_)) => Duration::from_secs(300),
            (None, None) => Duration::from_secs(10),
        }
    }
}

/// Parses "250ms", "10s", "2m" or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) =
        s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = number.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(pid) = cli.db_pid {
        procstat::set_db_pid(pid);
    }
    let target =
        Target { addr: cli.host, http: cli.http, token: cli.token.clone(), broker_pid: cli.broker_pid };
    let result = match &cli.scenario {
        Scenario::Latency(args) => latency::run(&target, args),
        scenario => run_async(cli.threads, &target, scenario),
    };
    match result {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("telehub-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(threads: usize, target: &Target, scenario: &Scenario) -> anyhow::Result<Report> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    runtime.block_on(async {
        match scenario {
            Scenario::FanIn(args) => fan_in::run(target, args).await,
            Scenario::FanOut(args) => fan_out::run(target, args).await,
            Scenario::Idle(args) => idle::run(target, args).await,
            Scenario::ConnectRate(args) => connect_rate::run(target, args).await,
            Scenario::Telemetry(args) => telemetry::run(target, args).await,
            Scenario::Http(args) => http_ingest::run(target, args).await,
            Scenario::Series(args) => series::run(target, args).await,
            Scenario::Latency(_) => unreachable!("latency runs on its own threads"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
