//! Identifiers as newtypes, so a client id is never mistaken for a topic or a device id.

use std::fmt;

use bytestring::ByteString;

/// The MQTT Client Identifier of a session. Cheap to clone (shared bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(ByteString);

impl ClientId {
    /// Wraps a client identifier as sent in CONNECT (or assigned by the server).
    pub fn new(id: impl Into<ByteString>) -> Self {
        Self(id.into())
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier as the codec's string type (no copy).
    pub fn to_byte_string(&self) -> ByteString {
        self.0.clone()
    }

    /// True for the zero-length identifier a client sends to ask the server for one.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({:?})", &*self.0)
    }
}
