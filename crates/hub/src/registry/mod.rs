//! The device registry and everything security hangs on: devices and their credentials,
//! ACL rules, admin API tokens, rate limits, the audit log. [`Registry`] is the broker's
//! [`Authenticator`] and the API's gatekeeper.
//!
//! # Layout
//!
//! * this file: [`Registry`]: the in-memory registry, written through to the store
//!   (every change is committed before it takes effect), its decisions, its background
//!   task ([`Registry::run`]: audit writer, last-used times, limiter upkeep, audit
//!   retention);
//! * [`config`]: the `[auth]` section;
//! * [`model`]: devices, credentials, rules, tokens as stored and answered;
//! * `acl`: own lanes and rule matching; `jwt`: device-signed JWTs; `secret`: tokens,
//!   digests, argon2; `limits`: rate limits and allowlists.
//!
//! # Who is who
//!
//! * MQTT, token or password: the user name is the device id, the password the secret.
//! * MQTT, device-signed JWT (the password starts with `eyJ`): the device is the JWT's
//!   `sub` claim, else the last level of a Google-style client id
//!   (`projects/p/locations/l/registries/r/devices/{id}`), else the client id; the user
//!   name is ignored (Google Cloud IoT Core sends `unused`).
//! * MQTT over TLS with a registered client certificate: its fingerprint names the
//!   device (a user name, if sent, must be that device).
//! * HTTP: `Authorization: Bearer` with a device token or JWT (`sub`, else the device of
//!   the URL), or `X-API-Key` with a device token.

mod acl;
pub mod config;
mod jwt;
mod limits;
pub mod model;
mod secret;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use telehub_broker::auth::AuthFuture;
use telehub_broker::{Authenticator, ConnectInfo, Principal, PublishRefusal, Refusal};
use telehub_core::{ClientId, DeviceId, Message};
use telehub_store::registry::{AuditEvent, AuditQuery, AuditRow, Change, Entry, Kind};
use telehub_store::{RegistryStore, StoreError, Timestamp};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::acl::{Acl, CompiledRule, Lanes};
pub use self::config::{AuthConfig, RateConfig};
use self::jwt::PublicKey;
use self::limits::Limits;
pub use self::model::{
    AclRule, AclRuleSpec, Action, AdminToken, Credential, CredentialInfo, CredentialKind, Device,
    DeviceFilter, DevicePatch, DeviceView, Effect, Export, ImportSummary, NewCredential, NewDevice, Scope,
    TokenInfo,
};
use crate::ingest::mapping::Mapping;
use crate::timestamp;

/// Audit events waiting for the writer at most; beyond, they are counted and dropped
/// (a flood of failed logins must not grow memory).
const AUDIT_QUEUE: usize = 10_000;
/// Audit events per store write.
const AUDIT_BATCH: usize = 1_000;
/// Shortest time between two reloads of admin tokens from the store, triggered by an
/// unknown token (one made by `telehub token create` while this process runs).
const TOKEN_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such device, credential, rule or token.
    #[error("no {what} {id}")]
    NotFound {
        /// `device`, `credential`, `rule` or `token`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// It exists already.
    #[error("{0}")]
    Conflict(String),
    /// The request is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the admin API refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// No `Authorization: Bearer` header (401).
    #[error("an admin token is required: Authorization: Bearer <token>")]
    Missing,
    /// Unknown, revoked or expired token (401).
    #[error("the admin token is not valid")]
    Invalid,
    /// The token lacks the scope (403).
    #[error("the admin token lacks the {needed} scope")]
    Forbidden {
        /// The scope the request needs.
        needed: Scope,
    },
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:{id}`, `system`, `cli`.
    pub id: String,
    /// The client's address.
    pub remote: Option<IpAddr>,
}

impl Actor {
    /// telehub itself (start-up, the background task).
    pub fn system() -> Self {
        Self { id: "system".into(), remote: None }
    }

    /// The command line (`telehub token create`).
    pub fn cli() -> Self {
        Self { id: "cli".into(), remote: None }
    }
}

/// An authenticated admin API caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// The token's id.
    pub token_id: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
}

impl Admin {
    /// The caller as an audit actor.
    pub fn actor(&self, remote: Option<IpAddr>) -> Actor {
        Actor { id: format!("token:{}", self.token_id), remote }
    }
}

/// Something whose connections must end now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Every connection of a deleted device.
    Device(DeviceId),
    /// The connections that used a deleted credential.
    Credential(String),
}

/// A credential with what checking it needs, parsed once.
#[derive(Debug, Clone)]
struct Cred {
    cred: Credential,
    /// Token: SHA-256 of the token; X.509: the fingerprint.
    digest: Option<[u8; 32]>,
    /// JWT kinds.
    key: Option<PublicKey>,
}

impl Cred {
    fn new(cred: Credential) -> Result<Self, String> {
        let (digest, key) = match cred.kind {
            CredentialKind::Token | CredentialKind::X509 => (
                Some(
                    secret::parse_sha256_hex(&cred.verifier)
                        .ok_or_else(|| format!("credential {}: verifier is not a SHA-256 digest", cred.id))?,
                ),
                None,
            ),
            CredentialKind::Password => (None, None),
            kind @ (CredentialKind::JwtRs256 | CredentialKind::JwtEs256) => {
                (None, Some(PublicKey::from_pem(kind, &cred.verifier)?))
            }
        };
        Ok(Self { cred, digest, key })
    }

    fn live(&self, now: i64) -> bool {
        self.cred.expires_at.is_none_or(|at| now < at)
    }

    fn info(&self, last_used: Option<i64>) -> CredentialInfo {
        let c = &self.cred;
        let public =
            matches!(c.kind, CredentialKind::JwtRs256 | CredentialKind::JwtEs256 | CredentialKind::X509)
                .then(|| c.verifier.clone());
        CredentialInfo {
            id: c.id.clone(),
            device: c.device.clone(),
            kind: c.kind,
            name: c.name.clone(),
            public,
            created_at: c.created_at,
            last_used_at: last_used.or(c.last_used_at),
            expires_at: c.expires_at,
        }
    }
}

/// Everything the registry decides from, in memory.
#[derive(Debug, Default, Clone)]
struct State {
    devices: HashMap<DeviceId, Device>,
    credentials: HashMap<String, Cred>,
    /// device → its credential ids
    by_device: HashMap<DeviceId, Vec<String>>,
    /// device token digest → credential id
    tokens: HashMap<[u8; 32], String>,
    /// certificate fingerprint → credential id
    certs: HashMap<[u8; 32], String>,
    /// rules made by the API
    api_rules: Vec<AclRule>,
    /// the API's rules, then the config file's, compiled
    compiled: Vec<CompiledRule>,
    anonymous_rules: bool,
    admin: HashMap<String, AdminToken>,
    admin_hashes: HashMap<[u8; 32], String>,
}

impl State {
    fn add_credential(&mut self, cred: Cred) {
        let id = cred.cred.id.clone();
        match cred.cred.kind {
            CredentialKind::Token => {
                self.tokens.insert(cred.digest.unwrap_or_default(), id.clone());
            }
            CredentialKind::X509 => {
                self.certs.insert(cred.digest.unwrap_or_default(), id.clone());
            }
            _ => {}
        }
        let list = self.by_device.entry(cred.cred.device.clone()).or_default();
        if !list.contains(&id) {
            list.push(id.clone());
        }
        self.credentials.insert(id, cred);
    }

    fn remove_credential(&mut self, id: &str) -> Option<Cred> {
        let cred = self.credentials.remove(id)?;
        if let Some(d) = cred.digest {
            self.tokens.remove(&d);
            self.certs.remove(&d);
        }
        if let Some(list) = self.by_device.get_mut(&cred.cred.device) {
            list.retain(|c| c != id);
        }
        Some(cred)
    }

    fn add_admin(&mut self, token: AdminToken) {
        if let Some(h) = secret::parse_sha256_hex(&token.hash) {
            self.admin_hashes.insert(h, token.id.clone());
        }
        self.admin.insert(token.id.clone(), token);
    }

    fn remove_admin(&mut self, id: &str) -> Option<AdminToken> {
        let token = self.admin.remove(id)?;
        if let Some(h) = secret::parse_sha256_hex(&token.hash) {
            self.admin_hashes.remove(&h);
        }
        Some(token)
    }

    fn recompile(&mut self, config_rules: &[CompiledRule]) {
        self.compiled = self
            .api_rules
            .iter()
            .filter_map(|r| CompiledRule::new(r.spec.clone()).ok())
            .chain(config_rules.iter().cloned())
            .collect();
        self.anonymous_rules = self.compiled.iter().any(|r| r.spec.anonymous);
    }

    fn device_credentials(&self, device: &DeviceId) -> impl Iterator<Item = &Cred> {
        self.by_device.get(device).into_iter().flatten().filter_map(|id| self.credentials.get(id))
    }
}

/// Live presence of a device (this process only).
#[derive(Debug, Clone, Copy, Default)]
struct Presence {
    connections: u32,
    last_seen: Option<i64>,
}

/// What ends revoked connections ([`Registry::on_revoke`]).
type RevokeHook = Box<dyn Fn(&Revoked) + Send + Sync>;
/// Who hears that a device came online or went offline ([`Registry::on_presence`]).
type PresenceHook = Box<dyn Fn(&DeviceId, bool) + Send + Sync>;

struct Inner<S> {
    store: Arc<S>,
    config: AuthConfig,
    lanes: Lanes,
    config_rules: Vec<CompiledRule>,
    jwt: jwt::Rules,
    state: RwLock<State>,
    presence: Mutex<HashMap<DeviceId, Presence>>,
    /// credential id → last successful use, not yet saved
    used: Mutex<HashMap<String, i64>>,
    limits: Limits,
    /// One change at a time: check, commit, apply.
    gate: tokio::sync::Mutex<()>,
    audit_tx: mpsc::Sender<AuditEvent>,
    audit_rx: Mutex<Option<mpsc::Receiver<AuditEvent>>>,
    audit_dropped: AtomicU64,
    revoke: OnceLock<RevokeHook>,
    presence_hook: OnceLock<PresenceHook>,
    reload_tokens: Notify,
}

/// The device registry. Cheap to clone (shared).
pub struct Registry<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Registry<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

fn now_ms() -> i64 {
    timestamp::now().0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<S: RegistryStore> Registry<S> {
    /// Loads the registry from `store`. `mappings` are the ingest mappings (they define
    /// which topics are each device's own).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Invalid`] for a bad `[[auth.acl]]` rule or a stored entry that
    /// cannot be read (naming it), [`RegistryError::Store`].
    pub async fn open(
        store: Arc<S>,
        config: AuthConfig,
        mappings: Vec<Mapping>,
    ) -> Result<Self, RegistryError> {
        let config_rules = config
            .acl
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                CompiledRule::new(spec.clone())
                    .map_err(|e| RegistryError::Invalid(format!("auth.acl[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = load(&*store).await?;
        state.recompile(&config_rules);
        let (audit_tx, audit_rx) = mpsc::channel(AUDIT_QUEUE);
        let jwt = jwt::Rules {
            audience: config.jwt_audience.clone(),
            max_lifetime_s: i64::try_from(config.jwt_max_lifetime.as_secs()).unwrap_or(i64::MAX),
            skew_s: i64::try_from(config.jwt_clock_skew.as_secs()).unwrap_or(i64::MAX),
        };
        info!(
            devices = state.devices.len(),
            credentials = state.credentials.len(),
            rules = state.compiled.len(),
            "registry loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                lanes: Lanes::new(&mappings),
                limits: Limits::new(&config),
                config,
                config_rules,
                jwt,
                state: RwLock::new(state),
                presence: Mutex::default(),
                used: Mutex::default(),
                gate: tokio::sync::Mutex::new(()),
                audit_tx,
                audit_rx: Mutex::new(Some(audit_rx)),
                audit_dropped: AtomicU64::new(0),
                revoke: OnceLock::new(),
                presence_hook: OnceLock::new(),
                reload_tokens: Notify::new(),
            }),
        })
    }

    /// The `[auth]` section in use.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Sets what ends the connections of a deleted device or credential (the broker's
    /// control handle). Only the first call counts.
    pub fn on_revoke(&self, f: impl Fn(&Revoked) + Send + Sync + 'static) {
        let _ = self.inner.revoke.set(Box::new(f));
    }

    /// Sets who hears that a device's first MQTT connection opened (`true`) or its last
    /// one closed (`false`). Called on the connection's task: must not block. Only the
    /// first call counts.
    pub fn on_presence(&self, f: impl Fn(&DeviceId, bool) + Send + Sync + 'static) {
        let _ = self.inner.presence_hook.set(Box::new(f));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn revoke(&self, what: &Revoked) {
        if let Some(f) = self.inner.revoke.get() {
            f(what);
        }
    }

    // ---- audit ----------------------------------------------------------------------

    /// Queues an audit event for the writer; never waits. A full queue drops the event
    /// and counts it ([`Registry::audit_dropped`]).
    pub fn audit(&self, event: AuditEvent) {
        if self.inner.audit_tx.try_send(event).is_err()
            && self.inner.audit_dropped.fetch_add(1, Ordering::Relaxed) == 0
        {
            warn!("the audit log cannot keep up: events are being dropped (counted in audit_dropped)");
        }
    }

    /// Audit events dropped because the queue was full.
    pub fn audit_dropped(&self) -> u64 {
        self.inner.audit_dropped.load(Ordering::Relaxed)
    }

    fn audit_change(&self, actor: &Actor, action: &str, target: String, detail: serde_json::Value) {
        self.audit(AuditEvent {
            ts: Timestamp(now_ms()),
            actor: actor.id.clone(),
            action: action.to_owned(),
            target,
            outcome: "ok".into(),
            remote: actor.remote.map(|r| r.to_string()),
            detail,
        });
    }

    fn audit_denied(&self, action: &str, actor: String, target: String, remote: IpAddr, reason: &str) {
        self.audit(AuditEvent {
            ts: Timestamp(now_ms()),
            actor,
            action: action.to_owned(),
            target,
            outcome: "denied".into(),
            remote: Some(remote.to_string()),
            detail: serde_json::json!({ "reason": reason }),
        });
    }

    /// A page of the audit log, newest first. Events still queued are written first, so
    /// a change is visible here as soon as its call returned.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Store`].
    pub async fn audit_query(&self, query: AuditQuery) -> Result<Vec<AuditRow>, RegistryError> {
        self.flush_audit().await;
        Ok(self.inner.store.audit_query(query).await?)
    }

    /// Writes every queued audit event now (the background task does this every
    /// second).
    async fn flush_audit(&self) {
        let batch = {
            let mut rx = lock(&self.inner.audit_rx);
            let Some(rx) = rx.as_mut() else { return };
            let mut batch = Vec::new();
            while batch.len() < AUDIT_QUEUE {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            batch
        };
        for chunk in batch.chunks(AUDIT_BATCH) {
            if let Err(e) = self.inner.store.audit_append(chunk.to_vec()).await {
                warn!(error = %e, events = chunk.len(), "audit events could not be written");
            }
        }
    }

    // ---- admin tokens ---------------------------------------------------------------

    /// Checks an admin bearer token for `needed`.
    ///
    /// # Errors
    ///
    /// [`AdminRefusal`]: missing, invalid (401) or lacking the scope (403).
    pub fn check_admin(&self, bearer: Option<&str>, needed: Scope) -> Result<Admin, AdminRefusal> {
        let token = bearer.filter(|b| !b.is_empty()).ok_or(AdminRefusal::Missing)?;
        let digest = secret::sha256(token.as_bytes());
        let state = self.read();
        let Some(found) = state.admin_hashes.get(&digest).and_then(|id| state.admin.get(id)) else {
            drop(state);
            self.inner.reload_tokens.notify_one();
            return Err(AdminRefusal::Invalid);
        };
        if found.expires_at.is_some_and(|at| now_ms() >= at) {
            return Err(AdminRefusal::Invalid);
        }
        if !found.scopes.iter().any(|s| *s >= needed) {
            return Err(AdminRefusal::Forbidden { needed });
        }
        Ok(Admin { token_id: found.id.clone(), scopes: found.scopes.clone() })
    }

    /// Makes an admin token; the secret is answered once and stored only as SHA-256.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Invalid`] without scopes, [`RegistryError::Store`].
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: String,
        scopes: Vec<Scope>,
        expires_at: Option<i64>,
    ) -> Result<(TokenInfo, String), RegistryError> {
        let secret = secret::new_token("tha_");
        let info = self.put_token(actor, secret::new_id("tk_"), name, scopes, expires_at, &secret).await?;
        Ok((info, secret))
    }

    async fn put_token(
        &self,
        actor: &Actor,
        id: String,
        name: String,
        mut scopes: Vec<Scope>,
        expires_at: Option<i64>,
        secret: &str,
    ) -> Result<TokenInfo, RegistryError> {
        if scopes.is_empty() {
            return Err(RegistryError::Invalid(
                "a token needs at least one scope: read, write or admin".into(),
            ));
        }
        scopes.sort_unstable();
        scopes.dedup();
        let token = AdminToken {
            id,
            name,
            scopes,
            hash: secret::hex(&secret::sha256(secret.as_bytes())),
            created_at: now_ms(),
            expires_at,
        };
        let _gate = self.inner.gate.lock().await;
        self.inner
            .store
            .registry_apply(vec![Change::Put(entry(Kind::AdminToken, &token.id, None, &token))])
            .await?;
        let info = TokenInfo::from(&token);
        self.write().add_admin(token);
        self.audit_change(
            actor,
            "token.create",
            format!("token:{}", info.id),
            serde_json::json!({ "name": info.name, "scopes": info.scopes }),
        );
        Ok(info)
    }

    /// Every admin token (never the secrets).
    pub fn tokens(&self) -> Vec<TokenInfo> {
        let mut v: Vec<TokenInfo> = self.read().admin.values().map(TokenInfo::from).collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Revokes an admin token.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`], [`RegistryError::Store`].
    pub async fn delete_token(&self, actor: &Actor, id: &str) -> Result<(), RegistryError> {
        let _gate = self.inner.gate.lock().await;
        if !self.read().admin.contains_key(id) {
            return Err(RegistryError::NotFound { what: "token", id: id.to_owned() });
        }
        self.inner
            .store
            .registry_apply(vec![Change::Delete { kind: Kind::AdminToken, id: id.to_owned() }])
            .await?;
        self.write().remove_admin(id);
        self.audit_change(actor, "token.delete", format!("token:{id}"), serde_json::Value::Null);
        Ok(())
    }

    /// The first admin token. With `env_token` (`TELEHUB_ADMIN_TOKEN`) that token is
    /// made valid with the `admin` scope (replacing an earlier one from the variable);
    /// without it, when no admin token exists yet, one is generated and returned so it
    /// can be shown once.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Invalid`] for a variable shorter than 16 characters,
    /// [`RegistryError::Store`].
    pub async fn bootstrap_admin(&self, env_token: Option<&str>) -> Result<Option<String>, RegistryError> {
        match env_token {
            Some(token) => {
                if token.len() < 16 {
                    return Err(RegistryError::Invalid(
                        "TELEHUB_ADMIN_TOKEN must be at least 16 characters".into(),
                    ));
                }
                let digest = secret::sha256(token.as_bytes());
                if self.read().admin_hashes.contains_key(&digest) {
                    return Ok(None);
                }
                self.put_token(
                    &Actor::system(),
                    "tk_env".into(),
                    "TELEHUB_ADMIN_TOKEN".into(),
                    vec![Scope::Admin],
                    None,
                    token,
                )
                .await?;
                Ok(None)
            }
            None if self.read().admin.is_empty() => {
                let secret = secret::new_token("tha_");
                self.put_token(
                    &Actor::system(),
                    secret::new_id("tk_"),
                    "first admin token".into(),
                    vec![Scope::Admin],
                    None,
                    &secret,
                )
                .await?;
                Ok(Some(secret))
            }
            None => Ok(None),
        }
    }

    async fn reload_admin_tokens(&self) {
        match self.inner.store.registry_load().await {
            Ok(entries) => {
                let tokens: Vec<AdminToken> = entries
                    .into_iter()
                    .filter(|e| e.kind == Kind::AdminToken)
                    .filter_map(|e| serde_json::from_value(e.body).ok())
                    .collect();
                let mut state = self.write();
                state.admin.clear();
                state.admin_hashes.clear();
                for t in tokens {
                    state.add_admin(t);
                }
            }
            Err(e) => warn!(error = %e, "admin tokens could not be reloaded"),
        }
    }

    // ---- devices --------------------------------------------------------------------

    /// Registers a device.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Conflict`] when the id is taken, [`RegistryError::Store`].
    pub async fn create_device(&self, actor: &Actor, new: NewDevice) -> Result<DeviceView, RegistryError> {
        let _gate = self.inner.gate.lock().await;
        if self.read().devices.contains_key(&new.id) {
            return Err(RegistryError::Conflict(format!("device {} exists already", new.id)));
        }
        let now = now_ms();
        let device = Device {
            id: new.id,
            name: new.name,
            tags: new.tags,
            allowed_ips: new.allowed_ips,
            created_at: now,
            updated_at: now,
        };
        self.inner
            .store
            .registry_apply(vec![Change::Put(entry(Kind::Device, device.id.as_str(), None, &device))])
            .await?;
        self.audit_change(
            actor,
            "device.create",
            format!("device:{}", device.id),
            serde_json::json!({ "name": device.name, "tags": device.tags }),
        );
        let id = device.id.clone();
        self.write().devices.insert(id.clone(), device);
        Ok(self.device(&id).expect("just inserted"))
    }

    /// A device with its live state.
    pub fn device(&self, id: &DeviceId) -> Option<DeviceView> {
        let device = self.read().devices.get(id).cloned()?;
        Some(self.view(device))
    }

    fn view(&self, device: Device) -> DeviceView {
        let presence = lock(&self.inner.presence).get(&device.id).copied().unwrap_or_default();
        let connected = presence.connections > 0;
        let last_seen = if connected { Some(now_ms()) } else { presence.last_seen };
        DeviceView { device, connected, last_seen }
    }

    /// The devices `filter` selects, by id.
    pub fn devices(&self, filter: &DeviceFilter) -> Vec<DeviceView> {
        let devices: Vec<Device> = self
            .read()
            .devices
            .values()
            .filter(|d| filter.tags.iter().all(|(k, v)| d.tags.get(k) == Some(v)))
            .cloned()
            .collect();
        let mut views: Vec<DeviceView> = devices
            .into_iter()
            .map(|d| self.view(d))
            .filter(|v| filter.connected.is_none_or(|c| c == v.connected))
            .filter(|v| filter.seen_since.is_none_or(|since| v.last_seen.is_some_and(|s| s >= since)))
            .collect();
        views.sort_by(|a, b| a.device.id.cmp(&b.device.id));
        views
    }

    /// Changes a device's name, tags or allowlist.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`], [`RegistryError::Store`].
    pub async fn update_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        patch: DevicePatch,
    ) -> Result<DeviceView, RegistryError> {
        let _gate = self.inner.gate.lock().await;
        let Some(mut device) = self.read().devices.get(id).cloned() else {
            return Err(RegistryError::NotFound { what: "device", id: id.to_string() });
        };
        let detail = serde_json::json!({
            "name": patch.name.is_some(),
            "tags": patch.tags.is_some(),
            "allowed_ips": patch.allowed_ips.is_some(),
        });
        if let Some(name) = patch.name {
            device.name = name;
        }
        if let Some(tags) = patch.tags {
            device.tags = tags;
        }
        if let Some(ips) = patch.allowed_ips {
            device.allowed_ips = ips;
        }
        device.updated_at = now_ms();
        self.inner
            .store
            .registry_apply(vec![Change::Put(entry(Kind::Device, id.as_str(), None, &device))])
            .await?;
        self.write().devices.insert(id.clone(), device.clone());
        self.audit_change(actor, "device.update", format!("device:{id}"), detail);
        Ok(self.view(device))
    }

    /// Deletes a device and its credentials and drops its live connections. Its
    /// telemetry stays until retention removes it.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`], [`RegistryError::Store`].
    pub async fn delete_device(&self, actor: &Actor, id: &DeviceId) -> Result<(), RegistryError> {
        let _gate = self.inner.gate.lock().await;
        if !self.read().devices.contains_key(id) {
            return Err(RegistryError::NotFound { what: "device", id: id.to_string() });
        }
        self.inner
            .store
            .registry_apply(vec![
                Change::Delete { kind: Kind::Device, id: id.as_str().to_owned() },
                Change::DeleteOwned { owner: id.as_str().to_owned() },
            ])
            .await?;
        {
            let mut state = self.write();
            state.devices.remove(id);
            let creds = state.by_device.remove(id).unwrap_or_default();
            for c in creds {
                state.remove_credential(&c);
            }
            state.api_rules.retain(|r| r.spec.device.as_ref() != Some(id));
            let config_rules = self.inner.config_rules.clone();
            state.recompile(&config_rules);
        }
        self.revoke(&Revoked::Device(id.clone()));
        self.audit_change(actor, "device.delete", format!("device:{id}"), serde_json::Value::Null);
        Ok(())
    }

    /// Devices, credentials (verifiers, not secrets) and the API's ACL rules.
    pub fn export(&self) -> Export {
        let state = self.read();
        let mut devices: Vec<Device> = state.devices.values().cloned().collect();
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        let mut credentials: Vec<Credential> = state.credentials.values().map(|c| c.cred.clone()).collect();
        credentials.sort_by(|a, b| a.id.cmp(&b.id));
        Export { devices, credentials, acl: state.api_rules.clone() }
    }

    /// Creates or replaces everything in `export`, in one transaction.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Invalid`] naming the first bad entry (nothing is imported),
    /// [`RegistryError::Store`].
    pub async fn import(&self, actor: &Actor, export: Export) -> Result<ImportSummary, RegistryError> {
        let _gate = self.inner.gate.lock().await;
        let known: std::collections::HashSet<&DeviceId> = export.devices.iter().map(|d| &d.id).collect();
        let mut creds = Vec::with_capacity(export.credentials.len());
        for c in &export.credentials {
            if !known.contains(&c.device) && !self.read().devices.contains_key(&c.device) {
                return Err(RegistryError::Invalid(format!(
                    "credential {}: device {} is neither imported nor registered",
                    c.id, c.device
                )));
            }
            creds.push(Cred::new(c.clone()).map_err(RegistryError::Invalid)?);
        }
        for r in &export.acl {
            CompiledRule::new(r.spec.clone())
                .map_err(|e| RegistryError::Invalid(format!("acl rule {}: {e}", r.id)))?;
        }
        let mut changes = Vec::new();
        changes
            .extend(export.devices.iter().map(|d| Change::Put(entry(Kind::Device, d.id.as_str(), None, d))));
        changes.extend(
            export
                .credentials
                .iter()
                .map(|c| Change::Put(entry(Kind::Credential, &c.id, Some(&c.device), c))),
        );
        changes.extend(
            export.acl.iter().map(|r| Change::Put(entry(Kind::AclRule, &r.id, r.spec.device.as_ref(), r))),
        );
        self.inner.store.registry_apply(changes).await?;
        let summary =
            ImportSummary { devices: export.devices.len(), credentials: creds.len(), acl: export.acl.len() };
        {
            let mut state = self.write();
            for d in export.devices {
                state.devices.insert(d.id.clone(), d);
            }
            for c in creds {
                state.remove_credential(&c.cred.id.clone());
                state.add_credential(c);
            }
            for r in export.acl {
                state.api_rules.retain(|x| x.id != r.id);
                state.api_rules.push(r);
            }
            let config_rules = self.inner.config_rules.clone();
            state.recompile(&config_rules);
        }
        self.audit_change(
            actor,
            "device.import",
            "registry".into(),
            serde_json::json!({ "devices": summary.devices, "credentials": summary.credentials, "acl": summary.acl }),
        );
        Ok(summary)
    }

    // ---- credentials ----------------------------------------------------------------

    /// Adds a credential to a device. For a `token` the generated secret is returned
    /// (shown once); for the other kinds `None`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`] for an unknown device, [`RegistryError::Invalid`]
    /// naming the missing or bad field, [`RegistryError::Store`].
    pub async fn create_credential(
        &self,
        actor: &Actor,
        device: &DeviceId,
        new: NewCredential,
    ) -> Result<(CredentialInfo, Option<String>), RegistryError> {
        let invalid = |m: &str| Err(RegistryError::Invalid(m.to_owned()));
        let (verifier, shown) = match new.kind {
            CredentialKind::Token => {
                if new.secret.is_some() || new.public_key.is_some() || new.fingerprint.is_some() {
                    return invalid(
                        "a token is generated by telehub: send no secret, public_key or fingerprint",
                    );
                }
                let token = secret::new_token("thd_");
                (secret::hex(&secret::sha256(token.as_bytes())), Some(token))
            }
            CredentialKind::Password => match new.secret.as_deref() {
                Some(p) if p.chars().count() >= 8 => {
                    let p = p.to_owned();
                    let phc = tokio::task::spawn_blocking(move || secret::hash_password(&p))
                        .await
                        .map_err(|e| RegistryError::Invalid(format!("cannot hash the password: {e}")))?
                        .map_err(RegistryError::Invalid)?;
                    (phc, None)
                }
                Some(_) => return invalid("secret: a password needs at least 8 characters"),
                None => return invalid("secret: a password credential needs the password in `secret`"),
            },
            CredentialKind::JwtRs256 | CredentialKind::JwtEs256 => match new.public_key {
                Some(pem) => {
                    PublicKey::from_pem(new.kind, &pem).map_err(RegistryError::Invalid)?;
                    (pem, None)
                }
                None => return invalid("public_key: a JWT credential needs the device's PEM public key"),
            },
            CredentialKind::X509 => match new.fingerprint.as_deref().map(secret::parse_sha256_hex) {
                Some(Some(fp)) => (secret::hex(&fp), None),
                Some(None) => {
                    return invalid("fingerprint: expected the certificate's SHA-256 as 64 hex digits");
                }
                None => return invalid("fingerprint: an x509 credential needs the certificate's SHA-256"),
            },
        };
        let cred = Credential {
            id: secret::new_id("cr_"),
            device: device.clone(),
            kind: new.kind,
            name: new.name,
            verifier,
            created_at: now_ms(),
            expires_at: new.expires_at,
            last_used_at: None,
        };
        let cred = Cred::new(cred).map_err(RegistryError::Invalid)?;
        let _gate = self.inner.gate.lock().await;
        if !self.read().devices.contains_key(device) {
            return Err(RegistryError::NotFound { what: "device", id: device.to_string() });
        }
        if let Some(fp) = cred.digest.filter(|_| cred.cred.kind == CredentialKind::X509)
            && self.read().certs.contains_key(&fp)
        {
            return Err(RegistryError::Conflict("this certificate is registered already".into()));
        }
        self.inner
            .store
            .registry_apply(vec![Change::Put(entry(
                Kind::Credential,
                &cred.cred.id,
                Some(device),
                &cred.cred,
            ))])
            .await?;
        let info = cred.info(None);
        self.write().add_credential(cred);
        self.audit_change(
            actor,
            "credential.create",
            format!("credential:{}", info.id),
            serde_json::json!({ "device": device, "kind": info.kind }),
        );
        Ok((info, shown))
    }

    /// A device's credentials (no secrets).
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`] for an unknown device.
    pub fn credentials(&self, device: &DeviceId) -> Result<Vec<CredentialInfo>, RegistryError> {
        let state = self.read();
        if !state.devices.contains_key(device) {
            return Err(RegistryError::NotFound { what: "device", id: device.to_string() });
        }
        let used = lock(&self.inner.used);
        let mut v: Vec<CredentialInfo> =
            state.device_credentials(device).map(|c| c.info(used.get(&c.cred.id).copied())).collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(v)
    }

    /// Revokes a credential and drops the connections that used it.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`], [`RegistryError::Store`].
    pub async fn delete_credential(
        &self,
        actor: &Actor,
        device: &DeviceId,
        id: &str,
    ) -> Result<(), RegistryError> {
        let _gate = self.inner.gate.lock().await;
        if self.read().credentials.get(id).is_none_or(|c| c.cred.device != *device) {
            return Err(RegistryError::NotFound { what: "credential", id: id.to_owned() });
        }
        self.inner
            .store
            .registry_apply(vec![Change::Delete { kind: Kind::Credential, id: id.to_owned() }])
            .await?;
        self.write().remove_credential(id);
        lock(&self.inner.used).remove(id);
        self.revoke(&Revoked::Credential(id.to_owned()));
        self.audit_change(
            actor,
            "credential.delete",
            format!("credential:{id}"),
            serde_json::json!({ "device": device }),
        );
        Ok(())
    }

    // ---- ACL rules ------------------------------------------------------------------

    /// Adds an ACL rule.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Invalid`] naming what is wrong with the filter,
    /// [`RegistryError::Store`].
    pub async fn create_rule(&self, actor: &Actor, spec: AclRuleSpec) -> Result<AclRule, RegistryError> {
        CompiledRule::new(spec.clone()).map_err(RegistryError::Invalid)?;
        let rule = AclRule { id: secret::new_id("acl_"), spec, created_at: now_ms() };
        let _gate = self.inner.gate.lock().await;
        self.inner
            .store
            .registry_apply(vec![Change::Put(entry(
                Kind::AclRule,
                &rule.id,
                rule.spec.device.as_ref(),
                &rule,
            ))])
            .await?;
        {
            let mut state = self.write();
            state.api_rules.push(rule.clone());
            let config_rules = self.inner.config_rules.clone();
            state.recompile(&config_rules);
        }
        self.audit_change(
            actor,
            "acl.create",
            format!("acl:{}", rule.id),
            serde_json::to_value(&rule.spec).unwrap_or_default(),
        );
        Ok(rule)
    }

    /// The API's ACL rules, then the config file's (ids `config-{n}`).
    pub fn rules(&self) -> Vec<AclRule> {
        let mut v = self.read().api_rules.clone();
        v.extend(self.inner.config.acl.iter().enumerate().map(|(i, spec)| AclRule {
            id: format!("config-{i}"),
            spec: spec.clone(),
            created_at: 0,
        }));
        v
    }

    /// Deletes an ACL rule made by the API (config-file rules change with the file).
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotFound`], [`RegistryError::Invalid`] for a config rule,
    /// [`RegistryError::Store`].
    pub async fn delete_rule(&self, actor: &Actor, id: &str) -> Result<(), RegistryError> {
        if id.starts_with("config-") {
            return Err(RegistryError::Invalid(format!(
                "rule {id} comes from the config file: change it there"
            )));
        }
        let _gate = self.inner.gate.lock().await;
        if !self.read().api_rules.iter().any(|r| r.id == id) {
            return Err(RegistryError::NotFound { what: "rule", id: id.to_owned() });
        }
        self.inner
            .store
            .registry_apply(vec![Change::Delete { kind: Kind::AclRule, id: id.to_owned() }])
            .await?;
        {
            let mut state = self.write();
            state.api_rules.retain(|r| r.id != id);
            let config_rules = self.inner.config_rules.clone();
            state.recompile(&config_rules);
        }
        self.audit_change(actor, "acl.delete", format!("acl:{id}"), serde_json::Value::Null);
        Ok(())
    }

    // ---- decisions ------------------------------------------------------------------

    /// Whether `ip` is on the global allowlist.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.inner.limits.ip_allowed(ip)
    }

    /// One HTTP request of `key` (`token:…`, `device:…`, `ip:…`): `Err(retry_after)`
    /// over the limit.
    ///
    /// # Errors
    ///
    /// How long to wait.
    pub fn http_rate(&self, key: &str) -> Result<(), Duration> {
        self.inner.limits.http(key)
    }

    /// `n` messages from `device`: `Err(retry_after)` over its limit.
    ///
    /// # Errors
    ///
    /// How long to wait.
    pub fn device_rate(&self, device: &DeviceId, n: u32) -> Result<(), Duration> {
        self.inner.limits.messages(device, n)
    }

    /// HTTP ingest saw `device` now.
    pub fn seen(&self, device: &DeviceId) {
        lock(&self.inner.presence).entry(device.clone()).or_default().last_seen = Some(now_ms());
    }

    /// May `who` store telemetry as `device` over HTTP (as a publish to
    /// `devices/{device}/telemetry`)?
    pub fn may_ingest(&self, who: &Principal, device: &DeviceId) -> bool {
        let topic = format!("devices/{device}/telemetry");
        self.may_publish_topic(who, &topic, |_| None)
    }

    fn may_publish_topic(
        &self,
        who: &Principal,
        topic: &str,
        field: impl Fn(&str) -> Option<String>,
    ) -> bool {
        let state = self.read();
        let acl = Acl { lanes: &self.inner.lanes, rules: &state.compiled };
        match &who.device {
            None => {
                self.inner.config.allow_anonymous
                    && (!state.anonymous_rules || acl.may_publish(None, topic, field))
            }
            Some(id) => state.devices.get(id).is_some_and(|d| acl.may_publish(Some(d), topic, field)),
        }
    }

    /// Checks a device's HTTP credentials: `presented` is the `Authorization: Bearer`
    /// or `X-API-Key` value; `device_hint` the device of the URL, if any.
    ///
    /// # Errors
    ///
    /// [`Refusal::BadCredentials`] (401), [`Refusal::NotAuthorized`] (an address outside
    /// the device's allowlist).
    pub async fn authenticate_http(
        &self,
        presented: Option<&str>,
        device_hint: Option<&DeviceId>,
        remote: IpAddr,
    ) -> Result<Principal, Refusal> {
        let result = self.check_http(presented, device_hint, remote);
        if let Err((refusal, who, reason)) = &result {
            self.audit_denied("auth.http", who.clone(), who.clone(), remote, reason);
            debug!(%remote, who, reason, "HTTP device authentication refused");
            return Err(*refusal);
        }
        result.map_err(|(r, ..)| r)
    }

    fn check_http(
        &self,
        presented: Option<&str>,
        device_hint: Option<&DeviceId>,
        remote: IpAddr,
    ) -> Result<Principal, (Refusal, String, &'static str)> {
        let Some(secret) = presented.filter(|s| !s.is_empty()) else {
            return if self.inner.config.allow_anonymous {
                Ok(Principal::anonymous())
            } else {
                Err((Refusal::BadCredentials, "anonymous".into(), "no credentials"))
            };
        };
        let now = now_ms();
        let state = self.read();
        if jwt::looks_like_jwt(secret.as_bytes()) {
            let claims = jwt::peek(secret)
                .map_err(|_| (Refusal::BadCredentials, "unknown".into(), "malformed JWT"))?;
            let device = claims
                .sub
                .as_deref()
                .and_then(|s| DeviceId::new(s).ok())
                .or_else(|| device_hint.cloned())
                .ok_or((Refusal::BadCredentials, "unknown".into(), "JWT without sub"))?;
            return self
                .verify_jwt(&state, &device, secret, now, remote)
                .map_err(|(r, why)| (r, format!("device:{device}"), why));
        }
        let digest = secret::sha256(secret.as_bytes());
        let Some(cred) = state.tokens.get(&digest).and_then(|id| state.credentials.get(id)) else {
            return Err((Refusal::BadCredentials, "unknown".into(), "unknown token"));
        };
        let device = cred.cred.device.clone();
        let who = format!("device:{device}");
        if !cred.live(now) {
            return Err((Refusal::BadCredentials, who, "credential expired"));
        }
        let id = cred.cred.id.clone();
        self.admit(&state, &device, &id, remote).map_err(|(r, why)| (r, who, why))
    }

    /// The device may use credential `cred` from `remote`: allowlist, then note the use.
    fn admit(
        &self,
        state: &State,
        device: &DeviceId,
        cred: &str,
        remote: IpAddr,
    ) -> Result<Principal, (Refusal, &'static str)> {
        let Some(d) = state.devices.get(device) else {
            return Err((Refusal::BadCredentials, "unknown device"));
        };
        if !limits::ip_in(&d.allowed_ips, remote) {
            return Err((Refusal::NotAuthorized, "address not in the device's allowlist"));
        }
        lock(&self.inner.used).insert(cred.to_owned(), now_ms());
        Ok(Principal::device(device.clone(), cred))
    }

    fn verify_jwt(
        &self,
        state: &State,
        device: &DeviceId,
        token: &str,
        now: i64,
        remote: IpAddr,
    ) -> Result<Principal, (Refusal, &'static str)> {
        let creds: Vec<&Cred> =
            state.device_credentials(device).filter(|c| c.key.is_some() && c.live(now)).collect();
        if creds.is_empty() {
            return Err((Refusal::BadCredentials, "no JWT key registered"));
        }
        let keys = creds.iter().filter_map(|c| c.key.as_ref());
        match jwt::verify(token, keys, &self.inner.jwt, now / 1000) {
            Ok(i) => {
                let id = creds[i].cred.id.clone();
                self.admit(state, device, &id, remote)
            }
            Err(e) => Err((Refusal::BadCredentials, jwt_reason(&e))),
        }
    }

    /// The synchronous part of an MQTT CONNECT check; `Err(Ok(..))` asks for the slow
    /// password check.
    fn check_connect(&self, info: &ConnectInfo<'_>) -> Result<Principal, Slow> {
        let remote = info.peer.ip();
        let now = now_ms();
        let state = self.read();
        let username = info.username.filter(|u| !u.is_empty());
        // a registered client certificate names the device
        if let Some(fp) = info.cert_sha256
            && let Some(cred) = state.certs.get(&fp).and_then(|id| state.credentials.get(id))
        {
            let device = cred.cred.device.clone();
            let who = format!("device:{device}");
            if username.is_some_and(|u| u != device.as_str()) {
                return Err(Slow::Refused(Refusal::BadCredentials, who, "certificate of another device"));
            }
            if !cred.live(now) {
                return Err(Slow::Refused(Refusal::BadCredentials, who, "credential expired"));
            }
            let id = cred.cred.id.clone();
            return self.admit(&state, &device, &id, remote).map_err(|(r, why)| Slow::Refused(r, who, why));
        }
        let Some(password) = info.password.filter(|p| !p.is_empty()) else {
            return if self.inner.config.allow_anonymous {
                Ok(Principal::anonymous())
            } else {
                Err(Slow::Refused(
                    Refusal::BadCredentials,
                    username.unwrap_or("anonymous").to_owned(),
                    "no credentials",
                ))
            };
        };
        if jwt::looks_like_jwt(password) {
            let token = std::str::from_utf8(password)
                .map_err(|_| Slow::Refused(Refusal::BadCredentials, "unknown".into(), "malformed JWT"))?;
            let claims = jwt::peek(token)
                .map_err(|_| Slow::Refused(Refusal::BadCredentials, "unknown".into(), "malformed JWT"))?;
            let from_client =
                info.client_id.as_str().rsplit_once("/devices/").map_or(info.client_id.as_str(), |(_, d)| d);
            let device =
                claims.sub.as_deref().or(Some(from_client)).and_then(|s| DeviceId::new(s).ok()).ok_or_else(
                    || Slow::Refused(Refusal::BadCredentials, "unknown".into(), "no device id"),
                )?;
            let who = format!("device:{device}");
            return self
                .verify_jwt(&state, &device, token, now, remote)
                .map_err(|(r, why)| Slow::Refused(r, who, why));
        }
        let Some(device) = username.and_then(|u| DeviceId::new(u).ok()) else {
            return Err(Slow::Refused(
                Refusal::BadCredentials,
                "unknown".into(),
                "no device id in the user name",
            ));
        };
        let who = format!("device:{device}");
        if !state.devices.contains_key(&device) {
            return Err(Slow::Refused(Refusal::BadCredentials, who, "unknown device"));
        }
        let digest = secret::sha256(password);
        let live: Vec<&Cred> = state.device_credentials(&device).filter(|c| c.live(now)).collect();
        if let Some(c) = live.iter().find(|c| {
            c.cred.kind == CredentialKind::Token && c.digest.is_some_and(|d| secret::digest_eq(&d, &digest))
        }) {
            let id = c.cred.id.clone();
            return self.admit(&state, &device, &id, remote).map_err(|(r, why)| Slow::Refused(r, who, why));
        }
        let phcs: Vec<(String, String)> = live
            .iter()
            .filter(|c| c.cred.kind == CredentialKind::Password)
            .map(|c| (c.cred.id.clone(), c.cred.verifier.clone()))
            .collect();
        if phcs.is_empty() {
            return Err(Slow::Refused(Refusal::BadCredentials, who, "wrong token"));
        }
        Err(Slow::Password { device, phcs, password: password.to_vec() })
    }
}

/// What [`Registry::check_connect`] could not finish at once.
enum Slow {
    Refused(Refusal, String, &'static str),
    Password { device: DeviceId, phcs: Vec<(String, String)>, password: Vec<u8> },
}

fn jwt_reason(e: &jwt::JwtError) -> &'static str {
    use jwt::JwtError as E;
    match e {
        E::Malformed => "malformed JWT",
        E::Algorithm(_) => "JWT algorithm not accepted",
        E::Signature => "JWT signature does not verify",
        E::Audience => "JWT audience wrong",
        E::Expired => "JWT expired",
        E::NotYetValid => "JWT issued in the future",
        E::MissingClaim(_) => "JWT without iat or exp",
        E::TooLong(_) => "JWT lifetime too long",
    }
}

impl<S: RegistryStore> Authenticator for Registry<S> {
    fn accept(&self, peer: SocketAddr) -> bool {
        let ok = self.inner.limits.ip_allowed(peer.ip());
        if !ok {
            debug!(%peer, "connection refused: address not in auth.ip_allowlist");
        }
        ok
    }

    fn authenticate(&self, info: ConnectInfo<'_>) -> AuthFuture {
        let remote = info.peer.ip();
        if self.inner.limits.connection(remote).is_err() {
            self.audit_denied(
                "auth.mqtt",
                "unknown".into(),
                info.client_id.to_string(),
                remote,
                "connection rate",
            );
            return Box::pin(std::future::ready(Err(Refusal::ConnectionRate)));
        }
        let client = info.client_id.to_string();
        match self.check_connect(&info) {
            Ok(p) => Box::pin(std::future::ready(Ok(p))),
            Err(Slow::Refused(refusal, who, reason)) => {
                debug!(%remote, client, who, reason, "MQTT authentication refused");
                self.audit_denied("auth.mqtt", who, client, remote, reason);
                Box::pin(std::future::ready(Err(refusal)))
            }
            Err(Slow::Password { device, phcs, password }) => {
                let registry = self.clone();
                Box::pin(async move {
                    let checked = tokio::task::spawn_blocking(move || {
                        phcs.into_iter()
                            .find(|(_, phc)| secret::verify_password(phc, &password))
                            .map(|(id, _)| id)
                    })
                    .await;
                    let who = format!("device:{device}");
                    let result = match checked {
                        Ok(Some(cred)) => {
                            let state = registry.read();
                            registry.admit(&state, &device, &cred, remote)
                        }
                        Ok(None) => Err((Refusal::BadCredentials, "wrong password")),
                        Err(_) => Err((Refusal::Unavailable, "password check failed")),
                    };
                    result.map_err(|(refusal, reason)| {
                        debug!(%remote, client, who, reason, "MQTT authentication refused");
                        registry.audit_denied("auth.mqtt", who, client, remote, reason);
                        refusal
                    })
                })
            }
        }
    }

    fn authorize_publish(&self, who: &Principal, message: &Message) -> Result<(), PublishRefusal> {
        if let Some(device) = &who.device
            && self.inner.limits.messages(device, 1).is_err()
        {
            return Err(PublishRefusal::RateTooHigh);
        }
        let field = |name: &str| {
            let v: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
            v.get(name)?.as_str().map(str::to_owned)
        };
        if self.may_publish_topic(who, message.topic.as_str(), field) {
            Ok(())
        } else {
            Err(PublishRefusal::NotAuthorized)
        }
    }

    fn authorize_subscribe(&self, who: &Principal, filter: &str) -> bool {
        // a shared subscription is about its filter: $share/{group}/{filter}
        let filter = match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
            Some((_, inner)) => inner,
            None => filter,
        };
        let state = self.read();
        let acl = Acl { lanes: &self.inner.lanes, rules: &state.compiled };
        match &who.device {
            None => {
                self.inner.config.allow_anonymous
                    && (!state.anonymous_rules || acl.may_subscribe(None, filter))
            }
            Some(id) => state.devices.get(id).is_some_and(|d| acl.may_subscribe(Some(d), filter)),
        }
    }

    fn connected(&self, who: &Principal, _client: &ClientId, _peer: SocketAddr) {
        if let Some(d) = &who.device {
            let first = {
                let mut presence = lock(&self.inner.presence);
                let p = presence.entry(d.clone()).or_default();
                p.connections += 1;
                p.last_seen = Some(now_ms());
                p.connections == 1
            };
            if let (true, Some(hook)) = (first, self.inner.presence_hook.get()) {
                hook(d, true);
            }
        }
    }

    fn disconnected(&self, who: &Principal, _client: &ClientId) {
        if let Some(d) = &who.device {
            let last = {
                let mut presence = lock(&self.inner.presence);
                let p = presence.entry(d.clone()).or_default();
                p.connections = p.connections.saturating_sub(1);
                p.last_seen = Some(now_ms());
                p.connections == 0
            };
            if let (true, Some(hook)) = (last, self.inner.presence_hook.get()) {
                hook(d, false);
            }
        }
    }
}

impl<S: RegistryStore> Registry<S> {
    /// The background upkeep until `shutdown`: writes queued audit events every second,
    /// saves credentials' last-used times and tidies the rate limiters every minute,
    /// deletes audit events past `audit_retention` every hour, reloads admin tokens when
    /// an unknown one was presented. Writes what is queued before returning.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let mut last_reload: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                () = self.inner.reload_tokens.notified() => {
                    if last_reload.is_none_or(|at| at.elapsed() >= TOKEN_RELOAD_EVERY) {
                        last_reload = Some(tokio::time::Instant::now());
                        self.reload_admin_tokens().await;
                    }
                    continue;
                }
            }
            ticks += 1;
            self.flush_audit().await;
            if ticks.is_multiple_of(60) {
                self.save_last_used().await;
                self.inner.limits.tidy();
            }
            if ticks % 3600 == 1 {
                let keep = i64::try_from(self.inner.config.audit_retention.as_millis()).unwrap_or(i64::MAX);
                match self.inner.store.audit_prune(Timestamp(now_ms().saturating_sub(keep))).await {
                    Ok(0) => {}
                    Ok(n) => info!(deleted = n, "audit events past auth.audit_retention deleted"),
                    Err(e) => warn!(error = %e, "audit retention failed"),
                }
            }
        }
        self.save_last_used().await;
        self.flush_audit().await;
    }

    async fn save_last_used(&self) {
        let used: Vec<(String, i64)> = lock(&self.inner.used).drain().collect();
        if used.is_empty() {
            return;
        }
        let _gate = self.inner.gate.lock().await;
        let changes: Vec<Change> = {
            let mut state = self.write();
            used.iter()
                .filter_map(|(id, at)| {
                    let c = state.credentials.get_mut(id)?;
                    c.cred.last_used_at = Some(*at);
                    Some(Change::Put(entry(Kind::Credential, id, Some(&c.cred.device), &c.cred)))
                })
                .collect()
        };
        if let Err(e) = self.inner.store.registry_apply(changes).await {
            warn!(error = %e, "credentials' last-used times could not be saved");
        }
    }
}

/// A store entry for `value`.
fn entry<T: serde::Serialize>(kind: Kind, id: &str, owner: Option<&DeviceId>, value: &T) -> Entry {
    Entry {
        kind,
        id: id.to_owned(),
        owner: owner.map(|o| o.as_str().to_owned()),
        body: serde_json::to_value(value).expect("registry entries serialize"),
    }
}

/// Reads every stored entry.
async fn load<S: RegistryStore>(store: &S) -> Result<State, RegistryError> {
    let mut state = State::default();
    for e in store.registry_load().await? {
        let bad = |err: String| {
            RegistryError::Invalid(format!("stored {} {} cannot be read: {err}", e.kind.as_str(), e.id))
        };
        match e.kind {
            Kind::Device => {
                let d: Device = serde_json::from_value(e.body.clone()).map_err(|x| bad(x.to_string()))?;
                state.devices.insert(d.id.clone(), d);
            }
            Kind::Credential => {
                let c: Credential = serde_json::from_value(e.body.clone()).map_err(|x| bad(x.to_string()))?;
                state.add_credential(Cred::new(c).map_err(bad)?);
            }
            Kind::AclRule => {
                let r: AclRule = serde_json::from_value(e.body.clone()).map_err(|x| bad(x.to_string()))?;
                state.api_rules.push(r);
            }
            Kind::AdminToken => {
                let t: AdminToken = serde_json::from_value(e.body.clone()).map_err(|x| bad(x.to_string()))?;
                state.add_admin(t);
            }
            // kept in the same table by the services that own them
            Kind::Rule | Kind::Webhook => {}
        }
    }
    state.api_rules.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    Ok(state)
}

#[cfg(test)]
mod tests;
