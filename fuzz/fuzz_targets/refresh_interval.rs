#![no_main]
//! See `runai_token_sync::fuzzing::refresh_interval`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| runai_token_sync::fuzzing::refresh_interval(data));
