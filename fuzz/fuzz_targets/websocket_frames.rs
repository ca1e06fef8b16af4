//! `bluecam_server::fuzzing::websocket_frames` under libFuzzer (`scripts/fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bluecam_server::fuzzing::websocket_frames(data));
