//! Properties of the pure schedule and of reading a token's lifetime, for
//! any lifetime, clock skew, `refreshInterval`, backoff step and jitter.

use std::time::Duration;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use runai_token_sync::{
    runai::client,
    token::schedule::{
        self, MAX_REFRESH_AFTER, MAX_RETRY_AFTER, MIN_REFRESH_AFTER, REFRESH_BEFORE_EXPIRY,
        RETRY_BEFORE_EXPIRY,
    },
};

fn now() -> Timestamp {
    Timestamp::from_second(1_767_225_600).unwrap()
}

fn after(secs: u64) -> Timestamp {
    now() + SignedDuration::from_secs(secs as i64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The planned refresh is in the future, never sooner than the minimum
    /// spacing, never more than 24 h away, and before the token's expiry
    /// whenever the token lives longer than the minimum spacing.
    #[test]
    fn a_refresh_is_planned_in_time(
        lifetime in proptest::option::of(1u64..10 * 365 * 86400),
        interval in proptest::option::of(10u64..30 * 86400),
        jitter in 0.0f64..1.0,
    ) {
        let expires_at = lifetime.map(after);
        let due = schedule::refresh_due_at(now(), expires_at, interval.map(Duration::from_secs), jitter);
        prop_assert!(due > now());
        prop_assert!(schedule::delay_until(now(), due) >= MIN_REFRESH_AFTER);
        prop_assert!(schedule::delay_until(now(), due) <= MAX_REFRESH_AFTER);
        if let (Some(expiry), Some(l)) = (expires_at, lifetime)
            && l > MIN_REFRESH_AFTER.as_secs()
        {
            prop_assert!(due < expiry, "due {due} not before expiry {expiry}");
        }
        let delay = schedule::delay_until(now(), due);
        match lifetime {
            // api.md, "Refresh timing for mounted Secrets": the earliest of
            // 2/3 L, the interval and 2 min before expiry, but never
            // before L/2 (nor sooner than the minimum spacing, nor later
            // than the maximum).
            Some(l) => {
                let half = Duration::from_secs(l) / 2;
                let mut latest = (Duration::from_secs(l) * 2 / 3)
                    .min(Duration::from_secs(l).saturating_sub(REFRESH_BEFORE_EXPIRY));
                if let Some(i) = interval {
                    latest = latest.min(Duration::from_secs(i));
                }
                let latest = latest.max(half).max(MIN_REFRESH_AFTER).min(MAX_REFRESH_AFTER);
                prop_assert!(delay <= latest + Duration::from_secs(1), "{delay:?} after {latest:?}");
                prop_assert!(
                    delay + Duration::from_secs(1) >= half.min(MAX_REFRESH_AFTER).max(MIN_REFRESH_AFTER),
                    "{delay:?} before half of {l} s"
                );
            }
            None => {
                if let Some(i) = interval {
                    prop_assert!(delay <= Duration::from_secs(i).max(MIN_REFRESH_AFTER));
                }
            }
        }
        // The credential is looked at again no later than the expiry.
        let wake = schedule::wake_at(due, expires_at, now());
        prop_assert!(wake > now() && wake <= due);
        if let Some(expiry) = expires_at.filter(|e| *e < due) { prop_assert_eq!(wake, expiry); }
    }

    /// A retry is never sooner than the minimum spacing, never more than an
    /// hour away, and, while the current token has more than a minute and the
    /// spacing left, a minute before its expiry at the latest.
    #[test]
    fn a_retry_is_bounded(
        attempts in 0u32..1000,
        retry_after in proptest::option::of(0u64..400 * 86400),
        valid_for in proptest::option::of(0u64..3 * 86400),
        jitter in 0.0f64..1.0,
    ) {
        let valid_until = valid_for.map(after);
        let at = schedule::retry_at(now(), attempts, retry_after.map(Duration::from_secs), valid_until, jitter);
        let delay = schedule::delay_until(now(), at);
        prop_assert!(delay >= MIN_REFRESH_AFTER);
        prop_assert!(delay <= MAX_RETRY_AFTER);
        if let Some(v) = valid_for
            && v >= (RETRY_BEFORE_EXPIRY + MIN_REFRESH_AFTER).as_secs()
        {
            prop_assert!(at <= after(v) - SignedDuration::from_secs(60));
        }
        if let Some(ra) = retry_after && valid_for.is_none() {
            prop_assert!(delay >= Duration::from_secs(ra).min(MAX_RETRY_AFTER));
        }
    }

    /// Whatever the issuer's clock says, a JWT with `iat` and `exp` lives
    /// `exp - iat` from its arrival.
    #[test]
    fn clock_skew_never_shifts_the_expiry(
        skew in -10_000_000i64..10_000_000,
        lifetime in 1i64..10 * 86400,
        fraction in 0.0f64..1.0,
    ) {
        let iat = now().as_second() + skew;
        let claims = format!(r#"{{"iat":{iat},"exp":{}}}"#, iat as f64 + lifetime as f64 + fraction * 0.99);
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!("{}.{}.sig", enc.encode(r#"{"alg":"RS256"}"#), enc.encode(claims));
        let body = format!(r#"{{"accessToken":"{token}"}}"#);
        let issued = client::parse_token_response(body.as_bytes(), now()).unwrap();
        prop_assert_eq!(issued.expires_at, Some(now() + SignedDuration::from_secs(lifetime)));
    }

    /// The earlier of the answer's lifetime and the JWT's wins.
    #[test]
    fn the_earlier_expiry_wins(expires_in in 1i64..100_000_000, exp_in in 1i64..100_000_000) {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = format!(r#"{{"exp":{}}}"#, now().as_second() + exp_in);
        let token = format!("{}.{}.sig", enc.encode("{}"), enc.encode(claims));
        let body = format!(r#"{{"accessToken":"{token}","expiresIn":"{expires_in}"}}"#);
        let issued = client::parse_token_response(body.as_bytes(), now()).unwrap();
        prop_assert_eq!(issued.expires_at, Some(now() + SignedDuration::from_secs(expires_in.min(exp_in))));
    }
}
