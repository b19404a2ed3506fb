#![no_main]
//! See `runai_token_sync::fuzzing::ca_bundle`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| runai_token_sync::fuzzing::ca_bundle(data));
