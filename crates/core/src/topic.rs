//! Topic names and topic filters, validated once where they enter, and the matcher.
//!
//! Spec: MQTT 3.1.1 §4.7 and MQTT 5.0 §4.7 (identical rules).

use std::fmt;

use bytestring::ByteString;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// [MQTT-4.7.3-1] topic names and filters are at least one character long.
    #[error("topic is empty")]
    Empty,
    /// [MQTT-4.7.3-3] at most 65535 bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// [MQTT-4.7.3-2] no U+0000.
    #[error("topic contains a null character")]
    NullCharacter,
    /// [MQTT-3.3.2-2] a topic name in PUBLISH must not contain wildcards.
    #[error("wildcard in topic name")]
    WildcardInName,
    /// [MQTT-4.7.1-2] `#` must be the last character and occupy a whole level.
    #[error("multi-level wildcard '#' is not alone in the last level")]
    MisplacedMultiLevelWildcard,
    /// [MQTT-4.7.1-3] `+` must occupy a whole level.
    #[error("single-level wildcard '+' is not alone in its level")]
    MisplacedSingleLevelWildcard,
    /// [MQTT-4.8.2-1] / [MQTT-4.8.2-2] `$share/{group}/{filter}` needs a non-empty group
    /// without wildcards, followed by a filter.
    #[error("invalid shared subscription: expected $share/{{group}}/{{filter}}")]
    InvalidShareName,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// The topic a message is published to: non-empty, no wildcards, no NUL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(ByteString);

impl TopicName {
    /// Validates a topic name.
    ///
    /// # Errors
    ///
    /// [`TopicError`] naming the rule the name breaks.
    pub fn new(name: impl Into<ByteString>) -> Result<Self, TopicError> {
        let name = name.into();
        check_common(&name)?;
        if name.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the codec's string type (no copy).
    pub fn to_byte_string(&self) -> ByteString {
        self.0.clone()
    }

    /// True for server topics such as `$SYS/...` ([MQTT-4.7.2-1]).
    pub fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({:?})", &*self.0)
    }
}

/// What a subscription matches: levels separated by `/`, with `+` for one level and a
/// trailing `#` for any number of levels (including none).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(ByteString);

impl TopicFilter {
    /// Validates a topic filter.
    ///
    /// # Errors
    ///
    /// [`TopicError`] naming the rule the filter breaks.
    pub fn new(filter: impl Into<ByteString>) -> Result<Self, TopicError> {
        let filter = filter.into();
        check_common(&filter)?;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(TopicError::MisplacedMultiLevelWildcard);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::MisplacedSingleLevelWildcard);
            }
        }
        Ok(Self(filter))
    }

    /// The filter as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.contains(['+', '#'])
    }

    /// True for `$share/{group}/{filter}` (MQTT 5 shared subscriptions).
    pub fn is_shared(&self) -> bool {
        self.0.starts_with("$share/")
    }

    /// For `$share/{group}/{filter}`, the group name and the inner filter; `None` for an
    /// ordinary filter.
    ///
    /// # Errors
    ///
    /// [MQTT-4.8.2-1] the share name must be at least one character and
    /// [MQTT-4.8.2-2] must not contain `/`, `+` or `#`; the inner filter must be valid.
    pub fn split_shared(&self) -> Option<Result<(&str, TopicFilter), TopicError>> {
        let rest = self.0.strip_prefix("$share/")?;
        let Some((group, inner)) = rest.split_once('/') else {
            return Some(Err(TopicError::InvalidShareName));
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Some(Err(TopicError::InvalidShareName));
        }
        Some(TopicFilter::new(inner.to_owned()).map(|f| (group, f)))
    }

    /// The filter's levels, split at `/`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// True when a message published to `topic` matches this filter.
    ///
    /// [MQTT-4.7.2-1] a filter starting with a wildcard does not match a topic
    /// starting with `$`.
    pub fn matches(&self, topic: &TopicName) -> bool {
        if topic.is_dollar() && self.0.starts_with(['+', '#']) {
            return false;
        }
        let mut names = topic.as_str().split('/');
        for level in self.levels() {
            match level {
                "#" => return true,
                "+" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                exact => {
                    if names.next() != Some(exact) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::new(s.to_owned()).unwrap()
    }
    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s.to_owned()).unwrap()
    }

    #[test]
    fn mqtt_3_3_2_2_topic_name_with_wildcard_is_rejected() {
        assert_eq!(TopicName::new("a/+/b"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn mqtt_4_7_3_1_empty_topic_is_rejected() {
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn mqtt_4_7_3_2_null_character_is_rejected() {
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(TopicFilter::new("a/\0"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_must_be_last_and_alone() {
        assert_eq!(TopicFilter::new("a/#/b"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(TopicFilter::new("a/b#"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(TopicFilter::new("##"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert!(TopicFilter::new("a/#").is_ok());
        assert!(TopicFilter::new("#").is_ok());
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard_must_be_alone() {
        assert_eq!(TopicFilter::new("a/b+"), Err(TopicError::MisplacedSingleLevelWildcard));
        assert_eq!(TopicFilter::new("+a/b"), Err(TopicError::MisplacedSingleLevelWildcard));
        assert!(TopicFilter::new("+/+/+").is_ok());
        assert!(TopicFilter::new("+").is_ok());
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_matches_parent_and_children() {
        let f = filter("sport/tennis/player1/#");
        assert!(f.matches(&name("sport/tennis/player1")));
        assert!(f.matches(&name("sport/tennis/player1/ranking")));
        assert!(f.matches(&name("sport/tennis/player1/score/wimbledon")));
        assert!(!f.matches(&name("sport/tennis/player2")));
        assert!(filter("sport/#").matches(&name("sport")));
        assert!(filter("#").matches(&name("a/b/c")));
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard_matches_exactly_one_level() {
        let f = filter("sport/tennis/+");
        assert!(f.matches(&name("sport/tennis/player1")));
        assert!(!f.matches(&name("sport/tennis/player1/ranking")));
        assert!(!filter("sport/+").matches(&name("sport")));
        assert!(filter("sport/+").matches(&name("sport/")));
        assert!(filter("+/+").matches(&name("/finance")));
        assert!(filter("/+").matches(&name("/finance")));
        assert!(!filter("+").matches(&name("/finance")));
    }

    #[test]
    fn mqtt_4_7_2_1_leading_wildcard_does_not_match_dollar_topics() {
        assert!(!filter("#").matches(&name("$SYS/uptime")));
        assert!(!filter("+/uptime").matches(&name("$SYS/uptime")));
        assert!(filter("$SYS/#").matches(&name("$SYS/uptime")));
        assert!(filter("$SYS/+").matches(&name("$SYS/uptime")));
    }

    #[test]
    fn exact_filter_matches_only_itself() {
        assert!(filter("a/b").matches(&name("a/b")));
        assert!(!filter("a/b").matches(&name("a/b/c")));
        assert!(!filter("a/b").matches(&name("a")));
        assert!(!filter("a/b").matches(&name("A/b")));
    }

    #[test]
    fn mqtt_4_8_2_shared_filter_splits_into_group_and_filter() {
        let f = filter("$share/g1/sensors/+/temp");
        let (group, inner) = f.split_shared().unwrap().unwrap();
        assert_eq!((group, inner.as_str()), ("g1", "sensors/+/temp"));
        assert!(filter("a/b").split_shared().is_none());
        assert_eq!(filter("$share/g").split_shared().unwrap().unwrap_err(), TopicError::InvalidShareName);
        assert_eq!(filter("$share//a").split_shared().unwrap().unwrap_err(), TopicError::InvalidShareName);
        assert_eq!(filter("$share/+/a").split_shared().unwrap().unwrap_err(), TopicError::InvalidShareName);
        assert_eq!(filter("$share/#").split_shared().unwrap().unwrap_err(), TopicError::InvalidShareName);
    }

    #[test]
    fn shared_subscription_is_recognised() {
        assert!(filter("$share/g/a/#").is_shared());
        assert!(!filter("share/g/a").is_shared());
    }
}
