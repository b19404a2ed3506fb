//! ClusterRunaiCredential (api.md, "ClusterRunaiCredential"): one token
//! handed to many namespaces, against the real API server and the stand-in.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use runai_token_sync::api::ClusterRunaiCredential;
use serde_json::{Value, json};

use crate::harness::{Cluster, Controller, eventually, jwt_claims, standin_with, stays};

const HOUR: Duration = Duration::from_secs(3600);
const TARGET: &str = "runai-token";

/// A cluster-scoped object, deleted when dropped (the test namespace does
/// not take it along).
pub struct Owned {
    pub kubeconfig: std::path::PathBuf,
    pub name: String,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // With kubectl: the test's runtime, which its client needs, may be
        // shutting down. Its finalizer goes too: the controller may be gone.
        let _ = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "patch",
                "clusterrunaicredential",
                &self.name,
                "--type=merge",
            ])
            .args(["-p", r#"{"metadata":{"finalizers":null}}"#])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "clusterrunaicredential",
                "--wait=false",
                "--ignore-not-found",
            ])
            .arg(&self.name)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

async fn label_namespace(cluster: &Cluster, namespace: &str, labels: Value) {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    namespaces
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .expect("the namespace is labelled");
}

async fn secret_in(cluster: &Cluster, namespace: &str) -> Option<Secret> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
    secrets.get_opt(TARGET).await.expect("reading a Secret")
}

fn token_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get("accessToken")?.0.clone();
    String::from_utf8(bytes).ok()
}

async fn status(api: &Api<ClusterRunaiCredential>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.unwrap().status).unwrap()
}

fn ready(status: &Value) -> (String, String) {
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    (
        ready["status"].as_str().unwrap_or_default().to_owned(),
        ready["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Four namespaces, a controller serving them and the test's own (where the
/// credentials are), and a ClusterRunaiCredential selecting `a` and `b` by
/// label and `d` by name.
struct Fanout {
    cluster: Cluster,
    namespaces: [String; 4],
    selector: String,
    api: Api<ClusterRunaiCredential>,
    name: String,
    standin: runai_standin::StandIn,
    _controller: Controller,
    /// The controller's command line, to start it again.
    args: Vec<String>,
}

impl Fanout {
    async fn start(test: &str, deletion_policy: &str) -> (Fanout, Owned) {
        Fanout::start_with(test, deletion_policy, json!({})).await
    }

    /// [`Fanout::start`] with these annotations on the ClusterRunaiCredential.
    async fn start_with(test: &str, deletion_policy: &str, annotations: Value) -> (Fanout, Owned) {
        let cluster = Cluster::new(test).await;
        let mut namespaces = Vec::new();
        for suffix in ["a", "b", "c", "d"] {
            namespaces.push(cluster.extra_namespace(suffix).await);
        }
        let namespaces: [String; 4] = namespaces.try_into().unwrap();
        let selector = cluster.namespace.clone();
        for ns in &namespaces[..2] {
            label_namespace(&cluster, ns, json!({"runai-access": selector})).await;
        }
        let standin = standin_with("app-fan", "s3cr3t-fan", HOUR).await;
        cluster
            .put_credentials("platform-app", "app-fan", "s3cr3t-fan")
            .await;
        let served = format!("{},{}", cluster.namespace, namespaces.join(","));
        let args: Vec<String> = vec![
            "--namespace".into(),
            served,
            "--controller-namespace".into(),
            cluster.namespace.clone(),
            "--cluster-credentials=true".into(),
            // Only this test's: the others' controllers run at once.
            "--cluster-credentials-selector".into(),
            format!("tokensync.dev/e2e={}", cluster.namespace),
        ];
        let controller = Controller::start_raw(
            &cluster.kubeconfig,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let api: Api<ClusterRunaiCredential> = Api::all(cluster.client.clone());
        let name = format!("fan-{}", cluster.namespace);
        let crc: ClusterRunaiCredential = serde_json::from_value(json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "ClusterRunaiCredential",
            "metadata": {"name": name, "labels": {"tokensync.dev/e2e": cluster.namespace},
                         "annotations": annotations},
            "spec": {
                "url": standin.url(),
                "caBundle": standin.ca_pem(),
                "clientCredentialsSecretRef": {"name": "platform-app"},
                "namespaceSelector": {"matchLabels": {"runai-access": selector}},
                "namespaces": [namespaces[3]],
                "target": {"name": TARGET, "deletionPolicy": deletion_policy,
                           "outputs": [{"key": "authorization", "format": "BearerHeader"}]},
            },
        }))
        .unwrap();
        let owned = Owned {
            kubeconfig: cluster.kubeconfig.clone(),
            name: name.clone(),
        };
        // A foreign Secret of the target name in `d`, before the controller
        // gets there.
        let foreign: Secret = serde_json::from_value(json!({
            "metadata": {"name": TARGET}, "stringData": {"mine": "keep me"}
        }))
        .unwrap();
        Api::<Secret>::namespaced(cluster.client.clone(), &namespaces[3])
            .create(&PostParams::default(), &foreign)
            .await
            .unwrap();
        api.create(&PostParams::default(), &crc).await.unwrap();
        (
            Fanout {
                cluster,
                namespaces,
                selector,
                api,
                name,
                standin,
                _controller: controller,
                args,
            },
            owned,
        )
    }

    /// Stops the controller and starts it again, with nothing in memory.
    fn restart_controller(&mut self) {
        assert!(self._controller.stop(), "the controller stops");
        self._controller = Controller::start_raw(
            &self.cluster.kubeconfig,
            &self.args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }

    async fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(40), what, || async {
            let s = status(&self.api, &self.name).await;
            check(&s).then_some(s)
        })
        .await
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn one_token_reaches_every_matched_namespace() {
    let (f, _owned) = Fanout::start("fanout", "Delete").await;
    let [a, b, c, d] = f.namespaces.clone();

    // a and b by label, d by name; d holds someone else's Secret.
    let s = f
        .wait_status("a, b synced, d failed", |s| {
            s["matchedNamespaces"] == 3 && s["syncedNamespaces"] == 2
        })
        .await;
    assert_eq!(ready(&s), ("False".into(), "NamespacesFailed".into()));
    assert_eq!(s["failedNamespaces"][0]["namespace"], d.as_str());
    assert_eq!(s["failedNamespaces"][0]["reason"], "SecretConflict");
    assert_eq!(s["namespaces"], "2/3");
    // tokenApi defaults to Auto; the generation that answered is shown,
    // and recorded in each Secret.
    assert_eq!(s["tokenApi"], "V2");
    let crc = f.api.get(&f.name).await.unwrap();
    assert_eq!(crc.condition("Stalled").unwrap().status, "True");
    let (health, message) = crate::gitops::argocd_health_of(&serde_json::to_value(&crc).unwrap());
    assert_eq!(health, "Degraded");
    assert!(message.starts_with("NamespacesFailed: "), "{message}");
    let in_a = secret_in(&f.cluster, &a).await.expect("a has the Secret");
    let in_b = secret_in(&f.cluster, &b).await.expect("b has the Secret");
    let token = token_of(&in_a).unwrap();
    assert_eq!(jwt_claims(&token)["sub"], "app-fan");
    assert_eq!(token_of(&in_b).as_deref(), Some(token.as_str()));
    assert_eq!(
        in_a.data.as_ref().unwrap()["authorization"].0,
        format!("Bearer {token}").into_bytes()
    );
    assert_eq!(
        in_a.labels()["tokensync.dev/cluster-credential"],
        f.name.as_str()
    );
    assert_eq!(in_a.annotations()["tokensync.dev/token-api"], "V2");
    let owner = &in_a.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ClusterRunaiCredential", Some(true))
    );
    assert!(secret_in(&f.cluster, &c).await.is_none());
    let foreign = secret_in(&f.cluster, &d).await.unwrap();
    assert!(
        foreign.labels().is_empty(),
        "the foreign Secret is untouched"
    );
    assert_eq!(
        foreign.data.unwrap()["mine"].0,
        b"keep me".to_vec(),
        "the foreign Secret keeps its data"
    );
    // One request served every namespace.
    assert_eq!(f.standin.requests("app-fan"), 1);
    // Events of a cluster-scoped object go to `default`.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(f.cluster.client.clone(), "default");
    let reasons = eventually(Duration::from_secs(10), "its Events", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let mine: Vec<(String, String)> = list
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(f.name.as_str()))
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
            .collect();
        (mine.len() >= 2).then_some(mine)
    })
    .await;
    assert!(
        reasons.contains(&("Warning".to_owned(), "NamespacesFailed".to_owned())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("Normal".to_owned(), "TokenIssued".to_owned())),
        "{reasons:?}"
    );

    // c starts to match: served within seconds, with no request.
    label_namespace(&f.cluster, &c, json!({"runai-access": f.selector})).await;
    let in_c = eventually(Duration::from_secs(10), "c gets the Secret", || async {
        secret_in(&f.cluster, &c).await
    })
    .await;
    assert_eq!(token_of(&in_c).as_deref(), Some(token.as_str()));
    assert_eq!(f.standin.requests("app-fan"), 1);

    // a stops matching: its Secret goes (Delete).
    label_namespace(&f.cluster, &a, json!({"runai-access": null})).await;
    eventually(Duration::from_secs(10), "a's Secret is deleted", || async {
        secret_in(&f.cluster, &a).await.is_none().then_some(())
    })
    .await;

    // d's conflict is resolved: Ready once every matched namespace is served.
    Api::<Secret>::namespaced(f.cluster.client.clone(), &d)
        .delete(TARGET, &DeleteParams::default())
        .await
        .unwrap();
    // Namespaces that failed are looked at again every 15 s.
    let s = f
        .wait_status("b, c, d synced", |s| {
            s["matchedNamespaces"] == 3 && s["syncedNamespaces"] == 3
        })
        .await;
    assert_eq!(ready(&s), ("True".into(), "TokenReady".into()));
    assert!(s["failedNamespaces"].is_null());
    let crc = serde_json::to_value(f.api.get(&f.name).await.unwrap()).unwrap();
    assert_eq!(crate::gitops::argocd_health_of(&crc).0, "Healthy");
    // `kubectl wait` and the printer columns, as a platform engineer sees them.
    let kubectl = |args: &[&str]| {
        std::process::Command::new("kubectl")
            .env("KUBECONFIG", &f.cluster.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let crc_ref = format!("clusterrunaicredential/{}", f.name);
    let wait = kubectl(&["wait", &crc_ref, "--for=condition=Ready", "--timeout=10s"]);
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
    let table = String::from_utf8(kubectl(&["get", "crunaicred", &f.name]).stdout).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "NAMESPACES", "EXPIRES", "AGE"]);
    assert!(table.lines().nth(1).unwrap().contains(" True "), "{table}");
    assert!(table.lines().nth(1).unwrap().contains(" 3/3 "), "{table}");
    assert_eq!(f.standin.requests("app-fan"), 1);

    // A forced refresh with `renew --cluster`: one request, the new token
    // everywhere.
    let renewed = std::process::Command::new(env!("CARGO_BIN_EXE_runai-token-sync"))
        .args(["renew", "--cluster", &f.name])
        .env("KUBECONFIG", &f.cluster.kubeconfig)
        .output()
        .expect("the binary runs");
    assert!(
        renewed.status.success(),
        "{}",
        String::from_utf8_lossy(&renewed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&renewed.stdout),
        format!("clusterrunaicredential/{} refresh requested\n", f.name)
    );
    for ns in [&b, &c, &d] {
        eventually(Duration::from_secs(15), "the new token", || async {
            secret_in(&f.cluster, ns)
                .await
                .and_then(|s| token_of(&s))
                .filter(|t| *t != token)
        })
        .await;
    }
    assert_eq!(f.standin.requests("app-fan"), 2);

    // A RunaiCredential of the same application shares the exchange, both
    // ways: it takes the token with no request, and its forced refresh
    // reaches every namespace of the ClusterRunaiCredential.
    let mut spec = crate::harness::spec_for(&f.standin, "platform-app");
    spec["target"] = json!({"name": "member-token"});
    f.cluster.create_credential("member", spec).await;
    f.cluster.wait_ready("member").await;
    assert_eq!(f.standin.requests("app-fan"), 2);
    f.cluster
        .patch_credential(
            "member",
            json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "1"}}}),
        )
        .await;
    let renewed = eventually(
        Duration::from_secs(15),
        "the member's new token",
        || async {
            let t = f.cluster.token("member-token", "accessToken").await?;
            (f.standin.requests("app-fan") == 3).then_some(t)
        },
    )
    .await;
    for ns in [&b, &c, &d] {
        eventually(
            Duration::from_secs(15),
            "the member's token everywhere",
            || async {
                secret_in(&f.cluster, ns)
                    .await
                    .and_then(|s| token_of(&s))
                    .filter(|t| *t == renewed)
            },
        )
        .await;
    }
    assert_eq!(f.standin.requests("app-fan"), 3);
    // The member's joining wrote no status of the ClusterRunaiCredential;
    // the write of the new token brings its count up to date.
    f.wait_status("sharedWith 1", |s| s["sharedWith"] == 1)
        .await;

    // Deletion: the garbage collector follows the owner references.
    f.api
        .delete(&f.name, &DeleteParams::default())
        .await
        .unwrap();
    for ns in [&b, &c, &d] {
        eventually(
            Duration::from_secs(90),
            "the Secret is collected",
            || async { secret_in(&f.cluster, ns).await.is_none().then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn retain_releases_the_secrets_of_namespaces_left_and_of_a_deleted_owner() {
    let (f, _owned) = Fanout::start("retain", "Retain").await;
    let [a, b, c, _] = f.namespaces.clone();
    f.wait_status("a, b synced", |s| s["syncedNamespaces"] == 2)
        .await;
    let in_a = secret_in(&f.cluster, &a).await.unwrap();
    assert!(in_a.owner_references().is_empty(), "Retain: no owner");
    // Its finalizer: the Secrets are released before it may go.
    let crc = f.api.get(&f.name).await.unwrap();
    assert_eq!(crc.finalizers(), ["tokensync.dev/release-secrets"]);

    // The credentials Secret goes: the token the Secrets hold stays in use
    // while valid, Ready stays, Degraded says why; a new namespace still gets
    // it, with no request.
    f.cluster
        .secrets()
        .delete("platform-app", &DeleteParams::default())
        .await
        .unwrap();
    let s = f
        .wait_status("Degraded: CredentialsNotFound", |s| {
            s["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Degraded" && c["status"] == "True")
            })
        })
        .await;
    // Ready as before (d holds a foreign Secret): the missing credentials
    // are not what keeps it from being ready.
    assert_eq!(ready(&s), ("False".into(), "NamespacesFailed".into()));
    let degraded = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["reason"], "CredentialsNotFound");
    label_namespace(&f.cluster, &c, json!({"runai-access": f.selector})).await;
    let in_c = eventually(Duration::from_secs(10), "c gets the kept token", || async {
        secret_in(&f.cluster, &c).await
    })
    .await;
    assert_eq!(token_of(&in_c), token_of(&in_a));
    assert_eq!(f.standin.requests("app-fan"), 1);
    // Back: Degraded clears.
    f.cluster
        .put_credentials("platform-app", "app-fan", "s3cr3t-fan")
        .await;
    f.wait_status("Degraded clears", |s| {
        s["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Degraded" && c["status"] == "False")
        })
    })
    .await;

    // a stops matching: released, its data kept.
    label_namespace(&f.cluster, &a, json!({"runai-access": null})).await;
    let released = eventually(
        Duration::from_secs(10),
        "a's Secret is released",
        || async {
            secret_in(&f.cluster, &a)
                .await
                .filter(|s| !s.labels().contains_key("tokensync.dev/cluster-credential"))
        },
    )
    .await;
    assert_eq!(token_of(&released), token_of(&in_a));

    // The owner is deleted: b's Secret is released, not deleted.
    f.api
        .delete(&f.name, &DeleteParams::default())
        .await
        .unwrap();
    let kept = eventually(
        Duration::from_secs(15),
        "b's Secret is released",
        || async {
            secret_in(&f.cluster, &b)
                .await
                .filter(|s| !s.labels().contains_key("tokensync.dev/cluster-credential"))
        },
    )
    .await;
    assert!(token_of(&kept).is_some());
    eventually(
        Duration::from_secs(15),
        "the ClusterRunaiCredential is gone",
        || async {
            f.api
                .get_opt(&f.name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        !kept
            .annotations()
            .keys()
            .any(|k| k.starts_with("tokensync.dev/"))
    );
}

/// A namespace user copies another credential's Secret (token and intact
/// record) into the ClusterRunaiCredential's Secret in their namespace while
/// its credentials cannot be read: that token never reaches the other
/// namespaces.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_planted_token_of_other_credentials_never_spreads() {
    let (f, _owned) = Fanout::start("planted", "Delete").await;
    let [a, b, ..] = f.namespaces.clone();
    f.wait_status("a, b synced", |s| s["syncedNamespaces"] == 2)
        .await;
    let own = token_of(&secret_in(&f.cluster, &b).await.unwrap()).unwrap();

    // Another application's RunaiCredential in `a`, whose user plants it.
    // Its token is issued a second later (times are whole seconds), so that
    // it is the newest token the ClusterRunaiCredential's Secrets hold.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.standin.set_client("app-other", "s3cr3t-other", HOUR);
    crate::harness::put_credentials_in(
        &f.cluster.client,
        &a,
        "other-creds",
        "app-other",
        "s3cr3t-other",
    )
    .await;
    let others: Api<runai_token_sync::RunaiCredential> =
        Api::namespaced(f.cluster.client.clone(), &a);
    let mut spec = crate::harness::spec_for(&f.standin, "other-creds");
    spec["target"] = json!({"name": "other-token"});
    others
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
                "metadata": {"name": "other"}, "spec": spec,
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let secrets_a: Api<Secret> = Api::namespaced(f.cluster.client.clone(), &a);
    let source = eventually(
        Duration::from_secs(20),
        "the other credential's Secret",
        || async {
            secrets_a
                .get_opt("other-token")
                .await
                .ok()
                .flatten()
                .filter(|s| token_of(s).is_some())
        },
    )
    .await;
    let planted = token_of(&source).unwrap();
    assert_ne!(planted, own);

    // The platform's credentials go; the ClusterRunaiCredential notices.
    f.cluster
        .secrets()
        .delete("platform-app", &DeleteParams::default())
        .await
        .unwrap();
    f.wait_status("Degraded: credentials not found", |s| {
        s["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "Degraded" && c["status"] == "True" && c["reason"] == "CredentialsNotFound"
        })
    })
    .await;
    let record: serde_json::Map<String, Value> = source
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with("tokensync.dev/"))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let after_plant = secrets_a
        .patch(
            TARGET,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": record},
                // The token and its expiry: the record its hash covers.
                "data": source.data.as_ref().unwrap(),
            })),
        )
        .await
        .unwrap();
    // Positive control: the plant took.
    assert_eq!(token_of(&after_plant), Some(planted.clone()));
    crate::harness::stays(
        Duration::from_secs(10),
        "b keeps the platform's token",
        || async {
            secret_in(&f.cluster, &b).await.and_then(|s| token_of(&s)) == Some(own.clone())
        },
    )
    .await;
}

/// The API server's own count of LIST requests for Secrets
/// (`apiserver_request_total`), summed over its series.
async fn secret_lists(client: &kube::Client) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("resource=\"secrets\"") && l.contains("verb=\"LIST\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A ClusterRunaiCredential that matches no namespace any more, and whose
/// token falls due meanwhile, makes no request at all: no hot loop of
/// cluster-wide Secret lists. On a plane of its own, so that the API
/// server's counters are this test's alone.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_cluster_credential_that_matches_nothing_makes_no_requests() {
    let Some(plane) = crate::chaos::OwnPlane::start() else {
        eprintln!("skipped: no local Kubernetes binaries for a plane of this test's own");
        return;
    };
    let cluster = Cluster::on(plane.kubeconfig.clone(), "nomatch").await;
    let served = cluster.extra_namespace("a").await;
    label_namespace(&cluster, &served, json!({"runai-access": "nomatch"})).await;
    // Due 2/3 into a lifetime of 15 s.
    let standin = standin_with("app-none", "s3cr3t-none", Duration::from_secs(15)).await;
    cluster
        .put_credentials("platform-app", "app-none", "s3cr3t-none")
        .await;
    let _controller = Controller::start_raw(
        &cluster.kubeconfig,
        &[
            "--controller-namespace",
            &cluster.namespace,
            "--cluster-credentials=true",
        ],
    );
    let api: Api<ClusterRunaiCredential> = Api::all(cluster.client.clone());
    let crc: ClusterRunaiCredential = serde_json::from_value(json!({
        "apiVersion": "tokensync.dev/v1alpha1", "kind": "ClusterRunaiCredential",
        "metadata": {"name": "nomatch"},
        "spec": {
            "url": standin.url(),
            "caBundle": standin.ca_pem(),
            "clientCredentialsSecretRef": {"name": "platform-app"},
            "namespaceSelector": {"matchLabels": {"runai-access": "nomatch"}},
            "target": {"name": TARGET},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &crc).await.unwrap();
    eventually(Duration::from_secs(30), "the namespace served", || async {
        secret_in(&cluster, &served)
            .await
            .and_then(|s| token_of(&s))
    })
    .await;
    // The namespace stops matching.
    label_namespace(&cluster, &served, json!({"runai-access": null})).await;
    eventually(Duration::from_secs(30), "no namespace matched", || async {
        let s = status(&api, "nomatch").await;
        (s["matchedNamespaces"] == 0 && ready(&s).1 == "NoMatchingNamespaces").then_some(())
    })
    .await;
    // Past the token's due time, then a quiet window.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before = secret_lists(&cluster.client).await;
    // Positive control: the counter is read (the watches listed at least).
    assert!(before > 0.0, "LIST secrets were counted: {before}");
    let requests = standin.requests("app-none");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lists = secret_lists(&cluster.client).await - before;
    assert!(lists <= 1.0, "{lists} Secret lists in 10 s");
    assert_eq!(standin.requests("app-none"), requests, "no token request");
    drop(plane);
}

/// A 429 with `Retry-After` holds back a ClusterRunaiCredential's group
/// however often namespace changes reconcile it meanwhile.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn retry_after_holds_through_namespace_churn() {
    let (f, _owned) = Fanout::start("churn", "Delete").await;
    let [a, b, c, _] = f.namespaces.clone();
    f.wait_status("a, b synced", |s| s["syncedNamespaces"] == 2)
        .await;
    let held = token_of(&secret_in(&f.cluster, &a).await.unwrap()).unwrap();
    assert_eq!(f.standin.requests("app-fan"), 1);
    f.standin.set_fault(Some(runai_standin::Fault::Status {
        code: 429,
        retry_after: Some(120),
    }));
    f.api
        .patch(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "now"}}}),
            ),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the rate-limited request",
        || async { (f.standin.requests("app-fan") == 2).then_some(()) },
    )
    .await;
    // Namespaces come and go: each change reconciles it.
    for round in 0..4 {
        let value = if round % 2 == 0 {
            json!(f.selector)
        } else {
            json!(null)
        };
        label_namespace(&f.cluster, &c, json!({"runai-access": value})).await;
        label_namespace(&f.cluster, &b, json!({"churn": round.to_string()})).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Positive control: the churn was served, with the token held.
    label_namespace(&f.cluster, &c, json!({"runai-access": f.selector})).await;
    eventually(
        Duration::from_secs(15),
        "c served with the held token",
        || async {
            (secret_in(&f.cluster, &c).await.and_then(|s| token_of(&s)) == Some(held.clone()))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        f.standin.requests("app-fan"),
        2,
        "no request before the Retry-After time"
    );
}

/// api.md, "What a change costs", for a ClusterRunaiCredential: a cosmetic
/// edit keeps the token everywhere; another credentials Secret mints one.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn only_what_defines_a_cluster_credential_costs_a_token() {
    let (f, _owned) = Fanout::start("ccost", "Delete").await;
    let [a, ..] = f.namespaces.clone();
    f.wait_status("a, b synced", |s| s["syncedNamespaces"] == 2)
        .await;
    let token = token_of(&secret_in(&f.cluster, &a).await.unwrap()).unwrap();
    assert_eq!(f.standin.requests("app-fan"), 1);
    f.cluster
        .put_credentials("platform-app-copy", "app-fan", "s3cr3t-fan")
        .await;
    let patch = |spec: Value| {
        let api = f.api.clone();
        let name = f.name.clone();
        async move {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
        }
    };
    patch(json!({"target": {"labels": {"team": "ml"}}})).await;
    eventually(Duration::from_secs(15), "the label in a", || async {
        let secret = secret_in(&f.cluster, &a).await?;
        (secret
            .metadata
            .labels
            .as_ref()?
            .get("team")
            .map(String::as_str)
            == Some("ml"))
        .then_some(())
    })
    .await;
    assert_eq!(
        token_of(&secret_in(&f.cluster, &a).await.unwrap()),
        Some(token.clone())
    );
    crate::harness::stays(
        Duration::from_secs(3),
        "no token for a cosmetic edit",
        || async { f.standin.requests("app-fan") == 1 },
    )
    .await;
    // Positive control: another credentials Secret defines it anew.
    patch(json!({"clientCredentialsSecretRef": {"name": "platform-app-copy"}})).await;
    eventually(Duration::from_secs(15), "a new token in a", || async {
        let now = token_of(&secret_in(&f.cluster, &a).await?)?;
        (now != token && f.standin.requests("app-fan") == 2).then_some(())
    })
    .await;
}

/// Without its credentials, after a restart (no group known), a
/// ClusterRunaiCredential keeps serving the token its Secrets hold (all of
/// one set of credentials), Degraded, and a namespace that stops matching
/// still loses its Secret.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn without_credentials_after_a_restart_the_held_token_stays_in_use() {
    let (mut f, _owned) = Fanout::start("nocreds", "Delete").await;
    let [_, b, ..] = f.namespaces.clone();
    f.wait_status("a, b synced", |s| s["syncedNamespaces"] == 2)
        .await;
    f.cluster
        .secrets()
        .delete("platform-app", &DeleteParams::default())
        .await
        .unwrap();
    let degraded = |s: &Value| {
        s["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "Degraded" && c["status"] == "True" && c["reason"] == "CredentialsNotFound"
        })
    };
    f.wait_status("Degraded: credentials not found", degraded)
        .await;
    f.restart_controller();
    // Still served by the held token after the restart, not blocked: a and
    // b synced (d holds someone else's Secret, as from the start).
    crate::harness::stays(
        Duration::from_secs(5),
        "served with the held token",
        || async {
            let s = status(&f.api, &f.name).await;
            ready(&s).1 == "NamespacesFailed" && s["syncedNamespaces"] == 2
        },
    )
    .await;
    // Positive control for the restarted controller at work: b stops
    // matching and loses its Secret.
    label_namespace(&f.cluster, &b, json!({"runai-access": null})).await;
    eventually(Duration::from_secs(30), "b's Secret deleted", || async {
        secret_in(&f.cluster, &b).await.is_none().then_some(())
    })
    .await;
    assert!(degraded(&status(&f.api, &f.name).await));
}

/// The reconciliations the controller counted.
async fn reconciliations(controller: &Controller) -> u64 {
    let metrics = controller.probe("/metrics").await.1;
    metrics
        .lines()
        .filter(|l| l.starts_with("runai_token_sync_reconciliations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A namespace's change that concerns no ClusterRunaiCredential (it neither
/// selects it nor served it) costs none of them a pass; one that does costs
/// one, and the echo of that pass's own Secret write none.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn an_unrelated_namespaces_change_costs_no_pass() {
    let (f, _owned) = Fanout::start("quietns", "Delete").await;
    let [a, b, c, d] = f.namespaces.clone();
    // Without the foreign Secret in d, nothing is looked at again soon.
    Api::<Secret>::namespaced(f.cluster.client.clone(), &d)
        .delete(TARGET, &Default::default())
        .await
        .unwrap();
    f.wait_status("a, b and d synced", |s| {
        s["matchedNamespaces"] == 3 && s["syncedNamespaces"] == 3
    })
    .await;
    assert!(secret_in(&f.cluster, &a).await.is_some() && secret_in(&f.cluster, &b).await.is_some());
    // Settled: the last pass's own status write may still echo.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = reconciliations(&f._controller).await;
    label_namespace(&f.cluster, &c, json!({"team": "web"})).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        reconciliations(&f._controller).await,
        before,
        "an unrelated namespace's label reconciled nothing"
    );
    // Positive control: the same namespace, labelled to be selected, is
    // served by the pass its change starts.
    label_namespace(&f.cluster, &c, json!({"runai-access": f.selector})).await;
    eventually(Duration::from_secs(20), "c served", || async {
        secret_in(&f.cluster, &c).await.and_then(|s| token_of(&s))
    })
    .await;
    // One pass, and the echo of its own write to c starts no other.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(reconciliations(&f._controller).await, before + 1);
}

/// A ClusterRunaiCredential created with a refresh request already set gets
/// one token: the first one answers the request too.
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_refresh_requested_at_creation_costs_one_token() {
    let requested = json!({"tokensync.dev/refresh-requested-at": "r1"});
    let (f, _owned) = Fanout::start_with("reqnew", "Delete", requested).await;
    f.wait_status("a, b synced", |s| s["syncedNamespaces"] == 2)
        .await;
    stays(Duration::from_secs(5), "one token request", || async {
        f.standin.requests("app-fan") == 1
    })
    .await;
    // Positive control: a new request value gets a new token.
    let patch = json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "r2"}}});
    f.api
        .patch(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "a second token", || async {
        (f.standin.requests("app-fan") == 2).then_some(())
    })
    .await;
    stays(Duration::from_secs(3), "no third", || async {
        f.standin.requests("app-fan") == 2
    })
    .await;
}
