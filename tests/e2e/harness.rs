//! What every end-to-end test needs: a client for the cluster under test, a
//! namespace of its own, the controller's real binary as a child process, a
//! Run:ai stand-in, and polling.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use runai_standin::StandIn;
use runai_token_sync::{RunaiCredential, api::crd};
use serde_json::{Value, json};

/// The environment variable naming the kubeconfig of the cluster under test.
pub const KUBECONFIG_ENV: &str = "RUNAI_TOKEN_SYNC_E2E_KUBECONFIG";

/// How long a RunaiCredential may take to become Ready.
pub const READY_WITHIN: Duration = Duration::from_secs(20);

fn kubeconfig_path() -> PathBuf {
    match std::env::var_os(KUBECONFIG_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "{KUBECONFIG_ENV} is not set: the end-to-end tests need a Kubernetes API server. \
             Run hack/test.sh (it starts a local one), or point {KUBECONFIG_ENV} at a cluster's kubeconfig"
        ),
    }
}

/// One test's view of the cluster: a client and a fresh namespace, deleted
/// (with everything in it) when the test ends.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub kubeconfig: PathBuf,
    extra_namespaces: std::sync::Mutex<Vec<String>>,
}

impl Cluster {
    pub async fn new(test: &str) -> Cluster {
        Cluster::on(kubeconfig_path(), test).await
    }

    /// As [`Cluster::new`], on the cluster of another kubeconfig.
    pub async fn on(kubeconfig: PathBuf, test: &str) -> Cluster {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).expect("a readable kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("a usable kubeconfig");
        let client = Client::try_from(config).expect("a Kubernetes client");
        install_crd(&client).await;
        let namespace = format!("e2e-{test}-{:04x}", rand::random::<u16>()).replace('_', "-");
        create_namespace(&client, &namespace).await;
        Cluster {
            client,
            namespace,
            kubeconfig,
            extra_namespaces: Default::default(),
        }
    }

    /// Another namespace, deleted with this one's cluster at the end.
    pub async fn extra_namespace(&self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.namespace);
        create_namespace(&self.client, &name).await;
        self.extra_namespaces.lock().unwrap().push(name.clone());
        name
    }

    pub fn credentials(&self) -> Api<RunaiCredential> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates or replaces the credentials Secret `name`.
    pub async fn put_credentials(&self, name: &str, client_id: &str, client_secret: &str) {
        put_credentials_in(
            &self.client,
            &self.namespace,
            name,
            client_id,
            client_secret,
        )
        .await;
    }

    /// Creates a RunaiCredential from a spec.
    pub async fn create_credential(&self, name: &str, spec: Value) -> RunaiCredential {
        let cr: RunaiCredential = serde_json::from_value(json!({
            "apiVersion": "tokensync.dev/v1alpha1",
            "kind": "RunaiCredential",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }))
        .expect("a valid RunaiCredential");
        self.credentials()
            .create(&PostParams::default(), &cr)
            .await
            .expect("the RunaiCredential is created")
    }

    /// Merge-patches a RunaiCredential.
    pub async fn patch_credential(&self, name: &str, patch: Value) {
        self.credentials()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("the RunaiCredential is patched");
    }

    /// `status.expirationTime` of a RunaiCredential.
    pub async fn credential_status_expiry(&self, name: &str) -> String {
        let cr = self
            .credentials()
            .get(name)
            .await
            .expect("the RunaiCredential exists");
        cr.status
            .and_then(|s| s.expiration_time)
            .expect("an expiration time")
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets()
            .get_opt(name)
            .await
            .expect("reading a Secret")
    }

    /// The token in a target Secret under `key`.
    pub async fn token(&self, secret: &str, key: &str) -> Option<String> {
        let secret = self.secret(secret).await?;
        let bytes = secret.data?.get(key)?.0.clone();
        String::from_utf8(bytes).ok()
    }

    /// Waits until condition `type_` of a RunaiCredential has `status`, and
    /// returns the RunaiCredential.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        within: Duration,
    ) -> RunaiCredential {
        eventually(within, &format!("{name}: {type_}={status}"), || async {
            let cr = self.credentials().get_opt(name).await.ok().flatten()?;
            let matches = cr.condition(type_).is_some_and(|c| c.status == status);
            matches.then_some(cr)
        })
        .await
    }

    /// Waits until `Ready=True`.
    pub async fn wait_ready(&self, name: &str) -> RunaiCredential {
        self.wait_condition(name, "Ready", "True", READY_WITHIN)
            .await
    }

    /// Waits until `Ready=False` with `reason`, and returns its message.
    pub async fn wait_not_ready(&self, name: &str, reason: &str) -> String {
        eventually(
            READY_WITHIN,
            &format!("{name}: Ready=False/{reason}"),
            || async {
                let cr = self.credentials().get_opt(name).await.ok().flatten()?;
                let ready = cr.condition("Ready")?;
                (ready.status == "False" && ready.reason == reason).then(|| ready.message.clone())
            },
        )
        .await
    }

    /// Events about a RunaiCredential: `(type, reason, note)`.
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let list = events
            .list(&Default::default())
            .await
            .expect("listing Events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Starts the controller, watching this test's namespace only.
    pub fn start_controller(&self) -> Controller {
        Controller::start(&self.kubeconfig, &self.namespace, &[])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Best effort: a namespace left behind is harmless and named after its test.
        let extra = self
            .extra_namespaces
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let _ = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["delete", "namespace", "--wait=false", "--ignore-not-found"])
            .arg(&self.namespace)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes cluster-wide objects (`kind/name` or `kind.group/name`) by
/// kubectl when dropped, also when the test failed. By kubectl: a test's
/// client cannot be waited on in a drop, on the runtime that drives its
/// connections.
pub struct DeleteOnDrop {
    pub kubeconfig: PathBuf,
    pub objects: Vec<String>,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["delete", "--ignore-not-found", "--wait=false"])
            .args(&self.objects)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn install_crd(client: &Client) {
    for crd in [crd(), runai_token_sync::api::cluster_crd()] {
        install_one_crd(client, crd).await;
    }
}

async fn install_one_crd(client: &Client, crd: CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("runai-token-sync-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the CRD is applied");
    eventually(
        Duration::from_secs(30),
        "the CRD is established",
        || async {
            let crd = crds.get(&name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await;
    // Established comes first; for a moment after it the API server may still
    // answer 429 while the resource's storage initialises (1.28+). Ready is
    // when a list of the resource succeeds.
    let names = crd.spec.names;
    let resource = kube::api::ApiResource {
        group: crd.spec.group.clone(),
        version: crd.spec.versions[0].name.clone(),
        api_version: format!("{}/{}", crd.spec.group, crd.spec.versions[0].name),
        kind: names.kind.clone(),
        plural: names.plural.clone(),
    };
    let served: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    eventually(
        Duration::from_secs(30),
        "the CRD's resources are served",
        || async {
            served
                .list_metadata(&kube::api::ListParams::default().limit(1))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_owned(),
                    "runai-token-sync-e2e".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("the test namespace is created");
}

/// Creates or replaces a credentials Secret in `namespace`.
pub async fn put_credentials_in(
    client: &Client,
    namespace: &str,
    name: &str,
    client_id: &str,
    client_secret: &str,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"clientId": client_id, "clientSecret": client_secret},
    }))
    .expect("a valid Secret");
    secrets
        .patch(
            name,
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("the credentials Secret is written");
}

/// Polls `probe` every 200 ms until it gives a value, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that `probe` stays `true` for `duration` (for "nothing happens" checks).
pub async fn stays<F, Fut>(duration: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        assert!(probe().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The controller's real binary, run as a child process. Killed when dropped.
pub struct Controller {
    child: Option<Child>,
    log: PathBuf,
}

impl Controller {
    /// Starts `runai-token-sync run` watching `namespace` (which is also its
    /// own namespace), with `extra_args`.
    pub fn start(kubeconfig: &std::path::Path, namespace: &str, extra_args: &[&str]) -> Controller {
        Controller::start_with_env(kubeconfig, namespace, extra_args, &[])
    }

    /// Starts `runai-token-sync run` watching `namespace`, with `extra_args`
    /// and these environment variables set.
    pub fn start_with_env(
        kubeconfig: &std::path::Path,
        namespace: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Controller {
        let mut args = vec![
            "--namespace",
            namespace,
            "--controller-namespace",
            namespace,
        ];
        args.extend_from_slice(extra_args);
        Controller::spawn(kubeconfig, &args, env)
    }

    /// Starts `runai-token-sync run` with exactly `args` (plus a free metrics
    /// port unless one is given).
    pub fn start_raw(kubeconfig: &std::path::Path, args: &[&str]) -> Controller {
        Controller::spawn(kubeconfig, args, &[])
    }

    fn spawn(kubeconfig: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Controller {
        let log = std::env::temp_dir().join(format!(
            "runai-token-sync-e2e-{}.log",
            rand::random::<u64>()
        ));
        let out = File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_runai-token-sync"));
        command.arg("run").args(args);
        if !args.contains(&"--metrics-address") {
            // Many controllers run at once: each gets a port of its own.
            command.args(["--metrics-address", "127.0.0.1:0"]);
        }
        // ClusterRunaiCredentials are cluster-wide: only the tests of them
        // serve them, so that the other tests' controllers leave them alone.
        if !args.iter().any(|a| a.starts_with("--cluster-credentials")) {
            command.arg("--cluster-credentials=false");
        }
        // Proxy variables of the machine running the tests do not apply.
        for name in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let child = command
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,runai_token_sync=debug")
            .stdout(out.try_clone().expect("a log file handle"))
            .stderr(out)
            .spawn()
            .expect("the controller binary starts");
        Controller {
            child: Some(child),
            log,
        }
    }

    /// Kills the process at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Everything the controller has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The base URL of the metrics and health listener, from the log (text or JSON).
    pub async fn probe_url(&self) -> String {
        eventually(Duration::from_secs(10), "the metrics listener", || async {
            let logs = self.logs();
            let line = logs.lines().find(|l| l.contains("serving /metrics"))?;
            let rest = &line[line.find("127.0.0.1:")?..];
            let end = rest[10..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len(), |i| i + 10);
            Some(format!("http://{}", &rest[..end]))
        })
        .await
    }

    /// GETs a path of the probe listener: status code and body.
    pub async fn probe(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.probe_url().await);
        let response = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Asserts that none of `secrets` appears in the logs.
    pub fn assert_logs_hold_none_of(&self, secrets: &[&str]) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "the controller logged nothing");
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !logs.contains(secret),
                "a secret or token appears in the controller's logs"
            );
        }
    }

    /// Stops with SIGTERM and waits for the exit; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        self.stop_within(Duration::from_secs(10))
    }

    /// Stops with SIGTERM, waiting at most `within` for the exit (then
    /// SIGKILL); returns whether it exited cleanly in time.
    pub fn stop_within(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- controller log ({}) ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// A stand-in with one client, and the spec fields that point at it.
pub async fn standin_with(client_id: &str, client_secret: &str, lifetime: Duration) -> StandIn {
    let standin = StandIn::start().await.expect("the stand-in starts");
    standin.set_client(client_id, client_secret, lifetime);
    standin
}

/// A spec for a RunaiCredential against `standin`, trusting its CA.
pub fn spec_for(standin: &StandIn, credentials_secret: &str) -> Value {
    json!({
        "url": standin.url(),
        "caBundle": standin.ca_pem(),
        "clientCredentialsSecretRef": {"name": credentials_secret},
    })
}

/// Every form in which a secret could leak: raw, URL-encoded (form and
/// RFC 3986), JSON-escaped and base64 (standard and URL-safe).
pub fn leak_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let json = serde_json::to_string(secret).unwrap();
    vec![
        secret.to_owned(),
        form,
        json.trim_matches('"').to_owned(),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
    ]
}

impl Cluster {
    /// Asserts that no form of any of `secrets` appears in the status of any
    /// RunaiCredential, in any Event of the namespace, or in the controller's
    /// logs. The positive control: the search does see the status and
    /// Events it reads (they are not empty).
    pub async fn assert_nothing_leaks(&self, controller: &Controller, secrets: &[&str]) {
        let credentials = self
            .credentials()
            .list(&Default::default())
            .await
            .expect("listing RunaiCredentials");
        // Messages as they are (not as escaped JSON), and the whole object.
        let mut statuses = String::new();
        for cr in &credentials.items {
            for c in cr.status.iter().flat_map(|s| &s.conditions) {
                statuses.push_str(&format!("{} {} {}\n", c.type_, c.reason, c.message));
            }
            statuses.push_str(&serde_json::to_string(&cr.status).unwrap());
        }
        assert!(
            statuses.contains("Ready"),
            "the statuses were read: {statuses}"
        );
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let mut events_text = String::new();
        for e in events
            .list(&Default::default())
            .await
            .expect("listing Events")
            .items
        {
            events_text.push_str(&format!(
                "{} {} {}\n",
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default(),
                serde_json::to_string(&e).unwrap()
            ));
        }
        let events = events_text;
        assert!(events.contains("RunaiCredential"), "the Events were read");
        let logs = controller.logs();
        assert!(!logs.is_empty(), "the controller logged nothing");
        for secret in secrets {
            for form in leak_forms(secret) {
                for (place, text) in [("status", &statuses), ("Events", &events), ("logs", &logs)] {
                    assert!(
                        !text.contains(&form),
                        "{form:?} (a form of a secret) appears in the {place}"
                    );
                }
            }
        }
    }
}

/// The claims of a JWT, decoded without verification.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT-shaped token");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
