//! Operating the controller: the Helm chart's rights, leader election,
//! metrics, probes and JSON logs, against the real API server.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use runai_token_sync::RunaiCredential;
use serde_json::json;

use crate::harness::{Cluster, Controller, eventually, spec_for, standin_with, stays};
use crate::proxy::{FaultProxy, Mode};

const HOUR: Duration = Duration::from_secs(3600);

/// A Helm release of the chart, uninstalled when dropped (its ClusterRole
/// would outlive the test namespace otherwise).
struct Release {
    name: String,
    namespace: String,
    kubeconfig: PathBuf,
}

impl Release {
    /// Installs the chart, without its CRDs: the shared plane has them
    /// already, and they outlive any one test.
    fn install(cluster: &Cluster, extra: &[&str]) -> Release {
        let name = format!("rts{:04x}", rand::random::<u16>());
        let status = Command::new("helm")
            .args([
                "install",
                &name,
                concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/runai-token-sync"),
            ])
            .args(["--namespace", &cluster.namespace])
            .args(["--set", "crds.enabled=false"])
            .args(extra)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .stdout(Stdio::null())
            .status()
            .expect("helm runs (hack/test.sh installs it)");
        assert!(status.success(), "helm install failed");
        Release {
            name,
            namespace: cluster.namespace.clone(),
            kubeconfig: cluster.kubeconfig.clone(),
        }
    }

    /// The chart's full name: the ServiceAccount, roles and Lease are named so.
    fn fullname(&self) -> String {
        format!("{}-runai-token-sync", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new("helm")
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A kubeconfig like the cluster's, authenticated as a ServiceAccount through
/// a TokenRequest: exactly the rights RBAC grants that ServiceAccount.
async fn service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> (PathBuf, Client) {
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("a ServiceAccount token");
    let token = issued.status.expect("a token").token;
    let dir = std::env::temp_dir().join(format!("rts-e2e-sa-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let mut config = Kubeconfig::read_from(&cluster.kubeconfig).expect("the cluster's kubeconfig");
    for user in &mut config.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token_file: Some(token_file.display().to_string()),
            ..Default::default()
        });
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    (path.clone(), client_for(&path).await)
}

async fn client_for(kubeconfig: &Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

fn is_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

/// Runs the controller as the chart's ServiceAccount (`kubeconfig`), watching
/// `workload`, and waits until a RunaiCredential there is Ready.
async fn ready_with_chart_rights(
    cluster: &Cluster,
    release: &Release,
    kubeconfig: &Path,
    workload: &str,
) -> (Controller, runai_standin::StandIn, crate::cluster::Owned) {
    let standin = standin_with("app-chart", "s3cr3t-chart", HOUR).await;
    crate::harness::put_credentials_in(
        &cluster.client,
        workload,
        "runai-client",
        "app-chart",
        "s3cr3t-chart",
    )
    .await;
    cluster
        .put_credentials("platform-app", "app-chart", "s3cr3t-chart")
        .await;
    let lease = release.fullname();
    let selector = format!("tokensync.dev/e2e={}", cluster.namespace);
    let controller = Controller::start_raw(
        kubeconfig,
        &[
            "--namespace",
            workload,
            "--controller-namespace",
            &cluster.namespace,
            "--leader-elect",
            "--lease-name",
            &lease,
            "--cluster-credentials=true",
            "--cluster-credentials-selector",
            &selector,
        ],
    );
    let credentials: Api<RunaiCredential> = Api::namespaced(cluster.client.clone(), workload);
    let cr: RunaiCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
        "metadata": {"name": "with-chart-rights", "namespace": workload},
        "spec": spec_for(&standin, "runai-client"),
    }))
    .unwrap();
    credentials
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "Ready with the chart's rights",
        || async {
            let cr = credentials.get("with-chart-rights").await.ok()?;
            (cr.condition("Ready")?.status == "True").then_some(())
        },
    )
    .await;
    // A ClusterRunaiCredential naming the workload namespace, with its
    // credentials in the controller's namespace.
    let name = format!("chart-{}", cluster.namespace);
    let crcs: Api<runai_token_sync::api::ClusterRunaiCredential> = Api::all(cluster.client.clone());
    let mut spec = spec_for(&standin, "platform-app");
    spec["namespaces"] = json!([workload]);
    spec["target"] = json!({"name": "from-cluster"});
    crcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "ClusterRunaiCredential",
            "metadata": {"name": name, "labels": {"tokensync.dev/e2e": cluster.namespace}},
            "spec": spec,
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let owned = crate::cluster::Owned {
        kubeconfig: cluster.kubeconfig.clone(),
        name: name.clone(),
    };
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), workload);
    eventually(
        Duration::from_secs(30),
        "the ClusterRunaiCredential's Secret, with the chart's rights",
        || async { secrets.get_opt("from-cluster").await.ok().flatten() },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the ClusterRunaiCredential is Ready",
        || async {
            let crc = crcs.get(&name).await.ok()?;
            (crc.condition("Ready")?.status == "True").then_some(())
        },
    )
    .await;
    (controller, standin, owned)
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server and helm: run hack/test.sh"]
async fn the_charts_cluster_wide_rights_are_enough_and_no_more() {
    let cluster = Cluster::new("rbac").await;
    let workload = cluster.extra_namespace("work").await;
    // Without the aggregated roles, which would give every namespace's
    // `view` RunaiCredentials while the test of those roles runs.
    let release = Release::install(&cluster, &["--set", "aggregateClusterRoles=false"]);
    let (kubeconfig, as_controller) =
        service_account_kubeconfig(&cluster, &cluster.namespace, &release.fullname()).await;

    let (controller, _standin, _crc) =
        ready_with_chart_rights(&cluster, &release, &kubeconfig, &workload).await;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &workload);
    assert!(
        secrets
            .get_opt("with-chart-rights")
            .await
            .unwrap()
            .is_some()
    );
    // Events, the status, the Lease and the hash key all went through.
    let logs = controller.logs();
    assert!(logs.contains("became the leader"), "{logs}");
    assert!(
        !logs.contains("forbidden") && !logs.contains("could not publish"),
        "{logs}"
    );

    // The spec is the user's: the controller's account cannot change it.
    let as_sa: Api<RunaiCredential> = Api::namespaced(as_controller, &workload);
    let edit = json!({"spec": {"url": "https://elsewhere.example"}});
    assert!(
        is_forbidden(
            as_sa
                .patch(
                    "with-chart-rights",
                    &PatchParams::default(),
                    &Patch::Merge(&edit)
                )
                .await
        ),
        "the ServiceAccount could change a RunaiCredential's spec"
    );
    assert!(is_forbidden(
        as_sa.delete("with-chart-rights", &Default::default()).await
    ));
}

/// A ServiceAccount of the test namespace bound there to a built-in
/// ClusterRole (`view`, `edit`): a person with that role.
async fn person_with(cluster: &Cluster, role: &str) -> Client {
    let name = format!("person-{role}");
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": cluster.namespace}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    service_account_kubeconfig(cluster, &cluster.namespace, &name)
        .await
        .1
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server and helm: run hack/test.sh"]
async fn view_and_edit_include_runaicredentials_once_the_chart_is_installed() {
    let cluster = Cluster::new("people").await;
    let viewer: Api<RunaiCredential> =
        Api::namespaced(person_with(&cluster, "view").await, &cluster.namespace);
    let editor: Api<RunaiCredential> =
        Api::namespaced(person_with(&cluster, "edit").await, &cluster.namespace);
    let credential = || -> RunaiCredential {
        serde_json::from_value(json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
            "metadata": {"name": "by-a-person"},
            "spec": {"url": "https://acme.run.ai", "clientCredentialsSecretRef": {"name": "c"}},
        }))
        .unwrap()
    };
    // Before the chart: the built-in roles know nothing of RunaiCredentials.
    assert!(is_forbidden(viewer.list(&Default::default()).await));
    assert!(is_forbidden(
        editor.create(&PostParams::default(), &credential()).await
    ));

    let _release = Release::install(&cluster, &[]);
    // The aggregation controller folds the chart's roles into view and edit.
    eventually(Duration::from_secs(30), "edit may create", || async {
        editor
            .create(&PostParams::default(), &credential())
            .await
            .ok()
    })
    .await;
    assert_eq!(
        viewer.list(&Default::default()).await.unwrap().items.len(),
        1
    );
    assert!(viewer.get("by-a-person").await.is_ok());
    // view reads only.
    let mut other = credential();
    other.metadata.name = Some("by-a-viewer".to_owned());
    assert!(is_forbidden(
        viewer.create(&PostParams::default(), &other).await
    ));
    assert!(is_forbidden(
        viewer.delete("by-a-person", &Default::default()).await
    ));
    // edit changes and deletes, but never writes the controller's status.
    let edit = json!({"spec": {"refreshInterval": "45m"}});
    assert!(
        editor
            .patch("by-a-person", &PatchParams::default(), &Patch::Merge(&edit))
            .await
            .is_ok()
    );
    let status = json!({"status": {"secretName": "forged"}});
    assert!(is_forbidden(
        editor
            .patch_status(
                "by-a-person",
                &PatchParams::default(),
                &Patch::Merge(&status)
            )
            .await
    ));
    assert!(
        editor
            .delete("by-a-person", &Default::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server and helm: run hack/test.sh"]
async fn watch_namespaces_confine_the_controller() {
    let cluster = Cluster::new("rbacns").await;
    let watched = cluster.extra_namespace("in").await;
    let outside = cluster.extra_namespace("out").await;
    let release = Release::install(
        &cluster,
        &[
            "--set",
            &format!("watchNamespaces={{{watched}}}"),
            "--set",
            "aggregateClusterRoles=false",
        ],
    );
    let (kubeconfig, as_controller) =
        service_account_kubeconfig(&cluster, &cluster.namespace, &release.fullname()).await;

    let (_controller, _standin, crc) =
        ready_with_chart_rights(&cluster, &release, &kubeconfig, &watched).await;
    // A ClusterRunaiCredential naming a namespace outside: not served there.
    let crcs: Api<runai_token_sync::api::ClusterRunaiCredential> = Api::all(cluster.client.clone());
    crcs.patch(
        &crc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"namespaces": [watched, outside]}})),
    )
    .await
    .unwrap();
    let generation = crcs.get(&crc.name).await.unwrap().metadata.generation;
    eventually(
        Duration::from_secs(15),
        "the new generation is observed",
        || async {
            let status = crcs.get(&crc.name).await.ok()?.status?;
            (status.observed_generation == generation).then_some(status)
        },
    )
    .await;
    let status = crcs.get(&crc.name).await.unwrap().status.unwrap();
    assert_eq!(
        (status.matched_namespaces, status.synced_namespaces),
        (1, 1)
    );
    let outside_admin: Api<Secret> = Api::namespaced(cluster.client.clone(), &outside);
    assert!(
        outside_admin
            .get_opt("from-cluster")
            .await
            .unwrap()
            .is_none()
    );
    // Outside: no Secret can be read, in that namespace or cluster-wide.
    let outside_secrets: Api<Secret> = Api::namespaced(as_controller.clone(), &outside);
    assert!(
        is_forbidden(outside_secrets.get("runai-client").await),
        "read a Secret outside its namespaces"
    );
    assert!(is_forbidden(
        outside_secrets.list(&Default::default()).await
    ));
    let all_secrets: Api<Secret> = Api::all(as_controller.clone());
    assert!(is_forbidden(all_secrets.list(&Default::default()).await));
    // Nor can a controller be pointed there.
    let mut stray = Controller::start_raw(
        &kubeconfig,
        &[
            "--namespace",
            &outside,
            "--controller-namespace",
            &cluster.namespace,
        ],
    );
    eventually(
        Duration::from_secs(10),
        "the misdirected controller gives up",
        || async {
            stray
                .logs()
                .contains("cannot list RunaiCredentials")
                .then_some(())
        },
    )
    .await;
    stray.kill();
}

/// The leader gauge of a controller, from its /metrics.
pub(crate) async fn leads(controller: &Controller) -> bool {
    controller
        .probe("/metrics")
        .await
        .1
        .lines()
        .any(|l| l == "runai_token_sync_leader 1")
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn one_leader_writes_and_a_successor_takes_over() {
    let cluster = Cluster::new("ha").await;
    let standin = standin_with("app-ha", "s3cr3t-ha", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-ha", "s3cr3t-ha")
        .await;
    let args = ["--leader-elect", "--lease-duration-seconds", "15"];
    let mut first = Controller::start(&cluster.kubeconfig, &cluster.namespace, &args);
    let mut second = Controller::start(&cluster.kubeconfig, &cluster.namespace, &args);
    eventually(Duration::from_secs(20), "exactly one leader", || async {
        (leads(&first).await != leads(&second).await).then_some(())
    })
    .await;
    let (leader, follower) = if leads(&first).await {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    // The follower answers ready and says it follows.
    let (status, body) = follower.probe("/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready (follower)"));

    for name in ["one", "two"] {
        cluster
            .create_credential(name, spec_for(&standin, "runai-client"))
            .await;
    }
    cluster.wait_ready("one").await;
    cluster.wait_ready("two").await;
    // One application: one shared exchange.
    assert_eq!(standin.requests("app-ha"), 1);
    assert!(
        leader.logs().contains("token written"),
        "the leader wrote the tokens"
    );
    assert!(
        !follower.logs().contains("requesting a token"),
        "the follower must not reconcile"
    );

    // kill -9: the follower takes over within the lease duration.
    leader.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(25), "the follower leads", || async {
        leads(follower).await.then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover <= Duration::from_secs(20),
        "takeover took {takeover:?}"
    );
    eprintln!("takeover after kill -9: {takeover:?}");
    // The new leader's first pass over one and two takes the group's token
    // from their Secrets; a credential created after it shares that token.
    eventually(
        Duration::from_secs(10),
        "the new leader's first pass",
        || async {
            let metrics = follower.probe("/metrics").await.1;
            metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix("runai_token_sync_reconciliations_total{result=\"success\"} ")
                })
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n >= 2)
                .map(drop)
        },
    )
    .await;
    cluster
        .create_credential("three", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("three").await;
    stays(
        Duration::from_secs(2),
        "no token requested around the handover: the new leader takes the group's token from the Secrets",
        || async { standin.requests("app-ha") == 1 },
    )
    .await;

    // A graceful shutdown releases the lease: a third replica leads at once.
    let third = Controller::start(&cluster.kubeconfig, &cluster.namespace, &args);
    eventually(
        Duration::from_secs(10),
        "the third replica is up",
        || async { (third.probe("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    assert!(follower.stop(), "the leader exits cleanly on SIGTERM");
    let stopped = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the third replica leads",
        || async { leads(&third).await.then_some(()) },
    )
    .await;
    let handover = stopped.elapsed();
    assert!(
        handover < Duration::from_secs(5),
        "handover after SIGTERM took {handover:?}"
    );
    eprintln!("handover after SIGTERM: {handover:?}");
    assert_eq!(standin.requests("app-ha"), 1);
}

/// A Lease held by a replica whose renewals carry times far in the past (its
/// clock runs an hour behind ours, or ours an hour ahead): as long as it keeps
/// renewing, the controller waits; once it stops, the lease is taken one lease
/// duration after the last change this controller saw.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_lease_renewed_by_a_skewed_holder_is_not_taken() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    let cluster = Cluster::new("skew").await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let an_hour_ago = |offset: i64| {
        MicroTime(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600 - offset))
    };
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "runai-token-sync"},
        "spec": {"holderIdentity": "skewed-replica", "leaseDurationSeconds": 10, "leaseTransitions": 0},
    }))
    .unwrap();
    let mut lease = leases.create(&PostParams::default(), &lease).await.unwrap();
    let renew = |lease: &mut Lease, offset: i64| {
        lease.spec.as_mut().unwrap().renew_time = Some(an_hour_ago(offset));
    };
    renew(&mut lease, 0);
    let mut lease = leases
        .replace("runai-token-sync", &PostParams::default(), &lease)
        .await
        .unwrap();

    let args = ["--leader-elect", "--lease-duration-seconds", "10"];
    let controller = Controller::start(&cluster.kubeconfig, &cluster.namespace, &args);
    eventually(Duration::from_secs(10), "the controller is up", || async {
        (controller.probe("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // The skewed holder renews every 2 s for 25 s, two and a half lease
    // durations: the controller never leads.
    let renewing = Instant::now();
    let mut offset = 0;
    while renewing.elapsed() < Duration::from_secs(25) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        offset += 2;
        renew(&mut lease, offset);
        lease = leases
            .replace("runai-token-sync", &PostParams::default(), &lease)
            .await
            .unwrap();
        assert!(
            !leads(&controller).await,
            "took a lease that is still being renewed"
        );
    }
    // Positive control: once the holder stops, the lease is taken after one
    // lease duration (10 s) of seeing no change, not before.
    let stopped = Instant::now();
    eventually(Duration::from_secs(25), "the controller leads", || async {
        leads(&controller).await.then_some(())
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(16)).contains(&took),
        "took the lease {took:?} after the last renewal"
    );
    let holder = leases.get("runai-token-sync").await.unwrap().spec.unwrap();
    assert_ne!(holder.holder_identity.as_deref(), Some("skewed-replica"));
    assert_eq!(holder.lease_transitions, Some(1));
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn metrics_and_json_logs_show_what_happens() {
    let cluster = Cluster::new("metrics").await;
    let standin = standin_with("app-metrics", "s3cr3t-metrics", HOUR).await;
    cluster
        .put_credentials("good-client", "app-metrics", "s3cr3t-metrics")
        .await;
    cluster
        .put_credentials("bad-client", "app-metrics", "wrong-s3cr3t")
        .await;
    let controller = Controller::start(
        &cluster.kubeconfig,
        &cluster.namespace,
        &["--log-format", "json"],
    );
    cluster
        .create_credential("good", spec_for(&standin, "good-client"))
        .await;
    cluster
        .create_credential("bad", spec_for(&standin, "bad-client"))
        .await;
    cluster.wait_ready("good").await;
    cluster.wait_not_ready("bad", "InvalidCredentials").await;

    let metrics = eventually(
        Duration::from_secs(10),
        "the failure in the metrics",
        || async {
            let text = controller.probe("/metrics").await.1;
            text.contains("result=\"invalid_credentials\"")
                .then_some(text)
        },
    )
    .await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    let ns = &cluster.namespace;
    assert!(value("runai_token_sync_reconciliations_total{result=\"success\"}") >= 2.0);
    assert!(value("runai_token_sync_reconcile_duration_seconds_count{result=\"success\"}") >= 2.0);
    assert_eq!(
        value("runai_token_sync_token_requests_total{token_api=\"V2\",result=\"success\"}"),
        1.0,
        "a success is counted under the generation that answered (Auto found V2)"
    );
    assert!(
        value(
            "runai_token_sync_token_requests_total{token_api=\"Auto\",result=\"invalid_credentials\"}"
        ) >= 1.0
    );
    assert!(
        value("runai_token_sync_token_request_duration_seconds_count{token_api=\"V2\"}") >= 1.0
    );
    let expires: jiff::Timestamp = cluster
        .credential_status_expiry("good")
        .await
        .parse()
        .unwrap();
    assert_eq!(
        value(&format!(
            "runai_token_sync_token_expiration_timestamp_seconds{{namespace=\"{ns}\",name=\"good\"}}"
        )),
        expires.as_second() as f64
    );
    assert_eq!(
        value(&format!(
            "runai_token_sync_consecutive_failures{{namespace=\"{ns}\",name=\"good\"}}"
        )),
        0.0
    );
    assert!(
        value(&format!(
            "runai_token_sync_consecutive_failures{{namespace=\"{ns}\",name=\"bad\"}}"
        )) >= 1.0
    );
    assert_eq!(value("runai_token_sync_leader"), 1.0);
    let token = cluster.token("good", "accessToken").await.unwrap();
    for leak in [
        standin.url().as_str(),
        "s3cr3t-metrics",
        "wrong-s3cr3t",
        token.as_str(),
    ] {
        assert!(!metrics.contains(leak), "the metrics hold {leak:?}");
    }
    assert_eq!(controller.probe("/healthz").await.0, 200);
    assert_eq!(
        controller.probe("/readyz").await,
        (200, "ready (leader)\n".to_owned())
    );

    // JSON logs: one object per line, the credential named in fields.
    let logs = controller.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let written = lines
        .iter()
        .find(|l| l["message"] == "token written to the Secret")
        .expect("a log line for the written token");
    assert_eq!(written["namespace"], ns.as_str());
    assert_eq!(written["name"], "good");
    controller.assert_logs_hold_none_of(&[&token, "s3cr3t-metrics", "wrong-s3cr3t"]);
}

/// The API server's address, from the test cluster's kubeconfig.
pub(crate) fn api_server_address(cluster: &Cluster) -> SocketAddr {
    let config = Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let server = config.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone()
        .unwrap();
    server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .expect("the e2e cluster's server is an IP:port URL")
}

/// A copy of the test cluster's kubeconfig that reaches the API server
/// through `relay`.
pub(crate) fn kubeconfig_through(cluster: &Cluster, relay: SocketAddr) -> PathBuf {
    let mut config = Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    for named in &mut config.clusters {
        if let Some(c) = named.cluster.as_mut() {
            c.server = Some(format!("https://{relay}"));
        }
    }
    let relayed = std::env::temp_dir().join(format!(
        "rts-e2e-relay-{}.kubeconfig",
        rand::random::<u64>()
    ));
    std::fs::write(&relayed, serde_yaml::to_string(&config).unwrap()).unwrap();
    relayed
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn not_ready_until_the_api_server_answers() {
    let cluster = Cluster::new("readyz").await;
    let relay = FaultProxy::start(api_server_address(&cluster)).await;
    relay.set(Mode::Hang);
    let relayed = kubeconfig_through(&cluster, relay.address);

    let controller = Controller::start(&relayed, &cluster.namespace, &[]);
    let (status, body) = controller.probe("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        controller.probe("/healthz").await.0,
        200,
        "alive while waiting"
    );
    stays(
        Duration::from_secs(2),
        "not ready while the API server is held back",
        || async { controller.probe("/readyz").await.0 == 503 },
    )
    .await;
    relay.set(Mode::Pass);
    eventually(
        Duration::from_secs(20),
        "ready once the watches synced",
        || async { (controller.probe("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    assert!(controller.logs().contains("watches synced"));
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn liveness_fails_when_the_api_server_is_black_holed() {
    let cluster = Cluster::new("stall").await;
    let hole = FaultProxy::start(api_server_address(&cluster)).await;
    let relayed = kubeconfig_through(&cluster, hole.address);

    let standin = standin_with("app", "s3cr3t-stall", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-stall")
        .await;
    let controller = Controller::start(
        &relayed,
        &cluster.namespace,
        &["--stall-timeout-seconds", "8"],
    );
    cluster
        .create_credential("kept", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("kept").await;
    // Positive control: live while the API server answers, beyond the limit.
    stays(
        Duration::from_secs(10),
        "live while the API server answers",
        || async { controller.probe("/healthz").await.0 == 200 },
    )
    .await;

    hole.set(Mode::Hang);
    let started = Instant::now();
    let body = eventually(Duration::from_secs(30), "/healthz fails", || async {
        let (status, body) = controller.probe("/healthz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("no progress"), "{body}");
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "not before the limit"
    );

    hole.set(Mode::Pass);
    eventually(Duration::from_secs(30), "/healthz recovers", || async {
        (controller.probe("/healthz").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn started_before_its_crd_the_controller_waits_and_then_serves() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    // Its own plane: the CRD is removed here, which other tests need.
    let Some(plane) = crate::chaos::OwnPlane::start() else {
        eprintln!("skipped: no local Kubernetes binaries for a plane of this test's own");
        return;
    };
    // Watching every namespace, keeping its own state in `default`.
    let controller =
        Controller::start_raw(&plane.kubeconfig, &["--controller-namespace", "default"]);
    eventually(
        Duration::from_secs(20),
        "the missing CRD is reported",
        || async { controller.logs().contains("is not installed").then_some(()) },
    )
    .await;
    stays(
        Duration::from_secs(3),
        "up and not ready without the CRD",
        || async {
            controller.probe("/readyz").await.0 == 503
                && controller.probe("/healthz").await.0 == 200
        },
    )
    .await;
    assert_eq!(
        controller.logs().matches("is not installed").count(),
        1,
        "once a minute"
    );

    // The CRD arrives: serving starts.
    let cluster = Cluster::on(plane.kubeconfig.clone(), "crd-wait").await;
    let standin = standin_with("app", "s3cr3t-crd", HOUR).await;
    cluster.put_credentials("creds", "app", "s3cr3t-crd").await;
    eventually(
        Duration::from_secs(30),
        "ready once the CRD is there",
        || async { (controller.probe("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    cluster
        .create_credential("first", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("first").await;

    // The CRD goes away: one clear line; back again: serving resumes.
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    crds.delete("runaicredentials.tokensync.dev", &Default::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the removal is reported",
        || async {
            controller
                .logs()
                .contains("was removed from the cluster")
                .then_some(())
        },
    )
    .await;
    let again = Cluster::on(plane.kubeconfig.clone(), "crd-back").await;
    again.put_credentials("creds", "app", "s3cr3t-crd").await;
    again
        .create_credential("second", spec_for(&standin, "creds"))
        .await;
    eventually(Duration::from_secs(60), "serving resumes", || async {
        let cr = again.credentials().get_opt("second").await.ok().flatten()?;
        cr.condition("Ready")
            .filter(|c| c.status == "True")
            .map(drop)
    })
    .await;
    assert!(
        controller
            .logs()
            .matches("was removed from the cluster")
            .count()
            <= 2
    );
    drop(cluster);
    drop(again);
    drop(controller);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_graceful_shutdown_is_bounded() {
    let cluster = Cluster::new("shutdown").await;
    let standin = standin_with("app", "s3cr3t-shutdown", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-shutdown")
        .await;
    // A token request that takes a minute, within a 90 s request timeout.
    standin.set_fault(Some(runai_standin::Fault::Delay(Duration::from_secs(60))));
    let mut controller = Controller::start(
        &cluster.kubeconfig,
        &cluster.namespace,
        &["--request-timeout-seconds", "90"],
    );
    cluster
        .create_credential("slow", spec_for(&standin, "creds"))
        .await;
    eventually(
        Duration::from_secs(20),
        "the token request under way",
        || async { (standin.requests("app") == 1).then_some(()) },
    )
    .await;
    let asked = Instant::now();
    assert!(
        controller.stop_within(Duration::from_secs(40)),
        "exited cleanly while a reconciliation was still waiting"
    );
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(18) && took < Duration::from_secs(30),
        "the 20 s grace period, then out: {took:?}"
    );
    assert!(
        cluster.secret("slow").await.is_none(),
        "nothing written meanwhile"
    );
}
