//! [`Rules`]: the rules service. It owns the [`Engine`] (behind a mutex; every call on it
//! is short), keeps API-made rules in the registry store (kind `rule`), runs the task that
//! evaluates every accepted message and carries out the firings, and keeps the alerts.
//!
//! # A message's way through
//!
//! [`Rules::run`] takes the `rules` feed of the broker's [`Tap`](crate::events::Tap)
//! (bounded: a full feed drops messages for the rules and counts them). For each message
//! it finds the device (the ingest mappings, as for telemetry: `+/telemetry` → level 0;
//! else `devices/{id}/…`) and its registry tags, builds one [`MessageContext`], evaluates
//! every matching rule, and carries out the firings in order:
//!
//! * `publish`: through the broker ([`Control::publish`]), as the hub;
//! * `command` and `webhook`: through an [`ActionSink`]: the app wires
//!   [`ServiceSink`](super::ServiceSink) (the command service, with the action's mode,
//!   key and ttl, and the webhook outbox); [`ControlSink`], without those services,
//!   publishes commands straight to the device's command topic and counts webhooks as
//!   not wired;
//! * `alert` and `clear_alert`: the alert list ([`Rules::alerts`], `GET /api/v1/alerts`)
//!   and the hub events `alert_raised` / `alert_cleared`.
//!
//! It calls [`Engine::tick`] every second (`for` and no-data rules).
//!
//! # Loop guard
//!
//! Every message a rule publishes (a `publish` action, and a `command` sent by
//! [`ControlSink`]) carries the MQTT 5 user property `telehub-rule` = the rule's name;
//! every command the command service publishes carries `command-id`. Messages with either
//! are not evaluated by any rule: rules do not chain, so no set of rules can feed itself.
//! Subscribers (and MQTT 5 devices) see the properties.
//!
//! # Alerts
//!
//! One alert per (alert name, device): raised by an `alert` action (raising an active
//! alert again updates its severity and message and counts it, without a new event),
//! cleared by a `clear_alert` action. Kept in memory only: after a restart, a rule whose
//! condition still holds raises its alert again at the next matching message (rule state
//! starts afresh too, so a `once_per_crossing` rule fires once more). At most
//! [`MAX_ACTIVE_ALERTS`] are active (more are refused and counted); the last
//! [`RECENT_CLEARED`] cleared ones are listed.
//!
//! # Where rules come from
//!
//! The config file's `[[rules]]` (read-only through the API) and the API (stored as
//! registry entries of kind `rule`, id = name, body = the rule as JSON). A stored rule
//! with the name of a config rule is ignored (the file wins, with a warning); a stored rule
//! that no longer compiles is skipped with an error in the log.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use telehub_broker::Control;
use telehub_core::{DeviceId, Message, MessageProperties, QoS, TopicName};
use telehub_store::registry::{Change, Entry, Kind};
use telehub_store::{RegistryStore, StoreError, Timestamp};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    CommandMode, CompiledRule, Engine, EngineConfig, Firing, MessageContext, RenderedAction, RuleError,
    RuleSpec, RuleStats, Severity,
};
use crate::commands::wire::COMMAND_ID_PROPERTY;
use crate::events::{Events, HubEvent};
use crate::ingest::mapping::{self, DeviceSource, Mapping};
use crate::timestamp::{now, to_rfc3339};

/// The MQTT 5 user property on every message a rule publishes; its value is the rule's
/// name. Messages carrying it are not evaluated by rules (the loop guard).
pub const RULE_PROPERTY: &str = "telehub-rule";

/// Messages the `rules` feed holds at most; beyond, the Tap drops them for the rules and
/// counts them.
pub const FEED_CAPACITY: usize = 10_000;

/// Active alerts at most; raising one more is refused (counted, logged).
pub const MAX_ACTIVE_ALERTS: usize = 10_000;

/// Cleared alerts listed by [`Rules::alerts`], newest first.
pub const RECENT_CLEARED: usize = 100;

/// How often [`Engine::tick`] runs.
const TICK: Duration = Duration::from_secs(1);

/// A boxed future, as [`ActionSink`]'s methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Finds a device's tags (the registry's).
pub type TagLookup = Arc<dyn Fn(&DeviceId) -> BTreeMap<String, String> + Send + Sync>;

/// A `command` action to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCall {
    /// The rule that fired.
    pub rule: String,
    /// The target device.
    pub device: DeviceId,
    /// The topic the rule names, if any.
    pub topic: Option<TopicName>,
    /// The command body.
    pub payload: Value,
    /// Delivery mode.
    pub mode: CommandMode,
    /// Latest-wins key.
    pub key: Option<String>,
    /// Queued-command lifetime.
    pub ttl: Option<Duration>,
}

/// A `webhook` action to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookCall {
    /// The rule that fired.
    pub rule: String,
    /// The device it fired for.
    pub device: Option<DeviceId>,
    /// When it fired.
    pub at: Timestamp,
    /// The webhook's id.
    pub webhook: String,
    /// The body the rule gives; `None`: the sink's own envelope.
    pub payload: Option<Value>,
}

/// Why an action was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No webhook service is wired in.
    #[error("webhooks are not wired in")]
    NotWired,
    /// The service refused or failed; the message says why.
    #[error("{0}")]
    Failed(String),
}

/// Carries out `command` and `webhook` actions (implemented by the app's wiring over the
/// command service and the webhook outbox).
pub trait ActionSink: Send + Sync + 'static {
    /// Sends a command.
    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<(), ActionError>>;
    /// Calls a webhook.
    fn webhook(&self, call: WebhookCall) -> BoxFuture<'_, Result<(), ActionError>>;
}

/// The sink without the command and webhook services: a command is published at once
/// (QoS 1) to its topic (default `devices/{id}/commands`), whatever its mode, with the
/// [`RULE_PROPERTY`]; a webhook is refused with [`ActionError::NotWired`] (counted in
/// [`ServiceStats::webhooks_not_wired`]).
#[derive(Debug, Clone)]
pub struct ControlSink {
    control: Control,
}

impl ControlSink {
    /// A sink publishing through `control`.
    pub fn new(control: Control) -> Self {
        Self { control }
    }
}

impl ActionSink for ControlSink {
    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            let topic = match call.topic {
                Some(t) => t,
                None => TopicName::new(format!("devices/{}/commands", call.device))
                    .map_err(|e| ActionError::Failed(format!("command topic: {e}")))?,
            };
            let payload = payload_bytes(&call.payload);
            let sessions =
                self.control.publish(own_message(&call.rule, topic, payload, QoS::AtLeastOnce, false)).await;
            tracing::debug!(rule = call.rule, device = %call.device, sessions, "rule command published");
            Ok(())
        })
    }

    fn webhook(&self, _call: WebhookCall) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async { Err(ActionError::NotWired) })
    }
}

/// A message of rule `rule`, marked with [`RULE_PROPERTY`].
fn own_message(rule: &str, topic: TopicName, payload: Vec<u8>, qos: QoS, retain: bool) -> Message {
    Message {
        topic,
        payload: payload.into(),
        qos,
        retain,
        properties: MessageProperties {
            user_properties: vec![(RULE_PROPERTY.into(), rule.into())],
            ..MessageProperties::default()
        },
    }
}

/// A JSON string is sent as its text, anything else as JSON.
fn payload_bytes(payload: &Value) -> Vec<u8> {
    match payload {
        Value::String(s) => s.clone().into_bytes(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    }
}

/// Why a rule could not be loaded, saved or changed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The rule does not compile (the error names the field, and for an expression its
    /// line and column).
    #[error(transparent)]
    Invalid(RuleError),
    /// The body names another rule than the URL.
    #[error("the body names rule {body:?} but the URL names {path:?}")]
    NameMismatch {
        /// The URL's name.
        path: String,
        /// The body's name.
        body: String,
    },
    /// No rule of that name.
    #[error("no rule named {0:?}")]
    NotFound(String),
    /// A rule of that name exists.
    #[error("a rule named {0:?} already exists")]
    Exists(String),
    /// The rule comes from the config file.
    #[error("rule {0:?} comes from the config file: change it there (it is read-only through the API)")]
    ReadOnly(String),
    /// A `[[rules]]` entry of the config file does not compile.
    #[error("config: rule {name:?}: {error}")]
    Config {
        /// The rule's name.
        name: String,
        /// Why.
        error: RuleError,
    },
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The service's own counters (the engine counts per rule).
#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    own_messages: AtomicU64,
    published: AtomicU64,
    commands: AtomicU64,
    webhooks: AtomicU64,
    webhooks_not_wired: AtomicU64,
    action_errors: AtomicU64,
    alerts_refused: AtomicU64,
}

/// A snapshot of the service's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStats {
    /// Messages evaluated.
    pub messages: u64,
    /// Messages not evaluated because a rule published them (the loop guard).
    pub own_messages: u64,
    /// `publish` actions carried out.
    pub published: u64,
    /// `command` actions handed to the sink.
    pub commands: u64,
    /// `webhook` actions handed to the sink.
    pub webhooks: u64,
    /// `webhook` actions dropped because no webhook service is wired in.
    pub webhooks_not_wired: u64,
    /// Actions that failed when carried out.
    pub action_errors: u64,
    /// Alerts not raised because [`MAX_ACTIVE_ALERTS`] were active.
    pub alerts_refused: u64,
}

/// Failures of a rule's actions when carried out (the engine counts its own errors).
#[derive(Debug, Default, Clone)]
struct ActionFailures {
    count: u64,
    last: Option<(Timestamp, Option<DeviceId>, String)>,
}

/// One alert.
#[derive(Debug, Clone)]
struct Alert {
    name: String,
    device: Option<DeviceId>,
    rule: String,
    severity: Severity,
    message: Option<String>,
    raised_at: Timestamp,
    updated_at: Timestamp,
    cleared_at: Option<Timestamp>,
    times: u64,
}

impl Alert {
    fn view(&self) -> Value {
        json!({
            "name": self.name,
            "device": self.device.as_ref().map(DeviceId::as_str),
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "state": if self.cleared_at.is_some() { "cleared" } else { "active" },
            "raised_at": to_rfc3339(self.raised_at),
            "updated_at": to_rfc3339(self.updated_at),
            "cleared_at": self.cleared_at.map(to_rfc3339),
            "times": self.times,
        })
    }
}

#[derive(Debug, Default)]
struct Alerts {
    active: HashMap<(String, Option<DeviceId>), Alert>,
    cleared: VecDeque<Alert>,
}

/// The rules service. Cheap to clone.
pub struct Rules<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Rules<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<S> {
    store: Arc<S>,
    engine: Mutex<Engine>,
    /// Names of the config file's rules (read-only through the API).
    from_config: HashSet<String>,
    alerts: Mutex<Alerts>,
    failures: Mutex<HashMap<String, ActionFailures>>,
    events: Events,
    /// Serializes API changes (check, store, engine).
    writes: tokio::sync::Mutex<()>,
    counters: Counters,
}

/// Where [`Rules::run`] finds what it needs besides the rules.
#[derive(Clone)]
pub struct Wiring {
    /// For `publish` actions.
    pub control: Control,
    /// For `command` and `webhook` actions.
    pub sink: Arc<dyn ActionSink>,
    /// Which device a topic belongs to (the ingest mappings).
    pub mappings: Vec<Mapping>,
    /// A device's tags.
    pub tags: TagLookup,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<S: RegistryStore> Rules<S> {
    /// Loads the config file's rules and the stored ones.
    ///
    /// # Errors
    ///
    /// [`RulesError::Config`] naming a config rule that does not compile (or two with one
    /// name); [`RulesError::Store`] when the stored rules cannot be read.
    pub async fn open(
        store: Arc<S>,
        config: EngineConfig,
        from_file: Vec<RuleSpec>,
        events: Events,
    ) -> Result<Self, RulesError> {
        let mut compiled = Vec::new();
        let mut from_config = HashSet::new();
        for spec in from_file {
            let name = spec.name.clone();
            let rule = CompiledRule::compile(spec)
                .map_err(|error| RulesError::Config { name: name.clone(), error })?;
            if !from_config.insert(name.clone()) {
                return Err(RulesError::Config { name: name.clone(), error: RuleError::Duplicate(name) });
            }
            compiled.push(rule);
        }
        for entry in store.registry_load().await?.into_iter().filter(|e| e.kind == Kind::Rule) {
            if from_config.contains(&entry.id) {
                tracing::warn!(
                    rule = entry.id,
                    "a rule made through the API has the name of a config rule: the config file's is used"
                );
                continue;
            }
            let rule = serde_json::from_value::<RuleSpec>(entry.body)
                .map_err(|e| e.to_string())
                .and_then(|spec| CompiledRule::compile(spec).map_err(|e| e.to_string()));
            match rule {
                Ok(rule) => compiled.push(rule),
                Err(error) => {
                    tracing::error!(rule = entry.id, error, "a stored rule cannot be loaded: skipped")
                }
            }
        }
        let mut engine = Engine::new(config);
        engine.set_all(compiled).map_err(|error| RulesError::Config { name: String::new(), error })?;
        tracing::info!(rules = engine.len(), from_config = from_config.len(), "rules loaded");
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                engine: Mutex::new(engine),
                from_config,
                alerts: Mutex::default(),
                failures: Mutex::default(),
                events,
                writes: tokio::sync::Mutex::new(()),
                counters: Counters::default(),
            }),
        })
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        lock(&self.inner.engine)
    }

    /// Every rule as the API shows it (its fields, `source`, `stats`), in the order they
    /// were added.
    pub fn list(&self) -> Vec<Value> {
        let names: Vec<String> = self.engine().specs().map(|s| s.name.clone()).collect();
        names.iter().filter_map(|n| self.get(n)).collect()
    }

    /// One rule as the API shows it.
    pub fn get(&self, name: &str) -> Option<Value> {
        let (spec, stats) = {
            let engine = self.engine();
            (engine.get(name)?.clone(), engine.stats(name)?)
        };
        let failures = lock(&self.inner.failures).get(name).cloned().unwrap_or_default();
        let mut view = serde_json::to_value(&spec).unwrap_or_else(|_| json!({}));
        if let Value::Object(map) = &mut view {
            let source = if self.inner.from_config.contains(name) { "config" } else { "api" };
            map.insert("source".into(), source.into());
            map.insert("stats".into(), stats_view(&stats, &failures));
        }
        Some(view)
    }

    /// True when `name` comes from the config file.
    pub fn is_from_config(&self, name: &str) -> bool {
        self.inner.from_config.contains(name)
    }

    /// Adds a rule and stores it.
    ///
    /// # Errors
    ///
    /// [`RulesError::Invalid`] (nothing stored), [`RulesError::Exists`],
    /// [`RulesError::Store`].
    pub async fn create(&self, spec: RuleSpec) -> Result<Value, RulesError> {
        let _writes = self.inner.writes.lock().await;
        let rule = CompiledRule::compile(spec).map_err(RulesError::Invalid)?;
        let name = rule.name().to_owned();
        if self.engine().get(&name).is_some() {
            return Err(RulesError::Exists(name));
        }
        self.save(rule.spec()).await?;
        self.engine().add(rule).map_err(RulesError::Invalid)?;
        Ok(self.get(&name).expect("just added"))
    }

    /// Replaces rule `name` (or adds it); returns it and whether it is new.
    ///
    /// # Errors
    ///
    /// [`RulesError::NameMismatch`], [`RulesError::ReadOnly`], [`RulesError::Invalid`]
    /// (nothing stored), [`RulesError::Store`].
    pub async fn put(&self, name: &str, spec: RuleSpec) -> Result<(Value, bool), RulesError> {
        if spec.name != name {
            return Err(RulesError::NameMismatch { path: name.to_owned(), body: spec.name });
        }
        if self.is_from_config(name) {
            return Err(RulesError::ReadOnly(name.to_owned()));
        }
        let _writes = self.inner.writes.lock().await;
        let rule = CompiledRule::compile(spec).map_err(RulesError::Invalid)?;
        self.save(rule.spec()).await?;
        let created = {
            let mut engine = self.engine();
            if engine.get(name).is_some() {
                engine.replace(rule).map_err(RulesError::Invalid)?;
                false
            } else {
                engine.add(rule).map_err(RulesError::Invalid)?;
                true
            }
        };
        Ok((self.get(name).expect("just saved"), created))
    }

    /// Removes rule `name` from the store and the engine.
    ///
    /// # Errors
    ///
    /// [`RulesError::ReadOnly`], [`RulesError::NotFound`], [`RulesError::Store`].
    pub async fn delete(&self, name: &str) -> Result<(), RulesError> {
        if self.is_from_config(name) {
            return Err(RulesError::ReadOnly(name.to_owned()));
        }
        let _writes = self.inner.writes.lock().await;
        if self.engine().get(name).is_none() {
            return Err(RulesError::NotFound(name.to_owned()));
        }
        self.inner
            .store
            .registry_apply(vec![Change::Delete { kind: Kind::Rule, id: name.to_owned() }])
            .await?;
        self.engine().remove(name);
        lock(&self.inner.failures).remove(name);
        Ok(())
    }

    async fn save(&self, spec: &RuleSpec) -> Result<(), StoreError> {
        let body = serde_json::to_value(spec).expect("rules serialize");
        let entry = Entry { kind: Kind::Rule, id: spec.name.clone(), owner: None, body };
        self.inner.store.registry_apply(vec![Change::Put(entry)]).await
    }

    /// `{"active": [...], "recently_cleared": [...]}`: active alerts (oldest first) and the
    /// last cleared ones (newest first).
    pub fn alerts(&self) -> Value {
        let alerts = lock(&self.inner.alerts);
        let mut active: Vec<&Alert> = alerts.active.values().collect();
        active.sort_by(|a, b| a.raised_at.0.cmp(&b.raised_at.0).then_with(|| a.name.cmp(&b.name)));
        json!({
            "active": active.iter().map(|a| a.view()).collect::<Vec<_>>(),
            "recently_cleared": alerts.cleared.iter().map(Alert::view).collect::<Vec<_>>(),
        })
    }

    /// The service's counters.
    pub fn stats(&self) -> ServiceStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServiceStats {
            messages: get(&c.messages),
            own_messages: get(&c.own_messages),
            published: get(&c.published),
            commands: get(&c.commands),
            webhooks: get(&c.webhooks),
            webhooks_not_wired: get(&c.webhooks_not_wired),
            action_errors: get(&c.action_errors),
            alerts_refused: get(&c.alerts_refused),
        }
    }

    /// Evaluates every message of `feed` and carries out the firings; ticks every second.
    /// On `shutdown` it evaluates what the feed already holds, then returns.
    pub async fn run(
        self,
        mut feed: mpsc::Receiver<Arc<Message>>,
        wiring: Wiring,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                message = feed.recv() => match message {
                    Some(message) => self.on_message(&message, &wiring).await,
                    None => return,
                },
                _ = tick.tick() => {
                    let firings = self.engine().tick(now());
                    self.execute(firings, &wiring).await;
                }
            }
        }
        while let Ok(message) = feed.try_recv() {
            self.on_message(&message, &wiring).await;
        }
    }

    /// Evaluates one message and carries out its firings.
    pub async fn on_message(&self, message: &Message, wiring: &Wiring) {
        let counters = &self.inner.counters;
        if message
            .properties
            .user_properties
            .iter()
            .any(|(k, _)| &**k == RULE_PROPERTY || &**k == COMMAND_ID_PROPERTY)
        {
            counters.own_messages.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counters.messages.fetch_add(1, Ordering::Relaxed);
        let device = device_of(&wiring.mappings, &message.topic, &message.payload);
        let tags = device.as_ref().map(|d| (wiring.tags)(d)).unwrap_or_default();
        let at = now();
        let cx = MessageContext::new(&message.topic, device.as_ref(), &tags, &message.payload, at);
        let firings = self.engine().evaluate(&cx, at);
        self.execute(firings, wiring).await;
    }

    async fn execute(&self, firings: Vec<Firing>, wiring: &Wiring) {
        for firing in firings {
            let Ok(actions) = firing.actions else {
                continue; // recorded by the engine
            };
            for action in actions {
                if let Err(e) =
                    self.act(&firing.rule, firing.device.as_ref(), firing.at, action, wiring).await
                {
                    self.inner.counters.action_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(rule = &*firing.rule, device = ?firing.device, error = %e, "a rule's action failed");
                    let mut failures = lock(&self.inner.failures);
                    let f = failures.entry(firing.rule.to_string()).or_default();
                    f.count += 1;
                    f.last = Some((firing.at, firing.device.clone(), e.to_string()));
                }
            }
        }
    }

    async fn act(
        &self,
        rule: &str,
        device: Option<&DeviceId>,
        at: Timestamp,
        action: RenderedAction,
        wiring: &Wiring,
    ) -> Result<(), ActionError> {
        let counters = &self.inner.counters;
        match action {
            RenderedAction::Publish { topic, payload, qos, retain } => {
                counters.published.fetch_add(1, Ordering::Relaxed);
                wiring.control.publish(own_message(rule, topic, payload_bytes(&payload), qos, retain)).await;
                Ok(())
            }
            RenderedAction::Command { device, topic, payload, mode, key, ttl } => {
                counters.commands.fetch_add(1, Ordering::Relaxed);
                let call = CommandCall { rule: rule.to_owned(), device, topic, payload, mode, key, ttl };
                wiring.sink.command(call).await
            }
            RenderedAction::Webhook { webhook, payload } => {
                counters.webhooks.fetch_add(1, Ordering::Relaxed);
                let call =
                    WebhookCall { rule: rule.to_owned(), device: device.cloned(), at, webhook, payload };
                let result = wiring.sink.webhook(call).await;
                if result == Err(ActionError::NotWired)
                    && counters.webhooks_not_wired.fetch_add(1, Ordering::Relaxed) == 0
                {
                    tracing::warn!(
                        rule,
                        "a rule calls a webhook, but webhooks are not wired in: dropped (counted)"
                    );
                }
                result
            }
            RenderedAction::Alert { name, device, severity, message } => {
                self.raise(rule, name, device, severity, message, at)
            }
            RenderedAction::ClearAlert { name, device } => {
                self.clear(name, device, at);
                Ok(())
            }
        }
    }

    fn raise(
        &self,
        rule: &str,
        name: String,
        device: Option<DeviceId>,
        severity: Severity,
        message: Option<String>,
        at: Timestamp,
    ) -> Result<(), ActionError> {
        let event = {
            let mut alerts = lock(&self.inner.alerts);
            let full = alerts.active.len() >= MAX_ACTIVE_ALERTS;
            match alerts.active.entry((name.clone(), device.clone())) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let a = e.get_mut();
                    a.severity = severity;
                    a.message = message;
                    a.updated_at = at;
                    a.times += 1;
                    None
                }
                std::collections::hash_map::Entry::Vacant(_) if full => {
                    self.inner.counters.alerts_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(ActionError::Failed(format!(
                        "alert {name:?} not raised: {MAX_ACTIVE_ALERTS} alerts are active"
                    )));
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    let alert = Alert {
                        name,
                        device,
                        rule: rule.to_owned(),
                        severity,
                        message,
                        raised_at: at,
                        updated_at: at,
                        cleared_at: None,
                        times: 1,
                    };
                    Some(e.insert(alert).view())
                }
            }
        };
        if let Some(alert) = event {
            tracing::info!(rule, alert = %alert, "alert raised");
            self.inner.events.emit(HubEvent::AlertRaised { alert });
        }
        Ok(())
    }

    fn clear(&self, name: String, device: Option<DeviceId>, at: Timestamp) {
        let event = {
            let mut alerts = lock(&self.inner.alerts);
            let Some(mut alert) = alerts.active.remove(&(name, device)) else { return };
            alert.cleared_at = Some(at);
            alert.updated_at = at;
            let view = alert.view();
            if alerts.cleared.len() == RECENT_CLEARED {
                alerts.cleared.pop_back();
            }
            alerts.cleared.push_front(alert);
            view
        };
        tracing::info!(alert = %event, "alert cleared");
        self.inner.events.emit(HubEvent::AlertCleared { alert: event });
    }
}

/// The device a message belongs to: the first ingest mapping matching its topic, else
/// `devices/{id}/…`.
fn device_of(mappings: &[Mapping], topic: &TopicName, payload: &[u8]) -> Option<DeviceId> {
    let level = |l: usize| topic.as_str().split('/').nth(l).and_then(|id| DeviceId::new(id).ok());
    match mapping::find(mappings, topic).map(|m| &m.device) {
        Some(DeviceSource::TopicLevel(l)) => level(*l),
        Some(DeviceSource::Field(field)) => {
            mapping::parse_object(payload).ok().and_then(|o| mapping::device_from_field(&o, field).ok())
        }
        None if topic.as_str().starts_with("devices/") => level(1),
        None => None,
    }
}

fn stats_view(stats: &RuleStats, failures: &ActionFailures) -> Value {
    let error = |(at, device, message): &(Timestamp, Option<DeviceId>, String)| json!({ "at": to_rfc3339(*at), "device": device.as_ref().map(DeviceId::as_str), "message": message });
    let last_error = match (&stats.last_error, &failures.last) {
        (Some(a), Some(b)) => Some(if b.0.0 >= a.0.0 { b } else { a }),
        (a, b) => a.as_ref().or(b.as_ref()),
    };
    json!({
        "evaluations": stats.evaluations,
        "firings": stats.firings,
        "errors": stats.errors + failures.count,
        "skipped": stats.skipped,
        "evicted": stats.evicted,
        "devices": stats.devices,
        "last_firing": stats.last_fired.map(to_rfc3339),
        "last_error": last_error.map(error),
        "recent_firings": stats.recent.iter().rev().map(|(at, device, ok)| json!({
            "at": to_rfc3339(*at),
            "device": device.as_ref().map(DeviceId::as_str),
            "ok": ok,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
