//! Fuzzes the session state machine: random operation sequences keep its invariants.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| telehub_mqtt::fuzz::session(data));
