//! Writing the target Secret (api.md, "Edge cases"): conditional writes,
//! refused writes, renamed targets and immutable Secrets, against the real
//! API server.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use runai_standin::Fault;
use runai_token_sync::RunaiCredential;
use serde_json::json;

use crate::harness::{Cluster, Controller, eventually, spec_for, standin_with, stays};

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

/// A RunaiCredential in a namespace being deleted gets no token request and
/// no write, even when a refresh is asked for; one in a live namespace, asked
/// at the same moment, is refreshed (the positive control).
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_terminating_namespace_gets_no_request_and_no_write() {
    use k8s_openapi::api::core::v1::Namespace;
    // Its own plane: its namespace controller is stopped so that the deleted
    // namespace stays Terminating with its objects.
    let Some(plane) = crate::chaos::OwnPlane::start() else {
        eprintln!("skipped: no local Kubernetes binaries for a plane of this test's own");
        return;
    };
    let cluster = Cluster::on(plane.kubeconfig.clone(), "terminating").await;
    let doomed_ns = cluster.extra_namespace("doomed").await;
    let standin = standin_with("app-alive", "s3cr3t-alive", HOUR).await;
    standin.set_client("app-doomed", "s3cr3t-doomed", HOUR);
    cluster
        .put_credentials("creds", "app-alive", "s3cr3t-alive")
        .await;
    crate::harness::put_credentials_in(
        &cluster.client,
        &doomed_ns,
        "creds",
        "app-doomed",
        "s3cr3t-doomed",
    )
    .await;
    // And a member of the live namespace's group: the same application.
    crate::harness::put_credentials_in(
        &cluster.client,
        &doomed_ns,
        "alive-creds",
        "app-alive",
        "s3cr3t-alive",
    )
    .await;
    let doomed: Api<RunaiCredential> = Api::namespaced(cluster.client.clone(), &doomed_ns);
    let spec = spec_for(&standin, "creds");
    for (name, spec) in [
        ("doomed", spec.clone()),
        ("doomed-shared", spec_for(&standin, "alive-creds")),
    ] {
        doomed
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
                    "metadata": {"name": name}, "spec": spec,
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    cluster.create_credential("alive", spec).await;
    // Watching every namespace.
    let controller = Controller::start_raw(
        &plane.kubeconfig,
        &["--controller-namespace", &cluster.namespace],
    );
    cluster.wait_ready("alive").await;
    let doomed_secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &doomed_ns);
    let written = eventually(
        Duration::from_secs(20),
        "the doomed namespace's token",
        || async { doomed_secrets.get_opt("doomed").await.ok().flatten() },
    )
    .await;
    let shared = eventually(
        Duration::from_secs(20),
        "the doomed namespace's shared token",
        || async { doomed_secrets.get_opt("doomed-shared").await.ok().flatten() },
    )
    .await;
    assert_eq!(
        (
            standin.requests("app-alive"),
            standin.requests("app-doomed")
        ),
        (1, 1)
    );
    // Positive control: the group's token reaches its member there.
    assert_eq!(
        shared.data.as_ref().unwrap()["accessToken"],
        cluster.secret("alive").await.unwrap().data.unwrap()["accessToken"]
    );

    assert!(
        plane.stop_controller_manager(),
        "the namespace controller stops"
    );
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    namespaces
        .delete(&doomed_ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the namespace is Terminating",
        || async {
            let ns = namespaces.get(&doomed_ns).await.ok()?;
            (ns.status?.phase.as_deref() == Some("Terminating")).then_some(())
        },
    )
    .await;

    let refresh =
        json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "now"}}});
    doomed
        .patch("doomed", &PatchParams::default(), &Patch::Merge(&refresh))
        .await
        .unwrap();
    cluster.patch_credential("alive", refresh).await;
    eventually(
        Duration::from_secs(20),
        "the live namespace's refresh",
        || async { (standin.requests("app-alive") == 2).then_some(()) },
    )
    .await;
    stays(
        Duration::from_secs(5),
        "no request for the Terminating namespace",
        || async { standin.requests("app-doomed") == 1 },
    )
    .await;
    let after = doomed_secrets.get("doomed").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, written.metadata.resource_version,
        "the Secret in the Terminating namespace was written"
    );
    // The group's new token (the live one's refresh) is not written there.
    let after = doomed_secrets.get("doomed-shared").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, shared.metadata.resource_version,
        "the group's new token was written in the Terminating namespace"
    );
    assert!(
        controller.logs().contains("the namespace is being deleted"),
        "the controller says why it does nothing"
    );
}

/// api.md, "The target Secret's metadata": what the controller stops setting
/// leaves the Secret (an output, a `target.labels` and a `target.annotations`
/// key, the answered refresh request), what others set stays, and none of it
/// costs a token, before or after a restart.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn what_the_controller_stops_setting_leaves_the_secret() {
    let cluster = Cluster::new("tidy").await;
    let standin = standin_with("app", "s3cr3t-tidy", HOUR).await;
    cluster.put_credentials("creds", "app", "s3cr3t-tidy").await;
    let mut controller = cluster.start_controller();
    let mut spec = spec_for(&standin, "creds");
    spec["target"] = json!({
        "labels": {"team": "ml", "tier": "gold"},
        "annotations": {"note": "first"},
        "outputs": [{"key": "authorization", "format": "BearerHeader"}],
    });
    let credential: RunaiCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "RunaiCredential",
        "metadata": {
            "name": "tidy",
            "namespace": cluster.namespace,
            "annotations": {"tokensync.dev/refresh-requested-at": "first"},
        },
        "spec": spec,
    }))
    .unwrap();
    cluster
        .credentials()
        .create(&PostParams::default(), &credential)
        .await
        .unwrap();
    cluster.wait_ready("tidy").await;
    let first = cluster.secret("tidy").await.unwrap();
    // Positive control: all that is removed below was written.
    let labels = first.metadata.labels.clone().unwrap_or_default();
    let annotations = first.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(labels.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(annotations.get("note").map(String::as_str), Some("first"));
    assert!(annotations.contains_key("tokensync.dev/answered-refresh-request"));
    assert!(first.data.as_ref().unwrap().contains_key("authorization"));
    assert_eq!(standin.requests("app"), 1);
    let token = cluster.token("tidy", "accessToken").await.unwrap();

    // Someone else's label, annotation and key on the managed Secret.
    cluster
        .secrets()
        .patch(
            "tidy",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "tidy", "labels": {"theirs": "x"},
                             "annotations": {"theirs": "y"}},
                "data": {"theirs": "eg=="},
            })),
        )
        .await
        .unwrap();
    cluster
        .credentials()
        .patch(
            "tidy",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"tokensync.dev/refresh-requested-at": null}},
                "spec": {"target": {"labels": {"tier": null}, "annotations": null, "outputs": null}},
            })),
        )
        .await
        .unwrap();
    let tidied = eventually(
        Duration::from_secs(15),
        "the label, annotation, output and answered request removed",
        || async {
            let secret = cluster.secret("tidy").await?;
            let labels = secret.metadata.labels.clone().unwrap_or_default();
            let annotations = secret.metadata.annotations.clone().unwrap_or_default();
            let data = secret.data.clone().unwrap_or_default();
            (!labels.contains_key("tier")
                && !annotations.contains_key("note")
                && !annotations.contains_key("tokensync.dev/answered-refresh-request")
                && !data.contains_key("authorization"))
            .then_some(secret)
        },
    )
    .await;
    let labels = tidied.metadata.labels.clone().unwrap_or_default();
    let annotations = tidied.metadata.annotations.clone().unwrap_or_default();
    let data = tidied.data.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("ml"));
    assert_eq!(labels.get("theirs").map(String::as_str), Some("x"));
    assert_eq!(annotations.get("theirs").map(String::as_str), Some("y"));
    assert!(data.contains_key("theirs"), "someone else's key stays");
    let unchanged = || async {
        standin.requests("app") == 1
            && cluster.token("tidy", "accessToken").await.as_deref() == Some(token.as_str())
    };
    stays(Duration::from_secs(5), "the token is kept", unchanged).await;
    let settled = cluster
        .secret("tidy")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert!(controller.stop(), "the controller stops");
    let _controller = cluster.start_controller();
    stays(
        Duration::from_secs(8),
        "the token is kept after a restart",
        unchanged,
    )
    .await;
    assert_eq!(
        cluster
            .secret("tidy")
            .await
            .unwrap()
            .metadata
            .resource_version,
        settled,
        "a quiet restart writes nothing"
    );
}

/// api.md, "Recreated credentials": a RunaiCredential deleted (its Secret
/// orphaned, as Argo CD's `Replace=true` or a Helm reinstall may leave it)
/// and created again under the same name takes over its Secret, token and
/// all, with no conflict and no token request.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_recreated_credential_takes_over_its_secret() {
    let cluster = Cluster::new("recreated").await;
    let standin = standin_with("app", "s3cr3t-recreated", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-recreated")
        .await;
    let _controller = cluster.start_controller();
    let first = cluster
        .create_credential("again", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("again").await;
    let token = cluster.token("again", "accessToken").await.unwrap();
    let owner = |s: &Secret| {
        s.metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.uid)
            .collect::<Vec<_>>()
    };
    // Positive control: owned by the first object.
    assert_eq!(
        owner(&cluster.secret("again").await.unwrap()),
        vec![first.metadata.uid.clone().unwrap()]
    );
    cluster
        .credentials()
        .delete(
            "again",
            &DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the first object gone", || async {
        cluster
            .credentials()
            .get_opt("again")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let second = cluster
        .create_credential("again", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("again").await;
    let adopted = eventually(Duration::from_secs(20), "the Secret adopted", || async {
        let secret = cluster.secret("again").await?;
        (owner(&secret) == vec![second.metadata.uid.clone().unwrap()]).then_some(secret)
    })
    .await;
    assert_eq!(
        adopted.data.unwrap()["accessToken"].0,
        token.as_bytes(),
        "its token is reused"
    );
    assert_eq!(standin.requests("app"), 1, "no token request");
}

/// api.md, "What a change costs": labels, annotations, outputs, the
/// deletion policy and a longer refresh interval are applied with the token
/// held; another credentials Secret (what defines the credential) mints a
/// new one at once.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn only_what_defines_a_credential_costs_a_token() {
    let cluster = Cluster::new("cost").await;
    let standin = standin_with("app", "s3cr3t-cost", HOUR).await;
    cluster.put_credentials("creds", "app", "s3cr3t-cost").await;
    cluster
        .put_credentials("creds-copy", "app", "s3cr3t-cost")
        .await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("cost", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("cost").await;
    let token = cluster.token("cost", "accessToken").await.unwrap();
    assert_eq!(standin.requests("app"), 1);
    cluster
        .patch_credential(
            "cost",
            json!({"spec": {"refreshInterval": "50m", "target": {
                "labels": {"team": "ml"},
                "annotations": {"note": "x"},
                "deletionPolicy": "Retain",
                "outputs": [{"key": "authorization", "format": "BearerHeader"}],
            }}}),
        )
        .await;
    let edited = eventually(Duration::from_secs(15), "the edit applied", || async {
        let secret = cluster.secret("cost").await?;
        let labelled = secret
            .metadata
            .labels
            .as_ref()?
            .get("team")
            .map(String::as_str)
            == Some("ml");
        let output = secret.data.as_ref()?.contains_key("authorization");
        let released = secret
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|o| o.is_empty());
        (labelled && output && released).then_some(secret)
    })
    .await;
    assert_eq!(edited.data.unwrap()["accessToken"].0, token.as_bytes());
    let observed = cluster.wait_ready("cost").await;
    assert_eq!(
        observed.status.unwrap().observed_generation,
        observed.metadata.generation
    );
    stays(
        Duration::from_secs(3),
        "no token for a cosmetic edit",
        || async { standin.requests("app") == 1 },
    )
    .await;
    let events = cluster.events("cost").await;
    assert_eq!(
        events
            .iter()
            .filter(|(_, reason, _)| reason == "TokenIssued")
            .count(),
        1,
        "no second 'Wrote a new token': {events:?}"
    );
    // Positive control: another credentials Secret defines it anew.
    cluster
        .patch_credential(
            "cost",
            json!({"spec": {"clientCredentialsSecretRef": {"name": "creds-copy"}}}),
        )
        .await;
    eventually(Duration::from_secs(15), "a new token", || async {
        (standin.requests("app") == 2).then_some(())
    })
    .await;
}
