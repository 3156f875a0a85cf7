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

/// A device's identifier, as used in topics (`devices/{id}/…`) and the REST API.
/// Non-empty, at most 128 bytes, no `/`, `+`, `#` or control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(ByteString);

/// Why a device id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Empty.
    #[error("device id is empty")]
    Empty,
    /// Over 128 bytes.
    #[error("device id is longer than 128 bytes")]
    TooLong,
    /// Contains `/`, `+`, `#` or a control character.
    #[error("device id contains '/', '+', '#' or a control character")]
    InvalidCharacter,
}

impl DeviceId {
    /// Validates a device id.
    ///
    /// # Errors
    ///
    /// [`DeviceIdError`] naming the rule it breaks.
    pub fn new(id: impl Into<ByteString>) -> Result<Self, DeviceIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if id.len() > 128 {
            return Err(DeviceIdError::TooLong);
        }
        if id.chars().any(|c| matches!(c, '/' | '+' | '#') || c.is_control()) {
            return Err(DeviceIdError::InvalidCharacter);
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", &*self.0)
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::new(text.clone()).map_err(|e| serde::de::Error::custom(format!("device id {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_rules() {
        assert!(DeviceId::new("raspi-01").is_ok());
        assert_eq!(DeviceId::new(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::new("a/b"), Err(DeviceIdError::InvalidCharacter));
        assert_eq!(DeviceId::new("a+"), Err(DeviceIdError::InvalidCharacter));
        assert_eq!(DeviceId::new("a\nb"), Err(DeviceIdError::InvalidCharacter));
        assert_eq!(DeviceId::new("x".repeat(129)), Err(DeviceIdError::TooLong));
    }
}
