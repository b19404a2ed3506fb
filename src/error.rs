//! The one error type of the crate.
//!
//! Every message is written for the user who reads it in a condition or an
//! Event, and none may contain a client secret or a token: text that comes from
//! the token endpoint is passed through [`sanitize_detail`] first.

use std::time::Duration;

use thiserror::Error;

/// Everything that can go wrong while keeping a token fresh.
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

    /// The token endpoint refused the client credentials.
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

    /// Any other 4xx (or an unexpected redirect): the request is not accepted.
    #[error(
        "the token endpoint refused the request (HTTP {status}{detail}); check spec.url and spec.tokenApi"
    )]
    RequestRejected { status: u16, detail: String },

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

    /// The answer parsed but carried no usable token.
    #[error("the token endpoint answered without an access token")]
    EmptyToken,

    /// A call to the Kubernetes API failed.
    #[error("{action} failed: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },

    /// The controller could not start.
    #[error("{0}")]
    Startup(String),
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
            Error::InvalidCredentials { .. } => "InvalidCredentials",
            Error::RateLimited { .. }
            | Error::Unavailable { .. }
            | Error::RequestRejected { .. }
            | Error::ServerError { .. }
            | Error::Timeout { .. }
            | Error::Tls { .. }
            | Error::Connect { .. }
            | Error::MalformedResponse(_)
            | Error::ResponseTooLarge { .. }
            | Error::EmptyToken => "TokenEndpointError",
            Error::Kube { .. } => "KubernetesAPIError",
            Error::Startup(_) => "StartupError",
        }
    }

    /// A finer class of token-request failures, fixed strings for metric labels.
    pub fn class(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::CredentialsNotFound(_) => "credentials_not_found",
            Error::SecretConflict { .. } => "secret_conflict",
            Error::InvalidCredentials { .. } => "invalid_credentials",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::RequestRejected { .. } => "client_error",
            Error::ServerError { .. } => "server_error",
            Error::Timeout { .. } => "timeout",
            Error::Tls { .. } => "tls",
            Error::Connect { .. } => "connect",
            Error::MalformedResponse(_) => "malformed_response",
            Error::ResponseTooLarge { .. } => "response_too_large",
            Error::EmptyToken => "empty_token",
            Error::Kube { .. } => "kubernetes_api",
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

    /// Whether this is a failure to obtain a token (recorded in the status and
    /// retried with backoff) rather than an error of the controller itself.
    pub fn is_refresh_failure(&self) -> bool {
        !matches!(
            self,
            Error::Kube { .. }
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

/// Longest piece of endpoint-provided text that is repeated in a message.
const MAX_DETAIL_CHARS: usize = 200;

/// Turns text from the token endpoint into a safe message detail: the given
/// secrets are masked (a misbehaving server could echo them), control
/// characters dropped, and the length bounded. Returns `""` or `": <text>"`.
pub fn sanitize_detail(text: &str, secrets: &[&str]) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        clean = clean.replace(secret, "[redacted]");
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
