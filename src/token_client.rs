//! The Run:ai token client: one request per token, three API generations.
//!
//! The HTTP part is thin; reading the answer ([`parse_token_response`]) and
//! classifying failures ([`classify_http_failure`]) are pure functions.

use std::{collections::HashMap, fmt, sync::Mutex, time::Duration};

use base64::Engine as _;
use jiff::Timestamp;
use serde_json::Value;

use crate::{
    error::{Error, sanitize_detail},
    resource::TokenApi,
};

/// Largest answer body that is read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Default timeout of one token request, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest `Retry-After` that is honoured; a larger one is capped so that a
/// broken header cannot stall refreshes for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Client ID and client secret of a Run:ai application. `Debug` never shows the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// A token as issued. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub access_token: String,
    /// From `expiresIn`/`expires_in`, else the JWT's `exp`, else unknown.
    pub expires_at: Option<Timestamp>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An HTTP client for one set of trusted CAs.
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl TokenClient {
    /// Builds a client that trusts the system roots plus `ca_bundle`, with a
    /// timeout on every request. `HTTPS_PROXY`/`NO_PROXY` are honoured.
    pub fn new(ca_bundle: Option<&str>, timeout: Duration) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // A redirect would re-send the client secret elsewhere: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("runai-token-sync/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_bundle {
            for cert in parse_ca_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| match ca_bundle {
            Some(_) => Error::InvalidSpec {
                field: "spec.caBundle",
                message: format!("cannot be used as trusted CAs: {e}"),
            },
            None => Error::Startup(format!("cannot build an HTTP client: {e}")),
        })?;
        Ok(TokenClient { http, timeout })
    }

    /// Requests one token. `now` dates a relative `expiresIn`.
    pub async fn request_token(
        &self,
        base_url: &url::Url,
        api: TokenApi,
        credentials: &ClientCredentials,
        now: Timestamp,
    ) -> Result<IssuedToken, Error> {
        let endpoint = token_endpoint(base_url, api);
        let shown_url = endpoint.as_str().to_owned();
        let request = match api {
            TokenApi::V1 => self.http.post(endpoint).json(&serde_json::json!({
                "grantType": "client_credentials",
                "clientId": credentials.client_id,
                "clientSecret": credentials.client_secret,
            })),
            TokenApi::AppToken => self.http.post(endpoint).json(&serde_json::json!({
                "grantType": "app_token",
                "AppId": credentials.client_id,
                "AppSecret": credentials.client_secret,
            })),
            TokenApi::V2 => self.http.post(endpoint).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", credentials.client_id.as_str()),
                ("client_secret", credentials.client_secret.as_str()),
            ]),
        };
        let request = request.header(reqwest::header::ACCEPT, "application/json");

        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&shown_url, &e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let body = self.read_capped(&shown_url, response).await?;
        let secrets = [credentials.client_secret.as_str()];
        if !status.is_success() {
            return Err(classify_http_failure(
                status.as_u16(),
                retry_after,
                &body,
                &secrets,
            ));
        }
        parse_token_response(&body, now)
    }

    async fn read_capped(
        &self,
        url: &str,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, Error> {
        let too_large = Error::ResponseTooLarge {
            limit: MAX_RESPONSE_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(url, &e))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, url: &str, err: &reqwest::Error) -> Error {
        let url = url.to_owned();
        if err.is_timeout() {
            return Error::Timeout {
                url,
                timeout: self.timeout,
            };
        }
        if let Some(tls) = find_tls_error(err) {
            return Error::Tls { url, detail: tls };
        }
        Error::Connect {
            url,
            detail: innermost_message(err),
        }
    }
}

/// The endpoint of a token API generation under a base URL.
pub fn token_endpoint(base_url: &url::Url, api: TokenApi) -> url::Url {
    let path = match api {
        TokenApi::V1 | TokenApi::AppToken => "api/v1/token",
        TokenApi::V2 => "api/v2/token",
    };
    let mut base = base_url.clone();
    // A base URL with a path prefix (self-hosted behind a proxy) keeps it.
    if !base.path().ends_with('/') {
        let with_slash = format!("{}/", base.path());
        base.set_path(&with_slash);
    }
    base.join(path).expect("a fixed relative path always joins")
}

/// Parses a PEM bundle; it must hold at least one certificate.
pub fn parse_ca_bundle(pem: &str) -> Result<Vec<reqwest::Certificate>, Error> {
    let invalid = |message: String| Error::InvalidSpec {
        field: "spec.caBundle",
        message,
    };
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| invalid(format!("is not a valid PEM bundle: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE----- blocks)".to_owned(),
        ));
    }
    Ok(certs)
}

/// Reads a successful answer of any API generation. Unknown fields are
/// ignored; `accessToken` and `access_token` are both accepted.
pub fn parse_token_response(body: &[u8], now: Timestamp) -> Result<IssuedToken, Error> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Error::MalformedResponse(format!(
            "not JSON ({}), at line {} column {}",
            e.classify_name(),
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(Error::MalformedResponse(
            "expected a JSON object".to_owned(),
        ));
    };
    let token = match fields
        .get("accessToken")
        .or_else(|| fields.get("access_token"))
    {
        None | Some(Value::Null) => return Err(Error::EmptyToken),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(_) => {
            return Err(Error::MalformedResponse(
                "the access token is not a string".to_owned(),
            ));
        }
    };
    if token.is_empty() {
        return Err(Error::EmptyToken);
    }
    // The token ends up in an HTTP header; anything else would be unusable.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::MalformedResponse(
            "the access token holds characters that cannot be sent in an HTTP header".to_owned(),
        ));
    }
    let lifetime = fields
        .get("expiresIn")
        .or_else(|| fields.get("expires_in"))
        .and_then(seconds_of);
    let expires_at = match lifetime {
        Some(secs) if secs > 0 => now.checked_add(jiff::SignedDuration::from_secs(secs)).ok(),
        _ => jwt_expiry(&token),
    };
    // Writing it would only trigger another request at once, again and again.
    if let Some(at) = expires_at.filter(|at| *at <= now) {
        return Err(Error::MalformedResponse(format!(
            "the token had already expired when it arrived (exp {at}); check the clocks of this node and of Run:ai"
        )));
    }
    Ok(IssuedToken {
        access_token: token,
        expires_at,
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// A lifetime in seconds, sent as a number or a numeric string.
fn seconds_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The `exp` claim of a JWT, decoded without verifying the signature: the
/// controller is not the token's audience, it only plans the refresh.
pub fn jwt_expiry(token: &str) -> Option<Timestamp> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = seconds_of(claims.get("exp")?)?;
    Timestamp::from_second(exp).ok()
}

/// Classifies a non-2xx answer. `secrets` are masked in any echoed text.
pub fn classify_http_failure(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    secrets: &[&str],
) -> Error {
    let (code, text) = error_body(body);
    let detail = sanitize_detail(&text, secrets);
    match status {
        401 | 403 => Error::InvalidCredentials { status, detail },
        // RFC 6749 answers bad client credentials with 400 invalid_client (V2).
        400 if matches!(
            code.as_deref(),
            Some("invalid_client" | "unauthorized_client" | "invalid_grant")
        ) =>
        {
            Error::InvalidCredentials { status, detail }
        }
        429 => Error::RateLimited {
            retry_after,
            detail,
        },
        503 => Error::Unavailable {
            retry_after,
            detail,
        },
        500..=599 => Error::ServerError { status, detail },
        _ => Error::RequestRejected { status, detail },
    }
}

/// The OAuth2 `error` code and a human text from an error body, whichever
/// generation's shape it has (`{"code","message"}` or `{"error","error_description"}`).
fn error_body(body: &[u8]) -> (Option<String>, String) {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return (None, String::new());
    };
    let text_of = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    let code = text_of("error");
    let text = text_of("error_description")
        .or_else(|| text_of("message"))
        .or_else(|| code.clone())
        .unwrap_or_default();
    (code, text)
}

/// `Retry-After` as seconds or as an HTTP date, capped.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

fn find_tls_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    // `io::Error::source` skips the error it wraps, so look inside explicitly.
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| find_tls_error(inner))
    {
        return Some(inner);
    }
    err.source().and_then(find_tls_error)
}

fn innermost_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// HTTP clients shared by all credentials with the same `caBundle`: building
/// one loads the system roots, which is too slow to repeat per request.
#[derive(Debug)]
pub struct TokenClients {
    timeout: Duration,
    clients: Mutex<HashMap<Option<String>, TokenClient>>,
}

impl TokenClients {
    pub fn new(timeout: Duration) -> Self {
        TokenClients {
            timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for a CA bundle, built on first use.
    pub fn get(&self, ca_bundle: Option<&str>) -> Result<TokenClient, Error> {
        let key = ca_bundle.map(str::to_owned);
        let lock = || self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = lock().get(&key) {
            return Ok(client.clone());
        }
        // Built outside the lock: loading the system roots takes a while.
        let client = TokenClient::new(ca_bundle, self.timeout)?;
        Ok(lock().entry(key).or_insert(client).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn jwt(claims: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(r#"{"alg":"RS256"}"#),
            enc.encode(claims)
        )
    }

    #[test]
    fn expires_in_wins_over_jwt_exp() {
        let token = jwt(r#"{"exp": 1767232800}"#);
        let body = format!(r#"{{"accessToken":"{token}","expiresIn":600,"idToken":"x"}}"#);
        let issued = parse_token_response(body.as_bytes(), now()).unwrap();
        assert_eq!(
            issued.expires_at,
            Some("2026-01-01T00:10:00Z".parse().unwrap())
        );
    }

    #[test]
    fn v2_shape_and_string_lifetime() {
        let body = br#"{"access_token":"abc","token_type":"Bearer","expires_in":"3600"}"#;
        let issued = parse_token_response(body, now()).unwrap();
        assert_eq!(issued.access_token, "abc");
        assert_eq!(
            issued.expires_at,
            Some("2026-01-01T01:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn jwt_exp_when_no_lifetime() {
        let token = jwt(r#"{"exp": 1767232800, "sub": "x"}"#);
        let body = format!(r#"{{"accessToken":"{token}"}}"#);
        let issued = parse_token_response(body.as_bytes(), now()).unwrap();
        assert_eq!(
            issued.expires_at,
            Some(Timestamp::from_second(1767232800).unwrap())
        );
    }

    #[test]
    fn a_token_expired_on_arrival_is_refused() {
        let token = jwt(r#"{"exp": 1767225000}"#);
        let body = format!(r#"{{"accessToken":"{token}"}}"#);
        let err = parse_token_response(body.as_bytes(), now()).unwrap_err();
        assert!(err.to_string().contains("already expired"), "{err}");
    }

    #[test]
    fn opaque_token_has_unknown_expiry() {
        let issued = parse_token_response(br#"{"accessToken":"opaque"}"#, now()).unwrap();
        assert_eq!(issued.expires_at, None);
        assert_eq!(jwt_expiry("a.b"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }

    #[test]
    fn empty_and_malformed_answers() {
        assert!(matches!(
            parse_token_response(br#"{"accessToken":""}"#, now()),
            Err(Error::EmptyToken)
        ));
        assert!(matches!(
            parse_token_response(br#"{"other":1}"#, now()),
            Err(Error::EmptyToken)
        ));
        assert!(matches!(
            parse_token_response(b"<html>", now()),
            Err(Error::MalformedResponse(_))
        ));
        assert!(matches!(
            parse_token_response(br#"{"accessToken":"a b"}"#, now()),
            Err(Error::MalformedResponse(_))
        ));
        assert!(matches!(
            parse_token_response(br#"[1]"#, now()),
            Err(Error::MalformedResponse(_))
        ));
    }

    #[test]
    fn classification() {
        let c =
            |status, body: &str| classify_http_failure(status, None, body.as_bytes(), &["s3cr3t"]);
        assert!(matches!(c(401, ""), Error::InvalidCredentials { .. }));
        assert!(matches!(c(403, ""), Error::InvalidCredentials { .. }));
        assert!(matches!(
            c(
                400,
                r#"{"error":"invalid_client","error_description":"bad"}"#
            ),
            Error::InvalidCredentials { .. }
        ));
        assert!(matches!(
            c(400, r#"{"code":400,"message":"x"}"#),
            Error::RequestRejected { .. }
        ));
        assert!(matches!(c(404, ""), Error::RequestRejected { .. }));
        assert!(matches!(c(429, ""), Error::RateLimited { .. }));
        assert!(matches!(c(503, ""), Error::Unavailable { .. }));
        assert!(matches!(c(500, ""), Error::ServerError { .. }));
        assert!(matches!(c(302, ""), Error::RequestRejected { .. }));
        let echoed = c(401, r#"{"code":401,"message":"secret s3cr3t is wrong"}"#);
        let text = echoed.to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let base: url::Url = "https://acme.run.ai".parse().unwrap();
        assert_eq!(
            token_endpoint(&base, TokenApi::V1).as_str(),
            "https://acme.run.ai/api/v1/token"
        );
        assert_eq!(
            token_endpoint(&base, TokenApi::V2).as_str(),
            "https://acme.run.ai/api/v2/token"
        );
        let prefixed: url::Url = "https://host/runai".parse().unwrap();
        assert_eq!(
            token_endpoint(&prefixed, TokenApi::AppToken).as_str(),
            "https://host/runai/api/v1/token"
        );
    }

    #[test]
    fn ca_bundle_must_hold_a_certificate() {
        assert!(matches!(
            parse_ca_bundle("hello"),
            Err(Error::InvalidSpec { .. })
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let creds = ClientCredentials {
            client_id: "id".into(),
            client_secret: "s3cr3t".into(),
        };
        let token = IssuedToken {
            access_token: "tok3n".into(),
            expires_at: None,
        };
        assert!(!format!("{creds:?}").contains("s3cr3t"));
        assert!(!format!("{token:?}").contains("tok3n"));
    }
}
