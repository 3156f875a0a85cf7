//! Ingest mappings: which published topics are telemetry, whose device they belong to, and
//! how a JSON document becomes points. Pure functions of values, no I/O.
//!
//! A document becomes one [`Record`]:
//!
//! * every number becomes a point named by its field; `true`/`false` become 1/0;
//! * nested objects are flattened with `.` (`{"env": {"temp": 21}}` → `env.temp`);
//! * strings, nulls and arrays are not metrics (they stay in the document);
//! * the timestamp, message-id and device-id fields are not metrics;
//! * the whole document is kept as the device's latest reported state.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use telehub_core::{DeviceId, DeviceIdError, TopicFilter, TopicName};
use telehub_store::{Metric, Point, Record, Timestamp};

use crate::timestamp::{self, Arrival, TimestampError, json_kind};

/// Where a mapped message's device id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSource {
    /// A topic level, counted from 0 (`devices/+/telemetry` → level 1).
    TopicLevel(usize),
    /// A top-level string field of the payload (`device_id`).
    Field(String),
}

/// Which fields of a document are what, besides the device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRules {
    /// Field holding the measurement time (RFC 3339 or Unix ms); arrival time without it.
    pub timestamp: Option<String>,
    /// Field holding a message id (string or integer) for `(device, msg_id)` dedupe.
    pub msg_id: Option<String>,
    /// When set, only these metrics (a name also selects everything flattened below it:
    /// `env` selects `env.temp`).
    pub include: Option<Vec<String>>,
    /// Metrics never stored (same prefix rule as `include`).
    pub exclude: Vec<String>,
}

impl FieldRules {
    /// `ts` and `msg_id`, every numeric field a metric: the HTTP API's conventions and
    /// the default mappings'.
    pub fn standard() -> Self {
        Self {
            timestamp: Some("ts".into()),
            msg_id: Some("msg_id".into()),
            include: None,
            exclude: Vec::new(),
        }
    }
}

/// One `[[ingest.mappings]]` entry: a topic filter and how its messages become records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MappingToml", into = "MappingToml")]
pub struct Mapping {
    /// Which topics.
    pub filter: TopicFilter,
    /// Whose device.
    pub device: DeviceSource,
    /// Which fields are what.
    pub fields: FieldRules,
}

/// The config-file shape of a [`Mapping`] (flat keys are easiest to write in TOML and
/// environment variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingToml {
    filter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_level: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    msg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclude: Vec<String>,
}

impl TryFrom<MappingToml> for Mapping {
    type Error = String;

    fn try_from(m: MappingToml) -> Result<Self, String> {
        let filter =
            TopicFilter::new(m.filter.as_str()).map_err(|e| format!("filter {:?}: {e}", m.filter))?;
        if filter.is_shared() {
            return Err(format!("filter {:?}: a shared subscription is not a topic filter here", m.filter));
        }
        let device = match (m.device_level, m.device_field) {
            (Some(level), None) => {
                // a filter without `#` says how many levels its topics have; with `#`, a
                // topic too short for `level` is refused per message (MapError::NoTopicLevel)
                let has_hash = filter.levels().any(|l| l == "#");
                if !has_hash && level >= filter.levels().count() {
                    return Err(format!(
                        "filter {:?}: device_level {level} is not a level of the filter (levels count from 0)",
                        m.filter
                    ));
                }
                DeviceSource::TopicLevel(level)
            }
            (None, Some(field)) if !field.is_empty() => DeviceSource::Field(field),
            (None, Some(_)) => return Err(format!("filter {:?}: device_field is empty", m.filter)),
            _ => {
                return Err(format!(
                    "filter {:?}: set exactly one of device_level and device_field",
                    m.filter
                ));
            }
        };
        let fields =
            FieldRules { timestamp: m.timestamp, msg_id: m.msg_id, include: m.metrics, exclude: m.exclude };
        Ok(Self { filter, device, fields })
    }
}

impl From<Mapping> for MappingToml {
    fn from(m: Mapping) -> Self {
        let (device_level, device_field) = match m.device {
            DeviceSource::TopicLevel(level) => (Some(level), None),
            DeviceSource::Field(field) => (None, Some(field)),
        };
        Self {
            filter: m.filter.as_str().to_owned(),
            device_level,
            device_field,
            timestamp: m.fields.timestamp,
            msg_id: m.fields.msg_id,
            metrics: m.fields.include,
            exclude: m.fields.exclude,
        }
    }
}

impl Mapping {
    fn new(filter: &str, device: DeviceSource) -> Self {
        let filter = TopicFilter::new(filter).expect("default filters are valid");
        Self { filter, device, fields: FieldRules::standard() }
    }

    /// The default mappings, tried in this order:
    ///
    /// * `devices/+/telemetry`: telehub's canonical topic, device id = level 1;
    /// * `sensor/data`: the paho-mqtt tutorial, device id in the `device_id` field;
    /// * `+/telemetry`: the night-light lesson (`<id>/telemetry`), device id = level 0;
    /// * `sensors/#`: `sensors/<id>/…` layouts, device id = level 1 (the topic names the
    ///   device, as in every other default; a payload `device_id` stays in the document).
    ///
    /// All of them read `ts` as the timestamp and `msg_id` as the message id.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::new("devices/+/telemetry", DeviceSource::TopicLevel(1)),
            Self::new("sensor/data", DeviceSource::Field("device_id".into())),
            Self::new("+/telemetry", DeviceSource::TopicLevel(0)),
            Self::new("/devices/+/events", DeviceSource::TopicLevel(2)),
            Self::new("sensors/#", DeviceSource::TopicLevel(1)),
        ]
    }

    /// Maps a message published on `topic` (which [`Mapping::filter`] matches) to a
    /// record whose arrival time comes from `arrival`.
    ///
    /// # Errors
    ///
    /// [`MapError`] when the payload is not a JSON object, the device id is missing or
    /// invalid, or the timestamp or message id is malformed.
    pub fn map(&self, topic: &TopicName, payload: &[u8], arrival: &impl Arrival) -> Result<Record, MapError> {
        debug_assert!(self.filter.matches(topic), "{} does not match {}", self.filter, topic);
        let object = parse_object(payload)?;
        let (device, device_field) = match &self.device {
            DeviceSource::TopicLevel(level) => {
                let id = topic.as_str().split('/').nth(*level).ok_or(MapError::NoTopicLevel(*level))?;
                let device = DeviceId::new(id)
                    .map_err(|source| MapError::InvalidDeviceId { id: id.to_owned(), source })?;
                (device, None)
            }
            DeviceSource::Field(field) => (device_from_field(&object, field)?, Some(field.as_str())),
        };
        record_from_object(device, object, &self.fields, device_field, arrival)
    }
}

/// The first mapping whose filter matches `topic`.
pub fn find<'a>(mappings: &'a [Mapping], topic: &TopicName) -> Option<&'a Mapping> {
    mappings.iter().find(|m| m.filter.matches(topic))
}

/// Why a payload could not become a record. The messages say what was wrong and where,
/// for HTTP answers and debug logs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    /// Not JSON at all (serde's message names line and column).
    #[error("invalid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("expected a JSON object, found {0}")]
    NotObject(&'static str),
    /// The topic is shorter than the mapping's device level.
    #[error("the topic has no level {0} to take the device id from")]
    NoTopicLevel(usize),
    /// The device id field is absent.
    #[error("missing `{0}`")]
    MissingDeviceField(String),
    /// The device id field is not a string.
    #[error("`{field}` must be a string, found {found}")]
    DeviceFieldNotString {
        /// The field.
        field: String,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// The device id breaks [`DeviceId`]'s rules.
    #[error("invalid device id {id:?}: {source}")]
    InvalidDeviceId {
        /// The id as sent.
        id: String,
        /// The rule it breaks.
        #[source]
        source: DeviceIdError,
    },
    /// The timestamp field is malformed.
    #[error("`{field}`: {source}")]
    BadTimestamp {
        /// The field.
        field: String,
        /// What is wrong with it.
        #[source]
        source: TimestampError,
    },
    /// The message id field is neither a string nor an integer.
    #[error("`{field}` must be a string or an integer, found {found}")]
    BadMsgId {
        /// The field.
        field: String,
        /// The JSON type found instead.
        found: &'static str,
    },
}

/// Parses a payload that must be one JSON object.
///
/// # Errors
///
/// [`MapError::NotJson`] or [`MapError::NotObject`].
pub fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, MapError> {
    let value = serde_json::from_slice(payload).map_err(|e| MapError::NotJson(e.to_string()))?;
    into_object(value)
}

/// The object `value` is.
///
/// # Errors
///
/// [`MapError::NotObject`] naming what it is instead.
pub fn into_object(value: Value) -> Result<Map<String, Value>, MapError> {
    match value {
        Value::Object(object) => Ok(object),
        other => Err(MapError::NotObject(json_kind(&other))),
    }
}

/// Reads and validates the device id in `field` of `object`.
///
/// # Errors
///
/// [`MapError::MissingDeviceField`], [`MapError::DeviceFieldNotString`] or
/// [`MapError::InvalidDeviceId`].
pub fn device_from_field(object: &Map<String, Value>, field: &str) -> Result<DeviceId, MapError> {
    match object.get(field) {
        None => Err(MapError::MissingDeviceField(field.to_owned())),
        Some(Value::String(id)) => {
            DeviceId::new(id.as_str()).map_err(|source| MapError::InvalidDeviceId { id: id.clone(), source })
        }
        Some(other) => {
            Err(MapError::DeviceFieldNotString { field: field.to_owned(), found: json_kind(other) })
        }
    }
}

/// Turns one JSON object from `device` into a record: points from its numeric and boolean
/// fields (see the module docs), timestamp and message id from `rules`, the object itself
/// as the document. `device_field` names the field the device id came from, if any, so it
/// is not taken for a metric.
///
/// # Errors
///
/// [`MapError::BadTimestamp`] or [`MapError::BadMsgId`].
pub fn record_from_object(
    device: DeviceId,
    object: Map<String, Value>,
    rules: &FieldRules,
    device_field: Option<&str>,
    arrival: &impl Arrival,
) -> Result<Record, MapError> {
    let received_at = arrival.stamp(&device);
    let ts = match rules.timestamp.as_deref().and_then(|f| object.get(f).map(|v| (f, v))) {
        Some((field, value)) => timestamp::from_json(value)
            .map_err(|source| MapError::BadTimestamp { field: field.to_owned(), source })?,
        None => received_at,
    };
    let msg_id = match rules.msg_id.as_deref().and_then(|f| object.get(f).map(|v| (f, v))) {
        None => None,
        Some((_, Value::String(s))) => Some(s.clone()),
        Some((_, Value::Number(n))) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some((field, other)) => {
            return Err(MapError::BadMsgId { field: field.to_owned(), found: json_kind(other) });
        }
    };
    let reserved = [rules.timestamp.as_deref(), rules.msg_id.as_deref(), device_field];
    let mut points = Vec::new();
    for (key, value) in &object {
        if reserved.contains(&Some(key.as_str())) {
            continue;
        }
        collect_points(key.clone(), value, rules, ts, &mut points);
    }
    Ok(Record { device, msg_id, received_at, points, document: Some(Value::Object(object)) })
}

/// Adds the points of `value`, named `name`, flattening objects with `.`.
fn collect_points(name: String, value: &Value, rules: &FieldRules, ts: Timestamp, points: &mut Vec<Point>) {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Object(object) => {
            for (key, inner) in object {
                collect_points(format!("{name}.{key}"), inner, rules, ts, points);
            }
            return;
        }
        Value::Null | Value::String(_) | Value::Array(_) => None,
    };
    if let Some(value) = number
        && !name.is_empty()
        && rules.selects(&name)
    {
        points.push(Point { metric: Metric(name), ts, value });
    }
}

impl FieldRules {
    /// Whether the metric `name` is stored under these rules.
    fn selects(&self, name: &str) -> bool {
        let covers = |rule: &String| {
            name == rule
                || (name.starts_with(rule.as_str()) && name.as_bytes().get(rule.len()) == Some(&b'.'))
        };
        self.include.as_ref().is_none_or(|include| include.iter().any(covers))
            && !self.exclude.iter().any(covers)
    }
}
