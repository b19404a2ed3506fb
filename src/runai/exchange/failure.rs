//! A group's failure and its retry time: one backoff for all members, so
//! that a rate-limited Run:ai application is asked once, not once per
//! member.

use jiff::Timestamp;

use crate::{
    error::Error,
    token::schedule::{self, Failure},
};

/// The last failed request of a group, held against every member until
/// `retry_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFailure {
    pub failure: Failure,
    pub retry_at: Timestamp,
}

/// Whether a request must be held back: the group's `failure` is new to
/// the caller (not the one it `seen`), or its retry time (`Retry-After`,
/// backoff) has not come. Enforced by the exchange, where no caller can
/// skip it.
pub(super) fn holds_back(
    failure: Option<&GroupFailure>,
    seen: Option<&GroupFailure>,
    now: Timestamp,
) -> bool {
    failure.is_some_and(|failure| Some(failure) != seen || now < failure.retry_at)
}

/// The group's failure after a failed request `err` at `now`: one more
/// attempt than `previous`, retried at the time [`schedule::retry_at`] gives
/// (`valid_until`: the expiry of the group's still-valid token, which a
/// retry must come before; `jitter` in `[0, 1)`).
pub(super) fn after(
    previous: Option<&GroupFailure>,
    err: &Error,
    valid_until: Option<Timestamp>,
    now: Timestamp,
    jitter: f64,
) -> GroupFailure {
    let attempts = previous.map_or(0, |f| f.failure.attempts).saturating_add(1);
    GroupFailure {
        failure: Failure {
            reason: err.reason(),
            message: err.to_string(),
            attempts,
        },
        retry_at: schedule::retry_at(now, attempts, err.retry_after(), valid_until, jitter),
    }
}

/// The group's failure while its application holds its request back
/// (`err` says why) until `until`: retried then, and no attempt is counted,
/// since none was made (a group that had not failed shows one, to be seen
/// failing).
pub(super) fn held(previous: Option<&GroupFailure>, err: &Error, until: Timestamp) -> GroupFailure {
    GroupFailure {
        failure: Failure {
            reason: err.reason(),
            message: err.to_string(),
            attempts: previous.map_or(1, |f| f.failure.attempts.max(1)),
        },
        retry_at: until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn a_failure_holds_back_until_its_retry_time_or_while_new_to_the_caller() {
        let err = Error::RateLimited {
            retry_after: Some(std::time::Duration::from_secs(120)),
            detail: String::new(),
        };
        let first = after(None, &err, None, at(1_000), 0.0);
        assert_eq!(first.failure.attempts, 1);
        assert_eq!(first.retry_at, at(1_120), "Retry-After is honoured");
        assert_eq!(
            after(Some(&first), &err, None, at(1_200), 0.0)
                .failure
                .attempts,
            2
        );
        // Before its retry time: held back, whatever the caller saw.
        assert!(holds_back(Some(&first), Some(&first), at(1_100)));
        assert!(holds_back(Some(&first), None, at(1_100)));
        // After it: only a failure the caller has not seen holds back.
        assert!(holds_back(Some(&first), None, at(1_200)));
        assert!(!holds_back(Some(&first), Some(&first), at(1_200)));
        // Positive control: no failure, nothing held back.
        assert!(!holds_back(None, None, at(1_100)));
    }
}
