#![no_main]
//! See `runai_token_sync::fuzzing::retry_after`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| runai_token_sync::fuzzing::retry_after(data));
