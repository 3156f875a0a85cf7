//! [`TestBroker`]: the real broker, in process, on `127.0.0.1:0`, stopped on drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use telehub_broker::{Addrs, Authenticator, Broker, Config, Control, IngestHook, Stats};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::raw::RawClient;
use crate::{ConnAck, Connect, Publish, Version, build};

/// How long [`TestBroker::stop`] waits for the broker to drain before failing the test.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running [`Broker`] bound to a free port on the loopback interface.
///
/// Dropping it cancels the broker's shutdown token (the broker then closes every
/// connection on its own); [`TestBroker::stop`] also waits until it has finished.
pub struct TestBroker {
    addr: SocketAddr,
    addrs: Addrs,
    stats: Arc<Stats>,
    control: Control,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Numbers the clients of [`TestBroker::assert_serving`].
    probes: AtomicU64,
}

impl TestBroker {
    /// A broker with [`TestBroker::config`].
    pub async fn start() -> Self {
        Self::start_with(Self::config()).await
    }

    /// A broker with `config`; its `listen` address is replaced by `127.0.0.1:0`.
    pub async fn start_with(config: Config) -> Self {
        Self::bind_and_run(config, None, None).await
    }

    /// A broker with `config` that offers every accepted message to `hook`.
    pub async fn start_with_hook(config: Config, hook: Arc<dyn IngestHook>) -> Self {
        Self::bind_and_run(config, Some(hook), None).await
    }

    /// A broker with `config` that asks `auth` who may connect, publish and subscribe
    /// ([`Broker::set_authenticator`]).
    pub async fn start_with_auth(config: Config, auth: Arc<dyn Authenticator>) -> Self {
        Self::bind_and_run(config, None, Some(auth)).await
    }

    /// A broker with `config` that offers every accepted message to `hook` and asks
    /// `auth` who may connect, publish and subscribe.
    pub async fn start_with_hook_and_auth(
        config: Config,
        hook: Arc<dyn IngestHook>,
        auth: Arc<dyn Authenticator>,
    ) -> Self {
        Self::bind_and_run(config, Some(hook), Some(auth)).await
    }

    /// The defaults of [`Config`], listening on `127.0.0.1:0`, accepting anonymous
    /// clients, and with the `$SYS` topics off (`sys_interval` 0) so that a test sees
    /// only the messages it publishes. Tests change the fields they are about.
    pub fn config() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            sys_interval: Duration::ZERO,
            ..Config::default()
        }
    }

    async fn bind_and_run(
        mut config: Config,
        hook: Option<Arc<dyn IngestHook>>,
        auth: Option<Arc<dyn Authenticator>>,
    ) -> Self {
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut broker = match Broker::bind(config, hook).await {
            Ok(b) => b,
            Err(e) => panic!("test broker cannot bind 127.0.0.1:0: {e}"),
        };
        if let Some(auth) = auth {
            broker.set_authenticator(auth);
        }
        let addr = broker.local_addr();
        let addrs = broker.addrs();
        let stats = broker.stats();
        let control = broker.control();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(broker.run(shutdown.clone()));
        tasks.close();
        Self { addr, addrs, stats, control, shutdown, tasks, probes: AtomicU64::new(0) }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every listener's address (TLS and WebSocket ones when the config asked for them,
    /// e.g. on `127.0.0.1:0`).
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The broker's live counters (`stats().snapshot()`).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The broker's [`Control`] handle on its live connections.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// A TCP connection to the broker; nothing sent yet.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr).await
    }

    /// Connects with `connect` and asserts the CONNACK accepts it.
    pub async fn client(&self, connect: &Connect) -> (RawClient, ConnAck) {
        RawClient::open(self.addr, connect).await
    }

    /// Asserts that the broker serves new clients: a fresh subscriber and a fresh
    /// publisher (MQTT 3.1.1) exchange a QoS 1 message on a topic of their own.
    pub async fn assert_serving(&self) {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let topic = format!("testkit/probe/{n}");
        let (mut sub, _) = self.client(&Connect::v311(&format!("testkit-probe-sub-{n}"))).await;
        let codes = sub.subscribe(1, &[(topic.as_str(), 1)]).await;
        assert_eq!(codes, [1], "probe SUBACK");
        let (mut publisher, _) = self.client(&Connect::v311(&format!("testkit-probe-pub-{n}"))).await;
        publisher.publish(&Publish::new(Version::V311, &topic, b"probe").qos(1, 1)).await;
        let got = sub.expect_publish().await;
        assert_eq!((got.topic.as_str(), &got.payload[..], got.qos), (topic.as_str(), &b"probe"[..], 1));
        sub.send(&build::puback(got.id())).await;
        publisher.disconnect().await;
        sub.disconnect().await;
    }

    /// Stops the broker and waits for every connection and task to end.
    ///
    /// # Panics
    ///
    /// When the broker has not stopped within 10 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        if tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait()).await.is_err() {
            panic!("test broker did not stop within {STOP_TIMEOUT:?}");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // cannot await here: the broker drains on its own (or with the test's runtime)
        self.shutdown.cancel();
    }
}
