//! The Helm chart, the plain manifests and the Dockerfile.
//!
//! Tests that run `helm` or `hadolint` are ignored for a plain `cargo test`;
//! `hack/test.sh` installs both and runs them.

use std::{path::Path, process::Command};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = "deploy/helm/runai-token-sync";

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a tool from PATH in the repository root and returns its stdout.
fn run(tool: &str, args: &[&str]) -> String {
    let output = command(tool, args);
    assert!(
        output.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs a tool from PATH in the repository root; panics only when it cannot
/// be started.
fn command(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}); hack/test.sh installs it (hack/tools.sh)")
        })
}

/// Every object of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn template(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "rts", CHART, "--namespace", "rts-system"];
    args.extend_from_slice(extra);
    objects(&run("helm", &args))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn grants_secrets_listing(role: &Value) -> bool {
    role["rules"].as_array().into_iter().flatten().any(|rule| {
        let on_secrets = rule["resources"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "secrets"));
        let listing = rule["verbs"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v == "list" || v == "watch"));
        on_secrets && listing
    })
}

#[test]
fn the_chart_carries_the_generated_crds_as_kept_templates() {
    let template = read(&format!("{CHART}/templates/crds.yaml"));
    let documents: Vec<String> = [
        "runaicredentials.tokensync.dev.yaml",
        "clusterrunaicredentials.tokensync.dev.yaml",
    ]
    .iter()
    .map(|file| {
        read(&format!("crds/{file}")).replacen(
            "\nmetadata:\n",
            "\nmetadata:\n  annotations:\n    helm.sh/resource-policy: keep\n",
            1,
        )
    })
    .collect();
    let expected = format!(
        "{{{{- /* Generated from the Rust types by hack/generate.sh; do not edit. */ -}}}}\n{{{{- if .Values.crds.enabled }}}}\n{}---\n{}{{{{- end }}}}\n",
        documents[0], documents[1]
    );
    assert!(
        template == expected,
        "{CHART}/templates/crds.yaml differs from crds/; run hack/generate.sh"
    );
    // Helm installs a chart's crds/ directory once and never upgrades it.
    assert!(!Path::new(ROOT).join(CHART).join("crds").exists());
}

#[test]
#[ignore = "needs helm: run hack/test.sh"]
fn helm_lint_is_clean() {
    for extra in [&[][..], &["--set", "watchNamespaces={team-a,team-b}"][..]] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = run("helm", &args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
#[ignore = "needs helm: run hack/test.sh"]
fn the_default_install_is_hardened_and_highly_available() {
    let objects = template(&[]);
    let deployment = of_kind(&objects, "Deployment")[0];
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(env("LEADER_ELECT"), Some(Value::from("true")));
    assert_eq!(env("WATCH_NAMESPACE"), Some(Value::from("")));
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource}"
            );
        }
    }
    assert_eq!(of_kind(&objects, "ServiceAccount").len(), 1);
    assert_eq!(of_kind(&objects, "Service").len(), 1, "the metrics Service");
    let all_cluster_roles = of_kind(&objects, "ClusterRole");
    // The controller's own, and the two aggregated into view/edit/admin,
    // which grant nothing on Secrets.
    let (cluster_roles, for_people): (Vec<&Value>, Vec<&Value>) =
        all_cluster_roles.into_iter().partition(|role| {
            role["metadata"]["labels"]
                .as_object()
                .is_none_or(|labels| !labels.keys().any(|k| k.contains("aggregate-to-")))
        });
    // The workload's, and the one for ClusterRunaiCredentials (which reads
    // them and namespaces, and no Secret).
    assert_eq!(cluster_roles.len(), 2);
    let (workload, cluster_credentials): (Vec<&Value>, Vec<&Value>) = cluster_roles
        .into_iter()
        .partition(|role| grants_secrets_listing(role));
    assert_eq!((workload.len(), cluster_credentials.len()), (1, 1));
    assert!(
        cluster_credentials[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|rule| rule["resources"][0] != "secrets")
    );
    let cluster_roles = workload;
    assert_eq!(for_people.len(), 2);
    for role in &for_people {
        for rule in role["rules"].as_array().unwrap() {
            assert_eq!(rule["apiGroups"][0], "tokensync.dev", "{role}");
            assert!(
                rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r.as_str().unwrap().starts_with("runaicredentials")),
                "only RunaiCredentials are handed to people: {role}"
            );
        }
    }
    // The spec of a RunaiCredential is the user's: only its status may be written.
    for rule in cluster_roles[0]["rules"].as_array().unwrap() {
        if rule["resources"][0] == "runaicredentials" {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(verbs, ["get", "list", "watch"]);
        }
    }
    for optional in [
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(
            of_kind(&objects, optional).is_empty(),
            "{optional} is off by default"
        );
    }
}

#[test]
#[ignore = "needs helm: run hack/test.sh"]
fn watch_namespaces_grant_nothing_cluster_wide() {
    let objects = template(&["--set", "watchNamespaces={team-a,team-b}"]);
    // The roles for people, which no binding of the chart uses, and the one
    // for ClusterRunaiCredentials: none grants anything on Secrets.
    assert!(of_kind(&objects, "ClusterRole").iter().all(|role| {
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|rule| rule["resources"][0] != "secrets")
    }));
    assert!(of_kind(&objects, "ClusterRoleBinding").iter().all(|b| {
        b["roleRef"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-cluster-credentials")
    }));
    let roles = of_kind(&objects, "Role");
    let in_namespace = |ns: &str| {
        roles
            .iter()
            .filter(|r| r["metadata"]["namespace"] == ns)
            .count()
    };
    assert_eq!(in_namespace("team-a"), 1);
    assert_eq!(in_namespace("team-b"), 1);
    // In the watched namespaces, and in the controller's own, where the
    // credentials of ClusterRunaiCredentials live; not there without them.
    for role in roles {
        let namespace = role["metadata"]["namespace"].as_str().unwrap();
        if namespace == "default" {
            // Events about ClusterRunaiCredentials, and nothing else.
            assert_eq!(
                role["rules"],
                serde_json::json!([{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}])
            );
            continue;
        }
        assert!(
            grants_secrets_listing(role),
            "Secrets can be listed in {namespace}"
        );
    }
    let without = template(&[
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "clusterCredentials.enabled=false",
    ]);
    assert!(of_kind(&without, "ClusterRoleBinding").is_empty());
    for role in of_kind(&without, "Role") {
        let namespace = role["metadata"]["namespace"].as_str().unwrap();
        assert_eq!(
            grants_secrets_listing(role),
            namespace != "rts-system",
            "Secrets can be listed only in the watched namespaces ({namespace})"
        );
    }
    let deployment = of_kind(&objects, "Deployment")[0];
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let watch = env.iter().find(|e| e["name"] == "WATCH_NAMESPACE").unwrap();
    assert_eq!(watch["value"], "team-a,team-b");
}

#[test]
#[ignore = "needs helm: run hack/test.sh"]
fn optional_objects_render_when_enabled() {
    let objects = template(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.runai.cidrs={203.0.113.10/32}",
    ]);
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert_eq!(of_kind(&objects, kind).len(), 1, "{kind}");
    }
    let rules = &of_kind(&objects, "PrometheusRule")[0]["spec"]["groups"][0]["rules"];
    let alerts: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert!(
        alerts.contains(&"RunaiTokenExpiringSoon") && alerts.contains(&"RunaiTokenRefreshFailing"),
        "{alerts:?}"
    );
    let policy = of_kind(&objects, "NetworkPolicy")[0];
    assert!(policy.to_string().contains("203.0.113.10/32"));
}

#[test]
#[ignore = "needs helm: run hack/test.sh"]
fn the_trust_settings_reach_the_controller() {
    let env_of = |objects: &[Value], name: &str| {
        of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    let defaults = template(&[]);
    assert_eq!(
        env_of(&defaults, "ALLOWED_URLS"),
        None,
        "unset: any https:// URL"
    );
    assert_eq!(
        env_of(&defaults, "CREDENTIALS_SECRET_LABEL_REQUIRED"),
        Some(Value::from("false"))
    );
    let restricted = template(&[
        "--set",
        "allowedUrls={https://*.run.ai,https://runai.example.com/runai/}",
        "--set",
        "credentialsSecretLabelRequired=true",
    ]);
    assert_eq!(
        env_of(&restricted, "ALLOWED_URLS"),
        Some(Value::from(
            "https://*.run.ai,https://runai.example.com/runai/"
        ))
    );
    assert_eq!(
        env_of(&restricted, "CREDENTIALS_SECRET_LABEL_REQUIRED"),
        Some(Value::from("true"))
    );
}

#[test]
#[ignore = "needs helm: run hack/test.sh"]
fn the_plain_manifests_are_rendered_from_the_chart() {
    let rendered = run(
        "helm",
        &[
            "template",
            "runai-token-sync",
            CHART,
            "--namespace",
            "runai-token-sync",
            "--include-crds",
        ],
    );
    let committed = read("deploy/runai-token-sync.yaml");
    let body: String = committed
        .lines()
        .skip_while(|l| l.starts_with("# Rendered") || l.starts_with("# Install"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        body == rendered,
        "deploy/runai-token-sync.yaml is stale; run hack/render-manifests.sh"
    );
}

#[test]
#[ignore = "needs hadolint: run hack/test.sh"]
fn the_dockerfile_passes_hadolint() {
    run("hadolint", &["Dockerfile"]);
}

/// Runs a tool from PATH in the repository root: whether it succeeded, and
/// what it printed (stdout, then stderr).
fn outcome(tool: &str, args: &[&str]) -> (bool, String) {
    let output = command(tool, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A folder of this test's own under the system's temporary folder.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rts-chart-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// Copies a folder and everything in it.
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

/// The Kubernetes version whose schemas the manifests are checked against:
/// the newest the suite runs on (see the README's tested versions).
const SCHEMA_VERSION: &str = "1.37.0";

#[test]
#[ignore = "needs helm and kubernetes-validate: run hack/test.sh"]
fn the_manifests_validate_against_the_current_kubernetes_schemas() {
    let dir = scratch("validate");
    let mut files = Vec::new();
    for (name, extra) in [
        ("default.yaml", vec![]),
        (
            "watch-namespaces.yaml",
            vec!["--set", "watchNamespaces={team-a,team-b}"],
        ),
    ] {
        let mut args = vec![
            "template",
            "rts",
            CHART,
            "--namespace",
            "rts-system",
            "--include-crds",
        ];
        args.extend(extra);
        let path = dir.join(name);
        std::fs::write(&path, run("helm", &args)).expect("the rendering is written");
        files.push(path.to_string_lossy().into_owned());
    }
    files.push("deploy/runai-token-sync.yaml".to_owned());
    let expected_objects: usize = files
        .iter()
        .map(|f| objects(&std::fs::read_to_string(Path::new(ROOT).join(f)).unwrap()).len())
        .sum();

    let mut args = vec!["--strict", "-k", SCHEMA_VERSION];
    args.extend(files.iter().map(String::as_str));
    let (ok, report) = outcome("kubernetes-validate", &args);
    assert!(ok, "the manifests do not validate:\n{report}");
    let passed = report.matches(" passed for resource ").count();
    assert_eq!(
        passed, expected_objects,
        "every object must have been checked:\n{report}"
    );

    // Positive control: the validator refuses what 1.37 would refuse.
    let mut broken = objects(&std::fs::read_to_string(dir.join("default.yaml")).unwrap());
    let deployment = broken
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] =
        Value::from("Always");
    let broken_path = dir.join("broken.yaml");
    std::fs::write(
        &broken_path,
        serde_yaml::to_string(deployment).expect("YAML"),
    )
    .unwrap();
    let (ok, report) = outcome(
        "kubernetes-validate",
        &[
            "--strict",
            "-k",
            SCHEMA_VERSION,
            broken_path.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && report.contains("imagePullPolicy2"),
        "an unknown field must be refused:\n{report}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs helm and checkov: run hack/test.sh"]
fn checkov_finds_nothing_in_the_chart_but_its_documented_exceptions() {
    let config = format!("{CHART}/.checkov.yaml");
    // checkov reads the `.checkov.yaml` of the folder it scans: the scan
    // without the exceptions is of a copy of the chart without it.
    let scratch_root = scratch("checkov");
    let bare = scratch_root.join("runai-token-sync");
    copy_tree(&Path::new(ROOT).join(CHART), &bare);
    std::fs::remove_file(bare.join(".checkov.yaml")).expect("the copy has the exceptions");
    let bare = bare.to_string_lossy().into_owned();
    let scan = |with_exceptions: bool| {
        let mut args = vec![
            "-d",
            if with_exceptions { CHART } else { &bare },
            "--framework",
            "helm",
            "--compact",
            "--quiet",
            "--skip-download",
        ];
        if with_exceptions {
            args.extend(["--config-file", &config]);
        }
        outcome("checkov", &args)
    };
    let (ok, report) = scan(true);
    assert!(
        ok && report.contains("Failed checks: 0"),
        "checkov finds something in the chart:\n{report}"
    );

    // Each exception carries its reason, on the line above it.
    let text = read(&config);
    let lines: Vec<&str> = text.lines().collect();
    let exceptions: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| {
            let id = line.trim().strip_prefix("- ")?;
            assert!(
                i > 0 && lines[i - 1].trim().starts_with("# ") && lines[i - 1].len() > 20,
                "{config}: {id} has no reason on the line above it"
            );
            Some(id)
        })
        .collect();
    assert!(!exceptions.is_empty());

    // Positive control: without them, checkov reports each of them, and an
    // exception that no longer matches a finding is dropped.
    let (ok, report) = scan(false);
    assert!(!ok, "checkov must fail without the exceptions:\n{report}");
    for id in exceptions {
        assert!(
            report.contains(&format!("Check: {id}:")),
            "{id} is excepted in {config} but checkov no longer finds it; remove it:\n{report}"
        );
    }
    let _ = std::fs::remove_dir_all(scratch_root);
}

#[test]
fn the_argocd_settings_carry_the_scripts_as_they_are() {
    let docs = format!("{CHART}/docs");
    let cm: Value = serde_yaml::from_str(&read(&format!("{docs}/argocd-cm.yaml"))).unwrap();
    let health = read(&format!("{docs}/argocd-health.lua"));
    let action = read(&format!("{docs}/argocd-refresh-action.lua"));
    let discovery = read(&format!("{docs}/argocd-refresh-discovery.lua"));
    for kind in ["RunaiCredential", "ClusterRunaiCredential"] {
        let data = &cm["data"];
        assert_eq!(
            data[format!("resource.customizations.health.tokensync.dev_{kind}")],
            health.as_str()
        );
        let actions: Value = serde_yaml::from_str(
            data[format!("resource.customizations.actions.tokensync.dev_{kind}")]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(actions["discovery.lua"], discovery.as_str());
        assert_eq!(actions["definitions"][0]["name"], "refresh");
        assert_eq!(actions["definitions"][0]["action.lua"], action.as_str());
    }
}
