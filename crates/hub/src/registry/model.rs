//! What the registry keeps: devices, their credentials, ACL rules and admin tokens, in
//! the shapes stored (as JSON documents) and answered by the API.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use telehub_core::DeviceId;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its id: the MQTT user name, the `{id}` of its topics.
    pub id: DeviceId,
    /// A human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free-form labels (`site = "plant-7"`), usable in ACL rules as `{tag:site}` and in
    /// list filters.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Addresses the device may connect from; empty: any (the global allowlist still
    /// applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last change, Unix ms.
    pub updated_at: i64,
}

/// What kind of secret a credential checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A generated high-entropy token (stored as SHA-256).
    Token,
    /// A human-chosen password (stored as argon2id).
    Password,
    /// A public key for device-signed RS256 JWTs.
    JwtRs256,
    /// A public key for device-signed ES256 JWTs.
    JwtEs256,
    /// The SHA-256 fingerprint of an X.509 client certificate.
    X509,
}

impl CredentialKind {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Password => "password",
            Self::JwtRs256 => "jwt_rs256",
            Self::JwtEs256 => "jwt_es256",
            Self::X509 => "x509",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device credential as stored: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Its id (`cr_…`).
    pub id: String,
    /// Its device.
    pub device: DeviceId,
    /// What it checks.
    pub kind: CredentialKind,
    /// A label (`"factory key"`, `"2026 rotation"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Token: hex SHA-256 of the token. Password: the argon2id PHC string. JWT: the
    /// public key PEM. X.509: the hex SHA-256 fingerprint of the certificate's DER.
    pub verifier: String,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Expiry, Unix ms; refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Last successful use, Unix ms (saved periodically, not on every use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

/// A credential as the API shows it: no verifier except a public key or fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    /// Its id.
    pub id: String,
    /// Its device.
    pub device: DeviceId,
    /// What it checks.
    pub kind: CredentialKind,
    /// Its label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The public key (JWT kinds) or the fingerprint (X.509); never a token or password
    /// hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Last successful use, Unix ms (kept in memory, saved periodically).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
    /// Expiry, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// What an ACL rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Grants.
    Allow,
    /// Refuses, even what another rule or the device's own lane would allow.
    Deny,
}

/// Which operation an ACL rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// PUBLISH (and HTTP ingest).
    Publish,
    /// SUBSCRIBE (and live streams).
    Subscribe,
    /// Both.
    All,
}

/// An ACL rule as written in the config file or sent to the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleSpec {
    /// Allow or deny.
    pub effect: Effect,
    /// Publish, subscribe or both.
    pub action: Action,
    /// A topic filter; `{device}` stands for the client's device id and `{tag:NAME}` for
    /// its tag `NAME` (a rule whose tag the device lacks does not apply to it).
    pub filter: String,
    /// Only for this device (absent: every device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// Only for devices with all these tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Whether the rule also applies to anonymous clients (`allow_anonymous`).
    #[serde(default)]
    pub anonymous: bool,
}

/// A stored ACL rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    /// Its id (`acl_…`; config-file rules are `config-{n}`).
    pub id: String,
    /// The rule.
    #[serde(flatten)]
    pub spec: AclRuleSpec,
    /// Creation time, Unix ms.
    pub created_at: i64,
}

/// What an admin token may do. `admin` includes `write`, which includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read devices, telemetry, audit.
    Read,
    /// Change devices, credentials, rules; ingest.
    Write,
    /// Manage admin tokens.
    Admin,
}

impl Scope {
    /// `read`, `write` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            _ => Err(format!("unknown scope {s:?}: expected read, write or admin")),
        }
    }
}

/// An admin API token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminToken {
    /// Its id (`tk_…`), which appears in the audit log.
    pub id: String,
    /// A label.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Expiry, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// An admin token as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// Its label.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Expiry, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl From<&AdminToken> for TokenInfo {
    fn from(t: &AdminToken) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            scopes: t.scopes.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
        }
    }
}

/// `POST /api/v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Its id.
    pub id: DeviceId,
    /// A human name.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Addresses it may connect from (CIDR); empty: any.
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
}

/// `PATCH /api/v1/devices/{id}`: the fields present replace the stored ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// New name (`null` clears it).
    #[serde(default, deserialize_with = "double_option")]
    pub name: Option<Option<String>>,
    /// New labels (replace all).
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// New allowlist (replace all).
    #[serde(default)]
    pub allowed_ips: Option<Vec<IpNet>>,
}

/// Present-and-null → `Some(None)`, absent → `None` (with `#[serde(default)]`).
fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A device with its live state, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    /// The registered device.
    #[serde(flatten)]
    pub device: Device,
    /// Whether it has a live MQTT connection.
    pub connected: bool,
    /// When it was last seen (now while connected), Unix ms; since this start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// Which devices `GET /api/v1/devices` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Devices with all these tags.
    pub tags: BTreeMap<String, String>,
    /// Only connected (`true`) or only disconnected (`false`) devices.
    pub connected: Option<bool>,
    /// Only devices seen at or after this time, Unix ms.
    pub seen_since: Option<i64>,
}

/// `POST /api/v1/devices/{id}/credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// What it checks.
    pub kind: CredentialKind,
    /// A label.
    #[serde(default)]
    pub name: Option<String>,
    /// `password`: the password (at least 8 characters); `token`: absent, telehub
    /// generates one and answers it once.
    #[serde(default)]
    pub secret: Option<String>,
    /// JWT kinds: the PEM public key.
    #[serde(default)]
    pub public_key: Option<String>,
    /// `x509`: the SHA-256 fingerprint of the certificate's DER, hex (`:` allowed).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Expiry, Unix ms.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// Devices with their credentials (verifiers, never secrets) and the ACL rules:
/// `GET /api/v1/devices/export`, `POST /api/v1/devices/import`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Devices.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Their credentials.
    #[serde(default)]
    pub credentials: Vec<Credential>,
    /// ACL rules made by the API.
    #[serde(default)]
    pub acl: Vec<AclRule>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Devices created or replaced.
    pub devices: usize,
    /// Credentials created or replaced.
    pub credentials: usize,
    /// ACL rules created or replaced.
    pub acl: usize,
}
