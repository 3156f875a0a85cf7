//! The few MQTT 3.1.1 packets the generator speaks, encoded into and parsed out of byte
//! buffers in place (no I/O, no allocation per packet).

use anyhow::{Result, bail};
use bytes::{BufMut, BytesMut};

/// Packet types (the high nibble of the first byte).
pub(crate) const CONNACK: u8 = 0x20;
pub(crate) const PUBLISH: u8 = 0x30;
pub(crate) const PUBACK: u8 = 0x40;
pub(crate) const SUBACK: u8 = 0x90;
pub(crate) const PINGRESP: u8 = 0xd0;

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        #[allow(clippy::cast_possible_truncation)]
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).expect("MQTT strings are at most 65535 bytes");
    buf.put_u16(len);
    buf.put_slice(s.as_bytes());
}

/// A CONNECT's user name and password (the password is sent as given: a token, a
/// password or a JWT), and whether the session is kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct Login {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Vec<u8>>,
    /// Clean session 0: the broker keeps the session, its subscriptions and its QoS 1
    /// messages (on disk, where the broker persists sessions).
    pub(crate) persistent: bool,
}

impl Login {
    /// No credentials: an anonymous client.
    pub(crate) fn anonymous() -> Self {
        Self::default()
    }

    pub(crate) fn new(username: impl Into<String>, password: impl Into<Vec<u8>>) -> Self {
        Self { username: Some(username.into()), password: Some(password.into()), persistent: false }
    }
}

/// CONNECT, MQTT 3.1.1, clean session unless `login.persistent`, no will, with `login`'s user name and password
/// if any. MQTT 3.1.1 allows a password only after a user name: a password without one
/// is sent with an empty user name.
pub(crate) fn connect(buf: &mut BytesMut, client_id: &str, keep_alive: u16, login: &Login) {
    let password = login.password.as_deref();
    let username = login.username.as_deref().or(password.map(|_| ""));
    let mut flags = if login.persistent { 0x00 } else { 0x02 }; // clean session
    let mut len = 10 + 2 + client_id.len();
    if let Some(u) = username {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    buf.put_u8(0x10);
    put_remaining_length(buf, len);
    put_str(buf, "MQTT");
    buf.put_u8(4); // protocol level 3.1.1
    buf.put_u8(flags);
    buf.put_u16(keep_alive);
    put_str(buf, client_id);
    if let Some(u) = username {
        put_str(buf, u);
    }
    if let Some(p) = password {
        let n = u16::try_from(p.len()).expect("MQTT binary data is at most 65535 bytes");
        buf.put_u16(n);
        buf.put_slice(p);
    }
}

/// SUBSCRIBE to one filter at `qos`.
pub(crate) fn subscribe(buf: &mut BytesMut, packet_id: u16, filter: &str, qos: u8) {
    buf.put_u8(0x82);
    put_remaining_length(buf, 2 + 2 + filter.len() + 1);
    buf.put_u16(packet_id);
    put_str(buf, filter);
    buf.put_u8(qos);
}

pub(crate) fn puback(buf: &mut BytesMut, packet_id: u16) {
    buf.put_u8(PUBACK);
    buf.put_u8(2);
    buf.put_u16(packet_id);
}

pub(crate) fn pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xc0, 0x00]);
}

pub(crate) fn disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xe0, 0x00]);
}

/// One PUBLISH encoded once and copied per message; only the packet id and the first
/// 8 payload bytes (a sequence number or a timestamp) change, or, with a [`Doc`]
/// payload, the document's slots.
pub(crate) struct PublishTemplate {
    frame: Vec<u8>,
    id_at: Option<usize>,
    stamp_at: usize,
    doc: Option<Doc>,
}

impl PublishTemplate {
    /// `payload_len` is at least 8 (room for the stamp).
    pub(crate) fn new(topic: &str, qos: u8, payload_len: usize) -> Self {
        let payload_len = payload_len.max(8);
        let mut buf = BytesMut::new();
        buf.put_u8(PUBLISH | (qos << 1));
        put_remaining_length(&mut buf, 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload_len);
        put_str(&mut buf, topic);
        let id_at = (qos > 0).then(|| {
            buf.put_u16(0);
            buf.len() - 2
        });
        let stamp_at = buf.len();
        // a recognisable, incompressible-enough filler
        buf.extend((0..payload_len).map(|i| b'a' + (i % 26) as u8));
        Self { frame: buf.to_vec(), id_at, stamp_at, doc: None }
    }

    /// A PUBLISH whose payload is `doc`, filled per message from its stamp (the
    /// message's sequence number).
    pub(crate) fn with_doc(topic: &str, qos: u8, doc: Doc) -> Self {
        let mut buf = BytesMut::new();
        buf.put_u8(PUBLISH | (qos << 1));
        put_remaining_length(&mut buf, 2 + topic.len() + if qos > 0 { 2 } else { 0 } + doc.len());
        put_str(&mut buf, topic);
        let id_at = (qos > 0).then(|| {
            buf.put_u16(0);
            buf.len() - 2
        });
        let stamp_at = buf.len();
        buf.put_slice(doc.bytes());
        Self { frame: buf.to_vec(), id_at, stamp_at, doc: Some(doc) }
    }

    pub(crate) fn len(&self) -> usize {
        self.frame.len()
    }

    /// Appends one PUBLISH with `packet_id` (ignored at QoS 0) and `stamp`.
    pub(crate) fn put(&self, buf: &mut BytesMut, packet_id: u16, stamp: u64) {
        let start = buf.len();
        buf.extend_from_slice(&self.frame);
        let frame = &mut buf[start..];
        if let Some(at) = self.id_at {
            frame[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        match &self.doc {
            Some(doc) => doc.fill(&mut frame[self.stamp_at..], stamp),
            None => frame[self.stamp_at..self.stamp_at + 8].copy_from_slice(&stamp.to_be_bytes()),
        }
    }
}

/// Digits of a message's sequence number in each numeric field.
const VALUE_DIGITS: usize = 6;
/// Digits of `msg_id`.
const MSG_ID_DIGITS: usize = 12;
/// Digits of a Unix-millisecond `ts` (13 until the year 2286).
const TS_DIGITS: usize = 13;

/// A JSON telemetry document written once, whose slots are overwritten per message so
/// that no message costs a formatting pass:
/// `{<prefix>"ts":<base + seq>,"msg_id":"<seq>","f0":0.<seq>,"f1":1.<seq>,...}`.
///
/// Each message of one device gets its own `ts` (1 ms apart), so no point is refused as
/// a duplicate of the `(device, metric, ts)` before it, and its own `msg_id`.
#[derive(Clone)]
pub(crate) struct Doc {
    bytes: Vec<u8>,
    ts_at: Option<usize>,
    id_at: Option<usize>,
    values_at: Vec<usize>,
    base_ms: u64,
    ts_step_ms: u64,
}

impl Doc {
    /// `prefix` is raw JSON members ending with a comma (`"device_id":"d1",`) or empty;
    /// `metrics` are the numeric fields; `base_ms` is the `ts` of message 0 (13 digits,
    /// so that no `ts` has a leading zero, which JSON does not allow). Without
    /// `msg_id` the document has no `msg_id` member.
    pub(crate) fn new(prefix: &str, metrics: &[String], base_ms: u64, msg_id: bool) -> Self {
        let mut text = String::from("{");
        text.push_str(prefix);
        let ts_at = Some(text.len() + "\"ts\":".len());
        text.push_str(&format!("\"ts\":{}", "0".repeat(TS_DIGITS)));
        let id_at = msg_id.then(|| {
            let at = text.len() + ",\"msg_id\":\"".len();
            text.push_str(&format!(",\"msg_id\":\"{}\"", "0".repeat(MSG_ID_DIGITS)));
            at
        });
        let mut values_at = Vec::with_capacity(metrics.len());
        for (i, m) in metrics.iter().enumerate() {
            text.push_str(&format!(",\"{m}\":{}.", i % 10));
            values_at.push(text.len());
            text.push_str(&"0".repeat(VALUE_DIGITS));
        }
        text.push('}');
        Self { bytes: text.into_bytes(), ts_at, id_at, values_at, base_ms, ts_step_ms: 1 }
    }

    /// Message `seq` at `base_ms + seq × step_ms` instead of 1 ms apart.
    pub(crate) fn with_ts_step(mut self, step_ms: u64) -> Self {
        self.ts_step_ms = step_ms;
        self
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `ts` of message `seq`.
    pub(crate) fn ts_of(&self, seq: u64) -> u64 {
        self.base_ms + seq * self.ts_step_ms
    }

    /// Writes message `seq`'s slots into `out`, a copy of [`Doc::bytes`].
    pub(crate) fn fill(&self, out: &mut [u8], seq: u64) {
        if let Some(at) = self.ts_at {
            put_digits(&mut out[at..at + TS_DIGITS], self.ts_of(seq));
        }
        if let Some(at) = self.id_at {
            put_digits(&mut out[at..at + MSG_ID_DIGITS], seq);
        }
        for &at in &self.values_at {
            put_digits(&mut out[at..at + VALUE_DIGITS], seq);
        }
    }

    /// Appends message `seq`.
    pub(crate) fn put(&self, buf: &mut BytesMut, seq: u64) {
        let start = buf.len();
        buf.extend_from_slice(&self.bytes);
        self.fill(&mut buf[start..], seq);
    }
}

/// `n` in decimal, zero-padded to fill `out` (the lowest digits if it is too short).
fn put_digits(out: &mut [u8], mut n: u64) {
    for d in out.iter_mut().rev() {
        #[allow(clippy::cast_possible_truncation)]
        let digit = (n % 10) as u8;
        *d = b'0' + digit;
        n /= 10;
    }
}

/// A packet parsed in place.
pub(crate) struct Frame<'a> {
    pub(crate) header: u8,
    pub(crate) body: &'a [u8],
}

impl Frame<'_> {
    pub(crate) fn kind(&self) -> u8 {
        self.header & 0xf0
    }

    /// A PUBLISH's packet id (QoS 1/2 only) and payload.
    pub(crate) fn publish(&self) -> Result<(Option<u16>, &[u8])> {
        let body = self.body;
        if body.len() < 2 {
            bail!("PUBLISH too short");
        }
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let mut at = 2 + topic_len;
        let qos = (self.header >> 1) & 0x03;
        let id = if qos > 0 {
            if body.len() < at + 2 {
                bail!("PUBLISH too short");
            }
            at += 2;
            Some(u16::from_be_bytes([body[at - 2], body[at - 1]]))
        } else {
            None
        };
        if body.len() < at {
            bail!("PUBLISH too short");
        }
        Ok((id, &body[at..]))
    }

    /// The packet id of a PUBACK or SUBACK.
    pub(crate) fn packet_id(&self) -> Result<u16> {
        match self.body {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => bail!("packet 0x{:02x} too short", self.header),
        }
    }
}

/// Reads the stamp [`PublishTemplate::put`] wrote into a payload.
pub(crate) fn stamp_of(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Parses the packet at the start of `buf`: the frame and its total length, or `None`
/// when `buf` does not hold all of it yet.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    let Some(&header) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    let mut shift = 0;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else { return Ok(None) };
        at += 1;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            bail!("malformed remaining length");
        }
    }
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some((Frame { header, body: &buf[at..at + len] }, at + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_parse() {
        for qos in [0, 1] {
            let t = PublishTemplate::new("lg/x/1", qos, 64);
            let mut buf = BytesMut::new();
            t.put(&mut buf, 7, 0xdead_beef);
            t.put(&mut buf, 8, 42);
            assert_eq!(buf.len(), 2 * t.len());
            let (frame, used) = parse(&buf).unwrap().unwrap();
            assert_eq!(used, t.len());
            assert_eq!(frame.kind(), PUBLISH);
            let (id, payload) = frame.publish().unwrap();
            assert_eq!(id, (qos > 0).then_some(7));
            assert_eq!(payload.len(), 64);
            assert_eq!(stamp_of(payload), Some(0xdead_beef));
        }
    }

    #[test]
    fn remaining_length_uses_several_bytes_when_needed() {
        let t = PublishTemplate::new("t", 0, 300);
        let mut buf = BytesMut::new();
        t.put(&mut buf, 0, 1);
        assert_eq!(&buf[..3], &[0x30, 0xaf, 0x02]); // 2 + 1 + 300 = 303 = 2 × 128 + 47
        assert!(parse(&buf[..buf.len() - 1]).unwrap().is_none());
        let (frame, _) = parse(&buf).unwrap().unwrap();
        assert_eq!(frame.publish().unwrap().1.len(), 300);
    }

    #[test]
    fn doc_slots_are_filled_per_message() {
        let doc = Doc::new("\"device_id\":\"d\",", &["a".into(), "b".into()], 1_700_000_000_000, true);
        let mut buf = BytesMut::new();
        doc.put(&mut buf, 1_234_567);
        let want = format!(
            r#"{{"device_id":"d","ts":{},"msg_id":"000001234567","a":0.234567,"b":1.234567}}"#,
            1_700_000_000_000u64 + 1_234_567
        );
        assert_eq!(std::str::from_utf8(&buf).unwrap(), want);
        let t = PublishTemplate::with_doc("devices/d/telemetry", 1, doc.clone());
        let mut buf = BytesMut::new();
        t.put(&mut buf, 9, 5);
        let (frame, used) = parse(&buf).unwrap().unwrap();
        assert_eq!(used, t.len());
        let (id, payload) = frame.publish().unwrap();
        assert_eq!(id, Some(9));
        assert!(std::str::from_utf8(payload).unwrap().contains(r#""msg_id":"000000000005","a":0.000005"#));
        let plain = Doc::new("", &["x".into()], 1_000_000_000_000, false);
        let mut buf = BytesMut::new();
        plain.put(&mut buf, 3);
        assert_eq!(&buf[..], br#"{"ts":1000000000003,"x":0.000003}"#);
        let slow = plain.with_ts_step(1000);
        let mut buf = BytesMut::new();
        slow.put(&mut buf, 3);
        assert_eq!(&buf[..], br#"{"ts":1000000003000,"x":0.000003}"#);
    }

    #[test]
    fn connect_has_the_3_1_1_header() {
        let mut buf = BytesMut::new();
        connect(&mut buf, "c1", 60, &Login::anonymous());
        assert_eq!(&buf[..], b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1");
        // a persistent session: clean session 0
        let mut buf = BytesMut::new();
        connect(&mut buf, "c1", 60, &Login { persistent: true, ..Login::anonymous() });
        assert_eq!(&buf[..], b"\x10\x0e\x00\x04MQTT\x04\x00\x00\x3c\x00\x02c1");
    }

    #[test]
    fn connect_carries_user_name_and_password() {
        let mut buf = BytesMut::new();
        connect(&mut buf, "c1", 60, &Login::new("d1", "pw"));
        assert_eq!(&buf[..], b"\x10\x16\x00\x04MQTT\x04\xc2\x00\x3c\x00\x02c1\x00\x02d1\x00\x02pw");
        let (frame, used) = parse(&buf).unwrap().unwrap();
        assert_eq!((frame.header, used), (0x10, buf.len()));
        // a password alone goes with an empty user name, as MQTT 3.1.1 wants
        let mut buf = BytesMut::new();
        connect(
            &mut buf,
            "c1",
            60,
            &Login { username: None, password: Some(b"eyJ".to_vec()), persistent: false },
        );
        assert_eq!(&buf[..], b"\x10\x15\x00\x04MQTT\x04\xc2\x00\x3c\x00\x02c1\x00\x00\x00\x03eyJ");
    }
}
