//! Unit tests of the pure decisions of a ClusterRunaiCredential, with plain
//! values and a fixed clock.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use serde_json::json;

use super::*;
use crate::api::ClusterRunaiCredential;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn crc(spec: serde_json::Value) -> ClusterRunaiCredential {
    let mut full = json!({
        "url": "https://acme.run.ai",
        "clientCredentialsSecretRef": {"name": "app"},
    });
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "tokensync.dev/v1alpha1", "kind": "ClusterRunaiCredential",
        "metadata": {"name": "pipelines", "uid": "uid-p", "generation": 3},
        "spec": full,
    }))
    .unwrap()
}

/// A namespace: name, labels, Terminating.
type Facts<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

fn namespaces(list: &[Facts<'_>]) -> BTreeMap<String, NamespaceFacts> {
    list.iter()
        .map(|(name, labels, terminating)| {
            (
                (*name).to_owned(),
                NamespaceFacts {
                    labels: labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    terminating: *terminating,
                },
            )
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn namespaces_match_by_label_or_by_name_and_never_while_terminating() {
    let all = namespaces(&[
        ("ml-a", &[("runai-access", "pipelines")], false),
        (
            "ml-b",
            &[("runai-access", "pipelines"), ("team", "b")],
            false,
        ),
        ("ml-c", &[("runai-access", "notebooks")], false),
        ("named", &[], false),
        ("leaving", &[("runai-access", "pipelines")], true),
        ("unrelated", &[], false),
    ]);
    let by_label_and_name = crc(json!({
        "namespaceSelector": {"matchLabels": {"runai-access": "pipelines"}},
        "namespaces": ["named", "absent"],
    }));
    assert_eq!(
        matched_namespaces(&by_label_and_name, &all, None),
        set(&["ml-a", "ml-b", "named"])
    );
    // Only the served namespaces (`--namespace`).
    assert_eq!(
        matched_namespaces(&by_label_and_name, &all, Some(&set(&["ml-b", "unrelated"]))),
        set(&["ml-b"])
    );
    // Expressions, as any LabelSelector.
    let expression = crc(json!({
        "namespaceSelector": {"matchExpressions": [
            {"key": "runai-access", "operator": "In", "values": ["pipelines", "notebooks"]},
            {"key": "team", "operator": "DoesNotExist"},
        ]},
    }));
    assert_eq!(
        matched_namespaces(&expression, &all, None),
        set(&["ml-a", "ml-c"])
    );
    // An empty selector matches every namespace (such a spec is refused by
    // validation, below); none matches none.
    let everything = crc(json!({"namespaceSelector": {}}));
    assert_eq!(matched_namespaces(&everything, &all, None).len(), 5);
    let nothing = crc(json!({}));
    assert!(matched_namespaces(&nothing, &all, None).is_empty());
}

#[test]
fn a_selector_never_selects_kubernetes_own_namespaces_but_a_name_does() {
    let all = namespaces(&[
        ("kube-system", &[("runai-access", "all")], false),
        ("kube-public", &[("runai-access", "all")], false),
        ("kube-node-lease", &[("runai-access", "all")], false),
        ("ml-a", &[("runai-access", "all")], false),
    ]);
    let selected = crc(json!({"namespaceSelector": {"matchExpressions": [
        {"key": "runai-access", "operator": "Exists"}]}}));
    assert_eq!(matched_namespaces(&selected, &all, None), set(&["ml-a"]));
    let named = crc(json!({
        "namespaceSelector": {"matchLabels": {"runai-access": "all"}},
        "namespaces": ["kube-system"],
    }));
    assert_eq!(
        matched_namespaces(&named, &all, None),
        set(&["kube-system", "ml-a"])
    );
}

#[test]
fn a_selection_of_every_namespace_is_an_invalid_spec() {
    for (spec, invalid) in [
        (json!({}), true),
        (json!({"namespaceSelector": {}}), true),
        (
            json!({"namespaceSelector": {"matchLabels": {}, "matchExpressions": []}}),
            true,
        ),
        (json!({"namespaces": ["ml-a"]}), false),
        (
            json!({"namespaceSelector": {"matchLabels": {"a": "b"}}}),
            false,
        ),
        (
            json!({"namespaceSelector": {}, "namespaces": ["ml-a"]}),
            false,
        ),
    ] {
        let result = crate::api::validate_cluster_spec(&crc(spec.clone()), false);
        match result {
            Err(crate::Error::InvalidSpec { field, message }) if invalid => {
                assert_eq!(field, "spec.namespaceSelector", "{spec}");
                assert!(message.contains("matches every namespace"), "{message}");
            }
            Ok(_) if !invalid => {}
            other => panic!("{spec}: {other:?}"),
        }
    }
}

fn managed(name: &str, uid: Option<&str>) -> Secret {
    let mut owners = Vec::new();
    if let Some(uid) = uid {
        owners.push(json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "ClusterRunaiCredential",
            "name": name, "uid": uid, "controller": true,
        }));
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": "runai-token", "namespace": "ml-a",
            "labels": {
                "app.kubernetes.io/managed-by": "runai-token-sync",
                "tokensync.dev/cluster-credential": name,
            },
            "ownerReferences": owners,
        },
        "type": "Opaque",
        "data": {"accessToken": "dG9r"},
    }))
    .unwrap()
}

#[test]
fn each_namespace_secret_is_created_updated_kept_or_left_alone() {
    let desired = managed("pipelines", Some("uid-p"));
    assert_eq!(
        plan_secret(None, &desired, "pipelines", Some("uid-p")),
        SecretAction::Create
    );
    assert_eq!(
        plan_secret(Some(&desired), &desired, "pipelines", Some("uid-p")),
        SecretAction::Keep
    );
    let mut stale = desired.clone();
    stale
        .data
        .as_mut()
        .unwrap()
        .insert("accessToken".into(), ByteString(b"old".to_vec()));
    assert_eq!(
        plan_secret(Some(&stale), &desired, "pipelines", Some("uid-p")),
        SecretAction::Update
    );
    // Left behind by an earlier object of the same name (deleted, created
    // again): adopted, its owner reference replaced (api.md, "Recreated
    // credentials").
    assert_eq!(
        plan_secret(
            Some(&managed("pipelines", Some("uid-old"))),
            &desired,
            "pipelines",
            Some("uid-p")
        ),
        SecretAction::Update
    );
    // Someone else's: unlabelled, another ClusterRunaiCredential's, or
    // labelled for it but owned by an object of another kind.
    let foreign: Secret =
        serde_json::from_value(json!({"metadata": {"name": "runai-token"}})).unwrap();
    let mut owned_elsewhere = managed("pipelines", None);
    owned_elsewhere.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "name": "pipelines", "uid": "uid-d", "controller": true}))
        .unwrap(),
    ]);
    for (what, existing) in [
        ("unlabelled", foreign),
        ("another's", managed("notebooks", Some("uid-n"))),
        ("owned by another kind", owned_elsewhere),
    ] {
        assert_eq!(
            plan_secret(Some(&existing), &desired, "pipelines", Some("uid-p")),
            SecretAction::Conflict,
            "{what}"
        );
    }
    // Retain: no owner reference, the label decides.
    let retained = managed("pipelines", None);
    assert_eq!(
        plan_secret(Some(&retained), &retained, "pipelines", Some("uid-p")),
        SecretAction::Keep
    );
}

fn token(issued: &str, expires: &str, serial: u64) -> GroupToken {
    GroupToken {
        access_token: "tok".into(),
        issued_at: t(issued),
        expires_at: Some(t(expires)),
        serial,
        requested: true,
        token_api: None,
    }
}

#[test]
fn no_token_is_requested_for_no_namespace() {
    let desired = Desired {
        credentials_hash: Some("h".into()),
        generation: 1,
        refresh_request: None,
        definition: Some("d".into()),
    };
    let facts = |matched| SourceFacts {
        uid: "uid-p",
        desired: &desired,
        token: None,
        records: &[],
        answered: None,
        refresh_interval: None,
        matched,
        now: t("2026-01-01T00:10:00Z"),
    };
    assert_eq!(plan_token(&facts(0)), None);
    // Positive control: one namespace to serve needs the token.
    assert_eq!(plan_token(&facts(1)), Some(RefreshReason::NoToken));
}

#[test]
fn refresh_interval_caps_the_age_of_the_groups_token() {
    let hour = token("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", 1);
    let desired = Desired {
        credentials_hash: Some("h".into()),
        generation: 1,
        refresh_request: None,
        definition: Some("d".into()),
    };
    let at = |now, refresh_interval| {
        plan_token(&SourceFacts {
            uid: "uid-p",
            desired: &desired,
            token: Some(&hour),
            records: &[],
            answered: None,
            refresh_interval,
            matched: 1,
            now: t(now),
        })
    };
    // Due at 40 min without an interval (jitter takes at most 4 off).
    assert_eq!(at("2026-01-01T00:35:01Z", None), None);
    let interval = Some(std::time::Duration::from_secs(35 * 60));
    assert_eq!(
        at("2026-01-01T00:35:01Z", interval),
        Some(RefreshReason::Due)
    );
}

#[test]
fn a_token_kept_after_a_change_that_needs_another_keeps_its_record() {
    let hour = token("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", 1);
    let desired = Desired {
        credentials_hash: Some("h".into()),
        generation: 2,
        refresh_request: None,
        definition: Some("new".into()),
    };
    let old = TokenRecord {
        definition: Some("old".into()),
        ..record("2026-01-01T01:00:00Z")
    };
    // The request for the new definition failed: the old token, still
    // served, must not be recorded as obtained for the new one.
    let kept = record_for(&hour, Some(&old), &desired, None);
    assert_eq!(kept.definition.as_deref(), Some("old"));
    // Positive control: a newer token is recorded for what is defined now.
    let newer = token("2026-01-01T00:30:00Z", "2026-01-01T01:30:00Z", 2);
    let fresh = record_for(&newer, Some(&old), &desired, None);
    assert_eq!(fresh.definition.as_deref(), Some("new"));
}

fn record(expires: &str) -> TokenRecord {
    TokenRecord {
        issued_at: t("2026-01-01T00:00:00Z"),
        expires_at: Some(t(expires)),
        credentials_hash: "h".into(),
        generation: 3,
        refresh_request: None,
        definition: None,
        token_api: None,
    }
}

/// Whether the status leaves out a condition (kstatus reads it as False).
fn absent(s: &ClusterRunaiCredentialStatus, type_: &str) -> bool {
    s.conditions.iter().all(|c| c.type_ != type_)
}

fn condition<'a>(s: &'a ClusterRunaiCredentialStatus, type_: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn ready_says_whether_every_matched_namespace_holds_the_token() {
    let r = record("2026-01-01T01:00:00Z");
    let now = t("2026-01-01T00:01:00Z");
    let next = t("2026-01-01T00:40:00Z");
    let status = |outcome: &Outcome, failure: Option<&Failure>| {
        cluster_status(None, Some(3), Some(&r), failure, outcome, next, 2, now)
    };
    let all = Outcome {
        matched: 3,
        synced: 3,
        failed: BTreeMap::new(),
        pending: 0,
    };
    let s = status(&all, None);
    assert_eq!(condition(&s, "Ready"), ("True", "TokenReady"));
    assert!(absent(&s, "Reconciling"));
    assert!(absent(&s, "Stalled"));
    assert_eq!(
        (
            s.matched_namespaces,
            s.synced_namespaces,
            s.namespaces.as_deref()
        ),
        (3, 3, Some("3/3"))
    );
    assert_eq!(s.shared_with, 2);
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.expiration_time.as_deref(), Some("2026-01-01T01:00:00Z"));

    let none = Outcome::default();
    assert_eq!(
        condition(&status(&none, None), "Ready"),
        ("True", REASON_NO_MATCHING_NAMESPACES)
    );

    // 25 conflicts: Ready False, Stalled, at most 20 listed.
    let mut failed = BTreeMap::new();
    for i in 0..25 {
        failed.insert(format!("ns-{i:02}"), ("SecretConflict", "taken".to_owned()));
    }
    let some = Outcome {
        matched: 30,
        synced: 5,
        failed,
        pending: 0,
    };
    let s = status(&some, None);
    assert_eq!(condition(&s, "Ready"), ("False", REASON_NAMESPACES_FAILED));
    assert_eq!(condition(&s, "Stalled"), ("True", REASON_NAMESPACES_FAILED));
    assert_eq!(s.failed_namespaces.len(), MAX_FAILED_NAMESPACES);
    assert_eq!(s.failed_namespaces[0].namespace, "ns-00");
    assert_eq!(s.failed_namespaces[0].reason, "SecretConflict");
    let ready_message = &s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(ready_message.starts_with("5 of 30 matched namespaces hold the token, 25 failed"));

    // An API server error in one namespace: working on it, not stuck.
    let pending = Outcome {
        matched: 3,
        synced: 2,
        failed: BTreeMap::new(),
        pending: 1,
    };
    let s = status(&pending, None);
    assert_eq!(condition(&s, "Ready"), ("False", REASON_NAMESPACES_PENDING));
    assert_eq!(condition(&s, "Reconciling").0, "True");
    assert!(absent(&s, "Stalled"));
}

#[test]
fn the_token_part_of_the_status_is_a_runai_credentials() {
    let r = record("2026-01-01T01:00:00Z");
    let now = t("2026-01-01T00:01:00Z");
    let next = t("2026-01-01T00:40:00Z");
    let all = Outcome {
        matched: 3,
        synced: 3,
        failed: BTreeMap::new(),
        pending: 0,
    };
    // No namespace to serve: Ready whatever the exchange says (no request
    // is made for nobody).
    let rejected_early = Failure {
        reason: "InvalidCredentials",
        message: "rejected".into(),
        attempts: 1,
    };
    let s = cluster_status(
        None,
        Some(3),
        None,
        Some(&rejected_early),
        &Outcome::default(),
        next,
        0,
        now,
    );
    assert_eq!(
        condition(&s, "Ready"),
        ("True", REASON_NO_MATCHING_NAMESPACES)
    );

    // The exchange fails and no valid token is left: the shared reason.
    let rejected = Failure {
        reason: "InvalidCredentials",
        message: "rejected".into(),
        attempts: 2,
    };
    let s = cluster_status(None, Some(3), None, Some(&rejected), &all, next, 0, now);
    assert_eq!(condition(&s, "Ready"), ("False", "InvalidCredentials"));
    assert_eq!(condition(&s, "Stalled"), ("True", "InvalidCredentials"));
    assert_eq!(condition(&s, "Degraded"), ("True", "InvalidCredentials"));
    // A failure while the token is valid: Degraded only.
    let outage = Failure {
        reason: "TokenEndpointError",
        message: "503".into(),
        attempts: 1,
    };
    let s = cluster_status(None, Some(3), Some(&r), Some(&outage), &all, next, 2, now);
    assert_eq!(condition(&s, "Ready"), ("True", "TokenReady"));
    assert_eq!(condition(&s, "Degraded"), ("True", "TokenEndpointError"));
}

#[test]
fn an_unchanged_status_is_the_same_and_keeps_its_transition_times() {
    let r = record("2026-01-01T01:00:00Z");
    let outcome = Outcome {
        matched: 1,
        synced: 1,
        failed: BTreeMap::new(),
        pending: 0,
    };
    let next = t("2026-01-01T00:40:00Z");
    let first = cluster_status(
        None,
        Some(3),
        Some(&r),
        None,
        &outcome,
        next,
        0,
        t("2026-01-01T00:01:00Z"),
    );
    let again = cluster_status(
        Some(&first),
        Some(3),
        Some(&r),
        None,
        &outcome,
        next,
        0,
        t("2026-01-01T00:09:00Z"),
    );
    assert!(
        crate::reconcile::status::same_status(&first, &again),
        "no write for nothing new"
    );
}

#[test]
fn a_namespaces_change_concerns_only_who_selects_or_served_it() {
    let c = crc(json!({
        "namespaceSelector": {"matchLabels": {"runai-access": "pipelines"}},
        "namespaces": ["named"],
    }));
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let selected = labels(&[("runai-access", "pipelines")]);
    let other = labels(&[("team", "web")]);
    assert!(concerns(&c, "ml", &selected, None, false), "selected now");
    assert!(concerns(&c, "named", &other, None, false), "named");
    assert!(
        concerns(&c, "ml", &other, None, true),
        "served: to clean up"
    );
    // Positive controls above; an unrelated namespace costs no pass.
    assert!(!concerns(&c, "web", &other, None, false));
    assert!(!concerns(&c, "kube-system", &selected, None, false));
    assert!(
        !concerns(&c, "ml", &selected, Some(&set(&["other"])), false),
        "not served here"
    );
}

#[test]
fn a_newer_group_token_after_a_change_of_definition_is_not_taken_for_the_new_one() {
    // The newest record says definition "old"; the group holds a newer
    // token, possibly obtained before the change and never written.
    let desired = Desired {
        credentials_hash: Some("h".into()),
        generation: 2,
        refresh_request: None,
        definition: Some("new".into()),
    };
    let old = TokenRecord {
        definition: Some("old".into()),
        ..record("2026-01-01T01:00:00Z")
    };
    let newer = token("2026-01-01T00:05:00Z", "2026-01-01T01:05:00Z", 2);
    let alike = TokenRecord {
        definition: Some("new".into()),
        ..record("2026-01-01T01:00:00Z")
    };
    let plan = |newest: &TokenRecord| {
        plan_token(&SourceFacts {
            uid: "uid-p",
            desired: &desired,
            token: Some(&newer),
            records: &[newest],
            answered: None,
            refresh_interval: None,
            matched: 1,
            now: t("2026-01-01T00:10:00Z"),
        })
    };
    assert_eq!(plan(&old), Some(RefreshReason::SpecChanged));
    // Positive control: with a newest record of today's definition, the
    // newer group token serves as it is.
    assert_eq!(plan(&alike), None);
}
