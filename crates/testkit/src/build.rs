//! Byte builders for the packets a client sends, written from the spec (MQTT 3.1.1 §3 and
//! MQTT 5.0 §3) and sharing no code with `telehub-mqtt`.
//!
//! Builders produce exactly the bytes asked for; tests that need a malformed packet
//! start from these or write the bytes by hand.

/// The protocol level a [`Connect`] announces, which decides how later packets are framed
/// (MQTT 5 adds property blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    /// True for MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }

    fn level(self) -> u8 {
        match self {
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }
}

/// Appends `n` as an MQTT Variable Byte Integer (1 to 4 bytes).
///
/// # Panics
///
/// When `n` is above 268 435 455, the largest value four bytes can hold.
pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    assert!(n <= 268_435_455, "{n} does not fit a variable byte integer");
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// Appends a two-byte length and `bytes` (an MQTT UTF-8 string or binary data; the
/// bytes are not checked, so invalid UTF-8 can be sent on purpose).
///
/// # Panics
///
/// When `bytes` is longer than 65 535.
pub fn string(bytes: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(bytes.len()).expect("MQTT strings are at most 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A whole packet: `first_byte`, the remaining length, then `body`.
pub fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first_byte);
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

#[derive(Debug, Clone)]
struct Will {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

/// A CONNECT packet. Defaults: clean session/start, keep-alive 60 s, no will.
#[derive(Debug, Clone)]
pub struct Connect {
    version: Version,
    client_id: String,
    clean: bool,
    keep_alive: u16,
    will: Option<Will>,
    session_expiry: Option<u32>,
    username: Option<String>,
    password: Option<Vec<u8>>,
    /// Further MQTT 5 property bytes, as given.
    properties: Vec<u8>,
}

impl Connect {
    /// An MQTT 3.1.1 CONNECT for `client_id` (may be empty).
    pub fn v311(client_id: &str) -> Self {
        Self::new(Version::V311, client_id)
    }

    /// An MQTT 5.0 CONNECT for `client_id` (may be empty).
    pub fn v5(client_id: &str) -> Self {
        Self::new(Version::V5, client_id)
    }

    fn new(version: Version, client_id: &str) -> Self {
        Self {
            version,
            client_id: client_id.to_owned(),
            clean: true,
            keep_alive: 60,
            will: None,
            session_expiry: None,
            username: None,
            password: None,
            properties: Vec::new(),
        }
    }

    /// The protocol level this CONNECT announces.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Clean Session (3.1.1) / Clean Start (5.0).
    #[must_use]
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }

    /// Keep Alive in seconds (0 switches it off).
    #[must_use]
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }

    /// A will message.
    #[must_use]
    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Self {
        self.will = Some(Will { topic: topic.to_owned(), payload: payload.to_vec(), qos, retain });
        self
    }

    /// MQTT 5 Session Expiry Interval (property 0x11).
    ///
    /// # Panics
    ///
    /// On an MQTT 3.1.1 CONNECT, which has no properties.
    #[must_use]
    pub fn session_expiry(mut self, secs: u32) -> Self {
        assert!(self.version.is_v5(), "session expiry is an MQTT 5 property");
        self.session_expiry = Some(secs);
        self
    }

    /// MQTT 5 Maximum Packet Size (property 0x27).
    ///
    /// # Panics
    ///
    /// On an MQTT 3.1.1 CONNECT, which has no properties.
    #[must_use]
    pub fn maximum_packet_size(self, bytes: u32) -> Self {
        let [a, b, c, d] = bytes.to_be_bytes();
        self.property(&[0x27, a, b, c, d])
    }

    /// MQTT 5 Request Problem Information (property 0x17); any byte, so that invalid
    /// values can be sent.
    ///
    /// # Panics
    ///
    /// On an MQTT 3.1.1 CONNECT, which has no properties.
    #[must_use]
    pub fn request_problem_information(self, value: u8) -> Self {
        self.property(&[0x17, value])
    }

    /// MQTT 5 Request Response Information (property 0x19); any byte, so that invalid
    /// values can be sent.
    ///
    /// # Panics
    ///
    /// On an MQTT 3.1.1 CONNECT, which has no properties.
    #[must_use]
    pub fn request_response_information(self, value: u8) -> Self {
        self.property(&[0x19, value])
    }

    fn property(mut self, bytes: &[u8]) -> Self {
        assert!(self.version.is_v5(), "CONNECT properties are MQTT 5");
        self.properties.extend_from_slice(bytes);
        self
    }

    /// User Name (flag 0x80).
    #[must_use]
    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }

    /// Password (flag 0x40).
    #[must_use]
    pub fn password(mut self, password: &[u8]) -> Self {
        self.password = Some(password.to_vec());
        self
    }

    /// The packet's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(self.version.level());
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.version.is_v5() {
            let mut props = Vec::new();
            if let Some(secs) = self.session_expiry {
                props.push(0x11);
                props.extend_from_slice(&secs.to_be_bytes());
            }
            props.extend_from_slice(&self.properties);
            varint(props.len(), &mut body);
            body.extend_from_slice(&props);
        }
        string(self.client_id.as_bytes(), &mut body);
        if let Some(w) = &self.will {
            if self.version.is_v5() {
                body.push(0); // will properties: none
            }
            string(w.topic.as_bytes(), &mut body);
            string(&w.payload, &mut body);
        }
        if let Some(username) = &self.username {
            string(username.as_bytes(), &mut body);
        }
        if let Some(password) = &self.password {
            string(password, &mut body);
        }
        frame(0x10, &body)
    }
}

/// A PUBLISH packet. Defaults: QoS 0, no RETAIN, no DUP.
#[derive(Debug, Clone)]
pub struct Publish {
    version: Version,
    topic: Vec<u8>,
    payload: Vec<u8>,
    qos: u8,
    packet_id: u16,
    retain: bool,
    dup: bool,
    /// MQTT 5 property bytes (without their length).
    properties: Vec<u8>,
}

impl Publish {
    /// A QoS 0 PUBLISH of `payload` to `topic`. The topic bytes are sent as given (they
    /// may be invalid UTF-8 or hold wildcards, on purpose).
    pub fn new(version: Version, topic: impl AsRef<[u8]>, payload: impl AsRef<[u8]>) -> Self {
        Self {
            version,
            topic: topic.as_ref().to_vec(),
            payload: payload.as_ref().to_vec(),
            qos: 0,
            packet_id: 0,
            retain: false,
            dup: false,
            properties: Vec::new(),
        }
    }

    /// MQTT 5: the Response Topic (0x08) and Correlation Data (0x09) properties.
    #[must_use]
    pub fn response(mut self, topic: &str, correlation: &[u8]) -> Self {
        self.properties.push(0x08);
        string(topic.as_bytes(), &mut self.properties);
        self.properties.push(0x09);
        string(correlation, &mut self.properties);
        self
    }

    /// QoS 1 or 2 with `packet_id` (QoS 0 ignores the id).
    #[must_use]
    pub fn qos(mut self, qos: u8, packet_id: u16) -> Self {
        self.qos = qos;
        self.packet_id = packet_id;
        self
    }

    /// Sets RETAIN.
    #[must_use]
    pub fn retain(mut self) -> Self {
        self.retain = true;
        self
    }

    /// Sets DUP.
    #[must_use]
    pub fn dup(mut self) -> Self {
        self.dup = true;
        self
    }

    /// The QoS this PUBLISH carries.
    pub fn qos_level(&self) -> u8 {
        self.qos
    }

    /// The packet identifier (meaningful for QoS 1 and 2).
    pub fn packet_id(&self) -> u16 {
        self.packet_id
    }

    /// The packet's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let first = 0x30 | (u8::from(self.dup) << 3) | (self.qos << 1) | u8::from(self.retain);
        let mut body = Vec::new();
        string(&self.topic, &mut body);
        if self.qos > 0 {
            body.extend_from_slice(&self.packet_id.to_be_bytes());
        }
        if self.version.is_v5() {
            varint(self.properties.len(), &mut body);
            body.extend_from_slice(&self.properties);
        }
        body.extend_from_slice(&self.payload);
        frame(first, &body)
    }
}

/// SUBSCRIBE with `(filter, options)` pairs. `options` is the whole options byte: the
/// maximum QoS in bits 0-1 (MQTT 5 adds No Local, Retain As Published, Retain Handling).
pub fn subscribe(version: Version, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.push(0);
    }
    for (filter, options) in filters {
        string(filter.as_bytes(), &mut body);
        body.push(*options);
    }
    frame(0x82, &body)
}

/// UNSUBSCRIBE of `filters`.
pub fn unsubscribe(version: Version, packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.push(0);
    }
    for filter in filters {
        string(filter.as_bytes(), &mut body);
    }
    frame(0xa2, &body)
}

/// PUBACK (the 3.1.1 form, also valid MQTT 5 meaning success).
pub fn puback(packet_id: u16) -> Vec<u8> {
    frame(0x40, &packet_id.to_be_bytes())
}

/// PUBREC (the 3.1.1 form, also valid MQTT 5 meaning success).
pub fn pubrec(packet_id: u16) -> Vec<u8> {
    frame(0x50, &packet_id.to_be_bytes())
}

/// PUBREL (fixed header flags 0010).
pub fn pubrel(packet_id: u16) -> Vec<u8> {
    frame(0x62, &packet_id.to_be_bytes())
}

/// PUBCOMP.
pub fn pubcomp(packet_id: u16) -> Vec<u8> {
    frame(0x70, &packet_id.to_be_bytes())
}

/// PINGREQ.
pub fn pingreq() -> Vec<u8> {
    vec![0xc0, 0x00]
}

/// DISCONNECT without a reason (3.1.1; MQTT 5 normal disconnection).
pub fn disconnect() -> Vec<u8> {
    vec![0xe0, 0x00]
}

/// MQTT 5 DISCONNECT with `reason` and no properties.
pub fn disconnect_v5(reason: u8) -> Vec<u8> {
    frame(0xe0, &[reason, 0x00])
}
