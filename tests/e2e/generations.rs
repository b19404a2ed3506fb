//! Every Run:ai generation (api.md, "Choosing the token API" and "Refresh
//! timing for mounted Secrets"): `tokenApi: Auto` against tenants that serve
//! both endpoints, only V1 or only V2; explicit generations that meet a
//! removed endpoint; deprecation notices; Keycloak's answers; token types
//! and padded payloads; short lifetimes.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use runai_standin::{Client as StandInClient, Removed, Serves, StandIn};
use serde_json::json;

use crate::harness::{Cluster, eventually, jwt_claims, spec_for, stays};

const HOUR: Duration = Duration::from_secs(3600);

/// `status.tokenApi` of a RunaiCredential.
async fn shown_api(cluster: &Cluster, name: &str) -> Option<String> {
    let cr = cluster.credentials().get(name).await.ok()?;
    let api = cr.status?.token_api?;
    Some(api.as_str().to_owned())
}

/// Asks for a refresh and waits for the new token.
async fn refresh(cluster: &Cluster, name: &str, value: &str) -> String {
    let before = cluster.token(name, "accessToken").await;
    let patch = json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": value}}});
    cluster
        .credentials()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotating");
    eventually(
        Duration::from_secs(30),
        &format!("{name}: a new token"),
        || async {
            cluster
                .token(name, "accessToken")
                .await
                .filter(|t| Some(t) != before.as_ref())
        },
    )
    .await
}

/// How many times an Event of `reason` about `name` was published: the
/// Events' series counts included (a recorder folds repeats into one Event).
async fn published(cluster: &Cluster, name: &str, reason: &str) -> i32 {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    events
        .list(&Default::default())
        .await
        .expect("listing Events")
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

fn client(secret: &str, serves: Serves) -> StandInClient {
    StandInClient {
        serves,
        ..StandInClient::new(secret, HOUR)
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn auto_finds_the_generation_each_tenant_serves_and_follows_a_removal() {
    let cluster = Cluster::new("auto").await;
    let standin = StandIn::start().await.unwrap();
    standin.set_client_with("both", client("s3cr3t-both", Serves::Both));
    standin.set_client_with(
        "v1-only",
        client("s3cr3t-v1", Serves::OnlyV1(Removed::NotFoundHtml)),
    );
    standin.set_client_with(
        "v2-only",
        client("s3cr3t-v2", Serves::OnlyV2(Removed::Gone)),
    );
    for (id, value) in [
        ("both", "s3cr3t-both"),
        ("v1-only", "s3cr3t-v1"),
        ("v2-only", "s3cr3t-v2"),
    ] {
        cluster
            .put_credentials(&format!("{id}-creds"), id, value)
            .await;
    }
    let controller = cluster.start_controller();
    for name in ["both", "v1-only", "v2-only"] {
        // No tokenApi: the CRD's default, Auto.
        cluster
            .create_credential(name, spec_for(&standin, &format!("{name}-creds")))
            .await;
    }
    for name in ["both", "v1-only", "v2-only"] {
        cluster.wait_ready(name).await;
    }
    let applied = cluster.credentials().get("both").await.unwrap();
    assert_eq!(applied.spec.token_api.as_str(), "Auto");
    assert_eq!(shown_api(&cluster, "both").await.as_deref(), Some("V2"));
    assert_eq!(shown_api(&cluster, "v1-only").await.as_deref(), Some("V1"));
    assert_eq!(shown_api(&cluster, "v2-only").await.as_deref(), Some("V2"));
    // V2 first: where it is served, V1 is never called; where it is not,
    // one request to it, then V1.
    assert_eq!(
        (standin.requests("both"), standin.not_served("both")),
        (1, 0)
    );
    assert_eq!(
        (standin.requests("v1-only"), standin.not_served("v1-only")),
        (2, 1)
    );
    assert_eq!(
        (standin.requests("v2-only"), standin.not_served("v2-only")),
        (1, 0)
    );
    let secret = cluster.secret("v1-only").await.unwrap();
    assert_eq!(
        secret.metadata.annotations.unwrap()["tokensync.dev/token-api"],
        "V1"
    );

    // Remembered: the next refresh goes to V1 directly.
    refresh(&cluster, "v1-only", "1").await;
    assert_eq!(
        (standin.requests("v1-only"), standin.not_served("v1-only")),
        (3, 1)
    );

    // The tenant upgrades and V1 is removed: detected again, without an edit.
    standin.set_client_with(
        "v1-only",
        client("s3cr3t-v1", Serves::OnlyV2(Removed::NotFoundJson)),
    );
    let token = refresh(&cluster, "v1-only", "2").await;
    assert_eq!(jwt_claims(&token)["sub"], "v1-only");
    eventually(Duration::from_secs(15), "status.tokenApi V2", || async {
        (shown_api(&cluster, "v1-only").await.as_deref() == Some("V2")).then_some(())
    })
    .await;
    assert_eq!(
        (standin.requests("v1-only"), standin.not_served("v1-only")),
        (5, 2)
    );
    let ready = cluster.wait_ready("v1-only").await;
    assert_eq!(ready.condition("Degraded").unwrap().status, "False");
    controller.assert_logs_hold_none_of(&["s3cr3t-both", "s3cr3t-v1", "s3cr3t-v2", &token]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn explicit_generations_that_meet_a_removed_endpoint_say_what_to_set() {
    let cluster = Cluster::new("removed").await;
    let standin = StandIn::start().await.unwrap();
    standin.set_client_with(
        "v2-only",
        client("s3cr3t-r2", Serves::OnlyV2(Removed::MethodNotAllowed)),
    );
    standin.set_client_with(
        "v1-only",
        client("s3cr3t-r1", Serves::OnlyV1(Removed::NotFoundJson)),
    );
    standin.set_client_with(
        "legacy",
        StandInClient {
            v1_app_token_only: true,
            ..client("s3cr3t-rl", Serves::OnlyV1(Removed::NotFoundHtml))
        },
    );
    cluster
        .put_credentials("v2-only", "v2-only", "s3cr3t-r2")
        .await;
    cluster
        .put_credentials("v1-only", "v1-only", "s3cr3t-r1")
        .await;
    cluster
        .put_credentials("legacy", "legacy", "s3cr3t-rl")
        .await;
    let _controller = cluster.start_controller();
    let with_api = |secret: &str, api: &str| {
        let mut spec = spec_for(&standin, secret);
        spec["tokenApi"] = json!(api);
        spec
    };
    cluster
        .create_credential("old-v1", with_api("v2-only", "V1"))
        .await;
    cluster
        .create_credential("new-v2", with_api("v1-only", "V2"))
        .await;
    cluster
        .create_credential("legacy-auto", with_api("legacy", "Auto"))
        .await;
    cluster
        .create_credential("legacy-v1", with_api("legacy", "V1"))
        .await;
    cluster
        .create_credential("legacy-app", with_api("legacy", "AppToken"))
        .await;

    let message = cluster.wait_not_ready("old-v1", "TokenEndpointError").await;
    assert!(
        message.contains("HTTP 405")
            && message.contains("/api/v2/token")
            && message.contains("spec.tokenApi: V2 or Auto"),
        "{message}"
    );
    let message = cluster.wait_not_ready("new-v2", "TokenEndpointError").await;
    assert!(
        message.contains("HTTP 404") && message.contains("spec.tokenApi: V1 or Auto"),
        "{message}"
    );
    // Run:ai 2.18 and older: Auto never tries AppToken by itself, and says
    // to set it; an unsupported grant is InvalidSpec naming spec.tokenApi.
    for name in ["legacy-auto", "legacy-v1"] {
        let message = cluster.wait_not_ready(name, "InvalidSpec").await;
        assert!(
            message.starts_with("spec.tokenApi:")
                && message.contains("set spec.tokenApi: AppToken"),
            "{name}: {message}"
        );
        let cr = cluster
            .wait_condition(name, "Stalled", "True", Duration::from_secs(10))
            .await;
        assert_eq!(cr.condition("Stalled").unwrap().reason, "InvalidSpec");
    }
    // Positive control: the same tenant with AppToken is served.
    cluster.wait_ready("legacy-app").await;
    assert_eq!(
        shown_api(&cluster, "legacy-app").await.as_deref(),
        Some("AppToken")
    );
    // An explicit generation is never replaced: only its own endpoint.
    assert!(cluster.secret("old-v1").await.is_none());
    assert!(cluster.secret("new-v2").await.is_none());
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_deprecated_endpoint_is_reported_once_per_credential_not_per_refresh() {
    let cluster = Cluster::new("deprecated").await;
    let standin = StandIn::start().await.unwrap();
    standin.set_client_with(
        "app",
        StandInClient {
            // 2026-01-01 deprecated, 2027-07-01 sunset.
            v1_deprecation: Some((1_767_225_600, Some(1_814_400_000))),
            ..client("s3cr3t-dep", Serves::OnlyV1(Removed::NotFoundJson))
        },
    );
    standin.set_client_with(
        "fine",
        StandInClient {
            v1_deprecation: Some((1_767_225_600, None)),
            ..client("s3cr3t-fine", Serves::Both)
        },
    );
    cluster.put_credentials("creds", "app", "s3cr3t-dep").await;
    cluster
        .put_credentials("fine-creds", "fine", "s3cr3t-fine")
        .await;
    let controller = cluster.start_controller();
    let mut explicit = spec_for(&standin, "creds");
    explicit["tokenApi"] = json!("V1");
    explicit["target"] = json!({"name": "explicit"});
    cluster.create_credential("explicit", explicit).await;
    cluster
        .create_credential("auto", spec_for(&standin, "creds"))
        .await;
    // V2 is served for this one: no deprecated endpoint is called.
    cluster
        .create_credential("fine", spec_for(&standin, "fine-creds"))
        .await;
    cluster.wait_ready("explicit").await;
    cluster.wait_ready("auto").await;
    cluster.wait_ready("fine").await;

    // Several refreshes, each answered with the notice.
    let before = standin.requests("app");
    for round in 1..=3 {
        refresh(&cluster, "explicit", &round.to_string()).await;
        refresh(&cluster, "auto", &round.to_string()).await;
    }
    assert!(
        standin.requests("app") >= before + 6,
        "the refreshes reached the endpoint"
    );
    let message = eventually(Duration::from_secs(10), "the Event", || async {
        let events = cluster.events("explicit").await;
        events
            .into_iter()
            .find(|(_, reason, _)| reason == "TokenApiDeprecated")
            .map(|(type_, _, note)| (type_, note))
    })
    .await;
    assert_eq!(message.0, "Warning");
    assert!(
        message.1.contains("/api/v1/token")
            && message.1.contains("2027-07-01")
            && message.1.contains("spec.tokenApi: Auto"),
        "{}",
        message.1
    );
    // Once per credential: the second credential has its own, once too.
    for name in ["explicit", "auto"] {
        assert_eq!(
            published(&cluster, name, "TokenApiDeprecated").await,
            1,
            "{name}"
        );
    }
    assert_eq!(published(&cluster, "fine", "TokenApiDeprecated").await, 0);
    let (_, metrics) = controller.probe("/metrics").await;
    for name in ["explicit", "auto"] {
        let series = format!(
            "runai_token_sync_token_api_deprecated{{namespace=\"{}\",name=\"{name}\",endpoint=\"{}/api/v1/token\"}} 1",
            cluster.namespace,
            standin.url()
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    assert!(!metrics.contains("name=\"fine\",endpoint"), "{metrics}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn keycloak_answers_and_token_shapes_are_read_by_what_they_say() {
    let cluster = Cluster::new("keycloak").await;
    let standin = StandIn::start().await.unwrap();
    for (id, status, error) in [
        ("kc-400", 400, "invalid_client"),
        ("kc-401", 401, "unauthorized_client"),
        ("kc-403", 403, "invalid_grant"),
    ] {
        standin.set_client_with(
            id,
            StandInClient {
                keycloak_status: Some(status),
                rejected_error: error.to_owned(),
                ..client("the-right-one", Serves::Both)
            },
        );
        cluster
            .put_credentials(&format!("{id}-creds"), id, "not-the-right-one")
            .await;
    }
    standin.set_client_with(
        "lower",
        StandInClient {
            token_type: Some("bearer".to_owned()),
            ..client("s3cr3t-lower", Serves::Both)
        },
    );
    standin.set_client_with(
        "dpop",
        StandInClient {
            token_type: Some("DPoP".to_owned()),
            ..client("s3cr3t-dpop", Serves::Both)
        },
    );
    standin.set_client_with(
        "padded",
        StandInClient {
            padded_payload: true,
            send_expires_in: false,
            ..client("s3cr3t-padded", Serves::OnlyV1(Removed::NotFoundJson))
        },
    );
    cluster
        .put_credentials("lower-creds", "lower", "s3cr3t-lower")
        .await;
    cluster
        .put_credentials("dpop-creds", "dpop", "s3cr3t-dpop")
        .await;
    cluster
        .put_credentials("padded-creds", "padded", "s3cr3t-padded")
        .await;
    let controller = cluster.start_controller();
    for name in ["kc-400", "kc-401", "kc-403", "lower", "dpop", "padded"] {
        cluster
            .create_credential(name, spec_for(&standin, &format!("{name}-creds")))
            .await;
    }
    for name in ["kc-400", "kc-401", "kc-403"] {
        cluster.wait_not_ready(name, "InvalidCredentials").await;
        let cr = cluster
            .wait_condition(name, "Stalled", "True", Duration::from_secs(10))
            .await;
        // Refused credentials are never sent to the other endpoint: one
        // request per attempt, and V1 never called.
        let attempts = cr.status.unwrap().failed_attempts;
        assert_eq!(
            standin.requests(name),
            u64::from(attempts),
            "{name}: one request per attempt"
        );
    }
    cluster.wait_ready("lower").await;
    let message = cluster.wait_not_ready("dpop", "TokenEndpointError").await;
    assert!(message.contains("DPoP"), "{message}");
    assert!(cluster.secret("dpop").await.is_none(), "nothing written");
    // A padded base64url payload is read: the expiry comes from its exp.
    let padded = cluster.wait_ready("padded").await;
    let token = cluster.token("padded", "accessToken").await.unwrap();
    let payload = token.split('.').nth(1).unwrap();
    assert!(payload.ends_with('='), "the stand-in pads: {payload}");
    assert!(
        padded.status.unwrap().expiration_time.is_some(),
        "the JWT's exp was read"
    );
    controller.assert_logs_hold_none_of(&["not-the-right-one", "the-right-one", &token]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn short_lifetimes_refresh_at_half_and_are_reported_once() {
    let cluster = Cluster::new("short-life").await;
    let standin = StandIn::start().await.unwrap();
    standin.set_client("short", "s3cr3t-sl", Duration::from_secs(20));
    standin.set_client("long", "s3cr3t-ll", HOUR);
    cluster
        .put_credentials("short-creds", "short", "s3cr3t-sl")
        .await;
    cluster
        .put_credentials("long-creds", "long", "s3cr3t-ll")
        .await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("short", spec_for(&standin, "short-creds"))
        .await;
    let mut capped = spec_for(&standin, "long-creds");
    capped["refreshInterval"] = json!("35m");
    cluster.create_credential("capped", capped).await;
    let mut below_half = spec_for(&standin, "long-creds");
    below_half["refreshInterval"] = json!("10m");
    below_half["target"] = json!({"name": "below-half"});
    cluster.create_credential("below-half", below_half).await;

    // Planned: a 1 h token with refreshInterval 35m at 35 min (jitter only
    // moves it earlier, by at most a tenth); with 10m, at half its
    // lifetime, not before.
    for (name, earliest, latest) in [
        ("capped", 31 * 60 + 30, 35 * 60),
        ("below-half", 30 * 60, 30 * 60),
    ] {
        let status = cluster.wait_ready(name).await.status.unwrap();
        let issued: jiff::Timestamp = status.last_refresh_time.unwrap().parse().unwrap();
        let next: jiff::Timestamp = status.next_refresh_time.unwrap().parse().unwrap();
        let after = next.duration_since(issued).as_secs();
        assert!(
            (earliest..=latest).contains(&after),
            "{name}: next refresh {after} s after the last"
        );
    }

    // A 20 s token: refreshed at half its lifetime, 10 s, several times.
    cluster.wait_ready("short").await;
    eventually(Duration::from_secs(40), "three tokens", || async {
        (standin.requests("short") >= 3).then_some(())
    })
    .await;
    assert_eq!(published(&cluster, "short", "TokenLifetimeShort").await, 1);
    // Positive control: a long-lived token is not reported.
    assert_eq!(published(&cluster, "capped", "TokenLifetimeShort").await, 0);
    let note = cluster
        .events("short")
        .await
        .into_iter()
        .find(|(_, r, _)| r == "TokenLifetimeShort")
        .unwrap()
        .2;
    assert!(note.contains("20 s") || note.contains("19 s"), "{note}");
    stays(Duration::from_secs(12), "one report only", || async {
        published(&cluster, "short", "TokenLifetimeShort").await == 1
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn one_application_is_asked_at_one_pace_across_groups() {
    let cluster = Cluster::new("pace").await;
    let standin = StandIn::start().await.unwrap();
    // Eight credentials of one application, each with a secret of its own
    // (a rotation in progress): eight exchange groups, one rate limit of
    // two requests per second.
    let secrets: Vec<String> = (0..8).map(|i| format!("s3cr3t-pace-{i}")).collect();
    standin.set_client_with(
        "app",
        StandInClient {
            max_requests_per_second: Some(2),
            other_secrets: secrets[1..].to_vec(),
            ..client(&secrets[0], Serves::Both)
        },
    );
    for (i, secret) in secrets.iter().enumerate() {
        cluster
            .put_credentials(&format!("creds-{i}"), "app", secret)
            .await;
    }
    let controller = cluster.start_controller();
    for i in 0..8 {
        let mut spec = spec_for(&standin, &format!("creds-{i}"));
        spec["tokenApi"] = json!("V2");
        cluster.create_credential(&format!("c{i}"), spec).await;
    }
    for i in 0..8 {
        cluster
            .wait_condition(&format!("c{i}"), "Ready", "True", Duration::from_secs(60))
            .await;
    }
    // The limit was met at most once: one 429, then every group held back
    // until its Retry-After, then spread.
    assert!(
        standin.rate_limited("app") <= 1,
        "429s: {}",
        standin.rate_limited("app")
    );
    assert!(
        standin.requests("app") <= 9,
        "requests: {}",
        standin.requests("app")
    );
    let mut tokens = std::collections::HashSet::new();
    for i in 0..8 {
        tokens.extend(cluster.token(&format!("c{i}"), "accessToken").await);
    }
    assert_eq!(tokens.len(), 8, "one token per group");
    // Positive control: the limit is live; three requests at once meet it.
    let limited_before = standin.rate_limited("app");
    let client = runai_token_sync::runai::client::TokenClient::new(
        Some(standin.ca_pem()),
        Duration::from_secs(5),
    )
    .unwrap();
    let url = standin.url().parse().unwrap();
    let credentials = runai_token_sync::runai::client::ClientCredentials {
        client_id: "app".into(),
        client_secret: secrets[0].clone(),
    };
    let burst = (0..3).map(|_| {
        client.request_token(
            &url,
            runai_token_sync::api::TokenApi::V2,
            &credentials,
            jiff::Timestamp::now(),
        )
    });
    futures::future::join_all(burst).await;
    assert!(standin.rate_limited("app") > limited_before);
    controller.assert_logs_hold_none_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
}
