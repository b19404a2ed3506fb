//! Reconciling a ClusterRunaiCredential: read what exists (the spec, the
//! credentials in the controller's namespace, the namespaces, each matched
//! namespace's Secret) → decide ([`super::fanout`], pure) → act (one token
//! exchange, the Secret writes at a bounded concurrency, the clean-up of
//! namespaces that stopped matching) → write the status.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, Preconditions},
    runtime::{controller::Action, events::EventType},
};
use tracing::{info, warn};

use super::{
    Context, Read, act,
    fanout::{self, NamespaceFacts, Outcome, SecretAction},
    get_secret,
    status::{self, Failure},
};
use crate::{
    api::{
        ClusterRunaiCredential, ClusterRunaiCredentialStatus, DeletionPolicy, ValidSpec,
        validate_cluster_spec,
    },
    error::Error,
    metrics::CredentialLabels,
    output::secret::{self, CLUSTER_CREDENTIAL_LABEL, SecretOwner, StoredToken},
    runai::{
        client::{ClientCredentials, TokenClient, TrustKey},
        exchange::{Exchanged, GroupFailure, GroupKey, GroupToken, GroupView, Member},
    },
    token::schedule::{self, Desired, RefreshReason, TokenRecord},
};

/// Secret reads and writes in flight at once for one ClusterRunaiCredential:
/// the bound on the rate at which it writes into many namespaces.
pub const NAMESPACE_CONCURRENCY: usize = 8;
use fanout::FAILED_RECHECK;

/// Reconciles one ClusterRunaiCredential.
///
/// # Errors
///
/// Errors of the controller itself (a failing Kubernetes API), which
/// [`error_policy`] retries; failures of the token endpoint and of single
/// namespaces are reported in the status instead.
pub async fn reconcile(
    crc: Arc<ClusterRunaiCredential>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    use tracing::Instrument as _;
    let now = Timestamp::now();
    let span = tracing::info_span!("reconcile_cluster", name = crc.name_any());
    let started = std::time::Instant::now();
    let result = super::bounded(reconcile_at(&crc, &ctx, now).instrument(span)).await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    ctx.settle(&uid_of(&crc), &CredentialLabels::new("", &crc.name_any()));
    result
}

/// Retries a failed reconciliation after 5 to 60 seconds.
pub fn error_policy(crc: Arc<ClusterRunaiCredential>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.settle(&uid_of(&crc), &CredentialLabels::new("", &crc.name_any()));
    warn!(name = crc.name_any(), error = %err, "reconciling a ClusterRunaiCredential failed");
    Action::requeue(Duration::from_secs(
        5 + u64::from(rand::random::<u8>() % 55),
    ))
}

async fn reconcile_at(
    crc: &ClusterRunaiCredential,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action, Error> {
    ctx.ensure_acting()?;
    if crc.meta().deletion_timestamp.is_some() {
        finalize(ctx, crc).await?;
        return Ok(Action::await_change());
    }
    keep_finalizer(ctx, crc).await?;
    let uid = uid_of(crc);
    let mut seen = match observe(crc, ctx).await? {
        Ok(seen) => seen,
        // A spec that cannot be used takes it out of its group.
        Err(err) => {
            ctx.exchange.leave(&uid);
            write_status(crc, ctx, &blocked(crc, &err, now), false).await?;
            return Ok(Action::await_change());
        }
    };
    let source = match &seen.credentials {
        Ok(credentials) => obtain(ctx, crc, &seen, credentials, now).await?,
        Err(err) => match keep_without_credentials(ctx, crc, &seen, err, now) {
            Some(source) => source,
            None => {
                ctx.exchange.leave(&uid);
                // A namespace that stops matching still loses its Secret:
                // deselecting is how access is taken away.
                clean_up(ctx, crc, &seen).await?;
                ctx.set_served(&uid, &seen.matched);
                write_status(crc, ctx, &blocked(crc, err, now), false).await?;
                return Ok(Action::requeue(FAILED_RECHECK));
            }
        },
    };
    let source = writable(crc, source);
    let existing = std::mem::take(&mut seen.existing);
    let (outcome, wrote) = sync_all(ctx, crc, existing, &seen.target_name, &source).await;
    clean_up(ctx, crc, &seen).await?;
    ctx.set_served(&uid, &seen.matched);
    let next_refresh = report(ctx, crc, &seen, &source, &outcome, wrote, now).await?;
    Ok(fanout::requeue(&outcome, next_refresh, now))
}

/// The uid of a ClusterRunaiCredential (its name when it has none, as in tests).
fn uid_of(crc: &ClusterRunaiCredential) -> String {
    crc.uid().unwrap_or_else(|| crc.name_any())
}

/// The status of a ClusterRunaiCredential that cannot proceed.
fn blocked(
    crc: &ClusterRunaiCredential,
    err: &Error,
    now: Timestamp,
) -> ClusterRunaiCredentialStatus {
    fanout::blocked_cluster_status(
        crc.status.as_ref(),
        crc.meta().generation,
        err.reason(),
        err.to_string(),
        now,
    )
}

/// Being deleted: with `Retain`, the Secrets are released before the object
/// may go; with `Delete`, the garbage collector follows the owner references.
async fn finalize(ctx: &Context, crc: &ClusterRunaiCredential) -> Result<(), Error> {
    if crc.finalizers().iter().any(|f| f == RELEASE_FINALIZER) {
        release_all(ctx, crc).await?;
        set_finalizer(ctx, crc, false).await?;
    }
    Ok(())
}

/// Keeps [`RELEASE_FINALIZER`] present exactly with `deletionPolicy: Retain`.
async fn keep_finalizer(ctx: &Context, crc: &ClusterRunaiCredential) -> Result<(), Error> {
    let finalized = crc.finalizers().iter().any(|f| f == RELEASE_FINALIZER);
    let retain = crc.spec.target.deletion_policy == DeletionPolicy::Retain;
    if retain != finalized {
        set_finalizer(ctx, crc, retain).await?;
    }
    Ok(())
}

/// What one pass read, changing nothing: the checked spec, the credentials
/// (or why they cannot be read), the namespaces, which match, and each
/// matched namespace's Secret.
struct Seen {
    spec: ValidSpec,
    trust: TrustKey,
    client: TokenClient,
    credentials: Result<ClientCredentials, Error>,
    namespaces: BTreeMap<String, NamespaceFacts>,
    matched: BTreeSet<String>,
    target_name: String,
    existing: BTreeMap<String, Result<Option<Secret>, Error>>,
    /// The intact tokens its own Secrets hold, with their records.
    stored: Vec<StoredToken>,
}

/// Reads what a pass needs. The inner error is a spec that cannot be used
/// (reported in the status).
///
/// # Errors
///
/// Errors of the controller itself (a failing Kubernetes API, namespaces not
/// listed yet), which [`error_policy`] retries.
async fn observe(
    crc: &ClusterRunaiCredential,
    ctx: &Context,
) -> Result<Result<Seen, Error>, Error> {
    let spec = match validate_cluster_spec(crc, ctx.policy.allow_insecure_http)
        .and_then(|spec| ctx.policy.allowed_urls.check(&spec.url).map(|()| spec))
    {
        Ok(spec) => spec,
        Err(err) => return Ok(Err(err)),
    };
    let (trust, client) = match ctx.token_clients.get(crc.spec.ca_bundle.as_deref()).await {
        Ok(found) => found,
        Err(err @ Error::InvalidSpec { .. }) => return Ok(Err(err)),
        Err(err) => return Err(err),
    };
    let credentials = read_credentials(ctx, crc).await?;
    // Nothing is matched, written or cleaned up before every namespace is
    // known: an empty list would look like "no namespace matches".
    let namespaces = namespace_facts(ctx)?;
    let matched = fanout::matched_namespaces(crc, &namespaces, ctx.scope.as_ref());
    let target_name = crc.target_secret_name();
    let existing = read_secrets(ctx, &matched, &target_name).await;
    let stored = existing
        .values()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .filter(|found| fanout::is_managed_by(found, &crc.name_any(), crc.uid().as_deref()))
        .filter_map(|found| secret::stored_token(found, &crc.spec.target.key, &ctx.hash_key))
        .filter(|s| s.intact)
        .collect();
    Ok(Ok(Seen {
        spec,
        trust,
        client,
        credentials,
        namespaces,
        matched,
        target_name,
        existing,
        stored,
    }))
}

/// The client credentials from the controller's namespace, or why they
/// cannot be used.
///
/// # Errors
///
/// The API server's errors other than 404 (retried).
async fn read_credentials(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
) -> Result<Result<ClientCredentials, Error>, Error> {
    let own: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.controller_namespace);
    let reference = &crc.spec.client_credentials_secret_ref;
    let found = match get_secret(&own, &reference.name, Read::Cached).await {
        Ok(None) => get_secret(&own, &reference.name, Read::Latest).await,
        other => other,
    }
    .map_err(Error::kube("reading the credentials Secret"))?;
    Ok(if ctx.policy.credentials_label_required {
        secret::require_credentials_label(found.as_ref(), reference)
    } else {
        Ok(())
    }
    .and_then(|()| secret::read_credentials(found.as_ref(), reference))
    .map_err(|err| match err {
        Error::CredentialsNotFound(message) => Error::CredentialsNotFound(format!(
            "{message} (a ClusterRunaiCredential reads it from the controller's namespace, {})",
            ctx.controller_namespace
        )),
        other => other,
    }))
}

/// The token for this pass, and what the status says of it.
struct Source {
    token: Option<GroupToken>,
    record: Option<TokenRecord>,
    failure: Option<Failure>,
    retry_at: Option<Timestamp>,
    /// Other members of the exchange.
    shared_with: u32,
}

/// Without its credentials, the token the Secrets hold stays in use while
/// it is valid (Degraded, as for a RunaiCredential), but only a token of its
/// own credentials ([`fanout::kept_token`]). It stays a member (no request
/// is made for it), so that the next pass still knows which token is its
/// own. `None`: nothing to serve.
fn keep_without_credentials(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    seen: &Seen,
    err: &Error,
    now: Timestamp,
) -> Option<Source> {
    let group = ctx.exchange.group_of(&uid_of(crc));
    let own = |r: &TokenRecord| group == Some(GroupKey::new(&r.credentials_hash, &seen.trust));
    let own: Option<&dyn Fn(&TokenRecord) -> bool> = group.is_some().then_some(&own as _);
    let kept = fanout::kept_token(&seen.stored, own, now)?;
    let previous = crc.status.as_ref();
    Some(Source {
        token: Some(GroupToken {
            access_token: kept.access_token.clone(),
            issued_at: kept.record.issued_at,
            expires_at: kept.record.expires_at,
            serial: 0,
            requested: false,
            token_api: kept.record.token_api,
        }),
        record: Some(kept.record.clone()),
        // No request is made: the count stays as it was.
        failure: Some(Failure {
            reason: err.reason(),
            message: err.to_string(),
            attempts: previous.map_or(0, |p| p.failed_attempts).max(1),
        }),
        retry_at: Some(now + FAILED_RECHECK),
        shared_with: 0,
    })
}

/// The group's token, through the shared exchange: joins the group, offers
/// it the tokens its Secrets hold (after a restart they seed it), then asks
/// [`fanout::plan_token`] whether it serves as it is; if not, one request
/// for the whole group.
///
/// # Errors
///
/// Errors of the controller itself (the lease lost).
async fn obtain(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    seen: &Seen,
    credentials: &ClientCredentials,
    now: Timestamp,
) -> Result<Source, Error> {
    let uid = uid_of(crc);
    let desired = desired(ctx, crc, seen, credentials);
    let hash = desired.credentials_hash.as_deref().unwrap_or_default();
    let key = GroupKey::new(hash, &seen.trust);
    let view = join(ctx, crc, seen, &key, hash).await;
    let records: Vec<&TokenRecord> = seen
        .stored
        .iter()
        .map(|s| &s.record)
        .filter(|r| secret::hashes_equal(hash, &r.credentials_hash))
        .collect();
    let request = crc.refresh_request();
    let answered = answered(ctx, crc, &records);
    let facts = fanout::SourceFacts {
        uid: &uid,
        desired: &desired,
        token: view.token.as_ref(),
        records: &records,
        answered: answered.as_deref(),
        refresh_interval: seen.spec.refresh_interval,
        matched: seen.matched.len(),
        now,
    };
    let held = fanout::held_record(&facts);
    let Some(reason) = fanout::plan_token(&facts) else {
        let record = view
            .token
            .as_ref()
            .map(|t| fanout::record_for(t, held.as_ref(), &desired, answered.as_deref()));
        return Ok(source(ctx, &key, view.token, record, None));
    };
    let outcome = request_token(ctx, crc, seen, credentials, &key, &view, reason, now).await;
    if let Exchanged::Shared(token) | Exchanged::Requested(token) = &outcome {
        let told = super::Told {
            uid: &uid,
            labels: CredentialLabels::new("", &crc.name_any()),
            about: crc.object_ref(&()),
            spec_api: crc.spec.token_api,
        };
        super::report_notices(ctx, &told, &key, token).await;
    }
    let (token, failure) = match outcome {
        Exchanged::Shared(t) => (Some(t), None),
        Exchanged::Requested(t) => {
            announce(ctx, crc, reason, seen.matched.len()).await;
            (Some(t), None)
        }
        Exchanged::Failed(err) if !err.is_refresh_failure() => return Err(err),
        Exchanged::Failed(_) | Exchanged::HeldBack => {
            let group = ctx.exchange.view(&key);
            // The group's token stays in use while it is valid.
            let kept = group
                .token
                .filter(|t| t.expires_at.is_none_or(|at| at > now));
            (kept, group.failure)
        }
    };
    // A refresh request is answered once: by a token newer than the group's
    // when it was seen, whether or not any Secret could take it, and
    // whatever else asked for it (as a RunaiCredential records the request
    // with any token it writes).
    let answered = match (request, &token) {
        (Some(value), Some(t)) if t.serial > view.serial => {
            ctx.set_handled_refresh(&uid, value);
            Some(value.to_owned())
        }
        _ => answered,
    };
    let record = token
        .as_ref()
        .map(|t| fanout::record_for(t, held.as_ref(), &desired, answered.as_deref()));
    Ok(source(ctx, &key, token, record, failure))
}

/// What a ClusterRunaiCredential asks for now, as a RunaiCredential's
/// [`Desired`]: its credentials, generation, refresh request and definition.
fn desired(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    seen: &Seen,
    credentials: &ClientCredentials,
) -> Desired {
    Desired {
        credentials_hash: Some(ctx.hash_key.credentials_hash(
            seen.spec.url.as_str(),
            crc.spec.token_api,
            credentials,
        )),
        generation: crc.meta().generation.unwrap_or_default(),
        refresh_request: crc.refresh_request().map(str::to_owned),
        definition: Some(
            ctx.hash_key
                .definition_hash(&seen.trust, &crc.spec.client_credentials_secret_ref),
        ),
    }
}

/// The refresh annotation value already answered, if it is the one asked
/// for now: remembered since a newer token answered it (also when no Secret
/// could take it), or recorded in one of its Secrets (`records`).
fn answered(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    records: &[&TokenRecord],
) -> Option<String> {
    let request = crc.refresh_request()?;
    ctx.handled_refresh(&uid_of(crc))
        .filter(|v| v == request)
        .or_else(|| {
            records
                .iter()
                .any(|r| r.refresh_request.as_deref() == Some(request))
                .then(|| request.to_owned())
        })
}

/// Joins the group `key` and seeds it with the tokens of the credentials
/// hashed `hash` that its Secrets hold (kept by the exchange only when newer
/// than what it holds); when the group's token is only in a RunaiCredential's
/// Secret, reads it there rather than ask Run:ai again.
async fn join(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    seen: &Seen,
    key: &GroupKey,
    hash: &str,
) -> GroupView {
    let mut view = ctx
        .exchange
        .join(&uid_of(crc), Member::cluster_scoped(&crc.name_any()), key);
    for kept in seen
        .stored
        .iter()
        .filter(|s| secret::hashes_equal(hash, &s.record.credentials_hash))
    {
        view = super::offer_stored(ctx, key, kept);
    }
    if !seen.matched.is_empty()
        && view.token.is_none()
        && let Some(elsewhere) = view.held_by.clone()
        && let Some(found) = super::read_held(ctx, &elsewhere, hash).await
    {
        view = super::offer_stored(ctx, key, &found);
    }
    view
}

/// One request for the group, through the exchange: it holds back before
/// the group's retry time, and takes another member's token when
/// [`super::decide::token_answers`] says it answers `reason`.
#[allow(clippy::too_many_arguments)]
async fn request_token(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    seen: &Seen,
    credentials: &ClientCredentials,
    key: &GroupKey,
    view: &GroupView,
    reason: RefreshReason,
    now: Timestamp,
) -> Exchanged {
    let uid = uid_of(crc);
    let (url, client, interval) = (&seen.spec.url, &seen.client, seen.spec.refresh_interval);
    let request = super::TokenRequest {
        client,
        url,
        api: crc.spec.token_api,
        // The records of this group's definition are those whose
        // credentials hash keys this group.
        remembered: super::remembered_api(view, seen.stored.iter().map(|s| &s.record), |r| {
            GroupKey::new(&r.credentials_hash, &seen.trust) == *key
        }),
        credentials,
    };
    let answers = |t: &GroupToken| {
        let suits = super::decide::token_suits(t, interval, &uid, now);
        let newer = t.serial > view.serial;
        super::decide::token_answers(reason, t, newer, !newer, suits, now)
    };
    ctx.exchange
        .obtain(
            key,
            request.app(),
            &uid,
            answers,
            view.failure.as_ref(),
            (now, rand::random()),
            || request.send(ctx, reason, now),
        )
        .await
}

/// A Normal Event for a new token when it is news ([`schedule::announce_token`],
/// the rule of both kinds).
async fn announce(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    reason: RefreshReason,
    matched: usize,
) {
    let recovering = crc.status.as_ref().is_some_and(|p| p.failed_attempts > 0);
    if schedule::announce_token(reason, recovering) {
        act::publish(
            ctx,
            &crc.object_ref(&()),
            EventType::Normal,
            "TokenIssued",
            format!("a new token ({}) for {matched} namespaces", reason.as_str()),
        )
        .await;
    }
}

/// The pass's token with the group's failure and member count.
fn source(
    ctx: &Context,
    key: &GroupKey,
    token: Option<GroupToken>,
    record: Option<TokenRecord>,
    failure: Option<GroupFailure>,
) -> Source {
    let members = ctx.exchange.view(key).members;
    Source {
        token,
        record,
        retry_at: failure.as_ref().map(|f| f.retry_at),
        failure: failure.map(|f| f.failure),
        shared_with: u32::try_from(members.saturating_sub(1)).unwrap_or(u32::MAX),
    }
}

/// The pass's token, unless the spec's outputs cannot hold it
/// ([`crate::output::formats::check_token`]): then a failed refresh, and
/// no Secret is written (each keeps what it holds).
fn writable(crc: &ClusterRunaiCredential, source: Source) -> Source {
    let Some(token) = &source.token else {
        return source;
    };
    match crate::output::formats::check_token(&crc.spec.target.outputs, &token.access_token) {
        Ok(()) => source,
        Err(message) => {
            let err = Error::MalformedResponse(message);
            Source {
                token: None,
                record: None,
                failure: Some(Failure {
                    reason: err.reason(),
                    message: err.to_string(),
                    attempts: source.failure.as_ref().map_or(1, |f| f.attempts),
                }),
                retry_at: source.retry_at,
                shared_with: source.shared_with,
            }
        }
    }
}

/// Brings every matched namespace's Secret in step with the token, at a
/// bounded concurrency. Returns how the namespaces fared and whether any
/// Secret was written.
async fn sync_all(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    existing: BTreeMap<String, Result<Option<Secret>, Error>>,
    target_name: &str,
    source: &Source,
) -> (Outcome, bool) {
    let mut outcome = Outcome {
        matched: existing.len(),
        ..Outcome::default()
    };
    let (Some(token), Some(record)) = (&source.token, &source.record) else {
        return (outcome, false);
    };
    let owner_reference = match crc.spec.target.deletion_policy {
        DeletionPolicy::Delete => crc.controller_owner_ref(&()),
        DeletionPolicy::Retain => None,
    };
    let results: Vec<(String, Result<bool, Error>)> = futures::stream::iter(existing)
        .map(|(namespace, found)| {
            let owner = SecretOwner {
                secret_name: target_name.to_owned(),
                namespace: namespace.clone(),
                label: (
                    CLUSTER_CREDENTIAL_LABEL,
                    secret::credential_label_value(&crc.name_any()),
                ),
                owner_reference: owner_reference.clone(),
            };
            let desired = secret::desired_secret_for(
                &owner,
                &crc.spec.target,
                crc.spec.url.trim(),
                &token.access_token,
                record,
                &ctx.hash_key,
            );
            async move {
                let result = match found {
                    Ok(found) => {
                        sync_namespace(ctx, crc, &namespace, found, desired, &token.access_token)
                            .await
                    }
                    Err(err) => Err(err),
                };
                (namespace, result)
            }
        })
        .buffer_unordered(NAMESPACE_CONCURRENCY)
        .collect()
        .await;
    let mut wrote = false;
    for (namespace, result) in results {
        match result {
            Ok(written) => {
                outcome.synced += 1;
                wrote |= written;
            }
            Err(err @ (Error::SecretConflict { .. } | Error::SecretWriteFailed { .. })) => {
                outcome
                    .failed
                    .insert(namespace, (err.reason(), err.to_string()));
            }
            // The API server failed for this namespace only: the others
            // are served, and it is tried again shortly.
            Err(err) => {
                warn!(namespace, error = %err, "the Secret of one namespace could not be read or written; retrying shortly");
                outcome.pending += 1;
            }
        }
    }
    (outcome, wrote)
}

/// Writes the status and publishes the Warnings: when a failure starts or
/// changes, at a decaying rate while it lasts ([`schedule::warn_again`], the
/// rule of both kinds), and when a namespace newly fails. Returns the next
/// refresh time.
async fn report(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    seen: &Seen,
    source: &Source,
    outcome: &Outcome,
    wrote: bool,
    now: Timestamp,
) -> Result<Timestamp, Error> {
    let previous = crc.status.as_ref();
    let next_refresh = match (&source.token, source.retry_at) {
        (_, Some(at)) => at,
        (Some(t), None) => schedule::refresh_due_at(
            t.issued_at,
            t.expires_at,
            seen.spec.refresh_interval,
            super::decide::jitter_for(&uid_of(crc), t.issued_at),
        ),
        (None, None) => now + Duration::from_secs(30),
    };
    let status = ClusterRunaiCredentialStatus {
        token_api: status::token_api_shown(crc.spec.token_api, source.record.as_ref()),
        ..fanout::cluster_status(
            previous,
            crc.meta().generation,
            source.record.as_ref(),
            source.failure.as_ref(),
            outcome,
            next_refresh,
            source.shared_with,
            now,
        )
    };
    write_status(crc, ctx, &status, wrote).await?;
    if let Some(f) = &source.failure
        && previous.is_none_or(|p| p.failed_attempts != f.attempts)
        && schedule::warn_again(
            f.attempts,
            previous.and_then(|p| status::failure_reason(&p.conditions, p.failed_attempts)),
            f.reason,
        )
    {
        // The failure's words alone, as a RunaiCredential's Warning: with
        // no counter in it, repeats are one Event with a series (api.md,
        // "Talking to the API server: faults").
        act::publish(
            ctx,
            &crc.object_ref(&()),
            EventType::Warning,
            f.reason,
            f.message.clone(),
        )
        .await;
    }
    if let Some(note) = fanout::newly_failed(previous, outcome) {
        let reason = fanout::REASON_NAMESPACES_FAILED;
        act::publish(ctx, &crc.object_ref(&()), EventType::Warning, reason, note).await;
    }
    Ok(next_refresh)
}

/// The namespaces the controller knows, from its watch of them.
///
/// # Errors
///
/// [`Error::Startup`] when namespaces cannot be listed or their watch has
/// not listed them yet (retried).
fn namespace_facts(ctx: &Context) -> Result<BTreeMap<String, NamespaceFacts>, Error> {
    use futures::FutureExt as _;
    let Some(store) = &ctx.namespaces else {
        return Err(Error::Startup(
            "namespaces cannot be listed: ClusterRunaiCredentials need to read them (the chart's ClusterRole grants it)".to_owned(),
        ));
    };
    if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
        return Err(Error::Startup(
            "the namespaces are not listed yet".to_owned(),
        ));
    }
    Ok(store
        .state()
        .iter()
        .map(|ns| {
            (
                ns.name_any(),
                NamespaceFacts {
                    labels: ns.labels().clone(),
                    terminating: ns.metadata.deletion_timestamp.is_some(),
                },
            )
        })
        .collect())
}

/// Each matched namespace's Secret of the target name, read from the API
/// server's watch cache.
async fn read_secrets(
    ctx: &Context,
    matched: &BTreeSet<String>,
    name: &str,
) -> BTreeMap<String, Result<Option<Secret>, Error>> {
    futures::stream::iter(matched.iter().cloned())
        .map(|namespace| async move {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            let found = get_secret(&secrets, name, Read::Cached)
                .await
                .map_err(Error::kube("reading a target Secret"));
            (namespace, found)
        })
        .buffer_unordered(NAMESPACE_CONCURRENCY)
        .collect()
        .await
}

/// Brings one namespace's Secret in step: created, updated (if still the
/// version read; read again from etcd once if not), or left alone.
async fn sync_namespace(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    namespace: &str,
    mut found: Option<Secret>,
    desired: Secret,
    token: &str,
) -> Result<bool, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = crc.name_any();
    let uid = crc.uid();
    for attempt in 0..2 {
        let action = fanout::plan_secret(found.as_ref(), &desired, &name, uid.as_deref());
        let result = match action {
            SecretAction::Keep => return Ok(false),
            SecretAction::Conflict => {
                return Err(Error::SecretConflict {
                    secret: desired.name_any(),
                });
            }
            SecretAction::Create | SecretAction::Update => {
                ctx.ensure_acting()?;
                // Its echo triggers no pass of its own.
                let own_write = ctx.cluster_writes.begin(
                    &ctx.exchange,
                    namespace,
                    &desired.name_any(),
                    Member::cluster_scoped(&name),
                );
                let result =
                    act::write_secret(&secrets, found.as_ref(), desired.clone(), token).await;
                own_write.end(result.as_ref().ok().cloned().flatten());
                result
            }
        };
        match result {
            Ok(_) => return Ok(true),
            Err(ref err) if attempt == 0 && super::stale_write(err) => {
                found = get_secret(&secrets, &desired.name_any(), Read::Latest)
                    .await
                    .map_err(Error::kube("reading a target Secret"))?;
            }
            Err(err) => return Err(err),
        }
    }
    Err(Error::SecretConflict {
        secret: desired.name_any(),
    })
}

/// The Secrets this ClusterRunaiCredential manages in namespaces it no
/// longer serves: deleted (`Delete`) or released (`Retain`).
async fn clean_up(ctx: &Context, crc: &ClusterRunaiCredential, seen: &Seen) -> Result<(), Error> {
    let (namespaces, matched, target_name) = (&seen.namespaces, &seen.matched, &seen.target_name);
    let name = crc.name_any();
    let managed = list_managed(ctx, &name).await?;
    for found in managed {
        let namespace = found.namespace().unwrap_or_default();
        let current = found.name_any() == *target_name && matched.contains(&namespace);
        if current || !fanout::is_managed_by(&found, &name, crc.uid().as_deref()) {
            continue;
        }
        // A namespace being deleted takes its Secrets with it.
        if namespaces.get(&namespace).is_some_and(|ns| ns.terminating) {
            continue;
        }
        release_or_delete(
            ctx,
            &found,
            crc.spec.target.deletion_policy,
            crc.uid().as_deref(),
        )
        .await?;
    }
    Ok(())
}

/// The Secrets labelled as managed by the ClusterRunaiCredential `name`, in
/// the namespaces this controller serves.
async fn list_managed(ctx: &Context, name: &str) -> Result<Vec<Secret>, Error> {
    let selector = format!(
        "{CLUSTER_CREDENTIAL_LABEL}={}",
        secret::credential_label_value(name)
    );
    // From the API server's watch cache: a Secret it has not seen yet is
    // looked at on the next pass.
    let params = ListParams::default().labels(&selector).match_any();
    let mut found = Vec::new();
    match &ctx.scope {
        None => {
            let all: Api<Secret> = Api::all(ctx.client.clone());
            found.extend(
                all.list(&params)
                    .await
                    .map_err(Error::kube(
                        "listing the Secrets of a ClusterRunaiCredential",
                    ))?
                    .items,
            );
        }
        Some(scope) => {
            for namespace in scope {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
                found.extend(
                    api.list(&params)
                        .await
                        .map_err(Error::kube(
                            "listing the Secrets of a ClusterRunaiCredential",
                        ))?
                        .items,
                );
            }
        }
    }
    Ok(found)
}

async fn release_or_delete(
    ctx: &Context,
    found: &Secret,
    policy: DeletionPolicy,
    owner_uid: Option<&str>,
) -> Result<(), Error> {
    let namespace = found.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = found.name_any();
    ctx.ensure_acting()?;
    match policy {
        DeletionPolicy::Delete => {
            info!(namespace, secret = %name, "deleting the Secret of a namespace no longer matched");
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: found.metadata.uid.clone(),
                    resource_version: found.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match secrets.delete(&name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(()),
                Err(e) => Err(Error::kube(
                    "deleting the Secret of a namespace no longer matched",
                )(e)),
            }
        }
        DeletionPolicy::Retain => {
            info!(namespace, secret = %name, "releasing the Secret of a namespace no longer matched");
            let patch = secret::release_patch(found, owner_uid);
            match secrets
                .patch(&name, &act::update_params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(()),
                Err(e) => Err(Error::kube(
                    "releasing the Secret of a namespace no longer matched",
                )(e)),
            }
        }
    }
}

/// The finalizer of a ClusterRunaiCredential with `deletionPolicy: Retain`:
/// its Secrets are released before it goes (with `Delete`, the garbage
/// collector follows the owner references instead, and there is none). If
/// the controller is uninstalled first, remove it by hand.
pub const RELEASE_FINALIZER: &str = "tokensync.dev/release-secrets";

/// Adds or removes [`RELEASE_FINALIZER`], keeping the others (a JSON merge
/// patch of the list, conditional on the resourceVersion read).
///
/// # Errors
///
/// [`Error::Kube`] when the patch fails (a 409: read again and retried).
async fn set_finalizer(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    present: bool,
) -> Result<(), Error> {
    ctx.ensure_acting()?;
    let mut finalizers: Vec<String> = crc
        .finalizers()
        .iter()
        .filter(|f| *f != RELEASE_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(RELEASE_FINALIZER.to_owned());
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": crc.resource_version(), "finalizers": finalizers}
    });
    let api: Api<ClusterRunaiCredential> = Api::all(ctx.client.clone());
    match api
        .patch(
            &crc.name_any(),
            &act::update_params(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(
            "updating the finalizer of a ClusterRunaiCredential",
        )(e)),
    }
}

/// Releases every Secret a ClusterRunaiCredential with `deletionPolicy:
/// Retain` manages, before it is deleted.
///
/// # Errors
///
/// [`Error::Kube`] when they cannot be listed or one cannot be released
/// (retried: the finalizer stays until all are).
async fn release_all(ctx: &Context, crc: &ClusterRunaiCredential) -> Result<(), Error> {
    let name = crc.name_any();
    for secret in list_managed(ctx, &name).await? {
        if fanout::is_managed_by(&secret, &name, crc.uid().as_deref()) {
            release_or_delete(ctx, &secret, DeletionPolicy::Retain, crc.uid().as_deref()).await?;
        }
    }
    info!(
        name,
        "released the Secrets of a deleted ClusterRunaiCredential"
    );
    Ok(())
}

/// Records the status in the metrics and writes it when it changed, or
/// when only `sharedWith` changed and a Secret was written in this pass
/// (`recount`: api.md promises the count at the latest at a refresh).
async fn write_status(
    crc: &ClusterRunaiCredential,
    ctx: &Context,
    status: &ClusterRunaiCredentialStatus,
    recount: bool,
) -> Result<(), Error> {
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::CONDITION_READY)
        .map_or("Unknown", |c| c.status.as_str());
    let expires_at = status
        .expiration_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| t.as_second());
    ctx.metrics.observe_credential(
        CredentialLabels::new("", &crc.name_any()),
        expires_at,
        status.failed_attempts,
        ready,
    );
    if !super::status::must_write(crc.status.as_ref(), status, recount) {
        return Ok(());
    }
    ctx.ensure_acting()?;
    let api: Api<ClusterRunaiCredential> = Api::all(ctx.client.clone());
    act::apply_status(&api, &crc.name_any(), status).await
}
