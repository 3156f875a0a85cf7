//! What a user writes: [`RuleSpec`] and [`ActionSpec`], as `[[rules]]` tables in the config
//! file and as JSON bodies of the rules API. Checked by [`CompiledRule::compile`].
//!
//! [`CompiledRule::compile`]: super::CompiledRule::compile

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One rule as written: which messages ([`filter`](Self::filter)), when
/// ([`condition`](Self::condition) and the stateful options) and what to do
/// ([`actions`](Self::actions)).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique id: 1 to 64 characters out of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    /// MQTT topic filter the message's topic must match (`+/telemetry`, `devices/#`).
    pub filter: String,
    /// CEL expression returning a bool; absent means `true` (every message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// What to do when the rule fires, in order.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// Fire when the condition becomes true for a device, not on every message; re-armed
    /// when it is false again (or when [`clear_condition`](Self::clear_condition) holds).
    #[serde(default, skip_serializing_if = "is_false")]
    pub once_per_crossing: bool,
    /// Hysteresis: once the condition has been true, the rule stays latched (does not
    /// re-arm, `for` keeps counting) until this CEL expression is true. With
    /// `condition = "msg.light < 300"` and `clear_condition = "msg.light >= 320"`, a
    /// reading of 310 neither fires nor re-arms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_condition: Option<String>,
    /// The condition must hold this long (across messages) before the rule fires.
    #[serde(rename = "for", default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub hold: Option<Duration>,
    /// Minimum time between two firings of this rule for one device.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Makes this a no-data rule: it fires (from [`Engine::tick`]) when a device whose
    /// messages match the filter (and the condition) sent none for this long.
    ///
    /// [`Engine::tick`]: super::Engine::tick
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub no_data: Option<Duration>,
    /// A disabled rule is kept but never evaluated.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

/// One action of a rule. Strings marked *template* may contain `${ <CEL> }`; JSON
/// templates are any JSON value whose strings are templates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    /// Send a command to a device.
    Command {
        /// Target device (template); default: the device the message came from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Topic to publish the command on (template, also accepts `{device}`); default:
        /// the device's command topic as the command service knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The command body (JSON template).
        payload: serde_json::Value,
        /// Delivery mode; default fire-and-forget.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<CommandMode>,
        /// Key of a latest-wins command (template).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// How long a queued command may wait for the device.
        #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
        ttl: Option<Duration>,
    },
    /// Publish a message.
    Publish {
        /// Topic (template, also accepts `{device}`).
        topic: String,
        /// Message body (JSON template; a string result is published as is, anything
        /// else as JSON).
        payload: serde_json::Value,
        /// 0, 1 or 2; default 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        qos: Option<u8>,
        /// Retain flag; default false.
        #[serde(default, skip_serializing_if = "is_false")]
        retain: bool,
    },
    /// Call a configured outbound webhook.
    Webhook {
        /// The webhook's id.
        webhook: String,
        /// The delivery's `data` (JSON template); default: `{rule, device, fired_at}`.
        /// Sent with event type `rule.fired`, whatever the webhook's filters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<serde_json::Value>,
    },
    /// Raise an alert (per rule device).
    Alert {
        /// Alert name.
        name: String,
        /// Default [`Severity::Warning`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        severity: Option<Severity>,
        /// Text for people (template).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Clear an alert raised before for the same device.
    ClearAlert {
        /// Alert name.
        name: String,
    },
}

/// How a command is delivered (the command service's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandMode {
    /// Sent now if the device is connected, else failed.
    #[default]
    FireAndForget,
    /// Kept until delivered or its ttl expires.
    Queued,
    /// Only the newest command of a key is kept.
    LatestWins,
}

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Info,
    /// Needs a look.
    #[default]
    Warning,
    /// Needs action now.
    Critical,
}

fn yes() -> bool {
    true
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(b: &bool) -> bool {
    *b
}

/// `Option<Duration>` as an optional `"30s"` string.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        telehub_core::duration::parse(&text).map(Some).map_err(serde::de::Error::custom)
    }

    #[allow(clippy::ref_option)] // serde's `with` passes a reference
    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => telehub_core::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}
