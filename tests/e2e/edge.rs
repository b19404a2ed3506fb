//! Every odd input from the field (api.md, "Edge cases": reading the answer,
//! reading the spec and the credentials, proxies) and the trust model,
//! against the real API server and the stand-in.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use runai_standin::{Client as StandInClient, Fault, Options, StandIn};
use serde_json::json;

use crate::harness::{Cluster, Controller, eventually, jwt_claims, spec_for, standin_with, stays};

const HOUR: Duration = Duration::from_secs(3600);

/// `expiresAt` of a target Secret, parsed.
async fn secret_expiry(cluster: &Cluster, secret: &str) -> Timestamp {
    let secret = cluster.secret(secret).await.expect("the target Secret");
    std::str::from_utf8(&secret.data.unwrap()["expiresAt"].0)
        .unwrap()
        .parse()
        .unwrap()
}

fn close_to(at: Timestamp, expected: Timestamp, within: SignedDuration) -> bool {
    (at.duration_since(expected)).abs() <= within
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn odd_token_answers_are_read_or_refused_clearly() {
    let cluster = Cluster::new("answers").await;
    let secret = "s3cr3t+/answers\"x";
    cluster.put_credentials("creds", "app", secret).await;
    let controller = cluster.start_controller();

    // gzip with a byte-order mark: read as any other answer.
    let gzip = standin_with("app", secret, HOUR).await;
    gzip.set_fault(Some(Fault::GzipWithBom));
    cluster
        .create_credential("gzip", spec_for(&gzip, "creds"))
        .await;

    // Issuers whose clocks are 20 minutes behind and ahead, JWT only.
    let mut skewed = Vec::new();
    for (name, skew) in [("behind", -1200), ("ahead", 1200)] {
        let standin = StandIn::start().await.unwrap();
        standin.set_client_with(
            "app",
            StandInClient {
                send_expires_in: false,
                clock_skew_seconds: skew,
                ..StandInClient::new(secret, Duration::from_secs(900))
            },
        );
        cluster
            .create_credential(name, spec_for(&standin, "creds"))
            .await;
        skewed.push((name, standin));
    }

    // A 200 carrying an error object.
    let error_200 = standin_with("app", secret, HOUR).await;
    error_200.set_fault(Some(Fault::Raw {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"code":401,"message":"Issuer is not familiar."}"#.to_vec(),
    }));
    cluster
        .create_credential("error-in-200", spec_for(&error_200, "creds"))
        .await;

    // A redirect to an SSO gateway.
    let redirect = standin_with("app", secret, HOUR).await;
    redirect.set_fault(Some(Fault::Raw {
        status: 302,
        headers: vec![(
            "location".into(),
            "https://sso.corp.example/auth?next=/api/v1/token".into(),
        )],
        body: Vec::new(),
    }));
    cluster
        .create_credential("redirected", spec_for(&redirect, "creds"))
        .await;

    // An HTML page with status 200.
    let html = standin_with("app", secret, HOUR).await;
    html.set_fault(Some(Fault::Malformed));
    cluster
        .create_credential("html", spec_for(&html, "creds"))
        .await;

    cluster.wait_ready("gzip").await;
    assert_eq!(gzip.requests("app"), 1);
    let token = cluster.token("gzip", "accessToken").await.unwrap();
    assert_eq!(jwt_claims(&token)["sub"], "app");

    for (name, _) in &skewed {
        cluster.wait_ready(name).await;
        let expiry = secret_expiry(&cluster, name).await;
        let expected = Timestamp::now() + SignedDuration::from_secs(900);
        assert!(
            close_to(expiry, expected, SignedDuration::from_secs(30)),
            "{name}: the token lives exp - iat = 900 s from arrival, got expiresAt {expiry}"
        );
    }
    for (_, standin) in &skewed {
        assert_eq!(
            standin.requests("app"),
            1,
            "no request loop with a skewed issuer"
        );
    }

    let message = cluster
        .wait_not_ready("error-in-200", "InvalidCredentials")
        .await;
    assert!(message.contains("Issuer is not familiar."), "{message}");
    let message = cluster
        .wait_not_ready("redirected", "TokenEndpointError")
        .await;
    assert!(
        message.contains("HTTP 302") && message.contains("sso.corp.example"),
        "{message}"
    );
    let message = cluster.wait_not_ready("html", "TokenEndpointError").await;
    assert!(message.contains("HTML"), "{message}");
    for name in ["error-in-200", "redirected", "html"] {
        assert!(
            cluster.secret(name).await.is_none(),
            "{name}: nothing is written"
        );
    }
    cluster
        .assert_nothing_leaks(&controller, &[secret, &token])
        .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn retry_after_a_year_away_does_not_let_the_token_expire() {
    let cluster = Cluster::new("retry-after").await;
    let standin = standin_with("app", "s3cr3t-ra", Duration::from_secs(30)).await;
    cluster.put_credentials("creds", "app", "s3cr3t-ra").await;
    let controller = cluster.start_controller();
    cluster
        .create_credential("short", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("short").await;
    let expiry = secret_expiry(&cluster, "short").await;

    let next_year =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(365 * 86400));
    standin.set_fault(Some(Fault::Raw {
        status: 503,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("retry-after".into(), next_year),
        ],
        body: br#"{"code":503,"message":"Please try again in few minutes."}"#.to_vec(),
    }));
    // The refresh at 2/3 of 30 s fails; the retry is planned before the
    // expiry, not in an hour.
    let cr = cluster
        .wait_condition("short", "Degraded", "True", Duration::from_secs(40))
        .await;
    let status = cr.status.clone().unwrap();
    let next: Timestamp = status.next_refresh_time.unwrap().parse().unwrap();
    assert!(
        next < expiry,
        "next retry {next} is before the expiry {expiry}"
    );
    assert_eq!(status.failed_attempts, 1);
    assert_eq!(
        cr.condition("Ready").unwrap().status,
        "True",
        "the token is still valid"
    );

    // The outage ends: that retry succeeds before the old token expired.
    standin.set_fault(None);
    cluster
        .wait_condition("short", "Degraded", "False", Duration::from_secs(15))
        .await;
    assert!(
        Timestamp::now() < expiry + SignedDuration::from_secs(2),
        "refreshed before {expiry}"
    );
    assert!(
        secret_expiry(&cluster, "short").await > expiry,
        "a new token"
    );
    assert_eq!(standin.requests("app"), 3, "issue, failure, retry");
    controller.assert_logs_hold_none_of(&["s3cr3t-ra"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn messy_specs_and_credentials_work() {
    let cluster = Cluster::new("messy").await;
    let secret = "s3cr3t-messy";
    // A trailing newline and spaces, as `--from-file` and editors leave them.
    cluster
        .put_credentials("creds", " app\n", &format!("\t{secret} \r\n"))
        .await;
    let controller = cluster.start_controller();

    // A self-hosted Run:ai behind a path prefix, with and without the slash.
    let prefixed = StandIn::start_with(Options {
        path_prefix: "/runai".into(),
        ..Options::default()
    })
    .await
    .unwrap();
    prefixed.set_client("app", secret, HOUR);
    for (name, suffix, api) in [
        ("prefix", "/runai", "V1"),
        ("prefix-slash", "/runai/", "V1"),
        ("prefix-v2", "/runai/", "V2"),
        ("prefix-app-token", "/runai", "AppToken"),
    ] {
        let mut spec = spec_for(&prefixed, "creds");
        spec["url"] = json!(format!("{}{suffix}", prefixed.url()));
        spec["tokenApi"] = json!(api);
        cluster.create_credential(name, spec).await;
    }

    // A CA bundle with root and intermediate, CRLF and text around the blocks.
    let chained = StandIn::start_with(Options {
        intermediate_ca: true,
        ..Options::default()
    })
    .await
    .unwrap();
    chained.set_client("app", secret, HOUR);
    assert!(
        chained.ca_pem().contains("\r\n")
            && chained.ca_pem().matches("BEGIN CERTIFICATE").count() == 2
    );
    cluster
        .create_credential("chain", spec_for(&chained, "creds"))
        .await;

    // A name longer than a label value.
    let long_name = format!("a-very-long-runaicredential-name-{}", "x".repeat(37));
    assert_eq!(long_name.len(), 70);
    let plain = standin_with("app", secret, HOUR).await;
    cluster
        .create_credential(&long_name, spec_for(&plain, "creds"))
        .await;

    // A CA bundle with no certificate, and a URL with a query: InvalidSpec
    // before any request.
    let unused = standin_with("unused", "unused", HOUR).await;
    let mut no_cert = spec_for(&unused, "creds");
    no_cert["caBundle"] = json!(
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
    );
    cluster.create_credential("no-cert", no_cert).await;
    let mut query = spec_for(&unused, "creds");
    query["url"] = json!(format!("{}/?tenant=acme", unused.url()));
    cluster.create_credential("query", query).await;

    for name in [
        "prefix",
        "prefix-slash",
        "prefix-v2",
        "prefix-app-token",
        "chain",
        long_name.as_str(),
    ] {
        cluster.wait_ready(name).await;
    }
    assert_eq!(
        prefixed.requests("app"),
        4,
        "each prefixed credential asked once"
    );
    assert_eq!(chained.requests("app"), 1);

    let secret_of_long = cluster
        .secret(&long_name)
        .await
        .expect("the long name's Secret");
    let label = &secret_of_long.metadata.labels.clone().unwrap()["tokensync.dev/credential"];
    assert_eq!(label.len(), 63);
    assert!(label.starts_with(&long_name[..54]) && label.as_bytes()[54] == b'-');
    assert!(
        label[55..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{label}"
    );
    // Edits to it are still put right (the event maps back through the hash).
    cluster
        .secrets()
        .patch(
            &long_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": {"accessToken": "Zm9yZ2Vk"}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the forged token is replaced",
        || async {
            let token = cluster.token(&long_name, "accessToken").await?;
            (token != "forged").then_some(())
        },
    )
    .await;

    let message = cluster.wait_not_ready("no-cert", "InvalidSpec").await;
    assert!(message.starts_with("spec.caBundle"), "{message}");
    let message = cluster.wait_not_ready("query", "InvalidSpec").await;
    assert!(message.starts_with("spec.url"), "{message}");
    assert_eq!(unused.total_requests(), 0, "no request for an invalid spec");

    // The credentials Secret is never modified.
    let creds = cluster.secret("creds").await.unwrap();
    assert_eq!(creds.data.unwrap()["clientId"].0, b" app\n");
    cluster.assert_nothing_leaks(&controller, &[secret]).await;
}

/// A minimal HTTP CONNECT proxy that records where each tunnel went, and
/// that requires `Proxy-Authorization: Basic` for `user:password`.
struct ConnectProxy {
    addr: SocketAddr,
    tunnels: Arc<Mutex<Vec<String>>>,
}

const PROXY_USER: &str = "proxy-user:proxy-pass";

impl ConnectProxy {
    async fn start() -> ConnectProxy {
        use base64::Engine as _;
        let expected_auth = format!(
            "proxy-authorization: basic {}",
            base64::engine::general_purpose::STANDARD.encode(PROXY_USER)
        )
        .to_ascii_lowercase();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let seen = tunnels.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = seen.clone();
                let expected_auth = expected_auth.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 || head.len() > 8192 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    if !head.to_ascii_lowercase().contains(&expected_auth) {
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
                            .await;
                        return;
                    }
                    let Some(target) = head
                        .lines()
                        .next()
                        .and_then(|l| l.strip_prefix("CONNECT "))
                        .and_then(|l| l.split_whitespace().next())
                        .map(str::to_owned)
                    else {
                        let _ = client
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    };
                    seen.lock().unwrap().push(target.clone());
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        ConnectProxy { addr, tunnels }
    }

    fn tunnels(&self) -> Vec<String> {
        self.tunnels.lock().unwrap().clone()
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn token_requests_use_the_proxy_and_no_proxy_exempts_the_api_server() {
    let cluster = Cluster::new("proxy").await;
    let standin = standin_with("app", "s3cr3t-proxy", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-proxy")
        .await;
    let proxy = ConnectProxy::start().await;

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let api_host = config.cluster_url.host().unwrap().to_owned();
    let api_port = config.cluster_url.port_u16().unwrap_or(443);
    // The API server by CIDR when it is an IPv4 address (by host otherwise);
    // a trailing comma and a blank entry must not matter.
    let no_proxy = match api_host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => format!("{}.{}.0.0/16, ,.svc,", ip.octets()[0], ip.octets()[1]),
        Err(_) => format!("{api_host},.svc,"),
    };
    let proxy_url = format!("http://{PROXY_USER}@{}", proxy.addr);
    let controller = Controller::start_with_env(
        &cluster.kubeconfig,
        &cluster.namespace,
        &[],
        &[
            ("HTTPS_PROXY", proxy_url.as_str()),
            ("no_proxy", no_proxy.as_str()),
            // Unusable: ignored, never a reason not to start.
            ("HTTP_PROXY", "::not a proxy::"),
        ],
    );
    // The stand-in by name, which the CIDR does not cover: through the proxy.
    let mut spec = spec_for(&standin, "creds");
    let port = standin.url().rsplit(':').next().unwrap().to_owned();
    spec["url"] = json!(format!("https://localhost:{port}"));
    cluster.create_credential("proxied", spec).await;

    cluster.wait_ready("proxied").await;
    assert_eq!(standin.requests("app"), 1);
    let tunnels = proxy.tunnels();
    assert!(
        tunnels.iter().any(|t| *t == format!("localhost:{port}")),
        "the token request went through the proxy: {tunnels:?}"
    );
    assert!(
        !tunnels.iter().any(|t| t.ends_with(&format!(":{api_port}"))),
        "the API server is reached directly: {tunnels:?}"
    );
    controller.assert_logs_hold_none_of(&["s3cr3t-proxy", "proxy-pass"]);
    drop(controller);

    // Positive control: without NO_PROXY, the same proxy does see the API
    // server's traffic, and the controller works through it.
    let through_proxy = Controller::start_with_env(
        &cluster.kubeconfig,
        &cluster.namespace,
        &[],
        &[("https_proxy", proxy_url.as_str())],
    );
    cluster
        .patch_credential(
            "proxied",
            json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "1"}}}),
        )
        .await;
    eventually(
        Duration::from_secs(20),
        "a refresh through the proxy",
        || async { (standin.requests("app") == 2).then_some(()) },
    )
    .await;
    let tunnels = proxy.tunnels();
    assert!(
        tunnels
            .iter()
            .any(|t| *t == format!("{api_host}:{api_port}")),
        "without NO_PROXY the API server is reached through the proxy: {tunnels:?}"
    );
    through_proxy.assert_logs_hold_none_of(&["s3cr3t-proxy", "proxy-pass"]);
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn allowed_urls_and_the_credentials_label_are_enforced() {
    let cluster = Cluster::new("trust").await;
    let standin = standin_with("app", "s3cr3t-trust", HOUR).await;
    let port = standin.url().rsplit(':').next().unwrap().to_owned();
    let allowed = format!("https://*.corp.example,https://localhost:{port}/");
    let controller = Controller::start_with_env(
        &cluster.kubeconfig,
        &cluster.namespace,
        &["--credentials-secret-label-required"],
        &[("ALLOWED_URLS", allowed.as_str())],
    );
    let label = |name: &str| {
        let secrets = cluster.secrets();
        let name = name.to_owned();
        async move {
            secrets
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(
                        json!({"metadata": {"labels": {"tokensync.dev/credentials": "true"}}}),
                    ),
                )
                .await
                .unwrap();
        }
    };
    cluster
        .put_credentials("labelled", "app", "s3cr3t-trust")
        .await;
    label("labelled").await;
    cluster
        .put_credentials("unlabelled", "app", "s3cr3t-trust")
        .await;

    let localhost = |secret: &str| {
        let mut spec = spec_for(&standin, secret);
        spec["url"] = json!(format!("https://localhost:{port}"));
        spec
    };
    cluster
        .create_credential("allowed", localhost("labelled"))
        .await;
    // Same endpoint by another name, not in the list; its credentials Secret
    // does not even exist: the URL is refused before it is looked for.
    cluster
        .create_credential("elsewhere", spec_for(&standin, "missing"))
        .await;
    cluster
        .create_credential("needs-label", localhost("unlabelled"))
        .await;

    cluster.wait_ready("allowed").await;
    let message = cluster.wait_not_ready("elsewhere", "InvalidSpec").await;
    assert!(
        message.starts_with("spec.url") && message.contains("not among"),
        "{message}"
    );
    let message = cluster
        .wait_not_ready("needs-label", "CredentialsNotFound")
        .await;
    assert!(message.contains("tokensync.dev/credentials"), "{message}");
    assert_eq!(
        standin.requests("app"),
        1,
        "only the allowed, labelled one asked"
    );
    stays(
        Duration::from_secs(2),
        "no request for the refused ones",
        || async { standin.requests("app") == 1 },
    )
    .await;

    // Labelling the Secret is seen (the labelled-Secret watch) and fixes it.
    label("unlabelled").await;
    cluster.wait_ready("needs-label").await;
    // The same application as the allowed one: its token is shared.
    assert_eq!(standin.requests("app"), 1);
    cluster
        .assert_nothing_leaks(&controller, &["s3cr3t-trust"])
        .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_token_shorter_than_the_request_spacing_is_never_ready_once_expired() {
    let cluster = Cluster::new("short-token").await;
    // 3 s tokens; requests are at least 5 s apart.
    let standin = standin_with("app", "s3cr3t-short", Duration::from_secs(3)).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-short")
        .await;
    let controller = cluster.start_controller();
    cluster
        .create_credential("brief", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("brief").await;

    let (mut seen_ready, mut seen_expired) = (0, 0);
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(12) {
        let cr = cluster.credentials().get("brief").await.unwrap();
        let ready = cr.condition("Ready").unwrap();
        if ready.status == "True" {
            seen_ready += 1;
            // Read after the status: a token that expired since is allowed
            // the polling interval.
            let expiry = secret_expiry(&cluster, "brief").await;
            assert!(
                expiry + SignedDuration::from_millis(500) > Timestamp::now(),
                "Ready=True while the Secret holds a token that expired at {expiry}"
            );
        } else if ready.reason == "TokenExpired" {
            seen_expired += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen_ready > 0 && seen_expired > 0,
        "both states seen: {seen_ready} ready, {seen_expired} expired"
    );
    let requests = standin.requests("app");
    assert!(
        (2..=4).contains(&requests),
        "refreshed, at most every 5 s: {requests} requests in ~13 s"
    );
    controller.assert_logs_hold_none_of(&["s3cr3t-short"]);
}
