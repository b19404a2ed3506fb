//! End-to-end tests: the controller's real binary against a real Kubernetes
//! API server and the Run:ai stand-in.
//!
//! They need a cluster, named by `RUNAI_TOKEN_SYNC_E2E_KUBECONFIG`, and are
//! therefore marked ignored for a plain `cargo test`; `hack/test.sh` starts a
//! local control plane and runs them. Each test has its own namespace and its
//! own controller process, and polls for conditions rather than sleeping.

mod chaos;
mod cli;
mod cluster;
mod crds;
mod edge;
mod faults;
mod generations;
mod gitops;
mod harness;
mod ops;
mod plane;
mod proxy;
mod sdk;
mod shared;
mod webhook;
mod writes;

use std::time::Duration;

use harness::{Cluster, eventually, jwt_claims, spec_for, standin_with, stays};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use runai_standin::{Client as StandInClient, Fault};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn becomes_ready_with_a_well_formed_secret() {
    let cluster = Cluster::new("ready").await;
    let standin = standin_with("app-ready", "s3cr3t-ready", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-ready", "s3cr3t-ready")
        .await;
    let controller = cluster.start_controller();
    let mut spec = spec_for(&standin, "runai-client");
    spec["target"] = json!({
        "name": "ready-token",
        "labels": {"team": "ml"},
        "annotations": {"owner": "pipelines"},
    });
    let created = cluster.create_credential("trainer", spec).await;

    let cr = cluster.wait_ready("trainer").await;
    let secret = cluster
        .secret("ready-token")
        .await
        .expect("the target Secret exists");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let data = secret.data.clone().unwrap();
    let token = String::from_utf8(data["accessToken"].0.clone()).unwrap();
    assert_eq!(
        jwt_claims(&token)["sub"],
        "app-ready",
        "the raw token, no Bearer prefix"
    );
    let expires_at: jiff::Timestamp = std::str::from_utf8(&data["expiresAt"].0)
        .unwrap()
        .parse()
        .unwrap();
    let lifetime = expires_at.duration_since(jiff::Timestamp::now());
    assert!(
        lifetime > jiff::SignedDuration::from_mins(55),
        "expiresAt ~1h ahead, got {lifetime:?}"
    );

    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "runai-token-sync");
    assert_eq!(labels["tokensync.dev/credential"], "trainer");
    assert_eq!(labels["team"], "ml");
    assert_eq!(
        secret.metadata.annotations.clone().unwrap()["owner"],
        "pipelines"
    );
    let owners = secret.metadata.owner_references.clone().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].uid, created.metadata.uid.clone().unwrap());
    assert_eq!(owners[0].kind, "RunaiCredential");
    assert_eq!(owners[0].controller, Some(true));

    let status = cr.status.clone().unwrap();
    assert_eq!(status.secret_name.as_deref(), Some("ready-token"));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.failed_attempts, 0);
    assert!(status.last_refresh_time.is_some() && status.next_refresh_time.is_some());
    assert_eq!(
        status.expiration_time.as_deref(),
        Some(std::str::from_utf8(&data["expiresAt"].0).unwrap())
    );
    assert_eq!(cr.condition("Degraded").unwrap().status, "False");
    let events = cluster.events("trainer").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "TokenIssued"),
        "{events:?}"
    );
    assert_eq!(standin.requests("app-ready"), 1);

    // Nothing secret in the status, the Events or the logs.
    let visible = format!(
        "{:?} {events:?}",
        serde_json::to_string(&cr.status).unwrap()
    );
    assert!(!visible.contains(&token) && !visible.contains("s3cr3t-ready"));
    controller.assert_logs_hold_none_of(&[&token, "s3cr3t-ready"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn refreshes_before_the_token_expires() {
    let cluster = Cluster::new("expiry").await;
    let standin = standin_with("app-expiry", "s3cr3t-expiry", Duration::from_secs(24)).await;
    cluster
        .put_credentials("runai-client", "app-expiry", "s3cr3t-expiry")
        .await;
    let controller = cluster.start_controller();
    cluster
        .create_credential("short", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("short").await;

    let first = cluster.token("short", "accessToken").await.unwrap();
    let first_exp = jwt_claims(&first)["exp"].as_i64().unwrap();
    let second = eventually(Duration::from_secs(30), "a new token", || async {
        cluster
            .token("short", "accessToken")
            .await
            .filter(|t| *t != first)
    })
    .await;
    // Written before the first one expired: at half of its 24 s (a token
    // this short is refreshed at half its lifetime).
    assert!(
        jiff::Timestamp::now().as_second() < first_exp,
        "the token was replaced only after it expired"
    );
    assert!(jwt_claims(&second)["exp"].as_i64().unwrap() > first_exp);
    let cr = cluster.wait_ready("short").await;
    assert_eq!(cr.condition("Degraded").unwrap().status, "False");
    controller.assert_logs_hold_none_of(&[&first, &second, "s3cr3t-expiry"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn rotated_credentials_take_effect_at_once() {
    let cluster = Cluster::new("rotate").await;
    let standin = standin_with("app-rotate", "old-s3cr3t", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-rotate", "old-s3cr3t")
        .await;
    let controller = cluster.start_controller();
    cluster
        .create_credential("rotating", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("rotating").await;
    let first = cluster.token("rotating", "accessToken").await.unwrap();

    // Regenerating the secret in Run:ai revokes the old one at once.
    standin.set_client("app-rotate", "new-s3cr3t", HOUR);
    cluster
        .put_credentials("runai-client", "app-rotate", "new-s3cr3t")
        .await;
    let second = eventually(
        Duration::from_secs(15),
        "a token from the new secret",
        || async {
            cluster
                .token("rotating", "accessToken")
                .await
                .filter(|t| *t != first)
        },
    )
    .await;
    cluster.wait_ready("rotating").await;
    assert_eq!(standin.requests("app-rotate"), 2);
    controller.assert_logs_hold_none_of(&[&first, &second, "old-s3cr3t", "new-s3cr3t"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn an_outage_keeps_the_token_and_degrades() {
    let cluster = Cluster::new("outage").await;
    let standin = standin_with("app-outage", "s3cr3t-outage", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-outage", "s3cr3t-outage")
        .await;
    let controller = cluster.start_controller();
    cluster
        .create_credential("outage", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("outage").await;
    let token = cluster.token("outage", "accessToken").await.unwrap();

    standin.set_fault(Some(Fault::Status {
        code: 503,
        retry_after: Some(2),
    }));
    cluster
        .patch_credential("outage", json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "outage-1"}}}))
        .await;
    let cr = cluster
        .wait_condition("outage", "Degraded", "True", Duration::from_secs(15))
        .await;
    let degraded = cr.condition("Degraded").unwrap();
    assert_eq!(degraded.reason, "TokenEndpointError");
    assert!(
        degraded.message.contains("valid until"),
        "{}",
        degraded.message
    );
    assert_eq!(
        cr.condition("Ready").unwrap().status,
        "True",
        "a valid token is still there"
    );
    assert!(cr.status.as_ref().unwrap().failed_attempts >= 1);
    assert_eq!(
        cluster.token("outage", "accessToken").await.as_deref(),
        Some(token.as_str())
    );
    let events = cluster.events("outage").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "TokenEndpointError"),
        "{events:?}"
    );

    // Retries follow Retry-After (2 s) and back off: a handful, not a flood.
    let during = standin.requests("app-outage");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let retries = standin.requests("app-outage") - during;
    assert!((1..=3).contains(&retries), "{retries} retries in 6 s");

    standin.set_fault(None);
    let cr = cluster
        .wait_condition("outage", "Degraded", "False", Duration::from_secs(30))
        .await;
    assert_eq!(cr.condition("Ready").unwrap().status, "True");
    assert_eq!(cr.status.unwrap().failed_attempts, 0);
    let recovered = cluster.token("outage", "accessToken").await.unwrap();
    assert_ne!(
        recovered, token,
        "the requested refresh happened once the endpoint was back"
    );
    controller.assert_logs_hold_none_of(&[&token, &recovered, "s3cr3t-outage"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn each_failure_is_reported_with_its_reason() {
    let cluster = Cluster::new("failures").await;
    let standin = standin_with("app-fail", "s3cr3t-fail", HOUR).await;
    cluster
        .put_credentials("good", "app-fail", "s3cr3t-fail")
        .await;
    cluster
        .put_credentials("wrong", "app-fail", "not-the-s3cr3t")
        .await;
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken"}, "stringData": {"mine": "keep me"}
    }))
    .unwrap();
    let foreign = cluster
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let controller = cluster.start_controller();

    let mut bad_credentials = spec_for(&standin, "wrong");
    bad_credentials["target"] = json!({"name": "bad-credentials"});
    cluster
        .create_credential("bad-credentials", bad_credentials)
        .await;
    let mut missing = spec_for(&standin, "absent");
    missing["target"] = json!({"name": "missing"});
    cluster.create_credential("missing", missing).await;
    let mut conflict = spec_for(&standin, "good");
    conflict["target"] = json!({"name": "taken"});
    cluster.create_credential("conflict", conflict).await;
    let mut untrusted = spec_for(&standin, "good");
    untrusted.as_object_mut().unwrap().remove("caBundle");
    cluster.create_credential("untrusted", untrusted).await;
    let mut bad_interval = spec_for(&standin, "good");
    bad_interval["refreshInterval"] = json!("often");
    cluster
        .create_credential("bad-interval", bad_interval)
        .await;
    let mut plain_http = spec_for(&standin, "good");
    plain_http["url"] = json!(standin.url().replace("https://", "http://"));
    cluster.create_credential("plain-http", plain_http).await;

    let message = cluster
        .wait_not_ready("bad-credentials", "InvalidCredentials")
        .await;
    assert!(message.contains("401"), "{message}");
    let message = cluster
        .wait_not_ready("missing", "CredentialsNotFound")
        .await;
    assert!(message.contains("absent"), "{message}");
    cluster.wait_not_ready("conflict", "SecretConflict").await;
    let message = cluster
        .wait_not_ready("untrusted", "TokenEndpointError")
        .await;
    assert!(
        message.contains("TLS") && message.contains("caBundle"),
        "{message}"
    );
    let message = cluster.wait_not_ready("bad-interval", "InvalidSpec").await;
    assert!(message.contains("spec.refreshInterval"), "{message}");
    let message = cluster.wait_not_ready("plain-http", "InvalidSpec").await;
    assert!(message.contains("spec.url"), "{message}");

    // The foreign Secret is untouched, and no token was written anywhere.
    let after = cluster.secret("taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        foreign.metadata.resource_version
    );
    for name in [
        "bad-credentials",
        "missing",
        "untrusted",
        "bad-interval",
        "plain-http",
    ] {
        assert!(cluster.secret(name).await.is_none(), "{name} got a Secret");
    }
    for name in ["bad-credentials", "missing", "conflict"] {
        let events = cluster.events(name).await;
        assert!(
            events.iter().any(|(t, _, _)| t == "Warning"),
            "{name}: {events:?}"
        );
    }
    controller.assert_logs_hold_none_of(&["s3cr3t-fail", "not-the-s3cr3t"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn the_refresh_annotation_refreshes_once_per_value() {
    let cluster = Cluster::new("annotation").await;
    let standin = standin_with("app-annot", "s3cr3t-annot", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-annot", "s3cr3t-annot")
        .await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("annotated", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("annotated").await;
    let first = cluster.token("annotated", "accessToken").await.unwrap();

    let request = |value: &str| json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": value}}});
    cluster
        .patch_credential("annotated", request("2026-01-01T00:00:00Z"))
        .await;
    eventually(Duration::from_secs(10), "a refreshed token", || async {
        cluster
            .token("annotated", "accessToken")
            .await
            .filter(|t| *t != first)
    })
    .await;
    assert_eq!(standin.requests("app-annot"), 2);

    // Another change that leaves the value as it is asks for nothing.
    cluster
        .patch_credential(
            "annotated",
            json!({"metadata": {"annotations": {"unrelated": "x"}}}),
        )
        .await;
    stays(
        Duration::from_secs(3),
        "no further token request",
        || async { standin.requests("app-annot") == 2 },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_tampered_or_deleted_secret_is_put_right() {
    let cluster = Cluster::new("tamper").await;
    let standin = standin_with("app-tamper", "s3cr3t-tamper", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-tamper", "s3cr3t-tamper")
        .await;
    let _controller = cluster.start_controller();
    let mut spec = spec_for(&standin, "runai-client");
    spec["target"] = json!({"labels": {"team": "ml"}});
    cluster.create_credential("guarded", spec).await;
    cluster.wait_ready("guarded").await;

    // A label removed is put back, without a new token.
    let token = cluster.token("guarded", "accessToken").await.unwrap();
    cluster
        .secrets()
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": null}}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the label is back", || async {
        let secret = cluster.secret("guarded").await?;
        (secret.metadata.labels?.get("team").map(String::as_str) == Some("ml")).then_some(())
    })
    .await;
    assert_eq!(
        cluster.token("guarded", "accessToken").await.as_deref(),
        Some(token.as_str())
    );
    assert_eq!(standin.requests("app-tamper"), 1);

    // A token overwritten by hand is replaced by a valid one.
    cluster
        .secrets()
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"accessToken": "forged"}})),
        )
        .await
        .unwrap();
    // The Secret was the only copy of the valid token (a group of one keeps
    // no text in memory): a new one replaces the forged one.
    let replaced = eventually(
        Duration::from_secs(10),
        "the forged token is replaced",
        || async {
            cluster
                .token("guarded", "accessToken")
                .await
                .filter(|t| t != "forged")
        },
    )
    .await;
    assert_ne!(replaced, token);
    assert_eq!(jwt_claims(&replaced)["sub"], "app-tamper");
    assert_eq!(standin.requests("app-tamper"), 2);

    // A deleted Secret comes back.
    cluster
        .secrets()
        .delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the Secret is recreated",
        || async { cluster.token("guarded", "accessToken").await },
    )
    .await;
    cluster.wait_ready("guarded").await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn deletion_policies_with_real_garbage_collection() {
    let cluster = Cluster::new("deletion").await;
    let standin = standin_with("app-del", "s3cr3t-del", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-del", "s3cr3t-del")
        .await;
    let _controller = cluster.start_controller();
    let mut retained = spec_for(&standin, "runai-client");
    retained["target"] = json!({"deletionPolicy": "Retain"});
    cluster
        .create_credential("deleted", spec_for(&standin, "runai-client"))
        .await;
    cluster.create_credential("retained", retained).await;
    // Created under Delete, then switched to Retain: its owner reference goes.
    cluster
        .create_credential("switched", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("deleted").await;
    cluster.wait_ready("retained").await;
    cluster.wait_ready("switched").await;
    assert_eq!(
        cluster
            .secret("switched")
            .await
            .unwrap()
            .metadata
            .owner_references
            .map(|o| o.len()),
        Some(1)
    );
    cluster
        .patch_credential(
            "switched",
            json!({"spec": {"target": {"deletionPolicy": "Retain"}}}),
        )
        .await;
    eventually(
        Duration::from_secs(15),
        "the switched Secret loses its owner",
        || async {
            let secret = cluster.secret("switched").await?;
            secret
                .metadata
                .owner_references
                .unwrap_or_default()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let retained_secret = cluster.secret("retained").await.unwrap();
    assert!(
        retained_secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    cluster
        .credentials()
        .delete("deleted", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .credentials()
        .delete("retained", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .credentials()
        .delete("switched", &DeleteParams::default())
        .await
        .unwrap();
    // The garbage collector can take ~30 s to notice a new CRD's objects.
    eventually(
        Duration::from_secs(90),
        "the owned Secret is garbage-collected",
        || async { cluster.secret("deleted").await.is_none().then_some(()) },
    )
    .await;
    let kept = cluster
        .secret("retained")
        .await
        .expect("the Retain Secret stays");
    assert!(kept.data.unwrap().contains_key("accessToken"));
    let switched = cluster
        .secret("switched")
        .await
        .expect("the Secret switched to Retain stays");
    assert!(switched.data.unwrap().contains_key("accessToken"));
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_restart_requests_no_fresh_token() {
    let cluster = Cluster::new("restart").await;
    let standin = standin_with("app-restart", "s3cr3t-restart", HOUR).await;
    standin.set_client("app-probe", "s3cr3t-probe", HOUR);
    cluster
        .put_credentials("runai-client", "app-restart", "s3cr3t-restart")
        .await;
    cluster
        .put_credentials("probe-client", "app-probe", "s3cr3t-probe")
        .await;
    let mut controller = cluster.start_controller();
    for name in ["one", "two", "three"] {
        cluster
            .create_credential(name, spec_for(&standin, "runai-client"))
            .await;
    }
    for name in ["one", "two", "three"] {
        cluster.wait_ready(name).await;
    }
    // One Run:ai application: one exchange serves all three.
    assert_eq!(standin.requests("app-restart"), 1);
    let one = cluster.token("one", "accessToken").await;
    assert!(one.is_some());
    for name in ["two", "three"] {
        assert_eq!(
            cluster.token(name, "accessToken").await,
            one,
            "{name} holds the shared token"
        );
    }
    let status = cluster
        .credentials()
        .get("three")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.shared_with, 2);
    let versions = |secrets: Vec<Option<Secret>>| {
        secrets
            .into_iter()
            .map(|s| s.and_then(|s| s.metadata.resource_version))
            .collect::<Vec<_>>()
    };
    let before = versions(vec![
        cluster.secret("one").await,
        cluster.secret("two").await,
        cluster.secret("three").await,
    ]);

    assert!(controller.stop(), "a graceful shutdown exits 0");
    let _restarted = cluster.start_controller();
    // A new credential becoming Ready shows the new process has done its first pass.
    cluster
        .create_credential("probe", spec_for(&standin, "probe-client"))
        .await;
    cluster.wait_ready("probe").await;
    stays(
        Duration::from_secs(2),
        "no token requested for fresh credentials",
        || async { standin.requests("app-restart") == 1 },
    )
    .await;
    let after = versions(vec![
        cluster.secret("one").await,
        cluster.secret("two").await,
        cluster.secret("three").await,
    ]);
    assert_eq!(before, after, "the Secrets were not written");
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_namespaced_controller_leaves_other_namespaces_alone() {
    let cluster = Cluster::new("isolation").await;
    let other = cluster.extra_namespace("other").await;
    let standin = standin_with("app-iso", "s3cr3t-iso", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-iso", "s3cr3t-iso")
        .await;
    harness::put_credentials_in(
        &cluster.client,
        &other,
        "runai-client",
        "app-iso",
        "s3cr3t-iso",
    )
    .await;
    let _controller = cluster.start_controller();
    let others: kube::Api<runai_token_sync::RunaiCredential> =
        kube::Api::namespaced(cluster.client.clone(), &other);
    let outside: runai_token_sync::RunaiCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
        "metadata": {"name": "outside", "namespace": other},
        "spec": spec_for(&standin, "runai-client"),
    }))
    .unwrap();
    others
        .create(&PostParams::default(), &outside)
        .await
        .unwrap();
    cluster
        .create_credential("inside", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("inside").await;
    stays(
        Duration::from_secs(2),
        "the other namespace is not touched",
        || async {
            others
                .get("outside")
                .await
                .map(|cr| cr.status.is_none())
                .unwrap_or(false)
        },
    )
    .await;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(cluster.client.clone(), &other);
    assert!(secrets.get_opt("outside").await.unwrap().is_none());
    assert_eq!(standin.requests("app-iso"), 1);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn v2_and_app_token_generations() {
    let cluster = Cluster::new("generations").await;
    let standin = standin_with("app-v2", "s3cr3t-v2", HOUR).await;
    standin.set_client("app-legacy", "s3cr3t-legacy", HOUR);
    // Old releases send no expiresIn: the expiry comes from the JWT's exp.
    standin.set_client_with(
        "app-noexp",
        StandInClient {
            send_expires_in: false,
            ..StandInClient::new("s3cr3t-noexp", Duration::from_secs(1800))
        },
    );
    cluster
        .put_credentials("v2-client", "app-v2", "s3cr3t-v2")
        .await;
    cluster
        .put_credentials("legacy-client", "app-legacy", "s3cr3t-legacy")
        .await;
    cluster
        .put_credentials("noexp-client", "app-noexp", "s3cr3t-noexp")
        .await;
    let controller = cluster.start_controller();
    let mut v2 = spec_for(&standin, "v2-client");
    v2["tokenApi"] = json!("V2");
    v2["target"] = json!({"key": "token"});
    let mut legacy = spec_for(&standin, "legacy-client");
    legacy["tokenApi"] = json!("AppToken");
    cluster.create_credential("v2", v2).await;
    cluster.create_credential("legacy", legacy).await;
    cluster
        .create_credential("noexp", spec_for(&standin, "noexp-client"))
        .await;

    cluster.wait_ready("v2").await;
    cluster.wait_ready("legacy").await;
    let noexp = cluster.wait_ready("noexp").await;
    let v2_token = cluster
        .token("v2", "token")
        .await
        .expect("the V2 token under the custom key");
    assert_eq!(jwt_claims(&v2_token)["sub"], "app-v2");
    let legacy_token = cluster.token("legacy", "accessToken").await.unwrap();
    assert_eq!(jwt_claims(&legacy_token)["sub"], "app-legacy");
    let noexp_token = cluster.token("noexp", "accessToken").await.unwrap();
    let exp = jwt_claims(&noexp_token)["exp"].as_i64().unwrap();
    let shown: jiff::Timestamp = noexp
        .status
        .unwrap()
        .expiration_time
        .unwrap()
        .parse()
        .unwrap();
    // exp − iat counted from the answer's arrival, truncated to the second:
    // with no clock skew, at most a second or two before `exp`, never after.
    assert!(
        (exp - 2..=exp).contains(&shown.as_second()),
        "expiry {shown} against the JWT's exp {exp}"
    );
    controller.assert_logs_hold_none_of(&[
        &v2_token,
        &legacy_token,
        &noexp_token,
        "s3cr3t-v2",
        "s3cr3t-legacy",
        "s3cr3t-noexp",
    ]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn many_credentials_in_steady_state_write_nothing() {
    let cluster = Cluster::new("steady").await;
    let standin = standin_with("app-steady", "s3cr3t-steady", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-steady", "s3cr3t-steady")
        .await;
    let _controller = cluster.start_controller();
    let names: Vec<String> = (0..20).map(|i| format!("steady-{i}")).collect();
    for name in &names {
        cluster
            .create_credential(name, spec_for(&standin, "runai-client"))
            .await;
    }
    for name in &names {
        cluster.wait_ready(name).await;
    }
    // Every object of the namespace but the credentials Secret, by version.
    let snapshot = || async {
        let crs = cluster
            .credentials()
            .list(&Default::default())
            .await
            .unwrap();
        let secrets = cluster.secrets().list(&Default::default()).await.unwrap();
        let mut versions: Vec<(String, Option<String>)> = crs
            .items
            .into_iter()
            .map(|c| {
                (
                    format!("cr/{}", c.metadata.name.unwrap()),
                    c.metadata.resource_version,
                )
            })
            .chain(
                secrets
                    .items
                    .into_iter()
                    .filter(|s| s.metadata.name.as_deref() != Some("runai-client"))
                    .map(|s| {
                        (
                            format!("secret/{}", s.metadata.name.unwrap()),
                            s.metadata.resource_version,
                        )
                    }),
            )
            .collect();
        versions.sort();
        versions
    };
    // Let the last status writes and their echoes settle.
    let settled = eventually(Duration::from_secs(15), "the namespace settles", || async {
        let first = snapshot().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        (snapshot().await == first).then_some(first)
    })
    .await;
    // One application: the shared exchange asked once for all 20.
    assert_eq!(standin.requests("app-steady"), 1);

    // Touching the shared credentials Secret's metadata makes the controller
    // look at all 20 again: nothing is due, so nothing is written or requested.
    cluster
        .secrets()
        .patch(
            "runai-client",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    stays(
        Duration::from_secs(4),
        "no write and no token request",
        || async { snapshot().await == settled && standin.requests("app-steady") == 1 },
    )
    .await;
}
