#![no_main]
//! libFuzzer entry for `floodgate_load::fuzz::server_frames` (see crates/load/src/fuzz.rs).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| floodgate_load::fuzz::server_frames(data));
