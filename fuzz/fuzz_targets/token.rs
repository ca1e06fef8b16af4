//! `bluecam_server::fuzzing::token` under libFuzzer (`scripts/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bluecam_server::fuzzing::token(data));
