//! The [`Engine`]: the rule set, the topic index, per-(rule, device) state and counters.
//! It does no I/O and reads no clock: every call takes `now`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use telehub_core::DeviceId;
use telehub_store::Timestamp;

use super::compile::{CompiledRule, RenderedAction, RuleError};
use super::context::{MessageContext, Variables};
use super::expr::{self, EvalError, cel_env};
use super::index::TopicIndex;
use super::spec::RuleSpec;

/// Limits of the engine's memory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Devices whose state one rule keeps, at most. When a new device would exceed it,
    /// the least recently seen sixteenth is forgotten (counted in [`RuleStats::evicted`]).
    pub max_devices_per_rule: usize,
    /// A device's state for a rule is forgotten when the device has sent no matching
    /// message for this long (plus the rule's `no_data`, so no-data alerts still fire).
    #[serde(with = "telehub_core::duration")]
    pub state_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_devices_per_rule: 10_000, state_ttl: Duration::from_secs(24 * 3600) }
    }
}

/// Why a rule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A message (the condition held, and `for` and `cooldown` allowed it).
    Message,
    /// A tick: the condition has held for the rule's `for` duration (or its cooldown
    /// ended) since the last message.
    Held,
    /// A tick: the device sent nothing matching for the rule's `no_data` duration.
    NoData,
}

/// One rule firing for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The rule's name.
    pub rule: Arc<str>,
    /// The device it fired for (`None` for messages from no known device).
    pub device: Option<DeviceId>,
    /// When (the `now` of the call).
    pub at: Timestamp,
    /// Why.
    pub cause: Cause,
    /// The actions, rendered; or why rendering one of them failed, in which case none is
    /// to be carried out. The firing counts either way (for `once_per_crossing` and
    /// `cooldown`), and a failure is also recorded in [`RuleStats`].
    pub actions: Result<Vec<RenderedAction>, String>,
}

/// A rule's counters, for the API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleStats {
    /// Messages that matched the filter.
    pub evaluations: u64,
    /// Firings, including those whose actions failed to render.
    pub firings: u64,
    /// Runtime errors: conditions that failed (other than a missing field) and actions
    /// that failed to render.
    pub errors: u64,
    /// Messages skipped because the condition read a field they do not have.
    pub skipped: u64,
    /// Device states forgotten (idle past the TTL, or over the per-rule bound).
    pub evicted: u64,
    /// Devices whose state is kept now.
    pub devices: usize,
    /// The last firing.
    pub last_fired: Option<Timestamp>,
    /// The last error: when, for which device, and the message.
    pub last_error: Option<(Timestamp, Option<DeviceId>, String)>,
    /// The last firings (at most [`RECENT_FIRINGS`]), oldest first: when, for which
    /// device, and whether the actions rendered.
    pub recent: VecDeque<(Timestamp, Option<DeviceId>, bool)>,
}

/// How many firings [`RuleStats::recent`] keeps.
pub const RECENT_FIRINGS: usize = 16;

/// A rule's memory of one device.
#[derive(Debug)]
struct DeviceState {
    /// The condition is (latched) true: it became true and has not been cleared since.
    active: bool,
    /// When `active` became true.
    since: Timestamp,
    /// The rule fired since `active` became true.
    fired_in_episode: bool,
    last_fired: Option<Timestamp>,
    /// The last message matching the filter (for eviction).
    last_seen: Timestamp,
    /// No-data rules: the last message counted as data, and whether the silence since
    /// then has fired.
    last_data: Timestamp,
    no_data_fired: bool,
    /// `for` and no-data rules: the message to render actions with when a tick fires.
    pending: Option<Arc<Variables>>,
}

impl DeviceState {
    fn new(now: Timestamp) -> Self {
        Self {
            active: false,
            since: now,
            fired_in_episode: false,
            last_fired: None,
            last_seen: now,
            last_data: now,
            no_data_fired: false,
            pending: None,
        }
    }

    fn cooled_down(&self, cooldown: Option<Duration>, now: Timestamp) -> bool {
        match (cooldown, self.last_fired) {
            (Some(c), Some(last)) => elapsed(last, now, c),
            _ => true,
        }
    }
}

/// True when at least `d` passed from `since` to `now`.
fn elapsed(since: Timestamp, now: Timestamp, d: Duration) -> bool {
    now.0.saturating_sub(since.0) >= i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One rule with its state and counters.
#[derive(Debug)]
struct Slot {
    rule: Arc<CompiledRule>,
    states: HashMap<Option<DeviceId>, DeviceState>,
    stats: RuleStats,
}

/// The rule set and its state. Not thread-safe by itself: the hub owns it in one task, or
/// behind a mutex (each call is short and never waits).
///
/// Memory: a device gets a state for a rule only once the rule's condition held for it
/// (no-data rules: once it sent a matching message); at most
/// [`EngineConfig::max_devices_per_rule`] states per rule, each about 100 bytes plus, for
/// `for` and no-data rules, the last matching message's variables (a few times the
/// payload's size). [`Engine::tick`] forgets states idle past [`EngineConfig::state_ttl`].
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    slots: Vec<Slot>,
    by_name: HashMap<Arc<str>, usize>,
    index: TopicIndex,
    /// Reused between messages to collect the matching rules.
    scratch: Vec<usize>,
    last_sweep: Option<Timestamp>,
}

/// How often [`Engine::tick`] looks for idle device states.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Engine {
    /// An engine with no rules.
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            by_name: HashMap::new(),
            index: TopicIndex::default(),
            scratch: Vec::new(),
            last_sweep: None,
        }
    }

    /// Adds a rule.
    ///
    /// # Errors
    ///
    /// [`RuleError::Duplicate`] when a rule of that name exists.
    pub fn add(&mut self, rule: CompiledRule) -> Result<(), RuleError> {
        if self.by_name.contains_key(rule.name()) {
            return Err(RuleError::Duplicate(rule.name().to_owned()));
        }
        self.slots.push(Slot { rule: Arc::new(rule), states: HashMap::new(), stats: RuleStats::default() });
        self.reindex();
        Ok(())
    }

    /// Replaces the rule of the same name and returns the old spec. Its state per device
    /// is kept when what decides firing is unchanged (filter, conditions, `for`,
    /// `no_data`, `once_per_crossing`), so editing an action does not re-fire a latched
    /// rule; otherwise it starts afresh. Counters are kept.
    ///
    /// # Errors
    ///
    /// [`RuleError::NotFound`] when no rule has that name.
    pub fn replace(&mut self, rule: CompiledRule) -> Result<RuleSpec, RuleError> {
        let Some(&pos) = self.by_name.get(rule.name()) else {
            return Err(RuleError::NotFound(rule.name().to_owned()));
        };
        let slot = &mut self.slots[pos];
        let old = std::mem::replace(&mut slot.rule, Arc::new(rule));
        if !same_state_machine(old.spec(), slot.rule.spec()) || !slot.rule.spec().enabled {
            slot.states.clear();
        }
        self.reindex();
        Ok(old.spec().clone())
    }

    /// Removes a rule and returns its spec.
    pub fn remove(&mut self, name: &str) -> Option<RuleSpec> {
        let pos = *self.by_name.get(name)?;
        let slot = self.slots.remove(pos);
        self.reindex();
        Some(slot.rule.spec().clone())
    }

    /// Replaces the whole set (a config reload), keeping the state and counters of rules
    /// whose name and state machine are unchanged.
    ///
    /// # Errors
    ///
    /// [`RuleError::Duplicate`] when two rules share a name; the engine is then unchanged.
    pub fn set_all(&mut self, rules: Vec<CompiledRule>) -> Result<(), RuleError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = rules.iter().find(|r| !seen.insert(r.name().to_owned())) {
            return Err(RuleError::Duplicate(dup.name().to_owned()));
        }
        let mut old: HashMap<Arc<str>, Slot> =
            self.slots.drain(..).map(|s| (Arc::clone(&s.rule.name), s)).collect();
        for rule in rules {
            let slot = match old.remove(rule.name()) {
                Some(mut slot) => {
                    if !same_state_machine(slot.rule.spec(), rule.spec()) || !rule.spec().enabled {
                        slot.states.clear();
                    }
                    slot.rule = Arc::new(rule);
                    slot
                }
                None => Slot { rule: Arc::new(rule), states: HashMap::new(), stats: RuleStats::default() },
            };
            self.slots.push(slot);
        }
        self.reindex();
        Ok(())
    }

    /// A rule's spec.
    pub fn get(&self, name: &str) -> Option<&RuleSpec> {
        self.by_name.get(name).map(|&i| self.slots[i].rule.spec())
    }

    /// Every rule's spec, in the order they were added.
    pub fn specs(&self) -> impl Iterator<Item = &RuleSpec> {
        self.slots.iter().map(|s| s.rule.spec())
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A rule's counters.
    pub fn stats(&self, name: &str) -> Option<RuleStats> {
        let slot = &self.slots[*self.by_name.get(name)?];
        Some(RuleStats { devices: slot.states.len(), ..slot.stats.clone() })
    }

    fn reindex(&mut self) {
        self.by_name = self.slots.iter().enumerate().map(|(i, s)| (Arc::clone(&s.rule.name), i)).collect();
        self.index = TopicIndex::build(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.rule.spec().enabled)
                .map(|(i, s)| (i, s.rule.filter())),
        );
    }

    /// Evaluates every enabled rule whose filter matches the message's topic, in the order
    /// the rules were added, and returns the firings.
    pub fn evaluate(&mut self, msg: &MessageContext, now: Timestamp) -> Vec<Firing> {
        let mut matched = std::mem::take(&mut self.scratch);
        matched.clear();
        self.index.matches(msg.topic(), &mut matched);
        let mut firings = Vec::new();
        if !matched.is_empty() {
            let cx = msg.variables().context(cel_env());
            for &pos in &matched {
                self.slots[pos].on_message(msg, &cx, now, &self.config, &mut firings);
            }
        }
        self.scratch = matched;
        firings
    }

    /// Fires what time alone decides: `for` rules whose condition has now held long
    /// enough, and no-data rules whose device has been silent long enough; and forgets
    /// device states idle past the TTL (at most once a minute). Call it every second or so;
    /// its cost is linear in the device states of `for` and no-data rules.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Firing> {
        let mut firings = Vec::new();
        for slot in self.slots.iter_mut().filter(|s| s.rule.spec().enabled) {
            slot.on_tick(now, &mut firings);
        }
        if self.last_sweep.is_none_or(|last| elapsed(last, now, SWEEP_EVERY)) {
            self.last_sweep = Some(now);
            for slot in &mut self.slots {
                let ttl = self.config.state_ttl + slot.rule.spec().no_data.unwrap_or_default();
                let before = slot.states.len();
                slot.states.retain(|_, s| !elapsed(s.last_seen, now, ttl));
                slot.stats.evicted += (before - slot.states.len()) as u64;
            }
        }
        firings
    }
}

/// True when two specs of one rule decide firing the same way, so its state stays valid.
fn same_state_machine(a: &RuleSpec, b: &RuleSpec) -> bool {
    a.filter == b.filter
        && a.condition == b.condition
        && a.clear_condition == b.clear_condition
        && a.once_per_crossing == b.once_per_crossing
        && a.hold == b.hold
        && a.no_data == b.no_data
}

impl Slot {
    fn on_message(
        &mut self,
        msg: &MessageContext,
        cx: &cel::Context<'_, '_>,
        now: Timestamp,
        config: &EngineConfig,
        firings: &mut Vec<Firing>,
    ) {
        let rule = &*self.rule;
        let spec = rule.spec();
        self.stats.evaluations += 1;
        let holds = match rule.condition.as_ref().map(|c| expr::eval_bool(c, cx)) {
            None | Some(Ok(true)) => true,
            Some(Ok(false)) => false,
            // A message without the field the condition reads does not concern the rule:
            // no error, and the state is left as it was.
            Some(Err(EvalError::Missing(_))) => {
                self.stats.skipped += 1;
                return;
            }
            Some(Err(EvalError::Failed(e))) => {
                self.stats.record_error(now, msg.device(), format!("condition: {e}"));
                false
            }
        };
        // A device whose condition never held needs no state (it would be inactive): most
        // devices of most rules stay out of the map.
        if !holds && spec.no_data.is_none() && !self.states.contains_key(&msg.device().cloned()) {
            return;
        }
        let state =
            state_for(&mut self.states, &mut self.stats, msg.device(), now, config.max_devices_per_rule);
        state.last_seen = now;

        if spec.no_data.is_some() {
            if holds {
                state.last_data = now;
                state.no_data_fired = false;
                state.pending = Some(Arc::clone(msg.variables()));
            }
            return;
        }

        if !state.active {
            if holds {
                state.active = true;
                state.since = now;
                state.fired_in_episode = false;
            }
        } else if !holds {
            let cleared = match &rule.clear_condition {
                None => true,
                Some(clear) => match expr::eval_bool(clear, cx) {
                    Ok(b) => b,
                    Err(EvalError::Missing(_)) => false,
                    Err(EvalError::Failed(e)) => {
                        self.stats.record_error(now, msg.device(), format!("clear_condition: {e}"));
                        false
                    }
                },
            };
            if cleared {
                state.active = false;
                state.pending = None;
            }
        }
        if !state.active {
            return;
        }
        if spec.hold.is_some() && holds {
            state.pending = Some(Arc::clone(msg.variables()));
        }
        let held = spec.hold.is_none_or(|h| elapsed(state.since, now, h));
        let wanted = if spec.once_per_crossing { !state.fired_in_episode } else { holds };
        if held && wanted && state.cooled_down(spec.cooldown, now) {
            state.fired_in_episode = true;
            state.last_fired = Some(now);
            let actions = rule.render(cx, msg.device());
            self.stats.record_firing(now, msg.device(), actions.as_ref().err());
            firings.push(Firing {
                rule: Arc::clone(&rule.name),
                device: msg.device().cloned(),
                at: now,
                cause: Cause::Message,
                actions,
            });
        }
    }

    fn on_tick(&mut self, now: Timestamp, firings: &mut Vec<Firing>) {
        let rule = &*self.rule;
        let spec = rule.spec();
        if spec.hold.is_none() && spec.no_data.is_none() {
            return;
        }
        for (device, state) in &mut self.states {
            let due = match (spec.hold, spec.no_data) {
                (Some(hold), _) => state.active && !state.fired_in_episode && elapsed(state.since, now, hold),
                (None, Some(silence)) => !state.no_data_fired && elapsed(state.last_data, now, silence),
                (None, None) => false,
            };
            if !due || !state.cooled_down(spec.cooldown, now) {
                continue;
            }
            let Some(vars) = state.pending.clone() else { continue };
            let cause = if spec.no_data.is_some() { Cause::NoData } else { Cause::Held };
            state.fired_in_episode = true;
            state.no_data_fired = true;
            state.last_fired = Some(now);
            let cx = vars.context(cel_env());
            let actions = rule.render(&cx, device.as_ref());
            self.stats.record_firing(now, device.as_ref(), actions.as_ref().err());
            firings.push(Firing {
                rule: Arc::clone(&rule.name),
                device: device.clone(),
                at: now,
                cause,
                actions,
            });
        }
    }
}

/// The state of `device`, created if new; makes room first when the rule is at its bound.
fn state_for<'s>(
    states: &'s mut HashMap<Option<DeviceId>, DeviceState>,
    stats: &mut RuleStats,
    device: Option<&DeviceId>,
    now: Timestamp,
    max: usize,
) -> &'s mut DeviceState {
    let key = device.cloned();
    if !states.contains_key(&key) && states.len() >= max.max(1) {
        // Forget the least recently seen sixteenth (at least one), so a stream of new
        // devices costs one O(n) pass per n/16 arrivals, not per arrival.
        let mut seen: Vec<i64> = states.values().map(|s| s.last_seen.0).collect();
        let k = (seen.len() / 16).max(1);
        let (_, &mut cutoff, _) = seen.select_nth_unstable(k - 1);
        let before = states.len();
        let mut budget = k;
        states.retain(|_, s| {
            if budget > 0 && s.last_seen.0 <= cutoff {
                budget -= 1;
                false
            } else {
                true
            }
        });
        stats.evicted += (before - states.len()) as u64;
    }
    states.entry(key).or_insert_with(|| DeviceState::new(now))
}

impl RuleStats {
    fn record_error(&mut self, now: Timestamp, device: Option<&DeviceId>, error: String) {
        self.errors += 1;
        self.last_error = Some((now, device.cloned(), error));
    }

    fn record_firing(&mut self, now: Timestamp, device: Option<&DeviceId>, error: Option<&String>) {
        self.firings += 1;
        self.last_fired = Some(now);
        if let Some(e) = error {
            self.record_error(now, device, e.clone());
        }
        if self.recent.len() == RECENT_FIRINGS {
            self.recent.pop_front();
        }
        self.recent.push_back((now, device.cloned(), error.is_none()));
    }
}
