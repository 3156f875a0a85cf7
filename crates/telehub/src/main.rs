//! The `telehub` command: flags → config → tracing → `App`. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use telehub::app::App;
use telehub::config::{Config, DEFAULT_TOML, Overrides};

#[derive(Parser, Debug)]
#[command(
    name = "telehub",
    version,
    about = "IoT hub: MQTT broker, telemetry store, commands, rules, webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML), layered over the embedded default.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT/TCP listen address (overrides `mqtt.listen`).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    mqtt_listen: Option<SocketAddr>,
    /// MQTT/TLS listen address (overrides `mqtt.tls.listen`; TLS is on when
    /// `mqtt.tls.cert` and `mqtt.tls.key` are set).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    mqtts_listen: Option<SocketAddr>,
    /// MQTT over WebSocket listen address, path `/mqtt` (overrides `mqtt.ws.listen`).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    ws_listen: Option<SocketAddr>,
    /// MQTT over secure WebSocket listen address, path `/mqtt`; needs TLS (overrides
    /// `mqtt.ws.tls_listen`).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    wss_listen: Option<SocketAddr>,
    /// HTTP listen address (overrides `http.listen`).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    http_listen: Option<SocketAddr>,
    /// HTTPS listen address, with the `[mqtt.tls]` certificate (overrides
    /// `http.https_listen`).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    https_listen: Option<SocketAddr>,
    /// Accept devices that present no credentials (MQTT and HTTP ingest; the admin API
    /// always needs a token). Sets `auth.allow_anonymous`.
    #[arg(long, global = true)]
    allow_anonymous: bool,
    /// Store telemetry in PostgreSQL at this URL (`postgres://user:pass@host:port/db`)
    /// instead of SQLite in the data directory (overrides `store.url`).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How long shutdown may take before telehub exits anyway.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = telehub_core_duration)]
    shutdown_grace: Duration,
}

fn telehub_core_duration(s: &str) -> Result<Duration, String> {
    telehub_core::duration::parse(s)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub (the default).
    Serve,
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make an admin API token and print it (once).
    Create {
        /// A scope: read, write (includes read) or admin (includes write); repeatable.
        #[arg(long = "scope", required = true, value_name = "SCOPE")]
        scopes: Vec<telehub_hub::registry::Scope>,
        /// A label shown in `GET /api/v1/tokens` and the audit log.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Expire after this long (e.g. `30d`); never without it.
        #[arg(long, value_name = "DURATION", value_parser = telehub_core_duration)]
        expires_in: Option<Duration>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the commented default config.
    Print,
    /// Print the effective config after every layer.
    Show,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        mqtt_listen: cli.mqtt_listen,
        mqtts_listen: cli.mqtts_listen,
        ws_listen: cli.ws_listen,
        wss_listen: cli.wss_listen,
        http_listen: cli.http_listen,
        https_listen: cli.https_listen,
        allow_anonymous: cli.allow_anonymous,
        database_url: cli.database_url.clone(),
    };
    if let Some(Command::Config(ConfigCommand::Print)) = cli.command {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("telehub: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Config(ConfigCommand::Show)) = cli.command {
        match toml::to_string(&config) {
            Ok(s) => print!("{s}"),
            Err(e) => eprintln!("telehub: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.log_format);
    if let Some(Command::Token(TokenCommand::Create { scopes, name, expires_in })) = cli.command {
        return token_create(&config, scopes, name, expires_in);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("telehub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signal = match shutdown_signal() {
            Ok(signal) => signal,
            Err(e) => {
                eprintln!("telehub: cannot install the SIGINT/SIGTERM handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let app = match App::bind(config).await {
            Ok(app) => app,
            Err(e) => {
                let message = e.to_string();
                eprintln!("telehub: {message}");
                if let Some(source) = std::error::Error::source(&e) {
                    let source = source.to_string();
                    if !message.contains(&source) {
                        eprintln!("  caused by: {source}");
                    }
                }
                return ExitCode::from(2);
            }
        };
        match app.run_until(signal, cli.shutdown_grace).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "unclean shutdown");
                ExitCode::FAILURE
            }
        }
    })
}

fn token_create(
    config: &Config,
    scopes: Vec<telehub_hub::registry::Scope>,
    name: String,
    expires_in: Option<Duration>,
) -> ExitCode {
    let expires_at = expires_in.map(|d| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from((now + d).as_millis()).unwrap_or(i64::MAX)
    });
    let made = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(telehub::app::create_token(config, name, scopes, expires_at)));
    match made {
        Ok((info, secret)) => {
            let scopes: Vec<&str> = info.scopes.iter().map(|s| s.as_str()).collect();
            eprintln!("token {} ({}) with scopes {}; shown once:", info.id, info.name, scopes.join(", "));
            println!("{secret}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("telehub: cannot create the token: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that completes on
/// either. Installed before anything is bound: a handler installed on first poll (as
/// `tokio::signal::ctrl_c()` does) would leave a window after the start-up line in which a
/// signal still has its default action and kills telehub without draining (exit 130/143).
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
