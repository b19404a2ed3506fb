//! Watches the installed CRDs of both kinds and names what they lack of
//! the ones this controller was built with ([`crate::api::gaps`]): one log
//! line per gap when it appears, and `runai_token_sync_crd_missing_fields`.
//! Reading CRDs needs a cluster-wide right that a namespaced installation
//! may not have: then nothing is checked, and it says so once.

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{info, warn};

use crate::{api::gaps, metrics::Metrics};

/// Watches the CRD `ours` names, for as long as the process runs.
pub async fn report_gaps(client: Client, metrics: Arc<Metrics>, ours: CustomResourceDefinition) {
    let name = ours.metadata.name.clone().unwrap_or_default();
    let ours = serde_json::to_value(&ours).unwrap_or_default();
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let config = super::cached_watch_config().fields(&format!("metadata.name={name}"));
    let mut said: Option<Vec<gaps::Gap>> = None;
    let mut events = std::pin::pin!(
        watcher(crds, config)
            .backoff(super::watch_backoff())
            .applied_objects()
    );
    while let Some(event) = events.next().await {
        match event {
            Ok(installed) => {
                let installed = serde_json::to_value(&installed).unwrap_or_default();
                let found = gaps::schema_gaps(&ours, &installed);
                metrics.set_crd_missing_fields(&name, found.len());
                if said.as_ref() != Some(&found) {
                    for gap in &found {
                        warn!(crd = %name, field = %gap.path, "the installed CRD is older than the controller: {}; upgrade the CRDs (helm upgrade, or kubectl apply --server-side -f crds/)", gap.meaning());
                    }
                    if found.is_empty() && said.is_some() {
                        info!(crd = %name, "the installed CRD now has every field the controller knows");
                    }
                    said = Some(found);
                }
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
            | Err(watcher::Error::WatchStartFailed(kube::Error::Api(status)))
                if status.code == 403 =>
            {
                info!(crd = %name, "cannot read CustomResourceDefinitions (no rights): fields the installed CRD lacks are not checked");
                return;
            }
            Err(_) => {}
        }
    }
}
