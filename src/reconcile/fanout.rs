//! The decisions of a ClusterRunaiCredential, pure: which namespaces match,
//! what to do with each namespace's Secret, when the token must be
//! refreshed, and the status.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use crate::{
    api::{
        CONDITION_READY, ClusterRunaiCredential, ClusterRunaiCredentialStatus, FailedNamespace,
        RunaiCredentialStatus, cluster::MAX_FAILED_NAMESPACES,
    },
    output::secret::{self, CLUSTER_CREDENTIAL_LABEL},
    reconcile::status::{self, CurrentToken, Failure},
    runai::exchange::GroupToken,
    token::schedule::{self, RefreshReason, TokenRecord},
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
    let selector = crc
        .spec
        .namespace_selector
        .clone()
        .and_then(|s| kube::core::Selector::try_from(s).ok());
    namespaces
        .iter()
        .filter(|(name, facts)| {
            !facts.terminating
                && scope.is_none_or(|scope| scope.contains(*name))
                && (crc.spec.namespaces.iter().any(|n| n == *name)
                    || (!SYSTEM_NAMESPACES.contains(&name.as_str())
                        && selector
                            .as_ref()
                            .is_some_and(|s| kube::core::SelectorExt::matches(s, &facts.labels))))
        })
        .map(|(name, _)| name.clone())
        .collect()
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

/// Why the group's token does not serve this ClusterRunaiCredential, if it
/// does not: none yet, due, expired, or older than what `forced` asks for
/// (a refresh asked for with the annotation, or a spec that defines the
/// credential anew).
pub fn refresh_reason(
    token: Option<&GroupToken>,
    refresh_interval: Option<std::time::Duration>,
    uid: &str,
    forced: Option<RefreshReason>,
    now: Timestamp,
) -> Option<RefreshReason> {
    let Some(token) = token else {
        return Some(RefreshReason::NoToken);
    };
    if let Some(reason) = forced {
        return Some(reason);
    }
    if token.expires_at.is_some_and(|at| at <= now) {
        return Some(RefreshReason::Due);
    }
    let due = schedule::refresh_due_at(
        token.issued_at,
        token.expires_at,
        refresh_interval,
        super::decide::jitter_for(uid, token.issued_at),
    );
    (now >= due).then_some(RefreshReason::Due)
}

/// The token's record as the Secrets keep it.
pub fn record_of(
    token: &GroupToken,
    credentials_hash: &str,
    generation: i64,
    refresh_request: Option<&str>,
    definition: &str,
) -> TokenRecord {
    TokenRecord {
        issued_at: token.issued_at,
        expires_at: token.expires_at,
        credentials_hash: credentials_hash.to_owned(),
        generation,
        refresh_request: refresh_request.map(str::to_owned),
        definition: Some(definition.to_owned()),
    }
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
        let (ready, reason, message) = if outcome.matched == 0 {
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
        };
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
