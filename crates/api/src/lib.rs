//! telehub's HTTP API (axum): telemetry ingest over HTTP, the query API, health checks.
//!
//! # Layout
//!
//! * this file: [`Config`] (the `[http]` section), [`Server`] (`bind` → `run(shutdown)`)
//!   and [`router`], the routes with their shared state.
//! * `extract`: request parts as telehub values (body within the size limit, device id
//!   from the path, query strings), refusing bad ones with an `ApiError`.
//! * `data`: `POST /data`, the Flask tutorial's endpoint with its own answer shapes.
//! * `telemetry`: `POST`/`GET /api/v1/devices/{id}/telemetry` (ingest; raw, aggregated,
//!   CSV).
//! * `devices`: `GET /api/v1/devices`, `GET /api/v1/devices/{id}/latest`.
//! * `ops`: `GET /healthz`, `GET /readyz`, the request log (`debug`).
//! * `error`: `ApiError` → status + `application/problem+json`, the only place statuses
//!   are chosen.

mod data;
mod devices;
mod error;
mod extract;
mod ops;
mod telemetry;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use serde::{Deserialize, Serialize};
use telehub_hub::ingest::Ingest;
use telehub_store::TelemetryStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
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
            max_body_bytes: 4 * 1024 * 1024,
            max_page: 10_000,
            max_buckets: 100_000,
        }
    }
}

/// The HTTP listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {source}")]
pub struct BindError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// What every handler shares.
pub(crate) struct AppState<S> {
    pub(crate) store: Arc<S>,
    pub(crate) ingest: Ingest,
    pub(crate) config: Arc<Config>,
    /// The broker's counters for `/metrics`, once [`Server::broker_stats`] gave them.
    pub(crate) broker: Arc<OnceLock<Arc<telehub_broker::Stats>>>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            ingest: self.ingest.clone(),
            config: self.config.clone(),
            broker: self.broker.clone(),
        }
    }
}

/// Every route, with `store` answering queries and `ingest` taking telemetry.
pub fn router<S: TelemetryStore>(config: Config, store: Arc<S>, ingest: Ingest) -> Router {
    router_with(config, store, ingest, Arc::default())
}

fn router_with<S: TelemetryStore>(
    config: Config,
    store: Arc<S>,
    ingest: Ingest,
    broker: Arc<OnceLock<Arc<telehub_broker::Stats>>>,
) -> Router {
    let body_limit = config.max_body_bytes;
    let state = AppState { store, ingest, config: Arc::new(config), broker };
    Router::new()
        .route("/data", post(data::post::<S>))
        .route("/api/v1/devices", get(devices::list::<S>))
        .route("/api/v1/devices/{id}/latest", get(devices::latest::<S>))
        .route("/api/v1/devices/{id}/telemetry", get(telemetry::query::<S>).post(telemetry::post::<S>))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz::<S>))
        .route("/metrics", get(ops::metrics::<S>))
        .fallback(error::no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(ops::log_request))
        .with_state(state)
}

/// The HTTP API with its listener bound; nothing is served until [`Server::run`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    broker: Arc<OnceLock<Arc<telehub_broker::Stats>>>,
}

impl Server {
    /// Binds `config.listen`.
    ///
    /// # Errors
    ///
    /// [`BindError`] naming the address.
    pub async fn bind<S: TelemetryStore>(
        config: Config,
        store: Arc<S>,
        ingest: Ingest,
    ) -> Result<Self, BindError> {
        let want = config.listen;
        let err = |source| BindError { addr: want, source };
        let listener = TcpListener::bind(want).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let broker = Arc::default();
        let router = router_with(config, store, ingest, Arc::clone(&broker));
        Ok(Self { listener, addr, router, broker })
    }

    /// Adds the broker's counters to `GET /metrics`.
    pub fn broker_stats(&self, stats: Arc<telehub_broker::Stats>) {
        let _ = self.broker.set(stats);
    }

    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`, then stops accepting and waits for the requests in
    /// progress to finish (their ingest commits included).
    ///
    /// # Errors
    ///
    /// Only an I/O error of the listener itself.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // one response per write already; NODELAY keeps a split head/body write from
        // waiting for the client's delayed ACK (as the broker's listener does)
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}
