//! Device state, a shadow: what the device should be (desired), what it says it is
//! (reported), the difference (delta) and one version number over both.
//!
//! * **desired** is changed by the API with a JSON merge patch (RFC 7396: a `null`
//!   removes a key), compare-and-set against the version the caller read
//!   ([`set_desired`]). A change that leaves a non-empty delta becomes a latest-wins
//!   command with the key `$state`, published bare on `devices/{id}/state/desired` with
//!   the delta as its payload; being latest-wins, only the newest is kept, and a device
//!   that was offline gets it once when it connects.
//! * **reported** is merged (the same merge patch) from the JSON objects a device
//!   publishes to `devices/{id}/state` ([`report`], fed by the command service's message
//!   feed). When a report leaves the delta empty, the open `$state` command succeeds.
//! * The device's latest telemetry document (kept by telemetry ingest) is read when the
//!   state is shown, and merged under the reported document, or over it when it is
//!   newer: telemetry is never written to the shadow, so it costs ingest nothing.
//! * **delta**: the desired keys whose value differs from reported, recursively into
//!   objects (a key whose value is an object appears with only its differing keys).

use serde_json::{Map, Value};
use telehub_core::DeviceId;
use telehub_store::Timestamp;
use telehub_store::commands::{CommandMode, CommandQuery, CommandState};
use telehub_store::shadow::Shadow;
pub use telehub_store::shadow::ShadowConflict;

use crate::commands::{CommandBackend, CommandError, Commands, Request, view};
use crate::timestamp::{now, to_rfc3339};

/// The latest-wins key of the commands carrying desired state.
pub const STATE_KEY: &str = "$state";

/// `devices/{id}/state/desired`: where a desired-state delta is published.
pub fn desired_topic(device: &DeviceId) -> String {
    format!("devices/{device}/state/desired")
}

/// A device's state as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// What it should be.
    pub desired: Value,
    /// What it says it is (state reports and the latest telemetry document).
    pub reported: Value,
    /// The desired values reported differs from.
    pub delta: Value,
    /// The shadow's version (0: never set).
    pub version: i64,
    /// When desired was last set.
    pub desired_at: Option<Timestamp>,
    /// When reported was last set (by a state report or telemetry).
    pub reported_at: Option<Timestamp>,
}

impl State {
    /// `{"desired", "reported", "delta", "version", "timestamps": {"desired", "reported"}}`.
    pub fn to_json(&self) -> Value {
        let ts = |t: Option<Timestamp>| t.map(|t| Value::String(to_rfc3339(t)));
        serde_json::json!({
            "desired": self.desired,
            "reported": self.reported,
            "delta": self.delta,
            "version": self.version,
            "timestamps": { "desired": ts(self.desired_at), "reported": ts(self.reported_at) },
        })
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The desired keys whose value differs from `reported`, recursively into objects.
pub fn delta(desired: &Value, reported: &Value) -> Value {
    let mut out = Map::new();
    if let Value::Object(desired) = desired {
        for (key, want) in desired {
            let have = reported.get(key);
            match (want, have) {
                (Value::Object(_), Some(have @ Value::Object(_))) => {
                    let inner = delta(want, have);
                    if inner.as_object().is_some_and(|m| !m.is_empty()) {
                        out.insert(key.clone(), inner);
                    }
                }
                (want, Some(have)) if want == have => {}
                (want, _) => {
                    out.insert(key.clone(), want.clone());
                }
            }
        }
    }
    Value::Object(out)
}

fn object() -> Value {
    Value::Object(Map::new())
}

/// The device's state: its shadow and its latest telemetry document.
///
/// # Errors
///
/// Unknown device, the store.
pub async fn get<S: CommandBackend>(
    commands: &Commands<S>,
    device: &DeviceId,
) -> Result<State, CommandError> {
    commands.check_device(device)?;
    let store = commands.store();
    let shadow = store.shadow_get(device).await?;
    let latest = store.latest(device).await?.and_then(|l| l.document);
    Ok(compose(shadow, latest))
}

fn compose(shadow: Option<Shadow>, telemetry: Option<(Timestamp, Value)>) -> State {
    let shadow = shadow.unwrap_or(Shadow {
        desired: object(),
        reported: object(),
        version: 0,
        desired_at: None,
        reported_at: None,
    });
    let mut reported = object();
    let mut reported_at = shadow.reported_at;
    match telemetry {
        Some((at, doc)) if doc.is_object() => {
            let newer = shadow.reported_at.is_none_or(|r| at > r);
            if newer {
                merge_patch(&mut reported, &shadow.reported);
                merge_patch(&mut reported, &doc);
                reported_at = Some(at);
            } else {
                merge_patch(&mut reported, &doc);
                merge_patch(&mut reported, &shadow.reported);
            }
        }
        _ => merge_patch(&mut reported, &shadow.reported),
    }
    let desired = if shadow.desired.is_object() { shadow.desired } else { object() };
    State {
        delta: delta(&desired, &reported),
        desired,
        reported,
        version: shadow.version,
        desired_at: shadow.desired_at,
        reported_at,
    }
}

/// What [`set_desired`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSet {
    /// The state after the change.
    pub state: State,
    /// The `$state` command carrying the delta, when there is one.
    pub command: Option<Value>,
}

/// Applies `patch` (a JSON merge patch) to the desired document if the shadow is at
/// `expected_version` (any version when `None`), then sends the delta as a latest-wins
/// `$state` command. `Ok(Err(conflict))` when the version is stale.
///
/// # Errors
///
/// Unknown device, a patch that is not an object, a full command queue, the store.
pub async fn set_desired<S: CommandBackend>(
    commands: &Commands<S>,
    device: &DeviceId,
    patch: &Value,
    expected_version: Option<i64>,
) -> Result<Result<DesiredSet, ShadowConflict>, CommandError> {
    commands.check_device(device)?;
    if !patch.is_object() {
        return Err(CommandError::Invalid("the desired state must be a JSON object".into()));
    }
    let store = commands.store();
    // without If-Match, a concurrent change is retried on the fresh document (the patch
    // is applied to what is there); with it, a stale version is the caller's conflict
    let mut attempts = 0;
    let shadow = loop {
        let current = store.shadow_get(device).await?;
        let version = current.as_ref().map_or(0, |s| s.version);
        if let Some(expected) = expected_version
            && expected != version
        {
            return Ok(Err(ShadowConflict { current_version: version }));
        }
        let mut desired = current.map_or_else(object, |s| s.desired);
        merge_patch(&mut desired, patch);
        match store.shadow_set_desired(device, desired, Some(version), now()).await? {
            Ok(shadow) => break shadow,
            Err(conflict) if expected_version.is_some() || attempts >= 5 => return Ok(Err(conflict)),
            Err(_) => attempts += 1,
        }
    };
    let latest = store.latest(device).await?.and_then(|l| l.document);
    let state = compose(Some(shadow), latest);
    let command = if state.delta.as_object().is_some_and(|m| !m.is_empty()) {
        let req = Request {
            payload: state.delta.clone(),
            mode: CommandMode::LatestWins,
            key: Some(STATE_KEY.into()),
            ttl: None,
            topic: Some(desired_topic(device)),
        };
        Some(view(&commands.insert(device, req).await?))
    } else {
        None
    };
    Ok(Ok(DesiredSet { state, command }))
}

/// Merges a state report into the reported document; when the delta is then empty, the
/// open `$state` commands succeed.
///
/// # Errors
///
/// The store.
pub async fn report<S: CommandBackend>(
    commands: &Commands<S>,
    device: &DeviceId,
    doc: Map<String, Value>,
) -> Result<State, CommandError> {
    let store = commands.store();
    let current = store.shadow_get(device).await?;
    let mut reported = current.map_or_else(object, |s| s.reported);
    merge_patch(&mut reported, &Value::Object(doc));
    let shadow = store.shadow_set_reported(device, reported, now()).await?;
    let latest = store.latest(device).await?.and_then(|l| l.document);
    let state = compose(Some(shadow), latest);
    if state.delta.as_object().is_some_and(Map::is_empty) {
        let query = CommandQuery {
            device: device.clone(),
            states: vec![CommandState::Queued, CommandState::Sent, CommandState::Delivered],
            before_seq: None,
            limit: 1000,
        };
        for cmd in store.command_list(query).await? {
            if cmd.key.as_deref() != Some(STATE_KEY) {
                continue;
            }
            let done = store
                .command_transition(
                    &cmd.id,
                    &[CommandState::Queued, CommandState::Sent, CommandState::Delivered],
                    CommandState::Succeeded,
                    None,
                    Some("reported state matches desired".into()),
                    now(),
                )
                .await?;
            if let Some(done) = done {
                commands.emit(&done);
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut doc, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(doc, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }

    #[test]
    fn delta_holds_the_differing_desired_values_recursively() {
        let desired = json!({"heater": true, "target": 21, "led": {"r": 1, "g": 2}, "same": "x"});
        let reported = json!({"heater": false, "led": {"r": 1, "g": 0}, "same": "x", "extra": 5});
        assert_eq!(delta(&desired, &reported), json!({"heater": true, "target": 21, "led": {"g": 2}}));
        assert_eq!(delta(&json!({"a": 1}), &json!({"a": 1})), json!({}));
        assert_eq!(delta(&json!({"o": {"x": 1}}), &json!({"o": 3})), json!({"o": {"x": 1}}));
    }

    #[test]
    fn telemetry_merges_under_or_over_reported_by_time() {
        let shadow = Shadow {
            desired: json!({"light": 1}),
            reported: json!({"light": 2, "mode": "auto"}),
            version: 3,
            desired_at: Some(Timestamp(1)),
            reported_at: Some(Timestamp(10)),
        };
        let older = compose(Some(shadow.clone()), Some((Timestamp(5), json!({"light": 9, "t": 1}))));
        assert_eq!(older.reported, json!({"light": 2, "mode": "auto", "t": 1}));
        assert_eq!(older.reported_at, Some(Timestamp(10)));
        let newer = compose(Some(shadow), Some((Timestamp(20), json!({"light": 1}))));
        assert_eq!(newer.reported, json!({"light": 1, "mode": "auto"}));
        assert_eq!(newer.delta, json!({}));
        assert_eq!(newer.version, 3);
        let empty = compose(None, None);
        assert_eq!(empty.to_json()["version"], json!(0));
        assert_eq!(empty.to_json()["delta"], json!({}));
    }
}
