//! Secrets: generated tokens and ids, their SHA-256 digests, argon2id for human-chosen
//! passwords, constant-time comparison.
//!
//! Generated tokens carry 256 random bits, so a fast hash is enough to store them (a
//! slow KDF adds nothing against brute force and would make every reconnect storm a
//! CPU storm); passwords chosen by people get argon2id.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// `bytes` random bytes from the operating system.
///
/// # Panics
///
/// When the operating system has no randomness to give, which no supported system does.
fn random<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// A new secret token: `prefix` then 256 random bits in URL-safe base64.
pub(crate) fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random::<32>()))
}

/// A new id: `prefix` then 64 random bits in hex (ids are not secrets).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", u64::from_le_bytes(random::<8>()))
}

/// SHA-256 of `secret`.
pub(crate) fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `hex` → 32 bytes, for SHA-256 digests and fingerprints (`:` separators allowed, any
/// case).
pub(crate) fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Compares two digests in constant time.
pub(crate) fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The argon2id PHC string of `password` (argon2's default cost: 19 MiB, t = 2).
///
/// # Errors
///
/// Only when argon2 refuses its own parameters, which do not change.
pub(crate) fn hash_password(password: &str) -> Result<String, String> {
    let salt = random::<16>();
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the argon2 PHC string `phc` (slow: tens of ms; call from a
/// blocking thread).
pub(crate) fn verify_password(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let (a, b) = (new_token("tht_"), new_token("tht_"));
        assert!(a.starts_with("tht_") && a.len() == 4 + 43, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn sha256_hex_round_trips_with_colons_and_case() {
        let d = sha256(b"abc");
        assert_eq!(hex(&d), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let colons = hex(&d)
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_sha256_hex(&colons), Some(d));
        assert_eq!(parse_sha256_hex("abc"), None);
        assert_eq!(parse_sha256_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password(&phc, b"correct horse"));
        assert!(!verify_password(&phc, b"correct horse "));
        assert!(!verify_password("not a phc string", b"correct horse"));
    }
}
