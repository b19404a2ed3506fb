//! The decision of a reconciliation, as one pure function.
//!
//! [`decide`] looks at an [`Observed`] value (what was read from the cluster,
//! the controller's memory and the shared exchange, and the clock) and
//! returns the next [`Step`]. A step that needs I/O (a token request, a
//! Secret write, a read of the namespace) is done by the caller, whose
//! outcome is put into the same `Observed`, and `decide` is asked again,
//! until it returns [`Step::Finish`] with everything left to do: the status,
//! the Event, the requeue and what to remember.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};

use crate::{
    api::{RunaiCredential, RunaiCredentialStatus, ValidSpec},
    error::Error,
    output::secret::{self, HashKey, StoredToken, TargetSecret},
    reconcile::status::{self, CurrentToken, Failure},
    runai::exchange::{GroupFailure, GroupKey, GroupToken, GroupView},
    token::schedule::{self, Backoff, Desired, Plan, RefreshReason, TokenRecord},
};

/// A token obtained for a RunaiCredential, with its record. `Debug` hides
/// the token.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingToken {
    pub access_token: String,
    pub record: TokenRecord,
}

impl std::fmt::Debug for PendingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The outcome of a token request step.
#[derive(Debug)]
pub enum Obtained {
    /// A token for this RunaiCredential (requested, or the group's).
    Token(PendingToken),
    /// The request failed; the failure is the group's.
    Failed(GroupFailure),
}

/// Everything a decision looks at.
pub struct Observed<'a> {
    pub cr: &'a RunaiCredential,
    pub hash_key: &'a HashKey,
    /// The time of this reconciliation.
    pub now: Timestamp,
    /// A random number in `[0, 1)` for the jitter of retry times.
    pub jitter: f64,
    /// The spec, checked (URL rules, allowed URLs, `caBundle`).
    pub spec: Result<ValidSpec, Error>,
    /// Secrets of earlier target names may be left (the status names another
    /// Secret than the spec) and were not released yet.
    pub old_targets: bool,
    /// What exists under the target name.
    pub target: TargetSecret,
    /// The token and record of a managed target Secret.
    pub stored: Option<StoredToken>,
    /// The HTTP client for the spec's CA certificates, once the spec is checked.
    pub token_client: Option<crate::runai::client::TokenClient>,
    /// The client credentials, or why they cannot be read.
    pub credentials: Result<crate::runai::client::ClientCredentials, Error>,
    /// What the RunaiCredential asks for now.
    pub desired: Desired,
    /// A failure of this RunaiCredential alone (credentials unreadable, a
    /// refused write) being backed off.
    pub backoff: Option<(Backoff, Failure)>,
    /// A token obtained earlier whose write failed.
    pub pending: Option<PendingToken>,
    /// The shared exchange's group its credentials and trusted CAs make,
    /// once they are known (the credentials read, the spec usable).
    pub group_key: Option<GroupKey>,
    /// The group and what it holds, once joined ([`Step::JoinGroup`]).
    pub group: Option<(GroupKey, GroupView)>,
    /// How many RunaiCredentials (this one included) read the same
    /// credentials Secret with the same url, token API and `caBundle`: the
    /// least the group will count once they all joined.
    pub readers: usize,
    /// Whether the namespace is being deleted, once read.
    pub namespace_terminating: Option<bool>,
    /// The outcome of the token request step, once done.
    pub obtained: Option<Obtained>,
    /// The outcome of the Secret write step, once done: only refusals the
    /// status reports ([`Error::SecretConflict`], [`Error::SecretWriteFailed`])
    /// are kept here; other errors end the reconciliation.
    pub written: Option<Result<(), Error>>,
}

/// What to do next. `Debug` never shows the token or the Secret's data.
pub enum Step {
    /// Join the group [`Observed::group_key`] names, leaving any other, and
    /// seed it with the token the target Secret holds (or read the group's
    /// token from the Secret of the member that holds it).
    JoinGroup,
    /// Delete or release the Secrets of earlier target names.
    ReleaseOldTargets,
    /// Read whether the namespace is being deleted.
    ReadNamespace,
    /// Obtain a token through the shared exchange; [`accepts`] says which of
    /// the group's tokens does without a request.
    RequestToken { reason: RefreshReason },
    /// Write the target Secret.
    WriteSecret {
        secret: Box<Secret>,
        /// The token it holds, masked in error messages.
        token: String,
        /// A repair of the token already there, not a new one.
        repair: bool,
    },
    /// The end: write the status, publish, remember, requeue.
    Finish(Box<Finish>),
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::JoinGroup => f.write_str("JoinGroup"),
            Step::ReleaseOldTargets => f.write_str("ReleaseOldTargets"),
            Step::ReadNamespace => f.write_str("ReadNamespace"),
            Step::RequestToken { reason } => f
                .debug_struct("RequestToken")
                .field("reason", reason)
                .finish(),
            Step::WriteSecret { secret, repair, .. } => f
                .debug_struct("WriteSecret")
                .field("secret", &secret.metadata.name)
                .field(
                    "keys",
                    &secret
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, _)| k)
                        .collect::<Vec<_>>(),
                )
                .field("repair", repair)
                .finish_non_exhaustive(),
            Step::Finish(finish) => f.debug_tuple("Finish").field(finish).finish(),
        }
    }
}

/// A change to what the controller remembers of a RunaiCredential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update<T> {
    Keep,
    Set(T),
    Clear,
}

/// When to reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// At this time (at least a second from now).
    At(Timestamp),
    /// After this long.
    After(Duration),
    /// Only when something changes.
    OnChange,
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What a log line says about the outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// Being deleted: nothing to do.
    Deleting,
    /// The namespace is being deleted: no request.
    NamespaceTerminating,
    /// Only the user can fix this.
    Blocked {
        reason: &'static str,
        message: String,
    },
    /// The token in the Secret is fresh.
    Fresh,
    /// Waiting for a retry.
    Waiting,
    /// A token was written.
    Written {
        why: &'static str,
        expires_at: Option<Timestamp>,
        next_refresh: Timestamp,
    },
    /// A refresh or write failed.
    Failed {
        failure: Failure,
        retry_at: Timestamp,
    },
}

/// The last step of a reconciliation.
#[derive(Clone, Debug)]
pub struct Finish {
    /// The status to show; `None` leaves it alone.
    pub status: Option<RunaiCredentialStatus>,
    /// Whether it differs from the stored one (and must be written).
    pub status_changed: bool,
    pub event: Option<Announcement>,
    pub requeue: Requeue,
    pub backoff: Update<(Backoff, Failure)>,
    pub pending: Update<PendingToken>,
    /// Leave the shared exchange's group: the credential no longer belongs
    /// to one (being deleted, its spec unusable, its credentials unreadable).
    pub leave_group: bool,
    pub note: Note,
}

impl Finish {
    fn idle(note: Note) -> Self {
        Finish {
            status: None,
            status_changed: false,
            event: None,
            requeue: Requeue::OnChange,
            backoff: Update::Keep,
            pending: Update::Keep,
            leave_group: false,
            note,
        }
    }
}

/// How often a target name held by someone else's Secret is looked at again:
/// it may go away without an event reaching a controller that watches only
/// labelled Secrets.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(300);

/// The jitter of a token's refresh deadline: fixed per credential and token,
/// so that the deadline computed again after a restart is the same.
#[must_use]
pub fn jitter_for(uid: &str, issued_at: Timestamp) -> f64 {
    schedule::stable_jitter(&format!("{uid}/{issued_at}"))
}

/// The uid of a RunaiCredential (namespace/name when it has none, as in tests).
#[must_use]
pub fn uid_of(cr: &RunaiCredential) -> String {
    cr.uid()
        .unwrap_or_else(|| format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()))
}

/// Decides the next step. Pure: everything it looks at is in `o`.
#[must_use]
pub fn decide(o: &Observed<'_>) -> Step {
    let mut step = next_step(o);
    // Without a group key (deleted, an unusable spec, unreadable
    // credentials) it is no member: it no longer holds what a group shares,
    // and is no longer counted.
    if let Step::Finish(finish) = &mut step {
        finish.leave_group = o.group_key.is_none();
    }
    step
}

fn next_step(o: &Observed<'_>) -> Step {
    let cr = o.cr;
    if cr.meta().deletion_timestamp.is_some() {
        return Step::Finish(Box::new(Finish::idle(Note::Deleting)));
    }
    let spec = match &o.spec {
        Ok(spec) => spec,
        Err(err) => return block(o, err),
    };
    if o.old_targets {
        return Step::ReleaseOldTargets;
    }
    if o.group.is_none() && o.group_key.is_some() {
        return Step::JoinGroup;
    }
    let managed = match &o.target {
        TargetSecret::Foreign => {
            let err = Error::SecretConflict {
                secret: cr.target_secret_name(),
            };
            return block(o, &err);
        }
        TargetSecret::Missing => None,
        TargetSecret::Managed(secret) => Some(secret.as_ref()),
    };
    let uid = uid_of(cr);
    let stored = o.stored.as_ref();
    let plan = schedule::plan(
        o.now,
        stored.map(|s| (&s.record, s.intact)),
        &o.desired,
        o.backoff.as_ref().map(|(b, _)| b),
        spec.refresh_interval,
        stored.map_or(0.0, |s| jitter_for(&uid, s.record.issued_at)),
    );
    match plan {
        Plan::WaitUntil(due) => {
            let stored = stored.expect("a plan to wait has a stored token");
            // Another member's request brought the group a newer token.
            if let Some(token) = group_token(o).filter(|t| {
                t.requested
                    && t.access_token != stored.access_token
                    && t.issued_at >= stored.record.issued_at
                    && suits(o, spec, t)
            }) {
                let token = adopt(o, token);
                return write_new(o, spec, token, RefreshReason::Shared);
            }
            if let Some(step) = repair(o, managed, stored) {
                return step;
            }
            if let Some(step) = repair_refused(o) {
                return step;
            }
            fresh(o, &stored.record, due)
        }
        Plan::RetryAt(retry_at) => {
            if let Some(step) = stored
                .filter(|s| s.intact)
                .and_then(|s| repair(o, managed, s))
            {
                return step;
            }
            if let Some(step) = repair_refused(o) {
                return step;
            }
            let failure = o.backoff.as_ref().map(|(_, f)| f.clone());
            retrying(o, failure, retry_at, false)
        }
        Plan::Refresh(reason) => refresh(o, spec, reason),
    }
}

/// The group's token, if there is a group.
fn group_token<'a>(o: &'a Observed<'_>) -> Option<&'a GroupToken> {
    o.group.as_ref().and_then(|(_, view)| view.token.as_ref())
}

/// Whether a group token can be written for this RunaiCredential without a
/// new request (see [`token_suits`]).
fn suits(o: &Observed<'_>, spec: &ValidSpec, token: &GroupToken) -> bool {
    token_suits(token, spec.refresh_interval, &uid_of(o.cr), o.now)
}

/// Whether the group's `token` can serve the member `uid` (of either kind)
/// as it is: unexpired and not yet due by the member's own schedule
/// (`refresh_interval`, its jitter), so that the shortest `refreshInterval`
/// of a group wins.
#[must_use]
pub fn token_suits(
    token: &GroupToken,
    refresh_interval: Option<Duration>,
    uid: &str,
    now: Timestamp,
) -> bool {
    let due = schedule::refresh_due_at(
        token.issued_at,
        token.expires_at,
        refresh_interval,
        jitter_for(uid, token.issued_at),
    );
    token.expires_at.is_none_or(|at| at > now) && now < due
}

/// The one rule, for both kinds, of whether the group's `token` answers a
/// token request made for `reason` without a request of its own: a refresh
/// request needs a token newer than the group had when the member looked
/// (`newer`); a due token, or one obtained for another definition (api.md,
/// "What a change costs"), needs one other than the member holds (`held`)
/// that `suits` it; any other reason takes any token that suits.
#[must_use]
pub fn token_answers(
    reason: RefreshReason,
    token: &GroupToken,
    newer: bool,
    held: bool,
    suits: bool,
    now: Timestamp,
) -> bool {
    match reason {
        RefreshReason::RefreshRequested => newer && token.expires_at.is_none_or(|at| at > now),
        RefreshReason::Due | RefreshReason::SpecChanged => suits && !held,
        RefreshReason::NoToken
        | RefreshReason::TokenAltered
        | RefreshReason::CredentialsChanged
        | RefreshReason::Shared => suits,
    }
}

/// Whether the exchange may answer a token request of this reconciliation
/// with the group's `token` instead of a new request: for a refresh request,
/// only a token newer than the one seen before; otherwise one that
/// suits this RunaiCredential (unexpired, not due by its own schedule) and,
/// when the stored one is due or was obtained for another definition, is
/// not the stored one.
#[must_use]
pub fn accepts(o: &Observed<'_>, reason: RefreshReason, token: &GroupToken) -> bool {
    let Ok(spec) = &o.spec else { return false };
    let seen = o.group.as_ref().map_or(0, |(_, view)| view.serial);
    let held = o
        .stored
        .as_ref()
        .is_some_and(|s| s.intact && s.access_token == token.access_token);
    token_answers(
        reason,
        token,
        token.serial > seen,
        held,
        suits(o, spec, token),
        o.now,
    )
}

/// The record of a group token written for this RunaiCredential.
#[must_use]
pub fn adopt(o: &Observed<'_>, token: &GroupToken) -> PendingToken {
    PendingToken {
        access_token: token.access_token.clone(),
        record: TokenRecord {
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            credentials_hash: o.desired.credentials_hash.clone().unwrap_or_default(),
            generation: o.desired.generation,
            refresh_request: o.desired.refresh_request.clone(),
            definition: o.desired.definition.clone(),
            token_api: token.token_api,
        },
    }
}

/// A token to write without a request: the one whose write failed, if it
/// still answers what is asked, else the group's if it suits (not for a
/// refresh request, which needs a newer one than exists).
fn offered(o: &Observed<'_>, spec: &ValidSpec, reason: RefreshReason) -> Option<PendingToken> {
    if let Some(pending) = o.pending.as_ref().filter(|p| pending_answers(o, spec, p)) {
        return Some(pending.clone());
    }
    if reason == RefreshReason::RefreshRequested {
        return None;
    }
    group_token(o)
        .filter(|t| accepts(o, reason, t))
        .map(|t| adopt(o, t))
}

/// Whether an unwritten token still answers what is asked for and is not due.
fn pending_answers(o: &Observed<'_>, spec: &ValidSpec, pending: &PendingToken) -> bool {
    let record = &pending.record;
    let answers = o
        .desired
        .credentials_hash
        .as_deref()
        .is_some_and(|h| secret::hashes_equal(h, &record.credentials_hash))
        && schedule::defined_alike(record, &o.desired)
        && o.desired.refresh_request == record.refresh_request;
    let due = schedule::refresh_due_at(
        record.issued_at,
        record.expires_at,
        spec.refresh_interval,
        jitter_for(&uid_of(o.cr), record.issued_at),
    );
    answers && o.now < due && !record.is_expired(o.now)
}

fn refresh(o: &Observed<'_>, spec: &ValidSpec, reason: RefreshReason) -> Step {
    let stale_pending = o
        .pending
        .as_ref()
        .is_some_and(|p| !pending_answers(o, spec, p));
    let token = match &o.obtained {
        Some(Obtained::Token(token)) => Some(token.clone()),
        Some(Obtained::Failed(failure)) => {
            return failed(o, failure.failure.clone(), failure.retry_at, stale_pending);
        }
        None => offered(o, spec, reason),
    };
    if let Some(token) = token {
        return write_new(o, spec, token, reason);
    }
    // A request is needed.
    if let Err(err) = &o.credentials {
        return member_failure(o, err, stale_pending);
    }
    // The group backs off after a failed request: no member asks before
    // its retry time.
    if let Some((_, view)) = &o.group
        && let Some(failure) = view.failure.as_ref().filter(|f| o.now < f.retry_at)
    {
        return retrying(o, Some(failure.failure.clone()), failure.retry_at, true);
    }
    unless_terminating(o, Step::RequestToken { reason })
}

/// `step` (a token request or a Secret write) unless the namespace is being
/// deleted: api.md promises no request and no write there, whatever the
/// token's source (a request, the group's, a pending one, a repair). Whether
/// it is, is read first.
fn unless_terminating(o: &Observed<'_>, step: Step) -> Step {
    match o.namespace_terminating {
        None => Step::ReadNamespace,
        Some(true) => Step::Finish(Box::new(Finish::idle(Note::NamespaceTerminating))),
        Some(false) => step,
    }
}

/// Writes a new token, then reports it.
fn write_new(
    o: &Observed<'_>,
    spec: &ValidSpec,
    token: PendingToken,
    reason: RefreshReason,
) -> Step {
    match &o.written {
        None if let Some(err) = unwritable(o, &token.access_token) => {
            member_failure(o, &err, false)
        }
        None => unless_terminating(
            o,
            Step::WriteSecret {
                secret: Box::new(secret::desired_secret(
                    o.cr,
                    &token.access_token,
                    &token.record,
                    o.hash_key,
                )),
                token: token.access_token,
                repair: false,
            },
        ),
        Some(Ok(())) => written(o, spec, &token, reason),
        // Kept, so that retrying the write costs no new token request.
        Some(Err(err @ Error::SecretConflict { .. })) => match block(o, err) {
            Step::Finish(mut finish) => {
                finish.pending = Update::Set(token);
                Step::Finish(finish)
            }
            other => other,
        },
        Some(Err(err)) => match member_failure(o, err, false) {
            Step::Finish(mut finish) => {
                finish.pending = Update::Set(token);
                Step::Finish(finish)
            }
            other => other,
        },
    }
}

/// After a new token was written: fresh status, Event when it is news.
fn written(
    o: &Observed<'_>,
    spec: &ValidSpec,
    token: &PendingToken,
    reason: RefreshReason,
) -> Step {
    let uid = uid_of(o.cr);
    let record = &token.record;
    let due = schedule::refresh_due_at(
        record.issued_at,
        record.expires_at,
        spec.refresh_interval,
        jitter_for(&uid, record.issued_at),
    );
    let previous = o.cr.status.as_ref();
    let recovering = o.backoff.is_some() || previous.is_some_and(|s| s.failed_attempts > 0);
    let status = shown(
        o,
        Some(CurrentToken {
            record,
            current: true,
        }),
        None,
        due,
    );
    let why = reason.as_str();
    let event = schedule::announce_token(reason, recovering).then(|| Announcement {
        warning: false,
        reason: "TokenIssued",
        // Kept free of times: the recorder folds repeats of an Event into
        // a series that keeps the first note.
        note: format!(
            "Wrote a new token to Secret {} ({why})",
            o.cr.target_secret_name()
        ),
    });
    Step::Finish(Box::new(Finish {
        status_changed: changed_or_recounted(o, &status),
        status: Some(status),
        event,
        requeue: Requeue::At(schedule::wake_at(due, record.expires_at, o.now)),
        backoff: Update::Clear,
        pending: Update::Clear,
        leave_group: false,
        note: Note::Written {
            why,
            expires_at: record.expires_at,
            next_refresh: due,
        },
    }))
}

/// Rewrites a managed Secret whose intact token is still the right one when
/// someone changed (or deleted) what the controller sets on it; `None` when
/// it is as it should be or was just rewritten.
fn repair(o: &Observed<'_>, managed: Option<&Secret>, stored: &StoredToken) -> Option<Step> {
    if o.written.is_some() {
        return None;
    }
    if let Some(err) = unwritable(o, &stored.access_token) {
        return Some(member_failure(o, &err, false));
    }
    // An answered refresh request whose annotation is gone from the spec is
    // no longer recorded: the Secret shows what the spec asks now.
    let record = TokenRecord {
        refresh_request: o
            .desired
            .refresh_request
            .as_ref()
            .and(stored.record.refresh_request.clone()),
        ..stored.record.clone()
    };
    let desired = secret::desired_secret(o.cr, &stored.access_token, &record, o.hash_key);
    managed
        .is_none_or(|s| secret::needs_repair(s, &desired))
        .then(|| {
            unless_terminating(
                o,
                Step::WriteSecret {
                    secret: Box::new(desired),
                    token: stored.access_token.clone(),
                    repair: true,
                },
            )
        })
}

/// Why `token` cannot be written with the spec's outputs, if it cannot
/// ([`crate::output::formats::check_token`]): a failed refresh, the
/// Secret left as it is.
fn unwritable(o: &Observed<'_>, token: &str) -> Option<Error> {
    crate::output::formats::check_token(&o.cr.spec.target.outputs, token)
        .err()
        .map(Error::MalformedResponse)
}

/// A repair whose write failed is reported as any refused write
/// (`SecretConflict`, `SecretWriteFailed`, an outage: Degraded, a Warning,
/// retried with backoff), not passed over as fresh; the token in the Secret
/// stays in use.
fn repair_refused(o: &Observed<'_>) -> Option<Step> {
    match &o.written {
        Some(Err(err @ Error::SecretConflict { .. })) => Some(block(o, err)),
        Some(Err(err)) => Some(member_failure(o, err, false)),
        Some(Ok(())) | None => None,
    }
}

/// The Secret holds a fresh, current token: a past failure no longer counts.
fn fresh(o: &Observed<'_>, record: &TokenRecord, due: Timestamp) -> Step {
    let status = shown(
        o,
        Some(CurrentToken {
            record,
            current: true,
        }),
        None,
        due,
    );
    Step::Finish(Box::new(Finish {
        status_changed: changed(o, &status),
        status: Some(status),
        event: None,
        requeue: Requeue::At(schedule::wake_at(due, record.expires_at, o.now)),
        backoff: Update::Clear,
        pending: Update::Keep,
        leave_group: false,
        note: Note::Fresh,
    }))
}

/// The stored token with whether it was obtained with the current
/// credentials and for what the spec defines now (api.md: Ready is True
/// while the Secret holds a token "obtained with the current spec and
/// credentials"; a spec change that needs a new token makes the held one
/// stale until it is replaced). Credentials that cannot be read do not make
/// a still-valid token stale: `Ready` stays True until it expires, and
/// `Degraded` says why refreshing fails.
fn current_token<'a>(o: &'a Observed<'_>) -> Option<CurrentToken<'a>> {
    o.stored.as_ref().map(|s| CurrentToken {
        record: &s.record,
        current: s.intact
            && schedule::defined_alike(&s.record, &o.desired)
            && o.desired
                .credentials_hash
                .as_deref()
                .is_none_or(|hash| secret::hashes_equal(hash, &s.record.credentials_hash)),
    })
}

/// The expiry of a token that is current, the one a retry must come before.
fn valid_until(token: Option<CurrentToken<'_>>) -> Option<Timestamp> {
    token
        .filter(|t| t.current)
        .and_then(|t| t.record.expires_at)
}

/// Waiting for a retry: the status shows the failure (if known). A failure
/// of the group that this RunaiCredential had not shown yet is a Warning.
fn retrying(o: &Observed<'_>, failure: Option<Failure>, retry_at: Timestamp, group: bool) -> Step {
    let token = current_token(o);
    let status = shown(o, token, failure.as_ref(), retry_at);
    let event = failure
        .as_ref()
        .filter(|f| group && previous_failure_reason(o) != Some(f.reason))
        .map(|f| Announcement {
            warning: true,
            reason: f.reason,
            note: f.message.clone(),
        });
    Step::Finish(Box::new(Finish {
        status_changed: changed(o, &status),
        status: Some(status),
        event,
        requeue: Requeue::At(schedule::wake_at(retry_at, valid_until(token), o.now)),
        backoff: Update::Keep,
        pending: Update::Keep,
        leave_group: false,
        note: Note::Waiting,
    }))
}

/// The reason of the failure the stored status shows, if any.
fn previous_failure_reason<'a>(o: &'a Observed<'_>) -> Option<&'a str> {
    let previous = o.cr.status.as_ref()?;
    status::failure_reason(&previous.conditions, previous.failed_attempts)
}

/// A failure of this RunaiCredential alone (credentials, a refused write):
/// backoff of its own, status, a Warning at a decaying rate.
fn member_failure(o: &Observed<'_>, err: &Error, stale_pending: bool) -> Step {
    let previous = o.cr.status.as_ref();
    let last = o.backoff.as_ref().map(|(_, f)| f);
    let attempts = last
        .map(|f| f.attempts)
        .or_else(|| previous.map(|s| s.failed_attempts))
        .unwrap_or(0)
        .saturating_add(1);
    let failure = Failure {
        reason: err.reason(),
        message: err.to_string(),
        attempts,
    };
    let retry_at = schedule::retry_at(
        o.now,
        attempts,
        err.retry_after(),
        valid_until(current_token(o)),
        o.jitter,
    );
    let warn = schedule::warn_again(attempts, last.map(|f| f.reason), failure.reason);
    let mut step = failed(o, failure.clone(), retry_at, stale_pending);
    if let Step::Finish(finish) = &mut step {
        finish.backoff = Update::Set((
            Backoff {
                desired: o.desired.clone(),
                retry_at,
            },
            failure,
        ));
        if !warn {
            finish.event = None;
        }
    }
    step
}

/// A failed refresh or write: status from what the Secret really holds (not
/// from a token that could not be written), a Warning when the failure
/// starts, changes, or at attempts 1, 2, 4, 8 …
fn failed(o: &Observed<'_>, failure: Failure, retry_at: Timestamp, stale_pending: bool) -> Step {
    let token = current_token(o);
    let status = shown(o, token, Some(&failure), retry_at);
    let warn = schedule::warn_again(failure.attempts, previous_failure_reason(o), failure.reason);
    Step::Finish(Box::new(Finish {
        status_changed: changed(o, &status),
        status: Some(status),
        event: warn.then(|| Announcement {
            warning: true,
            reason: failure.reason,
            note: failure.message.clone(),
        }),
        requeue: Requeue::At(schedule::wake_at(retry_at, valid_until(token), o.now)),
        backoff: Update::Keep,
        pending: if stale_pending {
            Update::Clear
        } else {
            Update::Keep
        },
        leave_group: false,
        note: Note::Failed { failure, retry_at },
    }))
}

/// A state only the user can fix: `Ready=False` with the reason, a Warning
/// when that is news, and no request until something changes.
fn block(o: &Observed<'_>, err: &Error) -> Step {
    let status = with_shared(
        o,
        status::blocked_status(
            o.cr.status.as_ref(),
            o.cr.meta().generation,
            &o.cr.target_secret_name(),
            err.reason(),
            err.to_string(),
            o.now,
        ),
    );
    let status_changed = changed(o, &status);
    Step::Finish(Box::new(Finish {
        // The Warning goes out when the condition changes, not on every resync.
        event: status_changed.then(|| Announcement {
            warning: true,
            reason: err.reason(),
            note: err.to_string(),
        }),
        status_changed,
        status: Some(status),
        requeue: match err {
            Error::SecretConflict { .. } => Requeue::After(CONFLICT_RECHECK),
            _ => Requeue::OnChange,
        },
        backoff: Update::Clear,
        pending: Update::Keep,
        leave_group: false,
        note: Note::Blocked {
            reason: err.reason(),
            message: err.to_string(),
        },
    }))
}

/// The status while the controller keeps a token (see
/// [`status::token_status`]), with `sharedWith`.
fn shown(
    o: &Observed<'_>,
    token: Option<CurrentToken<'_>>,
    failure: Option<&Failure>,
    next: Timestamp,
) -> RunaiCredentialStatus {
    let token_api = status::token_api_shown(o.cr.spec.token_api, token.map(|t| t.record));
    let status = with_shared(
        o,
        status::token_status(
            o.cr.status.as_ref(),
            o.cr.meta().generation,
            &o.cr.target_secret_name(),
            token,
            failure,
            next,
            o.now,
        ),
    );
    RunaiCredentialStatus {
        token_api,
        ..status
    }
}

/// Sets `sharedWith`: the other members of the group now. Right after a
/// start groups fill up as their members are reconciled one by one, so a
/// count also includes the RunaiCredentials that read alike (which all
/// join). A new count alone is no reason to write ([`status::same_status`]).
fn with_shared(o: &Observed<'_>, mut status: RunaiCredentialStatus) -> RunaiCredentialStatus {
    status.shared_with = match &o.group {
        None => 0,
        Some((_, view)) => {
            u32::try_from(view.members.max(o.readers).saturating_sub(1)).unwrap_or(u32::MAX)
        }
    };
    status
}

fn changed(o: &Observed<'_>, new: &RunaiCredentialStatus) -> bool {
    status::must_write(o.cr.status.as_ref(), new, false)
}

/// After a token was written to the member's Secret: see
/// [`status::must_write`].
fn changed_or_recounted(o: &Observed<'_>, new: &RunaiCredentialStatus) -> bool {
    status::must_write(o.cr.status.as_ref(), new, true)
}

#[cfg(test)]
mod tests;
