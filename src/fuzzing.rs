//! Entry points for fuzzing everything that parses outside input: the token
//! answer, JWT claims, `Retry-After`, `refreshInterval`, `caBundle` and the
//! record read back from a target Secret.
//!
//! Each function takes arbitrary bytes, must never panic, and checks the
//! promises its parser makes (a token that is written is usable, a delay is
//! bounded, nothing secret is repeated). The fuzz targets in `fuzz/` call
//! them, and `tests/fuzz_seeds.rs` replays the committed corpora through them.

use std::time::{Duration, UNIX_EPOCH};

use jiff::Timestamp;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    output::secret::{self, HashKey},
    runai::client,
    token::schedule::{self, MAX_RETRY_AFTER},
};

/// The arrival time used by every target, fixed so that runs repeat.
fn now() -> Timestamp {
    Timestamp::from_second(1_767_225_600).expect("a valid time")
}

/// A client secret that must never be repeated in a message.
const PLANTED_SECRET: &str = "s3cr3t-fuzz+/=";

/// The token answer of every API generation: a 2xx body, and an error body
/// under the status in the first byte (200 + byte, so 3xx, 4xx and 5xx).
pub fn token_answer(data: &[u8]) {
    match client::parse_token_response(data, now()) {
        Ok(issued) => {
            assert!(!issued.access_token.is_empty());
            assert!(issued.access_token.bytes().all(|b| b.is_ascii_graphic()));
            if let Some(at) = issued.expires_at {
                assert!(at > now(), "a token written is never expired on arrival");
            }
        }
        Err(err) => assert!(err.is_refresh_failure(), "{err:?}"),
    }
    let (status, body) = match data.split_first() {
        Some((first, rest)) => (200 + u16::from(*first), rest),
        None => (500, data),
    };
    let endpoint: url::Url = "https://acme.run.ai/api/v1/token".parse().expect("a URL");
    let location = std::str::from_utf8(body).ok();
    let err =
        client::classify_http_failure(status, None, location, &endpoint, body, &[PLANTED_SECRET]);
    let text = err.to_string();
    assert!(!text.contains(PLANTED_SECRET), "{text}");
    assert!(err.is_refresh_failure());
}

/// A JWT's `exp` and `iat` claims, from a token of arbitrary text.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((exp, iat)) = client::jwt_claims(token) {
        assert!(exp.is_none_or(|e| e >= 0) && iat.is_none_or(|i| i >= 0));
        let expiry = client::jwt_expiry(token, now());
        if let (Some(at), Some(_)) = (expiry, iat) {
            assert!(at >= now(), "with iat, the lifetime counts from arrival");
        }
    }
}

/// A `Retry-After` header value.
pub fn retry_after(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    if let Some(delay) = client::parse_retry_after(value, now) {
        assert!(delay <= MAX_RETRY_AFTER);
    }
}

/// A `refreshInterval` duration.
pub fn refresh_interval(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(interval) = crate::api::parse_refresh_interval(text) {
        assert!(interval >= Duration::from_secs(10));
        let due = schedule::refresh_due_at(now(), None, Some(interval), 0.5);
        assert!(due > now() && due <= now() + schedule::MAX_REFRESH_AFTER);
    }
}

/// A `caBundle`.
pub fn ca_bundle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match client::parse_ca_bundle(text) {
        Ok(certs) => assert!(!certs.is_empty()),
        Err(err) => assert_eq!(err.reason(), "InvalidSpec"),
    }
}

/// The record annotations and data read back from a target Secret: the
/// input is split at `0xFF` bytes into issued-at, expiresAt, credentials
/// hash, generation, answered refresh request, token hash and token.
pub fn record(data: &[u8]) {
    let mut fields = data.split(|b| *b == 0xFF);
    let mut next = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let (issued_at, expires_at, credentials_hash, generation, request, token_hash, token) =
        (next(), next(), next(), next(), next(), next(), next());
    let annotations = [
        ("tokensync.dev/issued-at", issued_at),
        ("tokensync.dev/credentials-hash", credentials_hash),
        ("tokensync.dev/generation", generation),
        ("tokensync.dev/answered-refresh-request", request),
        ("tokensync.dev/token-hash", token_hash),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("accessToken".to_owned(), ByteString(token.into_bytes())),
                (
                    secret::EXPIRES_AT_KEY.to_owned(),
                    ByteString(expires_at.into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    let key = HashKey::new(vec![7; 32]);
    if let Some(stored) = secret::stored_token(&secret, "accessToken", &key) {
        // A record nobody signed with the key is never taken as intact.
        let signed = key.token_hash(&stored.access_token, &stored.record);
        let annotation =
            &secret.metadata.annotations.as_ref().expect("set above")["tokensync.dev/token-hash"];
        assert_eq!(
            stored.intact,
            !stored.access_token.is_empty() && *annotation == signed
        );
        // Planning from any record never panics and never plans the past.
        let desired = schedule::Desired {
            credentials_hash: Some(stored.record.credentials_hash.clone()),
            generation: stored.record.generation,
            refresh_request: stored.record.refresh_request.clone(),
            definition: None,
        };
        if let schedule::Plan::WaitUntil(at) = schedule::plan(
            now(),
            Some((&stored.record, stored.intact)),
            &desired,
            None,
            None,
            0.5,
        ) {
            assert!(at > now());
        }
    }
}
