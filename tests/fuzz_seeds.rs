//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same checks the fuzz targets run, so that every input a fuzzer once found
//! interesting stays a regression test without a fuzzer.

use std::path::Path;

use runai_token_sync::fuzzing;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a readable seed");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its checks", path.display());
        count += 1;
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn token_answer_seeds() {
    replay("token_answer", fuzzing::token_answer);
}

#[test]
fn jwt_seeds() {
    replay("jwt", fuzzing::jwt);
}

#[test]
fn retry_after_seeds() {
    replay("retry_after", fuzzing::retry_after);
}

#[test]
fn refresh_interval_seeds() {
    replay("refresh_interval", fuzzing::refresh_interval);
}

#[test]
fn ca_bundle_seeds() {
    replay("ca_bundle", fuzzing::ca_bundle);
}

#[test]
fn record_seeds() {
    replay("record", fuzzing::record);
}
