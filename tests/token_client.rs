//! The token client against a mock HTTP endpoint: each API generation, each
//! failure class, `Retry-After`, the body cap, timeouts, and TLS with a
//! private CA.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use jiff::Timestamp;
use runai_token_sync::{
    Error,
    api::TokenApi,
    runai::client::{ClientCredentials, MAX_RESPONSE_BYTES, TokenClient},
};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_json, body_string, header, method, path},
};

fn creds() -> ClientCredentials {
    ClientCredentials {
        client_id: "app-id".into(),
        client_secret: "s3cr3t-value".into(),
    }
}

fn client() -> TokenClient {
    TokenClient::new(None, Duration::from_secs(2)).unwrap()
}

fn now() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

async fn request(
    server: &MockServer,
    api: TokenApi,
) -> Result<runai_token_sync::runai::client::IssuedToken, Error> {
    let url = server.uri().parse().unwrap();
    client().request_token(&url, api, &creds(), now()).await
}

/// Asserts an expiry counted from the answer's arrival: `expected` (from
/// the request's start) plus the few milliseconds the answer took.
fn assert_expires_about(actual: Option<Timestamp>, expected: &str) {
    let expected: Timestamp = expected.parse().unwrap();
    let actual = actual.expect("an expiry");
    let late = actual.duration_since(expected);
    assert!(
        late >= jiff::SignedDuration::ZERO && late < jiff::SignedDuration::from_secs(2),
        "expiry {actual}, expected {expected} plus the time to answer"
    );
}

/// Asserts that no part of an error's message gives the secret away.
fn assert_no_secret(err: &Error) {
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cr3t-value"), "secret leaked: {text}");
}

#[tokio::test]
async fn v1_posts_json_client_credentials() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/token"))
        .and(header("content-type", "application/json"))
        .and(body_json(serde_json::json!({
            "grantType": "client_credentials",
            "clientId": "app-id",
            "clientSecret": "s3cr3t-value",
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "accessToken": "tok-v1", "expiresIn": 3600, "idToken": "x", "refreshToken": "y"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let issued = request(&server, TokenApi::V1).await.unwrap();
    assert_eq!(issued.access_token, "tok-v1");
    assert_expires_about(issued.expires_at, "2026-01-01T01:00:00Z");
}

#[tokio::test]
async fn v2_posts_an_oauth2_form() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "grant_type=client_credentials&client_id=app-id&client_secret=s3cr3t-value",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "tok-v2", "token_type": "Bearer", "expires_in": 600, "scope": "openid"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let issued = request(&server, TokenApi::V2).await.unwrap();
    assert_eq!(issued.access_token, "tok-v2");
    assert_expires_about(issued.expires_at, "2026-01-01T00:10:00Z");
}

#[tokio::test]
async fn app_token_posts_the_legacy_grant() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/token"))
        .and(body_json(serde_json::json!({
            "grantType": "app_token",
            "AppId": "app-id",
            "AppSecret": "s3cr3t-value",
        })))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"accessToken": "tok-app"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let issued = request(&server, TokenApi::AppToken).await.unwrap();
    assert_eq!(issued.access_token, "tok-app");
    assert_eq!(issued.expires_at, None, "no expiresIn and not a JWT");
}

async fn failing(status: u16, body: serde_json::Value, retry_after: Option<&str>) -> Error {
    let server = MockServer::start().await;
    let mut response = ResponseTemplate::new(status).set_body_json(body);
    if let Some(value) = retry_after {
        response = response.insert_header("Retry-After", value);
    }
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    let err = request(&server, TokenApi::V1).await.unwrap_err();
    assert_no_secret(&err);
    err
}

#[tokio::test]
async fn failures_are_classified() {
    let err = failing(
        401,
        serde_json::json!({"code": 401, "message": "Issuer is not familiar."}),
        None,
    )
    .await;
    assert!(
        matches!(err, Error::InvalidCredentials { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(err.reason(), "InvalidCredentials");
    // What a 401 says is not repeated: such bodies echo what was sent.
    assert!(!err.to_string().contains("Issuer"), "{err}");

    let err = failing(
        400,
        serde_json::json!({"error": "invalid_client", "error_description": "bad client"}),
        None,
    )
    .await;
    assert!(
        matches!(err, Error::InvalidCredentials { status: 400, .. }),
        "{err:?}"
    );

    let err = failing(
        400,
        serde_json::json!({"code": 400, "message": "grantType is invalid"}),
        None,
    )
    .await;
    assert!(
        matches!(err, Error::RequestRejected { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(err.reason(), "TokenEndpointError");

    let err = failing(
        500,
        serde_json::json!({"code": 500, "message": "boom"}),
        None,
    )
    .await;
    assert!(
        matches!(err, Error::ServerError { status: 500, .. }),
        "{err:?}"
    );

    let err = failing(
        503,
        serde_json::json!({"code": 503, "message": "Please try again in few minutes."}),
        Some("30"),
    )
    .await;
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));

    let err = failing(429, serde_json::json!({}), Some("12")).await;
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(12)));

    let err = failing(429, serde_json::json!({}), None).await;
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn an_echoed_secret_is_masked_in_every_form() {
    // A 500 may repeat the endpoint's words; the secret in them never shows,
    // whether raw, URL-encoded, JSON-escaped or base64 (also as id:secret).
    let secret = "s3cr3t-value";
    let echoed = format!(
        "raw {secret} form s3cr3t%2Dvalue b64 czNjcjN0LXZhbHVl basic YXBwLWlkOnMzY3IzdC12YWx1ZQ=="
    );
    let err = failing(
        500,
        serde_json::json!({"code": 500, "message": echoed}),
        None,
    )
    .await;
    let text = err.to_string();
    for form in [
        secret,
        "s3cr3t%2Dvalue",
        "czNjcjN0LXZhbHVl",
        "YXBwLWlkOnMzY3IzdC12YWx1ZQ",
    ] {
        assert!(!text.contains(form), "{form} in {text}");
    }
    // An over-encoded form no list foresees: the whole text is withheld.
    assert!(text.contains("withheld"), "{text}");

    let err = failing(
        500,
        serde_json::json!({"code": 500, "message": "raw s3cr3t-value b64 czNjcjN0LXZhbHVl basic YXBwLWlkOnMzY3IzdC12YWx1ZQ=="}),
        None,
    )
    .await;
    let text = err.to_string();
    assert!(
        text.contains("raw [redacted] b64 [redacted] basic [redacted]"),
        "{text}"
    );
}

#[tokio::test]
async fn an_error_object_in_a_200_is_invalid_credentials_with_its_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"code": 401, "message": "Issuer is not familiar."}),
            ),
        )
        .mount(&server)
        .await;
    let err = request(&server, TokenApi::V1).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidCredentials { status: 200, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Issuer is not familiar."), "{err}");
}

#[tokio::test]
async fn gzip_and_a_byte_order_mark_are_accepted() {
    use std::io::Write as _;
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend_from_slice(br#"{"accessToken":"tok-gz","expiresIn":"600"}"#);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("accept-encoding", "gzip"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .insert_header("content-type", "application/json")
                .set_body_bytes(gz.finish().unwrap()),
        )
        .expect(1)
        .mount(&server)
        .await;
    let issued = request(&server, TokenApi::V1).await.unwrap();
    assert_eq!(issued.access_token, "tok-gz");
    assert_expires_about(issued.expires_at, "2026-01-01T00:10:00Z");
}

#[tokio::test]
async fn a_gzip_bomb_is_cut_at_the_body_cap() {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(br#"{"accessToken":""#).unwrap();
    gz.write_all(&vec![b'a'; 4 * MAX_RESPONSE_BYTES]).unwrap();
    let compressed = gz.finish().unwrap();
    assert!(
        compressed.len() < MAX_RESPONSE_BYTES / 16,
        "small on the wire"
    );
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .set_body_bytes(compressed),
        )
        .mount(&server)
        .await;
    let err = request(&server, TokenApi::V1).await.unwrap_err();
    assert!(matches!(err, Error::ResponseTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn a_path_prefix_is_kept_for_every_generation() {
    for (prefix, api, expected) in [
        ("/runai", TokenApi::V1, "/runai/api/v1/token"),
        ("/runai/", TokenApi::V1, "/runai/api/v1/token"),
        ("/runai", TokenApi::V2, "/runai/api/v2/token"),
        ("/runai/", TokenApi::V2, "/runai/api/v2/token"),
        ("/runai", TokenApi::AppToken, "/runai/api/v1/token"),
        ("/runai/", TokenApi::AppToken, "/runai/api/v1/token"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(expected))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    serde_json::json!({"accessToken": "tok", "access_token": "tok"}),
                ),
            )
            .expect(1)
            .mount(&server)
            .await;
        let url = format!("{}{prefix}", server.uri()).parse().unwrap();
        let issued = client().request_token(&url, api, &creds(), now()).await;
        assert!(issued.is_ok(), "{prefix} {api:?}: {issued:?}");
    }
}

/// An HTTP/1.1 endpoint that answers the first request on a connection, then
/// closes that connection when the next request arrives on it without
/// answering (as a server does whose idle timeout races the client's reuse).
/// Returns its address and the count of requests it answered.
async fn closing_endpoint() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut served_here = 0;
                loop {
                    // Read one request: headers, then the body by Content-Length.
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1];
                    while !buf.ends_with(b"\r\n\r\n") {
                        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        buf.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    if tcp.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if served_here == 1 {
                        // The second request on this connection: hang up.
                        return;
                    }
                    served_here += 1;
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer = r#"{"accessToken":"tok-retried","expiresIn":60}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if tcp.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, answered)
}

#[tokio::test]
async fn a_pooled_connection_closed_before_answering_is_retried_once() {
    use std::sync::atomic::Ordering;
    let (addr, answered) = closing_endpoint().await;
    let url = format!("http://{addr}").parse().unwrap();
    let client = client();
    // The first request leaves its connection in the pool; the second is
    // sent on it, finds it closed, and must succeed on a new connection.
    for round in 1..=3 {
        let issued = client
            .request_token(&url, TokenApi::V1, &creds(), now())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(issued.access_token, "tok-retried");
        assert_eq!(answered.load(Ordering::SeqCst), round);
    }
}

#[tokio::test]
async fn malformed_and_empty_answers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(&server)
        .await;
    let err = request(&server, TokenApi::V1).await.unwrap_err();
    assert!(matches!(err, Error::MalformedResponse(_)), "{err:?}");

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"accessToken": ""})),
        )
        .mount(&server)
        .await;
    let err = request(&server, TokenApi::V1).await.unwrap_err();
    assert!(matches!(err, Error::NoToken { .. }), "{err:?}");
}

#[tokio::test]
async fn oversized_answers_are_not_read() {
    let server = MockServer::start().await;
    let huge = format!(
        r#"{{"accessToken":"{}"}}"#,
        "a".repeat(MAX_RESPONSE_BYTES + 10)
    );
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;
    let err = request(&server, TokenApi::V1).await.unwrap_err();
    assert!(matches!(err, Error::ResponseTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn a_slow_endpoint_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"accessToken": "late"}))
                .set_delay(Duration::from_secs(10)),
        )
        .mount(&server)
        .await;
    let url = server.uri().parse().unwrap();
    let quick = TokenClient::new(None, Duration::from_millis(300)).unwrap();
    let err = quick
        .request_token(&url, TokenApi::V1, &creds(), now())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}").parse().unwrap();
    let err = client()
        .request_token(&url, TokenApi::V1, &creds(), now())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(307).insert_header("Location", "https://elsewhere.example/steal"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = request(&server, TokenApi::V1).await.unwrap_err();
    assert!(
        matches!(err, Error::Redirected { status: 307, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("HTTP 307") && text.contains("elsewhere.example"),
        "{text}"
    );
    assert!(!text.contains("/steal"), "{text}");
}

/// A one-route HTTPS token endpoint with a certificate from a fresh private CA.
async fn tls_endpoint() -> (SocketAddr, String) {
    use hyper::{Response, body::Bytes, service::service_fn};
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let ca_params = {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(br#"{"accessToken":"tok-tls","expiresIn":60}"#),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca.pem())
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let (addr, ca_pem) = tls_endpoint().await;
    let url = format!("https://{addr}").parse().unwrap();

    let untrusting = TokenClient::new(None, Duration::from_secs(2)).unwrap();
    let err = untrusting
        .request_token(&url, TokenApi::V1, &creds(), now())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("spec.caBundle"), "{err}");

    let trusting = TokenClient::new(Some(&ca_pem), Duration::from_secs(2)).unwrap();
    let issued = trusting
        .request_token(&url, TokenApi::V1, &creds(), now())
        .await
        .unwrap();
    assert_eq!(issued.access_token, "tok-tls");
}

#[tokio::test]
async fn a_broken_ca_bundle_is_an_invalid_spec() {
    let err = TokenClient::new(
        Some("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidSpec {
                field: "spec.caBundle",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Mounts an answer for one endpoint, expected `times` times.
async fn answer_at(server: &MockServer, at: &str, template: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(template)
        .expect(times)
        .mount(server)
        .await;
}

fn v2_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "access_token": "tok-v2", "token_type": "Bearer", "expires_in": 3600
    }))
}

fn v1_ok() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"accessToken": "tok-v1", "expiresIn": 3600}))
}

#[tokio::test]
async fn auto_takes_v2_where_it_is_served_without_calling_v1() {
    let server = MockServer::start().await;
    answer_at(&server, "/api/v2/token", v2_ok(), 1).await;
    answer_at(&server, "/api/v1/token", v1_ok(), 0).await;
    let issued = request(&server, TokenApi::Auto).await.unwrap();
    assert_eq!(
        (issued.access_token.as_str(), issued.token_api),
        ("tok-v2", Some(TokenApi::V2))
    );
}

#[tokio::test]
async fn auto_falls_back_to_v1_where_v2_is_not_served_in_every_shape() {
    let html = ResponseTemplate::new(404)
        .insert_header("content-type", "text/html")
        .set_body_string("<html><body><center><h1>404 Not Found</h1></center></body></html>");
    let shapes = [
        ResponseTemplate::new(404).set_body_json(serde_json::json!({"code": 404})),
        html,
        ResponseTemplate::new(405),
        ResponseTemplate::new(410),
        ResponseTemplate::new(501),
        ResponseTemplate::new(400)
            .set_body_json(serde_json::json!({"error": "unsupported_grant_type"})),
    ];
    for shape in shapes {
        let server = MockServer::start().await;
        answer_at(&server, "/api/v2/token", shape, 1).await;
        answer_at(&server, "/api/v1/token", v1_ok(), 1).await;
        let issued = request(&server, TokenApi::Auto).await.unwrap();
        assert_eq!(
            (issued.access_token.as_str(), issued.token_api),
            ("tok-v1", Some(TokenApi::V1))
        );
    }
}

#[tokio::test]
async fn auto_never_sends_refused_credentials_to_the_other_endpoint() {
    for (status, body) in [
        (401, serde_json::json!({"error": "invalid_client"})),
        (400, serde_json::json!({"error": "unauthorized_client"})),
        (403, serde_json::json!({"error": "invalid_grant"})),
    ] {
        let server = MockServer::start().await;
        answer_at(
            &server,
            "/api/v2/token",
            ResponseTemplate::new(status).set_body_json(body),
            1,
        )
        .await;
        // Positive control of the count: V1 would answer, and is never asked.
        answer_at(&server, "/api/v1/token", v1_ok(), 0).await;
        let err = request(&server, TokenApi::Auto).await.unwrap_err();
        assert!(matches!(err, Error::InvalidCredentials { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn auto_calls_the_remembered_generation_first_and_detects_again_when_it_goes() {
    let server = MockServer::start().await;
    answer_at(&server, "/api/v1/token", v1_ok(), 1).await;
    answer_at(&server, "/api/v2/token", v2_ok(), 0).await;
    let url = server.uri().parse().unwrap();
    let issued = client()
        .request_token_after(&url, TokenApi::Auto, Some(TokenApi::V1), &creds(), now())
        .await
        .unwrap();
    assert_eq!(issued.token_api, Some(TokenApi::V1));
    server.verify().await;

    // V1 removed: detected again, V2 answers.
    server.reset().await;
    answer_at(&server, "/api/v1/token", ResponseTemplate::new(410), 1).await;
    answer_at(&server, "/api/v2/token", v2_ok(), 1).await;
    let issued = client()
        .request_token_after(&url, TokenApi::Auto, Some(TokenApi::V1), &creds(), now())
        .await
        .unwrap();
    assert_eq!(issued.token_api, Some(TokenApi::V2));
}

#[tokio::test]
async fn auto_where_neither_is_served_says_to_check_the_url() {
    let server = MockServer::start().await;
    answer_at(&server, "/api/v2/token", ResponseTemplate::new(404), 1).await;
    answer_at(&server, "/api/v1/token", ResponseTemplate::new(404), 1).await;
    let err = request(&server, TokenApi::Auto).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::TokenApiNotServed { asked: "Auto", .. })
            && text.contains("/api/v2/token is not served either")
            && text.contains("spec.url"),
        "{text}"
    );
}

#[tokio::test]
async fn explicit_generations_that_meet_a_removed_endpoint_say_what_to_set() {
    for (api, removed, other, advice) in [
        (
            TokenApi::V1,
            "/api/v1/token",
            "/api/v2/token",
            "spec.tokenApi: V2 or Auto",
        ),
        (
            TokenApi::AppToken,
            "/api/v1/token",
            "/api/v2/token",
            "spec.tokenApi: V2 or Auto",
        ),
        (
            TokenApi::V2,
            "/api/v2/token",
            "/api/v1/token",
            "spec.tokenApi: V1 or Auto",
        ),
    ] {
        let server = MockServer::start().await;
        answer_at(&server, removed, ResponseTemplate::new(404), 1).await;
        // An explicit generation is never replaced by another.
        answer_at(&server, other, v2_ok(), 0).await;
        let err = request(&server, api).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("HTTP 404") && text.contains(advice),
            "{api:?}: {text}"
        );
    }
}

#[tokio::test]
async fn v1_that_takes_only_app_token_tells_auto_to_set_app_token() {
    let server = MockServer::start().await;
    answer_at(&server, "/api/v2/token", ResponseTemplate::new(404), 1).await;
    answer_at(
        &server,
        "/api/v1/token",
        ResponseTemplate::new(400)
            .set_body_json(serde_json::json!({"error": "unsupported_grant_type"})),
        1,
    )
    .await;
    let err = request(&server, TokenApi::Auto).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidSpec");
    assert!(
        err.to_string().contains("set spec.tokenApi: AppToken"),
        "{err}"
    );
}

#[tokio::test]
async fn a_deprecated_endpoint_is_used_and_its_notice_returned() {
    let server = MockServer::start().await;
    answer_at(
        &server,
        "/api/v1/token",
        v1_ok()
            .insert_header("Deprecation", "@1767225600")
            .insert_header("Sunset", "Wed, 01 Jul 2026 00:00:00 GMT"),
        1,
    )
    .await;
    let issued = request(&server, TokenApi::V1).await.unwrap();
    assert_eq!(issued.access_token, "tok-v1");
    let notice = issued.deprecation.expect("the notice");
    assert!(notice.endpoint.ends_with("/api/v1/token"));
    assert_eq!(notice.sunset, Some("2026-07-01T00:00:00Z".parse().unwrap()));
    // Positive control: an answer without the headers carries none.
    server.reset().await;
    answer_at(&server, "/api/v1/token", v1_ok(), 1).await;
    assert_eq!(
        request(&server, TokenApi::V1).await.unwrap().deprecation,
        None
    );
}

#[tokio::test]
async fn a_ca_bundle_holding_the_servers_own_certificate_says_so() {
    let standin = runai_standin::StandIn::start().await.unwrap();
    standin.set_client("app-id", "s3cr3t-value", Duration::from_secs(3600));
    let url = standin.url().parse().unwrap();
    let leaf = TokenClient::new(Some(standin.server_cert_pem()), Duration::from_secs(2)).unwrap();
    let err = leaf
        .request_token(&url, TokenApi::V2, &creds(), now())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(
        text.contains("the server's own certificate")
            && text.contains("issued by CN=runai-standin CA")
            && text.contains("subject CN=")
            && !text.contains("UnknownIssuer"),
        "{text}"
    );
    // Positive control: the issuer's certificate in its place is trusted.
    let ca = TokenClient::new(Some(standin.ca_pem()), Duration::from_secs(2)).unwrap();
    assert!(
        ca.request_token(&url, TokenApi::V2, &creds(), now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_error_in_a_200_says_the_same_as_in_any_other_status() {
    // invalid_grant (a disabled account) in a 200: rejected credentials.
    let server = MockServer::start().await;
    answer_at(
        &server,
        "/api/v2/token",
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"error": "invalid_grant"})),
        1,
    )
    .await;
    answer_at(&server, "/api/v1/token", v1_ok(), 0).await;
    let err = request(&server, TokenApi::Auto).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidCredentials { status: 200, .. }),
        "{err:?}"
    );

    // unsupported_grant_type in a 200 from V2: not served, V1 answers.
    let server = MockServer::start().await;
    answer_at(
        &server,
        "/api/v2/token",
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"error": "unsupported_grant_type"})),
        1,
    )
    .await;
    answer_at(&server, "/api/v1/token", v1_ok(), 1).await;
    let issued = request(&server, TokenApi::Auto).await.unwrap();
    assert_eq!(issued.token_api, Some(TokenApi::V1));
}

#[tokio::test]
async fn auto_after_v1_remembered_where_neither_is_served_names_v1s_answer() {
    let server = MockServer::start().await;
    answer_at(&server, "/api/v1/token", ResponseTemplate::new(410), 1).await;
    answer_at(&server, "/api/v2/token", ResponseTemplate::new(404), 1).await;
    let url = server.uri().parse().unwrap();
    let err = client()
        .request_token_after(&url, TokenApi::Auto, Some(TokenApi::V1), &creds(), now())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/api/v1/token answered HTTP 410")
            && text.contains("/api/v2/token is not served either"),
        "{text}"
    );
}
