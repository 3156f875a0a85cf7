//! Fuzzes the MQTT decoder: arbitrary client bytes never panic or hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| telehub_mqtt::fuzz::decode(data));
