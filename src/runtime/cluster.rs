//! The ClusterRunaiCredential controller: its watches and what triggers a
//! reconciliation (the object, namespaces' labels, its Secrets, its
//! credentials Secret, a new token of its group).

use std::{future::Future, sync::Arc};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PartialObjectMeta},
    runtime::{
        Controller, PredicateConfig, WatchStreamExt,
        controller::Config as ControllerConfig,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::info;

use crate::{
    api::ClusterRunaiCredential,
    metrics::CredentialLabels,
    output::secret::{
        CLUSTER_CREDENTIAL_LABEL, MANAGED_BY, MANAGED_BY_LABEL, credential_label_value,
    },
    reconcile::{Context, cluster},
};

/// What of a ClusterRunaiCredential is worth a reconciliation when it
/// changes: identity, generation, the refresh annotation, deletion.
fn reconcile_trigger(crc: &ClusterRunaiCredential) -> Option<u64> {
    Some(super::triggers::trigger_hash(
        &crc.metadata,
        crc.refresh_request(),
    ))
}

/// The ClusterRunaiCredentials a change of the namespace `ns` concerns
/// ([`fanout::concerns`]): those that select it now or served it.
fn for_namespace(
    store: &Store<ClusterRunaiCredential>,
    ctx: &Context,
    ns: &PartialObjectMeta<Namespace>,
) -> Vec<ObjectRef<ClusterRunaiCredential>> {
    let name = ns.name_any();
    let labels = ns.labels();
    store
        .state()
        .iter()
        .filter(|crc| {
            let served = crc.uid().is_some_and(|uid| ctx.served(&uid, &name));
            crate::reconcile::fanout::concerns(crc, &name, labels, ctx.scope.as_ref(), served)
        })
        .map(|crc| ObjectRef::from_obj(crc.as_ref()))
        .collect()
}

/// The ClusterRunaiCredential a Secret concerns: the owner its label names,
/// or those reading it as credentials (in the controller's namespace).
fn for_secret(
    store: &Store<ClusterRunaiCredential>,
    controller_namespace: &str,
    secret: &PartialObjectMeta<Secret>,
    ctx: &Context,
) -> Vec<ObjectRef<ClusterRunaiCredential>> {
    // The echo of its own write: nothing to look at.
    if ctx.is_own_cluster_echo(
        &secret.namespace().unwrap_or_default(),
        &secret.name_any(),
        secret.resource_version().as_deref(),
    ) {
        return Vec::new();
    }
    let labels = secret.labels();
    let owner = labels
        .get(MANAGED_BY_LABEL)
        .filter(|v| v.as_str() == MANAGED_BY)
        .and(labels.get(CLUSTER_CREDENTIAL_LABEL));
    store
        .state()
        .iter()
        .filter(|crc| {
            owner.is_some_and(|o| *o == credential_label_value(&crc.name_any()))
                || (secret.namespace().as_deref() == Some(controller_namespace)
                    && crc.spec.client_credentials_secret_ref.name == secret.name_any())
        })
        .map(|crc| ObjectRef::from_obj(crc.as_ref()))
        .collect()
}

/// The ClusterRunaiCredential controller: its store (to keep its members in
/// the exchange) and the future that serves them until `stop`, once their CRD
/// is installed and they may be listed.
pub fn controller(
    client: &Client,
    ctx: Arc<Context>,
    concurrency: u16,
    selector: Option<&str>,
    stop: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> (Store<ClusterRunaiCredential>, impl Future<Output = ()>) {
    let (store, writer) = reflector::store();
    let client = client.clone();
    let selector = selector.map(str::to_owned);
    let served = store.clone();
    let run = async move {
        // Served once their CRD is installed and they may be listed: looked
        // for again every 30 s until then.
        let api: Api<ClusterRunaiCredential> = Api::all(client.clone());
        let mut told = false;
        loop {
            match api.list_metadata(&ListParams::default().limit(1)).await {
                Ok(_) => break,
                Err(e) => {
                    if !told {
                        info!(error = %e, "not serving ClusterRunaiCredentials yet (their CRD is not installed, or they may not be listed); looking again every 30 s");
                        told = true;
                    }
                    tokio::select! {
                        () = stop.clone() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                    }
                }
            }
        }
        serve(
            &client,
            ctx,
            concurrency,
            selector.as_deref(),
            served,
            writer,
            stop,
        )
        .await;
    };
    (store, run)
}

/// Runs the controller on `store` (filled through `writer`) until `stop`.
async fn serve(
    client: &Client,
    ctx: Arc<Context>,
    concurrency: u16,
    selector: Option<&str>,
    store: Store<ClusterRunaiCredential>,
    writer: reflector::store::Writer<ClusterRunaiCredential>,
    stop: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    ctx.serve_clusters();
    let api: Api<ClusterRunaiCredential> = Api::all(client.clone());
    let mut config = super::cached_watch_config();
    if let Some(selector) = selector {
        config = config.labels(selector);
    }
    let (released, listed) = (ctx.clone(), ctx.clone());
    let changes = watcher(api, config)
        .backoff(super::watch_backoff())
        .modify(|crc: &mut ClusterRunaiCredential| {
            super::strip_for_cache(&mut crc.metadata);
        })
        .map_ok(move |event| {
            // Forgotten at once: its series and its memory.
            if let watcher::Event::Delete(crc) = &event {
                released
                    .metrics
                    .forget_credential(&CredentialLabels::new("", &crc.name_any()));
                if let Some(uid) = crc.uid() {
                    released.forget(&uid);
                }
            }
            event
        })
        .reflect(writer)
        // Once the store holds the complete list.
        .map_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                listed.prune_wanted.notify_one();
            }
            event
        })
        .applied_objects()
        .predicate_filter(
            reconcile_trigger,
            PredicateConfig::default().ttl(std::time::Duration::from_secs(25 * 3600)),
        );
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let namespace_changes = watcher(namespaces, super::cached_watch_config())
        .backoff(super::watch_backoff())
        .touched_objects();
    // Its Secrets, in every namespace served (one watch each with
    // `--namespace`, where only those may be read).
    let scopes: Vec<Api<PartialObjectMeta<Secret>>> = match &ctx.scope {
        None => vec![Api::all(client.clone())],
        Some(scope) => scope
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    };
    let labelled = futures::stream::select_all(scopes.into_iter().map(|secrets| {
        let relisted = ctx.clone();
        watcher(
            secrets,
            super::paged_watch_config().labels(CLUSTER_CREDENTIAL_LABEL),
        )
        .backoff(super::watch_backoff())
        // A new list may skip the versions of writes whose echo is awaited.
        .map_ok(move |event| {
            if matches!(event, watcher::Event::Init) {
                relisted.forget_unechoed_writes();
            }
            event
        })
        .touched_objects()
        .boxed()
    }));
    let own: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(client.clone(), &ctx.controller_namespace);
    let credentials = watcher(own, super::cached_watch_config())
        .backoff(super::watch_backoff())
        .touched_objects();
    let (for_namespaces, for_labelled, for_credentials) =
        (store.clone(), store.clone(), store.clone());
    let controller_namespace = ctx.controller_namespace.clone();
    let (namespace_ctx, labelled_ctx, credentials_ctx) = (ctx.clone(), ctx.clone(), ctx.clone());
    let own_namespace = controller_namespace.clone();
    info!("starting the ClusterRunaiCredential controller");
    // Debounced: a burst of namespace or Secret events makes one pass, and
    // the namespaces' store has caught up with the event that triggered it.
    Controller::for_stream(changes, store.clone())
        .with_config(
            ControllerConfig::default()
                .concurrency(concurrency)
                .debounce(std::time::Duration::from_secs(1)),
        )
        .watches_stream(namespace_changes, move |ns| {
            for_namespace(&for_namespaces, &namespace_ctx, &ns)
        })
        .watches_stream(labelled, move |secret| {
            for_secret(&for_labelled, &controller_namespace, &secret, &labelled_ctx)
        })
        .watches_stream(credentials, move |secret| {
            for_secret(&for_credentials, &own_namespace, &secret, &credentials_ctx)
        })
        .reconcile_on(futures::stream::unfold(
            ctx.exchange.subscribe_cluster(),
            |mut rx| async move { rx.recv().await.map(|m| (super::member_ref(m), rx)) },
        ))
        .graceful_shutdown_on(stop)
        .run(cluster::reconcile, cluster::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
