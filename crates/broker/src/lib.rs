//! telehub's MQTT server: accepts connections, runs each client's session, routes
//! PUBLISHes to subscribers, keeps retained messages and persistent sessions, and offers
//! every accepted message to the hub through [`IngestHook`].
//!
//! # Layout
//!
//! * [`config`]: [`Config`], the `[mqtt]` section of telehub's config.
//! * `listener`: the TCP accept loop; one tracked task per connection.
//! * `connection`: one client: CONNECT handshake, reader loop, writer task, keep-alive.
//! * `router`: the subscription trie and retained messages; fan-out.
//! * `sessions`: persistent sessions by client id, takeover, expiry, wills.
//! * [`hook`]: [`IngestHook`], how the hub sees every accepted message.
//! * [`stats`]: [`Stats`], counters of connections, messages and drops.
//! * `sys`: the `$SYS/broker/...` topics, published from [`Stats`].

pub mod config;
mod connection;
pub mod hook;
mod listener;
mod router;
mod sessions;
pub mod stats;
mod sys;

use std::net::SocketAddr;
use std::sync::Arc;

use telehub_mqtt::BrokerTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use hook::{IngestAck, IngestError, IngestHook};
pub use stats::Stats;

/// Opening the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The MQTT listener could not bind its address (in use, not permitted...).
    #[error("cannot listen for MQTT on {addr}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// State every connection shares: config, router, sessions, counters.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: router::Router,
    pub(crate) sessions: sessions::Sessions,
    pub(crate) hook: Option<Arc<dyn IngestHook>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the broker stops: ends tasks that outlive connections
    /// (delayed wills, the session reaper).
    pub(crate) stopping: CancellationToken,
    /// Start of the broker's clock ([`BrokerTime`]).
    pub(crate) started: tokio::time::Instant,
}

impl Shared {
    /// Now on the broker's clock.
    pub(crate) fn now(&self) -> BrokerTime {
        BrokerTime(self.started.elapsed())
    }
}

/// A broker whose listener is bound but not yet accepting. See [`Broker::run`].
pub struct Broker {
    shared: Arc<Shared>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Broker {
    /// Binds the MQTT listener. Nothing runs until [`Broker::run`].
    ///
    /// # Errors
    ///
    /// [`BindError::Listen`] when the address cannot be bound.
    pub async fn bind(config: Config, hook: Option<Arc<dyn IngestHook>>) -> Result<Self, BindError> {
        let addr = config.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| BindError::Listen { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| BindError::Listen { addr, source })?;
        let shared = Arc::new(Shared {
            router: router::Router::default(),
            sessions: sessions::Sessions::default(),
            hook,
            stats: Arc::new(Stats::default()),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            started: tokio::time::Instant::now(),
            config,
        });
        Ok(Self { shared, listener, local_addr })
    }

    /// The address the listener is bound to (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        let Self { shared, listener, .. } = self;
        shared.tasks.spawn(sessions::reap_expired(Arc::clone(&shared), shared.stopping.clone()));
        if !shared.config.sys_interval.is_zero() {
            let interval = shared.config.sys_interval;
            shared.tasks.spawn(sys::publish_loop(Arc::clone(&shared), interval, shared.stopping.clone()));
        }
        listener::accept_loop(Arc::clone(&shared), listener, shutdown).await;
        shared.stopping.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
    }
}
