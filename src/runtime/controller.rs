//! Wiring: the watches that trigger reconciliations, start-up checks, and the
//! key for the hashes kept on target Secrets.

use std::{collections::HashSet, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::{
    ByteString,
    api::{
        coordination::v1::Lease,
        core::v1::{Namespace, Secret},
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PartialObjectMeta, PostParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerConfig,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, warn};

use crate::{
    api::RunaiCredential,
    cache::index::SecretIndex,
    error::Error,
    health::{WATCHES_SILENT_LIMIT, WatchPulse, is_progress},
    metrics::{CredentialLabels, Metrics},
    output::secret::{CREDENTIAL_LABEL, CREDENTIALS_LABEL, HashKey, MANAGED_BY, MANAGED_BY_LABEL},
    reconcile::{self, Context, FIELD_MANAGER, Parts, Policy},
    runai::client::TokenClients,
    runai::exchange::Exchange,
    runtime::leader,
    runtime::server::{self, Health},
    runtime::triggers::TriggerMemory,
};

/// Name of the Secret, in the controller's namespace, holding the hash key.
pub const HASH_KEY_SECRET: &str = "runai-token-sync-hash-key";
const HASH_KEY_DATA_KEY: &str = "key";

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only these namespaces; all namespaces when empty.
    pub namespaces: Vec<String>,
    /// The controller's own namespace: hash key Secret and leader Lease.
    pub controller_namespace: String,
    /// What RunaiCredentials may ask for: insecure HTTP, allowed URLs, the
    /// credentials label.
    pub policy: Policy,
    /// Timeout of each token request.
    pub request_timeout: Duration,
    /// Reconciliations at once, per controller (see `--concurrency`).
    pub concurrency: u16,
    /// Token requests in flight at once, for the whole process.
    pub max_concurrent_token_requests: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// `/healthz` fails when the leader has made no progress for this long
    /// while it has work.
    pub stall_limit: Duration,
    /// Leader election; `None` runs as the only replica.
    pub leader_election: Option<LeaderElection>,
    /// The API server's URL, for error messages.
    pub api_server: String,
    /// Serve ClusterRunaiCredentials (when their CRD is installed).
    pub cluster_credentials: bool,
    /// Serve only the ClusterRunaiCredentials this label selector matches.
    pub cluster_credentials_selector: Option<String>,
    /// When the API server last answered one of the controller's watches:
    /// beaten by the Kubernetes client's [`super::watch_pulse::PulseLayer`].
    pub watch_pulse: WatchPulse,
}

/// Leader election on a `coordination.k8s.io` Lease.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    /// This replica's identity in the Lease (the Pod name in a cluster).
    pub identity: String,
    /// How long a lease is valid after its last renewal: a killed leader's
    /// successor takes over within this time.
    pub lease_duration: Duration,
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What the start-up check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// The API server answers and RunaiCredentials can be listed.
    Ready,
    /// The CRD is not installed (yet); the message says how to install it.
    CrdMissing(String),
}

/// Checks that the API server answers and the CRD is installed.
///
/// # Errors
///
/// [`Error::Startup`], one clear line, when the API server cannot be reached
/// or RunaiCredentials cannot be listed for another reason than a missing CRD.
pub async fn preflight(
    client: &Client,
    namespace: Option<&str>,
    api_server: &str,
) -> Result<Preflight, Error> {
    client.apiserver_version().await.map_err(|e| {
        Error::Startup(format!(
            "cannot reach the Kubernetes API server at {api_server}: {e}"
        ))
    })?;
    let api: Api<RunaiCredential> = scoped(client, namespace);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(Preflight::Ready),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Preflight::CrdMissing(format!(
            "the RunaiCredential CRD (runaicredentials.tokensync.dev) is not installed in the cluster at {api_server}; waiting for it (install it with `runai-token-sync crd | kubectl apply -f -`)"
        ))),
        Err(e) => Err(Error::Startup(format!(
            "cannot list RunaiCredentials at {api_server}: {e}"
        ))),
    }
}

/// How often a missing CRD is looked for again, and how often it is said.
const CRD_POLL: Duration = Duration::from_secs(5);
const SAY_EVERY: Duration = Duration::from_secs(60);

/// Waits until [`preflight`] finds the CRD, saying so once a minute, or
/// until `stopping` turns true (then `Ok(false)`).
///
/// # Errors
///
/// Those of [`preflight`].
async fn wait_for_crd(
    client: &Client,
    namespace: Option<&str>,
    api_server: &str,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<bool, Error> {
    let mut said: Option<tokio::time::Instant> = None;
    loop {
        match preflight(client, namespace, api_server).await? {
            Preflight::Ready => return Ok(true),
            Preflight::CrdMissing(message) => {
                if said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                    warn!("{message}");
                    said = Some(tokio::time::Instant::now());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CRD_POLL) => {}
            _ = wait_until_true(stopping) => return Ok(false),
        }
    }
}

/// Says once a minute, in one clear line, that the RunaiCredential watch
/// fails because the CRD is gone (the watch retries by itself, with
/// backoff, and serving resumes once the CRD is back); other watch errors
/// are logged as they come.
#[derive(Default)]
struct WatchErrors {
    said_crd_missing: Option<tokio::time::Instant>,
}

impl WatchErrors {
    fn report(&mut self, error: &(dyn std::error::Error + 'static)) {
        let crd_missing = is_not_found(error);
        if !crd_missing {
            warn!(error = %error, "controller event");
            return;
        }
        if self
            .said_crd_missing
            .is_none_or(|at| at.elapsed() >= SAY_EVERY)
        {
            warn!(
                "the RunaiCredential CRD (runaicredentials.tokensync.dev) was removed from the cluster; waiting for it to be installed again (`runai-token-sync crd | kubectl apply -f -`)"
            );
            self.said_crd_missing = Some(tokio::time::Instant::now());
        }
    }
}

/// Whether an error (or one of its sources) is an API answer 404.
fn is_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(kube::Error::Api(status)) = e.downcast_ref::<kube::Error>() {
            return status.code == 404;
        }
        source = e.source();
    }
    false
}

/// Reads the hash key from its Secret, creating it with a random key on first
/// start. It must survive restarts: a new key would make every stored hash
/// unknown and request every token again.
pub async fn load_or_create_hash_key(client: &Client, namespace: &str) -> Result<HashKey, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(secret) = secrets
            .get_opt(HASH_KEY_SECRET)
            .await
            .map_err(Error::kube("reading the hash key Secret"))?
        {
            return secret
                .data
                .as_ref()
                .and_then(|d| d.get(HASH_KEY_DATA_KEY))
                .filter(|k| k.0.len() >= 32)
                .map(|k| HashKey::new(k.0.clone()))
                .ok_or_else(|| {
                    Error::Startup(format!(
                        "Secret {namespace}/{HASH_KEY_SECRET} has no key {HASH_KEY_DATA_KEY:?} of at least 32 bytes; delete it to have a new one created"
                    ))
                });
        }
        let key: [u8; 32] = rand::random();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(HASH_KEY_SECRET.to_owned()),
                labels: Some([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())].into()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some([(HASH_KEY_DATA_KEY.to_owned(), ByteString(key.to_vec()))].into()),
            ..Secret::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match secrets.create(&params, &secret).await {
            Ok(_) => {
                info!(
                    namespace,
                    secret = HASH_KEY_SECRET,
                    "created the hash key Secret"
                );
                return Ok(HashKey::new(key.to_vec()));
            }
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
            Err(e) => return Err(Error::kube("creating the hash key Secret")(e)),
        }
    }
    Err(Error::Startup(
        "cannot settle the hash key Secret".to_owned(),
    ))
}

/// The RunaiCredentials a change of this Secret concerns (see
/// [`SecretIndex`]); none for the echo of the controller's own write.
fn credentials_for_secret(
    index: &SecretIndex,
    store: &Store<RunaiCredential>,
    ctx: &Context,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<RunaiCredential>> {
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    let name = secret.name_any();
    if ctx.is_own_echo(&namespace, &name, secret.resource_version().as_deref()) {
        return Vec::new();
    }
    let labels = secret.labels();
    let owner = labels
        .get(MANAGED_BY_LABEL)
        .filter(|v| v.as_str() == MANAGED_BY)
        .and(labels.get(CREDENTIAL_LABEL));
    index.lookup(store, &namespace, &name, owner.map(String::as_str))
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(client: Client, settings: Settings) -> Result<(), Error> {
    let namespaces: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    // Probes answer from the start: live, and not ready until the watches sync.
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::with_stall_limit(settings.stall_limit));
    server::serve(settings.metrics_address, metrics.clone(), health.clone()).await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested; finishing the reconciliations under way");
        let _ = stop.send(true);
    });
    // Started before its CRD: up and not ready until it is installed.
    for namespace in &namespaces {
        let mut waiting = stopping.clone();
        if !wait_for_crd(
            &client,
            namespace.as_deref(),
            &settings.api_server,
            &mut waiting,
        )
        .await?
        {
            health.set_stopped();
            return Ok(());
        }
    }
    // What the installed CRDs lack of ours is said at start and whenever
    // one changes.
    tokio::spawn(super::crds::report_gaps(
        client.clone(),
        metrics.clone(),
        crate::api::crd(),
    ));
    if settings.cluster_credentials {
        tokio::spawn(super::crds::report_gaps(
            client.clone(),
            metrics.clone(),
            crate::api::cluster_crd(),
        ));
    }
    let hash_key = load_or_create_hash_key(&client, &settings.controller_namespace).await?;
    let reporter = Reporter {
        controller: "runai-token-sync".to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context::new(Parts {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        token_clients: TokenClients::new(settings.request_timeout),
        hash_key,
        metrics: metrics.clone(),
        policy: settings.policy.clone(),
        health: health.clone(),
        exchange: Arc::new(Exchange::new(settings.max_concurrent_token_requests)),
        controller_namespace: settings.controller_namespace.clone(),
        scope: (!settings.namespaces.is_empty())
            .then(|| settings.namespaces.iter().cloned().collect()),
        namespaces: watch_namespaces(&client).await,
    }));

    // Bounded: reconciliations still running after the grace period are
    // dropped (a Pod's default termination grace period is 30 s).
    let mut deadline_watch = stopping.clone();
    let shutdown_deadline = async move {
        wait_until_true(&mut deadline_watch).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let work = async {
        match &settings.leader_election {
            None => {
                health.set_leading(true);
                metrics.set_leader(true);
                let mut stopping = stopping;
                let stop = async move { wait_until_true(&mut stopping).await };
                run_controllers(&client, &namespaces, &settings, ctx, &health, stop).await;
                Ok(())
            }
            Some(election) => {
                run_elected(
                    &client,
                    &namespaces,
                    &settings,
                    election,
                    ctx,
                    &health,
                    stopping,
                )
                .await
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = shutdown_deadline => {
            warn!(grace_seconds = SHUTDOWN_GRACE.as_secs(), "reconciliations still running at the end of the shutdown grace period are abandoned");
            Ok(())
        }
    };
    health.set_stopped();
    info!("controller stopped");
    result
}

/// A cache of all namespaces' metadata, when the controller may list them
/// (a ClusterRole), so that whether one is being deleted costs no read before
/// a token request; `None` otherwise (each is then read when needed).
async fn watch_namespaces(client: &Client) -> Option<Store<PartialObjectMeta<Namespace>>> {
    let namespaces_api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    namespaces_api
        .list_metadata(&ListParams::default().limit(1))
        .await
        .ok()?;
    let (store, writer) = reflector::store();
    tokio::spawn(
        watcher(namespaces_api, super::cached_watch_config())
            .backoff(super::watch_backoff())
            .modify(|ns: &mut PartialObjectMeta<Namespace>| {
                super::strip_for_cache(&mut ns.metadata)
            })
            .reflect(writer)
            .for_each(|_| futures::future::ready(())),
    );
    Some(store)
}

/// Waits for the leader lease, runs the controllers while holding it, and
/// campaigns again when it is lost (all work stops at once: no request and
/// no write until it leads again); releases it once they have stopped at
/// shutdown. A replica that lost the lease never stays running without
/// campaigning (api.md, "Talking to the API server: faults").
async fn run_elected(
    client: &Client,
    namespaces: &[Option<String>],
    settings: &Settings,
    election: &LeaderElection,
    ctx: Arc<Context>,
    health: &Arc<Health>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let (release, release_rx) = tokio::sync::watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.controller_namespace);
    let lease_task = tokio::spawn(leader::hold(
        leases,
        election.lease_name.clone(),
        election.identity.clone(),
        leader::Timing::for_duration(election.lease_duration),
        leading_tx,
        release_rx,
    ));
    // A follower is ready: it must not block a rolling update.
    health.set_ready(true);
    ctx.metrics.set_leader(false);
    info!(lease = %election.lease_name, identity = %election.identity, "waiting to become the leader");

    loop {
        let became_leader = tokio::select! {
            changed = leading.wait_for(|lead| *lead) => changed.is_ok(),
            _ = wait_until_true(&mut stopping) => false,
        };
        if !became_leader {
            break;
        }
        info!("became the leader");
        ctx.resume_acting();
        // A new term starts with a clean slate: the time without progress
        // of the last one (or of following) must not fail liveness before
        // this one's first probe.
        health.record_progress();
        health.set_leading(true);
        ctx.metrics.set_leader(true);
        let mut stop = stopping.clone();
        let mut lost = leading.clone();
        let acting = ctx.clone();
        let stop_or_lost = async move {
            tokio::select! {
                _ = wait_until_true(&mut stop) => {}
                _ = lost.wait_for(|lead| !*lead) => {
                    // Another replica may lead already: the reconciliations
                    // under way make no further request or write.
                    acting.stop_acting();
                }
            }
        };
        run_controllers(
            client,
            namespaces,
            settings,
            ctx.clone(),
            health,
            stop_or_lost,
        )
        .await;
        ctx.metrics.set_leader(false);
        health.set_leading(false);
        if *stopping.borrow() {
            break;
        }
        warn!(lease = %election.lease_name, "lost the leader lease: the work stopped; campaigning again");
    }
    // Released only now that the reconciliations under way are done.
    let _ = release.send(true);
    if let Err(e) = lease_task.await {
        warn!(error = %e, "the leader election task failed");
    }
    Ok(())
}

/// Resolves once the channel holds `true` (or its sender is gone).
async fn wait_until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = rx.wait_for(|value| *value).await.map(|_| ());
}

/// One controller per watched namespace (or one for all), sharing a context,
/// until `stop` resolves; with them the background tasks
/// ([`mark_ready_once_listed`], [`prune_after_lists`], [`probe_liveness`]).
async fn run_controllers(
    client: &Client,
    namespaces: &[Option<String>],
    settings: &Settings,
    ctx: Arc<Context>,
    health: &Arc<Health>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let stop = stop.shared();
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for namespace in namespaces {
        let (store, controller) =
            credential_controller(client, namespace.as_deref(), settings, &ctx, stop.clone());
        stores.push(store);
        controllers.push(controller);
    }
    // ClusterRunaiCredentials, where their CRD is installed.
    let (cluster_store, cluster_run) = if settings.cluster_credentials {
        let (store, run) = super::cluster::controller(
            client,
            ctx.clone(),
            settings.concurrency,
            settings.cluster_credentials_selector.as_deref(),
            stop.clone(),
        );
        (Some(store), run.boxed())
    } else {
        (None, futures::future::ready(()).boxed())
    };
    let readiness = tokio::spawn(mark_ready_once_listed(stores.clone(), health.clone()));
    let pruning = tokio::spawn(prune_after_lists(
        ctx.clone(),
        stores.clone(),
        cluster_store.into_iter().collect(),
    ));
    // The watches just started: their first answers are awaited from now.
    settings.watch_pulse.beat();
    let probing = tokio::spawn(probe_liveness(
        client.clone(),
        health.clone(),
        settings.watch_pulse.clone(),
        stores,
    ));
    futures::future::join(futures::future::join_all(controllers), cluster_run).await;
    readiness.abort();
    pruning.abort();
    probing.abort();
}

/// The RunaiCredential controller of one namespace (`None`: all): its
/// store, and the future that runs it until `stop`.
fn credential_controller(
    client: &Client,
    namespace: Option<&str>,
    settings: &Settings,
    ctx: &Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> (
    Store<RunaiCredential>,
    futures::future::BoxFuture<'static, ()>,
) {
    let (store, writer) = reflector::store();
    let credential_changes = credential_changes(client, namespace, ctx, &store, writer);
    let controller = Controller::for_stream(credential_changes, store.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency));
    let secret_changes = secret_changes(client, namespace, settings, ctx);
    info!(
        namespace = namespace.unwrap_or("<all>"),
        "starting the RunaiCredential controller"
    );
    let (index, mapped, exchange) = (ctx.index.clone(), store.clone(), ctx.clone());
    let run = controller
        .watches_stream(secret_changes, {
            let ctx = ctx.clone();
            move |secret| credentials_for_secret(&index, &mapped, &ctx, &secret)
        })
        // A new token of a group reaches its other members at once.
        .reconcile_on(futures::stream::unfold(
            exchange.exchange.subscribe(namespace.map(str::to_owned)),
            |mut rx| async move { rx.recv().await.map(|m| (super::member_ref(m), rx)) },
        ))
        .graceful_shutdown_on(stop)
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .scan(WatchErrors::default(), |errors, result| {
            match result {
                Ok(_)
                | Err(kube::runtime::controller::Error::ReconcilerFailed(..))
                | Err(kube::runtime::controller::Error::ObjectNotFound(..)) => {}
                Err(other) => errors.report(&other),
            }
            futures::future::ready(Some(()))
        })
        .for_each(|()| async {})
        .boxed();
    (store, run)
}

/// The RunaiCredentials of one namespace (`None`: all) that need a
/// reconciliation, as they change. The cache holds what decisions read: no
/// managedFields and no last-applied copy of the spec, one copy of each CA
/// bundle. The index maps Secret events to RunaiCredentials without a scan;
/// status-only changes (the echo of the controller's own status writes)
/// trigger nothing. A deleted RunaiCredential is forgotten at once (its
/// series, its memory); a new list has what it no longer holds pruned.
fn credential_changes(
    client: &Client,
    namespace: Option<&str>,
    ctx: &Arc<Context>,
    store: &Store<RunaiCredential>,
    writer: reflector::store::Writer<RunaiCredential>,
) -> impl futures::Stream<Item = Result<RunaiCredential, watcher::Error>> + Send + 'static {
    let credentials: Api<RunaiCredential> = scoped(client, namespace);
    let (indexed, rebuilt) = (ctx.index.clone(), ctx.index.clone());
    let (before, after) = (store.clone(), store.clone());
    let scope = namespace.map(str::to_owned);
    let bundles = ctx.ca_bundles.clone();
    let (forgotten, prune_wanted) = (ctx.clone(), ctx.clone());
    let triggers = Arc::new(TriggerMemory::default());
    let (deleted, listed, filtered) = (triggers.clone(), triggers.clone(), triggers);
    watcher(credentials, super::paged_watch_config())
        .backoff(super::watch_backoff())
        .modify(move |cr: &mut RunaiCredential| {
            super::strip_for_cache(&mut cr.metadata);
            // Thousands of RunaiCredentials often carry the same bundle:
            // the cache keeps one copy of each.
            if let Some(pem) = cr.spec.ca_bundle.take() {
                cr.spec.ca_bundle = Some(bundles.intern(pem));
            }
        })
        .map_ok(move |event| {
            indexed.observe(&before, &event);
            if let watcher::Event::Delete(cr) = &event {
                forgotten.metrics.forget_credential(&CredentialLabels::new(
                    &cr.namespace().unwrap_or_default(),
                    &cr.name_any(),
                ));
                forgotten.forget(&reconcile::decide::uid_of(cr));
                deleted.forget(cr);
            }
            event
        })
        .reflect(writer)
        .map_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                rebuilt.rebuild(scope.as_deref(), &after);
                listed.retain(&after);
                prune_wanted.prune_wanted.notify_one();
            }
            event
        })
        .applied_objects()
        .try_filter_map(move |cr| futures::future::ready(Ok(filtered.trigger(cr))))
}

/// The Secrets of one namespace (`None`: all) whose changes may concern a
/// RunaiCredential. Metadata only: a change of any Secret's data bumps its
/// resourceVersion, which is all a trigger needs, and no Secret's data is
/// ever held. A new list forgets the echoes of the controller's writes
/// still awaited (it may skip their versions).
fn secret_changes(
    client: &Client,
    namespace: Option<&str>,
    settings: &Settings,
    ctx: &Arc<Context>,
) -> futures::stream::BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>> {
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(client, namespace);
    let relisted = |ctx: Arc<Context>| {
        move |event: watcher::Event<PartialObjectMeta<Secret>>| {
            if matches!(event, watcher::Event::Init) {
                ctx.forget_unechoed_writes();
            }
            event
        }
    };
    if settings.policy.credentials_label_required {
        // Only labelled credentials and the controller's own Secrets
        // concern it. A foreign Secret blocking a target name is then
        // looked at again by the periodic requeue of SecretConflict.
        // These watches do not see an unlabelled Secret taking a target's
        // name, so they cannot tell that one is missing: targets are read.
        let labelled = |selector: String| {
            watcher(
                secrets.clone(),
                super::paged_watch_config().labels(&selector),
            )
            .backoff(super::watch_backoff())
            .map_ok(relisted(ctx.clone()))
            .touched_objects()
        };
        futures::stream::select(
            labelled(format!("{CREDENTIALS_LABEL}=true")),
            labelled(format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        )
        .boxed()
    } else {
        // It sees every Secret: one it has not seen need not be read.
        let seen = ctx.known_secrets.watch(namespace);
        watcher(secrets, super::paged_watch_config())
            .backoff(super::watch_backoff())
            .map_ok(relisted(ctx.clone()))
            .map_ok(move |event| {
                seen.observe(&event);
                event
            })
            .touched_objects()
            .boxed()
    }
}

/// Marks the controller ready (and as having made progress) once every
/// store has listed what exists; ends without it if a store's writer is
/// dropped first.
pub async fn mark_ready_once_listed(stores: Vec<Store<RunaiCredential>>, health: Arc<Health>) {
    for store in &stores {
        // `wait_until_ready` wakes only the last task that polled it, and
        // the controller polls it too: look again every 200 ms.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_elapsed) => continue,
            }
        }
    }
    info!("watches synced");
    health.record_progress();
    health.set_ready(true);
}

/// Drops what is kept about credentials that no longer exist (and the CA
/// bundles and HTTP clients none uses any more), each time a watch of
/// credentials has listed again or a credential was deleted
/// ([`Context::prune_wanted`]; a deletion a watch missed sends no event),
/// once every store holds a complete list. Wake-ups within
/// [`PRUNE_DEBOUNCE`] make one pass: deleting thousands costs a few.
pub async fn prune_after_lists(
    ctx: Arc<Context>,
    stores: Vec<Store<RunaiCredential>>,
    cluster_stores: Vec<Store<crate::api::ClusterRunaiCredential>>,
) {
    loop {
        ctx.prune_wanted.notified().await;
        tokio::time::sleep(PRUNE_DEBOUNCE).await;
        // Only from complete lists: a store that has not listed yet looks
        // empty, and pruning by it would drop what live credentials use (an
        // interned CA bundle: a false InvalidSpec). ClusterRunaiCredentials
        // not served (their CRD missing) keep nothing to prune.
        let clusters_listed = !ctx.clusters_served() || all_listed(&cluster_stores);
        if all_listed(&stores) && clusters_listed {
            prune(&ctx, &stores, &cluster_stores);
        }
    }
}

/// How long the pruning waits after a wake-up for more (see
/// [`prune_after_lists`]).
pub const PRUNE_DEBOUNCE: Duration = Duration::from_secs(2);

/// Keeps, of the per-credential memory, the metrics' series and the CA
/// bundles and their HTTP clients, only what the credentials in the stores
/// use.
fn prune(
    ctx: &Context,
    stores: &[Store<RunaiCredential>],
    cluster_stores: &[Store<crate::api::ClusterRunaiCredential>],
) {
    let live: Vec<Arc<RunaiCredential>> = stores.iter().flat_map(Store::state).collect();
    let clusters: Vec<Arc<crate::api::ClusterRunaiCredential>> =
        cluster_stores.iter().flat_map(Store::state).collect();
    let labels: HashSet<CredentialLabels> = live
        .iter()
        .map(|cr| CredentialLabels::new(&cr.namespace().unwrap_or_default(), &cr.name_any()))
        .chain(
            clusters
                .iter()
                .map(|crc| CredentialLabels::new("", &crc.name_any())),
        )
        .collect();
    ctx.metrics.retain_credentials(&labels);
    ctx.retain_credentials(
        &live
            .iter()
            .map(|cr| reconcile::decide::uid_of(cr))
            .chain(clusters.iter().filter_map(|crc| crc.uid()))
            .collect(),
    );
    let handles: HashSet<&str> = live
        .iter()
        .filter_map(|cr| cr.spec.ca_bundle.as_deref())
        .collect();
    ctx.ca_bundles.retain(&handles);
    let texts: Vec<Arc<str>> = handles
        .iter()
        .filter_map(|h| ctx.ca_bundles.resolve(Some(h)))
        .collect();
    ctx.token_clients.retain(
        &texts
            .iter()
            .map(|t| t.as_ref())
            .chain(clusters.iter().filter_map(|c| c.spec.ca_bundle.as_deref()))
            .collect(),
    );
}

/// Liveness: records progress when the API server answers and the
/// controller's watches are being answered (within
/// [`WATCHES_SILENT_LIMIT`]), and whether there are RunaiCredentials to
/// keep; see `Settings::stall_limit`. An API server that answers `/version`
/// is not enough: after an outage, a controller whose watches never came
/// back is not working, and must not look healthy (api.md, "Talking to the
/// API server: faults"). Several probes within the stall limit, so that
/// one lost answer does not fail the liveness probe.
pub async fn probe_liveness(
    client: Client,
    health: Arc<Health>,
    watches: WatchPulse,
    stores: Vec<Store<RunaiCredential>>,
) {
    let period = (health.stall_limit() / 4).clamp(Duration::from_secs(1), LIVENESS_PROBE);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        health.set_has_work(stores.iter().any(|s| !s.is_empty()));
        let answered =
            tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await;
        let api_server_answered = matches!(answered, Ok(Ok(_)));
        if is_progress(api_server_answered, watches.since_last()) {
            health.record_progress();
        } else if api_server_answered {
            warn!(
                silent_seconds = watches.since_last().map(|d| d.as_secs()),
                "the API server answers but none of the controller's watches has been answered for {} s; not counted as progress",
                WATCHES_SILENT_LIMIT.as_secs()
            );
        }
    }
}

/// Whether every store has listed what exists (its watch's first list is
/// complete), without waiting.
fn all_listed<K>(stores: &[Store<K>]) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    stores
        .iter()
        .all(|store| matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))))
}

/// How long a shutdown waits for the reconciliations under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How often the leader checks that the API server answers.
const LIVENESS_PROBE: Duration = Duration::from_secs(30);

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod listed_tests {
    use super::*;
    use kube::runtime::watcher;

    #[test]
    fn pruning_waits_until_every_store_has_listed() {
        let (first, mut first_writer) = reflector::store::<RunaiCredential>();
        let (second, mut second_writer) = reflector::store::<RunaiCredential>();
        let stores = [first, second];
        assert!(!all_listed(&stores), "none listed yet");
        first_writer.apply_watcher_event(&watcher::Event::Init);
        first_writer.apply_watcher_event(&watcher::Event::InitDone);
        assert!(!all_listed(&stores), "one of two listed");
        second_writer.apply_watcher_event(&watcher::Event::Init);
        second_writer.apply_watcher_event(&watcher::Event::InitDone);
        assert!(all_listed(&stores), "both listed");
        assert!(
            all_listed::<RunaiCredential>(&[]),
            "no store: nothing to wait for"
        );
    }
}

#[cfg(test)]
mod task_tests_support {
    use super::*;

    /// A context whose client is never asked.
    pub fn context() -> Arc<Context> {
        Arc::new(Context::for_tests())
    }
}

#[cfg(test)]
mod task_tests {
    use super::*;
    use crate::runai::exchange::{GroupKey, Member};
    use kube::runtime::watcher;

    use super::task_tests_support::context;

    fn credential(name: &str, uid: &str) -> RunaiCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
            "metadata": {"name": name, "namespace": "ml", "uid": uid},
            "spec": {"url": "https://acme.run.ai", "clientCredentialsSecretRef": {"name": "c"}},
        }))
        .unwrap()
    }

    fn list(writer: &mut reflector::store::Writer<RunaiCredential>, items: &[RunaiCredential]) {
        writer.apply_watcher_event(&watcher::Event::Init);
        for item in items {
            writer.apply_watcher_event(&watcher::Event::InitApply(item.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }

    /// Waits up to 5 s for `done`.
    async fn eventually(done: impl Fn() -> bool) -> bool {
        for _ in 0..100 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done()
    }

    #[tokio::test]
    async fn ready_once_every_store_has_listed() {
        let (first, mut first_writer) = reflector::store::<RunaiCredential>();
        let (second, mut second_writer) = reflector::store::<RunaiCredential>();
        let health = Arc::new(Health::default());
        let task = tokio::spawn(mark_ready_once_listed(vec![first, second], health.clone()));
        list(&mut first_writer, &[]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!health.is_ready(), "one of two stores listed");
        // Positive control: the second list makes it ready.
        list(&mut second_writer, &[]);
        assert!(eventually(|| health.is_ready()).await, "both listed");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn memory_of_deleted_credentials_goes_after_complete_lists_only() {
        let ctx = context();
        let (store, mut writer) = reflector::store::<RunaiCredential>();
        let key = |n: &str| GroupKey::new(n, &None);
        ctx.exchange
            .join("uid-live", Member::namespaced("ml", "live"), &key("a"));
        ctx.exchange
            .join("uid-gone", Member::namespaced("ml", "gone"), &key("b"));
        let task = tokio::spawn(prune_after_lists(ctx.clone(), vec![store], Vec::new()));
        // Woken before the store listed: an empty store prunes nothing.
        ctx.prune_wanted.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(ctx.exchange.group_of("uid-live").is_some());
        assert!(ctx.exchange.group_of("uid-gone").is_some());
        // Positive control: once listed (with only "live"), "gone" goes.
        list(&mut writer, &[credential("live", "uid-live")]);
        ctx.prune_wanted.notify_one();
        assert!(eventually(|| ctx.exchange.group_of("uid-gone").is_none()).await);
        assert!(ctx.exchange.group_of("uid-live").is_some());
        assert_eq!(ctx.exchange.groups(), 1);
        task.abort();
    }

    #[tokio::test]
    async fn a_deleted_credential_is_forgotten_at_once() {
        let ctx = context();
        let key = GroupKey::new("a", &None);
        ctx.exchange
            .join("uid-gone", Member::namespaced("ml", "gone"), &key);
        assert!(ctx.exchange.group_of("uid-gone").is_some());
        ctx.forget("uid-gone");
        assert!(ctx.exchange.group_of("uid-gone").is_none());
        assert_eq!(ctx.exchange.groups(), 0);
    }
}

#[cfg(test)]
mod settle_tests {
    use super::task_tests_support::context;
    use crate::{
        metrics::CredentialLabels,
        runai::exchange::{GroupKey, Member},
    };

    #[tokio::test]
    async fn what_a_reconciliation_in_flight_keeps_of_a_deleted_credential_goes_at_its_end() {
        let ctx = context();
        let key = GroupKey::new("a", &None);
        let labels = CredentialLabels::new("ml", "gone");
        ctx.exchange
            .join("uid-gone", Member::namespaced("ml", "gone"), &key);
        ctx.forget("uid-gone");
        // A reconciliation that was in flight joins again after the deletion.
        ctx.exchange
            .join("uid-gone", Member::namespaced("ml", "gone"), &key);
        ctx.exchange
            .join("uid-live", Member::namespaced("ml", "live"), &key);
        ctx.settle("uid-gone", &labels);
        assert!(ctx.exchange.group_of("uid-gone").is_none());
        // Positive control: the end of a live credential's reconciliation
        // keeps its memory.
        ctx.settle("uid-live", &CredentialLabels::new("ml", "live"));
        assert!(ctx.exchange.group_of("uid-live").is_some());
    }
}
