//! Framing over `rmqtt-codec`: detects the protocol level from CONNECT, enforces the
//! maximum packet size, converts wire packets to and from [`Inbound`] / [`Outbound`],
//! and checks the spec rules the codec leaves to us.

use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::{Publish as WirePublish, QoS as WireQoS};
use rmqtt_codec::version::{ProtocolVersion as WireVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use telehub_core::{ClientId, Message, MessageProperties, QoS, TopicName};
use tokio_util::codec::{Decoder as _, Encoder as _};

use crate::ProtocolError;
use crate::packet::{
    ConnAckCode, Connect, Inbound, Outbound, ProtocolVersion, PublishIn, SubAckCode, SubOptions, Will,
};

mod properties;

const CONNECT: u8 = 0x10;

fn qos_in(q: WireQoS) -> QoS {
    match q {
        WireQoS::AtMostOnce => QoS::AtMostOnce,
        WireQoS::AtLeastOnce => QoS::AtLeastOnce,
        WireQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_out(q: QoS) -> WireQoS {
    match q {
        QoS::AtMostOnce => WireQoS::AtMostOnce,
        QoS::AtLeastOnce => WireQoS::AtLeastOnce,
        QoS::ExactlyOnce => WireQoS::ExactlyOnce,
    }
}

fn pid(id: u16) -> NonZeroU16 {
    // Packet ids come from the session, which never hands out 0 ([MQTT-2.3.1-1]).
    debug_assert!(id != 0, "packet id 0 is invalid");
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

enum State {
    Detect,
    V3(v3::Codec, ProtocolVersion),
    V5(v5::Codec),
}

/// Turns the bytes a client sends into [`Inbound`] packets.
///
/// The first packet must be CONNECT ([MQTT-3.1.0-1]); its protocol level picks the
/// MQTT 3.x or 5.0 decoder for the rest of the connection.
pub struct Decoder {
    state: State,
    max_packet_size: u32,
    /// Whether CONNECT has been decoded.
    connected: bool,
    /// The MQTT 5 CONNECT's Maximum Packet Size, read before the codec decodes it.
    connect_max_packet_size: Option<u32>,
}

impl Decoder {
    /// A decoder that refuses packets whose remaining length exceeds `max_packet_size`.
    pub fn new(max_packet_size: u32) -> Self {
        Self { state: State::Detect, max_packet_size, connected: false, connect_max_packet_size: None }
    }

    /// The protocol level, once the CONNECT's protocol name and level have been read:
    /// also when the rest of that CONNECT then fails to decode, so that an MQTT 5 client
    /// can be refused with a CONNACK saying why (§3.1.4, §4.13). 3.x reads as 3.1.1 until
    /// the CONNECT has been decoded.
    pub fn version(&self) -> Option<ProtocolVersion> {
        match self.state {
            State::Detect => None,
            State::V3(_, v) => Some(v),
            State::V5(_) => Some(ProtocolVersion::V5),
        }
    }

    /// The Maximum Packet Size of the client's MQTT 5 CONNECT, read from its bytes before
    /// they are decoded, so known also when that CONNECT fails to decode: `Some(0)` when
    /// it gave none, `None` when it could not be read (or for 3.x). A CONNACK refusing
    /// the CONNECT must fit it ([MQTT-3.2.2-19]).
    pub fn connect_maximum_packet_size(&self) -> Option<u32> {
        self.connect_max_packet_size
    }

    /// Decodes the next packet from `buf`, or `None` when more bytes are needed.
    ///
    /// # Errors
    ///
    /// [`ProtocolError`] for anything that is not a valid packet; the connection must
    /// then be closed, as the stream can no longer be framed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, ProtocolError> {
        if let State::Detect = self.state {
            let Some(&first) = buf.first() else { return Ok(None) };
            if first >> 4 != CONNECT >> 4 {
                return Err(ProtocolError::FirstPacketNotConnect);
            }
            if first != CONNECT {
                return Err(ProtocolError::MalformedPacket); // [MQTT-2.2.2-2] reserved flags
            }
            match VersionCodec.decode(buf) {
                Ok(None) => return Ok(None),
                Ok(Some(WireVersion::MQTT3)) => {
                    self.state = State::V3(v3::Codec::new(self.max_packet_size), ProtocolVersion::V3_1_1);
                }
                Ok(Some(WireVersion::MQTT5)) => {
                    self.state = State::V5(v5::Codec::new(self.max_packet_size, 0));
                }
                Err(DecodeError::InvalidLength) => return Err(ProtocolError::MalformedPacket),
                Err(_) => return Err(ProtocolError::UnsupportedProtocol),
            }
        }
        match &mut self.state {
            State::Detect => Ok(None),
            State::V3(codec, version) => {
                let Some((packet, _)) = codec.decode(buf)? else { return Ok(None) };
                let inbound = v3_in(packet)?;
                if let Inbound::Connect(c) = &inbound {
                    *version = c.version;
                    self.connected = true;
                }
                Ok(Some(inbound))
            }
            // the scans below read whole packets from their first byte, but the codec
            // consumes a fixed header as soon as it has one: it gets whole packets only
            State::V5(_) if properties::is_partial(buf, self.max_packet_size) => Ok(None),
            State::V5(codec) => {
                if !self.connected {
                    // once per connection, on the CONNECT only
                    self.connect_max_packet_size =
                        properties::connect_maximum_packet_size(buf, self.max_packet_size);
                }
                // [MQTT-3.3.2.3.2] and the like: a property included twice is a Protocol
                // Error, which the codec would report as Malformed Packet
                if properties::has_duplicate_property(buf, self.max_packet_size) {
                    return Err(ProtocolError::DuplicateProperty);
                }
                // and a property the spec forbids there, or a value it forbids
                if let Some(e) = properties::bad_property(buf, self.max_packet_size) {
                    return Err(e);
                }
                let Some((packet, _)) = codec.decode(buf)? else { return Ok(None) };
                let inbound = v5_in(packet)?;
                self.connected |= matches!(inbound, Inbound::Connect(_));
                Ok(Some(inbound))
            }
        }
    }
}

/// A copy of `s` in an allocation of its own. What a packet leaves behind for the life of
/// a connection or a subscription (client id, will, topic filters) must not keep alive
/// the whole read buffer it was decoded from (several KB per idle connection otherwise).
/// PUBLISH topics and payloads stay zero-copy: they are gone once delivered.
fn own(s: &str) -> ByteString {
    ByteString::from(s)
}

/// The UTF-8 strings the broker acts on (client id, user name, topic names and filters)
/// must not hold U+0000 ([MQTT-1.5.4-2]; 3.1.1: [MQTT-1.5.3-2]); `rmqtt-codec` lets it
/// through. PUBLISH payloads are never scanned, and the other strings (properties) are
/// only passed on.
fn has_null(s: &str) -> bool {
    // `<[u8]>::contains` for bytes is a memchr
    s.as_bytes().contains(&0)
}

/// [`has_null`] for the strings of a CONNECT: client id, user name, will topic.
fn refuse_null_in_connect(
    client_id: &str,
    username: Option<&str>,
    will_topic: Option<&str>,
) -> Result<(), ProtocolError> {
    if has_null(client_id) || username.is_some_and(has_null) || will_topic.is_some_and(has_null) {
        return Err(ProtocolError::NullCharacter);
    }
    Ok(())
}

/// [`own`] for bytes.
fn own_bytes(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}

fn will_message(topic: &str, payload: &[u8], qos: WireQoS, retain: bool) -> Result<Message, ProtocolError> {
    Ok(Message {
        // [MQTT-3.1.2-?] the will topic is a topic name: no wildcards
        topic: TopicName::new(own(topic)).map_err(|_| ProtocolError::InvalidTopicName)?,
        payload: own_bytes(payload),
        qos: qos_in(qos),
        retain,
        properties: MessageProperties::default(),
    })
}

fn v3_in(packet: v3::Packet) -> Result<Inbound, ProtocolError> {
    use v3::Packet as P;
    Ok(match packet {
        P::Connect(c) => {
            refuse_null_in_connect(
                &c.client_id,
                c.username.as_deref(),
                c.last_will.as_ref().map(|w| &*w.topic),
            )?;
            let version = match c.protocol.level() {
                3 => ProtocolVersion::V3_1,
                4 => ProtocolVersion::V3_1_1,
                _ => return Err(ProtocolError::UnsupportedProtocol),
            };
            let will = match c.last_will {
                Some(w) => Some(Will {
                    message: will_message(&w.topic, &w.message, w.qos, w.retain)?,
                    delay: Duration::ZERO,
                }),
                None => None,
            };
            Inbound::Connect(Box::new(Connect {
                version,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: ClientId::new(own(&c.client_id)),
                username: c.username.as_deref().map(own),
                password: c.password.as_deref().map(own_bytes),
                will,
                session_expiry: 0,
                receive_maximum: u16::MAX,
                maximum_packet_size: None,
                topic_alias_maximum: 0,
                request_problem_information: true,
                request_response_information: false,
            }))
        }
        P::Publish(p) if has_null(&p.topic) => return Err(ProtocolError::NullCharacter),
        P::Publish(p) => Inbound::Publish(Box::new(PublishIn {
            topic: p.topic,
            packet_id: p.packet_id.map(NonZeroU16::get),
            qos: qos_in(p.qos),
            retain: p.retain,
            dup: p.dup,
            payload: p.payload,
            properties: MessageProperties::default(),
            topic_alias: None,
        })),
        P::PublishAck { packet_id } => Inbound::PubAck(packet_id.get()),
        P::PublishReceived { packet_id } => Inbound::PubRec(packet_id.get()),
        P::PublishRelease { packet_id } => Inbound::PubRel(packet_id.get()),
        P::PublishComplete { packet_id } => Inbound::PubComp(packet_id.get()),
        P::Subscribe { topic_filters, .. } if topic_filters.iter().any(|(f, _)| has_null(f)) => {
            return Err(ProtocolError::NullCharacter);
        }
        P::Unsubscribe { topic_filters, .. } if topic_filters.iter().any(|f| has_null(f)) => {
            return Err(ProtocolError::NullCharacter);
        }
        P::Subscribe { packet_id, topic_filters } => Inbound::Subscribe {
            packet_id: packet_id.get(),
            filters: topic_filters
                .into_iter()
                .map(|(f, q)| (own(&f), SubOptions::with_qos(qos_in(q))))
                .collect(),
            subscription_id: None,
        },
        P::Unsubscribe { packet_id, topic_filters } => {
            Inbound::Unsubscribe { packet_id: packet_id.get(), filters: topic_filters }
        }
        P::PingRequest => Inbound::PingReq,
        P::Disconnect => Inbound::Disconnect { reason: 0, session_expiry: None },
        P::ConnectAck(_) | P::SubscribeAck { .. } | P::UnsubscribeAck { .. } | P::PingResponse => {
            Inbound::ServerOnly
        }
    })
}

fn properties_in(p: v5::PublishProperties) -> MessageProperties {
    MessageProperties {
        is_utf8_payload: p.is_utf8_payload,
        message_expiry: p.message_expiry_interval.map(|s| Duration::from_secs(u64::from(s.get()))),
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    }
}

fn v5_in(packet: v5::Packet) -> Result<Inbound, ProtocolError> {
    use v5::Packet as P;
    Ok(match packet {
        P::Connect(c) => {
            refuse_null_in_connect(
                &c.client_id,
                c.username.as_deref(),
                c.last_will.as_ref().map(|w| &*w.topic),
            )?;
            let will = match c.last_will {
                Some(w) => {
                    let mut message = will_message(&w.topic, &w.message, w.qos, w.retain)?;
                    message.properties = MessageProperties {
                        is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                        message_expiry: w
                            .message_expiry_interval
                            .map(|s| Duration::from_secs(u64::from(s.get()))),
                        content_type: w.content_type.as_deref().map(own),
                        response_topic: w.response_topic.as_deref().map(own),
                        correlation_data: w.correlation_data.as_deref().map(own_bytes),
                        user_properties: w.user_properties.iter().map(|(k, v)| (own(k), own(v))).collect(),
                    };
                    let delay = Duration::from_secs(u64::from(w.will_delay_interval_sec.unwrap_or(0)));
                    Some(Will { message, delay })
                }
                None => None,
            };
            Inbound::Connect(Box::new(Connect {
                version: ProtocolVersion::V5,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                client_id: ClientId::new(own(&c.client_id)),
                username: c.username.as_deref().map(own),
                password: c.password.as_deref().map(own_bytes),
                will,
                session_expiry: c.session_expiry_interval_secs,
                receive_maximum: c.receive_max.map_or(u16::MAX, NonZeroU16::get),
                maximum_packet_size: c.max_packet_size.map(NonZeroU32::get),
                topic_alias_maximum: c.topic_alias_max,
                // the codec refuses values other than 0 and 1 (§3.1.2.11.6, §3.1.2.11.7)
                request_problem_information: c.request_problem_info,
                request_response_information: c.request_response_info,
            }))
        }
        P::Publish(p) => {
            let mut props = p.properties.unwrap_or_default();
            let topic_alias = props.topic_alias.take().map(NonZeroU16::get);
            if p.topic.is_empty() && topic_alias.is_none() {
                return Err(ProtocolError::EmptyTopicWithoutAlias); // [MQTT-3.3.2.3.4]
            }
            if !props.subscription_ids.is_empty() {
                return Err(ProtocolError::SubscriptionIdFromClient); // [MQTT-3.3.4-6]
            }
            if has_null(&p.topic) {
                return Err(ProtocolError::NullCharacter);
            }
            Inbound::Publish(Box::new(PublishIn {
                topic: p.topic,
                packet_id: p.packet_id.map(NonZeroU16::get),
                qos: qos_in(p.qos),
                retain: p.retain,
                dup: p.dup,
                payload: p.payload,
                properties: properties_in(props),
                topic_alias,
            }))
        }
        P::PublishAck(a) => Inbound::PubAck(a.packet_id.get()),
        P::PublishReceived(a) => Inbound::PubRec(a.packet_id.get()),
        P::PublishRelease(a) => Inbound::PubRel(a.packet_id.get()),
        P::PublishComplete(a) => Inbound::PubComp(a.packet_id.get()),
        // [MQTT-4.7.3-1] a topic filter is at least one character long; the 3.x codec
        // refuses an empty one, the 5.0 codec does not
        P::Subscribe(s) if s.topic_filters.iter().any(|(f, _)| f.is_empty()) => {
            return Err(ProtocolError::MalformedPacket);
        }
        P::Unsubscribe(u) if u.topic_filters.iter().any(|f| f.is_empty()) => {
            return Err(ProtocolError::MalformedPacket);
        }
        P::Subscribe(s) if s.topic_filters.iter().any(|(f, _)| has_null(f)) => {
            return Err(ProtocolError::NullCharacter);
        }
        P::Unsubscribe(u) if u.topic_filters.iter().any(|f| has_null(f)) => {
            return Err(ProtocolError::NullCharacter);
        }
        P::Subscribe(s) => Inbound::Subscribe {
            packet_id: s.packet_id.get(),
            filters: s
                .topic_filters
                .into_iter()
                .map(|(f, o)| {
                    let opts = SubOptions {
                        qos: qos_in(o.qos),
                        no_local: o.no_local,
                        retain_as_published: o.retain_as_published,
                        retain_handling: o.retain_handling as u8,
                    };
                    (own(&f), opts)
                })
                .collect(),
            subscription_id: s.id.map(NonZeroU32::get),
        },
        P::Unsubscribe(u) => Inbound::Unsubscribe { packet_id: u.packet_id.get(), filters: u.topic_filters },
        P::PingRequest => Inbound::PingReq,
        P::Disconnect(d) => Inbound::Disconnect {
            reason: d.reason_code as u8,
            session_expiry: d.session_expiry_interval_secs,
        },
        P::Auth(_) => Inbound::Auth,
        P::ConnectAck(_) | P::SubscribeAck(_) | P::UnsubscribeAck(_) | P::PingResponse => Inbound::ServerOnly,
    })
}

enum WireEncoder {
    V3(v3::Codec),
    V5(v5::Codec),
}

/// Turns [`Outbound`] packets into bytes for a client of a given protocol level.
pub struct Encoder {
    codec: WireEncoder,
    /// MQTT 5 topic aliases we assigned towards this client (server → client).
    aliases: Option<TopicAliases>,
    /// The client's MQTT 5 Maximum Packet Size, whole packets (0: none).
    max_packet_size: u32,
    /// MQTT 5 Request Problem Information of the client ([MQTT-3.1.2-29]).
    problem_information: bool,
}

/// Topic aliases of one connection: the first `max` distinct topics sent get an alias,
/// sent with the topic the first time and with an empty topic after that
/// ([MQTT-3.3.2-12]); later topics go without one. Aliases live as long as the
/// connection ([MQTT-3.3.2-7]), so a new connection starts with a new encoder.
struct TopicAliases {
    max: u16,
    by_topic: HashMap<TopicName, u16>,
}

impl Encoder {
    /// An encoder for `version`. `max_packet_size` is the client's MQTT 5 Maximum Packet
    /// Size (0 for none).
    pub fn new(version: ProtocolVersion, max_packet_size: u32) -> Self {
        let codec = if version.is_v5() {
            // no limit in the codec: `encode` checks whole packets against the client's
            // maximum itself (the codec would compare the remaining length only)
            WireEncoder::V5(v5::Codec::new(0, 0))
        } else {
            WireEncoder::V3(v3::Codec::new(0))
        };
        Self { codec, aliases: None, max_packet_size, problem_information: true }
    }

    /// Applies the client's MQTT 5 Request Problem Information: when false, no Reason
    /// String goes on anything but PUBLISH, CONNACK and DISCONNECT ([MQTT-3.1.2-29]).
    pub fn with_problem_information(mut self, requested: bool) -> Self {
        self.problem_information = requested;
        self
    }

    /// Lets the encoder assign up to `max` topic aliases (the client's MQTT 5 Topic Alias
    /// Maximum; 0 or a 3.x client: none).
    pub fn with_topic_aliases(mut self, max: u16) -> Self {
        if max > 0 && matches!(self.codec, WireEncoder::V5(_)) {
            self.aliases = Some(TopicAliases { max, by_topic: HashMap::new() });
        }
        self
    }

    /// Appends the encoding of `packet` to `buf`. A DISCONNECT to a 3.x client encodes to
    /// nothing: 3.x has no server DISCONNECT; nor does a CONNACK with a code 3.x lacks
    /// (see [`ConnAckCode`]). A Reason String is left out when the
    /// client asked for no problem information ([MQTT-3.1.2-29]) or when it would take
    /// the packet over the client's Maximum Packet Size ([MQTT-3.2.2-19], [MQTT-3.4.2-2],
    /// [MQTT-3.5.2-2], [MQTT-3.7.2-2], [MQTT-3.9.2-1], [MQTT-3.11.2-1], [MQTT-3.14.2-3]).
    ///
    /// # Errors
    ///
    /// The codec's [`EncodeError`], or [`EncodeError::OverMaxPacketSize`] for a packet
    /// over the client's Maximum Packet Size ([MQTT-3.1.2-24]); `buf` is then unchanged.
    pub fn encode(&mut self, packet: Outbound, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match &mut self.codec {
            WireEncoder::V3(codec) => match v3_out(packet) {
                Some(p) => codec.encode(p, buf),
                None => Ok(()),
            },
            WireEncoder::V5(codec) => {
                let mut wire = v5_out(packet);
                if !self.problem_information {
                    strip_problem_information(&mut wire);
                }
                let assigned = match (&mut wire, &mut self.aliases) {
                    (v5::Packet::Publish(p), Some(aliases)) => aliases.apply(p),
                    _ => None,
                };
                // only packets that say why something failed carry a reason string, so
                // the copy is made on error paths only
                let has_reason = reason_string_of(&mut wire).is_some_and(|r| r.is_some());
                let without_reason = (self.max_packet_size > 0 && has_reason).then(|| {
                    let mut bare = wire.clone();
                    take_reason_string(&mut bare);
                    bare
                });
                let mut result = encode_within(codec, wire, self.max_packet_size, buf);
                if let (Err(EncodeError::OverMaxPacketSize { .. }), Some(bare)) = (&result, without_reason) {
                    result = encode_within(codec, bare, self.max_packet_size, buf);
                }
                if let (Err(_), Some(topic), Some(aliases)) = (&result, assigned, &mut self.aliases) {
                    // the client never saw this alias defined: forget it
                    aliases.by_topic.remove(&topic);
                }
                result
            }
        }
    }
}

/// Encodes `wire` and refuses it when the whole packet (fixed header included) is over
/// `max` bytes (0: no limit), leaving `buf` as it was.
fn encode_within(
    codec: &mut v5::Codec,
    wire: v5::Packet,
    max: u32,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = buf.len();
    codec.encode(wire, buf)?;
    let size = buf.len() - start;
    if max > 0 && size > max as usize {
        buf.truncate(start);
        return Err(EncodeError::OverMaxPacketSize { size: u32::try_from(size).unwrap_or(u32::MAX), max });
    }
    Ok(())
}

/// The reason string of a packet that can carry one.
fn reason_string_of(wire: &mut v5::Packet) -> Option<&mut Option<ByteString>> {
    use v5::Packet as P;
    match wire {
        P::ConnectAck(a) => Some(&mut a.reason_string),
        P::PublishAck(a) | P::PublishReceived(a) => Some(&mut a.reason_string),
        P::PublishRelease(a) | P::PublishComplete(a) => Some(&mut a.reason_string),
        P::SubscribeAck(a) => Some(&mut a.reason_string),
        P::UnsubscribeAck(a) => Some(&mut a.reason_string),
        P::Disconnect(d) => Some(&mut d.reason_string),
        _ => None,
    }
}

fn take_reason_string(wire: &mut v5::Packet) {
    if let Some(reason) = reason_string_of(wire) {
        *reason = None;
    }
}

/// [MQTT-3.1.2-29] with Request Problem Information 0, only PUBLISH, CONNACK and
/// DISCONNECT may carry a Reason String (we send User Properties on PUBLISH only).
fn strip_problem_information(wire: &mut v5::Packet) {
    if !matches!(wire, v5::Packet::Publish(_) | v5::Packet::ConnectAck(_) | v5::Packet::Disconnect(_)) {
        take_reason_string(wire);
    }
}

impl TopicAliases {
    /// Puts the alias into `p`: an empty topic when the alias is known, the topic and a
    /// new alias while there is room. Returns the topic when it got a new alias.
    fn apply(&mut self, p: &mut WirePublish) -> Option<TopicName> {
        let topic = TopicName::new(p.topic.clone()).ok()?;
        let props = p.properties.get_or_insert_with(v5::PublishProperties::default);
        if let Some(&alias) = self.by_topic.get(&topic) {
            props.topic_alias = NonZeroU16::new(alias);
            p.topic = ByteString::new();
            return None;
        }
        let next = u16::try_from(self.by_topic.len()).ok()?.checked_add(1)?;
        if next > self.max {
            return None;
        }
        props.topic_alias = NonZeroU16::new(next);
        self.by_topic.insert(topic.clone(), next);
        Some(topic)
    }
}

fn wire_publish(
    message: &Message,
    qos: QoS,
    packet_id: Option<u16>,
    retain: bool,
    dup: bool,
    properties: Option<v5::PublishProperties>,
) -> WirePublish {
    WirePublish {
        dup,
        retain,
        qos: qos_out(qos),
        topic: message.topic.to_byte_string(),
        packet_id: packet_id.map(pid),
        payload: message.payload.clone(),
        properties,
    }
}

fn v3_out(packet: Outbound) -> Option<v3::Packet> {
    use v3::Packet as P;
    Some(match packet {
        Outbound::ConnAck { session_present, code, .. } => {
            let return_code = match code {
                ConnAckCode::Success => v3::ConnectAckReason::ConnectionAccepted,
                ConnAckCode::ClientIdRejected | ConnAckCode::KeepAliveTooLong => {
                    v3::ConnectAckReason::IdentifierRejected
                }
                ConnAckCode::UnsupportedProtocol => v3::ConnectAckReason::UnacceptableProtocolVersion,
                ConnAckCode::BadCredentials => v3::ConnectAckReason::BadUserNameOrPassword,
                ConnAckCode::NotAuthorized | ConnAckCode::ConnectionRate => {
                    v3::ConnectAckReason::NotAuthorized
                }
                ConnAckCode::ServerUnavailable => v3::ConnectAckReason::ServiceUnavailable,
                // 3.x has no code for these: the connection is closed without CONNACK
                ConnAckCode::MalformedPacket
                | ConnAckCode::ProtocolError
                | ConnAckCode::TopicNameInvalid
                | ConnAckCode::PacketTooLarge => return None,
            };
            // [MQTT-3.2.2-4] session present is 0 when the return code is not 0
            let session_present = session_present && code == ConnAckCode::Success;
            P::ConnectAck(v3::ConnectAck { return_code, session_present })
        }
        Outbound::Publish { message, qos, packet_id, retain, dup, .. } => {
            P::Publish(Box::new(wire_publish(&message, qos, packet_id, retain, dup, None)))
        }
        Outbound::PubAck(id, ..) => P::PublishAck { packet_id: pid(id) },
        Outbound::PubRec(id, ..) => P::PublishReceived { packet_id: pid(id) },
        Outbound::PubRel(id) => P::PublishRelease { packet_id: pid(id) },
        Outbound::PubComp(id, ..) => P::PublishComplete { packet_id: pid(id) },
        Outbound::SubAck(id, codes, _) => P::SubscribeAck {
            packet_id: pid(id),
            status: codes
                .into_iter()
                .map(|c| match c {
                    SubAckCode::Granted(q) => v3::SubscribeReturnCode::Success(qos_out(q)),
                    _ => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Outbound::UnsubAck(id, ..) => P::UnsubscribeAck { packet_id: pid(id) },
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(..) => return None,
    })
}

fn properties_out(p: &MessageProperties) -> v5::PublishProperties {
    v5::PublishProperties {
        topic_alias: None,
        correlation_data: p.correlation_data.clone(),
        message_expiry_interval: p
            .message_expiry
            .and_then(|d| NonZeroU32::new(u32::try_from(d.as_secs()).unwrap_or(u32::MAX))),
        content_type: p.content_type.clone(),
        user_properties: p.user_properties.clone(),
        is_utf8_payload: p.is_utf8_payload,
        response_topic: p.response_topic.clone(),
        subscription_ids: Vec::new(),
    }
}

fn v5_out(packet: Outbound) -> v5::Packet {
    use v5::Packet as P;
    match packet {
        Outbound::ConnAck {
            session_present,
            code,
            assigned_client_id,
            server_keep_alive,
            receive_maximum,
            maximum_packet_size,
            topic_alias_maximum,
            reason_string,
        } => {
            let reason_code = match code {
                ConnAckCode::Success => v5::ConnectAckReason::Success,
                ConnAckCode::ClientIdRejected => v5::ConnectAckReason::ClientIdentifierNotValid,
                ConnAckCode::UnsupportedProtocol => v5::ConnectAckReason::UnsupportedProtocolVersion,
                ConnAckCode::BadCredentials => v5::ConnectAckReason::BadUserNameOrPassword,
                ConnAckCode::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                ConnAckCode::ServerUnavailable => v5::ConnectAckReason::ServerUnavailable,
                ConnAckCode::ConnectionRate => v5::ConnectAckReason::ConnectionRateExceeded,
                ConnAckCode::KeepAliveTooLong => v5::ConnectAckReason::ImplementationSpecificError,
                ConnAckCode::MalformedPacket => v5::ConnectAckReason::MalformedPacket,
                ConnAckCode::ProtocolError => v5::ConnectAckReason::ProtocolError,
                ConnAckCode::TopicNameInvalid => v5::ConnectAckReason::TopicNameInvalid,
                ConnAckCode::PacketTooLarge => v5::ConnectAckReason::PacketTooLarge,
            };
            P::ConnectAck(Box::new(v5::ConnectAck {
                session_present: session_present && code == ConnAckCode::Success,
                reason_code,
                assigned_client_id: assigned_client_id.map(|c| c.to_byte_string()),
                server_keepalive_sec: server_keep_alive,
                receive_max: NonZeroU16::new(receive_maximum).unwrap_or(NonZeroU16::MAX),
                // [MQTT-3.2.2.3.6] zero is a protocol error: 0 means "no limit", sent as absent
                max_packet_size: (maximum_packet_size > 0).then_some(maximum_packet_size),
                shared_subscription_available: true,
                subscription_identifiers_available: true,
                topic_alias_max: topic_alias_maximum,
                reason_string: reason_string.map(ByteString::from),
                ..v5::ConnectAck::default()
            }))
        }
        Outbound::Publish { message, qos, packet_id, retain, dup, subscription_ids, message_expiry } => {
            let props = (!message.properties.is_empty() || !subscription_ids.is_empty()).then(|| {
                let mut props = properties_out(&message.properties);
                props.subscription_ids = subscription_ids.into_iter().filter_map(NonZeroU32::new).collect();
                if let Some(left) = message_expiry {
                    // [MQTT-3.3.2-6] forward what is left of the interval
                    props.message_expiry_interval =
                        NonZeroU32::new(u32::try_from(left.as_secs()).unwrap_or(u32::MAX).max(1));
                }
                props
            });
            P::Publish(Box::new(wire_publish(&message, qos, packet_id, retain, dup, props)))
        }
        Outbound::PubAck(id, reason, text) => P::PublishAck(v5::PublishAck {
            packet_id: pid(id),
            reason_code: v5::PublishAckReason::try_from(reason)
                .unwrap_or(v5::PublishAckReason::UnspecifiedError),
            properties: Vec::new(),
            reason_string: text.map(ByteString::from),
        }),
        Outbound::PubRec(id, reason, text) => P::PublishReceived(v5::PublishAck {
            packet_id: pid(id),
            reason_code: v5::PublishAckReason::try_from(reason)
                .unwrap_or(v5::PublishAckReason::UnspecifiedError),
            properties: Vec::new(),
            reason_string: text.map(ByteString::from),
        }),
        Outbound::PubRel(id) => P::PublishRelease(v5::PublishAck2 {
            packet_id: pid(id),
            reason_code: v5::PublishAck2Reason::Success,
            properties: Vec::new(),
            reason_string: None,
        }),
        Outbound::PubComp(id, reason, text) => P::PublishComplete(v5::PublishAck2 {
            packet_id: pid(id),
            reason_code: v5::PublishAck2Reason::try_from(reason).unwrap_or(v5::PublishAck2Reason::Success),
            properties: Vec::new(),
            reason_string: text.map(ByteString::from),
        }),
        Outbound::SubAck(id, codes, text) => P::SubscribeAck(v5::SubscribeAck {
            packet_id: pid(id),
            properties: Vec::new(),
            reason_string: text.map(ByteString::from),
            status: codes
                .into_iter()
                .map(|c| match c {
                    SubAckCode::Granted(QoS::AtMostOnce) => v5::SubscribeAckReason::GrantedQos0,
                    SubAckCode::Granted(QoS::AtLeastOnce) => v5::SubscribeAckReason::GrantedQos1,
                    SubAckCode::Granted(QoS::ExactlyOnce) => v5::SubscribeAckReason::GrantedQos2,
                    SubAckCode::TopicFilterInvalid => v5::SubscribeAckReason::TopicFilterInvalid,
                    SubAckCode::SharedNotSupported => v5::SubscribeAckReason::SharedSubscriptionNotSupported,
                    SubAckCode::NotAuthorized => v5::SubscribeAckReason::NotAuthorized,
                    SubAckCode::Failure => v5::SubscribeAckReason::UnspecifiedError,
                })
                .collect(),
        }),
        Outbound::UnsubAck(id, codes, text) => P::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id: pid(id),
            properties: Vec::new(),
            reason_string: text.map(ByteString::from),
            status: codes
                .into_iter()
                .map(|c| {
                    v5::UnsubscribeAckReason::try_from(c)
                        .unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
                })
                .collect(),
        }),
        Outbound::PingResp => P::PingResponse,
        Outbound::Disconnect(reason, text) => P::Disconnect(v5::Disconnect {
            reason_string: text.map(ByteString::from),
            ..v5::Disconnect::new(
                v5::DisconnectReasonCode::try_from(reason)
                    .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
            )
        }),
    }
}

#[cfg(test)]
mod tests;
