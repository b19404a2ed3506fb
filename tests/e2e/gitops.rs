//! For platform teams: the output formats (api.md, "Output formats"), the
//! kstatus conditions, `kubectl wait`, the Ready metric and the chart's Argo
//! CD health script (api.md, "Status for GitOps tools"), against the real API
//! server and the stand-in.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use runai_standin::Fault;
use runai_token_sync::RunaiCredential;
use serde_json::{Value, json};

use crate::harness::{Cluster, eventually, spec_for, standin_with};

const HOUR: Duration = Duration::from_secs(3600);
const HEALTH_SCRIPT: &str = "deploy/helm/runai-token-sync/docs/argocd-health.lua";
const REFRESH_ACTION: &str = "deploy/helm/runai-token-sync/docs/argocd-refresh-action.lua";
const REFRESH_DISCOVERY: &str = "deploy/helm/runai-token-sync/docs/argocd-refresh-discovery.lua";

/// The value of `key` in Secret `name`.
async fn value(cluster: &Cluster, name: &str, key: &str) -> String {
    cluster
        .token(name, key)
        .await
        .unwrap_or_else(|| panic!("Secret {name} has no key {key}"))
}

/// Every output format of one token, as api.md gives them.
fn expected(token: &str, url: &str, expires_at: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {token}")),
        (
            "runai.env",
            format!("RUNAI_URL={url}\nRUNAI_TOKEN={token}\nRUNAI_TOKEN_EXPIRES_AT={expires_at}\n"),
        ),
        (
            "token.json",
            format!(r#"{{"url":"{url}","accessToken":"{token}","expiresAt":"{expires_at}"}}"#),
        ),
        (
            "custom",
            format!("token={token} url={url} expires={expires_at} literal=${{token}}"),
        ),
    ]
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn every_output_format_holds_the_token_and_follows_a_refresh() {
    let cluster = Cluster::new("outputs").await;
    let standin = standin_with("app-out", "s3cr3t-out", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-out", "s3cr3t-out")
        .await;
    let controller = cluster.start_controller();
    let mut spec = spec_for(&standin, "runai-client");
    let url = spec["url"].as_str().unwrap().to_owned();
    spec["target"] = json!({"outputs": [
        {"key": "authorization", "format": "BearerHeader"},
        {"key": "runai.env", "format": "EnvFile"},
        {"key": "token.json", "format": "Json"},
        {"key": "custom", "format": "Template",
         "template": "token=${token} url=${url} expires=${expiresAt} literal=$${token}"},
    ]});
    cluster.create_credential("formats", spec.clone()).await;

    // Invalid outputs: refused before any request, Stalled with the reason.
    let mut unknown = spec.clone();
    unknown["target"] = json!({"name": "unknown-placeholder", "outputs": [
        {"key": "custom", "format": "Template", "template": "Bearer ${accessToken}"},
    ]});
    cluster.create_credential("unknown", unknown).await;
    let mut collision = spec.clone();
    collision["target"] = json!({"name": "collision", "outputs": [
        {"key": "accessToken", "format": "BearerHeader"},
    ]});
    cluster.create_credential("collision", collision).await;

    cluster.wait_ready("formats").await;
    let check_all = |token: String| {
        let cluster = &cluster;
        let url = url.clone();
        async move {
            let expires_at = value(cluster, "formats", "expiresAt").await;
            for (key, want) in expected(&token, &url, &expires_at) {
                assert_eq!(value(cluster, "formats", key).await, want, "key {key}");
            }
            expires_at
        }
    };
    let first = value(&cluster, "formats", "accessToken").await;
    let first_expiry = check_all(first.clone()).await;

    let message = cluster.wait_not_ready("unknown", "InvalidSpec").await;
    assert!(
        message.contains("unknown placeholder ${accessToken}"),
        "{message}"
    );
    let message = cluster.wait_not_ready("collision", "InvalidSpec").await;
    assert!(
        message.contains("\"accessToken\" is used twice"),
        "{message}"
    );
    for name in ["unknown", "collision"] {
        let cr = cluster.credentials().get(name).await.unwrap();
        assert_eq!(cr.condition("Stalled").unwrap().status, "True", "{name}");
        assert!(cr.condition("Reconciling").is_none(), "{name}");
    }
    assert!(cluster.secret("unknown-placeholder").await.is_none());
    assert!(cluster.secret("collision").await.is_none());
    // One request, for the valid credential only (the positive control).
    assert_eq!(standin.requests("app-out"), 1);

    // A forced refresh changes every key in one write.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let version = cluster
        .secret("formats")
        .await
        .unwrap()
        .metadata
        .resource_version;
    cluster
        .patch_credential(
            "formats",
            json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "1"}}}),
        )
        .await;
    let second = eventually(Duration::from_secs(15), "a new token", || async {
        cluster
            .token("formats", "accessToken")
            .await
            .filter(|t| *t != first)
    })
    .await;
    let second_expiry = check_all(second.clone()).await;
    assert_ne!(first_expiry, second_expiry);
    let after = cluster.secret("formats").await.unwrap().metadata;
    let generation_of = |v: Option<String>| v.unwrap().parse::<u64>().unwrap();
    assert!(generation_of(after.resource_version) > generation_of(version));
    assert_eq!(standin.requests("app-out"), 2);

    // An output changed by hand is put back, with no new token.
    cluster
        .secrets()
        .patch(
            "formats",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"authorization": "Bearer forged"}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the output is put back",
        || async {
            (value(&cluster, "formats", "authorization").await == format!("Bearer {second}"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(standin.requests("app-out"), 2);
    controller.assert_logs_hold_none_of(&[&first, &second, "s3cr3t-out"]);
}

/// A JSON value as a Lua 5.1 table constructor.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\{:03}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::from(k.as_str())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the chart's Argo CD health script on `object` with Lua 5.1, as Argo
/// CD does, and returns `(status, message)`.
fn argocd_health(object: &RunaiCredential) -> (String, String) {
    argocd_health_of(&serde_json::to_value(object).unwrap())
}

/// [`argocd_health`] for an object of either kind, as JSON.
pub fn argocd_health_of(object: &Value) -> (String, String) {
    let script = std::fs::read_to_string(HEALTH_SCRIPT).expect("the health script");
    let program = format!(
        "local obj = {}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(object)
    );
    let path = std::env::temp_dir().join(format!(
        "argocd-health-{}-{}.lua",
        std::process::id(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    ));
    std::fs::write(&path, program).unwrap();
    let out = Command::new("lua5.1")
        .arg(&path)
        .output()
        .expect("lua5.1 runs (hack/tools.sh installs it)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "the health script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), message.to_owned())
}

/// `kubectl wait --for=condition=<condition>` on a RunaiCredential.
fn kubectl_wait(cluster: &Cluster, name: &str, condition: &str, timeout: &str) -> bool {
    Command::new("kubectl")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(["wait", "-n", &cluster.namespace])
        .arg(format!("runaicredential/{name}"))
        .arg(format!("--for=condition={condition}"))
        .arg(format!("--timeout={timeout}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("kubectl runs")
        .success()
}

// Several threads: the stand-in serves while a command runs and is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn gitops_tools_tell_working_waiting_and_stuck_apart() {
    let cluster = Cluster::new("gitops").await;
    let standin = standin_with("app-gitops", "s3cr3t-gitops", HOUR).await;
    let failing = standin_with("app-failing", "s3cr3t-failing", HOUR).await;
    failing.set_fault(Some(Fault::Status {
        code: 503,
        retry_after: Some(30),
    }));
    cluster
        .put_credentials("runai-client", "app-gitops", "s3cr3t-gitops")
        .await;
    cluster
        .put_credentials("failing-client", "app-failing", "s3cr3t-failing")
        .await;

    // A new credential, as Argo CD sees it before the controller runs.
    let new = cluster
        .create_credential("fresh", spec_for(&standin, "runai-client"))
        .await;
    assert_eq!(argocd_health(&new).0, "Progressing");

    let controller = cluster.start_controller();
    cluster
        .create_credential("healthy", spec_for(&standin, "runai-client"))
        .await;
    cluster
        .create_credential("stuck", spec_for(&standin, "no-such-secret"))
        .await;
    cluster
        .create_credential("retrying", spec_for(&failing, "failing-client"))
        .await;
    cluster
        .create_credential("degraded", spec_for(&standin, "runai-client"))
        .await;

    // `kubectl wait` reads the same conditions.
    assert!(kubectl_wait(&cluster, "healthy", "Ready", "30s"));
    assert!(kubectl_wait(&cluster, "stuck", "Stalled", "30s"));
    assert!(kubectl_wait(&cluster, "retrying", "Reconciling", "30s"));
    // The positive control of the one that must not pass.
    assert!(!kubectl_wait(&cluster, "stuck", "Ready", "3s"));

    let healthy = cluster.wait_ready("healthy").await;
    let condition = |cr: &RunaiCredential, t: &str| {
        let c = cr.condition(t).unwrap_or_else(|| panic!("no {t}"));
        (c.status.clone(), c.reason.clone())
    };
    // kstatus conditions that are not True are left out.
    assert!(healthy.condition("Reconciling").is_none());
    assert!(healthy.condition("Stalled").is_none());
    let status = healthy.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
    assert_eq!(argocd_health(&healthy).0, "Healthy");

    cluster.wait_not_ready("stuck", "CredentialsNotFound").await;
    let stuck = cluster.credentials().get("stuck").await.unwrap();
    assert_eq!(
        condition(&stuck, "Stalled"),
        ("True".to_owned(), "CredentialsNotFound".to_owned())
    );
    assert_eq!(
        stuck.condition("Stalled").unwrap().message,
        stuck.condition("Ready").unwrap().message
    );
    assert!(stuck.condition("Reconciling").is_none());
    let (health, message) = argocd_health(&stuck);
    assert_eq!(health, "Degraded");
    assert!(message.starts_with("CredentialsNotFound: "), "{message}");

    let retrying = cluster
        .wait_condition("retrying", "Reconciling", "True", Duration::from_secs(15))
        .await;
    assert_eq!(
        condition(&retrying, "Reconciling"),
        ("True".to_owned(), "TokenEndpointError".to_owned())
    );
    assert!(retrying.condition("Stalled").is_none());
    // A transient failure being retried is progress, not a failed sync.
    let (health, message) = argocd_health(&retrying);
    assert_eq!(health, "Progressing", "{message}");
    assert!(message.starts_with("TokenEndpointError"), "{message}");

    // Degraded: the token is valid, refreshing fails.
    cluster.wait_ready("degraded").await;
    // The stand-in fails from now on, for the group of `healthy` too; only
    // `degraded` is asked to refresh.
    standin.set_fault(Some(Fault::Status {
        code: 503,
        retry_after: Some(30),
    }));
    cluster
        .patch_credential(
            "degraded",
            json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "1"}}}),
        )
        .await;
    let degraded = cluster
        .wait_condition("degraded", "Degraded", "True", Duration::from_secs(15))
        .await;
    assert_eq!(condition(&degraded, "Ready").0, "True");
    assert!(degraded.condition("Reconciling").is_none());
    assert!(degraded.condition("Stalled").is_none());
    // Healthy while the token in place is valid; the message says that
    // refreshing fails and until when it stays valid.
    let (health, message) = argocd_health(&degraded);
    assert_eq!(health, "Healthy", "{message}");
    assert!(
        message.contains("refreshing fails") && message.contains("valid until"),
        "{message}"
    );

    // The Ready metric: one series at 1 per credential, gone with it.
    let metric = |name: &str, condition: &str| {
        format!(
            "runai_token_sync_credential_ready_status{{namespace=\"{}\",name=\"{name}\",condition=\"{condition}\"}} 1",
            cluster.namespace
        )
    };
    let (_, text) = controller.probe("/metrics").await;
    assert!(text.contains(&metric("healthy", "True")), "{text}");
    assert!(text.contains(&metric("stuck", "False")), "{text}");
    assert!(!text.contains(&metric("stuck", "True")), "{text}");
    cluster
        .credentials()
        .delete("stuck", &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the series go", || async {
        let (_, text) = controller.probe("/metrics").await;
        (!text.contains("name=\"stuck\"")).then_some(())
    })
    .await;
    let (_, text) = controller.probe("/metrics").await;
    assert!(text.contains(&metric("healthy", "True")), "{text}");
}

// The committed CRDs, as `kubectl apply` sends them: the API server takes
// them without a warning (an unknown `format`, a deprecated field).
#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn the_crds_apply_without_warnings() {
    let cluster = Cluster::new("crd-warnings").await;
    let apply = |file: &str| {
        let output = Command::new("kubectl")
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
            ])
            .args(["--field-manager", "runai-token-sync-e2e", "-f"])
            .arg(file)
            .output()
            .expect("kubectl runs");
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for file in [
        "crds/runaicredentials.tokensync.dev.yaml",
        "crds/clusterrunaicredentials.tokensync.dev.yaml",
    ] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let stderr = apply(&path);
        assert!(
            !stderr.contains("Warning"),
            "{file} draws warnings from the API server:\n{stderr}"
        );
    }
    // Positive control: a CRD with a format Kubernetes does not know draws
    // the warning this test looks for.
    let mut odd = serde_json::to_value(runai_token_sync::api::crd()).unwrap();
    odd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["failedAttempts"]["format"] = "uint32".into();
    let path = std::env::temp_dir().join(format!("odd-crd-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&odd).unwrap()).unwrap();
    let stderr = apply(path.to_str().unwrap());
    let _ = std::fs::remove_file(&path);
    assert!(
        stderr.contains("Warning") && stderr.contains("uint32"),
        "an unknown format must draw a warning:\n{stderr}"
    );
}

/// Runs the chart's `refresh` action on `object` with Lua 5.1, as Argo CD
/// does, and returns the value it set on the refresh annotation.
fn argocd_refresh(object: &Value) -> String {
    let script = std::fs::read_to_string(REFRESH_ACTION).expect("the action script");
    let discovery = std::fs::read_to_string(REFRESH_DISCOVERY).expect("the discovery script");
    let program = format!(
        "local obj = {}\nlocal actions = (function()\n{discovery}\nend)()\nassert(actions.refresh ~= nil and not actions.refresh.disabled)\nlocal out = (function()\n{script}\nend)()\nio.write(out.metadata.annotations[\"tokensync.dev/refresh-requested-at\"])\n",
        lua(object)
    );
    let path = std::env::temp_dir().join(format!(
        "argocd-refresh-{}-{}.lua",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&path, program).unwrap();
    let out = Command::new("lua5.1")
        .arg(&path)
        .output()
        .expect("lua5.1 runs (hack/tools.sh installs it)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "the action failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn the_argocd_health_script_reads_every_state_and_the_refresh_action_refreshes() {
    // Every state, on objects of both kinds as the API server returns them,
    // and conditions without a reason or a message.
    let object = |kind: &str, generation: i64, observed: Option<i64>, conditions: Value| {
        json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "x", "generation": generation},
            "status": {"observedGeneration": observed, "conditions": conditions},
        })
    };
    for kind in ["RunaiCredential", "ClusterRunaiCredential"] {
        let cases = [
            (object(kind, 1, None, json!([])), "Progressing"),
            (
                object(
                    kind,
                    2,
                    Some(1),
                    json!([{"type": "Ready", "status": "True"}]),
                ),
                "Progressing",
            ),
            (
                object(
                    kind,
                    1,
                    Some(1),
                    json!([{"type": "Ready", "status": "True"}]),
                ),
                "Healthy",
            ),
            (
                object(
                    kind,
                    1,
                    Some(1),
                    json!([
                        {"type": "Ready", "status": "True", "reason": "TokenReady"},
                        {"type": "Degraded", "status": "True", "reason": "TokenEndpointError"},
                    ]),
                ),
                "Healthy",
            ),
            (
                object(
                    kind,
                    1,
                    Some(1),
                    json!([
                        {"type": "Ready", "status": "False"},
                        {"type": "Reconciling", "status": "True"},
                    ]),
                ),
                "Progressing",
            ),
            (
                object(
                    kind,
                    1,
                    Some(1),
                    json!([{"type": "Ready", "status": "False"}]),
                ),
                "Degraded",
            ),
            (
                object(
                    kind,
                    1,
                    Some(1),
                    json!([{"type": "Ready", "status": "Unknown"}]),
                ),
                "Progressing",
            ),
        ];
        for (object, expected) in cases {
            let (health, message) = argocd_health_of(&object);
            assert_eq!(health, expected, "{object}: {message}");
        }
        let (_, message) = argocd_health_of(&object(
            kind,
            1,
            Some(1),
            json!([{"type": "Ready", "status": "False"}]),
        ));
        assert_eq!(message, "Ready=False");
    }

    // The refresh action on a live object: applied as Argo CD would, it
    // gets a new token.
    let cluster = Cluster::new("argocd-refresh").await;
    let standin = standin_with("app-action", "s3cr3t-action", HOUR).await;
    cluster
        .put_credentials("runai-client", "app-action", "s3cr3t-action")
        .await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("refreshed", spec_for(&standin, "runai-client"))
        .await;
    cluster.wait_ready("refreshed").await;
    let before = cluster.token("refreshed", "accessToken").await.unwrap();
    let live = serde_json::to_value(cluster.credentials().get("refreshed").await.unwrap()).unwrap();
    let value = argocd_refresh(&live);
    let at: jiff::Timestamp = value.parse().expect("an RFC 3339 time");
    assert!(value.ends_with('Z'), "{value}");
    assert!(
        jiff::Timestamp::now().duration_since(at).abs() < jiff::SignedDuration::from_secs(5),
        "{value}"
    );
    cluster
        .patch_credential(
            "refreshed",
            json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": value}}}),
        )
        .await;
    eventually(Duration::from_secs(20), "a new token", || async {
        cluster
            .token("refreshed", "accessToken")
            .await
            .filter(|t| *t != before)
    })
    .await;
    assert_eq!(standin.requests("app-action"), 2);
}
