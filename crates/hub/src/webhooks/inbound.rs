//! Inbound webhooks: `POST /hooks/{name}` from other systems. [`Inbound`] checks the
//! Standard Webhooks signature with the hook's secret(s), the timestamp window and that
//! the `webhook-id` was not seen within it, then makes the message to publish on the
//! hook's topic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use telehub_core::{Message, QoS, TopicName};

use super::signature::{self, Secret, VerifyError};

/// Most `webhook-id`s one hook remembers (within its tolerance); beyond, requests are
/// refused until older ones leave the window.
const MAX_SEEN: usize = 100_000;

/// One `[[webhooks.inbound]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// The `{name}` of `POST /hooks/{name}`.
    pub name: String,
    /// `whsec_<base64>`; a list of two during a rotation.
    pub secret: SecretList,
    /// The topic to publish the body to: `{name}` is the hook's name, `{field}` a
    /// top-level string or number field of a JSON body.
    pub topic: String,
    /// How far the `webhook-timestamp` may be from now.
    #[serde(with = "telehub_core::duration", default = "default_tolerance")]
    pub tolerance: Duration,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

/// One secret, or several.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SecretList {
    /// One.
    One(String),
    /// Several (a rotation).
    Many(Vec<String>),
}

impl SecretList {
    fn all(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Why an inbound request is refused; nothing is published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// No hook of that name (404).
    #[error("no inbound webhook {0}")]
    Unknown(String),
    /// Bad or missing signature headers (401).
    #[error("{0}")]
    Unauthorized(VerifyError),
    /// Outside the timestamp window (400).
    #[error("{0}")]
    Stale(VerifyError),
    /// The `webhook-id` was seen within the window (400).
    #[error("webhook-id {0} was already received")]
    Replayed(String),
    /// The topic template cannot be filled from this body (400).
    #[error("{0}")]
    BadTopic(String),
    /// Too many ids to remember: retry later (429).
    #[error("too many inbound webhooks within the tolerance window")]
    Busy,
}

struct Hook {
    secrets: Vec<Secret>,
    topic: String,
    tolerance: Duration,
    /// `webhook-id` → when it leaves the window (Unix s).
    seen: Mutex<HashMap<String, i64>>,
}

/// The configured inbound hooks.
pub struct Inbound {
    hooks: HashMap<String, Hook>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").field("hooks", &self.hooks.keys().collect::<Vec<_>>()).finish()
    }
}

/// The request's Standard Webhooks headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
}

impl Inbound {
    /// The hooks of `configs`.
    ///
    /// # Errors
    ///
    /// A message naming the hook at fault (duplicate name, bad secret, bad topic).
    pub fn new(configs: &[InboundConfig]) -> Result<Self, String> {
        let mut hooks = HashMap::new();
        for c in configs {
            let at = |e: String| format!("webhooks.inbound {:?}: {e}", c.name);
            if c.name.is_empty() || c.name.contains('/') {
                return Err(at("a name is non-empty and has no '/'".into()));
            }
            let secrets =
                c.secret.all().into_iter().map(Secret::parse).collect::<Result<Vec<_>, _>>().map_err(at)?;
            if secrets.is_empty() {
                return Err(at("a secret is needed".into()));
            }
            // the template with placeholders filled must be a topic name
            let sample = fill(&c.topic, &c.name, |_| Some("x".into())).map_err(at)?;
            TopicName::new(sample).map_err(|e| at(format!("topic {:?}: {e}", c.topic)))?;
            let hook =
                Hook { secrets, topic: c.topic.clone(), tolerance: c.tolerance, seen: Mutex::default() };
            if hooks.insert(c.name.clone(), hook).is_some() {
                return Err(at("defined twice".into()));
            }
        }
        Ok(Self { hooks })
    }

    /// Whether a hook of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.hooks.contains_key(name)
    }

    /// Checks a request to hook `name` at `now_secs` (Unix) and returns the message to
    /// publish (QoS 1, not retained, the body as sent).
    ///
    /// # Errors
    ///
    /// [`InboundError`].
    pub fn accept(
        &self,
        name: &str,
        headers: Headers<'_>,
        body: Bytes,
        now_secs: i64,
    ) -> Result<Message, InboundError> {
        let hook = self.hooks.get(name).ok_or_else(|| InboundError::Unknown(name.into()))?;
        let tolerance = i64::try_from(hook.tolerance.as_secs()).unwrap_or(i64::MAX);
        signature::verify(
            &hook.secrets,
            headers.id,
            headers.timestamp,
            headers.signature,
            &body,
            now_secs,
            tolerance,
        )
        .map_err(|e| match e {
            VerifyError::Stale => InboundError::Stale(e),
            _ => InboundError::Unauthorized(e),
        })?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let topic = fill(&hook.topic, name, |field| match json.as_ref()?.get(field)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .map_err(InboundError::BadTopic)?;
        let topic = TopicName::new(topic).map_err(|e| InboundError::BadTopic(format!("topic: {e}")))?;
        let id = headers.id.unwrap_or_default();
        {
            let mut seen = hook.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.contains_key(id) {
                return Err(InboundError::Replayed(id.into()));
            }
            if seen.len() >= MAX_SEEN {
                seen.retain(|_, until| *until >= now_secs);
                if seen.len() >= MAX_SEEN {
                    return Err(InboundError::Busy);
                }
            }
            // remembered for as long as its timestamp is accepted (the window is symmetric)
            seen.insert(id.to_owned(), now_secs + 2 * tolerance + 1);
        }
        Ok(Message {
            topic,
            payload: body,
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        })
    }
}

/// Fills `{name}` and `{field}` placeholders; a field value may not add levels or
/// wildcards.
fn fill(template: &str, name: &str, field: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close =
            rest[open..].find('}').ok_or_else(|| format!("topic {template:?}: unclosed '{{'"))? + open;
        let key = &rest[open + 1..close];
        let value = if key == "name" {
            name.to_owned()
        } else {
            field(key)
                .ok_or_else(|| format!("the body has no string or number field {key:?} for the topic"))?
        };
        if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
            return Err(format!("field {key:?} cannot be a topic level: {value:?}"));
        }
        out.push_str(&value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn inbound() -> Inbound {
        Inbound::new(&[InboundConfig {
            name: "github".into(),
            secret: SecretList::One(SECRET.into()),
            topic: "hooks/{name}/{device}".into(),
            tolerance: Duration::from_secs(300),
        }])
        .unwrap()
    }

    fn signed(id: &str, ts: i64, body: &str) -> (String, String, Bytes) {
        let s = Secret::parse(SECRET).unwrap();
        (ts.to_string(), s.sign(id, ts, body.as_bytes()), Bytes::from(body.to_owned()))
    }

    #[test]
    fn good_bad_stale_and_replayed() {
        let hooks = inbound();
        let now = 1_700_000_000;
        let body = r#"{"device":"pump-1","on":true}"#;
        let (ts, sig, b) = signed("msg_1", now, body);
        let h = Headers { id: Some("msg_1"), timestamp: Some(&ts), signature: Some(&sig) };
        let m = hooks.accept("github", h, b.clone(), now + 10).unwrap();
        assert_eq!(m.topic.as_str(), "hooks/github/pump-1");
        assert_eq!(&m.payload[..], body.as_bytes());
        assert_eq!(
            hooks.accept("github", h, b.clone(), now + 20),
            Err(InboundError::Replayed("msg_1".into()))
        );
        assert!(matches!(hooks.accept("nope", h, b.clone(), now), Err(InboundError::Unknown(_))));
        let forged = Headers { signature: Some("v1,AAAA"), ..h };
        assert!(matches!(hooks.accept("github", forged, b.clone(), now), Err(InboundError::Unauthorized(_))));
        let (ts2, sig2, b2) = signed("msg_2", now - 301, body);
        let stale = Headers { id: Some("msg_2"), timestamp: Some(&ts2), signature: Some(&sig2) };
        assert!(matches!(hooks.accept("github", stale, b2, now), Err(InboundError::Stale(_))));
        let (ts3, sig3, b3) = signed("msg_3", now, r#"{"device":"a/b"}"#);
        let bad = Headers { id: Some("msg_3"), timestamp: Some(&ts3), signature: Some(&sig3) };
        assert!(matches!(hooks.accept("github", bad, b3, now), Err(InboundError::BadTopic(_))));
    }

    #[test]
    fn config_errors_name_the_hook() {
        let bad = |topic: &str, secret: &str| {
            Inbound::new(&[InboundConfig {
                name: "x".into(),
                secret: SecretList::One(secret.into()),
                topic: topic.into(),
                tolerance: Duration::from_secs(1),
            }])
            .unwrap_err()
        };
        assert!(bad("a/#", SECRET).contains("\"x\""));
        assert!(bad("a/{b", SECRET).contains("unclosed"));
        assert!(bad("a", "whsec_??").contains("base64"));
    }
}
