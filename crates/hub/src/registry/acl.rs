//! Who may publish and subscribe where: each device's own lane (the canonical
//! `devices/{id}/…` and the topics the ingest mappings attribute to it), then ACL rules
//! with `{device}` and `{tag:NAME}` placeholders. Matching allocates nothing.

use telehub_core::TopicFilter;

use super::model::{AclRuleSpec, Action, Device, Effect};
use crate::ingest::mapping::{DeviceSource, Mapping};

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
    Device,
    Tag(String),
}

/// A topic filter with placeholders, split into levels once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern(Vec<Level>);

impl Pattern {
    /// Parses `filter`, which may hold `{device}` and `{tag:NAME}` as whole levels.
    ///
    /// # Errors
    ///
    /// What is wrong with the filter.
    pub(crate) fn parse(filter: &str) -> Result<Self, String> {
        // the filter with placeholders replaced by a plain level must be a valid filter
        let plain: Vec<&str> =
            filter.split('/').map(|l| if l.starts_with('{') && l.ends_with('}') { "x" } else { l }).collect();
        TopicFilter::new(plain.join("/")).map_err(|e| format!("filter {filter:?}: {e}"))?;
        let levels = filter
            .split('/')
            .map(|l| match l {
                "+" => Ok(Level::Plus),
                "#" => Ok(Level::Hash),
                "{device}" => Ok(Level::Device),
                _ if l.starts_with("{tag:") && l.ends_with('}') && l.len() > 6 => {
                    Ok(Level::Tag(l[5..l.len() - 1].to_owned()))
                }
                _ if l.contains(['{', '}']) => Err(format!(
                    "filter {filter:?}: unknown placeholder {l:?} (expected {{device}} or {{tag:NAME}})"
                )),
                _ => Ok(Level::Literal(l.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(levels))
    }

    /// The value a placeholder level stands for, `None` when it cannot apply.
    fn resolve<'a>(level: &'a Level, device: Option<&'a Device>) -> Option<&'a str> {
        match level {
            Level::Literal(s) => Some(s),
            Level::Device => device.map(|d| d.id.as_str()),
            Level::Tag(name) => device.and_then(|d| d.tags.get(name)).map(String::as_str),
            Level::Plus | Level::Hash => None,
        }
    }

    /// Whether the pattern, resolved for `device`, matches the topic `topic`.
    pub(crate) fn matches_topic(&self, topic: &str, device: Option<&Device>) -> bool {
        let mut topic_levels = topic.split('/');
        // [MQTT-4.7.2-1] a leading wildcard does not match a $-topic
        if topic.starts_with('$') && matches!(self.0.first(), Some(Level::Plus | Level::Hash)) {
            return false;
        }
        for level in &self.0 {
            match level {
                Level::Hash => return true,
                Level::Plus => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                other => {
                    let Some(want) = Self::resolve(other, device) else { return false };
                    if topic_levels.next() != Some(want) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// Whether every topic the subscription `filter` matches is matched by the pattern
    /// resolved for `device`.
    pub(crate) fn covers_filter(&self, filter: &str, device: Option<&Device>) -> bool {
        let mut filter_levels = filter.split('/');
        if filter.starts_with('$') && matches!(self.0.first(), Some(Level::Plus | Level::Hash)) {
            return false;
        }
        for level in &self.0 {
            match level {
                Level::Hash => return true,
                Level::Plus => match filter_levels.next() {
                    None | Some("#") => return false,
                    Some(_) => {}
                },
                other => {
                    let Some(want) = Self::resolve(other, device) else { return false };
                    if filter_levels.next() != Some(want) {
                        return false;
                    }
                }
            }
        }
        filter_levels.next().is_none()
    }

    /// Whether the pattern, resolved for `device`, could match some topic the
    /// subscription `filter` matches (used by deny rules: a subscription that overlaps a
    /// denied area is refused).
    pub(crate) fn overlaps_filter(&self, filter: &str, device: Option<&Device>) -> bool {
        let mut filter_levels = filter.split('/');
        for level in &self.0 {
            let Some(f) = filter_levels.next() else {
                return matches!(level, Level::Hash);
            };
            if f == "#" {
                return true;
            }
            match level {
                Level::Hash => return true,
                Level::Plus => {}
                other => {
                    let Some(want) = Self::resolve(other, device) else { return false };
                    if f != "+" && f != want {
                        return false;
                    }
                }
            }
        }
        filter_levels.next().is_none_or(|f| f == "#")
    }
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) spec: AclRuleSpec,
    pattern: Pattern,
}

impl CompiledRule {
    /// Compiles `spec`.
    ///
    /// # Errors
    ///
    /// What is wrong with its filter.
    pub(crate) fn new(spec: AclRuleSpec) -> Result<Self, String> {
        let pattern = Pattern::parse(&spec.filter)?;
        if spec.anonymous && pattern.0.iter().any(|l| matches!(l, Level::Device | Level::Tag(_))) {
            return Err(format!(
                "filter {:?}: a rule for anonymous clients cannot use {{device}} or {{tag:…}}",
                spec.filter
            ));
        }
        Ok(Self { spec, pattern })
    }

    /// Whether the rule is about `action` and applies to `device` (`None`: anonymous).
    fn applies(&self, action: Action, device: Option<&Device>) -> bool {
        let action_ok = self.spec.action == Action::All || self.spec.action == action;
        let who_ok = match device {
            None => self.spec.anonymous,
            Some(d) => {
                self.spec.device.as_ref().is_none_or(|only| *only == d.id)
                    && self.spec.tags.iter().all(|(k, v)| d.tags.get(k) == Some(v))
            }
        };
        action_ok && who_ok
    }
}

/// The lanes every device has, derived from the ingest mappings once.
#[derive(Debug, Clone)]
pub(crate) struct Lanes {
    /// Topic patterns a device owns (publish and subscribe).
    own: Vec<Pattern>,
    /// Mappings naming the device in a payload field: `(filter, field)`. A device may
    /// publish there when the field holds its own id.
    by_field: Vec<(TopicFilter, String)>,
}

impl Lanes {
    /// `devices/{device}/#`, and for each mapping that takes the device from a topic
    /// level, the filter's levels before it, `{device}`, then `#`.
    pub(crate) fn new(mappings: &[Mapping]) -> Self {
        let mut own = vec![Pattern(vec![Level::Literal("devices".into()), Level::Device, Level::Hash])];
        let mut by_field = Vec::new();
        for m in mappings {
            match &m.device {
                DeviceSource::TopicLevel(k) => {
                    let mut levels: Vec<Level> = m
                        .filter
                        .levels()
                        .take(*k)
                        .map(|l| match l {
                            "+" => Level::Plus,
                            l => Level::Literal(l.to_owned()),
                        })
                        .collect();
                    if levels.len() < *k || levels.iter().any(|l| *l == Level::Literal("#".into())) {
                        continue;
                    }
                    levels.push(Level::Device);
                    levels.push(Level::Hash);
                    let p = Pattern(levels);
                    if !own.contains(&p) {
                        own.push(p);
                    }
                }
                DeviceSource::Field(field) => by_field.push((m.filter.clone(), field.clone())),
            }
        }
        Self { own, by_field }
    }
}

/// The decision for one publish or subscribe.
pub(crate) struct Acl<'a> {
    pub(crate) lanes: &'a Lanes,
    pub(crate) rules: &'a [CompiledRule],
}

impl Acl<'_> {
    /// May `device` (`None`: anonymous) publish to `topic`? `payload_device` reads the
    /// payload's device field for the mappings that name the device there.
    pub(crate) fn may_publish(
        &self,
        device: Option<&Device>,
        topic: &str,
        payload_device: impl Fn(&str) -> Option<String>,
    ) -> bool {
        if self.denied(Action::Publish, device, |p| p.matches_topic(topic, device)) {
            return false;
        }
        if let Some(d) = device {
            if self.lanes.own.iter().any(|p| p.matches_topic(topic, Some(d))) {
                return true;
            }
            for (filter, field) in &self.lanes.by_field {
                if telehub_core::TopicName::new(topic).is_ok_and(|t| filter.matches(&t))
                    && payload_device(field).as_deref() == Some(d.id.as_str())
                {
                    return true;
                }
            }
        }
        self.allowed(Action::Publish, device, |p| p.matches_topic(topic, device))
    }

    /// May `device` subscribe to `filter` (a `$share/{group}/` prefix removed)?
    pub(crate) fn may_subscribe(&self, device: Option<&Device>, filter: &str) -> bool {
        if self.denied(Action::Subscribe, device, |p| p.overlaps_filter(filter, device)) {
            return false;
        }
        if let Some(d) = device
            && self.lanes.own.iter().any(|p| p.covers_filter(filter, Some(d)))
        {
            return true;
        }
        self.allowed(Action::Subscribe, device, |p| p.covers_filter(filter, device))
    }

    fn denied(&self, action: Action, device: Option<&Device>, hit: impl Fn(&Pattern) -> bool) -> bool {
        self.rules
            .iter()
            .any(|r| r.spec.effect == Effect::Deny && r.applies(action, device) && hit(&r.pattern))
    }

    fn allowed(&self, action: Action, device: Option<&Device>, hit: impl Fn(&Pattern) -> bool) -> bool {
        self.rules
            .iter()
            .any(|r| r.spec.effect == Effect::Allow && r.applies(action, device) && hit(&r.pattern))
    }
}

/// A device with only an id and tags, for tests and anonymous rules.
#[cfg(test)]
pub(crate) fn test_device(id: &str, tags: &[(&str, &str)]) -> Device {
    Device {
        id: telehub_core::DeviceId::new(id).unwrap(),
        name: None,
        tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        allowed_ips: Vec::new(),
        created_at: 0,
        updated_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn default_lanes() -> Lanes {
        let toml = include_str!("../../../telehub/src/telehub.toml");
        #[derive(serde::Deserialize)]
        struct Ingest {
            mappings: Vec<Mapping>,
        }
        #[derive(serde::Deserialize)]
        struct File {
            ingest: Ingest,
        }
        let file: File = toml::from_str(toml).unwrap();
        Lanes::new(&file.ingest.mappings)
    }

    fn rule(effect: Effect, action: Action, filter: &str) -> CompiledRule {
        CompiledRule::new(AclRuleSpec {
            effect,
            action,
            filter: filter.into(),
            device: None,
            tags: BTreeMap::new(),
            anonymous: false,
        })
        .unwrap()
    }

    fn field(payload: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name| {
            let v: serde_json::Value = serde_json::from_str(payload).ok()?;
            v.get(name)?.as_str().map(str::to_owned)
        }
    }

    #[test]
    fn a_device_owns_its_canonical_and_mapped_topics() {
        let lanes = default_lanes();
        let acl = Acl { lanes: &lanes, rules: &[] };
        let d = test_device("nl-1", &[]);
        let none = |_: &str| None;
        for topic in [
            "devices/nl-1/telemetry",
            "devices/nl-1/state",
            "nl-1/telemetry",
            "nl-1/commands",
            "sensors/nl-1/t",
        ] {
            assert!(acl.may_publish(Some(&d), topic, none), "{topic}");
        }
        for topic in ["devices/nl-2/telemetry", "nl-2/telemetry", "sensors/nl-2/t", "devices", "other"] {
            assert!(!acl.may_publish(Some(&d), topic, none), "{topic}");
        }
        assert!(acl.may_subscribe(Some(&d), "devices/nl-1/commands"));
        assert!(acl.may_subscribe(Some(&d), "nl-1/#"));
        assert!(acl.may_subscribe(Some(&d), "devices/nl-1/+"));
        assert!(acl.may_subscribe(Some(&d), "/devices/nl-1/commands/#"), "Cloud IoT Core layout");
        assert!(!acl.may_subscribe(Some(&d), "/devices/+/commands/#"));
        for filter in ["#", "+/commands", "devices/+/commands", "nl-2/commands", "devices/#"] {
            assert!(!acl.may_subscribe(Some(&d), filter), "{filter}");
        }
    }

    #[test]
    fn a_payload_named_device_must_be_the_publisher() {
        let lanes = default_lanes();
        let acl = Acl { lanes: &lanes, rules: &[] };
        let d = test_device("raspi-01", &[]);
        assert!(acl.may_publish(Some(&d), "sensor/data", field(r#"{"device_id":"raspi-01","t":1}"#)));
        assert!(!acl.may_publish(Some(&d), "sensor/data", field(r#"{"device_id":"raspi-02","t":1}"#)));
        assert!(!acl.may_publish(Some(&d), "sensor/data", field("not json")));
        assert!(!acl.may_subscribe(Some(&d), "sensor/data"));
    }

    #[test]
    fn rules_extend_and_deny_beats_everything() {
        let lanes = default_lanes();
        let d = test_device("gw-1", &[("site", "plant-7")]);
        let rules = [
            rule(Effect::Allow, Action::Subscribe, "sites/{tag:site}/#"),
            rule(Effect::Allow, Action::Publish, "broadcast/{device}"),
            rule(Effect::Deny, Action::Publish, "devices/+/config"),
        ];
        let acl = Acl { lanes: &lanes, rules: &rules };
        let none = |_: &str| None;
        assert!(acl.may_subscribe(Some(&d), "sites/plant-7/alarms"));
        assert!(!acl.may_subscribe(Some(&d), "sites/plant-8/alarms"));
        assert!(!acl.may_subscribe(Some(&test_device("x", &[])), "sites/plant-7/alarms"), "no tag, no rule");
        assert!(acl.may_publish(Some(&d), "broadcast/gw-1", none));
        assert!(!acl.may_publish(Some(&d), "broadcast/gw-2", none));
        assert!(!acl.may_publish(Some(&d), "devices/gw-1/config", none), "deny beats the own lane");
        assert!(acl.may_publish(Some(&d), "devices/gw-1/telemetry", none));
    }

    #[test]
    fn anonymous_clients_only_get_anonymous_rules() {
        let lanes = default_lanes();
        let mut open = rule(Effect::Allow, Action::All, "public/#");
        open.spec.anonymous = true;
        let rules = [open];
        let acl = Acl { lanes: &lanes, rules: &rules };
        assert!(acl.may_publish(None, "public/x", |_| None));
        assert!(!acl.may_publish(None, "devices/a/telemetry", |_| None));
        assert!(acl.may_subscribe(None, "public/#"));
        assert!(!acl.may_subscribe(None, "#"));
    }

    #[test]
    fn deny_rules_refuse_overlapping_subscriptions() {
        let lanes = default_lanes();
        let d = test_device("a", &[]);
        let rules =
            [rule(Effect::Allow, Action::Subscribe, "#"), rule(Effect::Deny, Action::Subscribe, "secret/#")];
        let acl = Acl { lanes: &lanes, rules: &rules };
        assert!(acl.may_subscribe(Some(&d), "public/x"));
        assert!(!acl.may_subscribe(Some(&d), "#"), "# overlaps secret/#");
        assert!(!acl.may_subscribe(Some(&d), "+/x"), "+/x overlaps secret/x");
        assert!(!acl.may_subscribe(Some(&d), "secret/a"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        assert!(Pattern::parse("a/{devic}/b").unwrap_err().contains("unknown placeholder"));
        assert!(Pattern::parse("a/#/b").is_err());
        let mut spec = rule(Effect::Allow, Action::All, "x").spec;
        spec.filter = "d/{device}".into();
        spec.anonymous = true;
        assert!(CompiledRule::new(spec).is_err());
    }
}
