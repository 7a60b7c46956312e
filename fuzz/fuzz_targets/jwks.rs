#![no_main]
//! libFuzzer entry for `floodgate::fuzz::jwks` (see src/fuzz.rs).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| floodgate::fuzz::jwks(data));
