#![no_main]
//! See `runai_token_sync::fuzzing::jwt`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| runai_token_sync::fuzzing::jwt(data));
