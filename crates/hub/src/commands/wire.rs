//! What a command looks like on the wire, and what devices send back.
//!
//! * On the device's command topic `devices/{id}/commands` the payload is an envelope,
//!   `{"id": "<command id>", "payload": …, "key": "…"}` (`key` only for latest-wins),
//!   so every device learns the id whatever its MQTT version. A command with its own
//!   `topic` (e.g. `{id}/commands` for the night-light lesson) carries the bare payload
//!   (a JSON string payload as its text). Either way it is published at QoS 1 with the
//!   MQTT 5 properties User Property `command-id`, Response Topic
//!   `devices/{id}/commands/response` and Correlation Data = the command id.
//! * Acknowledgements: an MQTT 3.1.1 device publishes `{"id": …, "status": …,
//!   "result": …}` to `devices/{id}/commands/ack`; an MQTT 5 device publishes to the
//!   Response Topic with the Correlation Data it got, its payload either
//!   `{"status": …, "result": …}` or anything else (taken as `succeeded` with that
//!   payload as the result).

use serde_json::Value;
use telehub_core::{DeviceId, Message, MessageProperties, QoS, TopicName};
use telehub_store::commands::{Command, CommandState};

/// The MQTT 5 User Property naming the command.
pub const COMMAND_ID_PROPERTY: &str = "command-id";

/// `devices/{id}/commands`: where a command without its own topic is published.
pub fn command_topic(device: &DeviceId) -> String {
    format!("devices/{device}/commands")
}

/// `devices/{id}/commands/ack`: where MQTT 3.1.1 devices report outcomes.
pub fn ack_topic(device: &DeviceId) -> String {
    format!("devices/{device}/commands/ack")
}

/// `devices/{id}/commands/response`: the MQTT 5 Response Topic of every command.
pub fn response_topic(device: &DeviceId) -> String {
    format!("devices/{device}/commands/response")
}

/// The message that delivers `cmd` (see the module docs).
///
/// # Errors
///
/// The command's topic is not a valid topic name (checked when it was created).
pub fn message(cmd: &Command) -> Result<Message, String> {
    let (topic, payload) = match &cmd.topic {
        Some(topic) => {
            let payload = match &cmd.payload {
                Value::String(text) => text.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (topic.clone(), payload)
        }
        None => {
            let mut envelope = serde_json::Map::new();
            envelope.insert("id".into(), Value::String(cmd.id.clone()));
            envelope.insert("payload".into(), cmd.payload.clone());
            if let Some(key) = &cmd.key {
                envelope.insert("key".into(), Value::String(key.clone()));
            }
            (command_topic(&cmd.device), Value::Object(envelope).to_string().into_bytes())
        }
    };
    let topic = TopicName::new(topic.as_str()).map_err(|e| format!("command topic {topic:?}: {e}"))?;
    let properties = MessageProperties {
        response_topic: Some(response_topic(&cmd.device).into()),
        correlation_data: Some(cmd.id.clone().into_bytes().into()),
        user_properties: vec![(COMMAND_ID_PROPERTY.into(), cmd.id.as_str().into())],
        ..MessageProperties::default()
    };
    Ok(Message { topic, payload: payload.into(), qos: QoS::AtLeastOnce, retain: false, properties })
}

/// An outcome a device reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The command.
    pub id: String,
    /// `delivered`, `succeeded`, `failed` or `rejected`.
    pub status: CommandState,
    /// What the device says about it.
    pub result: Option<Value>,
}

/// The states a device may report.
pub const ACK_STATES: [CommandState; 4] =
    [CommandState::Delivered, CommandState::Succeeded, CommandState::Failed, CommandState::Rejected];

/// A reported status by name; `None` unless one of [`ACK_STATES`].
pub fn ack_state(name: &str) -> Option<CommandState> {
    CommandState::parse(name).filter(|s| ACK_STATES.contains(s))
}

/// What a device published to a topic of its own, as the hub reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// An outcome of a command.
    Ack(DeviceId, Ack),
    /// A reported state document (a JSON object, merged into the shadow's reported).
    State(DeviceId, serde_json::Map<String, Value>),
}

/// Reads `message` when it is an acknowledgement or a state report; `Ok(None)` for any
/// other topic; `Err` (a reason to log) for a malformed one.
///
/// # Errors
///
/// The topic is an ack, response or state topic, but the payload is not usable.
pub fn parse(message: &Message) -> Result<Option<Inbound>, String> {
    let mut levels = message.topic.as_str().split('/');
    let (Some("devices"), Some(device)) = (levels.next(), levels.next()) else { return Ok(None) };
    let rest: Vec<&str> = levels.collect();
    let kind = match rest.as_slice() {
        ["commands", "ack"] => 0,
        ["commands", "response"] => 1,
        ["state"] => 2,
        _ => return Ok(None),
    };
    let device = DeviceId::new(device).map_err(|e| format!("device id in {}: {e}", message.topic))?;
    let json = || serde_json::from_slice::<Value>(&message.payload);
    match kind {
        0 => {
            let value = json().map_err(|e| format!("ack is not JSON: {e}"))?;
            let id = value.get("id").and_then(Value::as_str).ok_or("ack without a string `id`")?;
            let status =
                value.get("status").and_then(Value::as_str).ok_or("ack without a string `status`")?;
            let status = ack_state(status).ok_or_else(|| format!("ack with unknown status {status:?}"))?;
            let result = value.get("result").cloned();
            Ok(Some(Inbound::Ack(device, Ack { id: id.to_owned(), status, result })))
        }
        1 => {
            let data =
                message.properties.correlation_data.as_ref().ok_or("response without Correlation Data")?;
            let id = std::str::from_utf8(data).map_err(|_| "Correlation Data is not a command id")?;
            let (status, result) = match json() {
                Ok(Value::Object(map)) if map.get("status").and_then(Value::as_str).is_some() => {
                    let name = map.get("status").and_then(Value::as_str).unwrap_or_default();
                    let status =
                        ack_state(name).ok_or_else(|| format!("response with unknown status {name:?}"))?;
                    (status, map.get("result").cloned())
                }
                Ok(other) => (CommandState::Succeeded, Some(other)),
                Err(_) if message.payload.is_empty() => (CommandState::Succeeded, None),
                Err(_) => (
                    CommandState::Succeeded,
                    Some(Value::String(String::from_utf8_lossy(&message.payload).into())),
                ),
            };
            Ok(Some(Inbound::Ack(device, Ack { id: id.to_owned(), status, result })))
        }
        _ => match json() {
            Ok(Value::Object(map)) => Ok(Some(Inbound::State(device, map))),
            Ok(_) => Err("a state report must be a JSON object".into()),
            Err(e) => Err(format!("state report is not JSON: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use serde_json::json;
    use telehub_store::Timestamp;
    use telehub_store::commands::CommandMode;

    use super::*;

    fn cmd(topic: Option<&str>, payload: Value) -> Command {
        Command {
            id: "c1".into(),
            device: DeviceId::new("d1").unwrap(),
            seq: 1,
            mode: CommandMode::LatestWins,
            key: Some("heater".into()),
            payload,
            topic: topic.map(Into::into),
            state: CommandState::Queued,
            created_at: Timestamp(1),
            expires_at: None,
            updated_at: Timestamp(1),
            timestamps: BTreeMap::new(),
            result: None,
            reason: None,
        }
    }

    fn msg(topic: &str, payload: &[u8], correlation: Option<&str>) -> Message {
        Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties {
                correlation_data: correlation.map(|c| Bytes::copy_from_slice(c.as_bytes())),
                ..Default::default()
            },
        }
    }

    #[test]
    fn envelope_on_the_canonical_topic_raw_payload_on_its_own() {
        let m = message(&cmd(None, json!({"on": true}))).unwrap();
        assert_eq!(m.topic.as_str(), "devices/d1/commands");
        assert_eq!(
            serde_json::from_slice::<Value>(&m.payload).unwrap(),
            json!({"id": "c1", "payload": {"on": true}, "key": "heater"})
        );
        assert_eq!(m.qos, QoS::AtLeastOnce);
        assert_eq!(m.properties.response_topic.as_deref(), Some("devices/d1/commands/response"));
        assert_eq!(m.properties.correlation_data.as_deref(), Some(&b"c1"[..]));
        assert_eq!(m.properties.user_properties[0].0.as_ref() as &str, "command-id");
        let raw = message(&cmd(Some("d1/commands"), json!({"led_on": true}))).unwrap();
        assert_eq!(raw.topic.as_str(), "d1/commands");
        assert_eq!(&raw.payload[..], br#"{"led_on":true}"#);
        let text = message(&cmd(Some("d1/commands"), json!("ON"))).unwrap();
        assert_eq!(&text.payload[..], b"ON");
    }

    #[test]
    fn acks_responses_and_state_reports() {
        let d1 = DeviceId::new("d1").unwrap();
        let ack = parse(&msg(
            "devices/d1/commands/ack",
            br#"{"id":"c1","status":"succeeded","result":{"t":1}}"#,
            None,
        ));
        assert_eq!(
            ack.unwrap(),
            Some(Inbound::Ack(
                d1.clone(),
                Ack { id: "c1".into(), status: CommandState::Succeeded, result: Some(json!({"t":1})) }
            ))
        );
        assert!(parse(&msg("devices/d1/commands/ack", br#"{"id":"c1","status":"expired"}"#, None)).is_err());
        assert!(parse(&msg("devices/d1/commands/ack", b"nope", None)).is_err());
        let resp =
            parse(&msg("devices/d1/commands/response", br#"{"status":"rejected"}"#, Some("c2"))).unwrap();
        assert_eq!(
            resp,
            Some(Inbound::Ack(
                d1.clone(),
                Ack { id: "c2".into(), status: CommandState::Rejected, result: None }
            ))
        );
        let plain = parse(&msg("devices/d1/commands/response", b"done", Some("c3"))).unwrap();
        assert_eq!(
            plain,
            Some(Inbound::Ack(
                d1.clone(),
                Ack { id: "c3".into(), status: CommandState::Succeeded, result: Some(json!("done")) }
            ))
        );
        assert!(parse(&msg("devices/d1/commands/response", b"{}", None)).is_err());
        let state = parse(&msg("devices/d1/state", br#"{"temp":20}"#, None)).unwrap();
        assert!(matches!(state, Some(Inbound::State(_, m)) if m["temp"] == json!(20)));
        assert!(parse(&msg("devices/d1/state", b"[1]", None)).is_err());
        for other in ["devices/d1/telemetry", "devices/d1/commands", "devices/d1/state/desired", "x/y"] {
            assert_eq!(parse(&msg(other, b"{}", None)), Ok(None), "{other}");
        }
    }
}
