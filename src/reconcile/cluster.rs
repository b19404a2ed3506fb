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
    status::Failure,
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
        exchange::{Exchanged, GroupKey, GroupToken, Member},
    },
    token::schedule::{self, TokenRecord},
};

/// Secret reads and writes in flight at once for one ClusterRunaiCredential:
/// the bound on the rate at which it writes into many namespaces.
pub const NAMESPACE_CONCURRENCY: usize = 8;
/// How soon a ClusterRunaiCredential with failed namespaces, or without its
/// credentials, looks again (a foreign Secret that goes away is not watched).
const FAILED_RECHECK: Duration = Duration::from_secs(15);
/// How soon a namespace whose Secret the API server failed to read or write
/// is tried again.
const PENDING_RECHECK: Duration = Duration::from_secs(5);

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
    if result.is_ok() {
        ctx.health.record_progress();
    }
    result
}

/// Retries a failed reconciliation after 5 to 60 seconds.
pub fn error_policy(crc: Arc<ClusterRunaiCredential>, err: &Error, _ctx: Arc<Context>) -> Action {
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
    let finalized = crc.finalizers().iter().any(|f| f == RELEASE_FINALIZER);
    let retain = crc.spec.target.deletion_policy == DeletionPolicy::Retain;
    if crc.meta().deletion_timestamp.is_some() {
        // Delete: the garbage collector follows the owner references.
        // Retain: the Secrets are released before the object may go.
        if finalized {
            release_all(ctx, crc).await?;
            set_finalizer(ctx, crc, false).await?;
        }
        return Ok(Action::await_change());
    }
    if retain != finalized {
        set_finalizer(ctx, crc, retain).await?;
    }
    let uid = crc.uid().unwrap_or_else(|| crc.name_any());
    let generation = crc.meta().generation;
    let previous = crc.status.as_ref();
    let blocked = |err: &Error| {
        fanout::blocked_cluster_status(previous, generation, err.reason(), err.to_string(), now)
    };

    // Read: the spec, the credentials, the namespaces.
    let spec = match validate_cluster_spec(crc, ctx.policy.allow_insecure_http)
        .and_then(|spec| ctx.policy.allowed_urls.check(&spec.url).map(|()| spec))
    {
        Ok(spec) => spec,
        Err(err) => {
            ctx.exchange.leave(&uid);
            write_status(crc, ctx, &blocked(&err), false).await?;
            return Ok(Action::await_change());
        }
    };
    let (trust, client) = match ctx.token_clients.get(crc.spec.ca_bundle.as_deref()).await {
        Ok(found) => found,
        Err(err @ Error::InvalidSpec { .. }) => {
            write_status(crc, ctx, &blocked(&err), false).await?;
            return Ok(Action::await_change());
        }
        Err(err) => return Err(err),
    };
    let own: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.controller_namespace);
    let reference = &crc.spec.client_credentials_secret_ref;
    let credentials_secret = match get_secret(&own, &reference.name, Read::Cached).await {
        Ok(None) => get_secret(&own, &reference.name, Read::Latest).await,
        other => other,
    }
    .map_err(Error::kube("reading the credentials Secret"))?;
    let credentials = if ctx.policy.credentials_label_required {
        secret::require_credentials_label(credentials_secret.as_ref(), reference)
    } else {
        Ok(())
    }
    .and_then(|()| secret::read_credentials(credentials_secret.as_ref(), reference))
    .map_err(|err| match err {
        Error::CredentialsNotFound(message) => Error::CredentialsNotFound(format!(
            "{message} (a ClusterRunaiCredential reads it from the controller's namespace, {})",
            ctx.controller_namespace
        )),
        other => other,
    });
    // Nothing is matched, written or cleaned up before every namespace is
    // known: an empty list would look like "no namespace matches".
    let namespaces = namespace_facts(ctx)?;
    let matched = fanout::matched_namespaces(crc, &namespaces, ctx.scope.as_ref());
    let target_name = crc.target_secret_name();
    let existing = read_secrets(ctx, &matched, &target_name).await;
    // The tokens its Secrets hold, as recorded by the controller.
    let stored: Vec<StoredToken> = existing
        .values()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .filter(|found| fanout::is_managed_by(found, &crc.name_any(), crc.uid().as_deref()))
        .filter_map(|found| secret::stored_token(found, &crc.spec.target.key, &ctx.hash_key))
        .filter(|s| s.intact)
        .collect();

    let Token {
        token,
        record,
        failure,
        retry_at,
        shared_with,
    } = match credentials {
        Ok(credentials) => {
            let source = Source {
                spec: &spec,
                trust: &trust,
                client: &client,
                credentials: &credentials,
            };
            exchange_token(ctx, crc, &source, &stored, matched.len(), now).await?
        }
        // Without its credentials, the token the Secrets hold stays in use
        // while it is valid (Degraded, as for a RunaiCredential), but only a
        // token of its own credentials: those of the group it is in. A
        // namespace user could copy another credential's Secret, record
        // and all (intact), into the one in their namespace; that token
        // never spreads. It stays a member (no request is made for it), so
        // that the next pass still knows which token is its own. After a
        // restart it knows no group: its Secrets' tokens count only when all
        // were obtained with one set of credentials (a planted one makes it
        // fail closed).
        Err(err) => match stored
            .iter()
            .filter(|s| match ctx.exchange.group_of(&uid) {
                Some(own) => GroupKey::new(&s.record.credentials_hash, &trust) == own,
                None => stored.iter().all(|other| {
                    secret::hashes_equal(&other.record.credentials_hash, &s.record.credentials_hash)
                }),
            })
            .filter(|s| s.record.expires_at.is_none_or(|at| at > now))
            .max_by_key(|s| s.record.issued_at)
        {
            Some(kept) => {
                Token {
                    token: Some(GroupToken {
                        access_token: kept.access_token.clone(),
                        issued_at: kept.record.issued_at,
                        expires_at: kept.record.expires_at,
                        serial: 0,
                        requested: false,
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
                }
            }
            None => {
                ctx.exchange.leave(&uid);
                // A namespace that stops matching still loses its Secret:
                // deselecting is how access is taken away.
                clean_up(ctx, crc, &namespaces, &matched, &target_name).await?;
                write_status(crc, ctx, &blocked(&err), false).await?;
                return Ok(Action::requeue(FAILED_RECHECK));
            }
        },
    };
    let mut outcome = Outcome {
        matched: matched.len(),
        ..Outcome::default()
    };
    // Whether a Secret was written in this pass (then a new `sharedWith`
    // goes out with the status).
    let mut wrote = false;
    if let (Some(token), Some(record)) = (&token, &record) {
        let owner_reference = match crc.spec.target.deletion_policy {
            DeletionPolicy::Delete => crc.controller_owner_ref(&()),
            DeletionPolicy::Retain => None,
        };
        let results: Vec<(String, Result<bool, Error>)> = futures::stream::iter(existing)
            .map(|(namespace, found)| {
                let owner = SecretOwner {
                    secret_name: target_name.clone(),
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
                            sync_namespace(
                                ctx,
                                crc,
                                &namespace,
                                found,
                                desired,
                                &token.access_token,
                            )
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
    }
    clean_up(ctx, crc, &namespaces, &matched, &target_name).await?;

    // The status.
    let next_refresh = match (&token, retry_at) {
        (_, Some(at)) => at,
        (Some(t), None) => schedule::refresh_due_at(
            t.issued_at,
            t.expires_at,
            spec.refresh_interval,
            super::decide::jitter_for(&uid, t.issued_at),
        ),
        (None, None) => now + Duration::from_secs(30),
    };
    let status = fanout::cluster_status(
        previous,
        generation,
        record.as_ref(),
        failure.as_ref(),
        &outcome,
        next_refresh,
        shared_with,
        now,
    );
    write_status(crc, ctx, &status, wrote).await?;
    // Warnings as for a RunaiCredential: when a failure starts, then at the
    // 2nd, 4th, 8th … attempt; and when a namespace newly fails.
    if let Some(f) = &failure
        && f.attempts.is_power_of_two()
        && previous.is_none_or(|p| p.failed_attempts != f.attempts)
    {
        act::publish(
            ctx,
            &crc.object_ref(&()),
            EventType::Warning,
            f.reason,
            format!(
                "refresh failed {} time(s) in a row: {}",
                f.attempts, f.message
            ),
        )
        .await;
    }
    let newly_failed: Vec<&String> = outcome
        .failed
        .keys()
        .filter(|ns| {
            previous.is_none_or(|p| !p.failed_namespaces.iter().any(|f| &f.namespace == *ns))
        })
        .take(5)
        .collect();
    if !newly_failed.is_empty() {
        act::publish(
            ctx,
            &crc.object_ref(&()),
            EventType::Warning,
            fanout::REASON_NAMESPACES_FAILED,
            format!(
                "the Secret could not be written in {}",
                newly_failed
                    .iter()
                    .map(|ns| format!("{ns} ({})", outcome.failed[*ns].0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .await;
    }
    if outcome.matched == 0 && outcome.pending == 0 {
        // Nothing to serve, so nothing falls due: the next namespace that
        // matches (a Namespace event) or a change of its own wakes it.
        return Ok(Action::await_change());
    }
    let wake = schedule::delay_until(now, next_refresh).max(Duration::from_secs(1));
    Ok(Action::requeue(if outcome.pending > 0 {
        wake.min(PENDING_RECHECK)
    } else if outcome.failed.is_empty() {
        wake
    } else {
        wake.min(FAILED_RECHECK)
    }))
}

/// The token for this pass, and what the status says of it.
struct Token {
    token: Option<GroupToken>,
    record: Option<TokenRecord>,
    failure: Option<Failure>,
    retry_at: Option<Timestamp>,
    /// Other members of the exchange.
    shared_with: u32,
}

/// What a token request needs.
struct Source<'a> {
    spec: &'a ValidSpec,
    trust: &'a TrustKey,
    client: &'a TokenClient,
    credentials: &'a ClientCredentials,
}

/// The group's token, through the shared exchange: taken as it is while it
/// suits, else one request for the whole group (none while no namespace
/// matches). After a restart the Secrets' tokens (`stored`) seed the group.
///
/// # Errors
///
/// Errors of the controller itself (the lease lost).
async fn exchange_token(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    source: &Source<'_>,
    stored: &[StoredToken],
    matched: usize,
    now: Timestamp,
) -> Result<Token, Error> {
    let uid = crc.uid().unwrap_or_else(|| crc.name_any());
    let previous = crc.status.as_ref();
    let spec = source.spec;
    let credentials_hash =
        ctx.hash_key
            .credentials_hash(spec.url.as_str(), crc.spec.token_api, source.credentials);
    let key = GroupKey::new(&credentials_hash, source.trust);
    let member = Member::cluster_scoped(&crc.name_any());
    let mut view = ctx.exchange.join(&uid, member, &key);
    let mut handled_request = None;
    for kept in stored
        .iter()
        .filter(|s| secret::hashes_equal(&credentials_hash, &s.record.credentials_hash))
    {
        // Answered if any Secret records the value asked for now.
        if handled_request.as_deref() != crc.refresh_request() {
            handled_request = kept.record.refresh_request.clone();
        }
        // Kept by the exchange only when newer than what it holds.
        view = super::offer_stored(ctx, &key, kept);
    }
    // The group's token is only in a RunaiCredential's Secret: read it there
    // rather than ask Run:ai again.
    if matched > 0
        && view.token.is_none()
        && let Some(elsewhere) = view.held_by.clone()
        && let Some(found) = super::read_held(ctx, &elsewhere, &credentials_hash).await
    {
        view = super::offer_stored(ctx, &key, &found);
    }
    // A refresh request is answered once: by a token newer than the group's
    // when it was seen, whether or not any Secret could take it.
    let handled_request = ctx.handled_refresh(&uid).or(handled_request);
    let requested = crc
        .refresh_request()
        .is_some_and(|r| handled_request.as_deref() != Some(r));
    // What a change costs (api.md), as for a RunaiCredential: when every
    // token its Secrets hold was obtained for another definition (trusted
    // CAs, the credentials Secret's name or keys), a new one is needed, as
    // for a refresh request. Records from before the definition was kept
    // do not count.
    let definition = ctx
        .hash_key
        .definition_hash(source.trust, &crc.spec.client_credentials_secret_ref);
    let own: Vec<&StoredToken> = stored
        .iter()
        .filter(|s| secret::hashes_equal(&credentials_hash, &s.record.credentials_hash))
        .collect();
    let defined_anew = !own.is_empty()
        && own.iter().all(|s| {
            s.record
                .definition
                .as_deref()
                .is_some_and(|d| !secret::hashes_equal(d, &definition))
        });
    let forced = if requested {
        Some(schedule::RefreshReason::RefreshRequested)
    } else if defined_anew {
        Some(schedule::RefreshReason::SpecChanged)
    } else {
        None
    };
    let jitter: f64 = rand::random();
    let mut failure: Option<Failure> = None;
    let mut retry_at: Option<Timestamp> = None;
    let seen_serial = (view.serial > 0).then_some(view.serial);
    let reason = if matched == 0 {
        // No namespace to serve: no token is requested for nobody.
        None
    } else {
        fanout::refresh_reason(
            view.token.as_ref(),
            spec.refresh_interval,
            &uid,
            forced,
            now,
        )
    };
    let token: Option<GroupToken> = match reason {
        None => view.token.clone(),
        Some(reason) => {
            let api = crc.spec.token_api;
            let refresh_interval = spec.refresh_interval;
            let uid_for_accept = uid.clone();
            let outcome = ctx
                .exchange
                .obtain(
                    &key,
                    &uid,
                    |t| {
                        (forced.is_none() || Some(t.serial) > seen_serial)
                            && fanout::refresh_reason(
                                Some(t),
                                refresh_interval,
                                &uid_for_accept,
                                None,
                                now,
                            )
                            .is_none()
                    },
                    view.failure.as_ref(),
                    (now, jitter),
                    || async {
                        ctx.ensure_acting()?;
                        info!(
                            reason = reason.as_str(),
                            token_api = api.as_str(),
                            "requesting a token for a ClusterRunaiCredential"
                        );
                        let started = std::time::Instant::now();
                        let issued = source
                            .client
                            .request_token(&spec.url, api, source.credentials, now)
                            .await;
                        let result = issued.as_ref().map_or_else(Error::class, |_| "success");
                        ctx.metrics.token_requested(api, result, started.elapsed());
                        issued.map(|issued| (issued, now))
                    },
                )
                .await;
            match outcome {
                Exchanged::Shared(t) => Some(t),
                Exchanged::Requested(t) => {
                    let first = view.token.is_none();
                    if first || requested || previous.is_some_and(|p| p.failed_attempts > 0) {
                        act::publish(
                            ctx,
                            &crc.object_ref(&()),
                            EventType::Normal,
                            "TokenIssued",
                            format!("a new token ({}) for {matched} namespaces", reason.as_str(),),
                        )
                        .await;
                    }
                    Some(t)
                }
                Exchanged::Failed(err) if !err.is_refresh_failure() => return Err(err),
                Exchanged::Failed(_) | Exchanged::HeldBack => {
                    let group = ctx.exchange.view(&key);
                    if let Some(f) = group.failure {
                        failure = Some(f.failure);
                        retry_at = Some(f.retry_at);
                    }
                    // The group's token stays in use while it is valid.
                    group
                        .token
                        .filter(|t| t.expires_at.is_none_or(|at| at > now))
                }
            }
        }
    };
    let refresh_request = if requested && token.as_ref().map(|t| t.serial) > seen_serial {
        if let Some(value) = crc.refresh_request() {
            ctx.set_handled_refresh(&uid, value);
        }
        crc.refresh_request()
    } else {
        handled_request.as_deref()
    };
    let record = token.as_ref().map(|t| {
        fanout::record_of(
            t,
            &credentials_hash,
            crc.meta().generation.unwrap_or_default(),
            refresh_request,
            &definition,
        )
    });
    let shared_with = ctx.exchange.view(&key).members.saturating_sub(1);
    Ok(Token {
        token,
        record,
        failure,
        retry_at,
        shared_with: u32::try_from(shared_with).unwrap_or(u32::MAX),
    })
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
                act::write_secret(&secrets, found.as_ref(), desired.clone(), token).await
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
async fn clean_up(
    ctx: &Context,
    crc: &ClusterRunaiCredential,
    namespaces: &BTreeMap<String, NamespaceFacts>,
    matched: &BTreeSet<String>,
    target_name: &str,
) -> Result<(), Error> {
    let name = crc.name_any();
    let managed = list_managed(ctx, &name).await?;
    for found in managed {
        let namespace = found.namespace().unwrap_or_default();
        let current = found.name_any() == target_name && matched.contains(&namespace);
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
