//! `runai-token-sync renew`: asks for an immediate refresh by setting the
//! refresh annotation, with the current kubeconfig.

use jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};

use crate::{
    api::{ClusterRunaiCredential, REFRESH_REQUESTED_AT_ANNOTATION, RunaiCredential},
    error::Error,
};

/// Which RunaiCredentials of a namespace to renew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// These, by name.
    Names(Vec<String>),
    /// Those matching a label selector (`team=ml,tier!=dev`).
    Selector(String),
    /// Every one in the namespace.
    All,
}

/// The outcome for one RunaiCredential.
#[derive(Debug)]
pub struct Renewed {
    pub name: String,
    pub result: Result<(), Error>,
}

/// Which kind `renew` annotates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// RunaiCredentials of this namespace.
    Namespaced(String),
    /// ClusterRunaiCredentials.
    Cluster,
}

/// Sets `tokensync.dev/refresh-requested-at` to `at` (RFC 3339 with
/// nanoseconds, so that every call is a new value) on the selected
/// RunaiCredentials (or ClusterRunaiCredentials), with a JSON merge patch
/// that touches nothing else.
///
/// # Errors
///
/// [`Error::Kube`] when they cannot be listed; the failure of one patch (a
/// name that does not exist, no right to patch) is in its [`Renewed`] entry
/// and does not stop the others.
pub async fn renew(
    client: Client,
    target: &Target,
    selection: &Selection,
    at: Timestamp,
) -> Result<Vec<Renewed>, Error> {
    match target {
        Target::Namespaced(namespace) => {
            let api: Api<RunaiCredential> = Api::namespaced(client, namespace);
            annotate(&api, selection, at).await
        }
        Target::Cluster => {
            let api: Api<ClusterRunaiCredential> = Api::all(client);
            annotate(&api, selection, at).await
        }
    }
}

async fn annotate<K>(
    api: &Api<K>,
    selection: &Selection,
    at: Timestamp,
) -> Result<Vec<Renewed>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let names = match selection {
        Selection::Names(names) => names.clone(),
        Selection::Selector(selector) => list(api, &ListParams::default().labels(selector)).await?,
        Selection::All => list(api, &ListParams::default()).await?,
    };
    let value = at.to_string();
    let patch = serde_json::json!({
        "metadata": {"annotations": {REFRESH_REQUESTED_AT_ANNOTATION: value}}
    });
    let mut renewed = Vec::with_capacity(names.len());
    for name in names {
        let result = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(Error::kube("setting the refresh annotation"));
        renewed.push(Renewed { name, result });
    }
    Ok(renewed)
}

async fn list<K>(api: &Api<K>, params: &ListParams) -> Result<Vec<String>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list_metadata(params)
        .await
        .map_err(Error::kube("listing the credentials"))?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect())
}
