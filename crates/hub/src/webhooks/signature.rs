//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, one space-separated `v1,…` per active
//! secret, and secrets written `whsec_<base64 key>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// The prefix secrets are written with.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing key, parsed from its `whsec_<base64>` form.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>` (the prefix may be left out).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong (never the secret).
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = text.trim().strip_prefix(SECRET_PREFIX).unwrap_or(text.trim());
        let key = STANDARD
            .decode(b64)
            .map_err(|_| format!("a webhook secret is `{SECRET_PREFIX}` followed by base64"))?;
        if key.len() < 16 || key.len() > 64 {
            return Err("a webhook secret's key must be 16 to 64 bytes".into());
        }
        Ok(Self { key })
    }

    /// A new random secret (24 bytes) in its `whsec_<base64>` form.
    pub fn generate() -> String {
        let mut key = [0u8; 24];
        getrandom::fill(&mut key).expect("the operating system's random source");
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether one of the space-separated `v1,…` signatures of `header` is this secret's
    /// (compared in constant time; other versions are ignored).
    pub fn verifies(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected = self.mac(id, timestamp, body);
        header.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
            STANDARD
                .decode(sig)
                .is_ok_and(|got| subtle::ConstantTimeEq::ct_eq(&got[..], &expected[..]).into())
        })
    }
}

/// The `webhook-signature` value for `secrets`: one `v1,…` per secret, space-separated.
pub fn header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// Why an inbound request's signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A `webhook-*` header is missing or malformed.
    #[error("missing or malformed webhook-id, webhook-timestamp or webhook-signature header")]
    Malformed,
    /// No signature matches a secret.
    #[error("the signature does not verify")]
    BadSignature,
    /// The timestamp is outside the tolerance.
    #[error("the webhook-timestamp is outside the accepted window")]
    Stale,
}

/// Checks an inbound message: the headers' values, `now` and the tolerance in seconds.
/// The signature is checked before the timestamp, so a forged request learns nothing
/// about the window.
///
/// # Errors
///
/// [`VerifyError`].
pub fn verify(
    secrets: &[Secret],
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<i64, VerifyError> {
    let (Some(id), Some(ts), Some(sig)) = (id, timestamp, signature) else {
        return Err(VerifyError::Malformed);
    };
    if id.is_empty() || id.len() > 256 {
        return Err(VerifyError::Malformed);
    }
    let ts: i64 = ts.trim().parse().map_err(|_| VerifyError::Malformed)?;
    if !secrets.iter().any(|s| s.verifies(id, ts, body, sig)) {
        return Err(VerifyError::BadSignature);
    }
    if (now_secs - ts).abs() > tolerance_secs {
        return Err(VerifyError::Stale);
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_published_test_vector() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TS, BODY), SIGNATURE);
    }

    #[test]
    fn signs_like_an_independent_hmac() {
        // computed the long way: HMAC-SHA256 by its definition over SHA-256
        use sha2::Digest as _;
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let msg = [ID.as_bytes(), b".", TS.to_string().as_bytes(), b".", BODY].concat();
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(&key);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::digest([&ipad[..], &msg].concat());
        let outer = Sha256::digest([&opad[..], &inner[..]].concat());
        assert_eq!(format!("v1,{}", STANDARD.encode(outer)), SIGNATURE);
    }

    #[test]
    fn verifies_with_either_of_two_secrets_and_refuses_changes() {
        let old = Secret::parse(SECRET).unwrap();
        let new = Secret::parse(&Secret::generate()).unwrap();
        let both = header(&[old.clone(), new.clone()], ID, TS, BODY);
        assert_eq!(both.split(' ').count(), 2);
        assert_eq!(
            verify(std::slice::from_ref(&new), Some(ID), Some("1614265330"), Some(&both), BODY, TS, 300),
            Ok(TS)
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&old),
                Some(ID),
                Some("1614265330"),
                Some(SIGNATURE),
                BODY,
                TS + 300,
                300
            ),
            Ok(TS)
        );
        let v = |id: &str, body: &[u8], now: i64| {
            verify(std::slice::from_ref(&old), Some(id), Some("1614265330"), Some(SIGNATURE), body, now, 300)
        };
        assert_eq!(v("msg_other", BODY, TS), Err(VerifyError::BadSignature));
        assert_eq!(v(ID, b"{\"test\": 1}", TS), Err(VerifyError::BadSignature));
        assert_eq!(v(ID, BODY, TS + 301), Err(VerifyError::Stale));
        assert_eq!(v(ID, BODY, TS - 301), Err(VerifyError::Stale));
        assert_eq!(
            verify(std::slice::from_ref(&old), Some(ID), None, Some(SIGNATURE), BODY, TS, 300),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verify(&[old], Some(ID), Some("1614265330"), Some("v2,abc v1,%%%"), BODY, TS, 300),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_AAAA").is_err(), "too short");
        let s = Secret::generate();
        assert!(s.starts_with(SECRET_PREFIX));
        assert_eq!(format!("{:?}", Secret::parse(&s).unwrap()), "Secret(…)");
    }
}
