//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Expiry is judged by *observed time*, as client-go's `leaderelection`
//! package does: a follower notes when it first saw the current holder's
//! record (holder, renew time, transitions) on its own monotonic clock, and
//! takes the lease only once that record stayed unchanged for the lease's
//! `leaseDurationSeconds`. The `renewTime` written by another replica is never
//! compared with this replica's wall clock, so a replica whose clock runs
//! ahead cannot take a lease that is still held.
//!
//! Every write is an update conditional on the `resourceVersion` that was
//! read: of two replicas acting on the same record, one gets a conflict.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// The part of a Lease that says who holds it. Two reads with equal records
/// mean the holder did not renew in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity`; empty or absent means released.
    pub holder: Option<String>,
    /// `spec.renewTime`, only compared for equality (never with a clock).
    pub renew_time: Option<Timestamp>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `spec.leaseDurationSeconds` (seconds): how long the holder's renewal
    /// stays valid. Absent or non-positive is read as the caller's default.
    pub duration: Duration,
}

impl Record {
    /// Reads the record out of a Lease; `default_duration` (seconds) stands in
    /// for a missing or non-positive `leaseDurationSeconds`.
    #[must_use]
    pub fn of(lease: &Lease, default_duration: Duration) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(default_duration, Duration::from_secs),
        }
    }
}

/// The record last read and when (on this replica's monotonic clock) it was
/// first seen in that form.
#[derive(Clone, Debug)]
pub struct Observed {
    pub record: Record,
    pub since: Instant,
}

/// What to do with the Lease after reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create one held by this replica.
    Create,
    /// The Lease is held by this replica: renew it.
    Renew,
    /// The Lease is released, or its holder stopped renewing for longer than
    /// the lease duration by this replica's own observation: take it.
    Take,
    /// Another replica holds the Lease; look again later.
    Wait,
}

/// Decides what to do with the Lease, given what was read now and what was
/// observed before. Returns the step and the observation to keep.
///
/// Pure: `now` is this replica's monotonic clock; wall-clock times in the
/// Lease are only compared for equality.
#[must_use]
pub fn decide(
    identity: &str,
    read: Option<Record>,
    before: Option<Observed>,
    now: Instant,
) -> (Step, Option<Observed>) {
    let Some(record) = read else {
        return (Step::Create, None);
    };
    let observed = match before {
        Some(before) if before.record == record => before,
        // A new record (renewed, taken, released): its clock starts now.
        _ => Observed {
            record: record.clone(),
            since: now,
        },
    };
    let step = match record.holder.as_deref() {
        Some(holder) if holder == identity => Step::Renew,
        None => Step::Take,
        Some(_) if now.saturating_duration_since(observed.since) >= record.duration => Step::Take,
        Some(_) => Step::Wait,
    };
    (step, Some(observed))
}

/// Timing of the election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// `leaseDurationSeconds` written into the Lease (seconds).
    pub lease_duration: Duration,
    /// A leader renews this often (seconds).
    pub renew_period: Duration,
    /// A leader that has not renewed for this long steps down; shorter than
    /// the lease duration, so that it stops before anyone may take over.
    pub renew_deadline: Duration,
    /// A follower reads the Lease this often, so that a released lease is
    /// taken at once.
    pub retry_period: Duration,
}

impl Timing {
    /// client-go's proportions (15 s lease, 10 s renew deadline) for a given
    /// lease duration (at least 5 s).
    #[must_use]
    pub fn for_duration(lease_duration: Duration) -> Self {
        let lease_duration = lease_duration.max(Duration::from_secs(5));
        Timing {
            lease_duration,
            renew_period: lease_duration / 5,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: Duration::from_secs(1),
        }
    }
}

fn spec_for(
    identity: &str,
    timing: &Timing,
    transitions: i32,
    acquired: bool,
    previous: Option<LeaseSpec>,
) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    let previous = previous.unwrap_or_default();
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(
            i32::try_from(timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: if acquired {
            Some(now.clone())
        } else {
            previous.acquire_time
        },
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..previous
    }
}

/// Holds (or waits for) the Lease `name` in `leases`' namespace as `identity`,
/// publishing on `leading` whether this replica leads, until `release` turns
/// true; a leader then releases the Lease so that a successor takes over at
/// once. A leader that cannot renew within `timing.renew_deadline` (a
/// renewal that hangs included: each attempt is bounded by the time left)
/// publishes `false` and keeps trying as a follower. A write that lost a
/// race (409) is no proof that another replica leads: the Lease is read
/// again at once, and only a read that shows another holder steps down.
pub async fn hold(
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    leading: watch::Sender<bool>,
    mut release: watch::Receiver<bool>,
) {
    let mut observed: Option<Observed> = None;
    // When this replica last renewed (or took) the lease successfully.
    let mut renewed: Option<Instant> = None;
    loop {
        if *release.borrow() {
            break;
        }
        // A leader's attempt may take only what is left of its renew
        // deadline; a follower's, a lease duration.
        let bound = match renewed.filter(|_| *leading.borrow()) {
            Some(at) => timing
                .renew_deadline
                .saturating_sub(at.elapsed())
                .max(Duration::from_millis(100)),
            None => timing.lease_duration,
        };
        let outcome = tokio::time::timeout(
            bound,
            attempt(&leases, &name, &identity, &timing, &mut observed),
        )
        .await;
        let now = Instant::now();
        // Neither a hang nor a lost race settles who holds the Lease: both
        // are retried at once, a leader keeping the lead until its deadline.
        let unsettled = match &outcome {
            Err(_) => Some(format!("no answer within {} ms", bound.as_millis())),
            Ok(Err(e)) => Some(e.to_string()),
            Ok(Ok(Outcome::Raced)) => {
                Some("the Lease changed while it was being written (HTTP 409)".to_owned())
            }
            Ok(Ok(_)) => None,
        };
        let failed = unsettled.is_some();
        match (outcome, unsettled) {
            (Ok(Ok(Outcome::Holds)), _) => {
                renewed = Some(now);
                if !*leading.borrow() {
                    info!(lease = %name, "took the leader lease");
                }
                leading.send_replace(true);
            }
            (Ok(Ok(Outcome::Another)), _) => {
                if *leading.borrow() {
                    warn!(lease = %name, "another replica holds the leader lease; stepping down");
                }
                renewed = None;
                leading.send_replace(false);
            }
            (_, e) => {
                let e = e.unwrap_or_default();
                if *leading.borrow() {
                    if renewed
                        .is_some_and(|at| now.saturating_duration_since(at) < timing.renew_deadline)
                    {
                        // A short API-server blip: keep leading and retry.
                        warn!(error = %e, "cannot renew the leader lease yet; retrying");
                    } else {
                        warn!(error = %e, "cannot renew the leader lease before it lapses; stepping down");
                        renewed = None;
                        leading.send_replace(false);
                    }
                } else {
                    warn!(error = %e, "cannot read or take the leader lease; retrying");
                }
            }
        }
        let pause = if *leading.borrow() {
            // Retried every second after a failure, at the renew period otherwise.
            if failed {
                timing.retry_period
            } else {
                timing.renew_period
            }
        } else {
            timing.retry_period
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = release.wait_for(|r| *r) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        // A courtesy to the successor (it need not wait a lease duration):
        // bounded, so that a connection that hangs cannot hold the exit.
        match tokio::time::timeout(RELEASE_TIMEOUT, give_up(&leases, &name, &identity)).await {
            Ok(Ok(())) => info!(lease = %name, "released the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "could not release the leader lease"),
            Err(_) => warn!(
                timeout_seconds = RELEASE_TIMEOUT.as_secs(),
                "could not release the leader lease in time; the successor takes it after a lease duration"
            ),
        }
    }
}

/// How long a leader that stops tries to release its Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// What one attempt on the Lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// This replica holds it.
    Holds,
    /// Another replica holds it.
    Another,
    /// The write lost a race with another writer (409): who holds it is
    /// known only from the next read.
    Raced,
}

/// One read and at most one conditional write: what it found.
///
/// # Errors
///
/// The API server's, when it does not answer or refuses.
async fn attempt(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
    timing: &Timing,
    observed: &mut Option<Observed>,
) -> Result<Outcome, kube::Error> {
    let lease = leases.get_opt(name).await?;
    let read = lease.as_ref().map(|l| Record::of(l, timing.lease_duration));
    let (step, next) = decide(identity, read, observed.take(), Instant::now());
    *observed = next;
    let result = match (step, lease) {
        (Step::Wait, _) => return Ok(Outcome::Another),
        (Step::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(identity, timing, 0, true, None)),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        (Step::Renew | Step::Take, None) => return Ok(Outcome::Raced),
        (step, Some(mut lease)) => {
            let taking = step == Step::Take;
            let spec = lease.spec.take();
            let transitions = spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
            let transitions = if taking {
                transitions.saturating_add(1)
            } else {
                transitions
            };
            lease.spec = Some(spec_for(identity, timing, transitions, taking, spec));
            lease.metadata.managed_fields = None;
            // `replace` sends the resourceVersion read: a conditional update.
            leases
                .replace(name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(Outcome::Holds),
        // Another writer came first (409): the next read says who holds it.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Raced),
        Err(e) => Err(e),
    }
}

/// Clears the holder if it is still this replica, so that a follower takes
/// the lease at its next read.
async fn give_up(leases: &Api<Lease>, name: &str, identity: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = leases.get_opt(name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    lease.metadata.managed_fields = None;
    leases
        .replace(name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renew_second: i64) -> Record {
        Record {
            holder: Some(holder.to_owned()),
            renew_time: Some(Timestamp::from_second(renew_second).unwrap()),
            transitions: 1,
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        let (step, _) = decide("me", None, None, Instant::now());
        assert_eq!(step, Step::Create);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut released = held_by("other", 100);
        released.holder = None;
        let (step, _) = decide("me", Some(released), None, Instant::now());
        assert_eq!(step, Step::Take);
    }

    #[test]
    fn an_own_lease_is_renewed() {
        let (step, _) = decide("me", Some(held_by("me", 100)), None, Instant::now());
        assert_eq!(step, Step::Renew);
    }

    #[test]
    fn a_held_lease_is_taken_only_after_a_full_duration_unchanged_by_observation() {
        let start = Instant::now();
        // The renew time lies far in the past by any wall clock: it does not
        // matter, only how long this replica saw it unchanged.
        let (step, observed) = decide("me", Some(held_by("other", 1)), None, start);
        assert_eq!(step, Step::Wait);
        let (step, observed) = decide(
            "me",
            Some(held_by("other", 1)),
            observed,
            start + Duration::from_secs(14),
        );
        assert_eq!(step, Step::Wait);
        // Positive control: the same record seen unchanged for 15 s is taken.
        let (step, _) = decide(
            "me",
            Some(held_by("other", 1)),
            observed,
            start + Duration::from_secs(15),
        );
        assert_eq!(step, Step::Take);
    }

    #[test]
    fn a_renewal_restarts_the_observation() {
        let start = Instant::now();
        let (_, observed) = decide("me", Some(held_by("other", 1)), None, start);
        let (step, observed) = decide(
            "me",
            Some(held_by("other", 2)),
            observed,
            start + Duration::from_secs(14),
        );
        assert_eq!(step, Step::Wait);
        let (step, observed) = decide(
            "me",
            Some(held_by("other", 2)),
            observed,
            start + Duration::from_secs(28),
        );
        assert_eq!(step, Step::Wait);
        let (step, _) = decide(
            "me",
            Some(held_by("other", 2)),
            observed,
            start + Duration::from_secs(29),
        );
        assert_eq!(step, Step::Take);
    }

    #[test]
    fn the_leases_own_duration_counts() {
        let start = Instant::now();
        let mut short = held_by("other", 1);
        short.duration = Duration::from_secs(3);
        let (_, observed) = decide("me", Some(short.clone()), None, start);
        let (step, _) = decide("me", Some(short), observed, start + Duration::from_secs(3));
        assert_eq!(step, Step::Take);
    }

    #[test]
    fn timing_keeps_client_go_proportions() {
        let t = Timing::for_duration(Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.renew_period, Duration::from_secs(3));
        assert!(t.renew_deadline < t.lease_duration);
        assert_eq!(
            Timing::for_duration(Duration::from_secs(1)).lease_duration,
            Duration::from_secs(5)
        );
    }
}
