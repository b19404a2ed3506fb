//! The status a RunaiCredential should show, computed from plain facts.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{
    api::{
        CONDITION_DEGRADED, CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED,
        RunaiCredentialStatus, TokenApi,
    },
    output::secret::rfc3339,
    token::schedule::TokenRecord,
};

/// Reason of `Ready=True`.
pub const REASON_TOKEN_READY: &str = "TokenReady";
/// Reason of `Ready=False` when the token in the Secret expired while refreshing failed.
pub const REASON_TOKEN_EXPIRED: &str = "TokenExpired";
/// Reason of failures of the token endpoint other than rejected credentials.
pub const REASON_TOKEN_ENDPOINT_ERROR: &str = "TokenEndpointError";
/// Reason of `Degraded=False`.
pub const REASON_REFRESH_SUCCEEDED: &str = "RefreshSucceeded";
/// Reason of `Ready=False` before the first token request.
pub const REASON_PENDING: &str = "Pending";

pub use crate::token::schedule::Failure;

/// The token in the Secret as far as the status is concerned.
#[derive(Clone, Copy, Debug)]
pub struct CurrentToken<'a> {
    pub record: &'a TokenRecord,
    /// Obtained with the current url, token API and credentials.
    pub current: bool,
}

/// The reason of the failure a stored status shows (of either kind), if it
/// shows one: `Degraded`'s when True, else `Ready`'s.
#[must_use]
pub fn failure_reason(conditions: &[Condition], failed_attempts: u32) -> Option<&str> {
    if failed_attempts == 0 {
        return None;
    }
    conditions
        .iter()
        .find(|c| c.type_ == CONDITION_DEGRADED && c.status == "True")
        .or_else(|| conditions.iter().find(|c| c.type_ == CONDITION_READY))
        .map(|c| c.reason.as_str())
}

/// Status while the controller keeps a token: Ready tells whether a valid
/// token is there, Degraded whether refreshing fails.
pub fn token_status(
    previous: Option<&RunaiCredentialStatus>,
    generation: Option<i64>,
    secret_name: &str,
    token: Option<CurrentToken<'_>>,
    failure: Option<&Failure>,
    next_refresh: Timestamp,
    now: Timestamp,
) -> RunaiCredentialStatus {
    let valid = token.filter(|t| t.current && !t.record.is_expired(now));
    let ready = ready_condition(secret_name, token, valid, failure, next_refresh);
    let degraded = degraded_condition(valid, failure);
    let record = token.map(|t| t.record);
    let mut conditions = ready_with_kstatus(ready);
    conditions.insert(1, degraded);
    RunaiCredentialStatus {
        observed_generation: generation,
        conditions: merge_conditions(previous, conditions, generation, now),
        secret_name: Some(secret_name.to_owned()),
        last_refresh_time: record.map(|r| rfc3339(r.issued_at)),
        expiration_time: record.and_then(|r| r.expires_at).map(rfc3339),
        next_refresh_time: Some(rfc3339(next_refresh)),
        failed_attempts: failure.map_or(0, |f| f.attempts),
        // Set by the caller, which knows the group.
        shared_with: 0,
        token_api: record.and_then(|r| r.token_api),
    }
}

/// `status.tokenApi`: the generation that issued the token in place, as
/// its record says; without one on record (a Secret written before it was
/// kept), an explicit `spec.tokenApi`, the only one that can have issued
/// it; under `Auto`, unknown until a request answers.
pub fn token_api_shown(spec: TokenApi, record: Option<&TokenRecord>) -> Option<TokenApi> {
    record
        .and_then(|r| r.token_api)
        .or((spec != TokenApi::Auto).then_some(spec))
}

/// `Ready`: whether the Secret holds a `valid` token (current and
/// unexpired); if not, why (the failure, an expiry, or nothing requested yet).
fn ready_condition(
    secret_name: &str,
    token: Option<CurrentToken<'_>>,
    valid: Option<CurrentToken<'_>>,
    failure: Option<&Failure>,
    next_refresh: Timestamp,
) -> Condition {
    match (valid, failure) {
        (Some(t), _) => condition(
            CONDITION_READY,
            true,
            REASON_TOKEN_READY,
            match t.record.expires_at {
                Some(at) => format!(
                    "Secret {secret_name} holds a token valid until {}",
                    rfc3339(at)
                ),
                None => format!("Secret {secret_name} holds a token of unknown expiry"),
            },
        ),
        (None, Some(f)) => match token
            .filter(|t| t.current)
            .and_then(|t| t.record.expires_at)
        {
            // What only a person can fix (rejected or missing credentials)
            // is the reason itself, as without a token; a transient failure
            // is reported as the expiry it caused.
            Some(expired_at) => condition(
                CONDITION_READY,
                false,
                if f.reason == REASON_TOKEN_ENDPOINT_ERROR {
                    REASON_TOKEN_EXPIRED
                } else {
                    f.reason
                },
                format!(
                    "the token in Secret {secret_name} expired at {} and refreshing fails: {}",
                    rfc3339(expired_at),
                    f.message
                ),
            ),
            None => condition(CONDITION_READY, false, f.reason, f.message.clone()),
        },
        (None, None) => match token
            .filter(|t| t.current)
            .and_then(|t| t.record.expires_at)
        {
            // A token that lives less than the spacing between requests.
            Some(expired_at) => condition(
                CONDITION_READY,
                false,
                REASON_TOKEN_EXPIRED,
                format!(
                    "the token in Secret {secret_name} expired at {}; the next one is requested at {}",
                    rfc3339(expired_at),
                    rfc3339(next_refresh)
                ),
            ),
            None => condition(
                CONDITION_READY,
                false,
                REASON_PENDING,
                "no token has been requested yet".to_owned(),
            ),
        },
    }
}

/// `Degraded`: whether refreshing fails, and what that leaves.
fn degraded_condition(valid: Option<CurrentToken<'_>>, failure: Option<&Failure>) -> Condition {
    match failure {
        Some(f) => condition(
            CONDITION_DEGRADED,
            true,
            f.reason,
            format!(
                "refresh failed {} time(s) in a row: {}; {}",
                f.attempts,
                f.message,
                match valid.map(|t| t.record.expires_at) {
                    Some(Some(at)) =>
                        format!("the current token stays valid until {}", rfc3339(at)),
                    Some(None) => "the current token's expiry is unknown".to_owned(),
                    None => "there is no valid token".to_owned(),
                }
            ),
        ),
        None => condition(
            CONDITION_DEGRADED,
            false,
            REASON_REFRESH_SUCCEEDED,
            "the last refresh succeeded".to_owned(),
        ),
    }
}

/// Status when the controller cannot act until the user changes something
/// (an invalid spec, a Secret it does not own): `Ready=False` and the
/// kstatus conditions, no `Degraded`.
pub fn blocked_status(
    previous: Option<&RunaiCredentialStatus>,
    generation: Option<i64>,
    secret_name: &str,
    reason: &'static str,
    message: String,
    now: Timestamp,
) -> RunaiCredentialStatus {
    let ready = condition(CONDITION_READY, false, reason, message);
    RunaiCredentialStatus {
        observed_generation: generation,
        conditions: merge_conditions(previous, ready_with_kstatus(ready), generation, now),
        secret_name: Some(secret_name.to_owned()),
        ..RunaiCredentialStatus::default()
    }
}

/// Reasons of `Ready=False` that only a person can resolve (a changed spec,
/// credentials or Secret): `Stalled=True`. Every other `Ready=False` is
/// being retried: `Reconciling=True`.
pub const STALLED_REASONS: &[&str] = &[
    "InvalidSpec",
    "InvalidCredentials",
    "CredentialsNotFound",
    "SecretConflict",
    "SecretWriteFailed",
    // A ClusterRunaiCredential's namespaces whose Secret is someone else's
    // or refused.
    "NamespacesFailed",
];

/// `status` with its Ready condition replaced (and the kstatus conditions
/// that follow from it), transition times kept from `previous`.
pub fn with_ready(
    previous: Option<&RunaiCredentialStatus>,
    mut status: RunaiCredentialStatus,
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> RunaiCredentialStatus {
    let ready = condition(CONDITION_READY, ready, reason, message);
    let replaced = [CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED];
    let mut conditions: Vec<Condition> = status
        .conditions
        .into_iter()
        .filter(|c| !replaced.contains(&c.type_.as_str()))
        .collect();
    conditions.extend(merge_conditions(
        previous,
        ready_with_kstatus(ready),
        generation,
        now,
    ));
    status.conditions = conditions;
    status
}

/// The kstatus condition that goes with `ready`, if any: a Ready credential
/// has neither `Reconciling` nor `Stalled`; one stuck on a person's change is
/// `Stalled=True` with Ready's reason and message; any other is
/// `Reconciling=True`, also while transient failures are retried.
///
/// A condition that is not True is left out rather than written as False,
/// as the kstatus conventions recommend for these abnormal-true conditions
/// (Flux does the same): a healthy status is then two conditions, which
/// makes every status write, and the watch event it causes, smaller.
/// Source: sigs.k8s.io/cli-utils, pkg/kstatus/README.md.
pub fn kstatus(ready: &Condition) -> Option<Condition> {
    let reason = ready.reason.as_str();
    if ready.status == "True" {
        return None;
    }
    Some(if STALLED_REASONS.contains(&reason) {
        condition(CONDITION_STALLED, true, reason, ready.message.clone())
    } else {
        condition(CONDITION_RECONCILING, true, reason, ready.message.clone())
    })
}

/// `ready` followed by its kstatus condition, if any.
fn ready_with_kstatus(ready: Condition) -> Vec<Condition> {
    let kstatus = kstatus(&ready);
    std::iter::once(ready).chain(kstatus).collect()
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Sets generation and transition times: a condition whose status did not
/// change keeps its `lastTransitionTime`, so that an unchanged status is equal
/// to the one stored and costs no write.
fn merge_conditions(
    previous: Option<&RunaiCredentialStatus>,
    conditions: Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let now = now.round(jiff::Unit::Second).unwrap_or(now);
    conditions
        .into_iter()
        .map(|mut c| {
            let before = previous.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_));
            c.last_transition_time = match before {
                Some(b) if b.status == c.status => b.last_transition_time.clone(),
                _ => Time(now),
            };
            c.observed_generation = generation;
            c
        })
        .collect()
}

/// A status of either kind, as far as deciding whether to write it goes.
pub trait ShownStatus: Clone + PartialEq {
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn shared_with_mut(&mut self) -> &mut u32;
    fn shared_with(&self) -> u32;
}

impl ShownStatus for RunaiCredentialStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
    fn shared_with_mut(&mut self) -> &mut u32 {
        &mut self.shared_with
    }
    fn shared_with(&self) -> u32 {
        self.shared_with
    }
}

impl ShownStatus for crate::api::ClusterRunaiCredentialStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
    fn shared_with_mut(&mut self) -> &mut u32 {
        &mut self.shared_with
    }
    fn shared_with(&self) -> u32 {
        self.shared_with
    }
}

/// Whether the status `new` shows nothing that `stored` does not, so that
/// it is not written: the order of conditions aside, and `sharedWith`
/// aside. A new `sharedWith` alone is no reason to write (api.md, "Shared
/// token exchange"): it goes out with the member's next status write, at
/// the latest at its next refresh, so that a member joining or leaving a
/// group costs the other members no write.
/// Whether the status `new` must be written over `stored` (none yet: it
/// must): when it shows something new ([`same_status`]), or, after a token
/// was written to the credential's Secret(s) in this pass (`wrote_token`),
/// when only `sharedWith` changed (api.md promises the count at the latest
/// at a refresh, even one issued within the same second).
pub fn must_write<S: ShownStatus>(stored: Option<&S>, new: &S, wrote_token: bool) -> bool {
    stored.is_none_or(|old| {
        !same_status(old, new) || (wrote_token && old.shared_with() != new.shared_with())
    })
}

pub fn same_status<S: ShownStatus>(stored: &S, new: &S) -> bool {
    fn comparable<S: ShownStatus>(s: &S) -> S {
        let mut c = s.clone();
        c.conditions_mut().sort_by(|x, y| x.type_.cmp(&y.type_));
        *c.shared_with_mut() = 0;
        c
    }
    comparable(stored) == comparable(new)
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
            credentials_hash: "h".into(),
            generation: 1,
            refresh_request: None,
            definition: None,
            token_api: None,
        }
    }

    fn ready(s: &RunaiCredentialStatus) -> &Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .unwrap()
    }

    fn degraded(s: &RunaiCredentialStatus) -> &Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == CONDITION_DEGRADED)
            .unwrap()
    }

    const NEXT: &str = "2026-01-01T00:40:00Z";

    #[test]
    fn fresh_token_is_ready() {
        let r = record();
        let token = CurrentToken {
            record: &r,
            current: true,
        };
        let s = token_status(
            None,
            Some(1),
            "sec",
            Some(token),
            None,
            t(NEXT),
            t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(ready(&s).status, "True");
        assert_eq!(degraded(&s).status, "False");
        assert_eq!(s.expiration_time.as_deref(), Some("2026-01-01T01:00:00Z"));
        assert_eq!(s.last_refresh_time.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(s.next_refresh_time.as_deref(), Some(NEXT));
        assert_eq!(s.failed_attempts, 0);
        assert_eq!(ready(&s).observed_generation, Some(1));
    }

    #[test]
    fn rejected_credentials_are_the_ready_reason_once_the_token_expired() {
        let r = record();
        let token = CurrentToken {
            record: &r,
            current: true,
        };
        let after_expiry = t("2026-01-01T01:00:01Z");
        let status_with = |reason: &'static str| {
            let failure = Failure {
                reason,
                message: "rejected".into(),
                attempts: 3,
            };
            token_status(
                None,
                Some(1),
                "sec",
                Some(token),
                Some(&failure),
                t(NEXT),
                after_expiry,
            )
        };
        let rejected = status_with("InvalidCredentials");
        assert_eq!(ready(&rejected).reason, "InvalidCredentials");
        assert!(
            ready(&rejected)
                .message
                .contains("expired at 2026-01-01T01:00:00Z")
        );
        assert_eq!(degraded(&rejected).reason, "InvalidCredentials");
        let outage = status_with(REASON_TOKEN_ENDPOINT_ERROR);
        assert_eq!(ready(&outage).reason, REASON_TOKEN_EXPIRED);
        // While the token is valid, the failure is only the Degraded reason.
        let failure = Failure {
            reason: "InvalidCredentials",
            message: "rejected".into(),
            attempts: 1,
        };
        let valid = token_status(
            None,
            Some(1),
            "sec",
            Some(token),
            Some(&failure),
            t(NEXT),
            t("2026-01-01T00:50:00Z"),
        );
        assert_eq!(ready(&valid).status, "True");
        assert_eq!(degraded(&valid).reason, "InvalidCredentials");
    }

    #[test]
    fn a_token_shorter_than_the_spacing_is_not_ready_once_expired() {
        // A 3 s token; the next request may come only 5 s after the last.
        let r = TokenRecord {
            expires_at: Some(t("2026-01-01T00:00:03Z")),
            ..record()
        };
        let token = CurrentToken {
            record: &r,
            current: true,
        };
        let next = t("2026-01-01T00:00:05Z");
        let before = token_status(
            None,
            Some(1),
            "sec",
            Some(token),
            None,
            next,
            t("2026-01-01T00:00:02Z"),
        );
        assert_eq!(ready(&before).status, "True");
        let after = token_status(
            None,
            Some(1),
            "sec",
            Some(token),
            None,
            next,
            t("2026-01-01T00:00:03Z"),
        );
        assert_eq!(ready(&after).status, "False");
        assert_eq!(ready(&after).reason, REASON_TOKEN_EXPIRED);
        assert!(
            ready(&after).message.contains("00:00:05Z"),
            "{}",
            ready(&after).message
        );
        assert_eq!(degraded(&after).status, "False", "nothing failed");
    }

    #[test]
    fn outage_keeps_ready_and_sets_degraded() {
        let r = record();
        let token = CurrentToken {
            record: &r,
            current: true,
        };
        let failure = Failure {
            reason: "TokenEndpointError",
            message: "HTTP 503".into(),
            attempts: 2,
        };
        let s = token_status(
            None,
            Some(1),
            "sec",
            Some(token),
            Some(&failure),
            t(NEXT),
            t("2026-01-01T00:50:00Z"),
        );
        assert_eq!(ready(&s).status, "True");
        assert_eq!(degraded(&s).status, "True");
        assert_eq!(degraded(&s).reason, "TokenEndpointError");
        assert!(
            degraded(&s)
                .message
                .contains("valid until 2026-01-01T01:00:00Z"),
            "{}",
            degraded(&s).message
        );
        assert_eq!(s.failed_attempts, 2);

        let expired = token_status(
            None,
            Some(1),
            "sec",
            Some(token),
            Some(&failure),
            t(NEXT),
            t("2026-01-01T01:00:01Z"),
        );
        assert_eq!(ready(&expired).status, "False");
        assert_eq!(ready(&expired).reason, REASON_TOKEN_EXPIRED);
        assert!(degraded(&expired).message.contains("no valid token"));
    }

    #[test]
    fn token_for_old_credentials_is_not_ready_when_new_ones_fail() {
        let r = record();
        let token = CurrentToken {
            record: &r,
            current: false,
        };
        let failure = Failure {
            reason: "InvalidCredentials",
            message: "HTTP 401".into(),
            attempts: 1,
        };
        let s = token_status(
            None,
            Some(2),
            "sec",
            Some(token),
            Some(&failure),
            t(NEXT),
            t("2026-01-01T00:10:00Z"),
        );
        assert_eq!(ready(&s).status, "False");
        assert_eq!(ready(&s).reason, "InvalidCredentials");
    }

    #[test]
    fn unchanged_status_keeps_transition_times_and_compares_equal() {
        let r = record();
        let token = CurrentToken {
            record: &r,
            current: true,
        };
        let first = token_status(
            None,
            Some(1),
            "sec",
            Some(token),
            None,
            t(NEXT),
            t("2026-01-01T00:00:10Z"),
        );
        let mut reordered = first.clone();
        reordered.conditions.reverse();
        let second = token_status(
            Some(&reordered),
            Some(1),
            "sec",
            Some(token),
            None,
            t(NEXT),
            t("2026-01-01T00:20:00Z"),
        );
        assert!(same_status(&second, &reordered));
        assert_eq!(
            ready(&second).last_transition_time,
            Time(t("2026-01-01T00:00:10Z"))
        );
    }

    fn find<'a>(s: &'a RunaiCredentialStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn blocked_status_is_stalled_not_degraded() {
        let s = blocked_status(
            None,
            Some(4),
            "sec",
            "SecretConflict",
            "taken".into(),
            t(NEXT),
        );
        assert_eq!(s.conditions.len(), 2);
        assert!(s.conditions.iter().all(|c| c.type_ != CONDITION_DEGRADED));
        assert_eq!(ready(&s).reason, "SecretConflict");
        let stalled = find(&s, CONDITION_STALLED);
        assert_eq!(
            (
                stalled.status.as_str(),
                stalled.reason.as_str(),
                stalled.message.as_str()
            ),
            ("True", "SecretConflict", "taken")
        );
        assert!(
            s.conditions
                .iter()
                .all(|c| c.type_ != CONDITION_RECONCILING)
        );
        assert_eq!(s.observed_generation, Some(4));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
    }

    #[test]
    fn kstatus_tells_working_waiting_and_stuck_apart() {
        let r = record();
        let token = CurrentToken {
            record: &r,
            current: true,
        };
        let at = |s: &str| t(s);
        let failure = |reason: &'static str| Failure {
            reason,
            message: format!("{reason} happened"),
            attempts: 2,
        };
        let status = |token, failure: Option<&Failure>, now| {
            token_status(None, Some(2), "sec", token, failure, t(NEXT), now)
        };
        // An absent condition reads as "False", as kstatus reads it.
        let pair = |s: &RunaiCredentialStatus| {
            let status = |type_| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == type_)
                    .map_or_else(|| "False".to_owned(), |c| c.status.clone())
            };
            assert!(
                s.conditions.iter().all(|c| c.status == "True"
                    || ![CONDITION_RECONCILING, CONDITION_STALLED].contains(&c.type_.as_str())),
                "a kstatus condition written as False: {:?}",
                s.conditions
            );
            (status(CONDITION_RECONCILING), status(CONDITION_STALLED))
        };
        let t_ = |s: &str| s.to_owned();
        // Healthy: neither.
        let healthy = status(Some(token), None, at("2026-01-01T00:01:00Z"));
        assert_eq!(pair(&healthy), (t_("False"), t_("False")));
        // New: no token yet, working on it.
        let new = status(None, None, at("2026-01-01T00:01:00Z"));
        assert_eq!(pair(&new), (t_("True"), t_("False")));
        assert_eq!(find(&new, CONDITION_RECONCILING).reason, REASON_PENDING);
        // A transient failure without a token: retried, so Reconciling.
        let outage = failure(REASON_TOKEN_ENDPOINT_ERROR);
        let retrying = status(None, Some(&outage), at("2026-01-01T00:01:00Z"));
        assert_eq!(pair(&retrying), (t_("True"), t_("False")));
        // The same failure with a valid token: Degraded only, in place.
        let degraded_only = status(Some(token), Some(&outage), at("2026-01-01T00:01:00Z"));
        assert_eq!(pair(&degraded_only), (t_("False"), t_("False")));
        // Rejected credentials and no valid token: Stalled, Ready's words.
        let rejected = failure("InvalidCredentials");
        let stuck = status(Some(token), Some(&rejected), at("2026-01-01T01:00:01Z"));
        assert_eq!(pair(&stuck), (t_("False"), t_("True")));
        let stalled = find(&stuck, CONDITION_STALLED);
        assert_eq!(stalled.reason, ready(&stuck).reason);
        assert_eq!(stalled.message, ready(&stuck).message);
        for reason in STALLED_REASONS {
            let f = failure(reason);
            let s = status(None, Some(&f), at("2026-01-01T00:01:00Z"));
            assert_eq!(pair(&s), (t_("False"), t_("True")), "{reason}");
        }
    }
}

#[cfg(test)]
mod same_status_tests {
    use super::*;
    use crate::api::ClusterRunaiCredentialStatus;

    fn check<S: ShownStatus + Default + std::fmt::Debug>(kind: &str) {
        let stored = S::default();
        let mut grown = stored.clone();
        *grown.shared_with_mut() = 4;
        assert!(
            same_status(&stored, &grown),
            "{kind}: sharedWith alone is no reason to write"
        );
        // Positive control: anything else shown is.
        let mut other = grown.clone();
        other.conditions_mut().push(Condition {
            type_: CONDITION_READY.to_owned(),
            status: "True".to_owned(),
            reason: "TokenReady".to_owned(),
            message: String::new(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        });
        assert!(!same_status(&stored, &other), "{kind}");
        // Written for a new count only after a token write; always at first.
        assert!(!must_write(Some(&stored), &grown, false), "{kind}");
        assert!(must_write(Some(&stored), &grown, true), "{kind}");
        assert!(!must_write(Some(&stored), &stored, true), "{kind}");
        assert!(must_write(None, &stored, false), "{kind}");
    }

    #[test]
    fn shared_with_alone_is_no_reason_to_write_for_either_kind() {
        check::<RunaiCredentialStatus>("RunaiCredential");
        check::<ClusterRunaiCredentialStatus>("ClusterRunaiCredential");
    }
}
