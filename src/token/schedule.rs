//! Pure scheduling decisions: is a refresh due, when is the next one, how long
//! to back off. No I/O and no clock: `now` is always passed in.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Refresh period when neither the token's lifetime nor `refreshInterval` is known.
pub const DEFAULT_REFRESH_AFTER: Duration = Duration::from_secs(30 * 60);
/// Never plan a refresh sooner than this after the last one, whatever the
/// token claims, so that a token with a broken expiry cannot cause a hot loop.
/// Also the shortest delay before a retry: the minimum spacing of requests.
pub const MIN_REFRESH_AFTER: Duration = Duration::from_secs(5);
/// The next refresh is never later than this after the last one, whatever the
/// token or `refreshInterval` says (api.md, Edge cases).
pub const MAX_REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);
pub use crate::error::MAX_RETRY_AFTER;
/// A retry is due at least this long before the current token expires, even
/// when `Retry-After` or the backoff asks for longer (api.md, Edge cases).
pub const RETRY_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// Largest share of the planned period that jitter may take off.
const JITTER_SHARE: f64 = 0.10;
/// Largest jitter, however long the token lives.
const MAX_JITTER: Duration = Duration::from_secs(5 * 60);
/// A refresh is due at least this long before the token expires: the
/// kubelet takes up to 60–90 s to deliver a changed Secret to a volume
/// (api.md, "Refresh timing for mounted Secrets").
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(2 * 60);
/// Tokens that live less than this are reported once
/// (`TokenLifetimeShort`): a volume consumer may see them expire, since the
/// kubelet may deliver the next one late.
pub const SHORT_LIFETIME: Duration = Duration::from_secs(4 * 60);
/// First retry delay after a failed refresh.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay after failed refreshes (a `Retry-After` may ask for more).
pub const BACKOFF_CAP: Duration = Duration::from_secs(5 * 60);

/// What the target Secret records about the token it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// When the token was obtained.
    pub issued_at: Timestamp,
    /// When it expires, if known.
    pub expires_at: Option<Timestamp>,
    /// Keyed hash of url, token API and client credentials it was obtained with.
    pub credentials_hash: String,
    /// The RunaiCredential generation it was obtained for.
    pub generation: i64,
    /// The value of the refresh annotation it answered, if any.
    pub refresh_request: Option<String>,
    /// Keyed hash of what else defines the credential (api.md, "What a
    /// change costs": the trusted CAs and the credentials Secret's name and
    /// keys); `None` in a Secret written before it was recorded, which is
    /// then judged by `generation`.
    pub definition: Option<String>,
    /// The token API generation that issued it (`V1`, `V2`, `AppToken`),
    /// when known: what `Auto` calls first next time, and what
    /// `status.tokenApi` shows. Not part of the token's hash: it only
    /// orders the next request.
    pub token_api: Option<crate::api::TokenApi>,
}

impl TokenRecord {
    /// Whether the token is past its expiry. A token of unknown expiry is
    /// taken as valid.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What the RunaiCredential asks for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Keyed hash of the current url, token API and credentials; `None` when
    /// the credentials cannot be read.
    pub credentials_hash: Option<String>,
    pub generation: i64,
    pub refresh_request: Option<String>,
    /// Keyed hash of what else defines the credential (see
    /// [`TokenRecord::definition`]); `None` when it is not known.
    pub definition: Option<String>,
}

/// Whether the token of `record` was obtained for what `desired` defines
/// now: only a change of what defines the credential (url, token API and
/// credentials: the credentials hash; trusted CAs and the credentials
/// Secret's name and keys: the definition) needs a new token; any other
/// spec change (labels, annotations, outputs, deletion policy) is applied
/// with the token held (api.md, "What a change costs"). A record without a
/// definition was written before it was kept: any spec change counts, as
/// it did then.
pub fn defined_alike(record: &TokenRecord, desired: &Desired) -> bool {
    match (&record.definition, &desired.definition) {
        (Some(have), Some(want)) => hashes_equal(have, want),
        _ => desired.generation == record.generation,
    }
}

/// A failed refresh that is being backed off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// What was asked for when the refresh failed: a change retries at once.
    pub desired: Desired,
    pub retry_at: Timestamp,
}

/// Why a token is requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshReason {
    NoToken,
    TokenAltered,
    CredentialsChanged,
    SpecChanged,
    RefreshRequested,
    Due,
    /// Another RunaiCredential of the same group obtained a new token.
    Shared,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshReason::NoToken => "no token in the Secret",
            RefreshReason::TokenAltered => "the token in the Secret was changed",
            RefreshReason::CredentialsChanged => "the url, token API or credentials changed",
            RefreshReason::SpecChanged => "the spec changed",
            RefreshReason::RefreshRequested => "a refresh was requested",
            RefreshReason::Due => "the token is due for refresh",
            RefreshReason::Shared => {
                "another RunaiCredential with the same credentials obtained a new token"
            }
        }
    }
}

/// The decision of one reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Request a token now.
    Refresh(RefreshReason),
    /// The token is fresh; refresh at this time.
    WaitUntil(Timestamp),
    /// A refresh failed; retry at this time.
    RetryAt(Timestamp),
}

/// Decides whether to request a token now. `stored` is the record in the
/// target Secret and whether the token there is still the one recorded.
pub fn plan(
    now: Timestamp,
    stored: Option<(&TokenRecord, bool)>,
    desired: &Desired,
    backoff: Option<&Backoff>,
    refresh_interval: Option<Duration>,
    jitter: f64,
) -> Plan {
    // Backing off holds only while nothing changed: a fix by the user (new
    // credentials, new spec, a refresh request) is tried at once.
    if let Some(b) = backoff
        && b.desired == *desired
        && now < b.retry_at
    {
        return Plan::RetryAt(b.retry_at);
    }
    let Some((record, intact)) = stored else {
        return Plan::Refresh(RefreshReason::NoToken);
    };
    if !intact {
        return Plan::Refresh(RefreshReason::TokenAltered);
    }
    if !desired
        .credentials_hash
        .as_deref()
        .is_some_and(|hash| hashes_equal(hash, &record.credentials_hash))
    {
        return Plan::Refresh(RefreshReason::CredentialsChanged);
    }
    if !defined_alike(record, desired) {
        return Plan::Refresh(RefreshReason::SpecChanged);
    }
    if desired.refresh_request.is_some() && desired.refresh_request != record.refresh_request {
        return Plan::Refresh(RefreshReason::RefreshRequested);
    }
    let due = refresh_due_at(
        record.issued_at,
        record.expires_at,
        refresh_interval,
        jitter,
    );
    if now >= due {
        Plan::Refresh(RefreshReason::Due)
    } else {
        Plan::WaitUntil(due)
    }
}

/// When a token issued at `issued_at` is due for refresh (api.md, "Refresh
/// timing for mounted Secrets"): with its lifetime `L` known, at the
/// earliest of 2/3 of `L`, `refresh_interval` after issue and
/// [`REFRESH_BEFORE_EXPIRY`] before expiry, but never before `L/2`; with
/// `L` unknown, `refresh_interval` or else 30 min. Never more than
/// [`MAX_REFRESH_AFTER`] and never less than [`MIN_REFRESH_AFTER`] after
/// issue. Moved earlier by `jitter` (in `[0, 1)`) times a small share of
/// that period, so many credentials do not refresh together, but not
/// before `L/2`.
///
/// A token that lives less than [`MIN_REFRESH_AFTER`] expires before this
/// deadline; the caller must look at it again at its expiry (see [`wake_at`]).
pub fn refresh_due_at(
    issued_at: Timestamp,
    expires_at: Option<Timestamp>,
    refresh_interval: Option<Duration>,
    jitter: f64,
) -> Timestamp {
    let lifetime = expires_at.map(|exp| exp.duration_since(issued_at));
    let by_interval = refresh_interval.and_then(|i| SignedDuration::try_from(i).ok());
    let earliest_allowed = lifetime.map_or(SignedDuration::ZERO, |l| l / 2);
    let period = match lifetime {
        Some(l) => {
            let due = (l * 2 / 3).min(l - signed(REFRESH_BEFORE_EXPIRY));
            by_interval
                .map_or(due, |i| due.min(i))
                .max(earliest_allowed)
        }
        None => by_interval.unwrap_or(signed(DEFAULT_REFRESH_AFTER)),
    };
    let period = period
        .max(signed(MIN_REFRESH_AFTER))
        .min(signed(MAX_REFRESH_AFTER));
    let max_jitter = (period.as_secs_f64() * JITTER_SHARE).min(MAX_JITTER.as_secs_f64());
    let jitter = SignedDuration::from_secs_f64(max_jitter * jitter.clamp(0.0, 1.0));
    let period = (period - jitter)
        .max(earliest_allowed.min(period))
        .max(signed(MIN_REFRESH_AFTER));
    issued_at.saturating_add(period).unwrap_or(Timestamp::MAX)
}

/// Whether a token of this lifetime is reported as short
/// ([`SHORT_LIFETIME`]); `false` when the expiry is unknown.
pub fn lifetime_is_short(issued_at: Timestamp, expires_at: Option<Timestamp>) -> bool {
    expires_at.is_some_and(|exp| exp.duration_since(issued_at) < signed(SHORT_LIFETIME))
}

/// When to retry after the `attempts`-th consecutive failure: exponential from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], shortened by up to a quarter by
/// `jitter` (in `[0, 1)`), and not before the `retry_after` the endpoint asked
/// for (itself capped at [`MAX_RETRY_AFTER`]). While a token is still valid
/// (`valid_until` in the future), the retry is moved to
/// [`RETRY_BEFORE_EXPIRY`] before its expiry when it would be later, but never
/// sooner than [`MIN_REFRESH_AFTER`] from `now`.
pub fn retry_at(
    now: Timestamp,
    attempts: u32,
    retry_after: Option<Duration>,
    valid_until: Option<Timestamp>,
    jitter: f64,
) -> Timestamp {
    let exponent = attempts.saturating_sub(1).min(16);
    let backoff = BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_CAP)
        .mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0));
    let asked = retry_after.unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER);
    let mut delay = backoff.max(asked);
    if let Some(expiry) = valid_until.filter(|at| *at > now) {
        let before_expiry = expiry
            .saturating_sub(signed(RETRY_BEFORE_EXPIRY))
            .unwrap_or(expiry);
        delay = delay.min(delay_until(now, before_expiry).max(MIN_REFRESH_AFTER));
    }
    now.saturating_add(signed(delay.max(MIN_REFRESH_AFTER)))
        .unwrap_or(Timestamp::MAX)
}

/// When to look at a credential again: at `next` (a refresh or a retry), or
/// earlier at the expiry of a token that is still valid, so that `Ready`
/// never says True for an expired token.
pub fn wake_at(next: Timestamp, valid_until: Option<Timestamp>, now: Timestamp) -> Timestamp {
    match valid_until {
        Some(expiry) if expiry > now && expiry < next => expiry,
        _ => next,
    }
}

/// Whether a new token deserves a Normal Event: the first one, one after a
/// change (of the spec, the credentials, the token in the Secret) or a
/// refresh request, and a recovery after failures. A routine refresh, due by
/// the schedule, is only counted by the metrics.
pub fn announce_token(reason: RefreshReason, recovering: bool) -> bool {
    recovering || !matches!(reason, RefreshReason::Due | RefreshReason::Shared)
}

/// Whether the `attempts`-th failure in a row deserves a Warning Event: when
/// its reason is new, then at attempts 1, 2, 4, 8 … so that a lasting failure
/// is repeated at a decaying rate rather than once per retry.
pub fn warn_again(attempts: u32, previous_reason: Option<&str>, reason: &str) -> bool {
    previous_reason != Some(reason) || attempts.is_power_of_two()
}

/// A stable jitter in `[0, 1)` derived from `seed`, so that a refresh
/// deadline computed again after a restart is the same one.
pub fn stable_jitter(seed: &str) -> f64 {
    // FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`).
    let hash = seed.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The delay from `now` until `at`, zero when it is past.
pub fn delay_until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Compares two keyed hashes in constant time, so that the time a check
/// takes tells nothing about how much of a forged hash was right.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A timestamp at the precision the Secret stores it with.
///
/// Truncated, never rounded up: an expiry recorded a fraction of a second
/// late would keep an expired token `Ready` for that fraction.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    let truncate = jiff::TimestampRound::new()
        .smallest(jiff::Unit::Second)
        .mode(jiff::RoundMode::Trunc);
    t.round(truncate).unwrap_or(t)
}

/// The last failed refresh, as shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The condition reason (a Kubernetes `CamelCase` word).
    pub reason: &'static str,
    /// What went wrong, free of secrets.
    pub message: String,
    /// Failed attempts in a row, this one included.
    pub attempts: u32,
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn record() -> TokenRecord {
        TokenRecord {
            issued_at: t("2026-01-01T00:00:00Z"),
            expires_at: Some(t("2026-01-01T01:00:00Z")),
            credentials_hash: "h1".into(),
            generation: 1,
            refresh_request: None,
            definition: None,
            token_api: None,
        }
    }

    fn desired() -> Desired {
        Desired {
            credentials_hash: Some("h1".into()),
            generation: 1,
            refresh_request: None,
            definition: None,
        }
    }

    #[test]
    fn due_at_two_thirds_of_lifetime() {
        let r = record();
        assert_eq!(
            refresh_due_at(r.issued_at, r.expires_at, None, 0.0),
            t("2026-01-01T00:40:00Z")
        );
    }

    #[test]
    fn short_tokens_are_refreshed_two_minutes_before_expiry_but_not_before_half_their_life() {
        let at = t("2026-01-01T00:00:00Z");
        let due = |lifetime: i64| {
            let due = refresh_due_at(
                at,
                Some(at + SignedDuration::from_secs(lifetime)),
                None,
                0.0,
            );
            due.duration_since(at).as_secs()
        };
        // 5 min: 2 min before expiry (3 min) is earlier than 2/3 (3 min 20 s).
        assert_eq!(due(300), 180);
        // 3 min: 2 min before expiry would be 1 min; half is 90 s.
        assert_eq!(due(180), 90);
        // 1 h: 2/3 (40 min) comes first.
        assert_eq!(due(3600), 2400);
        assert!(lifetime_is_short(
            at,
            Some(at + SignedDuration::from_secs(239))
        ));
        assert!(!lifetime_is_short(
            at,
            Some(at + SignedDuration::from_secs(240))
        ));
        assert!(!lifetime_is_short(at, None));
    }

    #[test]
    fn interval_caps_the_lifetime_but_not_below_half_of_it() {
        let r = record();
        let due = refresh_due_at(
            r.issued_at,
            r.expires_at,
            Some(Duration::from_secs(2100)),
            0.0,
        );
        assert_eq!(due, t("2026-01-01T00:35:00Z"));
        // Never before half the lifetime, jitter included.
        for jitter in [0.0, 0.99] {
            let due = refresh_due_at(
                r.issued_at,
                r.expires_at,
                Some(Duration::from_secs(600)),
                jitter,
            );
            assert_eq!(due, t("2026-01-01T00:30:00Z"));
        }
        let long = refresh_due_at(
            r.issued_at,
            r.expires_at,
            Some(Duration::from_secs(7200)),
            0.0,
        );
        assert_eq!(long, t("2026-01-01T00:40:00Z"));
    }

    #[test]
    fn unknown_lifetime_defaults_to_thirty_minutes() {
        assert_eq!(
            refresh_due_at(t("2026-01-01T00:00:00Z"), None, None, 0.0),
            t("2026-01-01T00:30:00Z")
        );
    }

    #[test]
    fn jitter_only_moves_earlier_and_is_bounded() {
        let r = record();
        let latest = refresh_due_at(r.issued_at, r.expires_at, None, 0.0);
        let earliest = refresh_due_at(r.issued_at, r.expires_at, None, 0.999_999);
        assert!(earliest < latest);
        // 10 % of 40 min is 4 min.
        assert!(latest.duration_since(earliest) <= SignedDuration::from_mins(4));
        assert!(latest.duration_since(earliest) > SignedDuration::from_secs(239));
        let day = refresh_due_at(
            r.issued_at,
            Some(t("2026-01-04T00:00:00Z")),
            None,
            0.999_999,
        );
        let day_latest = refresh_due_at(r.issued_at, Some(t("2026-01-04T00:00:00Z")), None, 0.0);
        assert!(day_latest.duration_since(day) <= SignedDuration::from_mins(5));
    }

    #[test]
    fn a_broken_expiry_cannot_cause_a_hot_loop() {
        let issued = t("2026-01-01T00:00:00Z");
        let due = refresh_due_at(issued, Some(t("2025-12-31T00:00:00Z")), None, 0.5);
        assert_eq!(due, t("2026-01-01T00:00:05Z"));
    }

    #[test]
    fn stable_jitter_is_stable_and_in_range() {
        let a = stable_jitter("uid-1/2026-01-01T00:00:00Z");
        assert_eq!(a, stable_jitter("uid-1/2026-01-01T00:00:00Z"));
        assert_ne!(a, stable_jitter("uid-2/2026-01-01T00:00:00Z"));
        for i in 0..1000 {
            let j = stable_jitter(&format!("seed-{i}"));
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn plan_waits_while_fresh() {
        let r = record();
        let now = t("2026-01-01T00:20:00Z");
        assert_eq!(
            plan(now, Some((&r, true)), &desired(), None, None, 0.0),
            Plan::WaitUntil(t("2026-01-01T00:40:00Z"))
        );
        let later = t("2026-01-01T00:40:00Z");
        assert_eq!(
            plan(later, Some((&r, true)), &desired(), None, None, 0.0),
            Plan::Refresh(RefreshReason::Due)
        );
    }

    #[test]
    fn plan_refreshes_on_every_kind_of_change() {
        let r = record();
        let now = t("2026-01-01T00:01:00Z");
        let p = |stored, d: &Desired| plan(now, stored, d, None, None, 0.0);
        assert_eq!(p(None, &desired()), Plan::Refresh(RefreshReason::NoToken));
        assert_eq!(
            p(Some((&r, false)), &desired()),
            Plan::Refresh(RefreshReason::TokenAltered)
        );
        let rotated = Desired {
            credentials_hash: Some("h2".into()),
            ..desired()
        };
        assert_eq!(
            p(Some((&r, true)), &rotated),
            Plan::Refresh(RefreshReason::CredentialsChanged)
        );
        let missing = Desired {
            credentials_hash: None,
            ..desired()
        };
        assert_eq!(
            p(Some((&r, true)), &missing),
            Plan::Refresh(RefreshReason::CredentialsChanged)
        );
        let edited = Desired {
            generation: 2,
            ..desired()
        };
        assert_eq!(
            p(Some((&r, true)), &edited),
            Plan::Refresh(RefreshReason::SpecChanged)
        );
        let requested = Desired {
            refresh_request: Some("now".into()),
            ..desired()
        };
        assert_eq!(
            p(Some((&r, true)), &requested),
            Plan::Refresh(RefreshReason::RefreshRequested)
        );
        // The same request value is answered once only.
        let answered = TokenRecord {
            refresh_request: Some("now".into()),
            ..record()
        };
        assert!(matches!(
            p(Some((&answered, true)), &requested),
            Plan::WaitUntil(_)
        ));
    }

    #[test]
    fn backoff_holds_until_something_changes() {
        let r = record();
        let now = t("2026-01-01T00:45:00Z");
        let backoff = Backoff {
            desired: desired(),
            retry_at: t("2026-01-01T00:46:00Z"),
        };
        assert_eq!(
            plan(now, Some((&r, true)), &desired(), Some(&backoff), None, 0.0),
            Plan::RetryAt(backoff.retry_at)
        );
        let fixed = Desired {
            credentials_hash: Some("h2".into()),
            ..desired()
        };
        assert_eq!(
            plan(now, Some((&r, true)), &fixed, Some(&backoff), None, 0.0),
            Plan::Refresh(RefreshReason::CredentialsChanged)
        );
        let after = t("2026-01-01T00:46:00Z");
        assert_eq!(
            plan(
                after,
                Some((&r, true)),
                &desired(),
                Some(&backoff),
                None,
                0.0
            ),
            Plan::Refresh(RefreshReason::Due)
        );
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let now = t("2026-01-01T00:00:00Z");
        let delay = |attempts, retry_after, jitter| {
            delay_until(now, retry_at(now, attempts, retry_after, None, jitter))
        };
        assert_eq!(delay(1, None, 0.0), Duration::from_secs(5));
        assert_eq!(delay(2, None, 0.0), Duration::from_secs(10));
        assert_eq!(delay(4, None, 0.0), Duration::from_secs(40));
        assert_eq!(delay(20, None, 0.0), BACKOFF_CAP);
        assert_eq!(delay(u32::MAX, None, 0.0), BACKOFF_CAP);
        let jittered = delay(20, None, 0.999);
        assert!(jittered < BACKOFF_CAP && jittered >= BACKOFF_CAP.mul_f64(0.75));
        assert_eq!(
            delay(1, Some(Duration::from_secs(120)), 0.0),
            Duration::from_secs(120)
        );
        assert_eq!(delay(20, Some(Duration::from_secs(1)), 0.0), BACKOFF_CAP);
    }

    #[test]
    fn retry_after_is_capped_by_an_hour_and_by_the_token() {
        let now = t("2026-01-01T00:00:00Z");
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(
            delay_until(now, retry_at(now, 1, Some(year), None, 0.0)),
            MAX_RETRY_AFTER
        );
        // A 90 s token refreshed at 60 s: the retry is not after its expiry.
        let expiry = t("2026-01-01T00:00:30Z");
        assert_eq!(
            delay_until(now, retry_at(now, 1, Some(year), Some(expiry), 0.0)),
            MIN_REFRESH_AFTER
        );
        // With ten minutes left, a minute before the expiry.
        let expiry = t("2026-01-01T00:10:00Z");
        assert_eq!(
            retry_at(now, 1, Some(year), Some(expiry), 0.0),
            t("2026-01-01T00:09:00Z")
        );
        // An expired token does not shorten anything.
        assert_eq!(
            delay_until(
                now,
                retry_at(now, 1, Some(year), Some(t("2025-12-31T00:00:00Z")), 0.0)
            ),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn no_refresh_later_than_a_day() {
        let issued = t("2026-01-01T00:00:00Z");
        let year_token = Some(t("2027-01-01T00:00:00Z"));
        assert_eq!(
            refresh_due_at(issued, year_token, None, 0.0),
            t("2026-01-02T00:00:00Z")
        );
        assert_eq!(
            refresh_due_at(issued, None, Some(Duration::from_secs(7 * 24 * 3600)), 0.0),
            t("2026-01-02T00:00:00Z")
        );
    }

    #[test]
    fn a_token_shorter_than_the_spacing_is_looked_at_on_expiry() {
        let issued = t("2026-01-01T00:00:00Z");
        let expiry = t("2026-01-01T00:00:03Z");
        let due = refresh_due_at(issued, Some(expiry), None, 0.0);
        assert_eq!(due, t("2026-01-01T00:00:05Z"));
        assert_eq!(wake_at(due, Some(expiry), issued), expiry);
        assert_eq!(wake_at(due, Some(expiry), expiry), due);
        assert_eq!(wake_at(due, None, issued), due);
    }

    #[test]
    fn events_inform_without_flooding() {
        assert!(!announce_token(RefreshReason::Due, false), "routine");
        assert!(announce_token(RefreshReason::Due, true), "a recovery");
        for reason in [
            RefreshReason::NoToken,
            RefreshReason::TokenAltered,
            RefreshReason::CredentialsChanged,
            RefreshReason::SpecChanged,
            RefreshReason::RefreshRequested,
        ] {
            assert!(announce_token(reason, false), "{reason:?}");
        }
        let warned: Vec<u32> = (1..=40)
            .filter(|a| warn_again(*a, Some("TokenEndpointError"), "TokenEndpointError"))
            .collect();
        assert_eq!(warned, vec![1, 2, 4, 8, 16, 32]);
        assert!(
            warn_again(7, Some("TokenEndpointError"), "InvalidCredentials"),
            "a new reason"
        );
        assert!(warn_again(1, None, "TokenEndpointError"));
    }
}
