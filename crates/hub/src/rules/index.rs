//! The topic index: a trie of the rules' filters, so a message visits only the rules whose
//! filter matches its topic, in a few hash lookups per topic level whatever the number of
//! rules. Rebuilt whenever the rule set changes (rare, and linear in the rules).

use std::collections::HashMap;

use telehub_core::{TopicFilter, TopicName};

/// Rule positions by filter.
#[derive(Debug, Default)]
pub(super) struct TopicIndex {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    exact: HashMap<String, Node>,
    plus: Option<Box<Node>>,
    /// Rules whose filter ends with `#` here (matching this level and everything below).
    hash: Vec<usize>,
    /// Rules whose filter ends exactly here.
    end: Vec<usize>,
}

impl TopicIndex {
    /// Indexes `(position, filter)` pairs.
    pub(super) fn build<'a>(filters: impl IntoIterator<Item = (usize, &'a TopicFilter)>) -> Self {
        let mut root = Node::default();
        for (pos, filter) in filters {
            let mut node = &mut root;
            let mut levels = filter.levels().peekable();
            while let Some(level) = levels.next() {
                match level {
                    "#" => {
                        node.hash.push(pos);
                        break;
                    }
                    "+" => node = node.plus.get_or_insert_with(Box::default),
                    exact => node = node.exact.entry(exact.to_owned()).or_default(),
                }
                if levels.peek().is_none() {
                    node.end.push(pos);
                }
            }
        }
        Self { root }
    }

    /// Appends the positions of the rules matching `topic` to `out`, in ascending order.
    pub(super) fn matches(&self, topic: &TopicName, out: &mut Vec<usize>) {
        let start = out.len();
        // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a `$` topic.
        walk(&self.root, topic.as_str().split('/'), topic.is_dollar(), out);
        out[start..].sort_unstable();
    }
}

fn walk(node: &Node, mut levels: std::str::Split<'_, char>, no_wildcard: bool, out: &mut Vec<usize>) {
    if !no_wildcard {
        out.extend_from_slice(&node.hash);
    }
    let Some(level) = levels.next() else {
        out.extend_from_slice(&node.end);
        return;
    };
    if let Some(child) = node.exact.get(level) {
        walk(child, levels.clone(), false, out);
    }
    if let (Some(plus), false) = (&node.plus, no_wildcard) {
        walk(plus, levels, false, out);
    }
}
