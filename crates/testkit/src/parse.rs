//! Decoders for what the server sends, written from the spec and sharing no code with
//! `telehub-mqtt`: [`Packet`] (one framed packet), CONNACK, PUBLISH, SUBACK/UNSUBACK,
//! acks, DISCONNECT and MQTT 5 [`Properties`].
//!
//! Every decoder panics with the packet's bytes when they do not parse: a server that
//! sends something we cannot read fails the test.

use std::fmt;

use crate::Version;
use crate::build;

/// Control packet types (the high nibble of the first byte).
pub mod kind {
    /// CONNECT.
    pub const CONNECT: u8 = 1;
    /// CONNACK.
    pub const CONNACK: u8 = 2;
    /// PUBLISH.
    pub const PUBLISH: u8 = 3;
    /// PUBACK.
    pub const PUBACK: u8 = 4;
    /// PUBREC.
    pub const PUBREC: u8 = 5;
    /// PUBREL.
    pub const PUBREL: u8 = 6;
    /// PUBCOMP.
    pub const PUBCOMP: u8 = 7;
    /// SUBSCRIBE.
    pub const SUBSCRIBE: u8 = 8;
    /// SUBACK.
    pub const SUBACK: u8 = 9;
    /// UNSUBSCRIBE.
    pub const UNSUBSCRIBE: u8 = 10;
    /// UNSUBACK.
    pub const UNSUBACK: u8 = 11;
    /// PINGREQ.
    pub const PINGREQ: u8 = 12;
    /// PINGRESP.
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 14;
    /// AUTH (MQTT 5).
    pub const AUTH: u8 = 15;
}

/// MQTT 5 property identifiers the tests look at.
pub mod property {
    /// Session Expiry Interval (four-byte integer).
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// Assigned Client Identifier (UTF-8 string).
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// Server Keep Alive (two-byte integer).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Receive Maximum (two-byte integer).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Maximum Packet Size (four-byte integer).
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Response Information (UTF-8 string).
    pub const RESPONSE_INFORMATION: u8 = 0x1a;
    /// Reason String (UTF-8 string).
    pub const REASON_STRING: u8 = 0x1f;
}

/// One packet as framed on the wire: the first byte (type and flags) and the bytes
/// after the remaining length.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Variable header and payload.
    pub body: Vec<u8>,
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [", self.name())?;
        for (i, b) in self.to_bytes().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        f.write_str("]")
    }
}

impl Packet {
    /// The packet type (see [`kind`]).
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    /// The fixed header flags (low nibble).
    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0f
    }

    /// The packet type's name, for messages.
    pub fn name(&self) -> &'static str {
        const NAMES: [&str; 16] = [
            "RESERVED",
            "CONNECT",
            "CONNACK",
            "PUBLISH",
            "PUBACK",
            "PUBREC",
            "PUBREL",
            "PUBCOMP",
            "SUBSCRIBE",
            "SUBACK",
            "UNSUBSCRIBE",
            "UNSUBACK",
            "PINGREQ",
            "PINGRESP",
            "DISCONNECT",
            "AUTH",
        ];
        NAMES[usize::from(self.kind())]
    }

    /// The packet re-framed: first byte, remaining length, body. For exact comparisons.
    pub fn to_bytes(&self) -> Vec<u8> {
        build::frame(self.first_byte, &self.body)
    }

    fn assert_kind(&self, kind: u8) {
        assert_eq!(self.kind(), kind, "unexpected packet {self:?}");
    }

    /// The packet identifier at the start of the body (acks, SUBACK, UNSUBACK).
    ///
    /// # Panics
    ///
    /// When the body is shorter than two bytes.
    pub fn packet_id(&self) -> u16 {
        assert!(self.body.len() >= 2, "no packet identifier in {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// The MQTT 5 reason code of an ack (PUBACK, PUBREC, PUBREL, PUBCOMP: the byte after
    /// the packet id) or of a DISCONNECT (the first byte); 0x00 when omitted, as the
    /// spec allows for success. Always 0x00 for MQTT 3.1.1 acks.
    pub fn reason_code(&self) -> u8 {
        match self.kind() {
            kind::DISCONNECT | kind::AUTH => self.body.first().copied().unwrap_or(0),
            kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
                self.body.get(2).copied().unwrap_or(0)
            }
            _ => panic!("{self:?} has no reason code"),
        }
    }

    /// The MQTT 5 properties of a CONNACK, an ack (PUBACK, PUBREC, PUBREL, PUBCOMP,
    /// SUBACK, UNSUBACK), a DISCONNECT or an AUTH; empty when the packet is short enough
    /// to leave them out, as the spec allows for acks and DISCONNECT.
    ///
    /// # Panics
    ///
    /// For other packets, or when the properties do not parse.
    pub fn properties(&self) -> Properties {
        let mut r = Reader::new(self);
        match self.kind() {
            kind::CONNACK => {
                r.take(2);
            }
            kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
                if self.body.len() <= 3 {
                    return Properties::default();
                }
                r.take(3);
            }
            kind::SUBACK | kind::UNSUBACK => {
                r.take(2);
            }
            kind::DISCONNECT | kind::AUTH => {
                if self.body.len() <= 1 {
                    return Properties::default();
                }
                r.take(1);
            }
            _ => panic!("{self:?} has no properties"),
        }
        r.properties()
    }

    /// Decodes a CONNACK.
    ///
    /// # Panics
    ///
    /// When this is not a well-formed CONNACK for `version`.
    pub fn connack(&self, version: Version) -> ConnAck {
        self.assert_kind(kind::CONNACK);
        assert_eq!(self.flags(), 0, "CONNACK flags must be 0: {self:?}");
        let mut r = Reader::new(self);
        let ack_flags = r.u8();
        assert_eq!(ack_flags & 0xfe, 0, "CONNACK reserved bits set: {self:?}");
        let code = r.u8();
        let properties = if version.is_v5() { r.properties() } else { Properties::default() };
        r.finish();
        ConnAck { session_present: ack_flags & 1 == 1, code, properties }
    }

    /// Decodes a PUBLISH.
    ///
    /// # Panics
    ///
    /// When this is not a well-formed PUBLISH for `version`.
    pub fn publish(&self, version: Version) -> PublishPacket {
        self.assert_kind(kind::PUBLISH);
        let qos = (self.first_byte >> 1) & 0x03;
        assert!(qos < 3, "PUBLISH with QoS 3: {self:?}");
        let mut r = Reader::new(self);
        let topic = r.string();
        let packet_id = (qos > 0).then(|| r.u16());
        assert_ne!(packet_id, Some(0), "PUBLISH with packet id 0: {self:?}");
        let properties = if version.is_v5() { r.properties() } else { Properties::default() };
        let payload = r.rest();
        PublishPacket {
            dup: self.first_byte & 0x08 != 0,
            qos,
            retain: self.first_byte & 0x01 != 0,
            topic,
            packet_id,
            properties,
            payload,
        }
    }

    /// Decodes a SUBACK: packet id and one return/reason code per filter.
    ///
    /// # Panics
    ///
    /// When this is not a well-formed SUBACK for `version`.
    pub fn suback(&self, version: Version) -> (u16, Vec<u8>) {
        self.assert_kind(kind::SUBACK);
        self.ack_with_codes(version)
    }

    /// Decodes an UNSUBACK: packet id and the MQTT 5 reason codes (none for 3.1.1).
    ///
    /// # Panics
    ///
    /// When this is not a well-formed UNSUBACK for `version`.
    pub fn unsuback(&self, version: Version) -> (u16, Vec<u8>) {
        self.assert_kind(kind::UNSUBACK);
        self.ack_with_codes(version)
    }

    fn ack_with_codes(&self, version: Version) -> (u16, Vec<u8>) {
        assert_eq!(self.flags(), 0, "reserved flags set: {self:?}");
        let mut r = Reader::new(self);
        let id = r.u16();
        if version.is_v5() {
            let _ = r.properties();
        }
        (id, r.rest())
    }
}

/// A decoded CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// Return code (3.1.1) or reason code (5.0).
    pub code: u8,
    /// MQTT 5 properties (empty for 3.1.1).
    pub properties: Properties,
}

/// A decoded PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPacket {
    /// DUP flag.
    pub dup: bool,
    /// QoS (0, 1 or 2).
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name.
    pub topic: String,
    /// Packet identifier (QoS 1 and 2).
    pub packet_id: Option<u16>,
    /// MQTT 5 properties (empty for 3.1.1).
    pub properties: Properties,
    /// Application payload.
    pub payload: Vec<u8>,
}

impl PublishPacket {
    /// The packet identifier of a QoS 1/2 delivery.
    ///
    /// # Panics
    ///
    /// For QoS 0.
    pub fn id(&self) -> u16 {
        self.packet_id.unwrap_or_else(|| panic!("QoS 0 PUBLISH has no packet id: {self:?}"))
    }
}

/// The value of one MQTT 5 property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// Byte.
    Byte(u8),
    /// Two-byte integer.
    U16(u16),
    /// Four-byte integer.
    U32(u32),
    /// Variable byte integer.
    VarInt(u32),
    /// UTF-8 string.
    String(String),
    /// Binary data.
    Binary(Vec<u8>),
    /// UTF-8 string pair (User Property).
    Pair(String, String),
}

/// MQTT 5 properties in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(u8, PropertyValue)>);

impl Properties {
    /// The first property with identifier `id`.
    pub fn get(&self, id: u8) -> Option<&PropertyValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// A two-byte integer property.
    pub fn u16(&self, id: u8) -> Option<u16> {
        match self.get(id)? {
            PropertyValue::U16(v) => Some(*v),
            other => panic!("property {id:#04x} is not a two-byte integer: {other:?}"),
        }
    }

    /// A four-byte integer property.
    pub fn u32(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            PropertyValue::U32(v) => Some(*v),
            other => panic!("property {id:#04x} is not a four-byte integer: {other:?}"),
        }
    }

    /// A UTF-8 string property.
    pub fn string(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            PropertyValue::String(v) => Some(v),
            other => panic!("property {id:#04x} is not a string: {other:?}"),
        }
    }
}

/// A cursor over a packet body that panics, naming the packet, when bytes run out.
struct Reader<'a> {
    packet: &'a Packet,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(packet: &'a Packet) -> Self {
        Self { packet, pos: 0 }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let body = &self.packet.body;
        assert!(self.pos + n <= body.len(), "truncated {:?}", self.packet);
        let bytes = &body[self.pos..self.pos + n];
        self.pos += n;
        bytes
    }

    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn varint(&mut self) -> u32 {
        let mut value = 0u32;
        for shift in [0, 7, 14, 21] {
            let b = self.u8();
            value |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return value;
            }
        }
        panic!("variable byte integer longer than 4 bytes in {:?}", self.packet)
    }

    fn binary(&mut self) -> Vec<u8> {
        let len = usize::from(self.u16());
        self.take(len).to_vec()
    }

    fn string(&mut self) -> String {
        let bytes = self.binary();
        String::from_utf8(bytes).unwrap_or_else(|_| panic!("invalid UTF-8 string in {:?}", self.packet))
    }

    fn rest(&mut self) -> Vec<u8> {
        let n = self.packet.body.len() - self.pos;
        self.take(n).to_vec()
    }

    fn finish(&self) {
        assert_eq!(self.pos, self.packet.body.len(), "trailing bytes in {:?}", self.packet);
    }

    fn properties(&mut self) -> Properties {
        let len = self.varint() as usize;
        let end = self.pos + len;
        let mut props = Vec::new();
        while self.pos < end {
            let id = self.u8();
            let value = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => PropertyValue::Byte(self.u8()),
                0x13 | 0x21 | 0x22 | 0x23 => PropertyValue::U16(self.u16()),
                0x02 | 0x11 | 0x18 | 0x27 => PropertyValue::U32(self.u32()),
                0x0b => PropertyValue::VarInt(self.varint()),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => PropertyValue::String(self.string()),
                0x09 | 0x16 => PropertyValue::Binary(self.binary()),
                0x26 => {
                    let k = self.string();
                    PropertyValue::Pair(k, self.string())
                }
                _ => panic!("unknown property {id:#04x} in {:?}", self.packet),
            };
            props.push((id, value));
        }
        assert_eq!(self.pos, end, "property block overruns its length in {:?}", self.packet);
        Properties(props)
    }
}
