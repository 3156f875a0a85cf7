//! [`RuleSpec`] → [`CompiledRule`]: the filter, CEL expressions and templates are checked
//! and compiled once, so a bad rule is refused when it is saved, with the position of the
//! mistake, and evaluating it parses nothing. Also [`RenderedAction`], what a firing asks
//! the hub to do.

use std::sync::Arc;
use std::time::Duration;

use cel::{Context, Program};
use telehub_core::{DeviceId, QoS, TopicError, TopicFilter, TopicName};

use super::expr::{self, cel_env};
use super::spec::{ActionSpec, CommandMode, RuleSpec, Severity};
use super::template::{JsonTemplate, JsonTemplateError, StrTemplate, TemplateError};

/// Why a rule was refused. Each variant names the field, and expression errors their
/// position, so the API can answer `400` with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The name is empty, too long or has other characters than `A-Z a-z 0-9 _ - .`.
    #[error("invalid rule name {0:?}: expected 1 to 64 characters out of A-Z a-z 0-9 _ - .")]
    InvalidName(String),
    /// The topic filter is not a valid MQTT filter (or is a shared subscription).
    #[error("filter {filter:?}: {source}")]
    Filter {
        /// The filter as written.
        filter: String,
        /// What is wrong with it.
        #[source]
        source: TopicError,
    },
    /// A CEL expression (`condition` or `clear_condition`) does not parse.
    #[error("{field}: line {line}, column {column}: {message}")]
    Expression {
        /// `condition` or `clear_condition`.
        field: &'static str,
        /// 1-based line of the first error.
        line: usize,
        /// 1-based column (in characters) of the first error.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A template in an action does not parse.
    #[error("{at}: at offset {offset}: {message}")]
    Template {
        /// Which template: `actions[0].payload.led_on`, `actions[1].topic`.
        at: String,
        /// Byte offset in that template string.
        offset: usize,
        /// What is wrong.
        message: String,
    },
    /// Any other invalid value or combination of options, with the field it concerns.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `actions[0].qos` or `no_data`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// [`Engine::add`](super::Engine::add) with a name already in use.
    #[error("a rule named {0:?} already exists")]
    Duplicate(String),
    /// [`Engine::replace`](super::Engine::replace) of a name not in use.
    #[error("no rule named {0:?}")]
    NotFound(String),
}

impl RuleError {
    /// For a CEL parse error in a condition, its (line, column), both 1-based.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            Self::Expression { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

/// A rule ready to evaluate. Built by [`CompiledRule::compile`]; the [`Engine`] holds them.
///
/// [`Engine`]: super::Engine
#[derive(Debug)]
pub struct CompiledRule {
    pub(super) spec: RuleSpec,
    pub(super) name: Arc<str>,
    pub(super) filter: TopicFilter,
    pub(super) condition: Option<Program>,
    pub(super) clear_condition: Option<Program>,
    pub(super) actions: Vec<CompiledAction>,
}

impl CompiledRule {
    /// Checks and compiles a rule.
    ///
    /// # Errors
    ///
    /// [`RuleError`] naming the first field that is wrong: the name, the filter, a CEL
    /// parse error with its line and column, a template with its offset, a `qos` above 2,
    /// or options that do not go together (`no_data` with `for`, `once_per_crossing` or
    /// `clear_condition`).
    pub fn compile(spec: RuleSpec) -> Result<Self, RuleError> {
        let name_ok = (1..=64).contains(&spec.name.len())
            && spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(RuleError::InvalidName(spec.name));
        }
        let filter = TopicFilter::new(spec.filter.clone())
            .and_then(|f| if f.is_shared() { Err(TopicError::InvalidShareName) } else { Ok(f) })
            .map_err(|source| RuleError::Filter { filter: spec.filter.clone(), source })?;
        let condition = spec.condition.as_deref().map(|c| compile_expr("condition", c)).transpose()?;
        let clear_condition =
            spec.clear_condition.as_deref().map(|c| compile_expr("clear_condition", c)).transpose()?;
        if spec.no_data.is_some() {
            let conflict = [
                ("for", spec.hold.is_some()),
                ("once_per_crossing", spec.once_per_crossing),
                ("clear_condition", spec.clear_condition.is_some()),
            ]
            .into_iter()
            .find(|(_, set)| *set);
            if let Some((field, _)) = conflict {
                return Err(RuleError::Invalid {
                    field: "no_data".to_owned(),
                    message: format!("a no-data rule fires from silence, so `{field}` does not apply to it"),
                });
            }
        }
        let actions = spec
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| CompiledAction::compile(a, &format!("actions[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Self { name: Arc::from(spec.name.as_str()), spec, filter, condition, clear_condition, actions })
    }

    /// The rule as written.
    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    /// Its unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its topic filter.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// Renders every action for one message; all or nothing.
    pub(super) fn render(
        &self,
        cx: &Context<'_, '_>,
        device: Option<&DeviceId>,
    ) -> Result<Vec<RenderedAction>, String> {
        self.actions
            .iter()
            .enumerate()
            .map(|(i, a)| a.render(cx, device).map_err(|e| format!("actions[{i}]: {e}")))
            .collect()
    }
}

fn compile_expr(field: &'static str, source: &str) -> Result<Program, RuleError> {
    cel_env().compile(source).map_err(|e| {
        let (line, column, message) = expr::parse_error_position(&e);
        RuleError::Expression { field, line, column, message }
    })
}

fn str_template(text: &str, with_device: bool, at: String) -> Result<StrTemplate, RuleError> {
    StrTemplate::parse(text, with_device).map_err(|TemplateError { offset, message }| RuleError::Template {
        at,
        offset,
        message,
    })
}

fn json_template(value: &serde_json::Value, at: &str) -> Result<JsonTemplate, RuleError> {
    JsonTemplate::parse(value, at).map_err(|JsonTemplateError { path, error }| RuleError::Template {
        at: path,
        offset: error.offset,
        message: error.message,
    })
}

/// An action with its templates compiled.
#[derive(Debug)]
pub(super) enum CompiledAction {
    Command {
        device: Option<StrTemplate>,
        topic: Option<StrTemplate>,
        payload: JsonTemplate,
        mode: CommandMode,
        key: Option<StrTemplate>,
        ttl: Option<Duration>,
    },
    Publish {
        topic: StrTemplate,
        payload: JsonTemplate,
        qos: QoS,
        retain: bool,
    },
    Webhook {
        webhook: String,
        payload: Option<JsonTemplate>,
    },
    Alert {
        name: String,
        severity: Severity,
        message: Option<StrTemplate>,
    },
    ClearAlert {
        name: String,
    },
}

impl CompiledAction {
    fn compile(spec: &ActionSpec, at: &str) -> Result<Self, RuleError> {
        Ok(match spec {
            ActionSpec::Command { device, topic, payload, mode, key, ttl } => Self::Command {
                device: device
                    .as_deref()
                    .map(|d| str_template(d, false, format!("{at}.device")))
                    .transpose()?,
                topic: topic.as_deref().map(|t| str_template(t, true, format!("{at}.topic"))).transpose()?,
                payload: json_template(payload, &format!("{at}.payload"))?,
                mode: mode.unwrap_or_default(),
                key: key.as_deref().map(|k| str_template(k, false, format!("{at}.key"))).transpose()?,
                ttl: *ttl,
            },
            ActionSpec::Publish { topic, payload, qos, retain } => Self::Publish {
                topic: str_template(topic, true, format!("{at}.topic"))?,
                payload: json_template(payload, &format!("{at}.payload"))?,
                qos: QoS::from_u8(qos.unwrap_or(0)).ok_or_else(|| RuleError::Invalid {
                    field: format!("{at}.qos"),
                    message: format!("expected 0, 1 or 2, found {}", qos.unwrap_or(0)),
                })?,
                retain: *retain,
            },
            ActionSpec::Webhook { webhook, payload } => Self::Webhook {
                webhook: non_empty(webhook, || format!("{at}.webhook"))?,
                payload: payload.as_ref().map(|p| json_template(p, &format!("{at}.payload"))).transpose()?,
            },
            ActionSpec::Alert { name, severity, message } => Self::Alert {
                name: non_empty(name, || format!("{at}.name"))?,
                severity: severity.unwrap_or_default(),
                message: message
                    .as_deref()
                    .map(|m| str_template(m, false, format!("{at}.message")))
                    .transpose()?,
            },
            ActionSpec::ClearAlert { name } => {
                Self::ClearAlert { name: non_empty(name, || format!("{at}.name"))? }
            }
        })
    }

    fn render(&self, cx: &Context<'_, '_>, device: Option<&DeviceId>) -> Result<RenderedAction, String> {
        let dev = device.map(DeviceId::as_str);
        Ok(match self {
            Self::Command { device: target, topic, payload, mode, key, ttl } => RenderedAction::Command {
                device: match target {
                    Some(t) => {
                        let id = t.render_text(cx, dev)?;
                        DeviceId::new(id.clone()).map_err(|e| format!("device {id:?}: {e}"))?
                    }
                    None => device.cloned().ok_or("the message has no device and the command names none")?,
                },
                topic: topic.as_ref().map(|t| topic_name(t, cx, dev)).transpose()?,
                payload: payload.render(cx, dev)?,
                mode: *mode,
                key: key.as_ref().map(|k| k.render_text(cx, dev)).transpose()?,
                ttl: *ttl,
            },
            Self::Publish { topic, payload, qos, retain } => RenderedAction::Publish {
                topic: topic_name(topic, cx, dev)?,
                payload: payload.render(cx, dev)?,
                qos: *qos,
                retain: *retain,
            },
            Self::Webhook { webhook, payload } => RenderedAction::Webhook {
                webhook: webhook.clone(),
                payload: payload.as_ref().map(|p| p.render(cx, dev)).transpose()?,
            },
            Self::Alert { name, severity, message } => RenderedAction::Alert {
                name: name.clone(),
                device: device.cloned(),
                severity: *severity,
                message: message.as_ref().map(|m| m.render_text(cx, dev)).transpose()?,
            },
            Self::ClearAlert { name } => {
                RenderedAction::ClearAlert { name: name.clone(), device: device.cloned() }
            }
        })
    }
}

fn non_empty(s: &str, field: impl FnOnce() -> String) -> Result<String, RuleError> {
    if s.is_empty() {
        return Err(RuleError::Invalid { field: field(), message: "must not be empty".to_owned() });
    }
    Ok(s.to_owned())
}

fn topic_name(t: &StrTemplate, cx: &Context<'_, '_>, device: Option<&str>) -> Result<TopicName, String> {
    let text = t.render_text(cx, device)?;
    TopicName::new(text.clone()).map_err(|e| format!("topic {text:?}: {e}"))
}

/// An action of a firing, with its templates rendered: what the hub should do.
#[derive(Debug, Clone, PartialEq)]
pub enum RenderedAction {
    /// Send `payload` to `device` (through the command service).
    Command {
        /// The target device.
        device: DeviceId,
        /// The topic to publish on, when the rule names one; else the device's command
        /// topic.
        topic: Option<TopicName>,
        /// The command body.
        payload: serde_json::Value,
        /// Delivery mode.
        mode: CommandMode,
        /// Latest-wins key.
        key: Option<String>,
        /// Queued-command lifetime.
        ttl: Option<Duration>,
    },
    /// Publish a message. A string payload is published as its text, anything else as
    /// JSON.
    Publish {
        /// Where.
        topic: TopicName,
        /// What.
        payload: serde_json::Value,
        /// With which QoS.
        qos: QoS,
        /// Retained or not.
        retain: bool,
    },
    /// Call a webhook.
    Webhook {
        /// The webhook's id.
        webhook: String,
        /// The body, when the rule gives one.
        payload: Option<serde_json::Value>,
    },
    /// Raise an alert for the firing's device.
    Alert {
        /// Alert name.
        name: String,
        /// The device it concerns, when known.
        device: Option<DeviceId>,
        /// How serious.
        severity: Severity,
        /// Text for people.
        message: Option<String>,
    },
    /// Clear an alert.
    ClearAlert {
        /// Alert name.
        name: String,
        /// The device it concerns, when known.
        device: Option<DeviceId>,
    },
}
