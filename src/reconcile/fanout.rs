//! The decisions of a ClusterRunaiCredential, pure: which namespaces match,
//! what to do with each namespace's Secret, when the token must be
//! refreshed, and the status.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;

use crate::{
    api::{
        CONDITION_READY, ClusterRunaiCredential, ClusterRunaiCredentialStatus, FailedNamespace,
        RunaiCredentialStatus, cluster::MAX_FAILED_NAMESPACES,
    },
    output::secret::{self, CLUSTER_CREDENTIAL_LABEL, StoredToken},
    reconcile::status::{self, CurrentToken, Failure},
    runai::exchange::GroupToken,
    token::schedule::{self, Desired, Plan, RefreshReason, TokenRecord},
};

/// Reason of `Ready=True` when no namespace matches.
pub const REASON_NO_MATCHING_NAMESPACES: &str = "NoMatchingNamespaces";
/// Reason of `Ready=False` when some matched namespaces failed.
pub const REASON_NAMESPACES_FAILED: &str = "NamespacesFailed";

/// A namespace as the decision sees it.
#[derive(Clone, Debug, Default)]
pub struct NamespaceFacts {
    pub labels: BTreeMap<String, String>,
    /// Being deleted: no Secret is written there.
    pub terminating: bool,
}

/// Namespaces a selector never selects (api.md, "ClusterRunaiCredential:
/// safe selection"): Kubernetes' own, served only when named in
/// `spec.namespaces`.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// The namespaces a ClusterRunaiCredential serves: those whose labels match
/// `spec.namespaceSelector` (never one of [`SYSTEM_NAMESPACES`]) or that
/// `spec.namespaces` names, which exist and are not Terminating, and which
/// this controller serves (`scope`: `None` for all namespaces, else the
/// watched ones).
pub fn matched_namespaces(
    crc: &ClusterRunaiCredential,
    namespaces: &BTreeMap<String, NamespaceFacts>,
    scope: Option<&BTreeSet<String>>,
) -> BTreeSet<String> {
    let selector = selector_of(crc);
    namespaces
        .iter()
        .filter(|(name, facts)| {
            !facts.terminating && selects(crc, selector.as_ref(), name, &facts.labels, scope)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The parsed `spec.namespaceSelector`, if any (one that does not parse is
/// refused by the spec's validation first).
fn selector_of(crc: &ClusterRunaiCredential) -> Option<kube::core::Selector> {
    crc.spec
        .namespace_selector
        .clone()
        .and_then(|s| kube::core::Selector::try_from(s).ok())
}

/// Whether `crc` selects the namespace `name` with `labels` (whether or not
/// it is being deleted): named in `spec.namespaces`, or matched by the
/// selector and not one of [`SYSTEM_NAMESPACES`]; and served (`scope`).
fn selects(
    crc: &ClusterRunaiCredential,
    selector: Option<&kube::core::Selector>,
    name: &str,
    labels: &BTreeMap<String, String>,
    scope: Option<&BTreeSet<String>>,
) -> bool {
    scope.is_none_or(|scope| scope.contains(name))
        && (crc.spec.namespaces.iter().any(|n| n == name)
            || (!SYSTEM_NAMESPACES.contains(&name)
                && selector.is_some_and(|s| kube::core::SelectorExt::matches(s, labels))))
}

/// Whether a change of the namespace `name` (now labelled `labels`, or
/// gone) concerns `crc`: it selects it now, or served it in its last pass
/// (`served`), so that a namespace that stops matching is cleaned up. Any
/// other namespace's change costs it no pass.
#[must_use]
pub fn concerns(
    crc: &ClusterRunaiCredential,
    name: &str,
    labels: &BTreeMap<String, String>,
    scope: Option<&BTreeSet<String>>,
    served: bool,
) -> bool {
    served || selects(crc, selector_of(crc).as_ref(), name, labels, scope)
}

/// What a namespace's Secret needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAction {
    /// None there: create it.
    Create,
    /// Ours and out of step (token, outputs, labels): update it if it is
    /// still the version read.
    Update,
    /// Ours and as desired.
    Keep,
    /// Someone else's: never touched.
    Conflict,
}

/// Whether `existing` is managed by the ClusterRunaiCredential `name` (uid
/// `uid`): [`secret::is_managed`], the rule of both kinds.
pub fn is_managed_by(existing: &Secret, name: &str, uid: Option<&str>) -> bool {
    let label = secret::credential_label_value(name);
    secret::is_managed(
        existing,
        &secret::Manager {
            label: (CLUSTER_CREDENTIAL_LABEL, &label),
            kind: "ClusterRunaiCredential",
            name,
            uid,
        },
    )
}

/// What to do with one namespace's Secret, given the one that exists.
pub fn plan_secret(
    existing: Option<&Secret>,
    desired: &Secret,
    name: &str,
    uid: Option<&str>,
) -> SecretAction {
    match existing {
        None => SecretAction::Create,
        Some(s) if !is_managed_by(s, name, uid) => SecretAction::Conflict,
        Some(s) if secret::needs_replacement(s) || secret::needs_repair(s, desired) => {
            SecretAction::Update
        }
        Some(_) => SecretAction::Keep,
    }
}

/// What the token source of a ClusterRunaiCredential knows when it decides,
/// all of it read before (nothing here is looked up).
#[derive(Clone, Copy, Debug)]
pub struct SourceFacts<'a> {
    /// The uid of the ClusterRunaiCredential (its refresh jitter).
    pub uid: &'a str,
    /// What its spec and credentials ask for now.
    pub desired: &'a Desired,
    /// The group's token, when the group keeps its text.
    pub token: Option<&'a GroupToken>,
    /// The records its Secrets hold of intact tokens of the current
    /// credentials.
    pub records: &'a [&'a TokenRecord],
    /// The refresh annotation value already answered with a new token, if
    /// any (remembered, or recorded in a Secret).
    pub answered: Option<&'a str>,
    pub refresh_interval: Option<std::time::Duration>,
    /// How many namespaces it serves.
    pub matched: usize,
    pub now: Timestamp,
}

/// The record of the token a ClusterRunaiCredential serves, as the schedule
/// judges it: the newest its Secrets hold, or the group's token when that
/// is newer (obtained for the same credentials and trusted CAs, by it or
/// another member). A newer group token counts as obtained for what is
/// defined now unless the newest record says another definition: it may
/// be its own, obtained before the change and never written, and costs at
/// most one more request when it was not.
#[must_use]
pub fn held_record(f: &SourceFacts<'_>) -> Option<TokenRecord> {
    let newest = f.records.iter().copied().max_by(|a, b| {
        a.issued_at.cmp(&b.issued_at).then_with(|| {
            // Of two records of one token, the one of today's definition.
            let alike = |r: &TokenRecord| schedule::defined_alike(r, f.desired);
            alike(a).cmp(&alike(b))
        })
    });
    let answered = f.answered.map(str::to_owned);
    match (f.token, newest) {
        (Some(token), Some(record)) if token.issued_at > record.issued_at => {
            let fresh = record_for(token, None, f.desired, f.answered);
            Some(if schedule::defined_alike(record, f.desired) {
                fresh
            } else {
                TokenRecord {
                    generation: record.generation,
                    definition: record.definition.clone(),
                    ..fresh
                }
            })
        }
        (Some(token), None) => Some(record_for(token, None, f.desired, f.answered)),
        (_, Some(record)) => Some(TokenRecord {
            refresh_request: answered,
            ..record.clone()
        }),
        (None, None) => None,
    }
}

/// The record a namespace's Secret keeps of `token`: that of `held` (the
/// record the schedule judged, see [`held_record`]) when it is that token,
/// so that a token kept after a change that needs a new one still says
/// what it was obtained for; else a token obtained for what `desired`
/// defines now. `answered`: the refresh annotation value it answers.
#[must_use]
pub fn record_for(
    token: &GroupToken,
    held: Option<&TokenRecord>,
    desired: &Desired,
    answered: Option<&str>,
) -> TokenRecord {
    let refresh_request = answered.map(str::to_owned);
    match held.filter(|r| r.issued_at == token.issued_at) {
        Some(record) => TokenRecord {
            refresh_request,
            ..record.clone()
        },
        None => TokenRecord {
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            credentials_hash: desired.credentials_hash.clone().unwrap_or_default(),
            generation: desired.generation,
            refresh_request,
            definition: desired.definition.clone(),
            token_api: token.token_api,
        },
    }
}

/// Why the ClusterRunaiCredential needs a new token, if it does: the same
/// rule as a RunaiCredential's ([`schedule::plan`]: none yet, due, expired,
/// another definition, the generation of a record that predates
/// definitions, a refresh request not answered yet). `None` when the token
/// serves as it is, or when no namespace matches (no request for nobody).
#[must_use]
pub fn plan_token(f: &SourceFacts<'_>) -> Option<RefreshReason> {
    if f.matched == 0 {
        return None;
    }
    let record = held_record(f);
    // The group's token must still be there to be served: one only in
    // Secrets that the group lost is asked for again.
    let record = record.filter(|_| f.token.is_some());
    let jitter = record
        .as_ref()
        .map_or(0.0, |r| super::decide::jitter_for(f.uid, r.issued_at));
    match schedule::plan(
        f.now,
        record.as_ref().map(|r| (r, true)),
        f.desired,
        None,
        f.refresh_interval,
        jitter,
    ) {
        Plan::Refresh(reason) => Some(reason),
        Plan::WaitUntil(_) | Plan::RetryAt(_) => None,
    }
}

/// The token a ClusterRunaiCredential whose credentials cannot be read keeps
/// serving while it is valid: the newest of its Secrets' intact tokens that
/// is its own. `own` says whether a record is of its own credentials (those
/// of the group it is in); after a restart it knows no group, and the
/// tokens count only when all were obtained with one set of credentials (a
/// planted one makes it fail closed). A token of another application, copied
/// into a namespace's Secret with its record, never spreads.
pub fn kept_token<'s>(
    stored: &'s [StoredToken],
    own: Option<&dyn Fn(&TokenRecord) -> bool>,
    now: Timestamp,
) -> Option<&'s StoredToken> {
    stored
        .iter()
        .filter(|s| match own {
            Some(own) => own(&s.record),
            None => stored.iter().all(|other| {
                secret::hashes_equal(&other.record.credentials_hash, &s.record.credentials_hash)
            }),
        })
        .filter(|s| !s.record.is_expired(now))
        .max_by_key(|s| s.record.issued_at)
}

/// How the namespaces fared.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub matched: usize,
    pub synced: usize,
    /// By namespace name: only a person can resolve these.
    pub failed: BTreeMap<String, (&'static str, String)>,
    /// Namespaces whose Secret the API server failed to read or write
    /// (tried again shortly).
    pub pending: usize,
}

/// When to look again: at the next refresh (at least a second from now),
/// within [`PENDING_RECHECK`] while namespaces wait after an API server
/// error and within [`FAILED_RECHECK`] while some failed (a foreign Secret
/// that goes away is not watched); only on a change when no namespace
/// matches (the next Namespace event wakes it).
#[must_use]
pub fn requeue(outcome: &Outcome, next_refresh: Timestamp, now: Timestamp) -> Action {
    if outcome.matched == 0 && outcome.pending == 0 {
        return Action::await_change();
    }
    let wake = schedule::delay_until(now, next_refresh).max(std::time::Duration::from_secs(1));
    Action::requeue(if outcome.pending > 0 {
        wake.min(PENDING_RECHECK)
    } else if outcome.failed.is_empty() {
        wake
    } else {
        wake.min(FAILED_RECHECK)
    })
}

/// How soon a ClusterRunaiCredential with failed namespaces, or without its
/// credentials, looks again.
pub const FAILED_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);
/// How soon a namespace whose Secret the API server failed to read or write
/// is tried again.
pub const PENDING_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The note of the Warning for namespaces that newly failed (at most five
/// named), if any did.
#[must_use]
pub fn newly_failed(
    previous: Option<&ClusterRunaiCredentialStatus>,
    outcome: &Outcome,
) -> Option<String> {
    let names: Vec<String> = outcome
        .failed
        .iter()
        .filter(|(ns, _)| {
            previous.is_none_or(|p| !p.failed_namespaces.iter().any(|f| &f.namespace == *ns))
        })
        .take(5)
        .map(|(ns, (reason, _))| format!("{ns} ({reason})"))
        .collect();
    (!names.is_empty()).then(|| format!("the Secret could not be written in {}", names.join(", ")))
}

/// Reason of `Ready=False` while some matched namespaces wait for a retry
/// after an API server error.
pub const REASON_NAMESPACES_PENDING: &str = "NamespacesPending";

/// The status: the token's part as for a RunaiCredential (`Ready`,
/// `Degraded`, times, kstatus), then `Ready` decided by the namespaces.
#[allow(clippy::too_many_arguments)]
pub fn cluster_status(
    previous: Option<&ClusterRunaiCredentialStatus>,
    generation: Option<i64>,
    record: Option<&TokenRecord>,
    failure: Option<&Failure>,
    outcome: &Outcome,
    next_refresh: Timestamp,
    shared_with: u32,
    now: Timestamp,
) -> ClusterRunaiCredentialStatus {
    let previous_token = previous.map(as_token_status);
    let token = record.map(|record| CurrentToken {
        record,
        current: true,
    });
    let mut base = status::token_status(
        previous_token.as_ref(),
        generation,
        "",
        token,
        failure,
        next_refresh,
        now,
    );
    let token_ready = base
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_READY && c.status == "True");
    // With a valid token, the namespaces decide whether all is well; with
    // none to serve, there is nothing to be ready for.
    if token_ready || outcome.matched == 0 {
        let (ready, reason, message) = namespaces_ready(outcome, record);
        base = status::with_ready(
            previous_token.as_ref(),
            base,
            ready,
            reason,
            message,
            generation,
            now,
        );
    }
    let failed_namespaces = outcome
        .failed
        .iter()
        .take(MAX_FAILED_NAMESPACES)
        .map(|(namespace, (reason, message))| FailedNamespace {
            namespace: namespace.clone(),
            reason: (*reason).to_owned(),
            message: message.clone(),
        })
        .collect();
    ClusterRunaiCredentialStatus {
        observed_generation: generation,
        conditions: base.conditions,
        matched_namespaces: u32::try_from(outcome.matched).unwrap_or(u32::MAX),
        synced_namespaces: u32::try_from(outcome.synced).unwrap_or(u32::MAX),
        namespaces: Some(format!("{}/{}", outcome.synced, outcome.matched)),
        failed_namespaces,
        last_refresh_time: base.last_refresh_time,
        expiration_time: base.expiration_time,
        next_refresh_time: base.next_refresh_time,
        failed_attempts: base.failed_attempts,
        shared_with,
        token_api: base.token_api,
    }
}

/// `Ready` as the namespaces decide it, once the token is valid (or none is
/// needed): all matched namespaces hold it, none match, some wait for a
/// retry after an API server error, or some failed (named, three at most).
fn namespaces_ready(
    outcome: &Outcome,
    record: Option<&TokenRecord>,
) -> (bool, &'static str, String) {
    if outcome.matched == 0 {
        (
            true,
            REASON_NO_MATCHING_NAMESPACES,
            "no namespace matches namespaceSelector or namespaces".to_owned(),
        )
    } else if outcome.failed.is_empty() && outcome.synced == outcome.matched {
        (
            true,
            status::REASON_TOKEN_READY,
            format!(
                "all {} matched namespaces hold a token valid until {}",
                outcome.matched,
                record
                    .and_then(|r| r.expires_at)
                    .map_or_else(|| "an unknown time".to_owned(), secret::rfc3339)
            ),
        )
    } else if outcome.failed.is_empty() {
        (
            false,
            REASON_NAMESPACES_PENDING,
            format!(
                "{} of {} matched namespaces hold the token; the others are tried again after an API server error",
                outcome.synced, outcome.matched
            ),
        )
    } else {
        (
            false,
            REASON_NAMESPACES_FAILED,
            format!(
                "{} of {} matched namespaces hold the token, {} failed: {}",
                outcome.synced,
                outcome.matched,
                outcome.failed.len(),
                outcome
                    .failed
                    .iter()
                    .take(3)
                    .map(|(ns, (reason, _))| format!("{ns} ({reason})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}

/// The token part of a ClusterRunaiCredential's status, in the shape of a
/// RunaiCredential's (to keep its conditions' transition times).
fn as_token_status(s: &ClusterRunaiCredentialStatus) -> RunaiCredentialStatus {
    RunaiCredentialStatus {
        observed_generation: s.observed_generation,
        conditions: s.conditions.clone(),
        ..RunaiCredentialStatus::default()
    }
}

/// The status when the ClusterRunaiCredential cannot proceed (invalid spec,
/// missing credentials): `Ready=False` and Stalled with `reason`.
pub fn blocked_cluster_status(
    previous: Option<&ClusterRunaiCredentialStatus>,
    generation: Option<i64>,
    reason: &'static str,
    message: String,
    now: Timestamp,
) -> ClusterRunaiCredentialStatus {
    let previous_token = previous.map(as_token_status);
    let base = status::blocked_status(
        previous_token.as_ref(),
        generation,
        "",
        reason,
        message,
        now,
    );
    ClusterRunaiCredentialStatus {
        observed_generation: generation,
        conditions: base.conditions,
        ..ClusterRunaiCredentialStatus::default()
    }
}

#[cfg(test)]
mod tests;
