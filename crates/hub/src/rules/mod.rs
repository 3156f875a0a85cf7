//! Rules: a topic filter, a CEL condition and actions, evaluated on every incoming message.
//! A pure library: it takes values (and the current time) and returns [`Firing`]s; the hub
//! carries out their actions.
//!
//! # The night-light
//!
//! Two short rules in the config file (or two `POST /api/v1/rules` bodies with the same
//! fields as JSON):
//!
//! ```toml
//! [[rules]]
//! name = "night-light-on"
//! filter = "+/telemetry"
//! condition = "msg.light < 300"
//! once_per_crossing = true
//! actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = true } }]
//!
//! [[rules]]
//! name = "night-light-off"
//! filter = "+/telemetry"
//! condition = "msg.light >= 300"
//! once_per_crossing = true
//! actions = [{ type = "command", topic = "{device}/commands", payload = { led_on = false } }]
//! ```
//!
//! Readings 250, 260, 400, 450, 200 send `{"led_on": true}` (250), nothing (260),
//! `{"led_on": false}` (400), nothing (450), `{"led_on": true}` (200).
//!
//! # Conditions and templates
//!
//! Conditions are [CEL](https://github.com/google/cel-spec) expressions returning a bool,
//! over the variables of [`MessageContext`]: `msg` (the JSON payload), `payload` (its
//! text), `topic`, `device`, `device_tags` and `ts`. Action strings are templates:
//! `${ <CEL> }` is replaced by its value (a string that is exactly one `${…}` becomes the
//! typed value), `$${` is a literal `${`, and topics also accept `{device}`. JSON numbers
//! are CEL doubles (as in CEL's own JSON mapping): compare them with any literal
//! (`msg.light < 300`, `msg.n == 3`), but do arithmetic with double literals
//! (`msg.t * 1.8 + 32.0`); integral results render as JSON integers.
//!
//! ```toml
//! actions = [{ type = "publish", topic = "alerts/{device}", payload = { temp = "${msg.temperature}", text = "too hot: ${msg.temperature} °C" } }]
//! ```
//!
//! # Options, per (rule, device)
//!
//! * `once_per_crossing`: fire when the condition becomes true, not on every message;
//!   re-armed when it is false again.
//! * `clear_condition` (hysteresis): once true, the rule stays latched until this
//!   expression holds. `condition = "msg.light < 300"`, `clear_condition =
//!   "msg.light >= 320"`: 290 fires, 310 neither fires nor re-arms, 330 re-arms.
//! * `for = "30s"`: the condition must have held (without being cleared) that long. A
//!   message after that fires, and so does [`Engine::tick`] without a new message,
//!   rendering the actions with the last message that satisfied the condition.
//! * `cooldown = "5m"`: at least this long between two firings. A crossing suppressed by
//!   the cooldown under `once_per_crossing` fires at the first message after it if the
//!   condition is still latched.
//! * `no_data = "10m"`: a no-data rule. It fires from [`Engine::tick`] once per silence
//!   when a device whose messages match the filter (and the condition, if any) sent none
//!   for that long; the next such message re-arms it. Only devices seen since the rule was
//!   added are watched. `for`, `once_per_crossing` and `clear_condition` do not apply.
//! * `enabled = false`: kept, not evaluated.
//!
//! # Errors at runtime
//!
//! * A condition that reads a field the message does not have (`msg.light` on
//!   `{"battery": 3}`, on a non-JSON payload, or a missing key of `device_tags`) does not
//!   concern the rule: the message is skipped quietly (counted in [`RuleStats::skipped`]),
//!   and the rule's state is left as it was, so it neither fires nor re-arms. Use
//!   `has(msg.light)` to test for a field explicitly.
//! * Any other failure (a type mismatch such as `"high" < 300`, a condition that is not a
//!   bool, division by zero) counts as *false* and is recorded: [`RuleStats::errors`] and
//!   [`RuleStats::last_error`].
//! * A template that fails when the rule fires (a missing field, an invalid topic) still
//!   counts as the firing, but the [`Firing`] carries the error instead of the actions,
//!   and the error is recorded.
//!
//! # The service
//!
//! [`Rules`] (in [`service`]) runs the engine in the hub: it evaluates every accepted
//! message, carries out the firings (publish, commands, webhooks, alerts), keeps the
//! rules made through the API in the store, and lists the alerts.
//!
//! # Cost
//!
//! [`MessageContext::new`] parses the payload once, straight into CEL values; every
//! matching rule then reads those values without copying them. The topic index visits
//! only the rules whose filter matches. `benches/rules.rs` measures both.

mod compile;
mod context;
mod engine;
mod expr;
mod index;
pub mod service;
mod sink;
mod spec;
mod template;

pub use compile::{CompiledRule, RenderedAction, RuleError};
pub use context::{MessageContext, VARIABLES};
pub use engine::{Cause, Engine, EngineConfig, Firing, RECENT_FIRINGS, RuleStats};
pub use service::{ActionSink, ControlSink, Rules, RulesError, Wiring};
pub use sink::{RULE_WEBHOOK_EVENT, ServiceSink};
pub use spec::{ActionSpec, CommandMode, RuleSpec, Severity};

#[cfg(test)]
mod tests;
