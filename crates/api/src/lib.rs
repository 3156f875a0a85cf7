//! telehub's HTTP API (axum): telemetry ingest over HTTP, the query API, the device
//! registry and its security (admin tokens, device credentials, ACL rules, audit log),
//! health checks; over HTTP and HTTPS.
//!
//! # Layout
//!
//! * this file: [`Config`] (the `[http]` section), [`Server`] (`bind` → `run(shutdown)`)
//!   and [`router`], the routes with their shared state.
//! * `auth`: the guard in front of every route (IP allowlist, admin tokens with scopes,
//!   device credentials on the ingest endpoints, rate limits, audit of refusals) and
//!   the extractors handlers take the caller from.
//! * `https`: the TLS listener, the redirect from HTTP, `[http.acme]`; `acme` (the `acme`
//!   cargo feature): its certificate from Let's Encrypt or another ACME CA.
//! * `extract`: request parts as telehub values (body within the size limit, JSON
//!   bodies, device id from the path, query strings), refusing bad ones with an
//!   `ApiError`.
//! * `data`: `POST /data`, the Flask tutorial's endpoint with its own answer shapes.
//! * `telemetry`: `POST`/`GET /api/v1/devices/{id}/telemetry` (ingest; raw, aggregated,
//!   CSV).
//! * `devices`: `/api/v1/devices` (registry CRUD merged with the store's devices,
//!   export/import), `GET /api/v1/devices/{id}/latest`.
//! * `credentials`: `/api/v1/devices/{id}/credentials`.
//! * `commands`: `/api/v1/devices/{id}/commands` (create, list, get, cancel; the device's
//!   long-poll `…/next` and `…/{cid}/ack`). `state`: `/api/v1/devices/{id}/state` (the
//!   shadow: desired, reported, delta).
//! * `acl`: `/api/v1/acl`. `tokens`: `/api/v1/tokens`. `audit`: `GET /api/v1/audit`.
//! * `rules`: `/api/v1/rules` (rules with their stats; config rules read-only) and
//!   `GET /api/v1/alerts`.
//! * `ops`: `GET /healthz`, `GET /readyz`, `GET /metrics`, the request log (`debug`).
//! * `webhooks`: `/api/v1/webhooks` (outbound endpoints, deliveries, replay) and
//!   `Hooks`; `hooks`: `POST /hooks/{name}` (inbound, signature-checked); `stream`:
//!   `GET /api/v1/stream` (SSE and WebSocket).
//! * `error`: `ApiError` → status + `application/problem+json`, the only place statuses
//!   are chosen.

mod acl;
#[cfg(feature = "acme")]
mod acme;
mod audit;
mod auth;
mod commands;
mod credentials;
mod data;
mod devices;
mod error;
mod extract;
mod hooks;
mod https;
mod ops;
mod rules;
mod state;
mod stream;
mod telemetry;
mod tokens;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::serve::ListenerExt as _;
use serde::{Deserialize, Serialize};
use telehub_hub::ingest::Ingest;
use telehub_hub::registry::Registry;
use telehub_store::{RegistryStore, TelemetryStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::https::{AcmeConfig, AcmeStatus, LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING, TlsError};
pub use crate::webhooks::Hooks;

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Address of the HTTPS listener, which serves the same API with the certificate and
    /// key of `[mqtt.tls]` (or `[http.acme]`'s); none: no HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_listen: Option<SocketAddr>,
    /// With `https_listen`: the HTTP listener answers every request with a 308 redirect
    /// to the same URL on HTTPS, and serves nothing itself.
    pub redirect_to_https: bool,
    /// `[http.acme]`: certificates from Let's Encrypt (needs the `acme` build feature).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
    /// Largest request body, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Most raw points one telemetry page may ask for (`limit`).
    pub max_page: usize,
    /// Most buckets one aggregate answer may hold.
    pub max_buckets: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            https_listen: None,
            redirect_to_https: false,
            acme: None,
            max_body_bytes: 4 * 1024 * 1024,
            max_page: 10_000,
            max_buckets: 100_000,
        }
    }
}

/// The HTTP API cannot start: a listener cannot be opened, or the HTTPS or ACME settings
/// cannot be used. Each message names the address, file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A listener cannot be opened.
    #[error("cannot listen for {scheme} on {addr}: {source}")]
    Listen {
        /// "HTTP" or "HTTPS".
        scheme: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key of the HTTPS listener cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The settings do not go together, or ask for what this build cannot do.
    #[error("{0}")]
    Config(String),
}

/// What every handler shares.
pub(crate) struct AppState<S> {
    pub(crate) store: Arc<S>,
    pub(crate) ingest: Ingest,
    pub(crate) registry: Registry<S>,
    pub(crate) config: Arc<Config>,
    /// The broker's counters for `/metrics`, once [`Server::broker_stats`] gave them.
    pub(crate) broker: Arc<OnceLock<Arc<telehub_broker::Stats>>>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            ingest: self.ingest.clone(),
            registry: self.registry.clone(),
            config: self.config.clone(),
            broker: self.broker.clone(),
        }
    }
}

/// Every route, with `store` answering queries, `ingest` taking telemetry and `registry`
/// deciding who may do what (see `auth`).
///
/// Served without `ConnectInfo` (in-process, as tests do), every client's address is
/// `0.0.0.0`.
pub fn router<S: TelemetryStore + RegistryStore>(
    config: Config,
    store: Arc<S>,
    ingest: Ingest,
    registry: Registry<S>,
) -> Router {
    router_with(config, store, ingest, registry, Arc::default())
}

fn router_with<S: TelemetryStore + RegistryStore>(
    config: Config,
    store: Arc<S>,
    ingest: Ingest,
    registry: Registry<S>,
    broker: Arc<OnceLock<Arc<telehub_broker::Stats>>>,
) -> Router {
    let body_limit = config.max_body_bytes;
    let state = AppState { store, ingest, registry, config: Arc::new(config), broker };
    Router::new()
        .route("/data", post(data::post::<S>))
        .route("/api/v1/devices", get(devices::list::<S>).post(devices::create::<S>))
        .route("/api/v1/devices/export", get(devices::export::<S>))
        .route("/api/v1/devices/import", post(devices::import::<S>))
        .route(
            "/api/v1/devices/{id}",
            get(devices::get::<S>).patch(devices::update::<S>).delete(devices::delete::<S>),
        )
        .route("/api/v1/devices/{id}/latest", get(devices::latest::<S>))
        .route("/api/v1/devices/{id}/telemetry", get(telemetry::query::<S>).post(telemetry::post::<S>))
        .route("/api/v1/devices/{id}/credentials", get(credentials::list::<S>).post(credentials::create::<S>))
        .route("/api/v1/devices/{id}/credentials/{cid}", delete(credentials::delete::<S>))
        .route("/api/v1/devices/{id}/commands", get(commands::list).post(commands::create))
        .route("/api/v1/devices/{id}/commands/next", get(commands::next))
        .route("/api/v1/devices/{id}/commands/{cid}", get(commands::get).delete(commands::cancel))
        .route("/api/v1/devices/{id}/commands/{cid}/ack", post(commands::ack))
        .route("/api/v1/devices/{id}/state", get(state::get).patch(state::patch_state))
        .route("/api/v1/devices/{id}/state/desired", get(state::get_desired).patch(state::patch_desired))
        .route("/api/v1/acl", get(acl::list::<S>).post(acl::create::<S>))
        .route("/api/v1/acl/{rid}", delete(acl::delete::<S>))
        .route("/api/v1/tokens", get(tokens::list::<S>).post(tokens::create::<S>))
        .route("/api/v1/tokens/{tid}", delete(tokens::delete::<S>))
        .route("/api/v1/audit", get(audit::query::<S>))
        .route("/api/v1/rules", get(rules::list).post(rules::create::<S>))
        .route("/api/v1/rules/{name}", get(rules::get).put(rules::put::<S>).delete(rules::delete::<S>))
        .route("/api/v1/alerts", get(rules::alerts))
        .route("/api/v1/webhooks", get(webhooks::list).post(webhooks::create::<S>))
        .route("/api/v1/webhooks/stats", get(webhooks::stats))
        .route(
            "/api/v1/webhooks/{wid}",
            get(webhooks::get).patch(webhooks::update::<S>).delete(webhooks::delete),
        )
        .route("/api/v1/webhooks/{wid}/deliveries", get(webhooks::deliveries))
        .route("/api/v1/webhooks/{wid}/deliveries/replay", post(webhooks::replay::<S>))
        .route("/api/v1/stream", get(stream::stream::<S>))
        .route("/hooks/{name}", post(hooks::post::<S>))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz::<S>))
        .route("/metrics", get(ops::metrics::<S>))
        .fallback(error::no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard::<S>))
        .layer(axum::middleware::from_fn(ops::log_request))
        .with_state(state)
}

/// [`router`] with the command and device-state routes served by `commands` (without
/// it they answer 503).
pub fn router_with_commands(
    config: Config,
    store: Arc<telehub_store::Store>,
    ingest: Ingest,
    registry: Registry<telehub_store::Store>,
    commands: telehub_hub::commands::Commands<telehub_store::Store>,
) -> Router {
    let slot: commands::CommandsSlot = Arc::new(OnceLock::from(commands));
    router(config, store, ingest, registry).layer(axum::Extension(slot))
}

/// `router` with the rule and alert routes served by `rules` (without it they answer
/// 503).
pub fn with_rules(router: Router, rules: telehub_hub::rules::Rules<telehub_store::Store>) -> Router {
    let slot: rules::RulesSlot = Arc::new(OnceLock::from(rules));
    router.layer(axum::Extension(slot))
}

/// The HTTP API with its listeners bound; nothing is served until [`Server::run`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    https: Option<(https::TlsListener, SocketAddr)>,
    router: Router,
    /// What the plain listener serves instead of `router` (`redirect_to_https`).
    redirect: Option<Router>,
    broker: Arc<OnceLock<Arc<telehub_broker::Stats>>>,
    /// The rules service, once [`Server::rules`] gave it.
    rules: rules::RulesSlot,
    /// The command service, once [`Server::commands`] gave it.
    commands: commands::CommandsSlot,
    /// What the webhook and stream routes use, once [`Server::hooks`] gave it.
    hooks: webhooks::HooksSlot,
}

impl Server {
    /// Checks the HTTPS and ACME settings, reads the certificate, and binds
    /// `config.listen` and `config.https_listen`.
    ///
    /// `tls` is the `(certificate, private key)` PEM files the HTTPS listener uses (those
    /// of `[mqtt.tls]`); `https_listen` without them is refused.
    ///
    /// # Errors
    ///
    /// [`BindError`] naming the address, file or setting at fault.
    pub async fn bind<S: TelemetryStore + RegistryStore>(
        config: Config,
        store: Arc<S>,
        ingest: Ingest,
        registry: Registry<S>,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, BindError> {
        let https_config = match (&config.acme, config.https_listen, &tls) {
            (Some(acme), https_listen, _) => {
                acme.validate().map_err(BindError::Config)?;
                if https_listen.is_none() {
                    return Err(BindError::Config("`http.acme` needs `http.https_listen`".into()));
                }
                Some(https::Certs::acme(acme).map_err(BindError::Config)?)
            }
            (None, Some(_), Some((cert, key))) => Some(https::Certs::files(cert, key)?),
            (None, Some(_), None) => {
                return Err(BindError::Config(
                    "`http.https_listen` needs a certificate: set `mqtt.tls.cert` and `mqtt.tls.key`".into(),
                ));
            }
            (None, None, _) => None,
        };
        if config.redirect_to_https && config.https_listen.is_none() {
            tracing::warn!("`http.redirect_to_https` does nothing without `http.https_listen`");
        }
        let listen = async |scheme, want| {
            let err = |source| BindError::Listen { scheme, addr: want, source };
            let listener = TcpListener::bind(want).await.map_err(err)?;
            let addr = listener.local_addr().map_err(err)?;
            Ok::<_, BindError>((listener, addr))
        };
        let (listener, addr) = listen("HTTP", config.listen).await?;
        let https = match (config.https_listen, https_config) {
            (Some(want), Some(certs)) => {
                let (tcp, addr) = listen("HTTPS", want).await?;
                Some((https::TlsListener::new(tcp, certs), addr))
            }
            _ => None,
        };
        let redirect = match &https {
            Some((_, https_addr)) if config.redirect_to_https => {
                Some(https::redirect_router(https_addr.port()))
            }
            _ => None,
        };
        let broker = Arc::default();
        let router = router_with(config, store, ingest, registry, Arc::clone(&broker));
        let hooks = webhooks::HooksSlot::default();
        let router = router.layer(axum::Extension(Arc::clone(&hooks)));
        let commands = commands::CommandsSlot::default();
        let router = router.layer(axum::Extension(Arc::clone(&commands)));
        let rules = rules::RulesSlot::default();
        let router = router.layer(axum::Extension(Arc::clone(&rules)));
        Ok(Self { listener, addr, https, router, redirect, broker, hooks, commands, rules })
    }

    /// Adds the broker's counters to `GET /metrics`.
    pub fn broker_stats(&self, stats: Arc<telehub_broker::Stats>) {
        let _ = self.broker.set(stats);
    }

    /// Serves the rule and alert routes with `rules` (503 until then).
    pub fn rules(&self, rules: telehub_hub::rules::Rules<telehub_store::Store>) {
        let _ = self.rules.set(rules);
    }

    /// Serves the webhook, inbound-hook and stream routes with `hooks` (503 until then).
    pub fn hooks(&self, hooks: Hooks) {
        let _ = self.hooks.set(hooks);
    }

    /// Serves the command and device-state routes with `commands` (503 until then).
    pub fn commands(&self, commands: telehub_hub::commands::Commands<telehub_store::Store>) {
        let _ = self.commands.set(commands);
    }

    /// The bound HTTP address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound HTTPS address, when `https_listen` is set.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(_, addr)| *addr)
    }

    /// With `[http.acme]` (the `acme` feature): what the certificate renewal has done
    /// (deployed, ordered, failures and the last error), updated while [`Server::run`]
    /// runs.
    pub fn acme_status(&self) -> Option<tokio::sync::watch::Receiver<AcmeStatus>> {
        self.https.as_ref().and_then(|(tls, _)| tls.acme_status())
    }

    /// Serves until `shutdown`, then stops accepting and waits for the requests in
    /// progress to finish (their ingest commits included). With `[http.acme]`, the
    /// certificate is ordered and renewed meanwhile, until `shutdown`.
    ///
    /// # Errors
    ///
    /// Only an I/O error of a listener itself.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // one response per write already; NODELAY keeps a split head/body write from
        // waiting for the client's delayed ACK (as the broker's listener does)
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let plain_app = self.redirect.unwrap_or_else(|| self.router.clone());
        let plain = axum::serve(listener, plain_app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let Some((mut tls, _)) = self.https else { return plain.await };
        let renewal = https::renew(tls.take_renewal(), shutdown.clone());
        // the no-op tap gives the TLS listener axum's `ConnectInfo<SocketAddr>`
        let tls = tls.tap_io(|_: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>| {});
        let secure = axum::serve(tls, self.router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.cancelled_owned());
        let (plain, secure, ()) = tokio::join!(plain.into_future(), secure.into_future(), renewal);
        plain.and(secure)
    }
}
