//! The reconciler: read what exists → decide (pure, in [`crate::schedule`],
//! [`crate::target_secret`], [`crate::status`]) → write what changed.
//!
//! A reconciliation that finds everything as it should be makes no write and
//! no token request: it reads the target and credentials Secrets and requeues
//! at the next refresh deadline.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
    },
};
use tracing::{info, instrument, warn};

use crate::{
    error::Error,
    metrics::{CredentialLabels, Metrics},
    resource::{RunaiCredential, RunaiCredentialStatus},
    schedule::{self, Backoff, Desired, Plan, TokenRecord},
    status::{self, CurrentToken, Failure},
    target_secret::{self, HashKey, StoredToken, TargetSecret},
    token_client::TokenClients,
    trust::AllowedUrls,
};

/// The one field manager for every write of the controller.
pub const FIELD_MANAGER: &str = "runai-token-sync";

/// Shared state of all reconciliations.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub token_clients: TokenClients,
    pub hash_key: HashKey,
    pub metrics: Arc<Metrics>,
    /// What RunaiCredentials may ask for.
    pub policy: Policy,
    /// Where progress is recorded for `/healthz`.
    pub health: Arc<crate::server::Health>,
    /// Cleared when this replica lost the leader lease: from then on no
    /// token is requested and nothing is written.
    acting: std::sync::atomic::AtomicBool,
    /// Failed refreshes being backed off, by RunaiCredential uid. Kept in
    /// memory: after a restart, a failing credential is retried once at once.
    backoffs: Mutex<HashMap<String, (Backoff, Failure)>>,
    /// Consecutive Kubernetes API errors, by uid, for `error_policy`'s backoff.
    api_errors: Mutex<HashMap<String, u32>>,
    /// Tokens obtained but not yet written (the write failed), by uid: the
    /// next attempt writes them again instead of requesting new ones.
    pending: Mutex<HashMap<String, PendingToken>>,
}

/// A token obtained for a RunaiCredential, with its record. `Debug` hides
/// the token.
#[derive(Clone)]
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

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        token_clients: TokenClients,
        hash_key: HashKey,
        metrics: Arc<Metrics>,
        policy: Policy,
    ) -> Self {
        Context {
            client,
            recorder,
            token_clients,
            hash_key,
            metrics,
            policy,
            health: Arc::default(),
            acting: std::sync::atomic::AtomicBool::new(true),
            backoffs: Mutex::default(),
            api_errors: Mutex::default(),
            pending: Mutex::default(),
        }
    }

    /// Records progress in `health` (the one `/healthz` reads).
    pub fn with_health(mut self, health: Arc<crate::server::Health>) -> Self {
        self.health = health;
        self
    }

    /// Stops all requests and writes at once (the leader lease is lost).
    pub fn stop_acting(&self) {
        self.acting
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// [`Error::LeaseLost`] once [`Context::stop_acting`] was called.
    fn ensure_acting(&self) -> Result<(), Error> {
        if self.acting.load(std::sync::atomic::Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::LeaseLost)
        }
    }

    /// Forgets the in-memory state of RunaiCredentials that no longer exist.
    pub fn retain_credentials(&self, live_uids: &std::collections::HashSet<String>) {
        lock(&self.backoffs).retain(|uid, _| live_uids.contains(uid));
        lock(&self.api_errors).retain(|uid, _| live_uids.contains(uid));
        lock(&self.pending).retain(|uid, _| live_uids.contains(uid));
    }

    fn backoff(&self, uid: &str) -> Option<(Backoff, Failure)> {
        lock(&self.backoffs).get(uid).cloned()
    }

    /// The unwritten token of a credential, if it still answers what is
    /// asked for and is not due for refresh yet.
    fn reusable_pending(
        &self,
        uid: &str,
        desired: &Desired,
        refresh_interval: Option<Duration>,
        now: Timestamp,
    ) -> Option<PendingToken> {
        let mut pending = lock(&self.pending);
        let token = pending.get(uid)?;
        let record = &token.record;
        let answers = desired
            .credentials_hash
            .as_deref()
            .is_some_and(|h| target_secret::hashes_equal(h, &record.credentials_hash))
            && desired.generation == record.generation
            && desired.refresh_request == record.refresh_request;
        let due = schedule::refresh_due_at(
            record.issued_at,
            record.expires_at,
            refresh_interval,
            jitter_for(uid, record),
        );
        if answers && now < due && !record.is_expired(now) {
            Some(token.clone())
        } else {
            pending.remove(uid);
            None
        }
    }

    fn set_pending(&self, uid: &str, token: Option<PendingToken>) {
        let mut pending = lock(&self.pending);
        match token {
            Some(t) => pending.insert(uid.to_owned(), t),
            None => pending.remove(uid),
        };
    }

    fn set_backoff(&self, uid: &str, backoff: Option<(Backoff, Failure)>) {
        let mut backoffs = lock(&self.backoffs);
        match backoff {
            Some(b) => backoffs.insert(uid.to_owned(), b),
            None => backoffs.remove(uid),
        };
    }
}

/// What the platform team allows RunaiCredentials to do (the trust model).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Accept `http://` URLs (local testing only).
    pub allow_insecure_http: bool,
    /// URLs credentials may be sent to; empty allows any `https://` URL.
    pub allowed_urls: AllowedUrls,
    /// Credentials Secrets must carry [`target_secret::CREDENTIALS_LABEL`]`: "true"`.
    pub credentials_label_required: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not stop every later reconciliation.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a valid spec resolves to.
#[derive(Debug)]
pub struct ValidSpec {
    pub url: url::Url,
    pub refresh_interval: Option<Duration>,
}

/// Checks what the CRD schema cannot: URL details, duration syntax, names.
pub fn validate_spec(cr: &RunaiCredential, allow_insecure_http: bool) -> Result<ValidSpec, Error> {
    let invalid = |field, message: String| Error::InvalidSpec { field, message };
    let url = url::Url::parse(cr.spec.url.trim())
        .map_err(|e| invalid("spec.url", format!("{:?} is not a URL: {e}", cr.spec.url)))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => {
            return Err(invalid(
                "spec.url",
                "http:// is refused because the client secret would travel in clear text; use https:// (the controller accepts http:// only when started with --allow-insecure-http, for local testing)".to_owned(),
            ));
        }
        other => {
            return Err(invalid(
                "spec.url",
                format!("scheme {other:?} is not supported; use https://"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("spec.url", "has no host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "spec.url",
            "must not contain credentials; put them in the credentials Secret".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "spec.url",
            "must not have a query or fragment".to_owned(),
        ));
    }
    let refresh_interval = cr
        .spec
        .refresh_interval
        .as_deref()
        .map(schedule::parse_refresh_interval)
        .transpose()
        .map_err(|m| invalid("spec.refreshInterval", m))?;
    let key = &cr.spec.target.key;
    if key == target_secret::EXPIRES_AT_KEY
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(invalid(
            "spec.target.key",
            format!(
                "{key:?} is not a usable Secret key (letters, digits, '-', '_', '.'; not {:?})",
                target_secret::EXPIRES_AT_KEY
            ),
        ));
    }
    // Checked here too, not only by the schema: a Secret write that the API
    // server refuses would otherwise cost a token request on every retry.
    let target = &cr.spec.target;
    if let Some(name) = &target.name
        && !is_dns_subdomain(name)
    {
        return Err(invalid(
            "spec.target.name",
            format!(
                "{name:?} is not a valid Secret name (lower-case letters, digits, '-' and '.')"
            ),
        ));
    }
    if let Some((key, value)) = target
        .labels
        .iter()
        .find(|(k, v)| !is_qualified_name(k) || !is_label_value(v))
    {
        return Err(invalid(
            "spec.target.labels",
            format!(
                "{key:?}: {value:?} is not a valid label (keys like example.com/name, values of at most 63 letters, digits, '-', '_', '.')"
            ),
        ));
    }
    if let Some(key) = target.annotations.keys().find(|k| !is_qualified_name(k)) {
        return Err(invalid(
            "spec.target.annotations",
            format!("{key:?} is not a valid annotation key (like example.com/name)"),
        ));
    }
    Ok(ValidSpec {
        url,
        refresh_interval,
    })
}

/// A DNS subdomain (RFC 1123), as Kubernetes object names are.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A label value: empty, or up to 63 alphanumerics, '-', '_', '.', starting
/// and ending with an alphanumeric.
fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label or annotation key: an optional DNS-subdomain prefix and '/', then
/// a name of the label-value shape.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// The longest a reconciliation may take: two token requests (the one retry)
/// at the longest timeout and a few API calls, with room to spare.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(120);

/// Reconciles one RunaiCredential.
#[instrument(skip_all, fields(namespace = cr.namespace().unwrap_or_default(), name = cr.name_any()))]
pub async fn reconcile(cr: Arc<RunaiCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    // kube-runtime turns a panicking reconciliation into the end of the
    // controller; one odd object must not stop every other one.
    // A reconciliation that hangs (a half-open connection) is abandoned and
    // retried rather than holding its object forever.
    let bounded = tokio::time::timeout(
        RECONCILE_DEADLINE,
        reconcile_at(&cr, &ctx, Timestamp::now()),
    );
    let result = std::panic::AssertUnwindSafe(bounded)
        .catch_unwind()
        .await
        .map(|finished| {
            finished.unwrap_or(Err(Error::ReconcileTimeout {
                after: RECONCILE_DEADLINE,
            }))
        })
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Panicked(what))
        });
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    let action = result?;
    ctx.health.record_progress();
    lock(&ctx.api_errors).remove(&uid_of(&cr));
    Ok(action)
}

/// Decides the requeue after an error of the controller itself (a failing
/// Kubernetes API): exponential backoff with jitter, per RunaiCredential.
pub fn error_policy(cr: Arc<RunaiCredential>, err: &Error, ctx: Arc<Context>) -> Action {
    let attempts = {
        let mut errors = lock(&ctx.api_errors);
        let count = errors.entry(uid_of(&cr)).or_default();
        *count = count.saturating_add(1);
        *count
    };
    warn!(namespace = cr.namespace().unwrap_or_default(), name = cr.name_any(), error = %err, attempts, "reconciliation failed");
    let now = Timestamp::now();
    let at = schedule::retry_at(now, attempts, None, None, rand::random());
    Action::requeue(schedule::delay_until(now, at))
}

/// The jitter of a token's refresh deadline: fixed per credential and token,
/// so that the deadline computed again after a restart is the same.
fn jitter_for(uid: &str, record: &TokenRecord) -> f64 {
    schedule::stable_jitter(&format!("{uid}/{}", record.issued_at))
}

fn uid_of(cr: &RunaiCredential) -> String {
    cr.uid()
        .unwrap_or_else(|| format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()))
}

/// Reconciles one RunaiCredential as of `now`: what [`reconcile`] does with
/// the clock passed in, so that tests can move time.
///
/// # Errors
///
/// Errors of the controller itself (a failing Kubernetes API), which
/// [`error_policy`] retries; failures of the token endpoint and refused
/// writes are reported in the status instead.
pub async fn reconcile_at(
    cr: &RunaiCredential,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action, Error> {
    ctx.ensure_acting()?;
    // Being deleted: no token request and no write, whatever else holds.
    if cr.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = cr.namespace().unwrap_or_default();
    let uid = uid_of(cr);
    let secret_name = cr.target_secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);

    // The allowed URLs are checked before the credentials Secret is read.
    let spec = match validate_spec(cr, ctx.policy.allow_insecure_http).and_then(|spec| {
        ctx.policy.allowed_urls.check(&spec.url)?;
        Ok(spec)
    }) {
        Ok(spec) => spec,
        Err(err) => {
            ctx.set_backoff(&uid, None);
            return block(cr, ctx, &secret_name, &err, now).await;
        }
    };
    // A change of target.name (also one made while the controller was down,
    // which the status remembers): the Secrets left under other names go.
    if cr
        .status
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
        .is_some_and(|old| old != secret_name)
    {
        release_old_targets(cr, &secrets, &secret_name).await?;
    }
    let token_client = match ctx.token_clients.get(cr.spec.ca_bundle.as_deref()).await {
        Ok(client) => client,
        Err(err @ Error::InvalidSpec { .. }) => {
            ctx.set_backoff(&uid, None);
            return block(cr, ctx, &secret_name, &err, now).await;
        }
        // Not the user's doing: retried by `error_policy`.
        Err(err) => return Err(err),
    };

    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(Error::kube("reading the target Secret"))?;
    let managed = match TargetSecret::classify(existing, cr) {
        TargetSecret::Foreign => {
            ctx.set_backoff(&uid, None);
            let err = Error::SecretConflict {
                secret: secret_name.clone(),
            };
            return block(cr, ctx, &secret_name, &err, now).await;
        }
        TargetSecret::Missing => None,
        TargetSecret::Managed(secret) => Some(secret),
    };
    let stored = managed
        .as_deref()
        .and_then(|s| target_secret::stored_token(s, &cr.spec.target.key, &ctx.hash_key));

    let reference = &cr.spec.client_credentials_secret_ref;
    let credentials_secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(Error::kube("reading the credentials Secret"))?;
    let credentials = if ctx.policy.credentials_label_required {
        target_secret::require_credentials_label(credentials_secret.as_ref(), reference)
    } else {
        Ok(())
    }
    .and_then(|()| target_secret::read_credentials(credentials_secret.as_ref(), reference));
    let desired = Desired {
        credentials_hash: credentials.as_ref().ok().map(|c| {
            ctx.hash_key
                .credentials_hash(spec.url.as_str(), cr.spec.token_api, c)
        }),
        generation: cr.meta().generation.unwrap_or_default(),
        refresh_request: cr.refresh_request().map(str::to_owned),
    };

    let backoff = ctx.backoff(&uid);
    let plan = schedule::plan(
        now,
        stored.as_ref().map(|s| (&s.record, s.intact)),
        &desired,
        backoff.as_ref().map(|(b, _)| b),
        spec.refresh_interval,
        stored.as_ref().map_or(0.0, |s| jitter_for(&uid, &s.record)),
    );
    let previous = cr.status.as_ref();
    let generation = cr.meta().generation;

    match (plan, stored) {
        (Plan::WaitUntil(due), Some(stored)) => {
            // Fresh and current: a past failure no longer counts, and only
            // what someone changed is put right.
            ctx.set_backoff(&uid, None);
            repair_secret(cr, ctx, &secrets, managed.as_deref(), &stored).await?;
            write_fresh_status(cr, ctx, &stored.record, due, now).await?;
            Ok(requeue_at(
                now,
                schedule::wake_at(due, stored.record.expires_at, now),
            ))
        }
        (Plan::RetryAt(retry_at), stored) => {
            // An outage is no reason to leave an edited Secret broken.
            if let Some(stored) = stored.as_ref().filter(|s| s.intact) {
                repair_secret(cr, ctx, &secrets, managed.as_deref(), stored).await?;
            }
            let failure = backoff.map(|(_, f)| f);
            let token = current_token(stored.as_ref(), &desired);
            let new = status::token_status(
                previous,
                generation,
                &secret_name,
                token,
                failure.as_ref(),
                retry_at,
                now,
            );
            write_status(cr, ctx, new).await?;
            Ok(requeue_at(
                now,
                schedule::wake_at(retry_at, valid_until(token), now),
            ))
        }
        (plan, stored) => {
            let refresh_reason = match plan {
                Plan::Refresh(reason) => reason,
                _ => schedule::RefreshReason::NoToken,
            };
            let reason = refresh_reason.as_str();
            // A routine refresh is counted by the metrics, not announced.
            let recovering = backoff.is_some() || previous.is_some_and(|s| s.failed_attempts > 0);
            let announce = schedule::announce_token(refresh_reason, recovering);
            let pending = ctx.reusable_pending(&uid, &desired, spec.refresh_interval, now);
            // A namespace being deleted gets no request and no write.
            if pending.is_none() && namespace_terminating(ctx, &namespace).await {
                info!("the namespace is being deleted; no token is requested");
                return Ok(Action::await_change());
            }
            let request = Refresh {
                spec: &spec,
                token_client: &token_client,
                credentials,
                desired,
                stored,
                existing: managed.as_deref(),
                pending,
                why: reason,
                announce,
            };
            refresh(cr, ctx, request, now).await
        }
    }
}

/// Rewrites a managed Secret whose intact token is still the right one when
/// someone changed (or deleted) what the controller sets on it.
async fn repair_secret(
    cr: &RunaiCredential,
    ctx: &Context,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    stored: &StoredToken,
) -> Result<(), Error> {
    let desired =
        target_secret::desired_secret(cr, &stored.access_token, &stored.record, &ctx.hash_key);
    if existing.is_none_or(|s| target_secret::needs_repair(s, &desired)) {
        info!(secret = %cr.target_secret_name(), "repairing the target Secret");
        write_secret(secrets, existing, desired, &stored.access_token).await?;
    }
    Ok(())
}

/// The stored token with whether it was obtained with the current
/// credentials. Credentials that cannot be read do not make a still-valid
/// token stale: `Ready` stays True until it expires, and `Degraded` says why
/// refreshing fails.
fn current_token<'a>(
    stored: Option<&'a StoredToken>,
    desired: &Desired,
) -> Option<CurrentToken<'a>> {
    stored.map(|s| CurrentToken {
        record: &s.record,
        current: s.intact
            && desired
                .credentials_hash
                .as_deref()
                .is_none_or(|hash| target_secret::hashes_equal(hash, &s.record.credentials_hash)),
    })
}

/// The expiry of a token that is current, the one a retry must come before.
fn valid_until(token: Option<CurrentToken<'_>>) -> Option<Timestamp> {
    token
        .filter(|t| t.current)
        .and_then(|t| t.record.expires_at)
}

/// What a refresh needs besides the RunaiCredential and the context.
struct Refresh<'a> {
    spec: &'a ValidSpec,
    token_client: &'a crate::token_client::TokenClient,
    credentials: Result<crate::token_client::ClientCredentials, Error>,
    desired: Desired,
    stored: Option<StoredToken>,
    /// The managed target Secret as read, `None` when missing.
    existing: Option<&'a Secret>,
    /// A token obtained earlier whose write failed, to write instead of
    /// requesting another.
    pending: Option<PendingToken>,
    why: &'static str,
    /// Whether the new token is worth a Normal Event (see
    /// [`schedule::announce_token`]).
    announce: bool,
}

/// Obtains a token (or takes the pending one), writes it, and reports.
async fn refresh(
    cr: &RunaiCredential,
    ctx: &Context,
    request: Refresh<'_>,
    now: Timestamp,
) -> Result<Action, Error> {
    let uid = uid_of(cr);
    let secret_name = cr.target_secret_name();
    let api = cr.spec.token_api;
    let Refresh {
        spec,
        token_client,
        credentials,
        desired,
        stored,
        existing,
        pending,
        why,
        announce,
    } = request;

    let obtained = match (pending, credentials) {
        (Some(pending), _) => {
            info!(
                reason = why,
                "writing the token obtained before, whose write failed"
            );
            Ok(pending)
        }
        (None, Ok(creds)) => {
            ctx.ensure_acting()?;
            info!(reason = why, token_api = api.as_str(), "requesting a token");
            let started = std::time::Instant::now();
            let issued = token_client
                .request_token(&spec.url, api, &creds, now)
                .await;
            let result = issued.as_ref().map_or_else(Error::class, |_| "success");
            ctx.metrics.token_requested(api, result, started.elapsed());
            // At the Secret's precision, so that the deadline computed now is
            // the one computed again from the Secret later.
            issued.map(|issued| PendingToken {
                record: TokenRecord {
                    issued_at: target_secret::whole_seconds(now),
                    expires_at: issued.expires_at.map(target_secret::whole_seconds),
                    credentials_hash: desired.credentials_hash.clone().unwrap_or_default(),
                    generation: desired.generation,
                    refresh_request: desired.refresh_request.clone(),
                },
                access_token: issued.access_token,
            })
        }
        (None, Err(err)) => Err(err),
    };
    let token = match obtained {
        Ok(token) => token,
        Err(err) if err.is_refresh_failure() => {
            return record_failure(cr, ctx, &err, &desired, stored.as_ref(), now).await;
        }
        Err(err) => return Err(err),
    };
    let record = token.record.clone();
    let secret = target_secret::desired_secret(cr, &token.access_token, &record, &ctx.hash_key);
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    ctx.ensure_acting()?;
    if let Err(err) = write_secret(&secrets, existing, secret, &token.access_token).await {
        // Kept, so that retrying the write costs no new token request.
        ctx.set_pending(&uid, Some(token));
        return match err {
            Error::SecretConflict { .. } => block(cr, ctx, &secret_name, &err, now).await,
            Error::SecretWriteFailed { .. } => {
                record_failure(cr, ctx, &err, &desired, stored.as_ref(), now).await
            }
            other => Err(other),
        };
    }
    ctx.set_pending(&uid, None);
    ctx.set_backoff(&uid, None);
    let due = schedule::refresh_due_at(
        record.issued_at,
        record.expires_at,
        spec.refresh_interval,
        jitter_for(&uid, &record),
    );
    write_fresh_status(cr, ctx, &record, due, now).await?;
    let wake = schedule::wake_at(due, record.expires_at, now);
    info!(expires_at = ?record.expires_at.map(target_secret::rfc3339), next_refresh = %target_secret::rfc3339(due), "token written to the Secret");
    // Kept free of times: the recorder folds repeats of an Event into
    // a series that keeps the first note.
    if announce {
        publish(
            ctx,
            cr,
            EventType::Normal,
            "TokenIssued",
            format!("Wrote a new token to Secret {secret_name} ({why})"),
        )
        .await;
    }
    Ok(requeue_at(now, wake))
}

/// Records a failed refresh or write: backoff, status, a Warning Event.
async fn record_failure(
    cr: &RunaiCredential,
    ctx: &Context,
    err: &Error,
    desired: &Desired,
    stored: Option<&StoredToken>,
    now: Timestamp,
) -> Result<Action, Error> {
    let uid = uid_of(cr);
    let previous = cr.status.as_ref();
    let last_failure = ctx.backoff(&uid).map(|(_, f)| f);
    let attempts = last_failure
        .as_ref()
        .map(|f| f.attempts)
        .or_else(|| previous.map(|s| s.failed_attempts))
        .unwrap_or(0)
        .saturating_add(1);
    let warn_now = schedule::warn_again(attempts, last_failure.map(|f| f.reason), err.reason());
    let token = current_token(stored, desired);
    let retry_at = schedule::retry_at(
        now,
        attempts,
        err.retry_after(),
        valid_until(token),
        rand::random(),
    );
    let failure = Failure {
        reason: err.reason(),
        message: err.to_string(),
        attempts,
    };
    ctx.set_backoff(
        &uid,
        Some((
            Backoff {
                desired: desired.clone(),
                retry_at,
            },
            failure.clone(),
        )),
    );
    warn!(reason = failure.reason, class = err.class(), attempts, retry_at = %target_secret::rfc3339(retry_at), error = %err, "token refresh failed");
    // Ready comes from what the Secret really holds, not from the token
    // that could not be written.
    let new = status::token_status(
        previous,
        cr.meta().generation,
        &cr.target_secret_name(),
        token,
        Some(&failure),
        retry_at,
        now,
    );
    write_status(cr, ctx, new).await?;
    // A Warning when the failure starts or changes, then ever more rarely.
    if warn_now {
        publish(
            ctx,
            cr,
            EventType::Warning,
            failure.reason,
            failure.message.clone(),
        )
        .await;
    }
    Ok(requeue_at(
        now,
        schedule::wake_at(retry_at, valid_until(token), now),
    ))
}

/// How often a target name held by someone else's Secret is looked at again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(300);

/// Reports a state only the user can fix and waits for a change.
async fn block(
    cr: &RunaiCredential,
    ctx: &Context,
    secret_name: &str,
    err: &Error,
    now: Timestamp,
) -> Result<Action, Error> {
    let new = status::blocked_status(
        cr.status.as_ref(),
        cr.meta().generation,
        secret_name,
        err.reason(),
        err.to_string(),
        now,
    );
    // The Warning goes out when the condition changes, not on every resync.
    if write_status(cr, ctx, new).await? {
        warn!(reason = err.reason(), error = %err, "cannot proceed until the spec or the cluster changes");
        publish(ctx, cr, EventType::Warning, err.reason(), err.to_string()).await;
    }
    Ok(match err {
        // Someone else's Secret may go away without an event reaching a
        // controller that watches only labelled Secrets.
        Error::SecretConflict { .. } => Action::requeue(CONFLICT_RECHECK),
        _ => Action::await_change(),
    })
}

/// Deletes (`deletionPolicy: Delete`) or releases (`Retain`) the Secrets this
/// RunaiCredential manages under another name than `current`: those left
/// behind by a change of `spec.target.name`. Releasing removes the
/// controller's labels, its `tokensync.dev/` annotations and its owner
/// reference, and leaves the data and the user's labels and annotations.
///
/// # Errors
///
/// [`Error::Kube`] when the Secrets cannot be listed, deleted or patched.
async fn release_old_targets(
    cr: &RunaiCredential,
    secrets: &Api<Secret>,
    current: &str,
) -> Result<(), Error> {
    let selector = format!(
        "{}={},{}={}",
        target_secret::MANAGED_BY_LABEL,
        target_secret::MANAGED_BY,
        target_secret::CREDENTIAL_LABEL,
        target_secret::credential_label_value(&cr.name_any())
    );
    let listed = secrets
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("listing the Secrets of earlier target names"))?;
    for old in listed.items {
        let name = old.name_any();
        if name == current {
            continue;
        }
        match cr.spec.target.deletion_policy {
            crate::resource::DeletionPolicy::Delete => {
                info!(secret = %name, "deleting the Secret of an earlier target name");
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: old.metadata.uid.clone(),
                        resource_version: old.metadata.resource_version.clone(),
                    }),
                    ..DeleteParams::default()
                };
                match secrets.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(
                            Error::kube("deleting the Secret of an earlier target name")(e),
                        );
                    }
                }
            }
            crate::resource::DeletionPolicy::Retain => {
                info!(secret = %name, "releasing the Secret of an earlier target name");
                let patch = target_secret::release_patch(&old, cr.uid().as_deref());
                secrets
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::kube(
                        "releasing the Secret of an earlier target name",
                    ))?;
            }
        }
    }
    Ok(())
}

/// Whether the namespace is being deleted. Unknown (the controller may not
/// read namespaces, as with `watchNamespaces`, where the API server then
/// refuses the write instead) counts as not.
async fn namespace_terminating(ctx: &Context, namespace: &str) -> bool {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(Some(ns)) => {
            ns.metadata.deletion_timestamp.is_some()
                || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
        }
        Ok(None) | Err(_) => false,
    }
}

/// Writes the target Secret, never into an object that was not seen as
/// ours: a missing Secret is created (if someone else creates it first, the
/// answer is [`Error::SecretConflict`]); a managed one is updated only if it
/// is still the version that was read (a server-side apply with its
/// `resourceVersion` as precondition); one made `immutable`, or whose type
/// was changed, is deleted (with the same precondition) and created again.
///
/// # Errors
///
/// [`Error::SecretConflict`] when another object took the name,
/// [`Error::SecretWriteFailed`] when the API server refuses the write (400,
/// 403, 422), [`Error::Kube`] otherwise (a changed Secret, an outage).
async fn write_secret(
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    mut desired: Secret,
    token: &str,
) -> Result<(), Error> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let refused = |err: kube::Error| match err {
        kube::Error::Api(status) if matches!(status.code, 400 | 403 | 422) => {
            Error::SecretWriteFailed {
                secret: name.clone(),
                status: status.code,
                message: crate::error::sanitize_detail(&status.message, &[token])
                    .trim_start_matches(": ")
                    .to_owned(),
            }
        }
        kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists" => {
            Error::SecretConflict {
                secret: name.clone(),
            }
        }
        other => Error::Kube {
            action: "writing the target Secret",
            source: other,
        },
    };
    let create = |secret: Secret| async move {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        secrets.create(&params, &secret).await.map(drop)
    };
    match existing {
        None => create(desired).await.map_err(refused),
        Some(current) if target_secret::needs_replacement(current) => {
            info!(secret = %name, "replacing the target Secret (made immutable or of another type)");
            let preconditions = Preconditions {
                uid: current.metadata.uid.clone(),
                resource_version: current.metadata.resource_version.clone(),
            };
            secrets
                .delete(
                    &name,
                    &DeleteParams {
                        preconditions: Some(preconditions),
                        ..DeleteParams::default()
                    },
                )
                .await
                .map_err(refused)?;
            create(desired).await.map_err(refused)
        }
        Some(current) => {
            // The precondition: a Secret changed since it was read (by
            // someone else, or recreated) is read again, not overwritten.
            desired.metadata.resource_version = current.metadata.resource_version.clone();
            secrets
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
                .map(drop)
                .map_err(refused)
        }
    }
}

/// Writes the status of a credential whose Secret holds a fresh, current token.
async fn write_fresh_status(
    cr: &RunaiCredential,
    ctx: &Context,
    record: &TokenRecord,
    next_refresh: Timestamp,
    now: Timestamp,
) -> Result<bool, Error> {
    let token = CurrentToken {
        record,
        current: true,
    };
    let new = status::token_status(
        cr.status.as_ref(),
        cr.meta().generation,
        &cr.target_secret_name(),
        Some(token),
        None,
        next_refresh,
        now,
    );
    write_status(cr, ctx, new).await
}

/// Writes the status when it differs from the stored one; says whether it did.
async fn write_status(
    cr: &RunaiCredential,
    ctx: &Context,
    new: RunaiCredentialStatus,
) -> Result<bool, Error> {
    let expires_at = new
        .expiration_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| t.as_second());
    let credential = CredentialLabels {
        namespace: cr.namespace().unwrap_or_default(),
        name: cr.name_any(),
    };
    ctx.metrics
        .observe_credential(credential, expires_at, new.failed_attempts);
    ctx.ensure_acting()?;
    if cr
        .status
        .as_ref()
        .is_some_and(|old| status::same_status(old, &new))
    {
        return Ok(false);
    }
    let api: Api<RunaiCredential> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": RunaiCredential::api_version(&()),
        "kind": RunaiCredential::kind(&()),
        "status": new,
    });
    api.patch_status(
        &cr.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .or_else(|err| match err {
        // Deleted meanwhile: there is no status left to write.
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        other => Err(Error::kube("writing the status")(other)),
    })?;
    Ok(true)
}

async fn publish(
    ctx: &Context,
    cr: &RunaiCredential,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "RefreshToken".to_owned(),
        secondary: None,
    };
    // An Event is a courtesy: failing to publish one must not fail the work.
    if let Err(err) = ctx.recorder.publish(&event, &cr.object_ref(&())).await {
        warn!(error = %err, "could not publish an Event");
    }
}

fn requeue_at(now: Timestamp, at: Timestamp) -> Action {
    // Never a hot loop, even if `at` is already past.
    Action::requeue(schedule::delay_until(now, at).max(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::RunaiCredentialSpec;

    fn cr(url: &str) -> RunaiCredential {
        let spec: RunaiCredentialSpec = serde_json::from_value(serde_json::json!({
            "url": url,
            "clientCredentialsSecretRef": {"name": "c"},
        }))
        .unwrap();
        RunaiCredential::new("trainer", spec)
    }

    fn field_of(result: Result<ValidSpec, Error>) -> &'static str {
        match result {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn spec_validation_names_the_field() {
        assert!(validate_spec(&cr("https://acme.run.ai"), false).is_ok());
        assert_eq!(
            field_of(validate_spec(&cr("http://acme.run.ai"), false)),
            "spec.url"
        );
        assert!(validate_spec(&cr("http://127.0.0.1:8080"), true).is_ok());
        assert_eq!(
            field_of(validate_spec(&cr("https://u:p@acme.run.ai"), false)),
            "spec.url"
        );
        assert_eq!(
            field_of(validate_spec(&cr("https://acme.run.ai/?a=b"), false)),
            "spec.url"
        );
        let mut bad_interval = cr("https://acme.run.ai");
        bad_interval.spec.refresh_interval = Some("often".into());
        assert_eq!(
            field_of(validate_spec(&bad_interval, false)),
            "spec.refreshInterval"
        );
        let mut bad_key = cr("https://acme.run.ai");
        bad_key.spec.target.key = "expiresAt".into();
        assert_eq!(field_of(validate_spec(&bad_key, false)), "spec.target.key");
        let mut bad_name = cr("https://acme.run.ai");
        bad_name.spec.target.name = Some("Not_A_Name".into());
        assert_eq!(
            field_of(validate_spec(&bad_name, false)),
            "spec.target.name"
        );
        let mut bad_label = cr("https://acme.run.ai");
        bad_label.spec.target.labels = [("team".to_owned(), "has space".to_owned())].into();
        assert_eq!(
            field_of(validate_spec(&bad_label, false)),
            "spec.target.labels"
        );
        let mut bad_annotation = cr("https://acme.run.ai");
        bad_annotation.spec.target.annotations = [("/oops".to_owned(), "x".to_owned())].into();
        assert_eq!(
            field_of(validate_spec(&bad_annotation, false)),
            "spec.target.annotations"
        );
        let mut fine = cr("https://acme.run.ai");
        fine.spec.target.name = Some("trainer-token.v1".into());
        fine.spec.target.labels = [
            ("example.com/team".to_owned(), "ml_1".to_owned()),
            ("empty".to_owned(), String::new()),
        ]
        .into();
        fine.spec.target.annotations =
            [("example.com/owner".to_owned(), "any text at all".to_owned())].into();
        assert!(validate_spec(&fine, false).is_ok());
        let mut long = cr("https://acme.run.ai");
        long.metadata.name = Some("x".repeat(70));
        assert!(validate_spec(&long, false).is_ok(), "long names work");
        for url in [
            "https://host/runai",
            "https://host/runai/",
            "https://host:8443/a/b/",
        ] {
            assert!(validate_spec(&cr(url), false).is_ok(), "{url}");
        }
        for url in [
            "https://host/runai?x=1",
            "https://host/runai#top",
            "https://host/?",
        ] {
            assert_eq!(
                field_of(validate_spec(&cr(url), false)),
                "spec.url",
                "{url}"
            );
        }
    }
}
