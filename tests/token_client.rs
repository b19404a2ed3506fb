//! The token client against a mock HTTP endpoint: each API generation, each
//! failure class, `Retry-After`, the body cap, timeouts, and TLS with a
//! private CA.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use jiff::Timestamp;
use runai_token_sync::{
    Error,
    resource::TokenApi,
    token_client::{ClientCredentials, MAX_RESPONSE_BYTES, TokenClient},
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
) -> Result<runai_token_sync::token_client::IssuedToken, Error> {
    let url = server.uri().parse().unwrap();
    client().request_token(&url, api, &creds(), now()).await
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
    assert_eq!(
        issued.expires_at,
        Some("2026-01-01T01:00:00Z".parse().unwrap())
    );
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
    assert_eq!(
        issued.expires_at,
        Some("2026-01-01T00:10:00Z".parse().unwrap())
    );
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
    assert!(err.to_string().contains("Issuer is not familiar."), "{err}");

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
async fn an_echoed_secret_is_masked() {
    let err = failing(
        401,
        serde_json::json!({"code": 401, "message": "client secret s3cr3t-value is wrong"}),
        None,
    )
    .await;
    assert!(err.to_string().contains("[redacted]"), "{err}");
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
    assert!(matches!(err, Error::EmptyToken), "{err:?}");
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
        matches!(err, Error::RequestRejected { status: 307, .. }),
        "{err:?}"
    );
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
