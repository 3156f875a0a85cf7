//! Device-signed JWTs, the Google Cloud IoT Core scheme: the device signs a short-lived
//! JWT (RS256 or ES256) with its own private key and sends it as its MQTT password or
//! HTTP bearer token; the hub holds the public key.
//!
//! Checked: the signature against one of the device's registered keys of the token's
//! algorithm (the algorithm is pinned by the key, so an HS256 token "signed" with a
//! public key is refused), `aud`, `iat` not in the future, `exp` not passed, and
//! `exp - iat` at most the configured lifetime, each with the configured clock skew.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::model::CredentialKind;

/// Why a JWT is refused (logged and audited; devices only see "bad credentials").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtError {
    /// Not three base64url parts, or a payload that is not JSON.
    #[error("not a JWT")]
    Malformed,
    /// The header names an algorithm other than RS256 and ES256.
    #[error("algorithm {0} is not accepted (RS256 or ES256)")]
    Algorithm(String),
    /// No registered key of the token's algorithm verifies the signature.
    #[error("signature does not verify with any key of the device")]
    Signature,
    /// `aud` missing or not the configured audience.
    #[error("wrong audience")]
    Audience,
    /// `exp` passed.
    #[error("expired")]
    Expired,
    /// `iat` in the future.
    #[error("issued in the future")]
    NotYetValid,
    /// `iat` or `exp` missing.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// `exp - iat` longer than allowed.
    #[error("lifetime of {0} s is longer than allowed")]
    TooLong(i64),
}

/// The claims telehub reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Claims {
    /// The device id, when the device sets it.
    pub(crate) sub: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
}

/// A registered public key, parsed once.
#[derive(Clone)]
pub(crate) struct PublicKey {
    pub(crate) algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Parses a PEM public key for `kind` (JWT kinds only).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the PEM.
    pub(crate) fn from_pem(kind: CredentialKind, pem: &str) -> Result<Self, String> {
        let (algorithm, key) = match kind {
            CredentialKind::JwtRs256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem.as_bytes())),
            CredentialKind::JwtEs256 => (Algorithm::ES256, DecodingKey::from_ec_pem(pem.as_bytes())),
            other => return Err(format!("a {other} credential has no public key")),
        };
        let key = key.map_err(|e| format!("public_key is not a PEM {} public key: {e}", kind_name(kind)))?;
        Ok(Self { algorithm, key })
    }
}

fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::JwtEs256 => "EC P-256",
        _ => "RSA",
    }
}

/// Whether `text` looks like a JWT (three dot-separated parts, the first decoding to a
/// JSON header). Cheap; decides whether a password is checked as a JWT.
pub(crate) fn looks_like_jwt(text: &[u8]) -> bool {
    text.starts_with(b"eyJ") && text.iter().filter(|b| **b == b'.').count() == 2
}

/// The claims of `token` without checking anything: only to learn which device it says
/// it is, before its signature is checked with that device's keys.
///
/// # Errors
///
/// [`JwtError::Malformed`].
pub(crate) fn peek(token: &str) -> Result<Claims, JwtError> {
    let payload = token.split('.').nth(1).ok_or(JwtError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// What a device JWT must satisfy.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) audience: String,
    pub(crate) max_lifetime_s: i64,
    pub(crate) skew_s: i64,
}

/// Checks `token` against `keys` at Unix time `now_s`; the index of the key that
/// verified it.
///
/// # Errors
///
/// The first reason the token is refused.
pub(crate) fn verify<'k>(
    token: &str,
    keys: impl IntoIterator<Item = &'k PublicKey>,
    rules: &Rules,
    now_s: i64,
) -> Result<usize, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
    }
    // signature and audience by the library; times ourselves, against `now_s`
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["aud"]);
    validation.set_audience(&[&rules.audience]);
    let mut refused = JwtError::Signature;
    let mut verified = None;
    for (i, key) in keys.into_iter().enumerate() {
        if key.algorithm != header.alg {
            continue;
        }
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => {
                verified = Some((i, data.claims));
                break;
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => {
                        refused = JwtError::Audience;
                    }
                    ErrorKind::InvalidToken
                    | ErrorKind::Json(_)
                    | ErrorKind::Base64(_)
                    | ErrorKind::Utf8(_) => {
                        return Err(JwtError::Malformed);
                    }
                    _ => {}
                }
            }
        }
    }
    let (index, claims) = verified.ok_or(refused)?;
    let iat = claims.iat.ok_or(JwtError::MissingClaim("iat"))?;
    let exp = claims.exp.ok_or(JwtError::MissingClaim("exp"))?;
    if iat > now_s + rules.skew_s {
        return Err(JwtError::NotYetValid);
    }
    if exp + rules.skew_s <= now_s {
        return Err(JwtError::Expired);
    }
    if exp - iat > rules.max_lifetime_s {
        return Err(JwtError::TooLong(exp - iat));
    }
    Ok(index)
}
