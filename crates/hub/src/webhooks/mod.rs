//! Webhooks both ways and what live streams send.
//!
//! * Out: [`Webhooks`] keeps the endpoints (`{id, url, events, topics, secrets, enabled}`,
//!   registry entries of kind `webhook`, written through before they take effect).
//!   [`Webhooks::dispatch`] turns matching messages (from the broker's tap) and hub events
//!   into deliveries and commits them to the store's outbox before anything else;
//!   [`Webhooks::send`] claims due deliveries with a lease and POSTs them, signed by the
//!   Standard Webhooks convention, with a timeout per attempt, exponential back-off with
//!   jitter, a maximum age (then the dead-letter list), a circuit breaker per endpoint
//!   and bounded concurrency.
//! * In: [`inbound::Inbound`] checks `POST /hooks/{name}` (signature, timestamp window,
//!   replayed ids) and makes the message to publish.
//! * [`message_data`]: a message as webhooks and live streams show it.
//!
//! # What is promised
//!
//! * A delivery is in the outbox (committed) before any attempt; it stays `pending` until
//!   a 2xx answer (`delivered`) or the maximum age (`dead`), across restarts and `kill -9`.
//! * At least once: an attempt cut short (timeout, restart) is made again, with the same
//!   `webhook-id`, which receivers use to drop duplicates.
//! * Order: one endpoint's deliveries are sent one at a time, in the order they were
//!   enqueued, while attempts succeed. A failed delivery is retried after its back-off,
//!   behind newer ones: order is not kept across failures (the payload's `timestamp`
//!   says when the event happened).
//! * Messages reach the dispatcher through a bounded feed; when it is full (the store
//!   cannot keep up) messages are dropped for webhooks and counted ([`Tap`] drops) —
//!   they were never accepted into the outbox.
//!
//! [`Tap`]: crate::events::Tap

pub mod inbound;
pub mod policy;
pub mod signature;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use telehub_core::{Message, TopicFilter};
use telehub_store::outbox::{Delivery, OutboxEntry, OutboxQuery, OutboxStatus, Replay};
use telehub_store::registry::{Change, Entry, Kind};
use telehub_store::{OutboxStore, RegistryStore, StoreError, Timestamp};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use self::inbound::{Inbound, InboundConfig, InboundError};
use self::policy::{AfterFailure, Backoff, Breaker, BreakerConfig, BreakerState};
use self::signature::Secret;
use crate::events::HubEvent;
use crate::timestamp;

/// The event names an endpoint may ask for (besides `*`, every event, and `message`,
/// which its topic filters select).
pub const EVENT_NAMES: &[&str] =
    &["device.connected", "device.disconnected", "command.state_changed", "alert.raised", "alert.cleared"];

/// Most messages and events the dispatcher turns into one outbox write.
const DISPATCH_BATCH: usize = 512;

/// The `[webhooks]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Longest wait for one attempt's answer.
    #[serde(with = "telehub_core::duration")]
    pub timeout: Duration,
    /// How long a delivery is tried, from when it became pending; then it is dead.
    #[serde(with = "telehub_core::duration")]
    pub max_age: Duration,
    /// The back-off after the first failed attempt; it doubles with each failure.
    #[serde(with = "telehub_core::duration")]
    pub backoff_initial: Duration,
    /// The longest back-off.
    #[serde(with = "telehub_core::duration")]
    pub backoff_max: Duration,
    /// Consecutive failed attempts that open an endpoint's circuit breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker stops attempts before one trial.
    #[serde(with = "telehub_core::duration")]
    pub breaker_cooldown: Duration,
    /// Attempts under way at once, over all endpoints (one per endpoint at a time).
    pub concurrency: usize,
    /// Deliveries claimed per store query.
    pub batch: usize,
    /// How often the outbox is polled for retries that came due.
    #[serde(with = "telehub_core::duration")]
    pub poll_interval: Duration,
    /// Messages waiting for the dispatcher at most; beyond, they are dropped for webhooks
    /// and counted.
    pub feed_capacity: usize,
    /// How long delivered deliveries are listed before they are deleted (dead ones stay).
    #[serde(with = "telehub_core::duration")]
    pub keep_delivered: Duration,
    /// Messages and events one live stream may have waiting; a client that falls further
    /// behind is disconnected (counted).
    pub stream_buffer: usize,
    /// `[[webhooks.inbound]]`: `POST /hooks/{name}` → publish.
    pub inbound: Vec<InboundConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(86_400),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            concurrency: 16,
            batch: 100,
            poll_interval: Duration::from_secs(1),
            feed_capacity: 10_000,
            keep_delivered: Duration::from_secs(7 * 86_400),
            stream_buffer: 256,
            inbound: Vec::new(),
        }
    }
}

impl Config {
    fn backoff(&self) -> Backoff {
        Backoff { initial: self.backoff_initial, max: self.backoff_max, max_age: self.max_age }
    }

    fn breaker(&self) -> BreakerConfig {
        BreakerConfig { failures: self.breaker_failures, cooldown: self.breaker_cooldown }
    }
}

/// A webhook operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No such endpoint.
    #[error("no webhook {0}")]
    NotFound(String),
    /// The request is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with the endpoint's state; the message says how.
    #[error("{0}")]
    Conflict(String),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `wh_…`.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Hub event names (`device.connected`…, or `*`).
    #[serde(default)]
    pub events: Vec<String>,
    /// MQTT topic filters selecting messages.
    #[serde(default)]
    pub topics: Vec<String>,
    /// The active secrets (`whsec_…`), one or two; every one signs each delivery.
    pub secrets: Vec<String>,
    /// Whether new deliveries are made and pending ones sent.
    pub enabled: bool,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// `POST /api/v1/webhooks`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// Where to POST.
    pub url: String,
    /// Hub event names.
    #[serde(default)]
    pub events: Vec<String>,
    /// MQTT topic filters.
    #[serde(default)]
    pub topics: Vec<String>,
    /// One topic filter (added to `topics`).
    #[serde(default)]
    pub topic: Option<String>,
    /// `whsec_…`; generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /api/v1/webhooks/{id}`: each field present is changed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    /// New URL.
    pub url: Option<String>,
    /// New event names.
    pub events: Option<Vec<String>>,
    /// New topic filters.
    pub topics: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Add a generated secret (rotation step 1: both sign until the old is removed).
    #[serde(default)]
    pub rotate: bool,
    /// Add this secret (rotation step 1 with a secret of your own).
    pub add_secret: Option<String>,
    /// Remove the secret with this value or hint (rotation step 2).
    pub remove_secret: Option<String>,
}

/// An endpoint as the API shows it: secrets as hints, unless just made.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// Id.
    pub id: String,
    /// URL.
    pub url: String,
    /// Event names.
    pub events: Vec<String>,
    /// Topic filters.
    pub topics: Vec<String>,
    /// `whsec_abcd…` hints of the active secrets, oldest first.
    pub secrets: Vec<String>,
    /// Secrets created by this request, in full (shown once).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_secrets: Vec<String>,
    /// Enabled.
    pub enabled: bool,
    /// The circuit breaker now.
    pub breaker: BreakerState,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A short, non-secret hint of a secret: its first characters.
pub fn secret_hint(secret: &str) -> String {
    let head: String = secret.chars().take(signature::SECRET_PREFIX.len() + 4).collect();
    format!("{head}…")
}

/// Counters, for `GET /api/v1/webhooks/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries committed to the outbox.
    pub enqueued: AtomicU64,
    /// Deliveries answered 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed.
    pub failed_attempts: AtomicU64,
    /// Deliveries given up on.
    pub dead: AtomicU64,
    /// Hub events the dispatcher missed because it fell behind the broadcast.
    pub events_missed: AtomicU64,
    /// Live streams disconnected for falling behind.
    pub streams_dropped: AtomicU64,
    /// Live streams open now.
    pub streams_open: AtomicU64,
}

impl Stats {
    /// The counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "enqueued": g(&self.enqueued),
            "delivered": g(&self.delivered),
            "failed_attempts": g(&self.failed_attempts),
            "dead": g(&self.dead),
            "events_missed": g(&self.events_missed),
            "streams_dropped": g(&self.streams_dropped),
            "streams_open": g(&self.streams_open),
        })
    }
}

/// An endpoint ready to match and sign.
struct Compiled {
    endpoint: Endpoint,
    secrets: Vec<Secret>,
    filters: Vec<TopicFilter>,
}

impl Compiled {
    fn new(endpoint: Endpoint) -> Result<Self, WebhookError> {
        validate_url(&endpoint.url)?;
        for e in &endpoint.events {
            if e != "*" && !EVENT_NAMES.contains(&e.as_str()) {
                return Err(WebhookError::Invalid(format!(
                    "unknown event {e:?}: expected one of {} or \"*\"",
                    EVENT_NAMES.join(", ")
                )));
            }
        }
        let filters = endpoint
            .topics
            .iter()
            .map(|t| {
                TopicFilter::new(t.as_str())
                    .map_err(|e| WebhookError::Invalid(format!("topic filter {t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoint.events.is_empty() && filters.is_empty() {
            return Err(WebhookError::Invalid("a webhook needs events or topics (or both)".into()));
        }
        if endpoint.secrets.is_empty() || endpoint.secrets.len() > 2 {
            return Err(WebhookError::Invalid("a webhook has one or two active secrets".into()));
        }
        let secrets = endpoint
            .secrets
            .iter()
            .map(|s| Secret::parse(s).map_err(WebhookError::Invalid))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { endpoint, secrets, filters })
    }

    fn wants_event(&self, name: &str) -> bool {
        self.endpoint.events.iter().any(|e| e == "*" || e == name)
    }
}

fn validate_url(url: &str) -> Result<(), WebhookError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| WebhookError::Invalid(format!("url {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(WebhookError::Invalid(format!("url {url:?}: expected http:// or https:// and a host")));
    }
    Ok(())
}

/// A new delivery id: `msg_` and 128 random bits, hex.
fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random source");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}{hex}")
}

/// A message as webhooks and live streams show it: `{topic, payload, qos, retain, ts}`,
/// the payload as JSON when it is JSON, else as a string (UTF-8), else base64 in
/// `payload_base64`.
pub fn message_data(message: &Message, ts: Timestamp) -> serde_json::Value {
    let mut data = serde_json::json!({
        "topic": message.topic.as_str(),
        "qos": message.qos as u8,
        "retain": message.retain,
        "ts": timestamp::to_rfc3339(ts),
    });
    let payload = match serde_json::from_slice::<serde_json::Value>(&message.payload) {
        Ok(v) => v,
        Err(_) => match std::str::from_utf8(&message.payload) {
            Ok(s) => serde_json::Value::String(s.to_owned()),
            Err(_) => {
                use base64::Engine as _;
                data["payload_base64"] =
                    base64::engine::general_purpose::STANDARD.encode(&message.payload).into();
                serde_json::Value::Null
            }
        },
    };
    data["payload"] = payload;
    data
}

/// The Standard Webhooks payload shape: `{"type", "timestamp", "data"}`.
fn envelope(kind: &str, ts: Timestamp, data: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), kind.into());
    m.insert("timestamp".into(), timestamp::to_rfc3339(ts).into());
    m.insert("data".into(), data);
    serde_json::Value::Object(m)
}

struct Inner<S> {
    store: Arc<S>,
    config: Config,
    endpoints: RwLock<HashMap<String, Arc<Compiled>>>,
    /// One change at a time (each is read, checked, written through, then applied).
    changes: tokio::sync::Mutex<()>,
    breakers: Mutex<HashMap<String, Breaker>>,
    /// New deliveries were enqueued (or replayed): the sender polls now.
    wake: Notify,
    stats: Arc<Stats>,
    client: reqwest::Client,
}

/// The outbound webhooks: endpoints, dispatcher and sender. Cheap to clone.
pub struct Webhooks<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Webhooks<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<S: RegistryStore + OutboxStore> Webhooks<S> {
    /// Loads the endpoints from the store. An endpoint that no longer validates is logged
    /// and left out.
    ///
    /// # Errors
    ///
    /// The store cannot be read, or the HTTP client cannot be made.
    pub async fn open(store: Arc<S>, config: Config) -> Result<Self, WebhookError> {
        let mut endpoints = HashMap::new();
        for entry in store.registry_load().await?.into_iter().filter(|e| e.kind == Kind::Webhook) {
            match serde_json::from_value::<Endpoint>(entry.body)
                .map_err(|e| WebhookError::Invalid(e.to_string()))
                .and_then(Compiled::new)
            {
                Ok(c) => {
                    endpoints.insert(c.endpoint.id.clone(), Arc::new(c));
                }
                Err(e) => warn!(id = entry.id, error = %e, "stored webhook skipped"),
            }
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("telehub-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Invalid(format!("the webhook HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                config,
                endpoints: RwLock::new(endpoints),
                changes: tokio::sync::Mutex::new(()),
                breakers: Mutex::default(),
                wake: Notify::new(),
                stats: Arc::default(),
                client,
            }),
        })
    }

    /// The `[webhooks]` section it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.inner.stats)
    }

    fn get_compiled(&self, id: &str) -> Option<Arc<Compiled>> {
        self.inner.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }

    fn view(&self, endpoint: &Endpoint, new_secrets: Vec<String>) -> EndpointView {
        let breaker = lock(&self.inner.breakers)
            .get(&endpoint.id)
            .map_or(BreakerState::Closed, |b| b.state(timestamp::now()));
        EndpointView {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            events: endpoint.events.clone(),
            topics: endpoint.topics.clone(),
            secrets: endpoint.secrets.iter().map(|s| secret_hint(s)).collect(),
            new_secrets,
            enabled: endpoint.enabled,
            breaker,
            created_at: timestamp::to_rfc3339(Timestamp(endpoint.created_at)),
            updated_at: timestamp::to_rfc3339(Timestamp(endpoint.updated_at)),
        }
    }

    async fn save(&self, compiled: Compiled) -> Result<Arc<Compiled>, WebhookError> {
        let e = &compiled.endpoint;
        let body = serde_json::to_value(e).map_err(|x| WebhookError::Invalid(x.to_string()))?;
        let entry = Entry { kind: Kind::Webhook, id: e.id.clone(), owner: None, body };
        self.inner.store.registry_apply(vec![Change::Put(entry)]).await?;
        let compiled = Arc::new(compiled);
        self.inner
            .endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(compiled.endpoint.id.clone(), Arc::clone(&compiled));
        Ok(compiled)
    }

    /// Creates an endpoint; its secret (given or generated) is in `new_secrets`.
    ///
    /// # Errors
    ///
    /// [`WebhookError::Invalid`] naming the bad field; the store's.
    pub async fn create(&self, new: NewEndpoint) -> Result<EndpointView, WebhookError> {
        let _one = self.inner.changes.lock().await;
        let now = timestamp::now().0;
        let secret = new.secret.unwrap_or_else(Secret::generate);
        let mut topics = new.topics;
        topics.extend(new.topic);
        let endpoint = Endpoint {
            id: new_id("wh_"),
            url: new.url,
            events: new.events,
            topics,
            secrets: vec![secret.clone()],
            enabled: new.enabled.unwrap_or(true),
            created_at: now,
            updated_at: now,
        };
        let saved = self.save(Compiled::new(endpoint)?).await?;
        info!(id = saved.endpoint.id, url = saved.endpoint.url, "webhook created");
        Ok(self.view(&saved.endpoint, vec![secret]))
    }

    /// Every endpoint, by id.
    pub fn list(&self) -> Vec<EndpointView> {
        let all: Vec<Arc<Compiled>> = self
            .inner
            .endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut views: Vec<EndpointView> = all.iter().map(|c| self.view(&c.endpoint, vec![])).collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// One endpoint.
    ///
    /// # Errors
    ///
    /// [`WebhookError::NotFound`].
    pub fn get(&self, id: &str) -> Result<EndpointView, WebhookError> {
        let c = self.get_compiled(id).ok_or_else(|| WebhookError::NotFound(id.into()))?;
        Ok(self.view(&c.endpoint, vec![]))
    }

    /// Changes an endpoint (see [`EndpointPatch`]).
    ///
    /// # Errors
    ///
    /// [`WebhookError::NotFound`], [`WebhookError::Invalid`], [`WebhookError::Conflict`]
    /// (a third secret, or removing the only one); the store's.
    pub async fn update(&self, id: &str, patch: EndpointPatch) -> Result<EndpointView, WebhookError> {
        let _one = self.inner.changes.lock().await;
        let current = self.get_compiled(id).ok_or_else(|| WebhookError::NotFound(id.into()))?;
        let mut e = current.endpoint.clone();
        if let Some(url) = patch.url {
            e.url = url;
        }
        if let Some(events) = patch.events {
            e.events = events;
        }
        if let Some(topics) = patch.topics {
            e.topics = topics;
        }
        if let Some(enabled) = patch.enabled {
            e.enabled = enabled;
        }
        if let Some(old) = &patch.remove_secret {
            let before = e.secrets.len();
            e.secrets.retain(|s| s != old && secret_hint(s) != *old);
            if e.secrets.len() == before {
                return Err(WebhookError::Invalid("remove_secret matches no active secret".into()));
            }
            if e.secrets.is_empty() {
                return Err(WebhookError::Conflict(
                    "the only secret cannot be removed: add one first".into(),
                ));
            }
        }
        let mut new_secrets = Vec::new();
        if patch.rotate {
            new_secrets.push(Secret::generate());
        }
        new_secrets.extend(patch.add_secret);
        if e.secrets.len() + new_secrets.len() > 2 {
            return Err(WebhookError::Conflict(
                "at most two secrets are active: remove the old one first (remove_secret)".into(),
            ));
        }
        e.secrets.extend(new_secrets.iter().cloned());
        e.updated_at = timestamp::now().0;
        let saved = self.save(Compiled::new(e)?).await?;
        if saved.endpoint.enabled {
            self.inner.wake.notify_one();
        }
        Ok(self.view(&saved.endpoint, new_secrets))
    }

    /// Deletes an endpoint. Its deliveries stay listed; pending ones are given up on at
    /// their next attempt.
    ///
    /// # Errors
    ///
    /// [`WebhookError::NotFound`]; the store's.
    pub async fn delete(&self, id: &str) -> Result<(), WebhookError> {
        let _one = self.inner.changes.lock().await;
        if self.get_compiled(id).is_none() {
            return Err(WebhookError::NotFound(id.into()));
        }
        self.inner.store.registry_apply(vec![Change::Delete { kind: Kind::Webhook, id: id.into() }]).await?;
        self.inner.endpoints.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        lock(&self.inner.breakers).remove(id);
        info!(id, "webhook deleted");
        Ok(())
    }

    /// A page of an endpoint's deliveries, newest first.
    ///
    /// # Errors
    ///
    /// [`WebhookError::NotFound`]; the store's.
    pub async fn deliveries(
        &self,
        id: &str,
        status: Option<OutboxStatus>,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, WebhookError> {
        if self.get_compiled(id).is_none() {
            return Err(WebhookError::NotFound(id.into()));
        }
        let query = OutboxQuery { endpoint: id.into(), status, before_seq, limit };
        Ok(self.inner.store.outbox_list(query).await?)
    }

    /// Makes dead deliveries of an endpoint pending again (all, or those listed); returns
    /// how many.
    ///
    /// # Errors
    ///
    /// [`WebhookError::NotFound`]; the store's.
    pub async fn replay(&self, id: &str, which: Replay) -> Result<u64, WebhookError> {
        if self.get_compiled(id).is_none() {
            return Err(WebhookError::NotFound(id.into()));
        }
        let n = self.inner.store.outbox_replay(id, which, timestamp::now()).await?;
        if n > 0 {
            info!(id, deliveries = n, "dead webhook deliveries replayed");
            self.inner.wake.notify_one();
        }
        Ok(n)
    }

    /// One delivery of `data` (in the usual envelope, type `kind`) to endpoint `id`,
    /// whatever its filters: a rule's `webhook` action. Returns the delivery id once the
    /// delivery is committed to the outbox (from there on it is retried like any other).
    ///
    /// # Errors
    ///
    /// [`WebhookError::NotFound`]; [`WebhookError::Conflict`] when the endpoint is
    /// disabled; the store's (nothing was written).
    pub async fn call(&self, id: &str, kind: &str, data: serde_json::Value) -> Result<String, WebhookError> {
        let c = self.get_compiled(id).ok_or_else(|| WebhookError::NotFound(id.into()))?;
        if !c.endpoint.enabled {
            return Err(WebhookError::Conflict(format!("webhook {id} is disabled")));
        }
        let now = timestamp::now();
        let delivery = Delivery {
            id: new_id("msg_"),
            endpoint: c.endpoint.id.clone(),
            event_type: kind.to_owned(),
            payload: envelope(kind, now, data),
            created_at: now,
            next_attempt_at: now,
        };
        let delivery_id = delivery.id.clone();
        self.inner.store.outbox_enqueue(vec![delivery]).await?;
        self.inner.stats.enqueued.fetch_add(1, Ordering::Relaxed);
        self.inner.wake.notify_one();
        Ok(delivery_id)
    }

    /// The deliveries `item` makes: one per enabled endpoint it matches.
    fn deliveries_for(&self, item: &Item, now: Timestamp, out: &mut Vec<Delivery>) {
        let endpoints = self.inner.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut payload = None;
        for c in endpoints.values().filter(|c| c.endpoint.enabled) {
            let wanted = match item {
                Item::Message(m) => c.filters.iter().any(|f| f.matches(&m.topic)),
                Item::Event(e) => c.wants_event(e.name()),
            };
            if !wanted {
                continue;
            }
            let (kind, body) = payload.get_or_insert_with(|| match item {
                Item::Message(m) => ("message", envelope("message", now, message_data(m, now))),
                Item::Event(e) => {
                    (e.name(), envelope(e.name(), now, serde_json::to_value(&**e).unwrap_or_default()))
                }
            });
            out.push(Delivery {
                id: new_id("msg_"),
                endpoint: c.endpoint.id.clone(),
                event_type: (*kind).to_owned(),
                payload: body.clone(),
                created_at: now,
                next_attempt_at: now,
            });
        }
    }

    /// Commits `deliveries`, retrying a failed write (every second, until it succeeds or
    /// `give_up` is cancelled; what is then unwritten is logged as lost).
    async fn enqueue(&self, deliveries: Vec<Delivery>, give_up: &CancellationToken) {
        if deliveries.is_empty() {
            return;
        }
        let n = deliveries.len() as u64;
        loop {
            match self.inner.store.outbox_enqueue(deliveries.clone()).await {
                Ok(_) => {
                    self.inner.stats.enqueued.fetch_add(n, Ordering::Relaxed);
                    self.inner.wake.notify_one();
                    return;
                }
                Err(e) => {
                    warn!(error = %e, deliveries = n, "cannot write webhook deliveries to the outbox: retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = give_up.cancelled() => {
                            warn!(deliveries = n, "shutting down: webhook deliveries not written");
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The dispatcher, until `stop`: messages (from the broker's tap) and hub events →
    /// deliveries of the endpoints they match, committed in batches. When `stop` is
    /// cancelled it writes what its inputs still hold, then returns (so stop it after the
    /// producers).
    pub async fn dispatch(
        self,
        mut messages: mpsc::Receiver<Arc<Message>>,
        mut events: broadcast::Receiver<Arc<HubEvent>>,
        stop: CancellationToken,
    ) {
        let give_up = CancellationToken::new();
        let mut events_open = true;
        loop {
            let mut items = Vec::new();
            let stopping = tokio::select! {
                m = messages.recv() => match m {
                    Some(m) => { items.push(Item::Message(m)); false }
                    None => true,
                },
                e = events.recv(), if events_open => {
                    match e {
                        Ok(e) => items.push(Item::Event(e)),
                        Err(broadcast::error::RecvError::Lagged(n)) => self.missed(n),
                        Err(broadcast::error::RecvError::Closed) => events_open = false,
                    }
                    false
                }
                () = stop.cancelled() => true,
            };
            // take what is there already, to write it in one transaction
            while items.len() < DISPATCH_BATCH {
                if let Ok(m) = messages.try_recv() {
                    items.push(Item::Message(m));
                    continue;
                }
                match events.try_recv() {
                    Ok(e) => items.push(Item::Event(e)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed(n),
                    Err(_) => break,
                }
            }
            let now = timestamp::now();
            let mut deliveries = Vec::new();
            for item in &items {
                self.deliveries_for(item, now, &mut deliveries);
            }
            if stopping {
                // last writes: a few seconds at most
                let g = give_up.clone();
                let timer = async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    g.cancel();
                };
                tokio::join!(self.enqueue(deliveries, &give_up), timer);
                if items.is_empty() {
                    return;
                }
                continue;
            }
            self.enqueue(deliveries, &give_up).await;
        }
    }

    fn missed(&self, n: u64) {
        if self.inner.stats.events_missed.fetch_add(n, Ordering::Relaxed) == 0 {
            warn!(
                missed = n,
                "the webhook dispatcher fell behind the hub events: some were missed (counted)"
            );
        }
    }

    /// The sender, until `stop`: claims due deliveries (lease: twice the timeout; one
    /// held back by an open breaker or a disabled endpoint is due again when it ends), sends each endpoint's one at a time on a worker, at most
    /// `concurrency` attempts at once; every `keep_delivered / 10` deletes old delivered
    /// ones. An attempt under way when `stop` comes is abandoned: its lease ends and it
    /// is made again later (at least once).
    pub async fn send(self, stop: CancellationToken) {
        let cfg = &self.inner.config;
        let lease = (cfg.timeout * 2).max(Duration::from_secs(1));
        let max_held = cfg.batch.max(1) * 4;
        let held: Arc<Mutex<Held>> = Arc::default();
        let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let workers = TaskTracker::new();
        let worker_done = Arc::new(Notify::new());
        let mut poll = tokio::time::interval(cfg.poll_interval.max(Duration::from_millis(10)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let prune_every = (cfg.keep_delivered / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600));
        let mut prune = tokio::time::interval(prune_every);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = max_held.saturating_sub(lock(&held).ids.len());
            let mut full = false;
            if room > 0 {
                let want = room.min(cfg.batch.max(1));
                match self.inner.store.outbox_due(timestamp::now(), want, lease).await {
                    Ok(due) => {
                        full = due.len() == want;
                        let mut start = Vec::new();
                        {
                            let mut h = lock(&held);
                            for entry in due {
                                if !h.ids.insert(entry.delivery.id.clone()) {
                                    continue;
                                }
                                let endpoint = entry.delivery.endpoint.clone();
                                let busy = h.working.contains(&endpoint);
                                h.queues.entry(endpoint.clone()).or_default().push_back(entry);
                                if !busy {
                                    h.working.insert(endpoint.clone());
                                    start.push(endpoint);
                                }
                            }
                        }
                        for endpoint in start {
                            workers.spawn(self.clone().worker(
                                endpoint,
                                Arc::clone(&held),
                                Arc::clone(&permits),
                                Arc::clone(&worker_done),
                                stop.clone(),
                            ));
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot read due webhook deliveries"),
                }
            }
            if full {
                tokio::task::yield_now().await;
                if stop.is_cancelled() {
                    break;
                }
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = worker_done.notified() => {}
                _ = poll.tick() => {}
                _ = prune.tick() => {
                    let before = Timestamp(timestamp::now().0 - ms(cfg.keep_delivered));
                    match self.inner.store.outbox_prune_delivered(before).await {
                        Ok(n) if n > 0 => debug!(deleted = n, "old delivered webhook deliveries deleted"),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "cannot delete old webhook deliveries"),
                    }
                }
            }
        }
        workers.close();
        workers.wait().await;
    }

    /// Sends one endpoint's held deliveries in order, until there are none.
    async fn worker(
        self,
        endpoint: String,
        held: Arc<Mutex<Held>>,
        permits: Arc<Semaphore>,
        done: Arc<Notify>,
        stop: CancellationToken,
    ) {
        loop {
            let next = {
                let mut h = lock(&held);
                let next = h.queues.get_mut(&endpoint).and_then(VecDeque::pop_front);
                if next.is_none() {
                    h.queues.remove(&endpoint);
                    h.working.remove(&endpoint);
                }
                next
            };
            let Some(entry) = next else {
                done.notify_one();
                return;
            };
            let id = entry.delivery.id.clone();
            if !stop.is_cancelled() {
                let Ok(_permit) = permits.acquire().await else { return };
                tokio::select! {
                    () = self.attempt(entry) => {}
                    () = stop.cancelled() => {}
                }
            }
            lock(&held).ids.remove(&id);
            done.notify_one();
        }
    }

    /// One attempt of one delivery, and its outcome recorded.
    async fn attempt(&self, entry: OutboxEntry) {
        let inner = &self.inner;
        let d = &entry.delivery;
        let now = timestamp::now();
        let Some(c) = self.get_compiled(&d.endpoint) else {
            self.record_dead(d, entry.attempts, "the webhook endpoint was deleted").await;
            return;
        };
        let age_out = now.0 >= entry.pending_since.0.saturating_add(ms(inner.config.max_age));
        let allowed = c.endpoint.enabled
            && lock(&inner.breakers).entry(d.endpoint.clone()).or_default().try_acquire(now);
        if !allowed {
            // held back (disabled, or the breaker is open): its lease brings it back
            if age_out {
                let why = if c.endpoint.enabled {
                    "circuit open at the maximum age"
                } else {
                    "endpoint disabled at the maximum age"
                };
                self.record_dead(d, entry.attempts, why).await;
            }
            return;
        }
        let result = self.post(&c, d).await;
        let now = timestamp::now();
        match result {
            Ok(()) => {
                lock(&inner.breakers).entry(d.endpoint.clone()).or_default().success();
                match inner.store.outbox_succeeded(&d.id, now).await {
                    Ok(_) => {
                        inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        warn!(id = d.id, error = %e, "delivered, but the outbox could not record it: it will be sent again")
                    }
                }
            }
            Err(error) => {
                inner.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let opened = lock(&inner.breakers)
                    .entry(d.endpoint.clone())
                    .or_default()
                    .failure(inner.config.breaker(), now);
                if opened {
                    warn!(endpoint = d.endpoint, url = c.endpoint.url, error, cooldown = ?inner.config.breaker_cooldown, "webhook endpoint failing: circuit open");
                }
                let attempts = entry.attempts.saturating_add(1);
                match inner.config.backoff().after_failure(
                    attempts,
                    entry.pending_since,
                    now,
                    policy::jitter(),
                ) {
                    AfterFailure::RetryAt(at) => {
                        debug!(
                            id = d.id,
                            endpoint = d.endpoint,
                            attempts,
                            error,
                            "webhook attempt failed: retrying"
                        );
                        if let Err(e) = inner.store.outbox_retry(&d.id, at, error).await {
                            warn!(id = d.id, error = %e, "cannot record a failed webhook attempt");
                        }
                    }
                    AfterFailure::Dead => self.record_dead(d, entry.attempts, &error).await,
                }
            }
        }
    }

    async fn record_dead(&self, d: &Delivery, attempts: u32, error: &str) {
        match self.inner.store.outbox_dead(&d.id, timestamp::now(), error.to_owned()).await {
            Ok(true) => {
                self.inner.stats.dead.fetch_add(1, Ordering::Relaxed);
                warn!(
                    id = d.id,
                    endpoint = d.endpoint,
                    attempts = attempts + 1,
                    error,
                    "webhook delivery dead (dead-letter list)"
                );
            }
            Ok(false) => {}
            Err(e) => warn!(id = d.id, error = %e, "cannot record a dead webhook delivery"),
        }
    }

    /// POSTs one delivery, signed with every active secret.
    async fn post(&self, c: &Compiled, d: &Delivery) -> Result<(), String> {
        let body = serde_json::to_vec(&d.payload).map_err(|e| e.to_string())?;
        let ts = timestamp::now().0 / 1000;
        let sig = signature::header(&c.secrets, &d.id, ts, &body);
        let response = self
            .inner
            .client
            .post(&c.endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("HTTP {}", status.as_u16())) }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text.chars().take(500).collect()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What the sender holds in memory: claimed deliveries by endpoint, and which endpoints
/// have a worker.
#[derive(Default)]
struct Held {
    ids: HashSet<String>,
    queues: HashMap<String, VecDeque<OutboxEntry>>,
    working: HashSet<String>,
}

/// One input of the dispatcher.
enum Item {
    Message(Arc<Message>),
    Event(Arc<HubEvent>),
}

#[cfg(test)]
mod tests;
