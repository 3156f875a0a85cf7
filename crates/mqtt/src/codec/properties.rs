//! MQTT 5 property blocks scanned for a property included twice: the spec makes that a
//! Protocol Error (0x82) for every property but User Property, while `rmqtt-codec`
//! reports it as a Malformed Packet (0x81), indistinguishable from a bad length. Also
//! reads a CONNECT's Maximum Packet Size before the codec decodes it, so a CONNECT the
//! codec refuses can still be answered within the client's limit, and tells a packet
//! whose body is still arriving, so that both scans see whole packets; and finds the
//! properties whose presence or value is a Protocol Error the codec would also report as
//! malformed (a client's Subscription Identifier, a request flag other than 0 or 1).

use crate::ProtocolError;

/// User Property: the only property a client may repeat.
const USER_PROPERTY: u8 = 0x26;
/// Maximum Packet Size (a four-byte integer).
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
/// Subscription Identifier (a variable byte integer).
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;
/// Request Problem Information (a byte, 0 or 1).
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
/// Request Response Information (a byte, 0 or 1).
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;

/// True when the complete MQTT 5 packet at the start of `buf`, at most `max` bytes long
/// after its fixed header (0: no limit), includes a property more than once. False when
/// the packet is not complete yet, too large, or cannot be parsed this far: the codec
/// then reports what is wrong with it.
pub(super) fn has_duplicate_property(buf: &[u8], max: u32) -> bool {
    scan(buf, max).unwrap_or(false)
}

/// A property of the complete MQTT 5 packet at the start of `buf` (at most `max` bytes
/// after its fixed header; 0: no limit) whose presence or value the spec makes a
/// Protocol Error but `rmqtt-codec` reports as a Malformed Packet: a Subscription
/// Identifier in a client's PUBLISH, whatever its value ([MQTT-3.3.4-6]), and a CONNECT's
/// Request Problem / Response Information other than 0 or 1. `None` when there is none,
/// or the packet is incomplete or cannot be read this far.
pub(super) fn bad_property(buf: &[u8], max: u32) -> Option<ProtocolError> {
    let (first, body) = packet(buf, max)?;
    let mut r = Reader(body);
    let mut bad = None;
    match first >> 4 {
        1 => {
            r.binary()?;
            r.skip(4)?; // level, flags, keep-alive
            r.properties(|id, value| {
                if let (REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION, &[v]) = (id, value)
                    && v > 1
                {
                    bad = bad.or(Some(ProtocolError::BadRequestFlag { id, value: v }));
                }
            })?;
        }
        3 => {
            r.binary()?;
            if first & 0x06 != 0 {
                r.skip(2)?;
            }
            r.properties(|id, _| {
                if id == SUBSCRIPTION_IDENTIFIER {
                    bad = Some(ProtocolError::SubscriptionIdFromClient);
                }
            })?;
        }
        _ => {}
    }
    bad
}

/// The Maximum Packet Size in the property block of the complete MQTT 5 CONNECT at the
/// start of `buf` (at most `max` bytes after its fixed header; 0: no limit): `Some(0)`
/// when the block has none, `None` when the packet is incomplete, not a CONNECT, or its
/// block cannot be read.
pub(super) fn connect_maximum_packet_size(buf: &[u8], max: u32) -> Option<u32> {
    let (first, body) = packet(buf, max)?;
    if first != 0x10 {
        return None;
    }
    let mut r = Reader(body);
    r.binary()?;
    r.skip(4)?; // level, flags, keep-alive
    let mut found = 0;
    r.properties(|id, value| {
        if id == MAXIMUM_PACKET_SIZE {
            found = u32::from_be_bytes(value.try_into().unwrap_or_default());
        }
    })?;
    Some(found)
}

/// True when `buf` holds a packet's whole fixed header, its remaining length at most
/// `max` (0: no limit), but not all of its body yet.
pub(super) fn is_partial(buf: &[u8], max: u32) -> bool {
    let Some((len, n)) = buf.get(1..).and_then(varint) else { return false };
    (max == 0 || len <= max) && usize::try_from(len).is_ok_and(|len| buf.len() < 1 + n + len)
}

/// The first byte and the body of the complete packet at the start of `buf`, when its
/// remaining length is at most `max` (0: no limit).
fn packet(buf: &[u8], max: u32) -> Option<(u8, &[u8])> {
    let (&first, rest) = buf.split_first()?;
    let (len, n) = varint(rest)?;
    if max > 0 && len > max {
        return None;
    }
    Some((first, rest.get(n..n.checked_add(usize::try_from(len).ok()?)?)?))
}

fn scan(buf: &[u8], max: u32) -> Option<bool> {
    let (first, body) = packet(buf, max)?;
    let mut r = Reader(body);
    match first >> 4 {
        // CONNECT: protocol name, level, flags, keep-alive, properties; then the client
        // id and, with a will, the will properties
        1 => {
            r.binary()?;
            r.skip(1)?;
            let flags = r.byte()?;
            r.skip(2)?;
            if r.duplicate_property()? {
                return Some(true);
            }
            if flags & 0x04 == 0 {
                return Some(false);
            }
            r.binary()?;
            r.duplicate_property()
        }
        // PUBLISH: topic, packet id when QoS > 0, properties
        3 => {
            r.binary()?;
            if first & 0x06 != 0 {
                r.skip(2)?;
            }
            r.duplicate_property()
        }
        // PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then reason code and properties
        // only when the remaining length says so
        4..=7 => {
            r.skip(2)?;
            if r.0.len() < 2 {
                return Some(false);
            }
            r.skip(1)?;
            r.duplicate_property()
        }
        // SUBSCRIBE, UNSUBSCRIBE: packet id, properties
        8 | 10 => {
            r.skip(2)?;
            r.duplicate_property()
        }
        // DISCONNECT, AUTH: reason code and properties, when present
        14 | 15 => {
            if r.0.len() < 2 {
                return Some(false);
            }
            r.skip(1)?;
            r.duplicate_property()
        }
        _ => Some(false),
    }
}

/// A variable byte integer and how many bytes it took; `None` when incomplete or
/// longer than four bytes.
fn varint(buf: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A two-byte length and that many bytes (a UTF-8 string or binary data).
    fn binary(&mut self) -> Option<()> {
        let len = u16::from_be_bytes([self.byte()?, self.byte()?]);
        self.skip(usize::from(len))
    }

    /// Reads a property block; true when it includes a property twice. `None` when it
    /// is cut short or holds an unknown property (the codec reports those).
    fn duplicate_property(&mut self) -> Option<bool> {
        let mut seen = 0u128;
        let mut twice = false;
        self.properties(|id, _| {
            let bit = 1u128 << id;
            twice |= id != USER_PROPERTY && seen & bit != 0;
            seen |= bit;
        })?;
        Some(twice)
    }

    /// Reads a property block, calling `visit` with each property's identifier and
    /// value bytes. `None` when it is cut short or holds an unknown property.
    fn properties(&mut self, mut visit: impl FnMut(u8, &[u8])) -> Option<()> {
        let (len, n) = varint(self.0)?;
        self.skip(n)?;
        let block = self.0.get(..usize::try_from(len).ok()?)?;
        self.skip(block.len())?;
        let mut props = Reader(block);
        while let Some(id) = props.0.first().copied() {
            props.skip(1)?;
            let start = props.0;
            match id {
                // byte
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => props.skip(1)?,
                // two-byte integer
                0x13 | 0x21 | 0x22 | 0x23 => props.skip(2)?,
                // four-byte integer
                0x02 | 0x11 | 0x18 | MAXIMUM_PACKET_SIZE => props.skip(4)?,
                // variable byte integer (Subscription Identifier)
                0x0b => props.skip(varint(props.0)?.1)?,
                // UTF-8 string or binary data
                0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => props.binary()?,
                // string pair
                USER_PROPERTY => {
                    props.binary()?;
                    props.binary()?;
                }
                _ => return None,
            }
            visit(id, &start[..start.len() - props.0.len()]);
        }
        Some(())
    }
}
