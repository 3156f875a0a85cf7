//! Fuzz entry points, shared by the `fuzz/` targets (cargo-fuzz) and the deterministic
//! sweeps in the unit tests: each takes arbitrary bytes and must neither panic nor hang.
//! [`seeds`] holds the seed corpus they start from.

use bytes::BytesMut;
use telehub_core::{Message, MessageProperties, QoS, TopicName};

use crate::session::{BrokerTime, Delivery, OverflowPolicy, QueueBudget, Session, SessionLimits};
use crate::{Decoder, Outbound};

pub mod seeds;

const CONNECT_V311: &[u8] = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc";
const CONNECT_V5: &[u8] = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc";

/// Decodes `data` as what a client sends: raw when the first byte is even, else after a
/// valid MQTT 3.1.1 or 5.0 CONNECT (picked by the second bit), so the fuzzer reaches every
/// packet decoder. Every call either returns a packet, asks for more bytes, or fails:
/// the loop is bounded by the input length.
pub fn decode(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let mut bytes = Vec::with_capacity(rest.len() + 20);
    if selector & 1 == 1 {
        bytes.extend_from_slice(if selector & 2 == 0 { CONNECT_V311 } else { CONNECT_V5 });
    }
    bytes.extend_from_slice(rest);
    let mut decoder = Decoder::new(64 * 1024);
    let mut buf = BytesMut::from(&bytes[..]);
    for _ in 0..=bytes.len() {
        match decoder.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("decoder returned a packet more often than there are input bytes");
}

/// Drives a [`Session`] with operations read from `data` (enqueue, send, acks, resume)
/// and checks its invariants after each: the in-flight count never exceeds the window,
/// every in-flight packet id is non-zero and unique, the queue stays bounded in
/// deliveries and bytes, and the shared budget holds exactly the queued bytes.
pub fn session(data: &[u8]) {
    let limits = SessionLimits {
        max_queued: 8,
        max_queued_bytes: 64,
        max_inflight: 4,
        overflow: OverflowPolicy::DropOldest,
    };
    let budget = QueueBudget::new(48);
    let mut s = Session::with_budget(limits, budget.clone());
    let mut sent: Vec<u16> = Vec::new();
    let topic = TopicName::new("f/t").unwrap_or_else(|_| unreachable!("a valid topic"));
    for (i, &op) in data.iter().enumerate() {
        let now = BrokerTime(std::time::Duration::from_secs(i as u64));
        match op % 6 {
            0 | 1 => {
                let qos = QoS::from_u8(op / 6 % 3).unwrap_or(QoS::AtMostOnce);
                let message = Message {
                    topic: topic.clone(),
                    payload: bytes::Bytes::from(vec![0; usize::from(op % 24)]),
                    qos,
                    retain: false,
                    properties: MessageProperties::default(),
                };
                let expires_at =
                    (op & 0x80 != 0).then(|| BrokerTime(now.0 + std::time::Duration::from_secs(2)));
                let delivery = Delivery {
                    message: std::sync::Arc::new(message),
                    qos,
                    retain: false,
                    subscription_ids: Vec::new(),
                    expires_at,
                    persist_id: None,
                };
                let _ = s.enqueue(delivery);
            }
            2 => {
                if let Some(Outbound::Publish { packet_id: Some(id), .. }) = s.next_outgoing(now) {
                    assert!(id != 0, "packet id 0 handed out");
                    sent.push(id);
                }
            }
            3 => {
                if let Some(&id) = sent.get(usize::from(op / 6) % sent.len().max(1)) {
                    let _ = s.on_puback(id);
                    let _ = s.on_pubrec(id);
                    let _ = s.on_pubcomp(id);
                }
            }
            4 => {
                let _ = s.on_incoming_qos2(u16::from(op));
                let _ = s.on_pubrel(u16::from(op / 2));
            }
            _ => {
                let resent = s.resume(u16::from(op % 5) + 1, now);
                let mut ids: Vec<u16> = resent
                    .iter()
                    .filter_map(|p| match p {
                        Outbound::Publish { packet_id, .. } => *packet_id,
                        Outbound::PubRel(id) => Some(*id),
                        _ => None,
                    })
                    .collect();
                let n = ids.len();
                ids.sort_unstable();
                ids.dedup();
                assert_eq!(ids.len(), n, "a packet id is in flight twice");
            }
        }
        assert!(s.inflight() <= 4, "in flight beyond the window");
        assert!(s.queued() <= 8, "queue beyond its bound");
        assert!(s.queued_bytes() <= 48, "queued bytes beyond the budget");
        assert_eq!(budget.used(), s.queued_bytes(), "budget out of step with the queue");
    }
    drop(s);
    assert_eq!(budget.used(), 0, "a dropped session keeps bytes in the budget");
}

#[cfg(test)]
mod tests;
