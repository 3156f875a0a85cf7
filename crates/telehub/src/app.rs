//! [`App`]: binds everything telehub serves, reports where, runs until a signal, drains.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use telehub_broker::Broker;
use telehub_hub::commands::Commands;
use telehub_hub::events::{Events, HubEvent, Tap};
use telehub_hub::ingest::{self, Ingest};
use telehub_hub::registry::{Registry, RegistryError, Revoked};
use telehub_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;

/// Hub events kept for the slowest listener (webhooks, live streams).
const EVENT_BUFFER: usize = 4096;

/// Start-up failed for a reason the operator must fix (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be created or written.
    #[error("data directory {path} is not usable: {source}")]
    DataDir {
        /// The configured directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] telehub_store::StoreError),
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] telehub_broker::BindError),
    /// The HTTP listener could not bind.
    #[error(transparent)]
    Http(#[from] telehub_api::BindError),
    /// The registry could not be loaded, or the first admin token made.
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// A `[[rules]]` entry does not compile, or the stored rules cannot be read.
    #[error(transparent)]
    Rules(#[from] telehub_hub::rules::RulesError),
}

/// telehub with its store open and its sockets bound; nothing runs yet.
pub struct App {
    broker: Broker,
    /// Hub events (presence, commands, alerts).
    events: Events,
    registry: Registry<Store>,
    /// The admin token generated at this start, shown once.
    first_token: Option<String>,
    http: telehub_api::Server,
    store: Arc<Store>,
    ingest_writer: ingest::Writer<Store>,
    /// Commits the broker's durable state (`[mqtt] persistence`).
    persist_writer: Option<telehub_hub::persist::Writer<Store>>,
    data_dir: PathBuf,
    config: Config,
    /// The rules service and its feed of accepted messages.
    rules: (telehub_hub::rules::Rules<Store>, tokio::sync::mpsc::Receiver<Arc<telehub_core::Message>>),
    /// Webhooks and live streams, to start with the rest.
    webhooks: crate::webhooks::Parts,
    /// Commands to devices, and its feed of device messages (acks, state reports).
    commands: (Commands<Store>, tokio::sync::mpsc::Receiver<Arc<telehub_core::Message>>),
}

impl App {
    /// Checks the data directory, opens the store and binds the listeners (MQTT, then
    /// HTTP).
    ///
    /// # Errors
    ///
    /// [`StartError`] naming the path or address at fault.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let data_dir = prepare_data_dir(&config.data_dir)?;
        let store = Arc::new(Store::open(&config.store, &data_dir).await?);
        let registry =
            Registry::open(store.clone(), config.auth.clone(), config.ingest.mappings.clone()).await?;
        let env_token = std::env::var("TELEHUB_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
        let first_token = registry.bootstrap_admin(env_token.as_deref()).await?;
        let (ingest, ingest_writer) = Ingest::new(config.ingest.clone(), store.clone());
        // hub events (presence, commands, alerts) for webhooks and live streams
        let events = Events::new(EVENT_BUFFER);
        registry.on_presence({
            let events = events.clone();
            move |device, online| {
                let (device, at) = (device.to_string(), telehub_hub::timestamp::now().0);
                events.emit(if online {
                    HubEvent::DeviceConnected { device, at }
                } else {
                    HubEvent::DeviceDisconnected { device, at }
                });
            }
        });
        // every accepted message: telemetry ingest, then the hub's feeds
        let mut tap = Tap::new(ingest.clone());
        // webhooks (a bounded feed) and live streams (a broadcast) see every message too
        let webhooks =
            crate::webhooks::Parts::bind(&mut tap, store.clone(), &config.webhooks, events.clone()).await?;
        // commands: device acks, MQTT 5 responses and state reports
        let command_feed = tap.feed("commands", config.commands.feed_capacity);
        // rules: the config file's and the stored ones, evaluated on a bounded feed
        let rules_feed = tap.feed("rules", telehub_hub::rules::service::FEED_CAPACITY);
        let rules = telehub_hub::rules::Rules::open(
            store.clone(),
            telehub_hub::rules::EngineConfig::default(),
            config.rules.clone(),
            events.clone(),
        )
        .await?;
        let mut broker = Broker::bind(config.mqtt.clone(), Some(Arc::new(tap))).await?;
        broker.set_authenticator(Arc::new(registry.clone()));
        // retained messages and persistent sessions as they were at the last stop
        let persist_writer = if config.mqtt.persistence {
            let snapshot = telehub_hub::persist::load(&*store).await?;
            let (journal, writer) =
                telehub_hub::persist::Journal::new(store.clone(), telehub_hub::persist::DEFAULT_CAPACITY);
            let (sessions, _) = broker.restore(Arc::new(journal), snapshot);
            let deliveries = telehub_hub::persist::restore_deliveries(&*store, &mut broker).await?;
            info!(sessions, deliveries, "restored the broker's durable state");
            Some(writer)
        } else {
            None
        };
        let control = broker.control();
        registry.on_revoke(move |revoked| {
            let dropped = match revoked {
                Revoked::Device(device) => control.disconnect_where(|p| p.device.as_ref() == Some(device)),
                Revoked::Credential(id) => {
                    control.disconnect_where(|p| p.credential.as_deref() == Some(id.as_str()))
                }
            };
            if dropped > 0 {
                info!(?revoked, connections = dropped, "revoked: connections dropped");
            }
        });
        let tls = config.mqtt.tls.cert.clone().zip(config.mqtt.tls.key.clone());
        let http =
            telehub_api::Server::bind(config.http.clone(), store.clone(), ingest, registry.clone(), tls)
                .await?;
        http.broker_stats(broker.stats());
        http.rules(rules.clone());
        let rules = (rules, rules_feed);
        let commands = Commands::new(
            config.commands.clone(),
            store.clone(),
            registry.clone(),
            broker.control(),
            events.clone(),
        );
        http.commands(commands.clone());
        Ok(Self {
            broker,
            events,
            registry,
            first_token,
            http,
            store,
            ingest_writer,
            persist_writer,
            data_dir,
            config,
            webhooks,
            commands: (commands, command_feed),
            rules,
        })
    }

    /// The hub's event broadcast (device presence, commands, alerts).
    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// The bound MQTT address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// Every bound MQTT listener (TCP, and TLS/WebSocket when configured).
    pub fn mqtt_addrs(&self) -> telehub_broker::Addrs {
        self.broker.addrs()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The bound HTTPS address, when configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.http.https_addr()
    }

    /// Logs the start-up block, serves until `signal` completes, then drains in order,
    /// all within `grace`: stops accepting (MQTT and HTTP), disconnects MQTT clients
    /// (MQTT 5: reason 0x8B) and lets HTTP requests in progress finish; then commits
    /// what the ingest queue still holds; then closes the store (SQLite: checkpoint).
    ///
    /// # Errors
    ///
    /// When tasks are still running after `grace`.
    pub async fn run_until(self, signal: impl Future<Output = ()>, grace: Duration) -> anyhow::Result<()> {
        let addrs = self.mqtt_addrs();
        // the optional listeners: a field (omitted when `None`) and a URL in the message
        let mut extra = String::new();
        let https = self.https_addr();
        for (scheme, addr, path) in [
            ("mqtts", addrs.mqtts, ""),
            ("ws", addrs.ws, "/mqtt"),
            ("wss", addrs.wss, "/mqtt"),
            ("https", https, ""),
        ] {
            if let Some(addr) = addr {
                extra.push_str(&format!(", {scheme}://{addr}{path}"));
            }
        }
        info!(
            version = env!("CARGO_PKG_VERSION"),
            mqtt = %addrs.mqtt,
            mqtts = addrs.mqtts.map(tracing::field::display),
            ws = addrs.ws.map(tracing::field::display),
            wss = addrs.wss.map(tracing::field::display),
            http = %self.http_addr(),
            https = https.map(tracing::field::display),
            data_dir = %self.data_dir.display(),
            store = self.store.backend(),
            "telehub started: mqtt://{} (MQTT 3.1/3.1.1/5.0){extra}, http://{}, data in {}",
            addrs.mqtt,
            self.http_addr(),
            self.data_dir.display(),
        );
        if self.config.auth.allow_anonymous {
            warn!(
                "anonymous device access is on (auth.allow_anonymous / --allow-anonymous): clients without \
                 credentials may connect, publish, subscribe and ingest; the admin API still needs a token"
            );
        }
        if let Some(token) = &self.first_token {
            // on stderr with the logs, once: only its SHA-256 is stored
            eprintln!(
                "\nFirst admin token (shown once, keep it safe):\n\n    {token}\n\n\
                 Use it as `Authorization: Bearer <token>` on /api/v1/...; make more with\n\
                 `telehub token create --scope read|write|admin` or POST /api/v1/tokens,\n\
                 or set TELEHUB_ADMIN_TOKEN before the first start.\n"
            );
        }
        // producers (broker, HTTP) stop first; the ingest writer after them, so every
        // record they still wait for gets committed
        let shutdown = CancellationToken::new();
        let producers = TaskTracker::new();
        let rules_wiring = telehub_hub::rules::Wiring {
            control: self.broker.control(),
            sink: Arc::new(telehub_hub::rules::ServiceSink::new(
                self.commands.0.clone(),
                self.webhooks.service(),
                telehub_hub::rules::ControlSink::new(self.broker.control()),
            )),
            mappings: self.config.ingest.mappings.clone(),
            tags: {
                let registry = self.registry.clone();
                Arc::new(move |device| registry.device(device).map(|d| d.device.tags).unwrap_or_default())
            },
        };
        let dispatcher = self.webhooks.start(&self.http, self.broker.control(), &shutdown, &producers);
        producers.spawn({
            // HTTP long-polls for commands end with the HTTP server
            let (commands, shutdown) = (self.commands.0.clone(), shutdown.clone());
            async move {
                shutdown.cancelled().await;
                commands.release_polls();
            }
        });
        producers.spawn(self.broker.run(shutdown.clone()));
        producers.spawn({
            let shutdown = shutdown.clone();
            async move {
                if let Err(e) = self.http.run(shutdown).await {
                    error!(error = %e, "the HTTP server stopped");
                }
            }
        });
        producers.spawn(telehub_hub::retention::run(
            self.store.clone(),
            self.config.store.retention,
            shutdown.clone(),
        ));
        producers.close();
        let stop_ingest = CancellationToken::new();
        let writer = TaskTracker::new();
        writer.spawn(self.ingest_writer.run(stop_ingest.clone()));
        // the broker's durable state: its last ops are recorded before the broker stops
        if let Some(persist) = self.persist_writer {
            writer.spawn(persist.run(stop_ingest.clone()));
        }
        // the registry's audit writer stops with the ingest writer: after the producers
        writer.spawn(self.registry.run(stop_ingest.clone()));
        // the rules after the broker: they evaluate what the feed still holds, then stop
        let (rules, rules_feed) = self.rules;
        writer.spawn(rules.run(rules_feed, rules_wiring, stop_ingest.clone()));
        // the webhook dispatcher too: it commits the deliveries of the last messages
        writer.spawn(dispatcher.run(stop_ingest.clone()));
        // the command service too: acks and state reports of the last messages
        let (commands, command_feed) = self.commands;
        writer.spawn(commands.run(command_feed, stop_ingest.clone()));
        writer.close();
        signal.await;
        info!("shutting down");
        shutdown.cancel();
        let store = self.store;
        let drain = async move {
            producers.wait().await;
            stop_ingest.cancel();
            writer.wait().await;
            store.close().await;
        };
        tokio::time::timeout(grace, drain)
            .await
            .context("tasks still running after the shutdown grace period")?;
        info!("stopped");
        Ok(())
    }
}

fn prepare_data_dir(path: &Path) -> Result<PathBuf, StartError> {
    let err = |source| StartError::DataDir { path: path.to_owned(), source };
    std::fs::create_dir_all(path).map_err(err)?;
    // prove we can write here now, not at the first commit
    let probe = path.join(".telehub-write-check");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    std::fs::canonicalize(path).map_err(err)
}

/// `telehub token create`: makes an admin token in the configured store and returns its
/// secret. A running telehub accepts it within seconds (it reloads admin tokens when it
/// sees an unknown one).
///
/// # Errors
///
/// The store cannot be opened, or the token not saved.
pub async fn create_token(
    config: &Config,
    name: String,
    scopes: Vec<telehub_hub::registry::Scope>,
    expires_at: Option<i64>,
) -> anyhow::Result<(telehub_hub::registry::TokenInfo, String)> {
    let data_dir = prepare_data_dir(&config.data_dir)?;
    let store = Arc::new(Store::open(&config.store, &data_dir).await?);
    let registry = Registry::open(store.clone(), config.auth.clone(), config.ingest.mappings.clone()).await?;
    let made = registry.create_token(&telehub_hub::registry::Actor::cli(), name, scopes, expires_at).await;
    // write the audit event, then close
    let done = CancellationToken::new();
    done.cancel();
    registry.run(done).await;
    store.close().await;
    Ok(made?)
}
