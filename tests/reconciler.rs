//! The reconciler against a mocked Kubernetes API server (tower-test) and a
//! mock token endpoint (wiremock).
//!
//! The mock API server keeps objects by path, answers reads from them, stores
//! what is applied, and records every write, so each test can say exactly
//! which writes a reconciliation made.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client,
    client::Body,
    runtime::events::{Recorder, Reporter},
};
use runai_token_sync::{
    RunaiCredential,
    output::secret::HashKey,
    reconcile::{self as reconciler, Context},
    runai::client::TokenClients,
};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

const NS: &str = "ml";

/// One write the controller made.
#[derive(Clone, Debug)]
struct Write {
    method: Method,
    path: String,
    body: Value,
}

/// A scripted failure: the next write with this method to a path ending in
/// `suffix` is answered with `code` and `reason`.
#[derive(Clone, Debug)]
struct Scripted {
    method: Method,
    suffix: String,
    code: u16,
    reason: &'static str,
}

#[derive(Default)]
struct FakeApi {
    objects: Mutex<HashMap<String, Value>>,
    writes: Mutex<Vec<Write>>,
    /// Paths read, in order.
    reads: Mutex<Vec<String>>,
    scripted: Mutex<Vec<Scripted>>,
    versions: std::sync::atomic::AtomicU64,
}

impl FakeApi {
    fn put(&self, path: &str, mut object: Value) {
        let version = self
            .versions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 100;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{version}"));
        }
        self.objects.lock().unwrap().insert(path.to_owned(), object);
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    /// Answers the next matching write with an error instead of doing it.
    fn script(&self, method: Method, suffix: &str, code: u16, reason: &'static str) {
        self.scripted.lock().unwrap().push(Scripted {
            method,
            suffix: suffix.to_owned(),
            code,
            reason,
        });
    }

    fn reads_of(&self, path: &str) -> usize {
        self.reads
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    fn writes_to(&self, suffix: &str) -> Vec<Write> {
        self.writes()
            .into_iter()
            .filter(|w| w.path.ends_with(suffix))
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        self.writes()
            .into_iter()
            .filter(|w| w.path.contains("/events"))
            .map(|w| w.body)
            .collect()
    }

    fn clear_writes(&self) {
        self.writes.lock().unwrap().clear();
    }

    /// Objects directly under a collection path whose labels match every
    /// `key=value` of `selector`.
    fn list(&self, collection: &str, selector: &str) -> Value {
        let wanted: Vec<(&str, &str)> = selector
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let items: Vec<Value> = self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| {
                path.strip_prefix(collection)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|name| !name.contains('/'))
            })
            .map(|(_, object)| object.clone())
            .filter(|object| {
                wanted
                    .iter()
                    .all(|(k, v)| object["metadata"]["labels"][*k].as_str() == Some(*v))
            })
            .collect();
        json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
    }

    fn answer(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        merge_patch: bool,
        body: Value,
    ) -> (StatusCode, Value) {
        if *method == Method::GET {
            self.reads.lock().unwrap().push(path.to_owned());
            if path == SECRETS {
                let selector = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "labelSelector")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                return (StatusCode::OK, self.list(path, &selector));
            }
            return match self.get(path) {
                Some(object) => (StatusCode::OK, object),
                None => (StatusCode::NOT_FOUND, not_found(path)),
            };
        }
        self.writes.lock().unwrap().push(Write {
            method: method.clone(),
            path: path.to_owned(),
            body: body.clone(),
        });
        let scripted = {
            let mut scripted = self.scripted.lock().unwrap();
            let at = scripted
                .iter()
                .position(|s| s.method == *method && path.ends_with(&s.suffix));
            at.map(|i| scripted.remove(i))
        };
        if let Some(s) = scripted {
            return (
                StatusCode::from_u16(s.code).unwrap(),
                failure(s.code, s.reason, path),
            );
        }
        if let Some(object_path) = path.strip_suffix("/status") {
            // Status apply: merge the status into the stored object.
            let mut object = self.get(object_path).unwrap_or_else(|| json!({}));
            object["status"] = body["status"].clone();
            self.put(object_path, object.clone());
            return (StatusCode::OK, object);
        }
        if path.contains("/events") {
            return (StatusCode::CREATED, body);
        }
        if *method == Method::POST {
            // Create: the name is in the body; an existing object wins.
            let name = body["metadata"]["name"].as_str().unwrap_or_default();
            let object_path = format!("{path}/{name}");
            if self.get(&object_path).is_some() {
                return (
                    StatusCode::CONFLICT,
                    failure(409, "AlreadyExists", &object_path),
                );
            }
            self.put(&object_path, body);
            return (StatusCode::CREATED, self.get(&object_path).unwrap());
        }
        let current = self.get(path);
        let precondition = match *method {
            Method::DELETE => body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
            _ => body["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
        };
        if let Some(wanted) = precondition {
            let have = current
                .as_ref()
                .and_then(|c| c["metadata"]["resourceVersion"].as_str().map(str::to_owned));
            if have.as_deref() != Some(wanted.as_str()) {
                return (StatusCode::CONFLICT, failure(409, "Conflict", path));
            }
        }
        if *method == Method::DELETE {
            return match self.objects.lock().unwrap().remove(path) {
                Some(object) => (StatusCode::OK, object),
                None => (StatusCode::NOT_FOUND, not_found(path)),
            };
        }
        if merge_patch {
            let Some(mut object) = current else {
                return (StatusCode::NOT_FOUND, not_found(path));
            };
            merge(&mut object, &body);
            self.put(path, object);
            return (StatusCode::OK, self.get(path).unwrap());
        }
        self.put(path, body);
        (StatusCode::OK, self.get(path).unwrap())
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    target.as_object_mut().unwrap().remove(key);
                } else {
                    merge(&mut target[key], value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn failure(code: u16, reason: &str, path: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("{path}: {reason} (scripted)"), "reason": reason, "code": code
    })
}

fn not_found(path: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("{path} not found"), "reason": "NotFound", "code": 404
    })
}

/// A kube client whose requests are answered by `api`.
fn mocked_client(api: Arc<FakeApi>) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let merge_patch = parts
                .headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes() == b"application/merge-patch+json");
            let (status, answer) = api.answer(
                &parts.method,
                parts.uri.path(),
                parts.uri.query().unwrap_or_default(),
                merge_patch,
                body,
            );
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(service, NS)
}

fn context(client: Client) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "runai-token-sync".into(),
            instance: None,
        },
    );
    Arc::new(Context::new(runai_token_sync::reconcile::Parts {
        client,
        recorder,
        token_clients: TokenClients::new(Duration::from_secs(2)),
        hash_key: HashKey::new(vec![7; 32]),
        metrics: Arc::new(runai_token_sync::metrics::Metrics::new()),
        policy: runai_token_sync::reconcile::Policy {
            allow_insecure_http: true,
            ..Default::default()
        },
        health: Arc::default(),
        exchange: Arc::new(runai_token_sync::runai::exchange::Exchange::new(8)),
        controller_namespace: "default".to_owned(),
        scope: None,
        namespaces: None,
    }))
}

const SECRETS: &str = "/api/v1/namespaces/ml/secrets";
const CREDENTIAL: &str = "/apis/tokensync.dev/v1alpha1/namespaces/ml/runaicredentials/trainer";

fn credential(url: &str) -> RunaiCredential {
    serde_json::from_value(json!({
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "RunaiCredential",
        "metadata": {"name": "trainer", "namespace": NS, "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
        "spec": {
            "url": url,
            "clientCredentialsSecretRef": {"name": "runai-client"},
            "target": {"labels": {"team": "ml"}},
        },
    }))
    .unwrap()
}

fn credentials_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "runai-client", "namespace": NS},
        "data": {"clientId": b64("app-id"), "clientSecret": b64("s3cr3t-value")},
    })
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn token_endpoint(lifetime_secs: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "accessToken": "tok-1", "expiresIn": lifetime_secs
        })))
        .mount(&server)
        .await;
    server
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The RunaiCredential as the mocked API server now holds it.
fn stored_credential(api: &FakeApi, base: &RunaiCredential) -> RunaiCredential {
    let mut cr = base.clone();
    let stored = api.get(CREDENTIAL).expect("a status was written");
    cr.status = Some(serde_json::from_value(stored["status"].clone()).unwrap());
    cr
}

/// A mocked API server holding a RunaiCredential pointed at `endpoint`, with
/// its credentials Secret when `with_credentials`, and a controller context.
fn setup(
    endpoint: &MockServer,
    with_credentials: bool,
) -> (Arc<FakeApi>, RunaiCredential, Arc<Context>) {
    let api = Arc::new(FakeApi::default());
    if with_credentials {
        api.put(&format!("{SECRETS}/runai-client"), credentials_secret());
    }
    let cr = credential(&endpoint.uri());
    api.put(CREDENTIAL, serde_json::to_value(&cr).unwrap());
    let ctx = context(mocked_client(api.clone()));
    (api, cr, ctx)
}

/// Writes to target Secrets (not to the credentials Secret).
fn secret_writes(api: &FakeApi) -> Vec<Write> {
    api.writes()
        .into_iter()
        .filter(|w| w.path.starts_with(SECRETS) && !w.path.ends_with("runai-client"))
        .collect()
}

/// The stored RunaiCredential with a new refresh request, which forces a refresh.
fn with_refresh_request(api: &FakeApi, cr: &RunaiCredential, value: &str) -> RunaiCredential {
    let mut requested = stored_credential(api, cr);
    requested.metadata.annotations = Some(
        [(
            "tokensync.dev/refresh-requested-at".to_owned(),
            value.to_owned(),
        )]
        .into(),
    );
    requested
}

/// Reconciles once to a Ready credential, then forgets the writes it made.
async fn setup_ready(endpoint: &MockServer) -> (Arc<FakeApi>, RunaiCredential, Arc<Context>) {
    let (api, cr, ctx) = setup(endpoint, true);
    reconciler::reconcile(Arc::new(cr.clone()), ctx.clone())
        .await
        .unwrap();
    api.clear_writes();
    (api, cr, ctx)
}

#[tokio::test]
async fn a_new_credential_gets_its_secret_and_status() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);

    let action = reconciler::reconcile(Arc::new(cr.clone()), ctx)
        .await
        .unwrap();

    assert_eq!(endpoint.received_requests().await.unwrap().len(), 1);
    let secret_writes = secret_writes(&api);
    assert_eq!(secret_writes.len(), 1, "{:?}", api.writes());
    assert_eq!(
        (
            secret_writes[0].method.clone(),
            secret_writes[0].path.as_str()
        ),
        (Method::POST, SECRETS),
        "a missing Secret is created, never applied over"
    );
    let secret: Secret = serde_json::from_value(secret_writes[0].body.clone()).unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["accessToken"].0, b"tok-1");
    assert!(data.contains_key("expiresAt"));
    let labels = secret.metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "runai-token-sync");
    assert_eq!(labels["tokensync.dev/credential"], "trainer");
    assert_eq!(labels["team"], "ml");
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("uid-1", Some(true))
    );

    let status_writes = api.writes_to("/trainer/status");
    assert_eq!(status_writes.len(), 1);
    let status = &status_writes[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(status["secretName"], "trainer");
    assert_eq!(status["failedAttempts"], 0);
    let text = status.to_string();
    assert!(
        !text.contains("tok-1") && !text.contains("s3cr3t"),
        "{text}"
    );

    let events = api.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "TokenIssued");
    assert_eq!(events[0]["type"], "Normal");

    // Next look at 2/3 of the hour, moved earlier by at most 4 minutes of jitter.
    let requeue = format!("{action:?}");
    let secs: u64 = requeue
        .split("requeue_after: Some(")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no requeue in {requeue}"));
    assert!(
        (2400 - 240 - 2..=2400).contains(&secs),
        "requeue after {secs}s"
    );
}

#[tokio::test]
async fn a_steady_state_resync_writes_nothing() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;

    // The same controller, then a restarted one (a new context, same hash key).
    let current = stored_credential(&api, &cr);
    for ctx in [ctx, context(mocked_client(api.clone()))] {
        reconciler::reconcile(Arc::new(current.clone()), ctx)
            .await
            .unwrap();
    }

    assert!(
        api.writes().is_empty(),
        "unexpected writes: {:?}",
        api.writes()
    );
    assert_eq!(
        endpoint.received_requests().await.unwrap().len(),
        1,
        "no new token request"
    );
}

#[tokio::test]
async fn a_tampered_secret_is_repaired_without_a_new_token() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;

    let path = format!("{SECRETS}/trainer");
    let mut secret = api.get(&path).unwrap();
    secret["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("team");
    api.put(&path, secret);
    reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx)
        .await
        .unwrap();

    let writes = api.writes_to(&path);
    assert_eq!(writes.len(), 1, "{:?}", api.writes());
    assert_eq!(writes[0].body["metadata"]["labels"]["team"], "ml");
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 1);
}

/// Makes the context know every Secret of the fake API server's namespace
/// as a Secret watch that has listed them would, `except` one it missed.
fn secrets_listed(api: &FakeApi, ctx: &Context, except: &str) {
    use kube::runtime::watcher::Event;
    let seen = ctx.known_secrets.watch(Some(NS));
    seen.observe(&Event::<Secret>::Init);
    for item in api.list(SECRETS, "")["items"].as_array().unwrap() {
        let secret: Secret = serde_json::from_value(item.clone()).unwrap();
        if secret.metadata.name.as_deref() != Some(except) {
            seen.observe(&Event::InitApply(secret));
        }
    }
    seen.observe(&Event::<Secret>::InitDone);
}

#[tokio::test]
async fn a_target_the_secret_watch_has_not_seen_is_created_without_a_read() {
    let endpoint = token_endpoint(3600).await;
    // Positive control: without a Secret watch, the target is read.
    let (api, cr, ctx) = setup(&endpoint, true);
    reconciler::reconcile(Arc::new(cr.clone()), ctx)
        .await
        .unwrap();
    assert_eq!(api.reads_of(&format!("{SECRETS}/trainer")), 1);

    let (api, cr, ctx) = setup(&endpoint, true);
    secrets_listed(&api, &ctx, "");
    reconciler::reconcile(Arc::new(cr.clone()), ctx)
        .await
        .unwrap();
    assert_eq!(api.reads_of(&format!("{SECRETS}/trainer")), 0);
    assert_eq!(api.reads_of(&format!("{SECRETS}/runai-client")), 1);
    let writes = secret_writes(&api);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, Method::POST);
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
}

#[tokio::test]
async fn a_valid_token_the_watch_missed_is_not_reported_missing() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    let requests = endpoint.received_requests().await.unwrap().len();
    // The credentials Secret goes: with the valid token in place this is
    // Degraded, still Ready. The watch has not shown the target Secret.
    api.objects
        .lock()
        .unwrap()
        .remove(&format!("{SECRETS}/runai-client"));
    secrets_listed(&api, &ctx, "trainer");

    reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx)
        .await
        .unwrap();

    // Positive control of the skip: the decision without a write had the
    // target read from etcd before it was final.
    assert_eq!(api.reads_of(&format!("{SECRETS}/trainer")), 2);
    assert!(secret_writes(&api).is_empty());
    assert_eq!(endpoint.received_requests().await.unwrap().len(), requests);
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(
        condition(status, "Degraded")["reason"],
        "CredentialsNotFound"
    );
    assert!(status["expirationTime"].is_string());
}

#[tokio::test]
async fn a_foreign_secret_the_watch_missed_is_still_a_conflict_and_left_alone() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);
    let foreign = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "trainer", "namespace": NS}, "data": {"mine": b64("x")}});
    api.put(&format!("{SECRETS}/trainer"), foreign);
    let before = api.get(&format!("{SECRETS}/trainer")).unwrap();
    // Created after the watch listed the namespace, not yet seen by it.
    secrets_listed(&api, &ctx, "trainer");

    reconciler::reconcile(Arc::new(cr), ctx).await.unwrap();

    // The create is refused (409 AlreadyExists); the Secret is read from
    // etcd, found foreign, and left as it was.
    let writes = secret_writes(&api);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, Method::POST);
    assert_eq!(api.reads_of(&format!("{SECRETS}/trainer")), 1);
    assert_eq!(api.get(&format!("{SECRETS}/trainer")).unwrap(), before);
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["reason"], "SecretConflict");
}

#[tokio::test]
async fn a_foreign_secret_is_a_conflict_and_left_alone() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);
    api.put(
        &format!("{SECRETS}/trainer"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "trainer", "namespace": NS}, "data": {"mine": b64("x")}}),
    );

    reconciler::reconcile(Arc::new(cr), ctx).await.unwrap();

    assert!(
        api.writes_to(&format!("{SECRETS}/trainer")).is_empty(),
        "the foreign Secret was written"
    );
    assert!(endpoint.received_requests().await.unwrap().is_empty());
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SecretConflict");
    let events = api.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["reason"].as_str()),
        (Some("Warning"), Some("SecretConflict"))
    );
}

#[tokio::test]
async fn missing_credentials_are_reported_without_a_token_request() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, false);

    reconciler::reconcile(Arc::new(cr.clone()), ctx.clone())
        .await
        .unwrap();

    assert!(endpoint.received_requests().await.unwrap().is_empty());
    assert!(api.writes_to(&format!("{SECRETS}/trainer")).is_empty());
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["reason"], "CredentialsNotFound");
    assert_eq!(condition(status, "Degraded")["status"], "True");
    assert_eq!(status["failedAttempts"], 1);
    assert_eq!(api.events()[0]["reason"], "CredentialsNotFound");

    // While backing off, another look changes nothing.
    api.clear_writes();
    reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx.clone())
        .await
        .unwrap();
    assert!(api.writes().is_empty(), "{:?}", api.writes());

    // The Secret appears: the next look requests a token at once.
    api.put(&format!("{SECRETS}/runai-client"), credentials_secret());
    reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx)
        .await
        .unwrap();
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 1);
    let status = api.writes_to("/trainer/status").last().unwrap().body["status"].clone();
    let status = &status;
    assert_eq!(condition(status, "Ready")["status"], "True");
}

#[tokio::test]
async fn an_outage_keeps_the_token_and_degrades() {
    let endpoint = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"accessToken": "tok-1", "expiresIn": 3600})),
        )
        .up_to_n_times(1)
        .mount(&endpoint)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "90"))
        .mount(&endpoint)
        .await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;

    // A refresh request forces a refresh, which fails.
    let mut requested = stored_credential(&api, &cr);
    requested.metadata.annotations = Some(
        [(
            "tokensync.dev/refresh-requested-at".to_owned(),
            "1".to_owned(),
        )]
        .into(),
    );
    let action = reconciler::reconcile(Arc::new(requested), ctx)
        .await
        .unwrap();

    assert_eq!(endpoint.received_requests().await.unwrap().len(), 2);
    assert!(
        api.writes_to(&format!("{SECRETS}/trainer")).is_empty(),
        "the Secret must be left as it is"
    );
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "TokenEndpointError");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("valid until"),
        "{degraded}"
    );
    let warning = api
        .events()
        .into_iter()
        .find(|e| e["type"] == "Warning")
        .unwrap();
    assert_eq!(warning["reason"], "TokenEndpointError");
    assert!(
        format!("{action:?}").contains("requeue_after: Some(90s)"),
        "Retry-After honoured: {action:?}"
    );
}

#[tokio::test]
async fn a_secret_someone_else_creates_first_is_a_conflict() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);
    // Between the read (missing) and the create, someone else creates it;
    // the read again from etcd cannot see it either (as with a Secret
    // created and deleted at once), so the second create fails the same way.
    api.script(Method::POST, SECRETS, 409, "AlreadyExists");
    api.script(Method::POST, SECRETS, 409, "AlreadyExists");

    reconciler::reconcile(Arc::new(cr.clone()), ctx)
        .await
        .unwrap();

    let writes = secret_writes(&api);
    assert_eq!(writes.len(), 2, "two creates, no overwrite: {writes:?}");
    assert!(writes.iter().all(|w| w.method == Method::POST));
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "SecretConflict");
}

#[tokio::test]
async fn a_create_refused_because_the_read_was_stale_is_decided_again() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);
    // The cached read saw no Secret; the create is refused once (as when the
    // cache lags behind); the read from etcd decides the next write.
    api.script(Method::POST, SECRETS, 409, "AlreadyExists");

    reconciler::reconcile(Arc::new(cr.clone()), ctx)
        .await
        .unwrap();

    let writes = secret_writes(&api);
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 1);
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
}

#[tokio::test]
async fn an_update_refused_as_stale_is_read_again_and_written_once_more() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    let requested = with_refresh_request(&api, &cr, "1");
    api.script(Method::PATCH, "/secrets/trainer", 409, "Conflict");
    let now = jiff::Timestamp::now();
    reconciler::reconcile_at(&requested, &ctx, now)
        .await
        .unwrap();
    let writes = secret_writes(&api);
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(
        writes
            .iter()
            .all(|w| w.body["metadata"]["resourceVersion"].is_string()),
        "both updates are conditional"
    );
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_secret_changed_since_it_was_read_is_read_again_not_overwritten() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    let requested = with_refresh_request(&api, &cr, "1");
    // The update carries the resourceVersion read; someone changed it since,
    // and again after the second read.
    api.script(Method::PATCH, "/secrets/trainer", 409, "Conflict");
    api.script(Method::PATCH, "/secrets/trainer", 409, "Conflict");
    let now = jiff::Timestamp::now();
    let err = reconciler::reconcile_at(&requested, &ctx, now)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "KubernetesAPIError", "{err}");
    let writes = secret_writes(&api);
    assert_eq!(writes.len(), 2);
    assert!(
        writes[0].body["metadata"]["resourceVersion"].is_string(),
        "the update is conditional: {}",
        writes[0].body
    );
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 2);

    // The retry writes the token already obtained: no new request.
    api.clear_writes();
    reconciler::reconcile_at(&requested, &ctx, now + jiff::SignedDuration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 2);
    assert_eq!(secret_writes(&api).len(), 1);
}

#[tokio::test]
async fn a_refused_write_is_reported_and_costs_no_new_token() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    // As the controller sees it each time: with the status written last.
    let requested = || with_refresh_request(&api, &cr, "1");
    api.script(Method::PATCH, "/secrets/trainer", 403, "Forbidden");
    let now = jiff::Timestamp::now();

    reconciler::reconcile_at(&requested(), &ctx, now)
        .await
        .unwrap();

    assert_eq!(endpoint.received_requests().await.unwrap().len(), 2);
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    // The Secret still holds the first token, which is valid.
    assert_eq!(condition(status, "Ready")["status"], "True");
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SecretWriteFailed");
    assert!(
        !degraded["message"].as_str().unwrap().contains("tok-1"),
        "{degraded}"
    );
    let events = api.events();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "SecretWriteFailed"),
        "{events:?}"
    );

    // Within the backoff nothing happens; after it, the same token is written.
    api.clear_writes();
    reconciler::reconcile_at(&requested(), &ctx, now + jiff::SignedDuration::from_secs(1))
        .await
        .unwrap();
    assert!(secret_writes(&api).is_empty());
    let later = now + jiff::SignedDuration::from_mins(10);
    reconciler::reconcile_at(&requested(), &ctx, later)
        .await
        .unwrap();
    assert_eq!(
        endpoint.received_requests().await.unwrap().len(),
        2,
        "the token obtained before is reused"
    );
    assert_eq!(secret_writes(&api).len(), 1);
    let status = api.writes_to("/trainer/status").last().unwrap().body["status"].clone();
    assert_eq!(condition(&status, "Degraded")["status"], "False");
}

#[tokio::test]
async fn a_refused_write_without_a_valid_token_is_not_ready() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);
    api.script(Method::POST, SECRETS, 403, "Forbidden");

    reconciler::reconcile(Arc::new(cr.clone()), ctx)
        .await
        .unwrap();

    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "SecretWriteFailed");
}

#[tokio::test]
async fn an_immutable_secret_is_replaced() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    let path = format!("{SECRETS}/trainer");
    let mut secret = api.get(&path).unwrap();
    secret["immutable"] = json!(true);
    api.put(&path, secret);
    let requested = with_refresh_request(&api, &cr, "1");

    reconciler::reconcile(Arc::new(requested), ctx)
        .await
        .unwrap();

    let writes: Vec<(Method, String)> = secret_writes(&api)
        .into_iter()
        .map(|w| (w.method, w.path))
        .collect();
    assert_eq!(
        writes,
        vec![
            (Method::DELETE, path.clone()),
            (Method::POST, SECRETS.to_owned())
        ]
    );
    let replaced: Secret = serde_json::from_value(api.get(&path).unwrap()).unwrap();
    assert_eq!(replaced.immutable, None);
}

/// A RunaiCredential alone in its group has its token only in its Secret
/// (the exchange keeps no copy once it is written): a replacement whose
/// create fails after the delete must not lose it.
#[tokio::test]
async fn a_replacement_that_fails_after_the_delete_keeps_the_token() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    let path = format!("{SECRETS}/trainer");
    let token = api.get(&path).unwrap()["data"]["accessToken"].clone();
    // Read and left as it is: the exchange now relies on the Secret.
    reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx.clone())
        .await
        .unwrap();
    assert!(secret_writes(&api).is_empty());
    // Made immutable, and a label to put back: a repair that replaces it.
    let mut secret = api.get(&path).unwrap();
    secret["immutable"] = json!(true);
    secret["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("team");
    api.put(&path, secret);
    api.script(Method::POST, SECRETS, 500, "InternalError");

    let failed = reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx.clone()).await;
    assert!(failed.is_err(), "the create failed");
    assert!(api.get(&path).is_none(), "deleted before the create failed");

    reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx)
        .await
        .unwrap();
    assert_eq!(api.get(&path).unwrap()["data"]["accessToken"], token);
    assert_eq!(
        endpoint.received_requests().await.unwrap().len(),
        1,
        "the token is written back with no request"
    );
}

#[tokio::test]
async fn a_credential_being_deleted_gets_no_request_and_no_write() {
    let endpoint = token_endpoint(3600).await;
    let (api, mut cr, ctx) = setup(&endpoint, true);
    cr.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));

    reconciler::reconcile(Arc::new(cr), ctx).await.unwrap();

    assert!(endpoint.received_requests().await.unwrap().is_empty());
    assert!(api.writes().is_empty(), "{:?}", api.writes());
    // Positive control: the same credential not being deleted does both.
    let (api, cr, ctx) = setup(&endpoint, true);
    reconciler::reconcile(Arc::new(cr), ctx).await.unwrap();
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 1);
    assert!(!api.writes().is_empty());
}

/// A Ready credential whose target is then renamed, with `policy`.
async fn renamed(policy: &str) -> (Arc<FakeApi>, MockServer) {
    let endpoint = token_endpoint(3600).await;
    let (api, mut cr, ctx) = setup(&endpoint, true);
    cr.spec.target.deletion_policy = serde_json::from_value(json!(policy)).unwrap();
    cr.spec.target.annotations = [("team.example/owner".to_owned(), "ml".to_owned())].into();
    reconciler::reconcile(Arc::new(cr.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(api.get(&format!("{SECRETS}/trainer")).is_some());
    let mut renamed = stored_credential(&api, &cr);
    renamed.spec.target.name = Some("trainer-v2".into());
    renamed.metadata.generation = Some(2);
    api.clear_writes();
    reconciler::reconcile(Arc::new(renamed), ctx).await.unwrap();
    (api, endpoint)
}

#[tokio::test]
async fn a_renamed_target_deletes_the_old_secret_under_delete() {
    let (api, _endpoint) = renamed("Delete").await;
    assert!(
        api.get(&format!("{SECRETS}/trainer")).is_none(),
        "the old Secret is gone"
    );
    assert!(
        api.get(&format!("{SECRETS}/trainer-v2")).is_some(),
        "the new one is there"
    );
    let deletes: Vec<Write> = api
        .writes()
        .into_iter()
        .filter(|w| w.method == Method::DELETE)
        .collect();
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].body["preconditions"]["resourceVersion"].is_string());
}

#[tokio::test]
async fn a_renamed_target_releases_the_old_secret_under_retain() {
    let (api, _endpoint) = renamed("Retain").await;
    let old = api.get(&format!("{SECRETS}/trainer")).expect("kept");
    let labels = &old["metadata"]["labels"];
    assert!(labels["app.kubernetes.io/managed-by"].is_null(), "{old}");
    assert!(labels["tokensync.dev/credential"].is_null(), "{old}");
    assert_eq!(labels["team"], "ml", "the user's labels stay");
    let annotations = old["metadata"]["annotations"].as_object().unwrap();
    assert!(
        annotations.keys().all(|k| !k.starts_with("tokensync.dev/")),
        "{annotations:?}"
    );
    assert_eq!(annotations["team.example/owner"], "ml");
    assert_eq!(old["data"]["accessToken"], b64("tok-1"), "the data stays");
    assert!(api.get(&format!("{SECRETS}/trainer-v2")).is_some());
}

#[tokio::test]
async fn a_terminating_namespace_gets_no_request_and_no_write() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);
    api.put(
        "/api/v1/namespaces/ml",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "ml", "deletionTimestamp": "2026-01-01T00:00:00Z"},
               "status": {"phase": "Terminating"}}),
    );
    reconciler::reconcile(Arc::new(cr.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(endpoint.received_requests().await.unwrap().is_empty());
    assert!(api.writes().is_empty(), "{:?}", api.writes());
    // Positive control: an active namespace.
    api.put(
        "/api/v1/namespaces/ml",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"},
               "status": {"phase": "Active"}}),
    );
    reconciler::reconcile(Arc::new(cr), ctx).await.unwrap();
    assert_eq!(endpoint.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn after_the_lease_is_lost_nothing_is_requested_or_written() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup(&endpoint, true);
    ctx.stop_acting();
    let err = reconciler::reconcile(Arc::new(cr), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "LeaseLost");
    assert!(endpoint.received_requests().await.unwrap().is_empty());
    assert!(api.writes().is_empty(), "{:?}", api.writes());
}

#[tokio::test]
async fn a_routine_refresh_costs_exactly_the_secret_and_the_status() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    let due = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(45);
    let current = stored_credential(&api, &cr);
    reconciler::reconcile_at(&current, &ctx, due).await.unwrap();
    assert_eq!(
        endpoint.received_requests().await.unwrap().len(),
        2,
        "refreshed"
    );
    let writes: Vec<(Method, String)> = api
        .writes()
        .into_iter()
        .map(|w| (w.method, w.path))
        .collect();
    assert_eq!(
        writes,
        vec![
            (Method::PATCH, format!("{SECRETS}/trainer")),
            (Method::PATCH, format!("{CREDENTIAL}/status")),
        ],
        "no Event for a routine refresh"
    );
}

#[tokio::test]
async fn a_credential_whose_spec_turns_invalid_leaves_its_group() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    // Positive control: a Ready credential is in a group.
    assert_eq!(ctx.exchange.groups(), 1);
    let mut broken = stored_credential(&api, &cr);
    broken.spec.url = "ftp://acme.run.ai".to_owned();
    broken.metadata.generation = Some(2);
    reconciler::reconcile(Arc::new(broken), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        ctx.exchange.groups(),
        0,
        "left, and the empty group is gone"
    );
}

#[tokio::test]
async fn a_refused_repair_is_reported_with_the_token_kept() {
    let endpoint = token_endpoint(3600).await;
    let (api, cr, ctx) = setup_ready(&endpoint).await;
    let path = format!("{SECRETS}/trainer");
    let mut secret = api.get(&path).unwrap();
    secret["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("team");
    api.put(&path, secret);
    api.script(Method::PATCH, "/secrets/trainer", 403, "Forbidden");

    reconciler::reconcile(Arc::new(stored_credential(&api, &cr)), ctx)
        .await
        .unwrap();

    // Positive control: the repair was tried.
    assert_eq!(api.writes_to(&path).len(), 1, "{:?}", api.writes());
    let status = &api.writes_to("/trainer/status")[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SecretWriteFailed");
    assert!(
        api.events()
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "SecretWriteFailed"),
        "{:?}",
        api.events()
    );
    assert_eq!(
        endpoint.received_requests().await.unwrap().len(),
        1,
        "no new token"
    );
}
