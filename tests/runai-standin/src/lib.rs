//! A local stand-in for Run:ai's token endpoints, for tests and the demo.
//!
//! It serves the three generations of the token API over HTTPS, with a
//! certificate from a CA it generates at start:
//!
//! - `POST /api/v1/token`, JSON, `grantType` `client_credentials`
//!   (`clientId`/`clientSecret`) or `app_token` (`AppId`/`AppSecret`); answer
//!   `{"accessToken", "expiresIn"?}`, errors `{"code","message"}`.
//! - `POST /api/v2/token`, form-encoded OAuth2 client credentials; answer
//!   `{"access_token","token_type","expires_in"}`, errors
//!   `{"error","error_description"}`.
//!
//! Tokens are JWT-shaped (`RS256` header, the claims of a Keycloak
//! client-credentials token with `sub`, `iat` and `exp`, a random signature;
//! about 1.2 KB). Clients, their secrets and token lifetimes are set per
//! test; faults can be injected; requests are counted per client.
//!
//! It also serves `GET /api/v1/clusters`, one of Run:ai's cheap calls that
//! need a valid token (runai-token-api.md): 200 with a list of one cluster
//! for a bearer token it issued and that has not expired, 401 otherwise;
//! so a real client (Run:ai's SDK) can use what the controller wrote.
//!
//! Per client, it also plays the Run:ai generations and their neighbours
//! (see [`Client`]): a tenant that serves only V1 or only V2 (the other
//! endpoint removed as a 404 page in JSON or HTML, a 405 or a 410), V1
//! answers marked `Deprecation`/`Sunset` (RFC 9745, RFC 8594), Run:ai 2.18
//! and older (V1 takes only `app_token`), Keycloak's answers to bad
//! credentials (400, 401 or 403 with an RFC 6749 error), `token_type`
//! variants, JWT payloads in padded base64url, and a request rate above
//! which it answers 429 with `Retry-After`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// A client the stand-in accepts.
#[derive(Clone, Debug)]
pub struct Client {
    pub secret: String,
    /// Lifetime of the tokens issued to this client.
    pub lifetime: Duration,
    /// Whether V1 answers carry `expiresIn` (older Run:ai releases do not; the
    /// expiry is then only in the JWT's `exp`).
    pub send_expires_in: bool,
    /// Seconds the issuer's clock is ahead (positive) or behind (negative):
    /// the JWT's `iat` and `exp` are shifted by it.
    pub clock_skew_seconds: i64,
    /// Which token endpoints exist for this client.
    pub serves: Serves,
    /// V1 answers carry `Deprecation: @<this Unix time>` (RFC 9745) and,
    /// when given, `Sunset: <that time as an HTTP date>` (RFC 8594), as a
    /// Run:ai that deprecated `/api/v1/token` might.
    pub v1_deprecation: Option<(u64, Option<u64>)>,
    /// Whether V1 takes only the legacy `app_token` grant (Run:ai 2.18 and
    /// older): `client_credentials` is answered 400 `unsupported_grant_type`.
    pub v1_app_token_only: bool,
    /// The `token_type` of V2 answers (`Bearer`; Keycloak before Run:ai 2.15
    /// wrote `bearer`; `None` leaves it out).
    pub token_type: Option<String>,
    /// How a bad secret is answered: Run:ai's own answer (`None`: V1 401
    /// `{"code":401}`, V2 401 `invalid_client`), or Keycloak's with this
    /// status (400, 401 or 403) and an RFC 6749 body whose `error` is
    /// [`Client::rejected_error`].
    pub keycloak_status: Option<u16>,
    /// The RFC 6749 `error` of a Keycloak rejection: `invalid_client`,
    /// `unauthorized_client`, or `invalid_grant` (a disabled account).
    pub rejected_error: String,
    /// The JWT payload keeps its base64url padding (`=`), and is made a
    /// length that needs it.
    pub padded_payload: bool,
    /// At most this many token requests per second (a sliding window of
    /// one second) for this client; the ones above are answered 429 with
    /// `Retry-After: 1` and counted ([`StandIn::rate_limited`]).
    pub max_requests_per_second: Option<u32>,
    /// Other secrets also accepted for this client, as while a rotated
    /// secret's predecessor is still valid: credentials that hold
    /// different ones are different exchange groups of one application.
    pub other_secrets: Vec<String>,
}

impl Client {
    /// A client of today's Run:ai: both generations served, `expiresIn`
    /// sent, clocks in step, no limit.
    pub fn new(secret: &str, lifetime: Duration) -> Client {
        Client {
            secret: secret.to_owned(),
            lifetime,
            send_expires_in: true,
            clock_skew_seconds: 0,
            serves: Serves::Both,
            v1_deprecation: None,
            v1_app_token_only: false,
            token_type: Some("Bearer".to_owned()),
            keycloak_status: None,
            rejected_error: "invalid_client".to_owned(),
            padded_payload: false,
            max_requests_per_second: None,
            other_secrets: Vec::new(),
        }
    }
}

/// Which token endpoints a Run:ai tenant serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// Both (Run:ai 2.25 until V1 is removed).
    Both,
    /// Only `/api/v1/token` (Run:ai 2.24 and older); V2 answers as given.
    OnlyV1(Removed),
    /// Only `/api/v2/token` (after V1's removal); V1 answers as given.
    OnlyV2(Removed),
}

/// How a removed endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// 404 with Run:ai's JSON error body.
    NotFoundJson,
    /// 404 with an ingress's HTML page.
    NotFoundHtml,
    /// 405 Method Not Allowed.
    MethodNotAllowed,
    /// 410 Gone.
    Gone,
}

/// A failure to inject into every token answer until cleared.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this HTTP status (with `Retry-After` seconds, if given).
    Status { code: u16, retry_after: Option<u64> },
    /// Wait this long before answering normally.
    Delay(Duration),
    /// A 200 answer that is not JSON.
    Malformed,
    /// A 200 answer of 2 MiB.
    Oversized,
    /// A 200 answer with an empty token.
    EmptyToken,
    /// Exactly this answer: status, headers and body bytes.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The normal answer, gzip-compressed with `Content-Encoding: gzip` and
    /// preceded by a UTF-8 byte-order mark.
    GzipWithBom,
    /// Each request at random: with probability `unavailable` a 503, with
    /// probability `stall` an answer held back `stall_for` (longer than the
    /// client waits), else the normal answer.
    Flaky {
        unavailable: f64,
        stall: f64,
        stall_for: Duration,
    },
}

/// How a stand-in serves.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Serve the token API under this path (`/runai`), as a self-hosted
    /// Run:ai behind a reverse proxy; requests without it get 404.
    pub path_prefix: String,
    /// Sign the server certificate with an intermediate CA, and send only
    /// the server certificate: a client then needs root and intermediate in
    /// its trusted bundle, which [`StandIn::ca_pem`] gives (with CRLF line
    /// endings and text around the blocks, as pasted from elsewhere).
    pub intermediate_ca: bool,
}

#[derive(Default)]
struct State {
    path_prefix: String,
    clients: HashMap<String, Client>,
    fault: Option<Fault>,
    requests: HashMap<String, u64>,
    /// Per client: when its recent requests were answered, for the rate.
    recent: HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    rate_limited: HashMap<String, u64>,
    /// Per client and path: requests that reached a removed endpoint.
    not_served: HashMap<String, u64>,
    /// The tokens issued (a hash of each) and when each expires (Unix
    /// seconds, on the stand-in's clock).
    issued: HashMap<u64, u64>,
    /// API calls answered 200 and 401.
    api_calls: (u64, u64),
}

/// A running stand-in. Dropping it stops the server.
pub struct StandIn {
    addr: SocketAddr,
    ca_pem: String,
    server_pem: String,
    state: Arc<Mutex<State>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl StandIn {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<StandIn> {
        StandIn::start_on("127.0.0.1:0".parse().expect("a valid address")).await
    }

    /// Starts on a free port of 127.0.0.1 with `options`.
    pub async fn start_with(options: Options) -> std::io::Result<StandIn> {
        StandIn::start_on_with("127.0.0.1:0".parse().expect("a valid address"), options).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<StandIn> {
        StandIn::start_on_with(addr, Options::default()).await
    }

    /// Starts on `addr` with `options`.
    pub async fn start_on_with(addr: SocketAddr, options: Options) -> std::io::Result<StandIn> {
        let (ca_pem, server_pem, tls) = tls_config(options.intermediate_ca);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            path_prefix: options.path_prefix.trim_end_matches('/').to_owned(),
            ..State::default()
        }));
        let (shutdown, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let served = state.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => return,
                };
                let acceptor = acceptor.clone();
                let state = served.clone();
                tokio::spawn(async move {
                    // A client that fails the handshake (untrusted CA) just goes away.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(StandIn {
            addr,
            ca_pem,
            server_pem,
            state,
            _shutdown: shutdown,
        })
    }

    /// The base URL to put in `spec.url`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The PEM of the CA that signed the server certificate, for `spec.caBundle`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The PEM of the server's own certificate (not a CA): what a user
    /// might paste into `spec.caBundle` by mistake.
    pub fn server_cert_pem(&self) -> &str {
        &self.server_pem
    }

    /// Accepts (or re-keys: the old secret is revoked at once) a client.
    pub fn set_client(&self, id: &str, secret: &str, lifetime: Duration) {
        self.set_client_with(id, Client::new(secret, lifetime));
    }

    /// Accepts a client with every setting given.
    pub fn set_client_with(&self, id: &str, client: Client) {
        self.lock().clients.insert(id.to_owned(), client);
    }

    /// Revokes a client: its requests are refused from now on.
    pub fn remove_client(&self, id: &str) {
        self.lock().clients.remove(id);
    }

    /// Injects a fault into every answer, or clears it with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// Token requests received for a client ID, answered well or not.
    pub fn requests(&self, id: &str) -> u64 {
        self.lock().requests.get(id).copied().unwrap_or(0)
    }

    /// Requests of a client answered 429 because of
    /// [`Client::max_requests_per_second`].
    pub fn rate_limited(&self, id: &str) -> u64 {
        self.lock().rate_limited.get(id).copied().unwrap_or(0)
    }

    /// Requests of a client to an endpoint its tenant does not serve
    /// ([`Client::serves`]).
    pub fn not_served(&self, id: &str) -> u64 {
        self.lock().not_served.get(id).copied().unwrap_or(0)
    }

    /// Calls of `GET /api/v1/clusters`: (accepted, refused).
    pub fn api_calls(&self) -> (u64, u64) {
        self.lock().api_calls
    }

    /// Token requests received in all.
    pub fn total_requests(&self) -> u64 {
        self.lock().requests.values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which API generation a request is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Generation {
    V1,
    V2,
}

async fn answer(
    state: &Mutex<State>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let prefix = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .path_prefix
        .clone();
    let path = req.uri().path().strip_prefix(prefix.as_str()).unwrap_or("");
    let generation = match (req.method().as_str(), path) {
        ("POST", "/api/v1/token") => Generation::V1,
        ("POST", "/api/v2/token") => Generation::V2,
        ("GET", "/api/v1/clusters") => return clusters(state, &req),
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"code": 404, "message": "not found"}),
                None,
            );
        }
    };
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return bad_request(generation, "unreadable body"),
    };
    let Some((client_id, client_secret, grant)) = credentials_of(generation, &body) else {
        return bad_request(generation, "grant type or credentials missing");
    };

    let (client, fault) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        *state.requests.entry(client_id.clone()).or_default() += 1;
        (state.clients.get(&client_id).cloned(), state.fault.clone())
    };
    if let Some(client) = &client {
        if let Some(removed) = removed_for(client.serves, generation) {
            *lock(state).not_served.entry(client_id.clone()).or_default() += 1;
            return removed_response(removed);
        }
        if generation == Generation::V1 && client.v1_app_token_only && grant != "app_token" {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}),
                None,
            );
        }
        if let Some(max) = client.max_requests_per_second
            && !within_rate(&mut lock(state), &client_id, max)
        {
            return json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"code": 429, "message": "Too many requests"}),
                Some(1),
            );
        }
    }
    match fault {
        Some(Fault::Status { code, retry_after }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = match generation {
                Generation::V1 => {
                    json!({"code": code, "message": "Please try again in few minutes."})
                }
                Generation::V2 => {
                    json!({"error": "temporarily_unavailable", "error_description": "Please try again in few minutes."})
                }
            };
            return json_response(status, &body, retry_after);
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Malformed) => {
            return text_response(StatusCode::OK, "<html>maintenance</html>".to_owned());
        }
        Some(Fault::Oversized) => {
            return text_response(
                StatusCode::OK,
                format!(r#"{{"accessToken":"{}"}}"#, "a".repeat(2 << 20)),
            );
        }
        Some(Fault::EmptyToken) => {
            return json_response(
                StatusCode::OK,
                &json!({"accessToken": "", "access_token": ""}),
                None,
            );
        }
        Some(Fault::Raw {
            status,
            headers,
            body,
        }) => {
            let mut builder =
                Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
            for (name, value) in &headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            return builder
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response");
        }
        Some(Fault::Flaky {
            unavailable,
            stall,
            stall_for,
        }) => {
            let roll: f64 = rand::random();
            if roll < unavailable {
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"code": 503, "message": "Please try again in few minutes."}),
                    None,
                );
            }
            if roll < unavailable + stall {
                tokio::time::sleep(stall_for).await;
            }
        }
        Some(Fault::GzipWithBom) | None => {}
    }

    let Some(client) =
        client.filter(|c| c.secret == client_secret || c.other_secrets.contains(&client_secret))
    else {
        if let Some(status) = client_keycloak(state, &client_id) {
            return status;
        }
        return match generation {
            Generation::V1 => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"code": 401, "message": "Issuer is not familiar."}),
                None,
            ),
            Generation::V2 => json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_client", "error_description": "Invalid client credentials"}),
                None,
            ),
        };
    };
    let token = jwt(&client_id, &client);
    let lifetime = client.lifetime.as_secs();
    let expires = unix_now().saturating_add(lifetime);
    {
        let mut state = lock(state);
        if state.issued.len() >= 100_000 {
            let now = unix_now();
            state.issued.retain(|_, expires| *expires > now);
        }
        state.issued.insert(token_hash(&token), expires);
    }
    let body = match generation {
        Generation::V1 if client.send_expires_in => {
            json!({"accessToken": token, "expiresIn": lifetime, "idToken": "", "refreshToken": ""})
        }
        Generation::V1 => json!({"accessToken": token}),
        Generation::V2 => {
            let mut body =
                json!({"access_token": token, "expires_in": lifetime, "scope": "openid"});
            if let Some(kind) = &client.token_type {
                body["token_type"] = json!(kind);
            }
            body
        }
    };
    if fault == Some(Fault::GzipWithBom) {
        return gzip_response(&body);
    }
    let mut response = json_response(StatusCode::OK, &body, None);
    if let (Generation::V1, Some((deprecated, sunset))) = (generation, client.v1_deprecation) {
        let headers = response.headers_mut();
        let value = |text: String| text.parse().expect("a valid header value");
        headers.insert("deprecation", value(format!("@{deprecated}")));
        if let Some(sunset) = sunset {
            let at = UNIX_EPOCH + Duration::from_secs(sunset);
            headers.insert("sunset", value(httpdate::fmt_http_date(at)));
        }
    }
    response
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn token_hash(token: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut hasher);
    hasher.finish()
}

/// `GET /api/v1/clusters`: one cluster for a token this stand-in issued
/// that has not expired, else 401 as Run:ai answers it.
fn clusters<B>(state: &Mutex<State>, req: &Request<B>) -> Response<Full<Bytes>> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let mut state = lock(state);
    let valid = token
        .and_then(|t| state.issued.get(&token_hash(t)).copied())
        .is_some_and(|expires| expires > unix_now());
    if !valid {
        state.api_calls.1 += 1;
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"code": 401, "message": "Issuer is not familiar."}),
            None,
        );
    }
    state.api_calls.0 += 1;
    json_response(
        StatusCode::OK,
        &json!([{
            "uuid": "9d7c4b6e-0d3a-4c43-9b1e-3f2a1c5e7b10",
            "name": "stand-in-cluster",
            "status": {"connectivity": "Connected"},
        }]),
        None,
    )
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// How `generation` answers for a tenant that serves `serves`, when it is
/// not served.
fn removed_for(serves: Serves, generation: Generation) -> Option<Removed> {
    match (serves, generation) {
        (Serves::OnlyV1(removed), Generation::V2) | (Serves::OnlyV2(removed), Generation::V1) => {
            Some(removed)
        }
        _ => None,
    }
}

fn removed_response(removed: Removed) -> Response<Full<Bytes>> {
    match removed {
        Removed::NotFoundJson => json_response(
            StatusCode::NOT_FOUND,
            &json!({"code": 404, "message": "Not Found"}),
            None,
        ),
        Removed::NotFoundHtml => text_response(
            StatusCode::NOT_FOUND,
            "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n".to_owned(),
        ),
        Removed::MethodNotAllowed => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": 405, "message": "Method Not Allowed"}),
            None,
        ),
        Removed::Gone => json_response(
            StatusCode::GONE,
            &json!({"code": 410, "message": "This API was removed; use /api/v2/token"}),
            None,
        ),
    }
}

/// Whether one more request of `client_id` fits `max` per second (a
/// sliding window); counts it if so, and the refusal if not.
fn within_rate(state: &mut State, client_id: &str, max: u32) -> bool {
    let now = std::time::Instant::now();
    let recent = state.recent.entry(client_id.to_owned()).or_default();
    while recent
        .front()
        .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(1))
    {
        recent.pop_front();
    }
    if recent.len() >= max as usize {
        *state.rate_limited.entry(client_id.to_owned()).or_default() += 1;
        return false;
    }
    recent.push_back(now);
    true
}

/// Keycloak's answer to bad credentials of a client set up to answer as
/// Keycloak does; `None` for Run:ai's own answer.
fn client_keycloak(state: &Mutex<State>, client_id: &str) -> Option<Response<Full<Bytes>>> {
    let client = lock(state).clients.get(client_id).cloned()?;
    let status = StatusCode::from_u16(client.keycloak_status?).ok()?;
    Some(json_response(
        status,
        &json!({"error": client.rejected_error, "error_description": "Invalid client or Invalid client credentials"}),
        None,
    ))
}

/// A JSON answer after a byte-order mark, gzip-compressed.
fn gzip_response(body: &Value) -> Response<Full<Bytes>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let written = encoder
        .write_all(b"\xEF\xBB\xBF")
        .and_then(|()| encoder.write_all(body.to_string().as_bytes()));
    let compressed = written
        .and_then(|()| encoder.finish())
        .expect("compressing in memory");
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(compressed)))
        .expect("a valid response")
}

/// Client ID, secret and grant type from a request body of either
/// generation; `None` when the grant is not one the stand-in knows.
fn credentials_of(generation: Generation, body: &[u8]) -> Option<(String, String, &'static str)> {
    match generation {
        Generation::V1 => {
            let value: Value = serde_json::from_slice(body).ok()?;
            let text = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| value.get(*k)?.as_str().map(str::to_owned))
            };
            match value.get("grantType")?.as_str()? {
                // The docs write clientId, the OpenAPI spec clientID.
                "client_credentials" => Some((
                    text(&["clientId", "clientID"])?,
                    text(&["clientSecret"])?,
                    "client_credentials",
                )),
                "app_token" => Some((
                    text(&["AppId", "appID"])?,
                    text(&["AppSecret", "appSecret"])?,
                    "app_token",
                )),
                _ => None,
            }
        }
        Generation::V2 => {
            let fields: HashMap<String, String> =
                url::form_urlencoded::parse(body).into_owned().collect();
            if fields.get("grant_type").map(String::as_str) != Some("client_credentials") {
                return None;
            }
            Some((
                fields.get("client_id")?.clone(),
                fields.get("client_secret")?.clone(),
                "client_credentials",
            ))
        }
    }
}

fn bad_request(generation: Generation, message: &str) -> Response<Full<Bytes>> {
    let body = match generation {
        Generation::V1 => json!({"code": 400, "message": message}),
        Generation::V2 => json!({"error": "invalid_request", "error_description": message}),
    };
    json_response(StatusCode::BAD_REQUEST, &body, None)
}

fn json_response(
    status: StatusCode,
    body: &Value,
    retry_after: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(secs) = retry_after {
        builder = builder.header("retry-after", secs.to_string());
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// A JWT-shaped token: real header and claims, a random signature of an
/// RS256 signature's length (256 bytes, RFC 7518 section 3.3, with a 2048-bit
/// key), so that tokens are as long as the real ones (Run:ai's are RS256);
/// `iat` and `exp` as an issuer whose clock is the client's skew off would
/// set them; the payload padded when the client asks for it.
fn jwt(subject: &str, client: &Client) -> String {
    let (lifetime, skew) = (client.lifetime, client.clock_skew_seconds);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_add_signed(skew);
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = enc.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
    // The claims of a Keycloak client-credentials token, which Run:ai's
    // are: a token is about 1.2 KB, as long as a real one.
    let mut claims = json!({
        "exp": now + lifetime.as_secs(),
        "iat": now,
        "jti": format!("{:032x}", rand::random::<u128>()),
        "iss": "https://stand-in.local/auth/realms/runai",
        "aud": ["runai", "account"],
        "sub": subject,
        "typ": "Bearer",
        "azp": subject,
        "session_state": format!("{:032x}", rand::random::<u128>()),
        "acr": "1",
        "realm_access": {"roles": ["offline_access", "uma_authorization", "default-roles-runai"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid email profile",
        "clientId": subject,
        "email_verified": false,
        "clientHost": "10.0.0.1",
        "preferred_username": format!("service-account-{subject}"),
        "email": format!("{subject}@stand-in.local"),
        "tenant_id": 1001,
        "clientAddress": "10.0.0.1",
    });
    let claims = if client.padded_payload {
        // A length that is no multiple of 3 needs padding in base64.
        let mut pad = String::new();
        while {
            claims["pad"] = json!(pad);
            claims.to_string().len().is_multiple_of(3)
        } {
            pad.push('x');
        }
        base64::engine::general_purpose::URL_SAFE.encode(claims.to_string())
    } else {
        enc.encode(claims.to_string())
    };
    let signature = enc.encode((0..256).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    format!("{header}.{claims}.{signature}")
}

/// A fresh CA and a server certificate for 127.0.0.1 and localhost; with
/// `intermediate`, signed through an intermediate CA, and the PEM to trust
/// holds both CAs the way users paste them (CRLF, text around the blocks).
fn tls_config(intermediate: bool) -> (String, String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let ca_params = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("valid CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
    };
    let root = CertifiedIssuer::self_signed(
        ca_params("runai-standin CA"),
        KeyPair::generate().expect("a key"),
    )
    .expect("a self-signed CA");
    let key = KeyPair::generate().expect("a key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("valid server parameters");
    let (cert, ca_pem) = if intermediate {
        let middle = CertifiedIssuer::signed_by(
            ca_params("runai-standin intermediate CA"),
            KeyPair::generate().expect("a key"),
            &root,
        )
        .expect("an intermediate CA");
        let cert = server
            .signed_by(&key, &middle)
            .expect("a signed server certificate");
        // Root first: a client that used only the first certificate would
        // fail, since the server does not send the intermediate.
        let pasted = format!(
            "Root CA:\n{}\n\n\nIssuing CA (intermediate):\n{}\n-- end of chain --\n",
            root.pem(),
            middle.pem()
        )
        .replace('\n', "\r\n");
        (cert, pasted)
    } else {
        let cert = server
            .signed_by(&key, &root)
            .expect("a signed server certificate");
        (cert, root.pem())
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("a PKCS#8 key"),
        )
        .expect("a valid certificate and key");
    (ca_pem, cert.pem(), config)
}
