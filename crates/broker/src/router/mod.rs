//! The subscription trie and the retained messages: who gets a message published to a
//! topic, and what a new subscriber gets at once.
//!
//! Read-mostly: publishes on every core match under a shared read lock and never wait
//! for each other; SUBSCRIBE/UNSUBSCRIBE take the write lock briefly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use telehub_core::{ClientId, Message, QoS, TopicFilter, TopicName};
use telehub_mqtt::{BrokerTime, SubOptions};

use crate::sessions::SessionEntry;

/// One subscription of one session.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub(crate) entry: Arc<SessionEntry>,
    pub(crate) options: SubOptions,
    /// MQTT 5 Subscription Identifier of the SUBSCRIBE that made it.
    pub(crate) subscription_id: Option<u32>,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Subscribers whose filter ends at this node.
    here: HashMap<ClientId, Subscriber>,
    /// Subscribers whose filter ends with `#` below this node.
    multi: HashMap<ClientId, Subscriber>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.multi.is_empty()
    }
}

/// A matched subscriber: merged over every filter of the session that matches
/// (one delivery per session, at the highest granted QoS; see ARCHITECTURE.md).
pub(crate) struct Target {
    pub(crate) entry: Arc<SessionEntry>,
    pub(crate) qos: QoS,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    /// Identifiers of every matching subscription that has one ([MQTT-3.3.4-4]).
    pub(crate) subscription_ids: Vec<u32>,
}

/// The members of one shared subscription `$share/{group}/{filter}`.
struct SharedGroup {
    filter: TopicFilter,
    members: Vec<Subscriber>,
    /// Round-robin position.
    next: AtomicUsize,
}

#[derive(Default)]
pub(crate) struct Router {
    trie: RwLock<Node>,
    /// Shared subscriptions by their full `$share/{group}/{filter}` filter. Matched by
    /// scanning: deployments have few groups, each with many members.
    shared: RwLock<HashMap<TopicFilter, SharedGroup>>,
    /// Retained messages with their expiry ([MQTT-3.3.2-5]: an expired retained
    /// message is not delivered).
    retained: RwLock<HashMap<TopicName, Retained>>,
}

/// A retained message and when it expires.
type Retained = (Arc<Message>, Option<BrokerTime>);

impl Router {
    /// Adds or replaces the session's membership of the shared subscription `shared`
    /// (`$share/{group}/{filter}`, with `inner` its filter). Returns true when it
    /// replaced an existing one.
    pub(crate) fn subscribe_shared(&self, shared: &TopicFilter, inner: TopicFilter, sub: Subscriber) -> bool {
        let mut groups = self.shared.write().unwrap_or_else(|e| e.into_inner());
        let group = groups.entry(shared.clone()).or_insert_with(|| SharedGroup {
            filter: inner,
            members: Vec::new(),
            next: AtomicUsize::new(0),
        });
        let id = &sub.entry.client_id;
        if let Some(existing) = group.members.iter_mut().find(|m| &m.entry.client_id == id) {
            *existing = sub;
            return true;
        }
        group.members.push(sub);
        false
    }

    /// Adds or replaces the session's subscription to `filter`. Returns true when it
    /// replaced an existing one ([MQTT-3.8.4-3]).
    pub(crate) fn subscribe(&self, filter: &TopicFilter, sub: Subscriber) -> bool {
        let mut node = &mut *self.trie.write().unwrap_or_else(|e| e.into_inner());
        let mut levels = filter.levels().peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                let id = sub.entry.client_id.clone();
                return node.multi.insert(id, sub).is_some();
            }
            node = node.children.entry(level.into()).or_default();
            if levels.peek().is_none() {
                let id = sub.entry.client_id.clone();
                return node.here.insert(id, sub).is_some();
            }
        }
        false
    }

    /// Removes `entry`'s subscription to `filter`; true when there was one. A
    /// subscription of the same client id held by a newer session is left alone.
    pub(crate) fn unsubscribe(&self, filter: &TopicFilter, entry: &Arc<SessionEntry>) -> bool {
        if filter.is_shared() {
            let mut groups = self.shared.write().unwrap_or_else(|e| e.into_inner());
            let Some(group) = groups.get_mut(filter) else { return false };
            let before = group.members.len();
            group.members.retain(|m| !Arc::ptr_eq(&m.entry, entry));
            let removed = group.members.len() < before;
            if group.members.is_empty() {
                groups.remove(filter);
            }
            return removed;
        }
        fn take(subs: &mut HashMap<ClientId, Subscriber>, entry: &Arc<SessionEntry>) -> bool {
            let ours = subs.get(&entry.client_id).is_some_and(|s| Arc::ptr_eq(&s.entry, entry));
            ours && subs.remove(&entry.client_id).is_some()
        }
        fn remove(node: &mut Node, levels: &[&str], entry: &Arc<SessionEntry>) -> bool {
            match levels {
                [] => false,
                ["#"] => take(&mut node.multi, entry),
                [level, rest @ ..] => {
                    let Some(child) = node.children.get_mut(*level) else { return false };
                    let removed = if rest.is_empty() {
                        take(&mut child.here, entry)
                    } else {
                        remove(child, rest, entry)
                    };
                    if child.is_empty() {
                        node.children.remove(*level);
                    }
                    removed
                }
            }
        }
        let levels: Vec<&str> = filter.levels().collect();
        remove(&mut self.trie.write().unwrap_or_else(|e| e.into_inner()), &levels, entry)
    }

    /// Every session subscribed to a filter matching `topic`, one entry per session.
    pub(crate) fn targets(&self, topic: &TopicName) -> Vec<Target> {
        fn add(out: &mut Vec<Target>, subs: &HashMap<ClientId, Subscriber>) {
            for s in subs.values() {
                out.push(Target {
                    entry: Arc::clone(&s.entry),
                    qos: s.options.qos,
                    no_local: s.options.no_local,
                    retain_as_published: s.options.retain_as_published,
                    subscription_ids: s.subscription_id.into_iter().collect(),
                });
            }
        }
        fn walk(node: &Node, levels: &[&str], first: bool, dollar: bool, out: &mut Vec<Target>) {
            // [MQTT-4.7.2-1] a wildcard in the first level does not match `$` topics
            let wild = !(first && dollar);
            if wild {
                add(out, &node.multi); // `#` matches the parent level and everything below
            }
            let Some((level, rest)) = levels.split_first() else {
                return;
            };
            if let Some(child) = node.children.get(*level) {
                if rest.is_empty() {
                    add(out, &child.here);
                    add(out, &child.multi);
                } else {
                    walk(child, rest, false, dollar, out);
                }
            }
            if wild && let Some(child) = node.children.get("+") {
                if rest.is_empty() {
                    add(out, &child.here);
                    add(out, &child.multi);
                } else {
                    walk(child, rest, false, dollar, out);
                }
            }
        }
        let levels: Vec<&str> = topic.as_str().split('/').collect();
        let mut out = Vec::new();
        walk(
            &self.trie.read().unwrap_or_else(|e| e.into_inner()),
            &levels,
            true,
            topic.is_dollar(),
            &mut out,
        );
        let mut targets = merge_per_session(out);
        self.shared_targets(topic, &mut targets);
        targets
    }

    /// One member of every matching shared subscription, round robin, preferring
    /// members whose client is connected ([MQTT-4.8.2-3]: one session per group gets
    /// each message). A shared delivery is separate from the session's ordinary ones.
    fn shared_targets(&self, topic: &TopicName, out: &mut Vec<Target>) {
        let groups = self.shared.read().unwrap_or_else(|e| e.into_inner());
        for group in groups.values() {
            let n = group.members.len();
            if n == 0 || !group.filter.matches(topic) {
                continue;
            }
            let start = group.next.fetch_add(1, Ordering::Relaxed);
            let pick = (0..n)
                .map(|i| &group.members[(start + i) % n])
                .find(|m| m.entry.is_online())
                .unwrap_or(&group.members[start % n]);
            out.push(Target {
                entry: Arc::clone(&pick.entry),
                qos: pick.options.qos,
                no_local: false,
                retain_as_published: pick.options.retain_as_published,
                subscription_ids: pick.subscription_id.into_iter().collect(),
            });
        }
    }

    /// Stores, replaces or (with an empty payload) clears the retained message of its
    /// topic ([MQTT-3.3.1-5], [MQTT-3.3.1-10], [MQTT-3.3.1-11]).
    /// `under_lock` runs under the same lock (records the change for the disk in the
    /// order the changes happen).
    pub(crate) fn retain(
        &self,
        message: &Arc<Message>,
        expires_at: Option<BrokerTime>,
        under_lock: impl FnOnce(),
    ) {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        under_lock();
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(message.topic.clone(), (Arc::clone(message), expires_at));
        }
    }

    /// Number of retained messages.
    pub(crate) fn retained_count(&self) -> usize {
        self.retained.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Number of subscriptions (a session's filter counts once).
    pub(crate) fn subscription_count(&self) -> usize {
        fn count(node: &Node) -> usize {
            node.here.len() + node.multi.len() + node.children.values().map(count).sum::<usize>()
        }
        let shared: usize =
            self.shared.read().unwrap_or_else(|e| e.into_inner()).values().map(|g| g.members.len()).sum();
        count(&self.trie.read().unwrap_or_else(|e| e.into_inner())) + shared
    }

    /// Retained messages whose topic matches `filter` ([MQTT-3.3.1-6]) and that have
    /// not expired by `now`, with their expiry. Expired ones are removed.
    pub(crate) fn retained_matching(&self, filter: &TopicFilter, now: BrokerTime) -> Vec<Retained> {
        let expired = |at: &Option<BrokerTime>| at.is_some_and(|at| now >= at);
        let found: Vec<_> = {
            let retained = self.retained.read().unwrap_or_else(|e| e.into_inner());
            retained.values().filter(|(m, _)| filter.matches(&m.topic)).cloned().collect()
        };
        if found.iter().any(|(_, at)| expired(at)) {
            self.retained.write().unwrap_or_else(|e| e.into_inner()).retain(|_, (_, at)| !expired(at));
        }
        found.into_iter().filter(|(_, at)| !expired(at)).collect()
    }
}

/// Merges overlapping subscriptions of one session into one target at the highest QoS
/// ([MQTT-3.3.5-1]); No Local holds only if every matching subscription asked for it.
fn merge_per_session(mut targets: Vec<Target>) -> Vec<Target> {
    if targets.len() < 2 {
        return targets;
    }
    targets.sort_by_key(|t| Arc::as_ptr(&t.entry) as usize);
    let mut merged: Vec<Target> = Vec::with_capacity(targets.len());
    for t in targets {
        match merged.last_mut() {
            Some(last) if Arc::ptr_eq(&last.entry, &t.entry) => {
                last.qos = last.qos.max(t.qos);
                last.no_local &= t.no_local;
                last.retain_as_published |= t.retain_as_published;
                last.subscription_ids.extend(t.subscription_ids);
            }
            _ => merged.push(t),
        }
    }
    merged
}

#[cfg(test)]
mod tests;
