//! [`Config`]: the whole config tree, composed of each crate's section, and how it is
//! loaded: embedded default < `--config` file < `TELEHUB_*` environment < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// The commented default config, printed by `telehub config print`.
pub const DEFAULT_TOML: &str = include_str!("../telehub.toml");

/// Top-level sections; `TELEHUB_*` variables outside them are not config
/// (e.g. test settings) and are ignored.
const SECTIONS: &[&str] = &["data_dir", "mqtt", "http", "ingest", "store", "auth", "webhooks", "commands"];

/// Everything telehub is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where telehub keeps its data.
    pub data_dir: PathBuf,
    /// The MQTT broker.
    pub mqtt: telehub_broker::Config,
    /// The HTTP API.
    pub http: telehub_api::Config,
    /// Telemetry ingest: the queue in front of the store and the ingest mappings.
    pub ingest: telehub_hub::ingest::Config,
    /// Where telemetry is stored: SQLite in the data directory, or PostgreSQL.
    pub store: telehub_store::Config,
    /// Who may connect, publish, subscribe and administer.
    pub auth: telehub_hub::registry::AuthConfig,
    /// `[[rules]]`: automation rules (read-only through the API). Not reachable from
    /// `TELEHUB_*` variables (a list of tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<telehub_hub::rules::RuleSpec>,
    /// Webhooks out (delivery settings) and in (`[[webhooks.inbound]]`), live streams.
    pub webhooks: telehub_hub::webhooks::Config,
    /// Commands to devices: queue limit, time to live, expiry and retries.
    pub commands: telehub_hub::commands::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./telehub-data"),
            mqtt: telehub_broker::Config::default(),
            http: telehub_api::Config::default(),
            ingest: telehub_hub::ingest::Config::default(),
            store: telehub_store::Config::default(),
            auth: telehub_hub::registry::AuthConfig::default(),
            rules: Vec::new(),
            webhooks: telehub_hub::webhooks::Config::default(),
            commands: telehub_hub::commands::Config::default(),
        }
    }
}

/// Values given as command-line flags; each overrides every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--mqtt-listen`.
    pub mqtt_listen: Option<SocketAddr>,
    /// `--mqtts-listen` (MQTT over TLS; overrides `mqtt.tls.listen`).
    pub mqtts_listen: Option<SocketAddr>,
    /// `--ws-listen` (MQTT over WebSocket; overrides `mqtt.ws.listen`).
    pub ws_listen: Option<SocketAddr>,
    /// `--wss-listen` (MQTT over secure WebSocket; overrides `mqtt.ws.tls_listen`).
    pub wss_listen: Option<SocketAddr>,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--https-listen` (overrides `http.https_listen`).
    pub https_listen: Option<SocketAddr>,
    /// `--allow-anonymous`.
    pub allow_anonymous: bool,
    /// `--database-url` (`postgres://…`; overrides `store.url`).
    pub database_url: Option<String>,
}

/// The config could not be loaded. The message names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file, variable or value is wrong.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the layers. `env` is the process environment, passed in so tests need not
    /// touch the real one.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the unknown key, the wrong type, or the unreadable file.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::Invalid(format!("cannot read config file {}: {e}", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let vars: Vec<(String, String, String)> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("TELEHUB_")?.to_ascii_lowercase();
                let section = key.split("__").next().unwrap_or_default();
                SECTIONS.contains(&section).then(|| (key.replace("__", "."), v, k))
            })
            .collect();
        for (key, value, var) in vars {
            // numbers and booleans are parsed as such, anything else stays a string
            let parsed: figment::value::Value =
                value.parse().unwrap_or_else(|e: std::convert::Infallible| match e {});
            figment = figment.merge(Named::new(format!("environment variable {var}"), &key, parsed));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Named::new("--data-dir", "data_dir", dir));
        }
        if let Some(addr) = overrides.mqtt_listen {
            figment = figment.merge(Named::new("--mqtt-listen", "mqtt.listen", addr));
        }
        if let Some(addr) = overrides.mqtts_listen {
            figment = figment.merge(Named::new("--mqtts-listen", "mqtt.tls.listen", addr));
        }
        if let Some(addr) = overrides.ws_listen {
            figment = figment.merge(Named::new("--ws-listen", "mqtt.ws.listen", addr));
        }
        if let Some(addr) = overrides.wss_listen {
            figment = figment.merge(Named::new("--wss-listen", "mqtt.ws.tls_listen", addr));
        }
        if let Some(addr) = overrides.http_listen {
            figment = figment.merge(Named::new("--http-listen", "http.listen", addr));
        }
        if let Some(addr) = overrides.https_listen {
            figment = figment.merge(Named::new("--https-listen", "http.https_listen", addr));
        }
        if overrides.allow_anonymous {
            figment = figment.merge(Named::new("--allow-anonymous", "auth.allow_anonymous", true));
        }
        if let Some(url) = &overrides.database_url {
            figment = figment.merge(Named::new("--database-url", "store.url", url));
        }
        figment.extract().map_err(|e| ConfigError::Invalid(describe(&e)))
    }
}

/// One value at `key`, named for error messages after where it came from (an environment
/// variable, a flag) rather than figment's default for [`Serialized`]: the line of Rust
/// source that merged it, which tells an operator nothing.
struct Named<T> {
    name: String,
    value: Serialized<T>,
}

impl<T: Serialize> Named<T> {
    fn new(name: impl Into<String>, key: &str, value: T) -> Self {
        Self { name: name.into(), value: Serialized::default(key, value) }
    }
}

impl<T: Serialize> Provider for Named<T> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.value.data()
    }
}

/// One line per problem, each naming its key and where the value came from.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() { String::new() } else { format!("`{}`: ", e.path.join(".")) };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(s) => format!(" (from {s})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            format!("{key}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
