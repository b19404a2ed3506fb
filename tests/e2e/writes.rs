//! Writing the target Secret (api.md, "Edge cases"): conditional writes,
//! refused writes, renamed targets and immutable Secrets, against the real
//! API server.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use runai_standin::Fault;
use serde_json::json;

use crate::harness::{Cluster, eventually, spec_for, standin_with, stays};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_secret_created_during_the_token_request_is_never_touched() {
    let cluster = Cluster::new("race").await;
    let standin = standin_with("app", "s3cr3t-race", HOUR).await;
    cluster.put_credentials("creds", "app", "s3cr3t-race").await;
    // The answer takes 3 s: time enough for someone else to take the name.
    standin.set_fault(Some(Fault::Delay(Duration::from_secs(3))));
    let controller = cluster.start_controller();
    cluster
        .create_credential("racer", spec_for(&standin, "creds"))
        .await;
    eventually(Duration::from_secs(10), "the token request", || async {
        (standin.requests("app") == 1).then_some(())
    })
    .await;
    let foreign: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "racer", "namespace": cluster.namespace},
        "stringData": {"mine": "not yours"},
    }))
    .unwrap();
    let foreign = cluster
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .expect("created while the controller waits for its token");

    let message = cluster.wait_not_ready("racer", "SecretConflict").await;
    assert!(message.contains("racer"), "{message}");
    let after = cluster.secret("racer").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, foreign.metadata.resource_version,
        "the foreign Secret is exactly as it was created"
    );
    assert!(after.metadata.owner_references.is_none());
    assert_eq!(standin.requests("app"), 1);
    controller.assert_logs_hold_none_of(&["s3cr3t-race"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_refused_write_is_reported_and_retried_with_the_same_token() {
    let cluster = Cluster::new("quota").await;
    let standin = standin_with("app", "s3cr3t-quota", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-quota")
        .await;
    let controller = cluster.start_controller();
    eventually(
        Duration::from_secs(10),
        "the controller's hash key Secret",
        || async { cluster.secret("runai-token-sync-hash-key").await.map(drop) },
    )
    .await;
    // A quota of two Secrets, used by the credentials and hash key Secrets.
    // Its status is set here as the quota controller would (the local plane
    // runs none).
    let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "one-secret"},
        "spec": {"hard": {"secrets": "2"}},
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    quotas
        .patch_status(
            "one-secret",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"hard": {"secrets": "2"}, "used": {"secrets": "2"}}})),
        )
        .await
        .unwrap();
    cluster
        .create_credential("limited", spec_for(&standin, "creds"))
        .await;

    let message = cluster.wait_not_ready("limited", "SecretWriteFailed").await;
    assert!(message.contains("limited"), "{message}");
    let events = cluster.events("limited").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "SecretWriteFailed"),
        "{events:?}"
    );
    // Retries (5 s, 10 s …) write the token already obtained.
    stays(
        Duration::from_secs(12),
        "no new token request per retry",
        || async { standin.requests("app") == 1 },
    )
    .await;
    let retried = cluster.credentials().get("limited").await.unwrap();
    assert!(
        retried.status.unwrap().failed_attempts >= 2,
        "positive control: the write was retried meanwhile"
    );

    quotas
        .delete("one-secret", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .wait_condition("limited", "Ready", "True", Duration::from_secs(30))
        .await;
    assert_eq!(
        standin.requests("app"),
        1,
        "the first token was written at last"
    );
    cluster
        .assert_nothing_leaks(&controller, &["s3cr3t-quota"])
        .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn renamed_targets_are_deleted_or_released() {
    let cluster = Cluster::new("rename").await;
    let standin = standin_with("app", "s3cr3t-rename", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-rename")
        .await;
    let _controller = cluster.start_controller();
    for (name, policy) in [("deleting", "Delete"), ("retaining", "Retain")] {
        let mut spec = spec_for(&standin, "creds");
        spec["target"] = json!({
            "name": format!("{name}-v1"),
            "deletionPolicy": policy,
            "labels": {"team": "ml"},
        });
        cluster.create_credential(name, spec).await;
        cluster.wait_ready(name).await;
        cluster
            .patch_credential(
                name,
                json!({"spec": {"target": {"name": format!("{name}-v2")}}}),
            )
            .await;
    }
    for name in ["deleting", "retaining"] {
        eventually(Duration::from_secs(20), "the new target", || async {
            cluster.secret(&format!("{name}-v2")).await.map(drop)
        })
        .await;
    }
    eventually(
        Duration::from_secs(20),
        "the old Delete target is gone",
        || async { cluster.secret("deleting-v1").await.is_none().then_some(()) },
    )
    .await;
    let released = eventually(
        Duration::from_secs(20),
        "the old Retain target is released",
        || async {
            let secret = cluster.secret("retaining-v1").await?;
            let labels = secret.metadata.labels.clone().unwrap_or_default();
            (!labels.contains_key("tokensync.dev/credential")).then_some(secret)
        },
    )
    .await;
    let labels = released.metadata.labels.clone().unwrap_or_default();
    assert!(!labels.contains_key("app.kubernetes.io/managed-by"));
    assert_eq!(labels.get("team").map(String::as_str), Some("ml"));
    assert!(
        released
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("tokensync.dev/"))
    );
    assert!(
        released
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    assert!(
        released.data.unwrap().contains_key("accessToken"),
        "the data stays"
    );
    // A released Secret is no longer put right: edit it, nothing happens.
    cluster
        .secrets()
        .patch(
            "retaining-v1",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"accessToken": "ZWRpdGVk"}})),
        )
        .await
        .unwrap();
    stays(
        Duration::from_secs(3),
        "the released Secret stays edited",
        || async {
            cluster
                .token("retaining-v1", "accessToken")
                .await
                .as_deref()
                == Some("edited")
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn an_immutable_secret_is_replaced_on_refresh() {
    let cluster = Cluster::new("immutable").await;
    let standin = standin_with("app", "s3cr3t-imm", HOUR).await;
    cluster.put_credentials("creds", "app", "s3cr3t-imm").await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("frozen", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("frozen").await;
    let before = cluster
        .secrets()
        .patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"immutable": true})),
        )
        .await
        .unwrap();
    cluster
        .patch_credential(
            "frozen",
            json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "1"}}}),
        )
        .await;
    let after = eventually(
        Duration::from_secs(20),
        "the Secret is replaced",
        || async {
            let secret = cluster.secret("frozen").await?;
            (secret.metadata.uid != before.metadata.uid).then_some(secret)
        },
    )
    .await;
    assert_ne!(after.immutable, Some(true));
    cluster
        .wait_condition("frozen", "Degraded", "False", Duration::from_secs(10))
        .await;
    assert_eq!(standin.requests("app"), 2);
}
