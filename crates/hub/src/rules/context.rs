//! [`MessageContext`]: the CEL variables of one message, built once and shared by every
//! rule evaluated on it, plus the conversions between JSON and CEL values.
//!
//! The payload is parsed straight into CEL values (a serde visitor, no intermediate
//! `serde_json::Value`), and rules read the variables through a
//! [`cel::context::VariableResolver`] that lends them out: evaluating a rule copies
//! nothing from the message.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use cel::common::types::CelTimestamp;
use cel::common::types::{CelBool, CelDouble, CelList, CelMap, CelMapKey, CelNull, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::Key;
use cel::{Context, Env, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use telehub_core::{DeviceId, TopicName};
use telehub_store::Timestamp;

/// One message as rules see it. Its variables, available to conditions and templates:
///
/// | variable | CEL type | value |
/// |---|---|---|
/// | `msg` | map / list / number / string / bool / null | the payload parsed as JSON; `null` when it is not JSON |
/// | `payload` | string | the payload as text (invalid UTF-8 replaced by `U+FFFD`) |
/// | `topic` | string | the topic it was published to |
/// | `device` | string or null | the device it came from, when known |
/// | `device_tags` | map(string, string) | the device's tags, from the caller |
/// | `ts` | timestamp | the message's time |
///
/// Building one costs a JSON parse; evaluating a rule on it copies nothing.
pub struct MessageContext {
    topic: TopicName,
    device: Option<DeviceId>,
    vars: Arc<Variables>,
}

impl MessageContext {
    /// Builds the variables of a message once.
    pub fn new(
        topic: &TopicName,
        device: Option<&DeviceId>,
        device_tags: &BTreeMap<String, String>,
        payload: &[u8],
        ts: Timestamp,
    ) -> Self {
        let msg = json_to_val(payload).unwrap_or_else(|| Box::new(CelNull));
        let tags: HashMap<CelMapKey<'static>, Box<dyn Val>> = device_tags
            .iter()
            .map(|(k, v)| (CelMapKey::String(CelString::from(k.clone())), string_val(v.clone())))
            .collect();
        let vars = Variables {
            msg,
            payload: string_val(String::from_utf8_lossy(payload).into_owned()),
            topic: string_val(topic.as_str().to_owned()),
            device: match device {
                Some(d) => string_val(d.as_str().to_owned()),
                None => Box::new(CelNull),
            },
            device_tags: Box::new(CelMap::from(tags)),
            ts: Box::new(CelTimestamp::from(to_chrono(ts))),
        };
        Self { topic: topic.clone(), device: device.cloned(), vars: Arc::new(vars) }
    }

    /// The topic the message was published to.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The device it came from, when known.
    pub fn device(&self) -> Option<&DeviceId> {
        self.device.as_ref()
    }

    pub(super) fn variables(&self) -> &Arc<Variables> {
        &self.vars
    }
}

impl fmt::Debug for MessageContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageContext").field("topic", &self.topic).field("device", &self.device).finish()
    }
}

/// The CEL variables of one message. Immutable, so a rule waiting for its `for` duration
/// keeps an `Arc` of them to render its actions when it fires from a tick.
#[derive(Debug)]
pub(super) struct Variables {
    msg: Box<dyn Val>,
    payload: Box<dyn Val>,
    topic: Box<dyn Val>,
    device: Box<dyn Val>,
    device_tags: Box<dyn Val>,
    ts: Box<dyn Val>,
}

impl Variables {
    /// A CEL context reading these variables; it costs an `Arc` clone, no copy.
    pub(super) fn context<'v>(&'v self, env: &Arc<Env>) -> Context<'v, 'v> {
        let mut cx = Context::with_env(Arc::clone(env));
        cx.set_variable_resolver(self);
        cx
    }
}

impl VariableResolver for Variables {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let v = match variable {
            "msg" => &self.msg,
            "payload" => &self.payload,
            "topic" => &self.topic,
            "device" => &self.device,
            "device_tags" => &self.device_tags,
            "ts" => &self.ts,
            _ => return None,
        };
        Some(CowVal::Borrowed(v.as_ref()))
    }
}

/// The variable names conditions and templates may use.
pub const VARIABLES: [&str; 6] = ["msg", "payload", "topic", "device", "device_tags", "ts"];

fn string_val(s: String) -> Box<dyn Val> {
    Box::new(CelString::from(s))
}

fn to_chrono(ts: Timestamp) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::from_timestamp_millis(ts.0).unwrap_or_default().fixed_offset()
}

/// Parses a JSON document into a CEL value; `None` when it is not JSON.
pub(super) fn json_to_val(payload: &[u8]) -> Option<Box<dyn Val>> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let v = JsonSeed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

/// Deserializes any JSON value into a CEL value; duplicate keys keep the last value.
///
/// Every JSON number becomes a CEL `double`, as in CEL's own JSON mapping
/// (`google.protobuf.Value`): JSON does not tell `25` from `25.0`, and CEL refuses mixed
/// `int`/`double` arithmetic, so keeping integers as `int` would make `msg.t * 1.8` work
/// for 25.5 and fail for 25. Comparisons with integer literals (`msg.light < 300`,
/// `msg.n == 3`) work as expected; arithmetic takes double literals (`msg.t * 2.0`).
/// Integers beyond 2^53 lose precision.
struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Box<dyn Val>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonSeed {
    type Value = Box<dyn Val>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Box::new(CelBool::from(v)))
    }

    // Casts: JSON has one number type; see `JsonSeed`.
    #[allow(clippy::cast_precision_loss)]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(v as f64)))
    }

    #[allow(clippy::cast_precision_loss)]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(v as f64)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(string_val(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(string_val(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Box::new(CelList::from(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = HashMap::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(JsonSeed)?;
            entries.insert(CelMapKey::String(CelString::from(key)), value);
        }
        Ok(Box::new(CelMap::from(entries)))
    }
}

/// A CEL result as JSON, for rendered templates.
///
/// # Errors
///
/// A message for values JSON cannot hold: non-finite numbers, bytes, types, functions.
pub(super) fn value_to_json(v: &Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::UInt(u) => J::from(*u),
        Value::Float(f) => float_to_json(*f)?,
        Value::String(s) => J::String(s.as_str().to_owned()),
        Value::List(items) => J::Array(items.iter().map(value_to_json).collect::<Result<_, _>>()?),
        Value::Map(m) => {
            let mut out = serde_json::Map::with_capacity(m.map.len());
            for (k, v) in m.map.iter() {
                let key = match k {
                    Key::String(s) => s.as_str().to_owned(),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                out.insert(key, value_to_json(v)?);
            }
            J::Object(out)
        }
        Value::Timestamp(t) => J::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        Value::Duration(d) => J::String(format_duration(*d)),
        other => return Err(format!("a {} value cannot be written as JSON", other.type_of())),
    })
}

/// A double as JSON: integral values within 2^53 as integers, so a payload's `250`
/// renders back as `250` (JSON numbers are doubles in CEL, see `JsonSeed`).
#[allow(clippy::cast_possible_truncation, clippy::float_cmp)]
fn float_to_json(f: f64) -> Result<serde_json::Value, String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.fract() == 0.0 && f.abs() <= EXACT {
        return Ok(serde_json::Value::from(f as i64));
    }
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .ok_or_else(|| format!("{f} is not a JSON number"))
}

/// A CEL result as text inside a string template: strings as they are, other scalars as
/// CEL prints them, lists and maps as JSON.
pub(super) fn value_to_text(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::String(s) => s.as_str().to_owned(),
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Timestamp(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        Value::Duration(d) => format_duration(*d),
        other => value_to_json(other)?.to_string(),
    })
}

fn format_duration(d: chrono::Duration) -> String {
    match d.num_milliseconds() {
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The type name of a CEL value, for error messages.
pub(super) fn type_name(v: &Value) -> String {
    v.type_of().to_string()
}
