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
