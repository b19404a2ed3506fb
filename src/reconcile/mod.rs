//! The reconciler: observe what exists → decide ([`decide::decide`], pure) →
//! act ([`act`]) → write the status.
//!
//! A reconciliation that finds everything as it should be makes no write and
//! no token request: it reads the target and credentials Secrets and requeues
//! at the next refresh deadline.

pub mod act;
pub mod cluster;
pub mod decide;
pub mod echo;
pub mod fanout;
pub mod status;

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
    api::GetParams,
    runtime::{
        controller::Action,
        events::{EventType, Recorder},
    },
};
use tracing::{info, instrument, warn};

pub use decide::PendingToken;
use decide::{Finish, Note, Observed, Obtained, Requeue, Step, Update, uid_of};

use crate::{
    api::{RunaiCredential, TokenApi, ValidSpec, validate_spec},
    error::Error,
    metrics::{CredentialLabels, Metrics},
    output::secret::{self, HashKey, TargetSecret},
    reconcile::status::Failure,
    runai::allowed_urls::AllowedUrls,
    runai::client::{
        ClientCredentials, Deprecation, IssuedToken, TokenClient, TokenClients, TrustKey,
    },
    runai::exchange::{
        AppKey, Exchange, Exchanged, GroupFailure, GroupKey, GroupView, Member, TokenHolder,
    },
    token::schedule::{self, Backoff, Desired},
};

/// The one field manager for every write of the controller.
pub use crate::output::secret::FIELD_MANAGER;

/// Normal Events published at once before the budget applies.
pub const NORMAL_EVENT_BURST: std::num::NonZeroU32 =
    std::num::NonZeroU32::new(100).expect("not zero");

/// Normal Events per second once the burst is spent.
pub const NORMAL_EVENTS_PER_SECOND: std::num::NonZeroU32 =
    std::num::NonZeroU32::new(2).expect("not zero");

/// Default of `--max-concurrent-token-requests`.
pub const DEFAULT_MAX_CONCURRENT_TOKEN_REQUESTS: usize = 8;

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
    pub health: Arc<crate::health::Health>,
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
    /// The shared token exchange: one request per group of identical
    /// credentials, and the global limit on requests in flight.
    pub exchange: Arc<Exchange>,
    /// RunaiCredentials' writes to their target Secrets, so that their
    /// echoes trigger no reconciliation.
    own_writes: echo::OwnWrites,
    /// ClusterRunaiCredentials' writes, likewise.
    cluster_writes: echo::OwnWrites,
    /// The metadata of all namespaces, when all are served: whether one is
    /// being deleted is then known without a read.
    pub namespaces: Option<
        kube::runtime::reflector::Store<
            kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>,
        >,
    >,
    /// Cleared once reading a Namespace was refused (403).
    namespaces_readable: std::sync::atomic::AtomicBool,
    /// Which RunaiCredentials each Secret concerns, and how many read alike
    /// (kept from the RunaiCredential watches).
    pub index: Arc<crate::cache::index::SecretIndex>,
    /// Which Secrets exist, as the Secret watches saw them: a target Secret
    /// surely missing is not read.
    pub known_secrets: Arc<crate::cache::known_secrets::KnownSecrets>,
    /// One copy of each `caBundle` text of the cached RunaiCredentials.
    pub ca_bundles: Arc<crate::cache::ca_bundles::CaBundles>,
    /// The budget of Normal Events (see [`act::publish`]).
    normal_events: governor::DefaultDirectRateLimiter,
    /// The controller's own namespace: where ClusterRunaiCredentials'
    /// credentials Secrets are read.
    pub controller_namespace: String,
    /// The namespaces served (`--namespace`); `None` for all.
    pub scope: Option<std::collections::BTreeSet<String>>,
    /// The last refresh annotation value answered with a new token, by
    /// ClusterRunaiCredential uid (also when no Secret could take it).
    handled_refresh: Mutex<HashMap<String, String>>,
    /// Credentials told that their tokens live less than
    /// [`schedule::SHORT_LIFETIME`], by uid: told once.
    short_lived: Mutex<std::collections::HashSet<String>>,
    /// The namespaces each ClusterRunaiCredential served in its last pass,
    /// by uid: a change of another namespace concerns it only if it selects
    /// that namespace now.
    served: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    /// Woken when what is kept about credentials may be pruned: a watch of
    /// credentials has listed what exists (again), or a credential was
    /// deleted.
    pub prune_wanted: tokio::sync::Notify,
    /// Credentials deleted within the last [`RECONCILE_DEADLINE`], by uid: a
    /// reconciliation in flight at the deletion may have kept memory of
    /// them again, which its end drops ([`Context::settle`]).
    deleted: Mutex<HashMap<String, std::time::Instant>>,
    /// Set once ClusterRunaiCredentials are served (their CRD is installed
    /// and listed): until then their cache is not waited for before pruning.
    cluster_serving: std::sync::atomic::AtomicBool,
}

/// Everything a [`Context`] is made of, given at once: a context is built
/// once, complete.
pub struct Parts {
    pub client: Client,
    pub recorder: Recorder,
    pub token_clients: TokenClients,
    pub hash_key: HashKey,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    /// Where progress is recorded for `/healthz`.
    pub health: Arc<crate::health::Health>,
    /// The shared token exchange (its limit of requests in flight set from
    /// `--max-concurrent-token-requests`).
    pub exchange: Arc<Exchange>,
    /// The controller's own namespace.
    pub controller_namespace: String,
    /// The namespaces served (`--namespace`); `None` for all.
    pub scope: Option<std::collections::BTreeSet<String>>,
    /// The metadata of all namespaces, when the controller may list them.
    pub namespaces: Option<
        kube::runtime::reflector::Store<
            kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>,
        >,
    >,
}

impl Context {
    /// The context of all reconciliations, from its parts; the caches the
    /// watches fill ([`Context::index`], [`Context::known_secrets`],
    /// [`Context::ca_bundles`]) start empty.
    #[must_use]
    pub fn new(parts: Parts) -> Self {
        Context {
            client: parts.client,
            recorder: parts.recorder,
            token_clients: parts.token_clients,
            hash_key: parts.hash_key,
            metrics: parts.metrics,
            policy: parts.policy,
            health: parts.health,
            acting: std::sync::atomic::AtomicBool::new(true),
            backoffs: Mutex::default(),
            api_errors: Mutex::default(),
            pending: Mutex::default(),
            exchange: parts.exchange,
            own_writes: echo::OwnWrites::default(),
            cluster_writes: echo::OwnWrites::default(),
            namespaces: parts.namespaces,
            namespaces_readable: std::sync::atomic::AtomicBool::new(true),
            index: Arc::default(),
            known_secrets: Arc::default(),
            ca_bundles: Arc::default(),
            normal_events: governor::RateLimiter::direct(
                governor::Quota::per_second(NORMAL_EVENTS_PER_SECOND)
                    .allow_burst(NORMAL_EVENT_BURST),
            ),
            controller_namespace: parts.controller_namespace,
            scope: parts.scope,
            handled_refresh: Mutex::default(),
            short_lived: Mutex::default(),
            served: Mutex::default(),
            prune_wanted: tokio::sync::Notify::new(),
            deleted: Mutex::default(),
            cluster_serving: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn normal_event_allowed(&self) -> bool {
        self.normal_events.check().is_ok()
    }

    fn may_read_namespaces(&self) -> bool {
        self.namespaces_readable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn namespaces_unreadable(&self) {
        self.namespaces_readable
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a Secret event is the echo of a RunaiCredential's write to
    /// it (see [`echo::OwnWrites::is_echo`]).
    pub fn is_own_echo(&self, namespace: &str, name: &str, resource_version: Option<&str>) -> bool {
        self.own_writes.is_echo(namespace, name, resource_version)
    }

    /// Whether a Secret event is the echo of a ClusterRunaiCredential's
    /// write to it.
    pub fn is_own_cluster_echo(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
    ) -> bool {
        self.cluster_writes
            .is_echo(namespace, name, resource_version)
    }

    /// Whether a write of the controller to this Secret is in flight or its
    /// echo has not arrived yet: the Secret watch may not have seen it.
    fn own_write_pending(&self, namespace: &str, name: &str) -> bool {
        self.own_writes.pending(namespace, name)
    }

    /// Records that a write to the Secret `name` of `cr` begins (see
    /// [`echo::OwnWrites::begin`]).
    fn begin_own_write<'c>(&'c self, cr: &RunaiCredential, name: &str) -> echo::OwnWriteGuard<'c> {
        let namespace = cr.namespace().unwrap_or_default();
        let member = Member::namespaced(&namespace, &cr.name_any());
        self.own_writes
            .begin(&self.exchange, &namespace, name, member)
    }

    /// Forgets the finished writes of both kinds whose echo has not come
    /// (see [`echo::OwnWrites::forget_unechoed`]).
    pub fn forget_unechoed_writes(&self) {
        self.own_writes.forget_unechoed();
        self.cluster_writes.forget_unechoed();
    }

    /// Stops all requests and writes at once (the leader lease is lost).
    pub fn stop_acting(&self) {
        self.acting
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Requests and writes are allowed again (this replica leads again).
    pub fn resume_acting(&self) {
        self.acting
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// [`Error::LeaseLost`] once [`Context::stop_acting`] was called.
    fn ensure_acting(&self) -> Result<(), Error> {
        if self.acting.load(std::sync::atomic::Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::LeaseLost)
        }
    }

    /// Forgets what is kept in memory about a credential (of either kind)
    /// that was deleted: its backoff, API errors, pending token, answered
    /// refresh request, served namespaces and group membership; and has
    /// the end of a reconciliation still in flight forget it again.
    pub fn forget(&self, uid: &str) {
        {
            let mut deleted = lock(&self.deleted);
            deleted.retain(|_, at| at.elapsed() < RECONCILE_DEADLINE);
            deleted.insert(uid.to_owned(), std::time::Instant::now());
        }
        self.drop_memory(uid);
        self.prune_wanted.notify_one();
    }

    /// At the end of a reconciliation (or its error handling) of `uid`:
    /// when the credential was deleted meanwhile, what the reconciliation
    /// kept of it again is dropped, and its metric series (`labels`).
    pub fn settle(&self, uid: &str, labels: &CredentialLabels) {
        if lock(&self.deleted).contains_key(uid) {
            self.drop_memory(uid);
            self.metrics.forget_credential(labels);
        }
    }

    /// Whether ClusterRunaiCredentials are served (see [`Context::serve_clusters`]).
    pub fn clusters_served(&self) -> bool {
        self.cluster_serving
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that ClusterRunaiCredentials are served from now on.
    pub fn serve_clusters(&self) {
        self.cluster_serving
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn drop_memory(&self, uid: &str) {
        lock(&self.backoffs).remove(uid);
        lock(&self.api_errors).remove(uid);
        lock(&self.pending).remove(uid);
        lock(&self.handled_refresh).remove(uid);
        lock(&self.short_lived).remove(uid);
        lock(&self.served).remove(uid);
        self.exchange.leave(uid);
    }

    /// Forgets the in-memory state of credentials (of either kind) that no
    /// longer exist: `live_uids` are those of complete lists, after a watch
    /// listed again (a deletion it missed sends no event).
    pub fn retain_credentials(&self, live_uids: &std::collections::HashSet<String>) {
        lock(&self.backoffs).retain(|uid, _| live_uids.contains(uid));
        lock(&self.api_errors).retain(|uid, _| live_uids.contains(uid));
        lock(&self.pending).retain(|uid, _| live_uids.contains(uid));
        lock(&self.handled_refresh).retain(|uid, _| live_uids.contains(uid));
        lock(&self.short_lived).retain(|uid| live_uids.contains(uid));
        lock(&self.served).retain(|uid, _| live_uids.contains(uid));
        self.exchange.retain(live_uids);
    }

    /// Whether the ClusterRunaiCredential `uid` served `namespace` in its
    /// last pass.
    pub fn served(&self, uid: &str, namespace: &str) -> bool {
        lock(&self.served)
            .get(uid)
            .is_some_and(|served| served.contains(namespace))
    }

    fn set_served(&self, uid: &str, namespaces: &std::collections::BTreeSet<String>) {
        lock(&self.served).insert(uid.to_owned(), namespaces.iter().cloned().collect());
    }

    fn handled_refresh(&self, uid: &str) -> Option<String> {
        lock(&self.handled_refresh).get(uid).cloned()
    }

    fn set_handled_refresh(&self, uid: &str, value: &str) {
        lock(&self.handled_refresh).insert(uid.to_owned(), value.to_owned());
    }

    fn backoff(&self, uid: &str) -> Option<(Backoff, Failure)> {
        lock(&self.backoffs).get(uid).cloned()
    }

    fn pending(&self, uid: &str) -> Option<PendingToken> {
        lock(&self.pending).get(uid).cloned()
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

#[cfg(test)]
impl Context {
    /// A context for unit tests: its client is never asked (a request
    /// would wait forever), no token is requested.
    pub(crate) fn for_tests() -> Context {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(service, "default");
        let recorder = Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "runai-token-sync".into(),
                instance: None,
            },
        );
        Context::new(Parts {
            client,
            recorder,
            token_clients: TokenClients::new(Duration::from_secs(1)),
            hash_key: HashKey::new(vec![1; 32]),
            metrics: Arc::new(Metrics::new()),
            policy: Policy::default(),
            health: Arc::default(),
            exchange: Arc::new(Exchange::new(1)),
            controller_namespace: "default".to_owned(),
            scope: None,
            namespaces: None,
        })
    }
}

/// What the platform team allows RunaiCredentials to do (the trust model).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Accept `http://` URLs (local testing only).
    pub allow_insecure_http: bool,
    /// URLs credentials may be sent to; empty allows any `https://` URL.
    pub allowed_urls: AllowedUrls,
    /// Credentials Secrets must carry [`secret::CREDENTIALS_LABEL`]`: "true"`.
    pub credentials_label_required: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not stop every later reconciliation.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let result = bounded(reconcile_at(&cr, &ctx, Timestamp::now())).await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    let labels = CredentialLabels::new(&cr.namespace().unwrap_or_default(), &cr.name_any());
    let uid = uid_of(&cr);
    // Liveness is not told: its progress is the API server answering and
    // the watches being answered (health::is_progress), which a
    // reconciliation from a requeue proves nothing about.
    if result.is_ok() {
        lock(&ctx.api_errors).remove(&uid);
    }
    ctx.settle(&uid, &labels);
    result
}

/// Runs a reconciliation within [`RECONCILE_DEADLINE`], a panic turned into
/// [`Error::Panicked`]: kube-runtime turns a panicking reconciliation into
/// the end of the controller, and one odd object must not stop every other
/// one; one that hangs (a half-open connection) is abandoned and retried
/// rather than holding its object forever.
async fn bounded(
    reconciliation: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let bounded = tokio::time::timeout(RECONCILE_DEADLINE, reconciliation);
    std::panic::AssertUnwindSafe(bounded)
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
        })
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
    ctx.settle(
        &uid_of(&cr),
        &CredentialLabels::new(&cr.namespace().unwrap_or_default(), &cr.name_any()),
    );
    warn!(namespace = cr.namespace().unwrap_or_default(), name = cr.name_any(), error = %err, attempts, "reconciliation failed");
    let now = Timestamp::now();
    let at = schedule::retry_at(now, attempts, None, None, rand::random());
    Action::requeue(schedule::delay_until(now, at))
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
    let (mut observed, target_skipped) = observe(cr, ctx, now).await?;
    let mut pass = Pass {
        target_skipped,
        target_reread: false,
    };
    // Each I/O step is taken at most twice (the longest path has 8 steps);
    // the bound only guards the loop.
    for _ in 0..16 {
        let step = decide::decide(&observed);
        if let Some(action) = take(cr, ctx, &mut observed, &mut pass, step, now).await? {
            return Ok(action);
        }
    }
    Err(Error::Startup(
        "the reconciliation did not settle".to_owned(),
    ))
}

/// What one reconciliation knows of how it read the target Secret.
struct Pass {
    /// The target was taken for missing without a read.
    target_skipped: bool,
    /// The target was read again after a write refused as stale.
    target_reread: bool,
}

/// Takes one step; the action once the reconciliation is done.
async fn take(
    cr: &RunaiCredential,
    ctx: &Context,
    observed: &mut Observed<'_>,
    pass: &mut Pass,
    step: Step,
    now: Timestamp,
) -> Result<Option<Action>, Error> {
    let secrets =
        || Api::<Secret>::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    match step {
        // A target taken for missing without a read is only trusted by
        // the create that follows (a 409 then reads it): a decision
        // reached without writing it is made again on what etcd holds,
        // so that a valid token in a Secret the watch has not shown yet
        // is never reported missing.
        Step::Finish(_) if pass.target_skipped && observed.written.is_none() => {
            pass.target_skipped = false;
            let latest = get_secret(&secrets(), &cr.target_secret_name(), Read::Latest)
                .await
                .map_err(Error::kube("reading the target Secret"))?;
            reclassify_target(cr, ctx, observed, latest);
        }
        Step::Finish(finish) => {
            // Nothing written this time: the Secret as read holds the
            // token, if it is the group's.
            if observed.written.is_none()
                && let Some(stored) = own_stored(observed)
            {
                note_held(ctx, observed, &stored.access_token);
            }
            return finish_with(cr, ctx, *finish, now).await.map(Some);
        }
        Step::JoinGroup => join_group(ctx, observed).await,
        Step::ReleaseOldTargets => {
            act::release_old_targets(cr, &secrets(), &cr.target_secret_name()).await?;
            observed.old_targets = false;
        }
        Step::ReadNamespace => {
            observed.namespace_terminating =
                Some(act::namespace_terminating(ctx, &cr.namespace().unwrap_or_default()).await);
        }
        Step::RequestToken { reason } => {
            ctx.ensure_acting()?;
            observed.obtained = Some(obtain(ctx, observed, reason).await?);
            if matches!(observed.obtained, Some(Obtained::Failed(_))) || observed.obtained.is_none()
            {
                refresh_group(ctx, observed);
            }
        }
        Step::WriteSecret {
            secret,
            token,
            repair,
        } => write_target(cr, ctx, observed, pass, *secret, &token, repair).await?,
    }
    Ok(None)
}

/// Writes the target Secret and puts the outcome into `observed`.
///
/// # Errors
///
/// API errors other than the refusals the status reports (the token then
/// kept for the retry).
async fn write_target(
    cr: &RunaiCredential,
    ctx: &Context,
    observed: &mut Observed<'_>,
    pass: &mut Pass,
    secret: Secret,
    token: &str,
    repair: bool,
) -> Result<(), Error> {
    ctx.ensure_acting()?;
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let existing = match &observed.target {
        TargetSecret::Managed(s) => Some(s.as_ref()),
        _ => None,
    };
    let name = cr.target_secret_name();
    if repair {
        info!(secret = %name, "repairing the target Secret");
    }
    let own_write = ctx.begin_own_write(cr, &name);
    let result = act::write_secret(&secrets, existing, secret, token).await;
    own_write.end(result.as_ref().ok().cloned().flatten());
    match result {
        Ok(_) => {
            note_held(ctx, observed, token);
            observed.written = Some(Ok(()));
        }
        // The target was read from the cache and has changed since: read
        // once more from etcd and decide again.
        Err(ref err) if !pass.target_reread && stale_write(err) => {
            pass.target_reread = true;
            let latest = get_secret(&secrets, &name, Read::Latest)
                .await
                .map_err(Error::kube("reading the target Secret"))?;
            reclassify_target(cr, ctx, observed, latest);
            pass.target_skipped = false;
        }
        // A repair's too: the decision reports it (the token in the Secret
        // stays in use).
        Err(err @ (Error::SecretConflict { .. } | Error::SecretWriteFailed { .. })) => {
            observed.written = Some(Err(err));
        }
        Err(err) => {
            // Kept, so that retrying the write costs no new token request.
            if let Some(Obtained::Token(token)) = observed.obtained.take() {
                ctx.set_pending(&uid_of(cr), Some(token));
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Puts what was read under the target name into `observed`.
fn reclassify_target(
    cr: &RunaiCredential,
    ctx: &Context,
    observed: &mut Observed<'_>,
    latest: Option<Secret>,
) {
    observed.target = TargetSecret::classify(latest, cr);
    observed.stored = match &observed.target {
        TargetSecret::Managed(secret) => {
            secret::stored_token(secret, &cr.spec.target.key, &ctx.hash_key)
        }
        TargetSecret::Missing | TargetSecret::Foreign => None,
    };
}

/// Reads what the decision needs, changing nothing: the spec checked, the
/// target and credentials Secrets, the controller's memory. Also says
/// whether the target Secret was taken for missing without a read.
async fn observe<'a>(
    cr: &'a RunaiCredential,
    ctx: &'a Context,
    now: Timestamp,
) -> Result<(Observed<'a>, bool), Error> {
    let mut observed = Observed {
        cr,
        hash_key: &ctx.hash_key,
        now,
        jitter: rand::random(),
        spec: Err(Error::Startup(String::new())),
        old_targets: false,
        target: TargetSecret::Missing,
        stored: None,
        token_client: None,
        credentials: Err(Error::Startup(String::new())),
        desired: Desired {
            credentials_hash: None,
            generation: cr.meta().generation.unwrap_or_default(),
            refresh_request: cr.refresh_request().map(str::to_owned),
            definition: None,
        },
        backoff: None,
        pending: None,
        group_key: None,
        group: None,
        readers: ctx.index.readers_like(cr),
        namespace_terminating: None,
        obtained: None,
        written: None,
    };
    if cr.meta().deletion_timestamp.is_some() {
        return Ok((observed, false));
    }
    let (spec, trust, token_client) = match check_spec(cr, ctx).await? {
        Ok(checked) => checked,
        Err(err) => {
            observed.spec = Err(err);
            return Ok((observed, false));
        }
    };
    observed.desired.definition = Some(
        ctx.hash_key
            .definition_hash(&trust, &cr.spec.client_credentials_secret_ref),
    );
    // A change of target.name (also one made while the controller was down,
    // which the status remembers): the Secrets left under other names go.
    observed.old_targets = cr
        .status
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
        .is_some_and(|old| old != cr.target_secret_name());
    let (existing, credentials_secret, target_skipped) = read_secrets(cr, ctx).await?;
    reclassify_target(cr, ctx, &mut observed, existing);
    let reference = &cr.spec.client_credentials_secret_ref;
    let credentials = if ctx.policy.credentials_label_required {
        secret::require_credentials_label(credentials_secret.as_ref(), reference)
    } else {
        Ok(())
    }
    .and_then(|()| secret::read_credentials(credentials_secret.as_ref(), reference));
    observed.desired.credentials_hash = credentials.as_ref().ok().map(|c| {
        ctx.hash_key
            .credentials_hash(spec.url.as_str(), cr.spec.token_api, c)
    });
    observed.group_key = observed
        .desired
        .credentials_hash
        .as_deref()
        .map(|hash| GroupKey::new(hash, &trust));
    observed.credentials = credentials;
    observed.backoff = ctx.backoff(&uid_of(cr));
    observed.pending = ctx.pending(&uid_of(cr));
    observed.spec = Ok(spec);
    observed.token_client = Some(token_client);
    Ok((observed, target_skipped))
}

/// The spec checked (URL rules, allowed URLs, `caBundle`), with the trusted
/// CAs' key and the HTTP client for them; the inner error is a spec that
/// cannot be used (reported in the status).
///
/// # Errors
///
/// Errors that are not the user's doing (retried by `error_policy`).
async fn check_spec(
    cr: &RunaiCredential,
    ctx: &Context,
) -> Result<Result<(ValidSpec, TrustKey, TokenClient), Error>, Error> {
    // The allowed URLs are checked before the credentials Secret is read.
    let spec = validate_spec(cr, ctx.policy.allow_insecure_http).and_then(|spec| {
        ctx.policy.allowed_urls.check(&spec.url)?;
        Ok(spec)
    });
    let spec = match spec {
        Ok(spec) => spec,
        Err(err) => return Ok(Err(err)),
    };
    let ca_bundle = ctx.ca_bundles.resolve(cr.spec.ca_bundle.as_deref());
    match ctx.token_clients.get(ca_bundle.as_deref()).await {
        Ok((trust, client)) => Ok(Ok((spec, trust, client))),
        Err(err @ Error::InvalidSpec { .. }) => Ok(Err(err)),
        Err(err) => Err(err),
    }
}

/// Reads the target and the credentials Secrets, both at once and from the
/// API server's watch cache: they are most of a reconciliation's time. What
/// a lagging cache may get wrong is caught: every write is conditional (a
/// write refused as stale reads the target again, see [`write_target`]) and
/// a credentials Secret the cache does not have yet is looked up again in
/// etcd before it counts as missing. A target Secret the Secret watches
/// surely have not seen (a new RunaiCredential's) is not read at all, on the
/// same grounds; the third value says so.
async fn read_secrets(
    cr: &RunaiCredential,
    ctx: &Context,
) -> Result<(Option<Secret>, Option<Secret>, bool), Error> {
    let namespace = cr.namespace().unwrap_or_default();
    let secret_name = cr.target_secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let reference = &cr.spec.client_credentials_secret_ref;
    let target_skipped = !ctx.own_write_pending(&namespace, &secret_name)
        && ctx.known_secrets.surely_missing(&namespace, &secret_name);
    let target = async {
        if target_skipped {
            Ok(None)
        } else {
            get_secret(&secrets, &secret_name, Read::Cached).await
        }
    };
    let (existing, credentials_secret) =
        tokio::join!(target, get_secret(&secrets, &reference.name, Read::Cached));
    let existing = existing.map_err(Error::kube("reading the target Secret"))?;
    let credentials_secret = match credentials_secret {
        Ok(None) => get_secret(&secrets, &reference.name, Read::Latest).await,
        other => other,
    }
    .map_err(Error::kube("reading the credentials Secret"))?;
    Ok((existing, credentials_secret, target_skipped))
}

/// Joins the group the decision names (leaving any other) and seeds it:
/// after a restart, the members' Secrets seed their group (kept by the
/// exchange only when newer than what it holds). When the group's token is
/// only in a Secret (another member's, or this one's own when the cache has
/// not shown its last write yet), it is read there, from etcd, rather than
/// asked of Run:ai again.
async fn join_group(ctx: &Context, observed: &mut Observed<'_>) {
    // Both come from the credentials' hash: a key without one cannot be.
    let Some(key) = observed.group_key else {
        return;
    };
    let hash = observed
        .desired
        .credentials_hash
        .clone()
        .unwrap_or_default();
    let cr = observed.cr;
    let member = Member::namespaced(&cr.namespace().unwrap_or_default(), &cr.name_any());
    let mut view = ctx.exchange.join(&uid_of(cr), member, &key);
    if let Some(stored) = own_stored(observed) {
        view = offer_stored(ctx, &key, stored);
    }
    if view.token.is_none()
        && let Some(holder) = view.held_by.clone()
        && let Some(found) = read_held(ctx, &holder, &hash).await
    {
        if holder != own_holder(cr) {
            info!(
                namespace = holder.namespace(),
                secret = holder.name(),
                "taking the group's token from another member's Secret"
            );
        }
        view = offer_stored(ctx, &key, &found);
    }
    observed.group = Some((key, view));
}

/// Whether a refused write of the target Secret means that it was read
/// before someone (often the controller itself) changed it: created meanwhile
/// (409 AlreadyExists) or changed since the resourceVersion read (409
/// Conflict, the apply's precondition).
fn stale_write(err: &Error) -> bool {
    match err {
        Error::SecretConflict { .. } => true,
        Error::Kube {
            source: kube::Error::Api(status),
            ..
        } => status.code == 409,
        _ => false,
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy)]
enum Read {
    /// Served from the API server's watch cache (`resourceVersion=0`): no
    /// etcd read, possibly a few milliseconds behind.
    Cached,
    /// The latest version (a quorum read from etcd).
    Latest,
}

/// Reads a Secret; `None` when there is none.
///
/// # Errors
///
/// The API server's errors other than 404.
async fn get_secret(
    secrets: &Api<Secret>,
    name: &str,
    read: Read,
) -> Result<Option<Secret>, kube::Error> {
    let params = match read {
        Read::Cached => GetParams::any(),
        Read::Latest => GetParams::default(),
    };
    match secrets.get_with(name, &params).await {
        Ok(secret) => Ok(Some(secret)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(err),
    }
}

/// Reads the token of a group from the Secret `holder`, from etcd, as it may
/// have just been written; `None` when that Secret no longer holds an intact
/// token of the credentials hashed `hash`, or cannot be read (logged: the
/// caller then does without the group's token, as with none).
async fn read_held(ctx: &Context, holder: &TokenHolder, hash: &str) -> Option<secret::StoredToken> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), holder.namespace());
    let found = match get_secret(&secrets, holder.name(), Read::Latest).await {
        Ok(found) => found,
        Err(err) => {
            warn!(
                namespace = holder.namespace(),
                secret = holder.name(),
                error = %err,
                "could not read the Secret that holds the group's token"
            );
            return None;
        }
    };
    found
        .filter(|s| {
            s.labels().get(secret::MANAGED_BY_LABEL).map(String::as_str) == Some(secret::MANAGED_BY)
        })
        .and_then(|s| secret::stored_token(&s, holder.key(), &ctx.hash_key))
        .filter(|t| t.intact && secret::hashes_equal(hash, &t.record.credentials_hash))
}

/// The token in this RunaiCredential's own target Secret, when it is intact
/// and of the credentials read now (so possibly the group's).
fn own_stored<'o>(observed: &'o Observed<'_>) -> Option<&'o secret::StoredToken> {
    let hash = observed.desired.credentials_hash.as_deref()?;
    observed
        .stored
        .as_ref()
        .filter(|s| s.intact && secret::hashes_equal(hash, &s.record.credentials_hash))
}

/// Offers a token read from a Secret to the group `key` (see
/// [`Exchange::offer`]).
fn offer_stored(ctx: &Context, key: &GroupKey, stored: &secret::StoredToken) -> GroupView {
    ctx.exchange.offer(
        key,
        &stored.access_token,
        stored.record.issued_at,
        stored.record.expires_at,
        stored.record.token_api,
    )
}

/// Where this RunaiCredential's token is kept: its target Secret, under its
/// key.
fn own_holder(cr: &RunaiCredential) -> TokenHolder {
    TokenHolder::new(
        &cr.namespace().unwrap_or_default(),
        &cr.target_secret_name(),
        &cr.spec.target.key,
    )
}

/// Tells the exchange that this RunaiCredential's target Secret holds
/// `access_token`, once that is known to be so (written, or read and left as
/// it is): a group of one then keeps no copy of it in memory. Never before a
/// write that may fail, so that a failed write never loses the only copy of
/// a valid token.
fn note_held(ctx: &Context, observed: &Observed<'_>, access_token: &str) {
    if let Some((key, _)) = &observed.group {
        ctx.exchange.held_in(
            key,
            &uid_of(observed.cr),
            access_token,
            own_holder(observed.cr),
        );
    }
}

/// Reads the group again (after a request failed or was held back).
fn refresh_group(ctx: &Context, observed: &mut Observed<'_>) {
    if let Some((key, view)) = observed.group.as_mut() {
        *view = ctx.exchange.view(key);
    }
}

/// Who is told about a token a credential of either kind obtained.
pub(crate) struct Told<'a> {
    pub uid: &'a str,
    pub labels: CredentialLabels,
    pub about: k8s_openapi::api::core::v1::ObjectReference,
    /// `spec.tokenApi`.
    pub spec_api: TokenApi,
}

/// Reports, for a credential of either kind that obtained `token` from the
/// group `key`, what its holders should know, each once per credential
/// while the controller runs and never once per refresh:
///
/// - a lifetime under [`schedule::SHORT_LIFETIME`]: a Warning Event
///   `TokenLifetimeShort` (api.md, "Refresh timing for mounted Secrets");
/// - a notice of deprecation on the group's last answer (api.md, "Choosing
///   the token API"), once per endpoint: the series of
///   `runai_token_sync_token_api_deprecated` and a Warning Event
///   `TokenApiDeprecated` naming the endpoint and its sunset.
pub(crate) async fn report_notices(
    ctx: &Context,
    told: &Told<'_>,
    key: &GroupKey,
    token: &crate::runai::exchange::GroupToken,
) {
    if schedule::lifetime_is_short(token.issued_at, token.expires_at)
        && lock(&ctx.short_lived).insert(told.uid.to_owned())
    {
        let lifetime = token
            .expires_at
            .map_or(0, |at| at.duration_since(token.issued_at).as_secs());
        act::publish(
            ctx,
            &told.about,
            EventType::Warning,
            "TokenLifetimeShort",
            format!(
                "Run:ai issues tokens that live {lifetime} s, under {} s: they are refreshed at half their lifetime, and a Pod that reads them from a volume may see one expire before the kubelet delivers the next (it takes up to 60-90 s)",
                schedule::SHORT_LIFETIME.as_secs()
            ),
        )
        .await;
    }
    let notice = ctx.exchange.view(key).deprecation;
    let (labels, about, spec_api) = (&told.labels, &told.about, told.spec_api);
    let news = ctx
        .metrics
        .note_deprecated(labels, notice.as_ref().map(|n| n.endpoint.as_str()));
    if let Some(notice) = notice.filter(|_| news) {
        warn!(endpoint = %notice.endpoint, "the token endpoint is deprecated");
        act::publish(
            ctx,
            about,
            EventType::Warning,
            "TokenApiDeprecated",
            deprecation_message(spec_api, &notice),
        )
        .await;
    }
}

/// What a `TokenApiDeprecated` Event says: the endpoint, its sunset when
/// known, and what to do under `spec_api`.
pub fn deprecation_message(spec_api: TokenApi, notice: &Deprecation) -> String {
    let sunset = notice
        .sunset
        .map(|at| format!(", to be removed at {}", secret::rfc3339(at)))
        .unwrap_or_default();
    let advice = match spec_api {
        TokenApi::Auto => {
            "spec.tokenApi: Auto moves to the other generation by itself once this one is no longer served"
        }
        TokenApi::V1 | TokenApi::AppToken => "set spec.tokenApi: Auto (or V2) before it is removed",
        TokenApi::V2 => "see Run:ai's release notes for what replaces it",
    };
    format!(
        "Run:ai marks the token endpoint {} deprecated{sunset}; {advice}",
        notice.endpoint
    )
}

/// The generation `Auto` calls first, for a credential of either kind: the
/// one that answered its group last, else the one that issued the newest
/// token it holds (`records`) that `of_this_group` says was obtained for
/// the group's definition (url, `tokenApi` and credentials), never one
/// obtained under another `tokenApi`: a switch from `V1` to `Auto` starts
/// with V2.
pub(crate) fn remembered_api<'r>(
    view: &GroupView,
    records: impl IntoIterator<Item = &'r schedule::TokenRecord>,
    of_this_group: impl Fn(&schedule::TokenRecord) -> bool,
) -> Option<TokenApi> {
    view.token_api.or_else(|| {
        records
            .into_iter()
            .filter(|r| of_this_group(r))
            .max_by_key(|r| r.issued_at)
            .and_then(|r| r.token_api)
    })
}

/// One token request of a credential of either kind.
pub(crate) struct TokenRequest<'a> {
    pub client: &'a TokenClient,
    pub url: &'a url::Url,
    /// `spec.tokenApi`.
    pub api: TokenApi,
    /// The generation that answered last, which `Auto` calls first.
    pub remembered: Option<TokenApi>,
    pub credentials: &'a ClientCredentials,
}

impl TokenRequest<'_> {
    /// The Run:ai application asked: its pace is shared by every group
    /// that asks for it.
    pub fn app(&self) -> AppKey {
        AppKey::new(self.url.as_str(), &self.credentials.client_id)
    }

    /// Sends it, only while this replica acts; logged (never the secret)
    /// and counted by the generation that answered.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when this replica no longer acts, and every
    /// error of [`TokenClient::request_token_after`].
    pub async fn send(
        &self,
        ctx: &Context,
        reason: schedule::RefreshReason,
        now: Timestamp,
    ) -> Result<(IssuedToken, Timestamp), Error> {
        ctx.ensure_acting()?;
        info!(
            reason = reason.as_str(),
            token_api = self.api.as_str(),
            "requesting a token"
        );
        let started = std::time::Instant::now();
        let issued = self
            .client
            .request_token_after(self.url, self.api, self.remembered, self.credentials, now)
            .await;
        let (api, result) = match &issued {
            Ok(issued) => (issued.token_api.unwrap_or(self.api), "success"),
            Err(err) => (self.api, err.class()),
        };
        ctx.metrics.token_requested(api, result, started.elapsed());
        issued.map(|issued| (issued, now))
    }
}

/// The token request step, through the shared exchange.
///
/// # Errors
///
/// Errors that are not refresh failures (the lease was lost).
async fn obtain(
    ctx: &Context,
    o: &Observed<'_>,
    reason: schedule::RefreshReason,
) -> Result<Obtained, Error> {
    let (Ok(spec), Ok(credentials), Some((key, view)), Some(client)) =
        (&o.spec, &o.credentials, &o.group, &o.token_client)
    else {
        return Err(Error::Startup(
            "a token request without a checked spec and credentials".to_owned(),
        ));
    };
    let now = o.now;
    let remembered = remembered_api(view, o.stored.as_ref().map(|s| &s.record), |r| {
        o.desired
            .credentials_hash
            .as_deref()
            .is_some_and(|hash| secret::hashes_equal(hash, &r.credentials_hash))
    });
    let request = TokenRequest {
        client,
        url: &spec.url,
        api: o.cr.spec.token_api,
        remembered,
        credentials,
    };
    let outcome = ctx
        .exchange
        .obtain(
            key,
            request.app(),
            &uid_of(o.cr),
            |token| decide::accepts(o, reason, token),
            view.failure.as_ref(),
            (now, o.jitter),
            || request.send(ctx, reason, now),
        )
        .await;
    if let Exchanged::Shared(token) | Exchanged::Requested(token) = &outcome {
        let told = Told {
            uid: &uid_of(o.cr),
            labels: CredentialLabels::new(&o.cr.namespace().unwrap_or_default(), &o.cr.name_any()),
            about: o.cr.object_ref(&()),
            spec_api: o.cr.spec.token_api,
        };
        report_notices(ctx, &told, key, token).await;
    }
    match outcome {
        Exchanged::Shared(token) => {
            info!(
                reason = reason.as_str(),
                "taking the token of the shared exchange"
            );
            Ok(Obtained::Token(decide::adopt(o, &token)))
        }
        Exchanged::Requested(token) => Ok(Obtained::Token(decide::adopt(o, &token))),
        Exchanged::Failed(err) if err.is_refresh_failure() => {
            let failure = ctx
                .exchange
                .view(key)
                .failure
                .unwrap_or_else(|| GroupFailure {
                    retry_at: schedule::retry_at(now, 1, err.retry_after(), None, o.jitter),
                    failure: Failure {
                        reason: err.reason(),
                        message: err.to_string(),
                        attempts: 1,
                    },
                });
            Ok(Obtained::Failed(failure))
        }
        Exchanged::Failed(err) => Err(err),
        Exchanged::HeldBack => {
            let view = ctx.exchange.view(key);
            Ok(match view.failure {
                Some(failure) => Obtained::Failed(failure),
                None => {
                    return Err(Error::Startup(
                        "the exchange held back without a failure".to_owned(),
                    ));
                }
            })
        }
    }
}

/// The last step: remember, write the status, publish, log, requeue.
async fn finish_with(
    cr: &RunaiCredential,
    ctx: &Context,
    finish: Finish,
    now: Timestamp,
) -> Result<Action, Error> {
    let uid = uid_of(cr);
    if finish.leave_group {
        ctx.exchange.leave(&uid);
    }
    match finish.backoff {
        Update::Keep => {}
        Update::Set(b) => ctx.set_backoff(&uid, Some(b)),
        Update::Clear => ctx.set_backoff(&uid, None),
    }
    match finish.pending {
        Update::Keep => {}
        Update::Set(p) => ctx.set_pending(&uid, Some(p)),
        Update::Clear => ctx.set_pending(&uid, None),
    }
    match &finish.note {
        Note::Deleting => {}
        Note::NamespaceTerminating => {
            info!("the namespace is being deleted; no token is requested")
        }
        Note::Blocked { reason, message } => {
            if finish.status_changed {
                warn!(reason, error = %message, "cannot proceed until the spec or the cluster changes");
            }
        }
        Note::Fresh | Note::Waiting => {}
        Note::Written {
            why,
            expires_at,
            next_refresh,
        } => {
            info!(reason = why, expires_at = ?expires_at.map(secret::rfc3339), next_refresh = %secret::rfc3339(*next_refresh), "token written to the Secret");
        }
        Note::Failed { failure, retry_at } => {
            warn!(reason = failure.reason, attempts = failure.attempts, retry_at = %secret::rfc3339(*retry_at), error = %failure.message, "token refresh failed");
        }
    }
    if let Some(status) = &finish.status {
        act::write_status(cr, ctx, status, finish.status_changed).await?;
    }
    if let Some(event) = finish.event {
        let type_ = if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        act::publish(ctx, &cr.object_ref(&()), type_, event.reason, event.note).await;
    }
    Ok(match finish.requeue {
        Requeue::OnChange => Action::await_change(),
        Requeue::After(after) => Action::requeue(after),
        // Never a hot loop, even if the time is already past.
        Requeue::At(at) => {
            Action::requeue(schedule::delay_until(now, at).max(Duration::from_secs(1)))
        }
    })
}

#[cfg(test)]
mod own_write_tests {
    use super::*;

    fn context() -> Context {
        Context::for_tests()
    }

    fn credential() -> RunaiCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
            "metadata": {"name": "trainer", "namespace": "ml"},
            "spec": {"url": "https://acme.run.ai", "clientCredentialsSecretRef": {"name": "c"}},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn an_abandoned_write_no_longer_swallows_the_secrets_events() {
        let (ctx, cr) = (context(), credential());
        let write = ctx.begin_own_write(&cr, "trainer");
        // Positive control: while it is in flight, an event is taken for its echo.
        assert!(ctx.is_own_echo("ml", "trainer", Some("5")));
        // The reconciliation is dropped mid-write (its deadline).
        drop(write);
        assert!(!ctx.is_own_echo("ml", "trainer", Some("6")));
        assert!(!ctx.own_write_pending("ml", "trainer"));
    }

    #[tokio::test]
    async fn a_finished_write_knows_its_echo_once() {
        let (ctx, cr) = (context(), credential());
        ctx.begin_own_write(&cr, "trainer").end(Some("7".into()));
        assert!(
            ctx.is_own_echo("ml", "trainer", Some("7")),
            "its echo is known"
        );
        assert!(
            !ctx.is_own_echo("ml", "trainer", Some("7")),
            "then forgotten"
        );
    }

    #[tokio::test]
    async fn a_new_list_of_the_secrets_forgets_the_echoes_still_awaited() {
        let (ctx, cr) = (context(), credential());
        ctx.begin_own_write(&cr, "trainer").end(Some("7".into()));
        let in_flight = ctx.begin_own_write(&cr, "other");
        ctx.forget_unechoed_writes();
        assert!(!ctx.is_own_echo("ml", "trainer", Some("7")));
        // A write still under way is kept: its end says what it wrote.
        assert!(ctx.is_own_echo("ml", "other", Some("3")));
        drop(in_flight);
    }
}

#[cfg(test)]
mod remembered_tests {
    use super::*;

    fn record(hash: &str, issued: i64, api: Option<TokenApi>) -> schedule::TokenRecord {
        schedule::TokenRecord {
            issued_at: Timestamp::from_second(issued).unwrap(),
            expires_at: None,
            credentials_hash: hash.into(),
            generation: 1,
            refresh_request: None,
            definition: None,
            token_api: api,
        }
    }

    #[test]
    fn auto_remembers_only_what_answered_its_own_definition() {
        let of_auto = |r: &schedule::TokenRecord| r.credentials_hash == "auto";
        let empty = GroupView::default();
        // A token obtained under an explicit V1 (another hash) is not a
        // memory of Auto's: after a switch to Auto, V2 comes first.
        let under_v1 = [record("v1", 10, Some(TokenApi::V1))];
        assert_eq!(remembered_api(&empty, &under_v1, of_auto), None);
        // Positive control: the same record under Auto's own definition.
        let under_auto = [
            record("auto", 10, Some(TokenApi::V2)),
            record("auto", 20, Some(TokenApi::V1)),
            record("v1", 30, Some(TokenApi::V2)),
        ];
        assert_eq!(
            remembered_api(&empty, &under_auto, of_auto),
            Some(TokenApi::V1),
            "the newest of its own"
        );
        // What answered the group last comes first.
        let answered = GroupView {
            token_api: Some(TokenApi::V2),
            ..GroupView::default()
        };
        assert_eq!(
            remembered_api(&answered, &under_auto, of_auto),
            Some(TokenApi::V2)
        );
    }
}
