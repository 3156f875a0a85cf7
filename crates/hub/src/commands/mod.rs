//! [`Commands`]: commands to devices, from the API call to the device's outcome.
//!
//! A command is stored ([`CommandStore::command_insert`], committed) before it is
//! answered `queued`, then published through the broker's [`Control`] as soon as the
//! device is connected. Its state moves `queued → sent → delivered → succeeded | failed
//! | rejected | expired | cancelled`, each move a compare-and-set in the store followed
//! by a [`HubEvent::CommandStateChanged`].
//!
//! * **fire-and-forget**: stored, then published at once if the device is connected
//!   over MQTT (`sent` when at least one session took it), else `failed` with the reason
//!   `device not connected`.
//! * **queued**: kept until delivered or its `ttl` runs out (`expired`); delivered in
//!   sequence order whenever the device is connected (at once, on its
//!   `DeviceConnected` event, and by the retry sweep), or handed out one by one to an
//!   HTTP long-poll ([`Commands::next`]).
//! * **latest-wins**: as queued, but inserting one cancels (`superseded`) the open
//!   commands of the same `key` in the same transaction, so only the newest is ever
//!   delivered.
//!
//! Delivery is at least once: a command `sent` but not acknowledged is sent again when
//! the device reconnects, with the same id, so a device gets each command exactly once
//! by skipping ids it has already seen. [`wire`] has the payload and topic formats.
//!
//! [`Commands::run`] is the service's task: delivery on connect with retries, expiry,
//! and the feed of device messages (acknowledgements, MQTT 5 responses, state
//! reports). It stops on its cancellation token; every queue it reads is bounded.

pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use telehub_broker::Control;
use telehub_core::{DeviceId, Message, TopicName};
pub use telehub_store::commands::{Command, CommandMode, CommandQuery, CommandState};
use telehub_store::commands::{Inserted, NewCommand};
use telehub_store::{CommandStore, RegistryStore, ShadowStore, StoreError, TelemetryStore, Timestamp};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Events, HubEvent};
use crate::registry::Registry;
use crate::timestamp::{now, to_rfc3339};

/// What the command service needs from the store.
pub trait CommandBackend: CommandStore + ShadowStore + RegistryStore + TelemetryStore {}

impl<T: CommandStore + ShadowStore + RegistryStore + TelemetryStore> CommandBackend for T {}

/// The `[commands]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Open (queued or sent) commands one device may have; one more is refused (HTTP
    /// 429).
    pub max_queued_per_device: usize,
    /// Time to live of a command created without `ttl`.
    #[serde(with = "telehub_core::duration")]
    pub default_ttl: Duration,
    /// Longest `ttl` a command may ask for.
    #[serde(with = "telehub_core::duration")]
    pub max_ttl: Duration,
    /// How often open commands past their time to live are marked `expired`.
    #[serde(with = "telehub_core::duration")]
    pub expire_interval: Duration,
    /// Longest pause between two delivery attempts to a connected device that still has
    /// queued commands (attempts after a connect start at 100 ms and double).
    #[serde(with = "telehub_core::duration")]
    pub retry_interval: Duration,
    /// Longest `wait` of `GET …/commands/next`.
    #[serde(with = "telehub_core::duration")]
    pub max_wait: Duration,
    /// A command handed to an HTTP long-poll and not acknowledged this long after is
    /// handed out again by the next poll (the answer may have been lost on the way: at
    /// least once, the device tells repeats apart by the command id).
    #[serde(with = "telehub_core::duration")]
    pub poll_resend_after: Duration,
    /// Device messages (acks, responses, state reports) waiting for the service; beyond
    /// it the broker's feed drops them and counts the drops.
    pub feed_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_queued_per_device: 100,
            default_ttl: Duration::from_secs(86_400),
            max_ttl: Duration::from_secs(30 * 86_400),
            expire_interval: Duration::from_secs(1),
            retry_interval: Duration::from_secs(5),
            max_wait: Duration::from_secs(60),
            poll_resend_after: Duration::from_secs(60),
            feed_capacity: 4096,
        }
    }
}

/// Why a command call failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The device is not registered.
    #[error("no device {0} is registered")]
    UnknownDevice(DeviceId),
    /// No such command (for this device).
    #[error("no command {0} for this device")]
    NotFound(String),
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The device has as many open commands as allowed.
    #[error("device {device} already has {open} open commands (the limit is {limit}): retry later")]
    QueueFull {
        /// The device.
        device: DeviceId,
        /// Its open commands.
        open: u64,
        /// `max_queued_per_device`.
        limit: usize,
    },
    /// The command is not in a state this call can move it from.
    #[error("command {id} is {}: {what}", state.as_str())]
    WrongState {
        /// The command.
        id: String,
        /// Its state.
        state: CommandState,
        /// What could not be done.
        what: &'static str,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// A command as the API caller asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What the device receives.
    pub payload: Value,
    /// How it is delivered.
    pub mode: CommandMode,
    /// Latest-wins key (required for, and only for, latest-wins).
    pub key: Option<String>,
    /// Time to live (default `default_ttl`).
    pub ttl: Option<Duration>,
    /// Topic of its own (the bare payload is published there).
    pub topic: Option<String>,
}

/// The command as the API and events show it.
pub fn view(cmd: &Command) -> Value {
    let ts = |t: Timestamp| Value::String(to_rfc3339(t));
    let timestamps: serde_json::Map<String, Value> =
        cmd.timestamps.iter().map(|(s, t)| (s.as_str().to_owned(), ts(*t))).collect();
    serde_json::json!({
        "id": cmd.id,
        "device": cmd.device.as_str(),
        "seq": cmd.seq,
        "mode": cmd.mode.as_str(),
        "key": cmd.key,
        "topic": cmd.topic,
        "payload": cmd.payload,
        "state": cmd.state.as_str(),
        "created_at": ts(cmd.created_at),
        "expires_at": cmd.expires_at.map(ts),
        "updated_at": ts(cmd.updated_at),
        "timestamps": timestamps,
        "result": cmd.result,
        "reason": cmd.reason,
    })
}

/// A connected device that may still have queued commands to deliver.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// Send again the commands already `sent` (after a connect).
    resend: bool,
    /// Next attempt.
    at: Instant,
    /// Pause after the next failed attempt.
    backoff: Duration,
}

/// First pause between delivery attempts after a connect.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How often the run loop looks for due delivery attempts.
const RETRY_TICK: Duration = Duration::from_millis(100);

struct Inner<S> {
    config: Config,
    store: Arc<S>,
    registry: Registry<S>,
    control: Control,
    events: Events,
    /// Subscribed at construction, so no connect before [`Commands::run`] is missed.
    presence: Mutex<Option<broadcast::Receiver<Arc<HubEvent>>>>,
    /// Per-device delivery lock: one delivery at a time keeps the sequence order.
    locks: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
    /// Devices with queued commands to try again.
    retries: Mutex<HashMap<DeviceId, Retry>>,
    /// HTTP long-polls waiting, by device.
    waiters: Mutex<HashMap<DeviceId, Arc<Notify>>>,
    /// Cancelled by [`Commands::release_polls`]: long-polls answer at once.
    polls_released: CancellationToken,
}

/// The command service. Cheap to clone.
pub struct Commands<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Commands<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Validates a latest-wins key or a topic name given by a caller.
fn check_request(req: &Request) -> Result<(), CommandError> {
    let invalid = |m: String| Err(CommandError::Invalid(m));
    match (req.mode, &req.key) {
        (CommandMode::LatestWins, None) => return invalid("`key` is required for mode latest_wins".into()),
        (CommandMode::LatestWins, Some(key)) => {
            if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
                return invalid("`key` must be 1 to 128 characters, none a control character".into());
            }
            if key.starts_with('$') {
                return invalid(
                    "`key`: keys starting with `$` are reserved (`$state`: the device shadow)".into(),
                );
            }
        }
        (_, Some(_)) => return invalid("`key` is only for mode latest_wins".into()),
        (_, None) => {}
    }
    if let Some(topic) = &req.topic {
        if let Err(e) = TopicName::new(topic.as_str()) {
            return invalid(format!("`topic`: {e}"));
        }
        if topic.starts_with('$') {
            return invalid("`topic`: topics starting with `$` are the broker's".into());
        }
    }
    Ok(())
}

/// A new command id: `cmd_` and 24 hex digits (96 random bits).
fn new_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    let mut id = String::from("cmd_");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<S: CommandBackend> Commands<S> {
    /// The service over `store`, publishing through `control`, announcing state
    /// changes on `events` (it also listens there for devices coming online).
    pub fn new(
        config: Config,
        store: Arc<S>,
        registry: Registry<S>,
        control: Control,
        events: Events,
    ) -> Self {
        let presence = Mutex::new(Some(events.subscribe()));
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                registry,
                control,
                events,
                presence,
                locks: Mutex::default(),
                retries: Mutex::default(),
                waiters: Mutex::default(),
                polls_released: CancellationToken::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn store(&self) -> &Arc<S> {
        &self.inner.store
    }

    pub(crate) fn emit(&self, cmd: &Command) {
        self.inner.events.emit(HubEvent::CommandStateChanged { command: view(cmd) });
    }

    /// Fails with [`CommandError::UnknownDevice`] unless `device` is registered.
    pub fn check_device(&self, device: &DeviceId) -> Result<(), CommandError> {
        match self.inner.registry.device(device) {
            Some(_) => Ok(()),
            None => Err(CommandError::UnknownDevice(device.clone())),
        }
    }

    /// Creates a command for a registered device: stored (committed) as `queued`, then,
    /// for fire-and-forget, published now (`sent`) or `failed`; for the other modes
    /// published now if the device is connected. Returns it as it is after that.
    ///
    /// # Errors
    ///
    /// Unknown device, invalid request (naming the field), a full queue, the store.
    pub async fn create(&self, device: &DeviceId, req: Request) -> Result<Command, CommandError> {
        self.check_device(device)?;
        check_request(&req)?;
        self.insert(device, req).await
    }

    /// [`Commands::create`] without the caller checks (the shadow's `$state` key).
    pub(crate) async fn insert(&self, device: &DeviceId, req: Request) -> Result<Command, CommandError> {
        let ttl = req.ttl.unwrap_or(self.inner.config.default_ttl);
        if ttl.is_zero() || ttl > self.inner.config.max_ttl {
            return Err(CommandError::Invalid(format!(
                "`ttl` must be more than 0 and at most {}s",
                self.inner.config.max_ttl.as_secs()
            )));
        }
        let created_at = now();
        let new = NewCommand {
            id: new_id(),
            device: device.clone(),
            mode: req.mode,
            key: req.key,
            payload: req.payload,
            topic: req.topic,
            created_at,
            expires_at: Some(Timestamp(created_at.0.saturating_add(ms(ttl)))),
        };
        let limit = self.inner.config.max_queued_per_device;
        let (command, superseded) = match self.inner.store.command_insert(new, limit).await? {
            Inserted::Accepted { command, superseded } => (command, superseded),
            Inserted::QueueFull { open } => {
                return Err(CommandError::QueueFull { device: device.clone(), open, limit });
            }
            Inserted::DuplicateId => {
                return Err(CommandError::Invalid("a command with this id exists".into()));
            }
        };
        for id in &superseded {
            if let Some(old) = self.inner.store.command_get(id).await? {
                self.emit(&old);
            }
        }
        self.emit(&command);
        if command.mode == CommandMode::FireAndForget {
            return self.fire(command).await;
        }
        self.wake_waiters(device);
        if self.inner.control.is_connected(device) {
            self.deliver(device, false).await?;
        }
        Ok(self.inner.store.command_get(&command.id).await?.unwrap_or(command))
    }

    async fn fire(&self, command: Command) -> Result<Command, CommandError> {
        let taken = if self.inner.control.is_connected(&command.device) {
            match wire::message(&command) {
                Ok(message) => self.inner.control.publish(message).await,
                Err(_) => 0,
            }
        } else {
            0
        };
        let (to, reason) = if taken > 0 {
            (CommandState::Sent, None)
        } else if self.inner.control.is_connected(&command.device) {
            (CommandState::Failed, Some("device not subscribed to its command topic".to_owned()))
        } else {
            (CommandState::Failed, Some("device not connected".to_owned()))
        };
        let moved = self
            .inner
            .store
            .command_transition(&command.id, &[CommandState::Queued], to, None, reason, now())
            .await?;
        match moved {
            Some(cmd) => {
                self.emit(&cmd);
                Ok(cmd)
            }
            None => Ok(self.inner.store.command_get(&command.id).await?.unwrap_or(command)),
        }
    }

    /// Publishes the device's open commands in sequence order while it is connected:
    /// every `queued` one (and, with `resend`, every `sent` one again), stopping at the
    /// first that no session takes (the device has not subscribed yet), which is then
    /// retried. Returns whether everything was handed over.
    async fn deliver(&self, device: &DeviceId, resend: bool) -> Result<bool, CommandError> {
        let device_lock = {
            let mut locks = lock(&self.inner.locks);
            Arc::clone(locks.entry(device.clone()).or_default())
        };
        let guard = device_lock.lock().await;
        let result = self.deliver_locked(device, resend).await;
        drop(guard);
        drop(device_lock);
        {
            let mut locks = lock(&self.inner.locks);
            // only the map's: nobody else waits, drop the entry
            if locks.get(device).is_some_and(|l| Arc::strong_count(l) == 1) {
                locks.remove(device);
            }
        }
        let done = *result.as_ref().unwrap_or(&false);
        let mut retries = lock(&self.inner.retries);
        if done {
            retries.remove(device);
        } else {
            let now = Instant::now();
            let entry =
                retries.entry(device.clone()).or_insert(Retry { resend, at: now, backoff: FIRST_BACKOFF });
            entry.resend |= resend;
            entry.at = now + entry.backoff;
            entry.backoff = (entry.backoff * 2).min(self.inner.config.retry_interval);
        }
        result
    }

    async fn deliver_locked(&self, device: &DeviceId, resend: bool) -> Result<bool, CommandError> {
        if !self.inner.control.is_connected(device) {
            return Ok(false);
        }
        let store = &self.inner.store;
        let pending = store.command_pending(device, self.inner.config.max_queued_per_device.max(1)).await?;
        let at = now();
        for cmd in pending {
            if cmd.state == CommandState::Sent && !resend {
                continue;
            }
            if cmd.expires_at.is_some_and(|e| e <= at) {
                continue; // the expiry tick takes it
            }
            let message = match wire::message(&cmd) {
                Ok(m) => m,
                Err(reason) => {
                    let failed = store
                        .command_transition(
                            &cmd.id,
                            &CommandState::OPEN,
                            CommandState::Failed,
                            None,
                            Some(reason),
                            at,
                        )
                        .await?;
                    if let Some(failed) = failed {
                        self.emit(&failed);
                    }
                    continue;
                }
            };
            if self.inner.control.publish(message).await == 0 {
                return Ok(false);
            }
            if cmd.state == CommandState::Queued {
                let sent = store
                    .command_transition(
                        &cmd.id,
                        &[CommandState::Queued],
                        CommandState::Sent,
                        None,
                        None,
                        now(),
                    )
                    .await?;
                if let Some(sent) = sent {
                    self.emit(&sent);
                }
            }
        }
        Ok(true)
    }

    /// The command `id` of `device`.
    ///
    /// # Errors
    ///
    /// Not found (also when it belongs to another device), the store.
    pub async fn get(&self, device: &DeviceId, id: &str) -> Result<Command, CommandError> {
        match self.inner.store.command_get(id).await? {
            Some(cmd) if &cmd.device == device => Ok(cmd),
            _ => Err(CommandError::NotFound(id.to_owned())),
        }
    }

    /// A page of the device's commands, newest first.
    ///
    /// # Errors
    ///
    /// The store.
    pub async fn list(&self, query: CommandQuery) -> Result<Vec<Command>, CommandError> {
        Ok(self.inner.store.command_list(query).await?)
    }

    /// Cancels an open (queued or sent) command.
    ///
    /// # Errors
    ///
    /// Not found, [`CommandError::WrongState`] when it is no longer open, the store.
    pub async fn cancel(&self, device: &DeviceId, id: &str) -> Result<Command, CommandError> {
        let cmd = self.get(device, id).await?;
        let moved = self
            .inner
            .store
            .command_transition(
                id,
                &CommandState::OPEN,
                CommandState::Cancelled,
                None,
                Some("cancelled".into()),
                now(),
            )
            .await?;
        match moved {
            Some(cmd) => {
                self.emit(&cmd);
                Ok(cmd)
            }
            None => {
                let state = self.inner.store.command_get(id).await?.map_or(cmd.state, |c| c.state);
                Err(CommandError::WrongState {
                    id: id.to_owned(),
                    state,
                    what: "only queued or sent commands can be cancelled",
                })
            }
        }
    }

    /// Records an outcome the device reported: `delivered` from queued or sent;
    /// `succeeded`, `failed` or `rejected` from queued, sent or delivered. Reporting the
    /// state the command is already in again is answered with the command, unchanged.
    ///
    /// # Errors
    ///
    /// Not found, a status devices cannot report, [`CommandError::WrongState`] when the
    /// command is past that state, the store.
    pub async fn ack(
        &self,
        device: &DeviceId,
        id: &str,
        status: CommandState,
        result: Option<Value>,
    ) -> Result<Command, CommandError> {
        let cmd = self.get(device, id).await?;
        let from: &[CommandState] = match status {
            CommandState::Delivered => &CommandState::OPEN,
            CommandState::Succeeded | CommandState::Failed | CommandState::Rejected => {
                &[CommandState::Queued, CommandState::Sent, CommandState::Delivered]
            }
            other => {
                return Err(CommandError::Invalid(format!(
                    "`status`: a device reports delivered, succeeded, failed or rejected, not {}",
                    other.as_str()
                )));
            }
        };
        let moved = self.inner.store.command_transition(id, from, status, result, None, now()).await?;
        match moved {
            Some(cmd) => {
                self.emit(&cmd);
                Ok(cmd)
            }
            None => {
                let current = self.inner.store.command_get(id).await?.unwrap_or(cmd);
                if current.state == status {
                    Ok(current)
                } else {
                    Err(CommandError::WrongState {
                        id: id.to_owned(),
                        state: current.state,
                        what: "the command is past that state",
                    })
                }
            }
        }
    }

    /// HTTP long-poll: the device's oldest `queued` command, marked `sent`; waits up to
    /// `wait` (at most `max_wait`) for one to be created, `None` if none was.
    ///
    /// # Errors
    ///
    /// Unknown device, the store.
    pub async fn next(&self, device: &DeviceId, wait: Duration) -> Result<Option<Command>, CommandError> {
        self.check_device(device)?;
        let deadline = Instant::now() + wait.min(self.inner.config.max_wait);
        let notify = {
            let mut waiters = lock(&self.inner.waiters);
            Arc::clone(waiters.entry(device.clone()).or_default())
        };
        let result = async {
            loop {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(cmd) = self.take_next(device).await? {
                    return Ok(Some(cmd));
                }
                let released = self.inner.polls_released.cancelled();
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(deadline) => return Ok(None),
                    () = released => return Ok(None),
                }
            }
        }
        .await;
        drop(notify);
        let mut waiters = lock(&self.inner.waiters);
        if waiters.get(device).is_some_and(|n| Arc::strong_count(n) == 1) {
            waiters.remove(device);
        }
        result
    }

    /// The oldest command to hand to a long-poll: a `queued` one (now `sent`), or a
    /// `sent` one whose last hand-out is `poll_resend_after` old (stamped again).
    async fn take_next(&self, device: &DeviceId) -> Result<Option<Command>, CommandError> {
        let store = &self.inner.store;
        let resend = i64::try_from(self.inner.config.poll_resend_after.as_millis()).unwrap_or(i64::MAX);
        loop {
            let at = now();
            let pending =
                store.command_pending(device, self.inner.config.max_queued_per_device.max(1)).await?;
            let Some(cmd) = pending.into_iter().find(|c| {
                let due = match c.state {
                    CommandState::Queued => true,
                    CommandState::Sent => c
                        .timestamps
                        .get(&CommandState::Sent)
                        .is_some_and(|t| t.0.saturating_add(resend) <= at.0),
                    _ => false,
                };
                due && c.expires_at.is_none_or(|e| e > at)
            }) else {
                return Ok(None);
            };
            let was = cmd.state;
            let sent = store.command_transition(&cmd.id, &[was], CommandState::Sent, None, None, at).await?;
            if let Some(sent) = sent {
                if was == CommandState::Queued {
                    self.emit(&sent);
                }
                return Ok(Some(sent));
            }
            // taken or answered meanwhile (MQTT, another poll, an ack): look again
        }
    }

    /// Ends every HTTP long-poll now and makes new ones answer at once (empty), so a
    /// shutdown does not wait for them.
    pub fn release_polls(&self) {
        self.inner.polls_released.cancel();
    }

    fn wake_waiters(&self, device: &DeviceId) {
        if let Some(n) = lock(&self.inner.waiters).get(device) {
            n.notify_waiters();
        }
    }

    /// Marks every open command past its time to live `expired`.
    async fn expire(&self) -> Result<(), CommandError> {
        for cmd in self.inner.store.command_expire(now()).await? {
            self.emit(&cmd);
        }
        Ok(())
    }

    fn schedule(&self, device: DeviceId, resend: bool) {
        let mut retries = lock(&self.inner.retries);
        let entry =
            retries.entry(device).or_insert(Retry { resend, at: Instant::now(), backoff: FIRST_BACKOFF });
        entry.resend |= resend;
        entry.at = Instant::now();
        entry.backoff = FIRST_BACKOFF;
    }

    /// Delivery attempts that are due, for connected devices (others wait for their
    /// connect; their entries are dropped).
    async fn retry_due(&self) {
        let now = Instant::now();
        let due: Vec<(DeviceId, bool)> = {
            let mut retries = lock(&self.inner.retries);
            retries.retain(|d, _| self.inner.control.is_connected(d));
            retries.iter().filter(|(_, r)| r.at <= now).map(|(d, r)| (d.clone(), r.resend)).collect()
        };
        for (device, resend) in due {
            if let Err(e) = self.deliver(&device, resend).await {
                tracing::warn!(%device, error = %e, "command delivery failed; retrying");
            }
        }
    }

    async fn handle(&self, message: &Message) {
        let inbound = match wire::parse(message) {
            Ok(Some(inbound)) => inbound,
            Ok(None) => return,
            Err(reason) => {
                tracing::debug!(topic = %message.topic, reason, "unusable device message ignored");
                return;
            }
        };
        match inbound {
            wire::Inbound::Ack(device, ack) => {
                if let Err(e) = self.ack(&device, &ack.id, ack.status, ack.result).await {
                    tracing::debug!(%device, id = ack.id, error = %e, "command acknowledgement ignored");
                }
            }
            wire::Inbound::State(device, doc) => {
                if self.inner.registry.device(&device).is_none() {
                    return;
                }
                if let Err(e) = crate::shadow::report(self, &device, doc).await {
                    tracing::warn!(%device, error = %e, "state report not stored");
                }
            }
        }
    }

    /// The service's task until `shutdown`: delivers queued commands when devices
    /// connect (retrying with back-off while they have not subscribed yet), expires
    /// commands every `expire_interval`, and takes acknowledgements, MQTT 5 responses
    /// and state reports from `feed` (a bounded [`Tap`](crate::events::Tap) feed).
    pub async fn run(self, mut feed: mpsc::Receiver<Arc<Message>>, shutdown: CancellationToken) {
        let mut presence = lock(&self.inner.presence).take().unwrap_or_else(|| self.inner.events.subscribe());
        let mut expire =
            tokio::time::interval(self.inner.config.expire_interval.max(Duration::from_millis(10)));
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(RETRY_TICK);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut feed_open = true;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                event = presence.recv() => match event {
                    Ok(event) => {
                        if let HubEvent::DeviceConnected { device, .. } = &*event
                            && let Ok(device) = DeviceId::new(device.as_str())
                        {
                            self.schedule(device, true);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "command delivery missed presence events: every connected device is checked");
                        for device in self.inner.control.connected_devices() {
                            self.schedule(device, true);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        presence = self.inner.events.subscribe();
                    }
                },
                message = feed.recv(), if feed_open => match message {
                    Some(message) => self.handle(&message).await,
                    None => feed_open = false,
                },
                _ = expire.tick() => {
                    if let Err(e) = self.expire().await {
                        tracing::warn!(error = %e, "expiring commands failed; retrying");
                    }
                }
                _ = retry.tick() => self.retry_due().await,
            }
        }
    }
}
