//! CRD upgrades with Helm (api.md, "Talking to the API server: faults"):
//! the chart installs its CRDs as templates, so `helm upgrade` updates an
//! older CRD, and `helm uninstall` keeps them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;

use crate::chaos::OwnPlane;
use crate::harness::{Controller, eventually};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/runai-token-sync");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a folder");
    for entry in std::fs::read_dir(from).expect("a readable folder") {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("a copy");
        }
    }
}

/// The chart as an earlier release had it: its RunaiCredential CRD without
/// `tokenApi: Auto` (default `V1`) and without `status.tokenApi`.
fn older_chart(dir: &Path) -> PathBuf {
    let chart = dir.join("runai-token-sync");
    copy_tree(Path::new(CHART), &chart);
    let crd_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/runaicredentials.tokensync.dev.yaml"
    );
    let mut crd: Value = serde_yaml::from_str(&std::fs::read_to_string(crd_file).unwrap()).unwrap();
    let version = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let token_api = &mut version["spec"]["properties"]["tokenApi"];
    token_api["default"] = "V1".into();
    token_api["enum"] = serde_json::json!(["V1", "V2", "AppToken"]);
    version["status"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("tokenApi");
    crd["metadata"]["annotations"] = serde_json::json!({"helm.sh/resource-policy": "keep"});
    let template = format!(
        "{{{{- if .Values.crds.enabled }}}}\n{}{{{{- end }}}}\n",
        serde_yaml::to_string(&crd).unwrap()
    );
    std::fs::write(chart.join("templates/crds.yaml"), template).unwrap();
    chart
}

fn helm(kubeconfig: &Path, args: &[&str]) {
    let out = Command::new("helm")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("helm runs (hack/test.sh installs it)");
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn crd(client: &Client, name: &str) -> Option<Value> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = api.get_opt(name).await.unwrap()?;
    Some(serde_json::to_value(crd).unwrap())
}

fn schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn helm_upgrade_updates_an_older_crd_and_uninstall_keeps_it() {
    let Some(plane) = OwnPlane::start() else {
        eprintln!("skipped: no local Kubernetes binaries for a plane of this test's own");
        return;
    };
    let kubeconfig = plane.kubeconfig.clone();
    let client = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("crd-upgrade-{:08x}", rand::random::<u32>()));
    let older = older_chart(&dir);
    let name = "runaicredentials.tokensync.dev";

    helm(
        &kubeconfig,
        &[
            "install",
            "rts",
            older.to_str().unwrap(),
            "--namespace",
            "default",
        ],
    );
    let installed = crd(&client, name).await.expect("the older CRD installed");
    assert!(schema(&installed)["status"]["properties"]["tokenApi"].is_null());
    assert_eq!(
        schema(&installed)["spec"]["properties"]["tokenApi"]["default"],
        "V1"
    );

    // The controller names what the installed CRD lacks, and counts it.
    let controller = Controller::start_raw(&kubeconfig, &["--controller-namespace", "default"]);
    let series = "runai_token_sync_crd_missing_fields{crd=\"runaicredentials.tokensync.dev\"}";
    let metric = || async {
        let (_, text) = controller.probe("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<u32>().ok())
    };
    eventually(Duration::from_secs(20), "the gaps are counted", || async {
        (metric().await == Some(2)).then_some(())
    })
    .await;
    let logs = controller.logs();
    for said in [
        "status.tokenApi is dropped",
        "spec.tokenApi: Auto is refused",
    ] {
        assert!(logs.contains(said), "{said} in {logs}");
    }

    helm(
        &kubeconfig,
        &["upgrade", "rts", CHART, "--namespace", "default"],
    );
    let upgraded = crd(&client, name).await.unwrap();
    assert_eq!(
        schema(&upgraded)["spec"]["properties"]["tokenApi"]["default"],
        "Auto",
        "helm upgrade updated the CRD"
    );
    assert!(schema(&upgraded)["status"]["properties"]["tokenApi"].is_object());
    // Seen by the running controller: nothing lacks any more.
    eventually(Duration::from_secs(20), "no gap left", || async {
        (metric().await == Some(0)).then_some(())
    })
    .await;
    assert!(
        controller
            .logs()
            .contains("now has every field the controller knows")
    );
    assert!(
        crd(&client, "clusterrunaicredentials.tokensync.dev")
            .await
            .is_some()
    );

    helm(&kubeconfig, &["uninstall", "rts", "--namespace", "default"]);
    assert!(
        crd(&client, name).await.is_some(),
        "kept on uninstall: deleting a CRD deletes every credential"
    );
    let _ = std::fs::remove_dir_all(dir);
    drop(plane);
}
