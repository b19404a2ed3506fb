//! The one error type of the crate.
//!
//! Every message is written for the user who reads it in a condition or an
//! Event, and none may contain a client secret or a token: text that comes from
//! the token endpoint is passed through [`sanitize_detail`] first.

use std::time::Duration;

use thiserror::Error;

/// Everything that can go wrong while keeping a token fresh.
/// Longest wait a `Retry-After` can impose (api.md, Edge cases): a longer
/// one is taken as this, by the token client that reads it and by the
/// schedule that honours it.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Error)]
pub enum Error {
    /// The spec cannot be used as written; waits for the user to change it.
    #[error("{field}: {message}")]
    InvalidSpec {
        field: &'static str,
        message: String,
    },

    /// The credentials Secret, or a key in it, is missing or empty.
    #[error("{0}")]
    CredentialsNotFound(String),

    /// The target Secret exists and is not managed by this RunaiCredential.
    #[error(
        "Secret {secret} already exists and is not managed by this RunaiCredential; it is left untouched. Delete it or choose another spec.target.name"
    )]
    SecretConflict { secret: String },

    /// The API server refused to write the target Secret (a quota, an
    /// admission webhook's denial, missing rights: HTTP 400, 403 or 422), or
    /// an admission webhook on Secrets failed or timed out (HTTP 500 naming
    /// it). `message` is the API server's, with the token masked.
    #[error("the API server refused to write Secret {secret} (HTTP {status}): {message}")]
    SecretWriteFailed {
        secret: String,
        status: u16,
        message: String,
    },

    /// The token endpoint refused the client credentials: HTTP 401 or 403, an
    /// RFC 6749 `invalid_client`/`unauthorized_client` error, or the same
    /// inside a 200 answer. `detail` never repeats the body of a 400/401/403
    /// answer, which is where endpoints echo what they were sent.
    #[error(
        "the token endpoint rejected the client credentials (HTTP {status}{detail}); check the client ID and secret in the credentials Secret and that the application is enabled"
    )]
    InvalidCredentials { status: u16, detail: String },

    /// HTTP 429: the token endpoint asks the controller to slow down.
    #[error("the token endpoint is rate limiting requests (HTTP 429{detail}){}", retry_hint(.retry_after))]
    RateLimited {
        retry_after: Option<Duration>,
        detail: String,
    },

    /// HTTP 503: the token endpoint is temporarily unavailable.
    #[error("the token endpoint is unavailable (HTTP 503{detail}){}", retry_hint(.retry_after))]
    Unavailable {
        retry_after: Option<Duration>,
        detail: String,
    },

    /// Any other 4xx: the request is not accepted.
    #[error(
        "the token endpoint refused the request (HTTP {status}{detail}); check spec.url and spec.tokenApi"
    )]
    RequestRejected { status: u16, detail: String },

    /// The endpoint of the token API generation that was called is not
    /// served there: HTTP 404, 405, 410 or 501, as a removed API answers
    /// (runai-token-api.md, "Deprecation of V1"). `asked` is the
    /// `spec.tokenApi` it was called for (`Auto` when neither generation
    /// is served); the message says what to set instead.
    #[error("{endpoint} answered HTTP {status}, as an API that is not served; {}", not_served_advice(.asked))]
    TokenApiNotServed {
        status: u16,
        endpoint: String,
        asked: &'static str,
    },

    /// The endpoint does not take the grant that was sent (RFC 6749 §5.2
    /// `unsupported_grant_type`): `spec.tokenApi` (`asked`) names the
    /// wrong generation for this Run:ai; the message says which to set.
    #[error(
        "spec.tokenApi: {endpoint} does not accept the {} grant (unsupported_grant_type); {}",
        grant_of(.asked),
        grant_advice(.asked)
    )]
    GrantNotSupported {
        endpoint: String,
        asked: &'static str,
    },

    /// A 3xx answer. Redirects are never followed: the client secret would
    /// be sent again to wherever it points (an SSO gateway, typically).
    #[error(
        "the token endpoint answered HTTP {status}, a redirect to {location}, which is not followed because it would send the client secret there; set spec.url to the Run:ai control plane itself"
    )]
    Redirected {
        status: u16,
        /// The host the redirect points to (`host` or `host:port`), or a
        /// phrase saying that the answer named none.
        location: String,
    },

    /// A 5xx other than 503.
    #[error("the token endpoint failed (HTTP {status}{detail})")]
    ServerError { status: u16, detail: String },

    /// No answer within the request timeout.
    #[error("the token endpoint at {url} did not answer within {}s", .timeout.as_secs())]
    Timeout { url: String, timeout: Duration },

    /// The TLS handshake failed, typically an untrusted certificate.
    #[error(
        "TLS handshake with {url} failed: {detail}; if Run:ai is served with a certificate from a private CA, put that CA in spec.caBundle"
    )]
    Tls { url: String, detail: String },

    /// No connection could be made (DNS, refused, reset, proxy).
    #[error("cannot connect to the token endpoint at {url}: {detail}")]
    Connect { url: String, detail: String },

    /// The answer is not what the token API documents.
    #[error("the token endpoint sent an answer that cannot be read: {0}")]
    MalformedResponse(String),

    /// The answer is larger than the controller reads.
    #[error("the token endpoint sent an answer larger than {limit} bytes; it was not read")]
    ResponseTooLarge { limit: usize },

    /// A successful answer without a usable token: none, `null`, empty, or
    /// an error object (`detail` then carries its sanitised message).
    #[error("the token endpoint answered without an access token{detail}")]
    NoToken { detail: String },

    /// A call to the Kubernetes API failed.
    #[error("{action} failed: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },

    /// This replica lost the leader lease; it makes no more requests or writes.
    #[error("this replica no longer holds the leader lease")]
    LeaseLost,

    /// A reconciliation took longer than its deadline and was abandoned.
    #[error("the reconciliation was abandoned after {}s", .after.as_secs())]
    ReconcileTimeout { after: Duration },

    /// A reconciliation panicked (a defect); it is retried with backoff.
    #[error("the reconciliation failed unexpectedly: {0}")]
    Panicked(String),

    /// The controller could not start.
    #[error("{0}")]
    Startup(String),
}

/// What to set when the generation `asked` for is not served.
fn not_served_advice(asked: &str) -> &'static str {
    match asked {
        "V2" => {
            "this Run:ai may serve only /api/v1/token: set spec.tokenApi: V1 or Auto (or check spec.url)"
        }
        "Auto" => {
            "/api/v2/token is not served either: check that spec.url is the Run:ai control plane, with its path prefix if it has one"
        }
        _ => {
            "this Run:ai may serve only /api/v2/token: set spec.tokenApi: V2 or Auto (or check spec.url)"
        }
    }
}

/// The grant a generation sends.
fn grant_of(asked: &str) -> &'static str {
    match asked {
        "AppToken" => "app_token",
        _ => "client_credentials",
    }
}

/// What to set when the grant of the generation `asked` for is refused.
fn grant_advice(asked: &str) -> &'static str {
    match asked {
        "AppToken" => {
            "Run:ai 2.19 and later take the client_credentials grant: set spec.tokenApi: Auto"
        }
        "V2" => "set spec.tokenApi: Auto or V1",
        _ => "Run:ai 2.18 and older take only the app_token grant: set spec.tokenApi: AppToken",
    }
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!("; it asks to retry after {}s", d.as_secs()),
        None => String::new(),
    }
}

impl Error {
    /// The fixed string used as condition reason and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::CredentialsNotFound(_) => "CredentialsNotFound",
            Error::SecretConflict { .. } => "SecretConflict",
            Error::SecretWriteFailed { .. } => "SecretWriteFailed",
            Error::InvalidCredentials { .. } => "InvalidCredentials",
            Error::GrantNotSupported { .. } => "InvalidSpec",
            Error::TokenApiNotServed { .. }
            | Error::RateLimited { .. }
            | Error::Unavailable { .. }
            | Error::RequestRejected { .. }
            | Error::Redirected { .. }
            | Error::ServerError { .. }
            | Error::Timeout { .. }
            | Error::Tls { .. }
            | Error::Connect { .. }
            | Error::MalformedResponse(_)
            | Error::ResponseTooLarge { .. }
            | Error::NoToken { .. } => "TokenEndpointError",
            Error::Kube { .. } => "KubernetesAPIError",
            Error::Panicked(_) => "InternalError",
            Error::LeaseLost => "LeaseLost",
            Error::ReconcileTimeout { .. } => "ReconcileTimeout",
            Error::Startup(_) => "StartupError",
        }
    }

    /// A finer class of token-request failures, fixed strings for metric labels.
    pub fn class(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::CredentialsNotFound(_) => "credentials_not_found",
            Error::SecretConflict { .. } => "secret_conflict",
            Error::SecretWriteFailed { .. } => "secret_write_failed",
            Error::InvalidCredentials { .. } => "invalid_credentials",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::RequestRejected { .. } => "client_error",
            Error::Redirected { .. } => "redirect",
            Error::TokenApiNotServed { .. } => "not_served",
            Error::GrantNotSupported { .. } => "unsupported_grant_type",
            Error::ServerError { .. } => "server_error",
            Error::Timeout { .. } => "timeout",
            Error::Tls { .. } => "tls",
            Error::Connect { .. } => "connect",
            Error::MalformedResponse(_) => "malformed_response",
            Error::ResponseTooLarge { .. } => "response_too_large",
            Error::NoToken { .. } => "empty_token",
            Error::Kube { .. } => "kubernetes_api",
            Error::Panicked(_) => "internal",
            Error::LeaseLost => "lease_lost",
            Error::ReconcileTimeout { .. } => "reconcile_timeout",
            Error::Startup(_) => "startup",
        }
    }

    /// The delay the token endpoint asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } | Error::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether this is a failure to obtain or store a token (recorded in the
    /// status and retried with backoff) rather than an error of the
    /// controller itself.
    pub fn is_refresh_failure(&self) -> bool {
        !matches!(
            self,
            Error::Kube { .. }
                | Error::Panicked(_)
                | Error::LeaseLost
                | Error::ReconcileTimeout { .. }
                | Error::Startup(_)
                | Error::InvalidSpec { .. }
                | Error::SecretConflict { .. }
        )
    }

    /// Wraps a Kubernetes API error with the action that failed.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

/// Longest piece of endpoint-provided text that is repeated in a message, in characters.
const MAX_DETAIL_CHARS: usize = 200;

/// Shortest run of base64/hex-like characters that is masked as a likely
/// credential or token even when it matches no known secret.
const MIN_OPAQUE_RUN: usize = 32;

/// Turns text from the token endpoint into a safe message detail. Status,
/// Events and logs are read by far more people than Secrets, and an endpoint
/// may echo what it was sent, so each of `secrets` is masked in every form it
/// could come back in (raw, URL-encoded, JSON-escaped, base64), as is any long
/// opaque run of characters (a token, a key); control characters are dropped
/// and the length is bounded. Returns `""` or `": <text>"`.
pub fn sanitize_detail(text: &str, secrets: &[&str]) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut forms: Vec<String> = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| encoded_forms(s))
        .collect();
    // Longest first, so that a form containing another is masked whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    for form in forms.iter().filter(|f| !f.is_empty()) {
        clean = clean.replace(form.as_str(), "[redacted]");
    }
    let clean = mask_opaque_runs(&clean);
    // Any other encoding that still decodes to a secret (over-encoded
    // characters, mixed case): withhold the text altogether.
    let decoded = percent_encoding::percent_decode_str(&clean.replace('+', " "))
        .decode_utf8_lossy()
        .replace("\\", "");
    if secrets
        .iter()
        .filter(|s| !s.is_empty())
        .any(|s| decoded.contains(*s) || decoded.contains(&s.replace('+', " ")))
    {
        return ": [the endpoint's message is withheld: it repeats the client secret]".to_owned();
    }
    let clean = clean.trim();
    if clean.is_empty() {
        return String::new();
    }
    let mut out: String = clean.chars().take(MAX_DETAIL_CHARS).collect();
    if clean.chars().count() > MAX_DETAIL_CHARS {
        out.push('…');
    }
    format!(": {out}")
}

/// The forms in which a secret may be echoed back.
fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![secret.to_owned()];
    // application/x-www-form-urlencoded (what V2 sends), and RFC 3986
    // percent-encoding with upper- and lower-case hex digits.
    forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
    let percent: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    forms.push(percent.to_lowercase_hex());
    forms.push(percent);
    // JSON string escaping (what V1 sends), without the quotes.
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json.trim_matches('"').to_owned());
    }
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
    }
    forms
}

trait LowercaseHex {
    fn to_lowercase_hex(&self) -> String;
}

impl LowercaseHex for String {
    /// The same percent-encoding with lower-case hex digits.
    fn to_lowercase_hex(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut chars = self.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '%' {
                out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
            }
        }
        out
    }
}

/// Masks runs of at least [`MIN_OPAQUE_RUN`] base64/hex characters that mix
/// letters and digits: tokens and keys, never words or paths a user needs.
fn mask_opaque_runs(text: &str) -> String {
    let is_opaque = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let mixed =
            run.chars().any(|c| c.is_ascii_digit()) && run.chars().any(|c| c.is_ascii_alphabetic());
        if run.chars().count() >= MIN_OPAQUE_RUN && mixed {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_opaque(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_masks_secrets_and_control_characters() {
        let detail = sanitize_detail("bad secret s3cr3t\n\tgiven", &["s3cr3t"]);
        assert_eq!(detail, ": bad secret [redacted]  given");
        assert_eq!(sanitize_detail("   ", &["x"]), "");
    }

    #[test]
    fn detail_masks_every_encoding_of_a_secret() {
        use base64::Engine as _;
        let secret = "p@ss w/rd\"+1";
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let json = serde_json::to_string(secret).unwrap();
        let echoed = format!(
            "raw {secret} form {form} pct p%40ss%20w%2Frd%22%2B1 lower p%40ss%20w%2frd%22%2b1 json {json} b64 {b64} b64url {b64url}"
        );
        let detail = sanitize_detail(&echoed, &[secret]);
        for form in [
            secret,
            &form,
            "p%40ss",
            "p%40ss%20w%2frd",
            &json[1..json.len() - 1],
            &b64,
            &b64url,
        ] {
            assert!(!detail.contains(form), "{form:?} survives in {detail}");
        }
        assert_eq!(detail.matches("[redacted]").count(), 7, "{detail}");
        assert!(
            detail.starts_with(": raw [redacted] form [redacted]"),
            "{detail}"
        );
    }

    #[test]
    fn detail_masks_opaque_runs_but_keeps_words_and_paths() {
        let jwt =
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4IiwiZXhwIjoxfQ.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl";
        let detail = sanitize_detail(&format!("token {jwt} refused"), &[]);
        assert!(
            !detail.contains("c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"),
            "{detail}"
        );
        let words = "Issuer is not familiar. See /auth/realms/runai/protocol/openid-connect/token";
        assert_eq!(sanitize_detail(words, &[]), format!(": {words}"));
    }

    #[test]
    fn detail_is_bounded() {
        let long = "x".repeat(1000);
        let detail = sanitize_detail(&long, &[]);
        assert_eq!(detail.chars().count(), 2 + MAX_DETAIL_CHARS + 1);
    }

    #[test]
    fn retry_after_shows_in_message() {
        let err = Error::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
            detail: String::new(),
        };
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        assert!(err.to_string().contains("retry after 30s"), "{err}");
        assert_eq!(err.reason(), "TokenEndpointError");
        assert_eq!(err.class(), "rate_limited");
    }
}
