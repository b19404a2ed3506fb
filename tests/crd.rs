//! The committed CRD is what the types generate.

#[test]
fn committed_crd_matches_the_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/runaicredentials.tokensync.dev.yaml"
    ))
    .expect("crds/runaicredentials.tokensync.dev.yaml is committed");
    let generated = runai_token_sync::api::crd_yaml();
    assert!(
        committed == generated,
        "crds/runaicredentials.tokensync.dev.yaml differs from the types; regenerate it with hack/generate.sh"
    );
}

#[test]
fn committed_cluster_crd_matches_the_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/clusterrunaicredentials.tokensync.dev.yaml"
    ))
    .expect("crds/clusterrunaicredentials.tokensync.dev.yaml is committed");
    assert!(
        committed == runai_token_sync::api::cluster_crd_yaml(),
        "crds/clusterrunaicredentials.tokensync.dev.yaml differs from the types; regenerate it with hack/generate.sh"
    );
}

#[test]
fn every_spec_field_is_documented() {
    for crd in [
        runai_token_sync::api::crd(),
        runai_token_sync::api::cluster_crd(),
    ] {
        every_field_documented(serde_json::to_value(crd).unwrap());
    }
}

fn every_field_documented(crd: serde_json::Value) {
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    fn walk(path: &str, node: &serde_json::Value, undocumented: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let here = format!("{path}.{name}");
                if child
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_none_or(str::is_empty)
                {
                    undocumented.push(here.clone());
                }
                walk(&here, child, undocumented);
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, undocumented);
        }
    }
    let mut undocumented = Vec::new();
    walk("spec", &schema["properties"]["spec"], &mut undocumented);
    walk("status", &schema["properties"]["status"], &mut undocumented);
    assert!(
        undocumented.is_empty(),
        "fields without a description: {undocumented:?}"
    );
}

/// The `format`s of `type: integer` and `type: number` fields that
/// Kubernetes knows (k8s.io/kube-openapi's `strfmt` registry); any other
/// makes the API server warn "unrecognized format" on every apply of the CRD.
const KNOWN_NUMERIC_FORMATS: [&str; 4] = ["int32", "int64", "float", "double"];

/// Every numeric `format` in a schema, with its path.
fn numeric_formats(path: &str, node: &serde_json::Value, found: &mut Vec<(String, String)>) {
    match node {
        serde_json::Value::Object(map) => {
            let numeric = matches!(
                map.get("type").and_then(|t| t.as_str()),
                Some("integer" | "number")
            );
            if let (true, Some(format)) = (numeric, map.get("format").and_then(|f| f.as_str())) {
                found.push((path.to_owned(), format.to_owned()));
            }
            for (key, child) in map {
                numeric_formats(&format!("{path}.{key}"), child, found);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                numeric_formats(&format!("{path}[{i}]"), child, found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_integer_format_is_one_kubernetes_knows() {
    for crd in [
        runai_token_sync::api::crd(),
        runai_token_sync::api::cluster_crd(),
    ] {
        let mut found = Vec::new();
        numeric_formats("", &serde_json::to_value(&crd).unwrap(), &mut found);
        // Positive control: the counters (failedAttempts, sharedWith) and
        // observedGeneration carry a format, so the walk does see them.
        assert!(
            found.iter().any(|(p, _)| p.ends_with("failedAttempts")),
            "{found:?}"
        );
        let unknown: Vec<_> = found
            .iter()
            .filter(|(_, f)| !KNOWN_NUMERIC_FORMATS.contains(&f.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "formats Kubernetes does not know: {unknown:?}"
        );
    }
}
