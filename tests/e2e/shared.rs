//! The shared token exchange (api.md, "Shared token exchange"), against the
//! real API server: one request per Run:ai application, whatever the number
//! of RunaiCredentials and namespaces.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use runai_standin::Fault;
use runai_token_sync::RunaiCredential;
use serde_json::json;

use crate::harness::{
    Cluster, Controller, eventually, put_credentials_in, spec_for, standin_with, stays,
};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn one_application_one_exchange_across_namespaces() {
    let cluster = Cluster::new("shared").await;
    let namespaces = [
        cluster.namespace.clone(),
        cluster.extra_namespace("b").await,
        cluster.extra_namespace("c").await,
    ];
    let standin = standin_with("app-shared", "s3cr3t-shared", HOUR).await;
    standin.set_client("app-other", "s3cr3t-other", HOUR);
    for ns in &namespaces {
        put_credentials_in(&cluster.client, ns, "creds", "app-shared", "s3cr3t-shared").await;
    }
    // One controller per namespace, in one process, keeping its own state
    // in the first: a new token of the group reaches all three.
    let watched = namespaces.join(",");
    let controller = Controller::start_raw(
        &cluster.kubeconfig,
        &[
            "--namespace",
            &watched,
            "--controller-namespace",
            &namespaces[0],
        ],
    );
    let spec = spec_for(&standin, "creds");
    let mut members = Vec::new();
    for ns in &namespaces {
        let api: Api<RunaiCredential> = Api::namespaced(cluster.client.clone(), ns);
        for name in ["first", "second"] {
            let cr: RunaiCredential = serde_json::from_value(json!({
                "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
                "metadata": {"name": name}, "spec": spec.clone(),
            }))
            .unwrap();
            api.create(&PostParams::default(), &cr).await.unwrap();
            members.push((ns.clone(), name));
        }
    }
    let tokens = || async {
        let mut tokens = Vec::new();
        for (ns, name) in &members {
            let secrets: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(cluster.client.clone(), ns);
            let token = secrets.get_opt(name).await.ok().flatten().and_then(|s| {
                s.data?
                    .get("accessToken")
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            });
            tokens.push(token);
        }
        tokens
    };
    let first = eventually(
        Duration::from_secs(30),
        "all six Secrets hold one token",
        || async {
            let all = tokens().await;
            (all.iter().all(Option::is_some) && all.iter().all(|t| *t == all[0]))
                .then(|| all[0].clone().unwrap())
        },
    )
    .await;
    assert_eq!(
        standin.requests("app-shared"),
        1,
        "one request for six RunaiCredentials"
    );
    let shared_with = |ns: String, name: &'static str| {
        let client = cluster.client.clone();
        async move {
            let api: Api<RunaiCredential> = Api::namespaced(client, &ns);
            api.get(name).await.ok()?.status.map(|s| s.shared_with)
        }
    };
    // A forced refresh of one member: exactly one more request, and the new
    // token reaches all six Secrets.
    let api: Api<RunaiCredential> = Api::namespaced(cluster.client.clone(), &namespaces[1]);
    api.patch(
        "second",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "now"}}}),
        ),
    )
    .await
    .unwrap();
    let second = eventually(
        Duration::from_secs(30),
        "the new token in all six Secrets",
        || async {
            let all = tokens().await;
            (all.iter().all(|t| t.is_some() && *t == all[0])
                && all[0].as_deref() != Some(first.as_str()))
            .then(|| all[0].clone().unwrap())
        },
    )
    .await;
    assert_ne!(second, first);
    stays(
        Duration::from_secs(3),
        "exactly one more request",
        || async { standin.requests("app-shared") == 2 },
    )
    .await;
    // The members joining wrote no status of the others; the write of the
    // new token brings every count up to date.
    eventually(
        Duration::from_secs(90),
        "sharedWith counts the five others",
        || async {
            for (ns, name) in &members {
                if shared_with(ns.clone(), name).await != Some(5) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // A seventh with another application's secret gets a token of its own.
    put_credentials_in(
        &cluster.client,
        &namespaces[0],
        "other-creds",
        "app-other",
        "s3cr3t-other",
    )
    .await;
    cluster
        .create_credential("seventh", spec_for(&standin, "other-creds"))
        .await;
    cluster.wait_ready("seventh").await;
    assert_eq!(standin.requests("app-other"), 1);
    assert_ne!(
        cluster.token("seventh", "accessToken").await.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(shared_with(namespaces[0].clone(), "seventh").await, Some(0));
    let seventh = cluster.token("seventh", "accessToken").await.unwrap();

    // An eighth of that application, in another namespace, joins once the
    // seventh's Secret is the only copy of the token: it takes it from there,
    // with no request.
    put_credentials_in(
        &cluster.client,
        &namespaces[2],
        "other-creds",
        "app-other",
        "s3cr3t-other",
    )
    .await;
    let eighth: RunaiCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
        "metadata": {"name": "eighth"}, "spec": spec_for(&standin, "other-creds"),
    }))
    .unwrap();
    Api::<RunaiCredential>::namespaced(cluster.client.clone(), &namespaces[2])
        .create(&PostParams::default(), &eighth)
        .await
        .unwrap();
    let eighth_token = eventually(Duration::from_secs(30), "the eighth's Secret", || async {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(cluster.client.clone(), &namespaces[2]);
        secrets
            .get_opt("eighth")
            .await
            .ok()
            .flatten()
            .and_then(|s| {
                s.data?
                    .get("accessToken")
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            })
    })
    .await;
    assert_eq!(eighth_token, seventh);
    assert_eq!(standin.requests("app-other"), 1);
    assert!(
        controller
            .logs()
            .contains("taking the group's token from another member's Secret"),
        "read from the seventh's Secret, not from memory"
    );

    // A 429 with Retry-After holds back the whole group: two forced
    // refreshes in two namespaces make one request, not two.
    standin.set_fault(Some(Fault::Status {
        code: 429,
        retry_after: Some(60),
    }));
    let before = standin.requests("app-shared");
    for ns in &namespaces[..2] {
        let api: Api<RunaiCredential> = Api::namespaced(cluster.client.clone(), ns);
        api.patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "again"}}})),
        )
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "both show the rate limit",
        || async {
            for ns in &namespaces[..2] {
                let api: Api<RunaiCredential> = Api::namespaced(cluster.client.clone(), ns);
                let status = api.get("first").await.ok()?.status?;
                let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
                if degraded.status != "True" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    stays(
        Duration::from_secs(5),
        "one request for the group, held back by Retry-After",
        || async { standin.requests("app-shared") == before + 1 },
    )
    .await;
    // Both still hold the valid token.
    assert_eq!(tokens().await[0].as_deref(), Some(second.as_str()));
    controller.assert_logs_hold_none_of(&["s3cr3t-shared", "s3cr3t-other"]);
}

/// api.md, "Shared token exchange": a member joining or leaving a group
/// causes no status write of the other members.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn joining_and_leaving_a_group_writes_nothing_of_the_others() {
    let cluster = Cluster::new("quiet-group").await;
    let standin = standin_with("app-quiet", "s3cr3t-quiet", HOUR).await;
    cluster
        .put_credentials("creds", "app-quiet", "s3cr3t-quiet")
        .await;
    let _controller = cluster.start_controller();
    for name in ["one", "two"] {
        cluster
            .create_credential(name, spec_for(&standin, "creds"))
            .await;
    }
    for name in ["one", "two"] {
        cluster.wait_ready(name).await;
    }
    let versions = || async {
        let mut all = Vec::new();
        for name in ["one", "two"] {
            let cr = cluster.credentials().get(name).await.unwrap();
            all.push(cr.metadata.resource_version);
        }
        all
    };
    // Settled: nothing more is written after the first statuses.
    let before = eventually(Duration::from_secs(10), "the two settle", || async {
        let first = versions().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        (versions().await == first).then_some(first)
    })
    .await;
    // A third joins: it is served (the positive control that the controller
    // works meanwhile) with the group's token, and the others stay as they
    // were.
    cluster
        .create_credential("three", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("three").await;
    assert_eq!(
        standin.requests("app-quiet"),
        1,
        "the group's token, no request"
    );
    // Longer than the 10 s a membership took to settle plus the 5 s poll
    // that rewrote the others' statuses before.
    stays(
        Duration::from_secs(16),
        "no write of the others after a join",
        || async { versions().await == before },
    )
    .await;
    cluster
        .credentials()
        .delete("three", &Default::default())
        .await
        .unwrap();
    stays(
        Duration::from_secs(8),
        "no write of the others after a leave",
        || async { versions().await == before },
    )
    .await;
}
