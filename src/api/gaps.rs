//! What an installed CRD lacks of the one this controller was built with
//! (api.md, "Talking to the API server: faults": CRDs older than the
//! controller). The API server prunes fields its CRD does not know, and
//! refuses enum values it does not list, silently for the controller's own
//! status writes: each gap is named with what its absence means.

use serde_json::Value;

/// One thing the installed CRD lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The field's path, as `kubectl explain` names it (`spec.tokenApi`).
    pub path: String,
    /// What is missing there: the field itself, or one of its values.
    pub missing: Missing,
}

/// What is missing at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    /// The field: the API server drops it (prunes it) when it is written.
    Field,
    /// A value of its enum: the API server refuses it.
    Value(String),
}

impl Gap {
    /// What the gap means for users, in one sentence.
    #[must_use]
    pub fn meaning(&self) -> String {
        match (&self.missing, self.path.starts_with("status.")) {
            (Missing::Field, true) => format!(
                "{} is dropped from every status the controller writes: it is not shown",
                self.path
            ),
            (Missing::Field, false) => format!(
                "{} is dropped from what users apply: it has no effect, and its default does not apply",
                self.path
            ),
            (Missing::Value(value), _) => format!(
                "{}: {value} is refused by the API server (and is not its default)",
                self.path
            ),
        }
    }
}

/// The gaps of `installed` (a CRD as the API server has it, JSON) against
/// `ours` (the CRD this controller was built with), in the schema of the
/// version both serve: fields (`properties`) and enum values ours has and
/// the installed one lacks, in path order. An installed CRD without a
/// schema for that version lacks nothing we can name (it prunes nothing).
#[must_use]
pub fn schema_gaps(ours: &Value, installed: &Value) -> Vec<Gap> {
    let version = |crd: &Value| -> Option<Value> {
        crd["spec"]["versions"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == ours["spec"]["versions"][0]["name"])
            .map(|v| v["schema"]["openAPIV3Schema"].clone())
    };
    let (Some(ours), Some(installed)) = (version(ours), version(installed)) else {
        return Vec::new();
    };
    let mut gaps = Vec::new();
    walk("", &ours, &installed, &mut gaps);
    gaps
}

fn walk(path: &str, ours: &Value, installed: &Value, gaps: &mut Vec<Gap>) {
    if let (Some(values), Some(theirs)) = (ours["enum"].as_array(), installed["enum"].as_array()) {
        for value in values.iter().filter(|v| !theirs.contains(v)) {
            gaps.push(Gap {
                path: path.to_owned(),
                missing: Missing::Value(
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned),
                ),
            });
        }
    }
    // A field that keeps unknown fields prunes nothing beneath it.
    if installed["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    if let Some(properties) = ours["properties"].as_object() {
        for (name, schema) in properties {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match installed["properties"].get(name) {
                Some(theirs) => walk(&child, schema, theirs, gaps),
                None => gaps.push(Gap {
                    path: child,
                    missing: Missing::Field,
                }),
            }
        }
    }
    if let (Some(items), Some(theirs)) = (ours.get("items"), installed.get("items")) {
        walk(&format!("{path}[]"), items, theirs, gaps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(schema: Value) -> Value {
        json!({"spec": {"versions": [{"name": "v1alpha1", "schema": {"openAPIV3Schema": schema}}]}})
    }

    #[test]
    fn an_older_crd_lacks_fields_and_values_named_with_their_meaning() {
        let ours = crd(json!({"properties": {
            "spec": {"properties": {
                "tokenApi": {"type": "string", "enum": ["Auto", "V1", "V2"]},
                "target": {"properties": {"outputs": {"type": "array", "items": {"properties": {"key": {}}}}}},
            }},
            "status": {"properties": {"tokenApi": {"type": "string"}, "conditions": {}}},
        }}));
        let older = crd(json!({"properties": {
            "spec": {"properties": {
                "tokenApi": {"type": "string", "enum": ["V1", "V2"]},
                "target": {"properties": {}},
            }},
            "status": {"properties": {"conditions": {}}},
        }}));
        let gaps = schema_gaps(&ours, &older);
        let named: Vec<(String, String)> =
            gaps.iter().map(|g| (g.path.clone(), g.meaning())).collect();
        assert_eq!(named.len(), 3, "{named:?}");
        assert!(named[0].0 == "spec.target.outputs" && named[0].1.contains("has no effect"));
        assert!(named[1].0 == "spec.tokenApi" && named[1].1.contains("Auto is refused"));
        assert!(named[2].0 == "status.tokenApi" && named[2].1.contains("not shown"));
        // Positive control: the same CRD lacks nothing.
        assert!(schema_gaps(&ours, &ours).is_empty());
    }

    #[test]
    fn a_crd_without_a_schema_or_that_keeps_unknown_fields_lacks_nothing() {
        let ours = crd(json!({"properties": {"spec": {"properties": {"a": {}}}}}));
        assert!(schema_gaps(&ours, &json!({"spec": {"versions": []}})).is_empty());
        let open =
            crd(json!({"properties": {"spec": {"x-kubernetes-preserve-unknown-fields": true}}}));
        assert!(schema_gaps(&ours, &open).is_empty());
    }
}
