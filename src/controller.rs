//! Wiring: the watches that trigger reconciliations, start-up checks, and the
//! key for the hashes kept on target Secrets.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PartialObjectMeta, PostParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerConfig,
        events::{Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, warn};

use crate::{
    error::Error,
    reconciler::{self, Context, FIELD_MANAGER},
    resource::RunaiCredential,
    target_secret::{CREDENTIAL_LABEL, HashKey, MANAGED_BY, MANAGED_BY_LABEL},
    token_client::TokenClients,
};

/// Name of the Secret, in the controller's namespace, holding the hash key.
pub const HASH_KEY_SECRET: &str = "runai-token-sync-hash-key";
const HASH_KEY_DATA_KEY: &str = "key";

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// The controller's own namespace, where the hash key Secret lives.
    pub controller_namespace: String,
    /// Accept `http://` URLs (local testing only).
    pub allow_insecure_http: bool,
    /// Timeout of each token request.
    pub request_timeout: Duration,
    /// Reconciliations running at once, which bounds concurrent token requests.
    pub concurrency: u16,
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

/// Checks, with one clear line per failure, that the API server answers and
/// the CRD is installed.
pub async fn preflight(client: &Client, namespace: Option<&str>) -> Result<(), Error> {
    client
        .apiserver_version()
        .await
        .map_err(|e| Error::Startup(format!("cannot reach the Kubernetes API server: {e}")))?;
    let api: Api<RunaiCredential> = scoped(client, namespace);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::Startup(
            "the RunaiCredential CRD (runaicredentials.tokensync.dev) is not installed; install it with `runai-token-sync crd | kubectl apply -f -`".to_owned(),
        )),
        Err(e) => Err(Error::Startup(format!("cannot list RunaiCredentials: {e}"))),
    }
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

/// The RunaiCredentials a change of this Secret concerns: the one that
/// manages it (by label), those that write to it (by target name, so that a
/// conflicting Secret going away is noticed), and those reading their client
/// credentials from it.
pub fn credentials_for_secret(
    store: &Store<RunaiCredential>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<RunaiCredential>> {
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    let name = secret.name_any();
    let labels = secret.labels();
    let mut refs: Vec<ObjectRef<RunaiCredential>> = Vec::new();
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && let Some(owner) = labels.get(CREDENTIAL_LABEL)
    {
        refs.push(ObjectRef::new(owner).within(&namespace));
    }
    for cr in store.state() {
        if cr.namespace().as_deref() == Some(namespace.as_str())
            && (cr.spec.client_credentials_secret_ref.name == name
                || cr.target_secret_name() == name)
        {
            refs.push(ObjectRef::from(cr.as_ref()));
        }
    }
    refs.dedup();
    refs
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(client: Client, settings: Settings) -> Result<(), Error> {
    preflight(&client, settings.namespace.as_deref()).await?;
    let hash_key = load_or_create_hash_key(&client, &settings.controller_namespace).await?;
    let reporter = Reporter {
        controller: "runai-token-sync".to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        TokenClients::new(settings.request_timeout),
        hash_key,
        settings.allow_insecure_http,
    ));

    let namespace = settings.namespace.as_deref();
    let credentials: Api<RunaiCredential> = scoped(&client, namespace);
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&client, namespace);
    let controller = Controller::new(credentials, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency));
    let store = controller.store();
    // Metadata only: a change of any Secret's data bumps its resourceVersion,
    // which is all a trigger needs, and no Secret's data is ever held.
    let secret_changes =
        watcher(secrets, watcher::Config::default().any_semantic()).touched_objects();

    info!(
        namespace = namespace.unwrap_or("<all>"),
        "starting the RunaiCredential controller"
    );
    controller
        .watches_stream(secret_changes, move |secret| {
            credentials_for_secret(&store, &secret)
        })
        .shutdown_on_signal()
        .run(reconciler::reconcile, reconciler::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                match err {
                    kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                    other => warn!(error = %other, "controller event"),
                }
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}
