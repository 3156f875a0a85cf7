//! The seed corpus: each seed ends as it says, runs through its fuzz entry point, and
//! equals its committed file under `fuzz/seeds/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::BytesMut;

use super::seeds::{self, Before, Outcome, Seed};
use super::{CONNECT_V5, CONNECT_V311};
use crate::{Decoder, Inbound, ProtocolError};

/// Set to rewrite `fuzz/seeds/` from [`seeds::files`] instead of comparing:
/// `TELEHUB_WRITE_SEEDS=1 cargo nextest run -p telehub-mqtt seed_files`.
const WRITE_SEEDS: &str = "TELEHUB_WRITE_SEEDS";

/// Decodes `seed` after its [`Before`] as the fuzz target does: the packets decoded from
/// the seed's own bytes, or the error, and how many bytes were left undecoded.
fn decode(seed: &Seed) -> (Result<Vec<Inbound>, ProtocolError>, usize) {
    let mut decoder = Decoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    let before = match seed.before {
        Before::Nothing => None,
        Before::ConnectV311 => Some(CONNECT_V311),
        Before::ConnectV5 => Some(CONNECT_V5),
    };
    if let Some(connect) = before {
        buf.extend_from_slice(connect);
        assert!(matches!(decoder.decode(&mut buf), Ok(Some(Inbound::Connect(_)))), "{}", seed.name);
    }
    buf.extend_from_slice(seed.bytes);
    let mut packets = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => return (Ok(packets), buf.len()),
            Err(e) => return (Err(e), buf.len()),
        }
    }
}

#[test]
fn every_decode_seed_ends_as_it_says() {
    for seed in seeds::CRASH_CLASSES.iter().chain(seeds::VALID) {
        let (result, left) = decode(seed);
        match seed.outcome {
            Outcome::Decodes => {
                let packets = result.unwrap_or_else(|e| panic!("{}: {e}", seed.name));
                assert!(!packets.is_empty() && left == 0, "{}: {packets:?}, {left} bytes left", seed.name);
            }
            Outcome::Refused => assert!(result.is_err(), "{}: {result:?}", seed.name),
            Outcome::Waits => {
                assert_eq!(result, Ok(vec![]), "{}", seed.name);
                assert_eq!(left, seed.bytes.len(), "{}: bytes consumed while waiting", seed.name);
            }
        }
        super::decode(&seed.fuzz_input());
    }
}

#[test]
fn every_session_seed_keeps_the_invariants() {
    for seed in seeds::SESSION {
        super::session(seed.ops);
    }
}

#[test]
fn seed_names_are_unique() {
    let files = seeds::files();
    let names: BTreeMap<&str, usize> =
        files.iter().enumerate().map(|(i, (name, _))| (name.as_str(), i)).collect();
    assert_eq!(names.len(), files.len(), "two seeds share a file name");
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds")
}

/// The files under `fuzz/seeds/`, by path relative to it.
fn committed() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for target in ["mqtt_decode", "mqtt_session"] {
        let Ok(dir) = std::fs::read_dir(seeds_dir().join(target)) else { continue };
        for entry in dir {
            let entry = entry.unwrap();
            let name = format!("{target}/{}", entry.file_name().to_string_lossy());
            out.insert(name, std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

#[test]
fn seed_files_equal_the_seed_constants() {
    let wanted: BTreeMap<String, Vec<u8>> = seeds::files().into_iter().collect();
    if std::env::var_os(WRITE_SEEDS).is_some() {
        for target in ["mqtt_decode", "mqtt_session"] {
            let dir = seeds_dir().join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in &wanted {
            std::fs::write(seeds_dir().join(name), bytes).unwrap();
        }
    }
    let found = committed();
    let hint = format!("regenerate with {WRITE_SEEDS}=1 cargo nextest run -p telehub-mqtt seed_files");
    for (name, bytes) in &wanted {
        assert_eq!(found.get(name), Some(bytes), "fuzz/seeds/{name} differs or is missing: {hint}");
    }
    for name in found.keys() {
        assert!(wanted.contains_key(name), "fuzz/seeds/{name} has no constant in fuzz::seeds: {hint}");
    }
}
