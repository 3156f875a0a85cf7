//! telehub's MQTT server: accepts connections, has an [`Authenticator`] decide who may
//! connect, publish and subscribe, runs each client's session, routes PUBLISHes to
//! subscribers, keeps retained messages and persistent sessions, and offers every
//! accepted message to the hub through [`IngestHook`].
//!
//! # Layout
//!
//! * [`config`]: [`Config`], the `[mqtt]` section of telehub's config.
//! * [`config`]: also `[mqtt.tls]` ([`config::TlsConfig`]) and `[mqtt.ws]`
//!   ([`config::WsConfig`]).
//! * `listener`: the accept loops (TCP, TLS, WebSocket, secure WebSocket); one tracked
//!   task per connection, which does its transport's handshakes.
//! * `tls`: certificate, key and client CA from PEM files; reload on SIGHUP or change.
//! * `ws`: the WebSocket upgrade (`/mqtt`, subprotocol `mqtt`) and its byte stream.
//! * [`auth`]: [`Authenticator`], who may connect, publish and subscribe, asked on every
//!   new socket (`accept`, in `listener`), at CONNECT (`authenticate`, and the will as a
//!   PUBLISH), on every PUBLISH and on every SUBSCRIBE filter (in `connection`);
//!   [`AllowAll`] without one ([`Broker::set_authenticator`]).
//! * [`control`]: [`Control`], the live connections by [`Principal`]
//!   ([`Control::disconnect_where`] when a device or credential goes away).
//! * `connection`: one client: CONNECT handshake and authentication, reader loop, writer
//!   task, keep-alive.
//! * `router`: the subscription trie and retained messages; fan-out.
//! * `sessions`: persistent sessions by client id, takeover, expiry, wills.
//! * [`hook`]: [`IngestHook`], how the hub sees every accepted message.
//! * [`persist`]: [`Persistence`], where durable sessions, their deliveries and retained
//!   messages are kept ([`Broker::restore`] at start); implemented by the hub.
//! * [`stats`]: [`Stats`], counters of connections, messages, drops and refusals.
//! * `sys`: the `$SYS/broker/...` topics, published from [`Stats`].

pub mod auth;
pub mod config;
mod connection;
pub mod control;
pub mod hook;
mod listener;
pub mod persist;
mod router;
mod sessions;
pub mod stats;
mod sys;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use telehub_mqtt::BrokerTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{AllowAll, Authenticator, ConnectInfo, Principal, PublishRefusal, Refusal, TransportKind};
pub use config::Config;
pub use control::Control;
pub use hook::{IngestAck, IngestError, IngestHook};
pub use persist::{Persistence, Snapshot};
pub use stats::Stats;
pub use tls::TlsError;

use listener::{Listener, Transport};

/// Opening the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A listener could not bind its address (in use, not permitted...).
    #[error("cannot listen for {transport} on {addr}")]
    Listen {
        /// "MQTT", "MQTT over TLS", "MQTT over WebSocket"...
        transport: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate, key or client CA cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `mqtt.ws.tls_listen` is set without `[mqtt.tls]` `cert` and `key`.
    #[error("`mqtt.ws.tls_listen` is set but TLS is not: set `mqtt.tls.cert` and `mqtt.tls.key`")]
    WssWithoutTls,
}

/// Where the broker's listeners are bound (the real ports when the config said 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// MQTT over TCP.
    pub mqtt: SocketAddr,
    /// MQTT over TLS, when configured.
    pub mqtts: Option<SocketAddr>,
    /// MQTT over WebSocket, when configured.
    pub ws: Option<SocketAddr>,
    /// MQTT over secure WebSocket, when configured.
    pub wss: Option<SocketAddr>,
}

/// State every connection shares: config, router, sessions, counters.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: router::Router,
    pub(crate) sessions: sessions::Sessions,
    pub(crate) hook: Option<Arc<dyn IngestHook>>,
    /// Where durable state is kept, when `persistence` is on ([`Broker::restore`]).
    pub(crate) persist: Option<Arc<dyn Persistence>>,
    /// The next [`telehub_mqtt::Delivery::persist_id`]: unique across sessions.
    pub(crate) persist_seq: std::sync::atomic::AtomicU64,
    /// Who may connect, publish and subscribe.
    pub(crate) auth: auth::SharedAuthenticator,
    /// The connections past CONNACK, for [`Control`].
    pub(crate) live: Arc<control::Live>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the broker stops: ends tasks that outlive connections
    /// (delayed wills, the session reaper).
    pub(crate) stopping: CancellationToken,
    /// In a burst of PUBLISHes refused for a queue limit (logged once per burst).
    pub(crate) over_quota: std::sync::atomic::AtomicBool,
    /// Start of the broker's clock ([`BrokerTime`]).
    pub(crate) started: tokio::time::Instant,
}

impl Shared {
    /// Now on the broker's clock.
    pub(crate) fn now(&self) -> BrokerTime {
        BrokerTime(self.started.elapsed())
    }

    /// Now on the broker's clock and on the wall clock, to convert expiry times.
    pub(crate) fn clock(&self) -> persist::Clock {
        persist::Clock { broker: self.now(), wall: std::time::SystemTime::now() }
    }
}

/// A broker whose listeners are bound but not yet accepting. See [`Broker::run`].
pub struct Broker {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    addrs: Addrs,
    /// With TLS: its config, and SIGHUP registered for its reload.
    tls: Option<(Arc<tls::Tls>, tls::Hangup)>,
}

impl Broker {
    /// Reads the TLS files (when configured) and binds the listeners: MQTT over TCP,
    /// then those configured of TLS, WebSocket and secure WebSocket. With TLS, SIGHUP is
    /// handled from here on (it reloads the certificate). Nothing runs until
    /// [`Broker::run`].
    ///
    /// # Errors
    ///
    /// [`BindError::Tls`] naming the TLS file at fault, [`BindError::WssWithoutTls`],
    /// [`BindError::Listen`] when an address cannot be bound.
    pub async fn bind(config: Config, hook: Option<Arc<dyn IngestHook>>) -> Result<Self, BindError> {
        let tls = tls::Tls::from_config(&config.tls)?.map(Arc::new);
        let mut listeners = vec![Listener::bind(Transport::Tcp, config.listen).await?];
        if let Some(tls) = &tls {
            listeners.push(Listener::bind(Transport::Tls(Arc::clone(tls)), config.tls.listen).await?);
        }
        if let Some(addr) = config.ws.listen {
            listeners.push(Listener::bind(Transport::Ws, addr).await?);
        }
        if let Some(addr) = config.ws.tls_listen {
            let tls = tls.as_ref().ok_or(BindError::WssWithoutTls)?;
            listeners.push(Listener::bind(Transport::Wss(Arc::clone(tls)), addr).await?);
        }
        let addr_of =
            |f: fn(&Transport) -> bool| listeners.iter().find(|l| f(&l.transport)).map(|l| l.local_addr);
        let addrs = Addrs {
            mqtt: listeners[0].local_addr,
            mqtts: addr_of(|t| matches!(t, Transport::Tls(_))),
            ws: addr_of(|t| matches!(t, Transport::Ws)),
            wss: addr_of(|t| matches!(t, Transport::Wss(_))),
        };
        let tls = tls.map(|tls| (tls, tls::Hangup::register()));
        let shared = Arc::new(Shared {
            router: router::Router::default(),
            sessions: sessions::Sessions::default(),
            hook,
            persist: None,
            persist_seq: std::sync::atomic::AtomicU64::new(1),
            auth: Arc::new(AllowAll),
            live: Arc::new(control::Live::default()),
            stats: Arc::new(Stats::with_queue_cap(config.max_queued_bytes_total)),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            started: tokio::time::Instant::now(),
            over_quota: std::sync::atomic::AtomicBool::new(false),
            config,
        });
        Ok(Self { shared, listeners, addrs, tls })
    }

    /// The address the MQTT/TCP listener is bound to (the real port when the config
    /// said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.mqtt
    }

    /// The addresses of every listener.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// Makes `auth` decide who may connect, publish and subscribe, instead of
    /// [`AllowAll`]. Call before [`Broker::run`].
    pub fn set_authenticator(&mut self, auth: Arc<dyn Authenticator>) {
        // nothing holds `shared` but `self` until `run`, which consumes `self`
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.auth = auth,
            None => unreachable!("the broker's shared state is only shared once it runs"),
        }
    }

    /// Keeps durable state in `persist` from now on, after putting back `snapshot` (what
    /// it held at the last stop): retained messages, and durable sessions (offline until
    /// their clients reconnect) with their subscriptions, queued and in-flight QoS 1/2
    /// deliveries and received QoS 2 packet ids. Call before [`Broker::run`]. Ignored
    /// (with a warning) when the config turned `persistence` off. Returns how many
    /// sessions and deliveries were restored.
    pub fn restore(&mut self, persist: Arc<dyn Persistence>, snapshot: Snapshot) -> (usize, usize) {
        if !self.shared.config.persistence {
            tracing::warn!("mqtt.persistence is off: durable state not restored");
            return (0, 0);
        }
        // nothing holds `shared` but `self` until `run`, which consumes `self`
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.persist = Some(persist),
            None => unreachable!("the broker's shared state is only shared once it runs"),
        }
        sessions::restore(&self.shared, snapshot)
    }

    /// After [`Broker::restore`]: appends stored deliveries (each with its session's
    /// client id, in `seq` order per session) to the restored sessions, so start-up can
    /// read them from disk a page at a time. Returns how many were put back (those of
    /// sessions not restored are skipped).
    pub fn restore_deliveries(
        &mut self,
        deliveries: Vec<(telehub_core::ClientId, persist::MessageRecord)>,
    ) -> usize {
        sessions::restore_deliveries(&self.shared, deliveries)
    }

    /// A handle on the broker's live connections ([`Control::disconnect_where`]),
    /// valid before, while and after the broker runs.
    pub fn control(&self) -> Control {
        Control { live: Arc::clone(&self.shared.live), shared: Arc::downgrade(&self.shared) }
    }

    /// The broker's counters, readable while it runs.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// Accepts and serves clients until `shutdown` is cancelled, then stops accepting,
    /// sends MQTT 5 clients DISCONNECT 0x8B (server shutting down), closes every
    /// connection and waits for every task to end.
    ///
    /// # Cancel safety
    ///
    /// Meant to be spawned, not raced; cancel through `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self { shared, listeners, tls, .. } = self;
        shared.tasks.spawn(sessions::reap_expired(Arc::clone(&shared), shared.stopping.clone()));
        if !shared.config.sys_interval.is_zero() {
            let interval = shared.config.sys_interval;
            shared.tasks.spawn(sys::publish_loop(Arc::clone(&shared), interval, shared.stopping.clone()));
        }
        if let Some((tls, hangup)) = tls {
            let interval = shared.config.tls.reload_interval;
            shared.tasks.spawn(tls::reload_loop(tls, interval, hangup, shared.stopping.clone()));
        }
        let accepting = TaskTracker::new();
        for listener in listeners {
            accepting.spawn(listener::accept_loop(Arc::clone(&shared), listener, shutdown.clone()));
        }
        accepting.close();
        accepting.wait().await;
        shared.stopping.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
    }
}
