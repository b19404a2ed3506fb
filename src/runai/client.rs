//! The Run:ai token client: one request per token, three API generations.
//!
//! The HTTP part is thin; reading the answer ([`parse_token_response`]) and
//! classifying failures ([`classify_http_failure`]) are pure functions.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use rustls::{
    DigitallySignedStruct,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde_json::Value;

use crate::{
    api::TokenApi,
    error::{Error, sanitize_detail},
};

/// Largest answer body that is read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Default timeout of one token request, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub use crate::error::MAX_RETRY_AFTER;

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
    /// The generation that answered (`V1`, `V2` or `AppToken`; never
    /// `Auto`); `None` for an answer read without a request.
    pub token_api: Option<TokenApi>,
    /// The endpoint's notice that it is deprecated, if its answer gave one.
    pub deprecation: Option<Deprecation>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("token_api", &self.token_api)
            .field("deprecation", &self.deprecation)
            .finish()
    }
}

/// A token endpoint's notice that it is deprecated: a `Deprecation` header
/// (RFC 9745), with the `Sunset` header (RFC 8594) when given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Deprecation {
    /// The endpoint that answered with it (`{url}/api/v1/token`).
    pub endpoint: String,
    /// When it stops being served, when the answer said so.
    pub sunset: Option<Timestamp>,
}

/// Reads the `Deprecation` (RFC 9745: `@<Unix seconds>`; earlier drafts:
/// `true` or an HTTP date) and `Sunset` (RFC 8594: an HTTP date) headers
/// of an answer from `endpoint`. `None` without a `Deprecation` header or
/// with `Deprecation: false`; a `Sunset` that cannot be read is left out.
pub fn deprecation_of(
    deprecation: Option<&str>,
    sunset: Option<&str>,
    endpoint: &url::Url,
) -> Option<Deprecation> {
    let deprecation = deprecation?.trim();
    if deprecation.is_empty() || deprecation.eq_ignore_ascii_case("false") {
        return None;
    }
    let sunset = sunset
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .and_then(|at| Timestamp::try_from(at).ok());
    Some(Deprecation {
        endpoint: endpoint.to_string(),
        sunset,
    })
}

/// The generations to call, in order, for `api` when `remembered` answered
/// last (api.md, "Choosing the token API"): `Auto` tries V2 first (V1
/// first when V1 answered last) and the other when the first is not
/// served; another `api` is called alone.
pub fn generations(api: TokenApi, remembered: Option<TokenApi>) -> &'static [TokenApi] {
    match (api, remembered) {
        (TokenApi::Auto, Some(TokenApi::V1)) => &[TokenApi::V1, TokenApi::V2],
        (TokenApi::Auto, _) => &[TokenApi::V2, TokenApi::V1],
        (TokenApi::V1, _) => &[TokenApi::V1],
        (TokenApi::V2, _) => &[TokenApi::V2],
        (TokenApi::AppToken, _) => &[TokenApi::AppToken],
    }
}

/// Whether `Auto` goes on to the next generation after `err` from
/// `generation`: only when that endpoint is not served (or, for V2, does
/// not take the client-credentials grant). Refused credentials never
/// qualify: the secret is not sent to a second endpoint after it was
/// refused.
pub fn falls_back(err: &Error, generation: TokenApi) -> bool {
    match err {
        Error::TokenApiNotServed { .. } => true,
        Error::GrantNotSupported { .. } => generation == TokenApi::V2,
        _ => false,
    }
}

/// An HTTP client for one set of trusted CAs.
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    /// The same client without a connection pool, for the one retry after
    /// a pooled connection was found closed: another pooled one may be too.
    unpooled: reqwest::Client,
    timeout: Duration,
}

impl TokenClient {
    /// Builds a client that trusts the system roots plus `ca_bundle`, with a
    /// timeout on every request. `HTTPS_PROXY`/`NO_PROXY` are honoured.
    pub fn new(ca_bundle: Option<&str>, timeout: Duration) -> Result<Self, Error> {
        let certs = ca_bundle
            .map(parse_ca_bundle_der)
            .transpose()?
            .unwrap_or_default();
        // One TLS configuration for both clients: its verifier (and with it
        // the system roots, loaded once per process) is shared, not copied.
        let tls = tls_config(&certs).map_err(|message| match ca_bundle {
            Some(_) => Error::InvalidSpec {
                field: "spec.caBundle",
                message: format!("cannot be used as trusted CAs: {message}"),
            },
            None => Error::Startup(format!("cannot build an HTTP client: {message}")),
        })?;
        let build = |pooled: bool| {
            let mut builder = reqwest::Client::builder()
                .use_preconfigured_tls(tls.clone())
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                // A redirect would re-send the client secret elsewhere: never follow.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("runai-token-sync/", env!("CARGO_PKG_VERSION")));
            if !pooled {
                builder = builder.pool_max_idle_per_host(0);
            }
            builder.build().map_err(|e| match ca_bundle {
                Some(_) => Error::InvalidSpec {
                    field: "spec.caBundle",
                    message: format!("cannot be used as trusted CAs: {e}"),
                },
                None => Error::Startup(format!("cannot build an HTTP client: {e}")),
            })
        };
        let (http, unpooled) = (build(true)?, build(false)?);
        Ok(TokenClient {
            http,
            unpooled,
            timeout,
        })
    }

    /// Requests one token with `api`, as [`TokenClient::request_token_after`]
    /// with nothing remembered.
    ///
    /// # Errors
    ///
    /// As [`TokenClient::request_token_after`].
    pub async fn request_token(
        &self,
        base_url: &url::Url,
        api: TokenApi,
        credentials: &ClientCredentials,
        now: Timestamp,
    ) -> Result<IssuedToken, Error> {
        self.request_token_after(base_url, api, None, credentials, now)
            .await
    }

    /// Requests one token from `{base_url}/api/v1/token` or `/api/v2/token`
    /// (a path prefix in `base_url` is kept), in the order [`generations`]
    /// gives for `api` after `remembered`, going on only where
    /// [`falls_back`] says so. `now` is when the request is made; the
    /// answer's lifetime is counted from when it arrives. A pooled
    /// connection that the endpoint closed before answering is retried once
    /// on a new one; redirects are never followed.
    ///
    /// # Errors
    ///
    /// Every failure is one of the token-endpoint variants of [`Error`]
    /// (see [`classify_http_failure`] and [`parse_token_response`]); under
    /// `Auto`, [`Error::TokenApiNotServed`] naming `Auto` when no
    /// generation is served.
    pub async fn request_token_after(
        &self,
        base_url: &url::Url,
        api: TokenApi,
        remembered: Option<TokenApi>,
        credentials: &ClientCredentials,
        now: Timestamp,
    ) -> Result<IssuedToken, Error> {
        // V1's refusal, when Auto got to it: V2 refused too, so the
        // message is V1's status with "V2 is not served either".
        let mut v1_refusal = None;
        for &generation in generations(api, remembered) {
            match self
                .request_generation(base_url, generation, credentials, now)
                .await
            {
                Err(err) if api == TokenApi::Auto && falls_back(&err, generation) => {
                    tracing::info!(token_api = generation.as_str(), error = %err, "this token API is not served here; trying the other");
                    if generation == TokenApi::V1 {
                        v1_refusal = Some(err);
                    }
                }
                Err(err) => return Err(for_spec(err, api)),
                Ok(issued) => return Ok(issued),
            }
        }
        Err(match v1_refusal {
            Some(Error::TokenApiNotServed {
                status, endpoint, ..
            }) => Error::TokenApiNotServed {
                status,
                endpoint,
                asked: TokenApi::Auto.as_str(),
            },
            Some(other) => other,
            None => Error::Startup("no token API generation answered".to_owned()),
        })
    }

    /// One request to one generation's endpoint.
    async fn request_generation(
        &self,
        base_url: &url::Url,
        api: TokenApi,
        credentials: &ClientCredentials,
        now: Timestamp,
    ) -> Result<IssuedToken, Error> {
        let endpoint = token_endpoint(base_url, api);
        let shown_url = endpoint.as_str().to_owned();
        let request = |http: &reqwest::Client| {
            let request = match api {
                TokenApi::V1 | TokenApi::Auto => {
                    http.post(endpoint.clone()).json(&serde_json::json!({
                        "grantType": "client_credentials",
                        "clientId": credentials.client_id,
                        "clientSecret": credentials.client_secret,
                    }))
                }
                TokenApi::AppToken => http.post(endpoint.clone()).json(&serde_json::json!({
                    "grantType": "app_token",
                    "AppId": credentials.client_id,
                    "AppSecret": credentials.client_secret,
                })),
                TokenApi::V2 => http.post(endpoint.clone()).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", credentials.client_id.as_str()),
                    ("client_secret", credentials.client_secret.as_str()),
                ]),
            };
            request.header(reqwest::header::ACCEPT, "application/json")
        };

        let started = std::time::Instant::now();
        let response = match request(&self.http).send().await {
            Err(e) if closed_before_answer(&e) => {
                tracing::debug!(url = %shown_url, "the pooled connection was closed before an answer; retrying once on a new connection");
                request(&self.unpooled).send().await
            }
            other => other,
        }
        .map_err(|e| self.transport_error(&shown_url, &e))?;
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header(reqwest::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(&v, std::time::SystemTime::now()));
        let location = header(reqwest::header::LOCATION);
        let deprecation = deprecation_of(
            header(reqwest::header::HeaderName::from_static("deprecation")).as_deref(),
            header(reqwest::header::HeaderName::from_static("sunset")).as_deref(),
            &endpoint,
        );
        let body = self.read_capped(&shown_url, response).await?;
        // Also "id:secret", which an endpoint may echo as HTTP Basic credentials.
        let basic = format!("{}:{}", credentials.client_id, credentials.client_secret);
        let secrets = [credentials.client_secret.as_str(), basic.as_str()];
        let asked = |err| for_spec(err, api);
        if !status.is_success() {
            return Err(asked(classify_http_failure(
                status.as_u16(),
                retry_after,
                location.as_deref(),
                &endpoint,
                &body,
                &secrets,
            )));
        }
        // Lifetimes count from the answer's arrival, on the caller's clock.
        let arrived = now
            .checked_add(SignedDuration::try_from(started.elapsed()).unwrap_or_default())
            .unwrap_or(now);
        let issued = parse_token_response_masking(&body, arrived, &secrets)
            .map_err(|err| match err {
                Error::GrantNotSupported { asked, .. } => Error::GrantNotSupported {
                    endpoint: endpoint.to_string(),
                    asked,
                },
                other => other,
            })
            .map_err(asked)?;
        Ok(IssuedToken {
            token_api: Some(api),
            deprecation,
            ..issued
        })
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

/// An error of a request made for `spec.tokenApi: api`, with the advice
/// its message gives naming that setting.
fn for_spec(err: Error, api: TokenApi) -> Error {
    match err {
        Error::TokenApiNotServed {
            status, endpoint, ..
        } => Error::TokenApiNotServed {
            status,
            endpoint,
            asked: api.as_str(),
        },
        Error::GrantNotSupported { endpoint, .. } => Error::GrantNotSupported {
            endpoint,
            asked: api.as_str(),
        },
        other => other,
    }
}

/// The endpoint of a token API generation under a base URL (`Auto`: V2's,
/// the one it calls first).
pub fn token_endpoint(base_url: &url::Url, api: TokenApi) -> url::Url {
    let path = match api {
        TokenApi::V1 | TokenApi::AppToken => "api/v1/token",
        TokenApi::V2 | TokenApi::Auto => "api/v2/token",
    };
    let mut base = base_url.clone();
    // A base URL with a path prefix (self-hosted behind a proxy) keeps it.
    if !base.path().ends_with('/') {
        let with_slash = format!("{}/", base.path());
        base.set_path(&with_slash);
    }
    base.join(path).expect("a fixed relative path always joins")
}

/// Parses a `caBundle`: every `CERTIFICATE` PEM block in it, whatever the
/// line endings (CRLF), indentation, blank lines or text around the blocks,
/// each checked to be a usable X.509 trust anchor.
///
/// # Errors
///
/// [`Error::InvalidSpec`] on `spec.caBundle` when it holds no certificate (a
/// private key, base64 of a PEM, garbage) or a block that is not a valid
/// certificate.
pub fn parse_ca_bundle(pem: &str) -> Result<Vec<reqwest::Certificate>, Error> {
    parse_ca_bundle_der(pem)?
        .iter()
        .enumerate()
        .map(|(index, der)| {
            reqwest::Certificate::from_der(der).map_err(|e| Error::InvalidSpec {
                field: "spec.caBundle",
                message: format!("certificate {} cannot be used: {e}", index + 1),
            })
        })
        .collect()
}

/// The verifier of the system's trusted CAs (rustls-native-certs: the
/// platform's store, or `SSL_CERT_FILE`/`SSL_CERT_DIR`), loaded once per
/// process and shared by every HTTP client; `None` when the system has none
/// (then only a `caBundle` is trusted).
fn system_verifier() -> Option<Arc<WebPkiServerVerifier>> {
    static SYSTEM: OnceLock<Option<Arc<WebPkiServerVerifier>>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                .build()
                .ok()
        })
        .clone()
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trusts a server whose certificate chains to a `caBundle` or to the
/// system's CAs, with the roots of each kept once: a bundle's own
/// certificates are its only copy, the system's are shared by all.
#[derive(Debug)]
struct TrustedRoots {
    bundle: Option<Arc<WebPkiServerVerifier>>,
    system: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The bundle's certificates that are no CA (a server's own), to name
    /// them when a server presents one; empty for most bundles.
    leaves: Vec<LeafInBundle>,
}

/// A certificate of a `caBundle` that is not a CA: a server's own
/// certificate pasted where its issuer belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInBundle {
    /// The DER of its subject, to match the certificate a server presents.
    subject_der: Vec<u8>,
    /// Its subject and issuer, as RFC 4514 strings.
    subject: String,
    issuer: String,
}

impl LeafInBundle {
    /// The refusal of a server that presents this certificate: it says
    /// what the bundle holds and which certificate belongs there instead.
    fn refusal(&self) -> rustls::Error {
        rustls::Error::General(format!(
            "spec.caBundle holds the server's own certificate (subject {}, issued by {}), not a CA: put the certificate of its issuer, {}, in spec.caBundle instead",
            self.subject, self.issuer, self.issuer
        ))
    }
}

/// The certificates of `bundle` (DER) that are not CAs (no
/// basicConstraints `cA`, RFC 5280 §4.2.1.9) and not self-issued: a
/// self-signed server certificate can be its own trust anchor, one issued
/// by another cannot.
pub fn leaves_in_bundle(bundle: &[Vec<u8>]) -> Vec<LeafInBundle> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    bundle
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, cert)| cert))
        .filter(|cert| !cert.is_ca() && cert.subject().as_raw() != cert.issuer().as_raw())
        .map(|cert| LeafInBundle {
            subject_der: cert.subject().as_raw().to_vec(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
        })
        .collect()
}

/// The subject (DER) of a certificate, if it can be read.
fn subject_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    X509Certificate::from_der(cert)
        .ok()
        .map(|(_, cert)| cert.subject().as_raw().to_vec())
}

impl ServerCertVerifier for TrustedRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |v: &Arc<WebPkiServerVerifier>| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        };
        let unknown = || {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        };
        let presented_leaf = || {
            let subject = subject_of(end_entity)?;
            self.leaves.iter().find(|leaf| leaf.subject_der == subject)
        };
        let (bundle, system) = (
            self.bundle.as_ref().map(verify),
            self.system.as_ref().map(verify),
        );
        let unknown_to_bundle = matches!(
            bundle,
            Some(Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )))
        );
        // The bundle holds the very certificate the server presents, where
        // its issuer belongs: say so, not "unknown issuer".
        if unknown_to_bundle
            && !matches!(system, Some(Ok(_)))
            && let Some(leaf) = presented_leaf()
        {
            return Err(leaf.refusal());
        }
        match (bundle, system) {
            (Some(Ok(v)), _) | (_, Some(Ok(v))) => Ok(v),
            // The more telling of two refusals: an expired or misnamed
            // certificate of the bundle's CA says more than "unknown issuer".
            (
                Some(Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ))),
                Some(Err(system)),
            ) => Err(system),
            (Some(Err(bundle)), _) => Err(bundle),
            (None, Some(Err(system))) => Err(system),
            (None, None) => unknown(),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The TLS configuration of a token client that trusts the system's CAs and
/// the certificates `bundle` (DER), offering HTTP/2 and HTTP/1.1 (ALPN), as
/// reqwest's own configuration does.
///
/// # Errors
///
/// The reason, when the bundle's certificates cannot be used as roots.
fn tls_config(bundle: &[Vec<u8>]) -> Result<rustls::ClientConfig, String> {
    let provider = crypto_provider();
    let bundle_verifier = if bundle.is_empty() {
        None
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for der in bundle {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| e.to_string())?;
        }
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        )
    };
    let verifier = TrustedRoots {
        bundle: bundle_verifier,
        system: system_verifier(),
        provider: provider.clone(),
        leaves: leaves_in_bundle(bundle),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The DER encodings of the certificates of a `caBundle`; see [`parse_ca_bundle`].
///
/// # Errors
///
/// As [`parse_ca_bundle`].
pub fn parse_ca_bundle_der(pem: &str) -> Result<Vec<Vec<u8>>, Error> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let invalid = |message: String| Error::InvalidSpec {
        field: "spec.caBundle",
        message,
    };
    // Indented or CRLF-terminated lines, as pasted from elsewhere.
    let normalized: String = pem.lines().map(|l| format!("{}\n", l.trim())).collect();
    let mut certs = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(normalized.as_bytes()).enumerate() {
        let der =
            item.map_err(|e| invalid(format!("certificate {} is not valid PEM: {e}", index + 1)))?;
        // The same check the TLS client makes later, so that a bad block is
        // reported here, on the field, and not as a failed client build.
        rustls::RootCertStore::empty()
            .add(der.clone())
            .map_err(|e| {
                invalid(format!(
                    "certificate {} cannot be trusted as a CA: {e}",
                    index + 1
                ))
            })?;
        certs.push(der.to_vec());
    }
    if certs.is_empty() {
        return Err(invalid(
            "holds no PEM certificate (expected one or more -----BEGIN CERTIFICATE----- blocks; a private key or base64 of a PEM file is not one)".to_owned(),
        ));
    }
    Ok(certs)
}

/// A UTF-8 byte-order mark, which some endpoints put before their JSON.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads a successful (2xx) answer of any API generation, as it arrived at
/// `now`. Unknown fields are ignored; `accessToken` and `access_token` are both
/// accepted; a byte-order mark and surrounding whitespace are skipped.
///
/// The expiry is the earlier of the answer's lifetime (`expiresIn` /
/// `expires_in`, see [`lifetime_seconds`]) and the JWT's (see [`jwt_expiry`]),
/// or unknown when neither is given.
///
/// # Errors
///
/// A 200 answer without a usable token is a failed refresh:
/// [`Error::InvalidCredentials`] when it carries an error object that says
/// so (`code` 401/403, `error` `invalid_client`/`unauthorized_client`),
/// [`Error::NoToken`] for another error object or a missing, `null` or empty
/// token, [`Error::MalformedResponse`] for a body that is not a JSON object
/// (an HTML page), a token that cannot be sent in an HTTP header, or a token
/// already expired on arrival.
pub fn parse_token_response(body: &[u8], now: Timestamp) -> Result<IssuedToken, Error> {
    parse_token_response_masking(body, now, &[])
}

/// [`parse_token_response`], masking `secrets` in any text it repeats.
fn parse_token_response_masking(
    body: &[u8],
    now: Timestamp,
    secrets: &[&str],
) -> Result<IssuedToken, Error> {
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let looks_like_html = body.trim_ascii_start().starts_with(b"<");
        Error::MalformedResponse(if looks_like_html {
            "an HTML or XML page instead of JSON (a login page or a proxy's error page in front of Run:ai?)".to_owned()
        } else {
            format!(
                "not JSON ({}), at line {} column {}",
                e.classify_name(),
                e.line(),
                e.column()
            )
        })
    })?;
    let Value::Object(fields) = value else {
        return Err(Error::MalformedResponse(
            "expected a JSON object".to_owned(),
        ));
    };
    // V1 names it accessToken, V2 access_token; a null or empty one under
    // one name does not hide a usable one under the other.
    let candidates = ["accessToken", "access_token"].map(|name| fields.get(name));
    let usable = candidates.iter().flatten().find_map(|value| match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    });
    let token = match usable {
        Some(token) => token,
        None if candidates
            .iter()
            .flatten()
            .any(|v| !matches!(v, Value::Null | Value::String(_))) =>
        {
            return Err(Error::MalformedResponse(
                "the access token is not a string".to_owned(),
            ));
        }
        None => return Err(error_in_success(&fields, secrets)),
    };
    // Sent as `Authorization: Bearer`: a token of another type (RFC 6749
    // §7.1, compared without regard to case) would be refused there.
    if let Some(kind) = ["token_type", "tokenType"]
        .iter()
        .find_map(|name| fields.get(*name).and_then(Value::as_str))
        .filter(|kind| !kind.trim().eq_ignore_ascii_case("bearer"))
    {
        let kind: String = kind
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(40)
            .collect();
        return Err(Error::MalformedResponse(format!(
            "the token type is {kind:?}, not Bearer: it cannot be sent as a bearer token"
        )));
    }
    // The token ends up in an HTTP header; anything else would be unusable.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::MalformedResponse(
            "the access token holds characters that cannot be sent in an HTTP header".to_owned(),
        ));
    }
    let by_lifetime = ["expiresIn", "expires_in"]
        .iter()
        .find_map(|name| fields.get(*name).and_then(lifetime_seconds))
        .and_then(|secs| now.checked_add(SignedDuration::from_secs(secs)).ok());
    let expires_at = match (by_lifetime, jwt_expiry(&token, now)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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
        token_api: None,
        deprecation: None,
    })
}

/// What an error body says, whatever the HTTP status it came with (api.md,
/// "Choosing the token API"): an RFC 6749 §5.2 `error`, or Run:ai's own
/// numeric `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodySays {
    /// `invalid_client`, `unauthorized_client` or `invalid_grant` (Keycloak
    /// answers bad client credentials so, in 400, 401 or 403), or Run:ai's
    /// `code` 401/403.
    Rejected,
    /// `unsupported_grant_type`: another generation's grant is expected.
    UnsupportedGrant,
    Nothing,
}

fn body_says(code: Option<&str>, numeric_code: Option<i64>) -> BodySays {
    match (code, numeric_code) {
        (Some("invalid_client" | "unauthorized_client" | "invalid_grant"), _)
        | (_, Some(401 | 403)) => BodySays::Rejected,
        (Some("unsupported_grant_type"), _) => BodySays::UnsupportedGrant,
        _ => BodySays::Nothing,
    }
}

/// What a 2xx answer without a token says instead, read as a failed answer
/// is ([`body_says`]); an unsupported grant names no endpoint yet (the
/// request fills it in).
fn error_in_success(fields: &serde_json::Map<String, Value>, secrets: &[&str]) -> Error {
    let (code, text) = error_fields(fields);
    let numeric_code = fields.get("code").and_then(lifetime_seconds);
    let detail = sanitize_detail(&text, secrets);
    match body_says(code.as_deref(), numeric_code) {
        BodySays::Rejected => Error::InvalidCredentials {
            status: 200,
            detail,
        },
        BodySays::UnsupportedGrant => Error::GrantNotSupported {
            endpoint: String::new(),
            asked: "V1",
        },
        BodySays::Nothing => Error::NoToken { detail },
    }
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

/// A token lifetime in seconds, as `expiresIn`/`expires_in` may send it: a
/// JSON integer, a numeric string (`"3600"`) or a whole-number float
/// (`3600.0`). Anything else (null, `true`, `"1h"`, a fraction, zero, a
/// negative number) is `None`, as if absent.
pub fn lifetime_seconds(value: &Value) -> Option<i64> {
    let secs = match value {
        Value::Number(n) => n.as_i64().or_else(|| whole(n.as_f64()?))?,
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| whole(s.parse::<f64>().ok()?))?
        }
        _ => return None,
    };
    (secs > 0).then_some(secs)
}

/// A float that is a whole number within `i64`, as one.
fn whole(f: f64) -> Option<i64> {
    // Beyond 2^53 a float has no fraction left to check; such lifetimes are
    // nonsense anyway and are capped by the 24-hour refresh bound.
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// A JWT time claim (`exp`, `iat`: seconds since the epoch): a number, whose
/// fraction is truncated (RFC 7519 NumericDate may have one). Non-numeric or
/// negative values are `None`.
pub fn numeric_date(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    let secs = match n.as_i64() {
        Some(i) => i,
        None => {
            let f = n.as_f64()?;
            // The sign first: -0.5 would truncate to a valid-looking 0.
            (f.is_finite() && (0.0..9.0e15).contains(&f)).then_some(f.trunc() as i64)?
        }
    };
    (secs >= 0).then_some(secs)
}

/// The `exp` and `iat` claims of a JWT, decoded without verifying the
/// signature: the controller is not the token's audience, it only plans the
/// refresh. `None` when the token is not a JWT or its claims are unreadable.
pub fn jwt_claims(token: &str) -> Option<(Option<i64>, Option<i64>)> {
    let claims = jwt_payload(token)?;
    let exp = claims.get("exp").and_then(numeric_date);
    let iat = claims.get("iat").and_then(numeric_date);
    Some((exp, iat))
}

/// The `sub` claim of a JWT (the application or user it was issued to),
/// decoded without verifying the signature. `None` when the token is not a
/// JWT or has no string `sub`.
pub fn jwt_subject(token: &str) -> Option<String> {
    jwt_payload(token)?.get("sub")?.as_str().map(str::to_owned)
}

/// The claims of a JWT (`header.payload.signature`, base64url), unverified.
fn jwt_payload(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// When a JWT that arrived at `now` expires. With both `iat` and `exp`, the
/// lifetime `exp − iat` is counted from `now`, so that an issuer whose clock
/// runs ahead or behind this node's causes neither a stale token nor a
/// request loop; with `exp` alone, `exp` itself. `None` without `exp`.
pub fn jwt_expiry(token: &str, now: Timestamp) -> Option<Timestamp> {
    let (exp, iat) = jwt_claims(token)?;
    let exp = exp?;
    match iat {
        Some(iat) => {
            // A lifetime of zero or less makes the token expired on arrival.
            let lifetime = exp.saturating_sub(iat).max(0);
            now.checked_add(SignedDuration::from_secs(lifetime)).ok()
        }
        None => Timestamp::from_second(exp).ok(),
    }
}

/// Classifies a non-2xx answer. `location` is the `Location` header of a
/// redirect, `endpoint` the URL that was called; `secrets` are masked in any
/// echoed text. The body of a 400, 401 or 403 answer is never repeated:
/// that is where endpoints echo what they were sent.
pub fn classify_http_failure(
    status: u16,
    retry_after: Option<Duration>,
    location: Option<&str>,
    endpoint: &url::Url,
    body: &[u8],
    secrets: &[&str],
) -> Error {
    let (code, text) = error_body(body);
    // Only an error code registered by RFC 6749 (§5.2) or RFC 6750, never
    // other text from the body.
    let oauth_code = code
        .as_deref()
        .filter(|c| OAUTH_ERROR_CODES.contains(c))
        .map(|c| format!(": {c}"))
        .unwrap_or_default();
    let detail = || sanitize_detail(&text, secrets);
    if (300..=399).contains(&status) {
        return Error::Redirected {
            status,
            location: redirect_host(location, endpoint, secrets),
        };
    }
    // What the answer says counts, not only its status: Keycloak answers
    // bad client credentials with 400, 401 or 403 and an OAuth2 error
    // (RFC 6749 §5.2), Run:ai with its own `code`.
    // Which generation the endpoint is; `for_spec` names the setting.
    let asked = if endpoint.path().ends_with("/api/v2/token") {
        "V2"
    } else {
        "V1"
    };
    match body_says(code.as_deref(), error_body_code_number(body)) {
        BodySays::Rejected => {
            return Error::InvalidCredentials {
                status,
                detail: oauth_code,
            };
        }
        BodySays::UnsupportedGrant => {
            return Error::GrantNotSupported {
                endpoint: endpoint.to_string(),
                asked,
            };
        }
        BodySays::Nothing => {}
    }
    // How a removed API answers (runai-token-api.md), also as an ingress's
    // HTML page: the status alone says it.
    if matches!(status, 404 | 405 | 410 | 501) {
        return Error::TokenApiNotServed {
            status,
            endpoint: endpoint.to_string(),
            asked,
        };
    }
    match status {
        401 | 403 => Error::InvalidCredentials {
            status,
            detail: oauth_code,
        },
        400 => Error::RequestRejected {
            status,
            detail: oauth_code,
        },
        429 => Error::RateLimited {
            retry_after,
            detail: detail(),
        },
        503 => Error::Unavailable {
            retry_after,
            detail: detail(),
        },
        500..=599 => Error::ServerError {
            status,
            detail: detail(),
        },
        _ => Error::RequestRejected {
            status,
            detail: detail(),
        },
    }
}

/// The OAuth2 error codes of RFC 6749 §4.4 and §5.2 and RFC 6750 §3.1:
/// fixed words that are safe to repeat.
const OAUTH_ERROR_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "server_error",
    "temporarily_unavailable",
    "invalid_token",
    "insufficient_scope",
];

/// The host a redirect points to, for the message, masked like any text
/// from the endpoint.
fn redirect_host(location: Option<&str>, endpoint: &url::Url, secrets: &[&str]) -> String {
    let host = redirect_target(location, endpoint);
    match sanitize_detail(&host, secrets).strip_prefix(": ") {
        Some(clean) => clean.to_owned(),
        None => host,
    }
}

fn redirect_target(location: Option<&str>, endpoint: &url::Url) -> String {
    let Some(location) = location.map(str::trim).filter(|l| !l.is_empty()) else {
        return "nowhere (no Location header)".to_owned();
    };
    match endpoint.join(location) {
        Ok(target) => match (target.host_str(), target.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => "a location without a host".to_owned(),
        },
        Err(_) => "an unreadable Location header".to_owned(),
    }
}

/// The OAuth2 `error` code and a human text from an error body, whichever
/// generation's shape it has (`{"code","message"}` or `{"error","error_description"}`).
fn error_body(body: &[u8]) -> (Option<String>, String) {
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => error_fields(&fields),
        _ => (None, String::new()),
    }
}

/// Run:ai's numeric `code` in an error body (a number or a string of
/// digits), if any.
fn error_body_code_number(body: &[u8]) -> Option<i64> {
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields.get("code").and_then(lifetime_seconds),
        _ => None,
    }
}

fn error_fields(fields: &serde_json::Map<String, Value>) -> (Option<String>, String) {
    let text_of = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    let code = text_of("error");
    let text = text_of("error_description")
        .or_else(|| text_of("message"))
        .or_else(|| code.clone())
        .unwrap_or_default();
    (code, text)
}

/// `Retry-After` (RFC 9110 §10.2.3) as seconds or as an HTTP date, relative
/// to `now`; a date in the past is zero. Capped at one hour here; the
/// schedule caps it further by the current token's expiry.
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

/// Whether a failed send is a pooled connection that the endpoint closed
/// before answering (an idle-timeout race), worth one more try on a new
/// connection. Not a refused connection, a timeout or a TLS failure.
fn closed_before_answer(err: &reqwest::Error) -> bool {
    if err.is_timeout() || err.is_connect() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn find_tls_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(match tls {
            // Our own verifier's words (LeafInBundle::refusal), without
            // rustls's "unexpected error" before them.
            rustls::Error::General(message) => message.clone(),
            other => other.to_string(),
        });
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

/// The identity of a set of trusted CAs, whatever the PEM's formatting:
/// SHA-256 over the sorted DER encodings of its certificates; `None` for the
/// system roots alone.
pub type TrustKey = Option<[u8; 32]>;

/// The [`TrustKey`] of a `caBundle`.
///
/// # Errors
///
/// [`Error::InvalidSpec`] on `spec.caBundle`, as [`parse_ca_bundle`].
pub fn trust_key(ca_bundle: Option<&str>) -> Result<TrustKey, Error> {
    use sha2::Digest as _;
    let Some(pem) = ca_bundle else {
        return Ok(None);
    };
    let mut ders = parse_ca_bundle_der(pem)?;
    ders.sort();
    let mut hash = sha2::Sha256::new();
    for der in &ders {
        hash.update((der.len() as u64).to_be_bytes());
        hash.update(der);
    }
    Ok(Some(hash.finalize().into()))
}

/// HTTP clients shared by all credentials that trust the same CAs: building
/// one loads the system roots, which is too slow to repeat per request. Kept
/// per [`TrustKey`], so that differently formatted copies of one bundle share
/// a client, and pruned against the live RunaiCredentials, so that creating
/// RunaiCredentials with ever new bundles cannot grow it without bound.
#[derive(Debug)]
pub struct TokenClients {
    timeout: Duration,
    clients: Mutex<HashMap<TrustKey, TokenClient>>,
    /// The key of each `caBundle` text seen, so that a resync finds its
    /// client without parsing PEM again.
    keys: Mutex<HashMap<String, TrustKey>>,
}

impl TokenClients {
    /// An empty cache; clients time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TokenClients {
            timeout,
            clients: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TrustKey, TokenClient>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client for a CA bundle, built on first use on a blocking thread
    /// (loading the system roots reads files and parses certificates).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] for a `caBundle` that cannot be used;
    /// [`Error::Startup`] when no client can be built at all.
    pub async fn get(&self, ca_bundle: Option<&str>) -> Result<(TrustKey, TokenClient), Error> {
        let known = ca_bundle.and_then(|pem| {
            let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.get(pem).copied()
        });
        let key = match known {
            Some(key) => key,
            None => {
                let key = trust_key(ca_bundle)?;
                if let Some(pem) = ca_bundle {
                    let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                    keys.insert(pem.to_owned(), key);
                }
                key
            }
        };
        if let Some(client) = self.lock().get(&key) {
            return Ok((key, client.clone()));
        }
        let (pem, timeout) = (ca_bundle.map(str::to_owned), self.timeout);
        let client = tokio::task::spawn_blocking(move || TokenClient::new(pem.as_deref(), timeout))
            .await
            .map_err(|e| Error::Startup(format!("building an HTTP client failed: {e}")))??;
        Ok((key, self.lock().entry(key).or_insert(client).clone()))
    }

    /// Forgets the clients (and known bundle texts) that no live
    /// RunaiCredential uses; `live` holds their `caBundle` texts.
    pub fn retain(&self, live: &std::collections::HashSet<&str>) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|pem, _| live.contains(pem.as_str()));
        let used: std::collections::HashSet<TrustKey> = keys.values().copied().collect();
        drop(keys);
        self.lock()
            .retain(|key, _| key.is_none() || used.contains(key));
    }

    /// How many clients are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_roots_are_loaded_once_and_shared_by_every_client() {
        let Some(first) = system_verifier() else {
            eprintln!("skipped: this system has no trusted CAs");
            return;
        };
        let second = system_verifier().expect("loaded before");
        assert!(Arc::ptr_eq(&first, &second));
        // Two configurations hold that same verifier, not copies of it.
        let before = Arc::strong_count(&first);
        let configs = [tls_config(&[]).unwrap(), tls_config(&[]).unwrap()];
        assert_eq!(Arc::strong_count(&first), before + 2);
        for config in &configs {
            assert_eq!(
                config.alpn_protocols,
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            );
        }
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn at(secs_from_now: i64) -> Timestamp {
        now() + SignedDuration::from_secs(secs_from_now)
    }

    fn jwt(claims: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(r#"{"alg":"RS256"}"#),
            enc.encode(claims)
        )
    }

    fn expiry_of(body: &str) -> Option<Timestamp> {
        parse_token_response(body.as_bytes(), now())
            .unwrap_or_else(|e| panic!("{body}: {e}"))
            .expires_at
    }

    #[test]
    fn lifetime_forms() {
        for (lifetime, expected) in [
            ("3600", Some(3600)),
            ("\"3600\"", Some(3600)),
            ("\" 3600 \"", Some(3600)),
            ("3600.0", Some(3600)),
            ("\"3600.0\"", Some(3600)),
            ("3600.5", None),
            ("null", None),
            ("true", None),
            ("\"1h\"", None),
            ("0", None),
            ("-5", None),
            ("\"-5\"", None),
            ("[]", None),
        ] {
            let body = format!(r#"{{"accessToken":"opaque","expiresIn":{lifetime}}}"#);
            let want = expected.map(at);
            assert_eq!(
                parse_token_response(body.as_bytes(), now())
                    .map(|t| t.expires_at)
                    .ok(),
                Some(want),
                "expiresIn {lifetime}"
            );
        }
        // V2's name too.
        assert_eq!(
            expiry_of(r#"{"access_token":"abc","token_type":"Bearer","expires_in":"60"}"#),
            Some(at(60))
        );
    }

    #[test]
    fn the_earlier_of_lifetime_and_exp_wins() {
        let exp_in_an_hour = jwt(&format!(r#"{{"exp": {}}}"#, at(3600).as_second()));
        // expiresIn far beyond the JWT's exp: the JWT wins.
        assert_eq!(
            expiry_of(&format!(
                r#"{{"accessToken":"{exp_in_an_hour}","expiresIn":3600000}}"#
            )),
            Some(at(3600))
        );
        // expiresIn sooner: it wins.
        assert_eq!(
            expiry_of(&format!(
                r#"{{"accessToken":"{exp_in_an_hour}","expiresIn":600}}"#
            )),
            Some(at(600))
        );
        // An unusable expiresIn is as if absent.
        assert_eq!(
            expiry_of(&format!(
                r#"{{"accessToken":"{exp_in_an_hour}","expiresIn":"1h"}}"#
            )),
            Some(at(3600))
        );
    }

    #[test]
    fn exp_claim_forms() {
        let exp = at(900).as_second();
        assert_eq!(
            expiry_of(&format!(
                r#"{{"accessToken":"{}"}}"#,
                jwt(&format!(r#"{{"exp": {exp}.75}}"#))
            )),
            Some(at(900)),
            "a fractional exp is truncated"
        );
        for bad in [r#""soon""#, "-1", "null", "true"] {
            let token = jwt(&format!(r#"{{"exp": {bad}}}"#));
            assert_eq!(
                expiry_of(&format!(r#"{{"accessToken":"{token}"}}"#)),
                None,
                "exp {bad} is ignored"
            );
        }
    }

    #[test]
    fn clock_skew_counts_exp_minus_iat_from_arrival() {
        for skew in [-1200, -30, 0, 30, 1200] {
            let iat = now().as_second() + skew;
            let token = jwt(&format!(r#"{{"iat": {iat}, "exp": {}}}"#, iat + 900));
            assert_eq!(
                expiry_of(&format!(r#"{{"accessToken":"{token}"}}"#)),
                Some(at(900)),
                "issuer clock off by {skew} s"
            );
        }
        // A fractional iat is truncated like exp.
        let iat = now().as_second() - 1200;
        let token = jwt(&format!(r#"{{"iat": {iat}.9, "exp": {}.2}}"#, iat + 900));
        assert_eq!(
            expiry_of(&format!(r#"{{"accessToken":"{token}"}}"#)),
            Some(at(900))
        );
    }

    #[test]
    fn a_token_expired_on_arrival_is_refused() {
        let token = jwt(&format!(r#"{{"exp": {}}}"#, at(-7200).as_second()));
        let body = format!(r#"{{"accessToken":"{token}"}}"#);
        let err = parse_token_response(body.as_bytes(), now()).unwrap_err();
        assert!(err.to_string().contains("already expired"), "{err}");
        // exp before iat: a lifetime of zero.
        let backwards = jwt(r#"{"iat": 2000, "exp": 1000}"#);
        let body = format!(r#"{{"accessToken":"{backwards}"}}"#);
        assert!(matches!(
            parse_token_response(body.as_bytes(), now()),
            Err(Error::MalformedResponse(_))
        ));
    }

    #[test]
    fn opaque_token_has_unknown_expiry() {
        let issued = parse_token_response(br#"{"accessToken":"opaque"}"#, now()).unwrap();
        assert_eq!(issued.expires_at, None);
        assert_eq!(jwt_expiry("a.b", now()), None);
        assert_eq!(jwt_expiry("a.!!!.c", now()), None);
    }

    #[test]
    fn a_bom_and_whitespace_are_skipped() {
        let mut body = UTF8_BOM.to_vec();
        body.extend_from_slice(b"\r\n  {\"accessToken\":\"abc\",\"expiresIn\":60}\n");
        let issued = parse_token_response(&body, now()).unwrap();
        assert_eq!(issued.access_token, "abc");
        assert_eq!(issued.expires_at, Some(at(60)));
    }

    #[test]
    fn a_200_without_a_usable_token_is_a_failure() {
        let no_token = |body: &str| {
            matches!(
                parse_token_response(body.as_bytes(), now()),
                Err(Error::NoToken { .. })
            )
        };
        assert!(no_token(r#"{"accessToken":""}"#));
        assert!(no_token(r#"{"accessToken":"   "}"#));
        assert!(no_token(r#"{"accessToken":null}"#));
        assert!(no_token(r#"{"other":1}"#));
        assert!(no_token(r#"{"code":500,"message":"database unavailable"}"#));
        let malformed = |body: &[u8]| {
            matches!(
                parse_token_response(body, now()),
                Err(Error::MalformedResponse(_))
            )
        };
        assert!(malformed(b"<html><body>Sign in</body></html>"));
        assert!(malformed(b""));
        assert!(malformed(b"not json"));
        assert!(malformed(br#"{"accessToken":"a b"}"#));
        assert!(malformed(br#"{"accessToken":42}"#));
        assert!(malformed(br#"[1]"#));
        let html = parse_token_response(b"  <!DOCTYPE html>", now()).unwrap_err();
        assert!(html.to_string().contains("HTML"), "{html}");
    }

    #[test]
    fn an_error_object_in_a_200_is_classified_by_what_it_says() {
        let err = |body: &str| parse_token_response(body.as_bytes(), now()).unwrap_err();
        for body in [
            r#"{"code":401,"message":"Issuer is not familiar."}"#,
            r#"{"code":"403","message":"Forbidden"}"#,
            r#"{"error":"invalid_client","error_description":"bad"}"#,
            r#"{"error":"unauthorized_client"}"#,
        ] {
            assert!(
                matches!(err(body), Error::InvalidCredentials { status: 200, .. }),
                "{body}: {:?}",
                err(body)
            );
        }
        // The endpoint's own words are kept, with the secret masked.
        let echoed = parse_token_response_masking(
            br#"{"code":401,"message":"Issuer is not familiar. s3cr3t"}"#,
            now(),
            &["s3cr3t"],
        )
        .unwrap_err()
        .to_string();
        assert!(echoed.contains("Issuer is not familiar."), "{echoed}");
        assert!(!echoed.contains("s3cr3t"), "{echoed}");
        let other = err(r#"{"code":500,"message":"database unavailable"}"#).to_string();
        assert!(other.contains("database unavailable"), "{other}");
    }

    fn endpoint() -> url::Url {
        "https://acme.run.ai/api/v1/token".parse().unwrap()
    }

    #[test]
    fn rejected_credentials_are_known_by_what_the_answer_says_in_any_status() {
        let c = |status, body: &str| {
            classify_http_failure(status, None, None, &endpoint(), body.as_bytes(), &[])
        };
        // Keycloak's answers to bad client credentials, and Run:ai's code.
        for (status, body) in [
            (
                400,
                r#"{"error":"unauthorized_client","error_description":"x"}"#,
            ),
            (401, r#"{"error":"invalid_client"}"#),
            (403, r#"{"error":"invalid_grant"}"#),
            (500, r#"{"error":"invalid_client"}"#),
            (502, r#"{"code":401,"message":"Issuer is not familiar."}"#),
            (404, r#"{"code":"403","message":"Forbidden"}"#),
        ] {
            assert!(
                matches!(c(status, body), Error::InvalidCredentials { .. }),
                "{status} {body}: {:?}",
                c(status, body)
            );
        }
        // Positive controls: the same statuses without those words are not.
        assert!(matches!(
            c(500, r#"{"error":"server_error"}"#),
            Error::ServerError { .. }
        ));
        assert!(matches!(
            c(404, r#"{"code":404}"#),
            Error::TokenApiNotServed { status: 404, .. }
        ));
        assert!(matches!(c(502, ""), Error::ServerError { .. }));
    }

    #[test]
    fn a_token_of_another_type_than_bearer_is_a_failed_refresh_naming_it() {
        let now = Timestamp::from_second(1_000).unwrap();
        let parse = |body: &str| parse_token_response_masking(body.as_bytes(), now, &[]);
        for kind in ["Bearer", "bearer", "BEARER", " bearer "] {
            let body = format!(r#"{{"access_token":"abc","token_type":"{kind}"}}"#);
            assert!(parse(&body).is_ok(), "{kind}");
        }
        assert!(
            parse(r#"{"accessToken":"abc"}"#).is_ok(),
            "no type: Run:ai V1"
        );
        let err = parse(r#"{"access_token":"abc","token_type":"mac"}"#).unwrap_err();
        assert!(matches!(err, Error::MalformedResponse(_)), "{err:?}");
        assert!(err.to_string().contains("\"mac\""), "{err}");
        let err = parse(r#"{"accessToken":"abc","tokenType":"DPoP"}"#).unwrap_err();
        assert!(err.to_string().contains("\"DPoP\""), "{err}");
    }

    #[test]
    fn jwt_payloads_are_read_with_or_without_padding() {
        use base64::Engine as _;
        let encode = |claims: &str, pad: bool| {
            let engine = if pad {
                base64::engine::general_purpose::URL_SAFE
            } else {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
            };
            format!("e30.{}.sig", engine.encode(claims))
        };
        // 34 bytes of claims: base64 needs padding.
        let claims = r#"{"exp":2000,"iat":1000,"sub":"ab"}"#;
        assert_ne!(claims.len() % 3, 0);
        for pad in [false, true] {
            assert_eq!(
                jwt_claims(&encode(claims, pad)),
                Some((Some(2000), Some(1000))),
                "{pad}"
            );
        }
    }

    #[test]
    fn classification() {
        let c = |status, body: &str| {
            classify_http_failure(
                status,
                None,
                None,
                &endpoint(),
                body.as_bytes(),
                &["s3cr3t"],
            )
        };
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
        assert!(matches!(c(409, ""), Error::RequestRejected { .. }));
        assert!(matches!(c(429, ""), Error::RateLimited { .. }));
        assert!(matches!(c(503, ""), Error::Unavailable { .. }));
        assert!(matches!(c(500, ""), Error::ServerError { .. }));
        assert!(matches!(c(302, ""), Error::Redirected { status: 302, .. }));
        // Other statuses may repeat the endpoint's words, masked.
        let text = c(500, r#"{"code":500,"message":"secret s3cr3t is wrong"}"#).to_string();
        assert!(
            !text.contains("s3cr3t") && text.contains("[redacted]"),
            "{text}"
        );
    }

    #[test]
    fn bodies_of_400_401_403_are_never_repeated() {
        for status in [400, 401, 403] {
            let body = r#"{"code":401,"message":"you sent clientSecret=hunter2 from 10.0.0.1","error_description":"hunter2"}"#;
            let text = classify_http_failure(status, None, None, &endpoint(), body.as_bytes(), &[])
                .to_string();
            assert!(
                !text.contains("hunter2") && !text.contains("10.0.0.1"),
                "{status}: {text}"
            );
        }
        // The RFC 6749 error code alone is kept: a fixed word, not an echo.
        let text = classify_http_failure(
            401,
            None,
            None,
            &endpoint(),
            br#"{"error":"invalid_client","error_description":"secret hunter2"}"#,
            &[],
        )
        .to_string();
        assert!(text.contains("HTTP 401: invalid_client"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_null_under_one_name_does_not_hide_the_other() {
        let issued = parse_token_response(
            br#"{"accessToken":null,"access_token":"abc","expiresIn":null,"expires_in":60}"#,
            now(),
        )
        .unwrap();
        assert_eq!(issued.access_token, "abc");
        assert_eq!(issued.expires_at, Some(at(60)));
        assert!(matches!(
            parse_token_response(br#"{"accessToken":"","access_token":7}"#, now()),
            Err(Error::MalformedResponse(_))
        ));
    }

    #[test]
    fn a_negative_fractional_exp_is_ignored() {
        let token = jwt(r#"{"exp": -0.5}"#);
        assert_eq!(expiry_of(&format!(r#"{{"accessToken":"{token}"}}"#)), None);
        assert_eq!(
            jwt_claims(&jwt(r#"{"exp": -0.5, "iat": -3}"#)),
            Some((None, None))
        );
    }

    #[test]
    fn only_registered_oauth_codes_are_repeated() {
        let text = classify_http_failure(
            401,
            None,
            None,
            &endpoint(),
            br#"{"error":"runai_app_secret"}"#,
            &["runai_app_secret"],
        )
        .to_string();
        assert!(!text.contains("runai_app_secret"), "{text}");
        let text = classify_http_failure(
            302,
            None,
            Some("https://s3cr3t.evil.example/"),
            &endpoint(),
            b"",
            &["s3cr3t"],
        )
        .to_string();
        assert!(
            !text.contains("s3cr3t") && text.contains("evil.example"),
            "{text}"
        );
    }

    #[test]
    fn a_redirect_names_its_status_and_host() {
        let r = |location: Option<&str>| {
            classify_http_failure(302, None, location, &endpoint(), b"", &[]).to_string()
        };
        let text = r(Some("https://sso.corp.example/login?next=/api/v1/token"));
        assert!(text.contains("HTTP 302"), "{text}");
        assert!(text.contains("sso.corp.example"), "{text}");
        assert!(!text.contains("next="), "only the host: {text}");
        assert!(r(Some("https://sso.corp.example:8443/x")).contains("sso.corp.example:8443"));
        assert!(
            r(Some("/login")).contains("acme.run.ai"),
            "a relative redirect stays on the host"
        );
        assert!(r(None).contains("no Location header"));
        assert!(matches!(
            classify_http_failure(307, None, None, &endpoint(), b"", &[]),
            Error::Redirected { status: 307, .. }
        ));
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
        let year = httpdate::fmt_http_date(now + Duration::from_secs(365 * 86400));
        assert_eq!(parse_retry_after(&year, now), Some(MAX_RETRY_AFTER));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let endpoint = |base: &str, api| token_endpoint(&base.parse().unwrap(), api).to_string();
        assert_eq!(
            endpoint("https://acme.run.ai", TokenApi::V1),
            "https://acme.run.ai/api/v1/token"
        );
        assert_eq!(
            endpoint("https://acme.run.ai/", TokenApi::V2),
            "https://acme.run.ai/api/v2/token"
        );
        for base in ["https://host/runai", "https://host/runai/"] {
            assert_eq!(
                endpoint(base, TokenApi::V1),
                "https://host/runai/api/v1/token"
            );
            assert_eq!(
                endpoint(base, TokenApi::AppToken),
                "https://host/runai/api/v1/token"
            );
            assert_eq!(
                endpoint(base, TokenApi::V2),
                "https://host/runai/api/v2/token"
            );
        }
        assert_eq!(
            endpoint("https://host:8443/a/b", TokenApi::V1),
            "https://host:8443/a/b/api/v1/token"
        );
    }

    #[test]
    fn ca_bundle_must_hold_a_certificate() {
        use base64::engine::general_purpose::STANDARD;
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
        for bad in ["hello", "", key, &STANDARD.encode(key)] {
            match parse_ca_bundle(bad) {
                Err(Error::InvalidSpec { field, message }) => {
                    assert_eq!(field, "spec.caBundle");
                    assert!(message.contains("no PEM certificate"), "{message}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_ca_bundle(broken),
            Err(Error::InvalidSpec { .. })
        ));
    }

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    #[test]
    fn one_client_per_set_of_certificates_whatever_the_formatting() {
        let (a, b) = (ca_pem("a"), ca_pem("b"));
        let plain = format!("{a}{b}");
        let messy = format!(
            "intermediate:\r\n{}\r\n\r\nroot:\r\n{}",
            b.replace('\n', "\r\n    "),
            a.replace('\n', "\r\n")
        );
        assert_eq!(
            trust_key(Some(&plain)).unwrap(),
            trust_key(Some(&messy)).unwrap()
        );
        assert_ne!(
            trust_key(Some(&a)).unwrap(),
            trust_key(Some(&plain)).unwrap()
        );
        assert_eq!(trust_key(None).unwrap(), None);

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let clients = TokenClients::new(Duration::from_secs(1));
        runtime.block_on(async {
            clients.get(Some(&plain)).await.unwrap();
            clients.get(Some(&messy)).await.unwrap();
            assert_eq!(clients.len(), 1, "the same certificates share a client");
            clients.get(Some(&a)).await.unwrap();
            clients.get(None).await.unwrap();
            assert_eq!(clients.len(), 3);
        });
        // Pruned to what live credentials use; the system roots' client stays.
        clients.retain(&[a.as_str()].into());
        assert_eq!(clients.len(), 2);
        clients.retain(&Default::default());
        assert_eq!(clients.len(), 1);
    }

    #[test]
    fn a_removed_api_is_known_by_its_status_whatever_the_body() {
        let v1: url::Url = "https://acme.run.ai/api/v1/token".parse().unwrap();
        let v2: url::Url = "https://acme.run.ai/api/v2/token".parse().unwrap();
        let html = "<html><head><title>404 Not Found</title></head><body>nginx</body></html>";
        for status in [404, 405, 410, 501] {
            for body in ["", r#"{"code":404,"message":"Not Found"}"#, html] {
                let err = classify_http_failure(status, None, None, &v1, body.as_bytes(), &[]);
                assert!(
                    matches!(&err, Error::TokenApiNotServed { status: s, asked: "V1", .. } if *s == status),
                    "{status} {body}: {err:?}"
                );
                let text = err.to_string();
                assert!(
                    text.contains(&format!("HTTP {status}"))
                        && text.contains("/api/v2/token")
                        && text.contains("spec.tokenApi: V2 or Auto"),
                    "{text}"
                );
            }
            let err = classify_http_failure(status, None, None, &v2, b"", &[]);
            assert!(
                err.to_string().contains("spec.tokenApi: V1 or Auto"),
                "{err}"
            );
        }
        // Positive controls: other statuses are not a removed API.
        for status in [400, 403, 409, 500, 502] {
            let err = classify_http_failure(status, None, None, &v1, b"", &[]);
            assert!(
                !matches!(err, Error::TokenApiNotServed { .. }),
                "{status}: {err:?}"
            );
        }
    }

    #[test]
    fn an_unsupported_grant_names_the_setting_to_use() {
        let v1: url::Url = "https://acme.run.ai/api/v1/token".parse().unwrap();
        let body = br#"{"error":"unsupported_grant_type","error_description":"x"}"#;
        let err = classify_http_failure(400, None, None, &v1, body, &[]);
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(
            err.is_refresh_failure(),
            "recorded and retried, not a crash"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("spec.tokenApi:") && text.contains("spec.tokenApi: AppToken"),
            "{text}"
        );
        let explicit_v2 = for_spec(err, TokenApi::V2).to_string();
        assert!(
            explicit_v2.contains("set spec.tokenApi: Auto or V1"),
            "{explicit_v2}"
        );
        // invalid_client in the same status stays rejected credentials.
        let rejected =
            classify_http_failure(400, None, None, &v1, br#"{"error":"invalid_client"}"#, &[]);
        assert!(matches!(rejected, Error::InvalidCredentials { .. }));
    }

    #[test]
    fn auto_calls_v2_first_then_the_one_that_answered_last() {
        use TokenApi::{AppToken, Auto, V1, V2};
        assert_eq!(generations(Auto, None), [V2, V1]);
        assert_eq!(generations(Auto, Some(V2)), [V2, V1]);
        assert_eq!(generations(Auto, Some(V1)), [V1, V2]);
        // Auto never tries AppToken by itself.
        assert_eq!(generations(Auto, Some(AppToken)), [V2, V1]);
        for explicit in [V1, V2, AppToken] {
            assert_eq!(generations(explicit, Some(V1)), [explicit]);
            assert_eq!(generations(explicit, Some(V2)), [explicit]);
        }
    }

    #[test]
    fn only_an_endpoint_that_is_not_served_falls_back() {
        let not_served = Error::TokenApiNotServed {
            status: 404,
            endpoint: String::new(),
            asked: "Auto",
        };
        let grant = Error::GrantNotSupported {
            endpoint: String::new(),
            asked: "Auto",
        };
        assert!(falls_back(&not_served, TokenApi::V2));
        assert!(falls_back(&not_served, TokenApi::V1));
        assert!(falls_back(&grant, TokenApi::V2));
        // From V1, unsupported_grant_type means AppToken, which Auto never tries.
        assert!(!falls_back(&grant, TokenApi::V1));
        // Refused credentials never send the secret to a second endpoint.
        for err in [
            Error::InvalidCredentials {
                status: 401,
                detail: String::new(),
            },
            Error::InvalidCredentials {
                status: 400,
                detail: ": invalid_client".to_owned(),
            },
            Error::RateLimited {
                retry_after: None,
                detail: String::new(),
            },
            Error::ServerError {
                status: 500,
                detail: String::new(),
            },
        ] {
            assert!(!falls_back(&err, TokenApi::V2), "{err:?}");
        }
    }

    #[test]
    fn deprecation_headers_are_read_as_rfc_9745_and_8594_write_them() {
        let endpoint: url::Url = "https://acme.run.ai/api/v1/token".parse().unwrap();
        let found = deprecation_of(
            Some("@1767225600"),
            Some("Wed, 01 Jul 2026 00:00:00 GMT"),
            &endpoint,
        )
        .unwrap();
        assert_eq!(found.endpoint, "https://acme.run.ai/api/v1/token");
        assert_eq!(found.sunset, Some("2026-07-01T00:00:00Z".parse().unwrap()));
        // Earlier drafts: `true`, or a date; an unreadable sunset is left out.
        assert!(deprecation_of(Some("true"), None, &endpoint).is_some());
        let unreadable = deprecation_of(Some("true"), Some("soon"), &endpoint).unwrap();
        assert_eq!(unreadable.sunset, None);
        // Positive controls: no header, or `false`, is no deprecation.
        assert_eq!(
            deprecation_of(None, Some("Wed, 01 Jul 2026 00:00:00 GMT"), &endpoint),
            None
        );
        assert_eq!(deprecation_of(Some("false"), None, &endpoint), None);
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
            token_api: None,
            deprecation: None,
        };
        assert!(!format!("{creds:?}").contains("s3cr3t"));
        assert!(!format!("{token:?}").contains("tok3n"));
    }
}
