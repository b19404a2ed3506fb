//! `runai-token-sync check`: one token request with the controller's own
//! token client and URL rules, no cluster needed.

use std::{path::PathBuf, time::Duration};

use jiff::Timestamp;

use crate::{
    api::{TokenApi, validate_url},
    error::Error,
    runai::client::{ClientCredentials, TokenClient, jwt_subject, token_endpoint},
};

/// What `check` is asked to try.
#[derive(Clone, Debug)]
pub struct CheckRequest {
    /// The Run:ai base URL, as `spec.url` would hold it.
    pub url: String,
    pub token_api: TokenApi,
    pub client_id: String,
    /// A file holding the client secret; `-` reads standard input.
    pub client_secret_file: PathBuf,
    /// PEM certificates to trust besides the system roots (`spec.caBundle`).
    pub ca_file: Option<PathBuf>,
    pub allow_insecure_http: bool,
    /// Timeout of the request.
    pub timeout: Duration,
}

/// What a successful request showed. `Debug` never shows the token.
pub struct CheckReport {
    /// The generation that answered (under `Auto`, the one detected).
    pub token_api: TokenApi,
    /// The endpoint that was called.
    pub endpoint: String,
    /// The token's lifetime from its arrival, in whole seconds, when known.
    pub lifetime_seconds: Option<i64>,
    pub expires_at: Option<Timestamp>,
    /// The JWT's `sub` claim, when the token is a JWT that has one.
    pub subject: Option<String>,
    pub access_token: String,
}

impl std::fmt::Debug for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckReport")
            .field("token_api", &self.token_api)
            .field("endpoint", &self.endpoint)
            .field("lifetime_seconds", &self.lifetime_seconds)
            .field("expires_at", &self.expires_at)
            .field("subject", &self.subject)
            .field("access_token", &"[redacted]")
            .finish()
    }
}

/// Reads the inputs, checks them as the controller would, and makes one
/// token request.
///
/// # Errors
///
/// [`Error::InvalidSpec`] for an unusable URL or CA file,
/// [`Error::CredentialsNotFound`] for an unreadable or empty secret file,
/// and every token-endpoint error of [`TokenClient::request_token`].
pub async fn check(request: &CheckRequest) -> Result<CheckReport, Error> {
    let url = validate_url(&request.url, request.allow_insecure_http)?;
    let secret = read_secret(&request.client_secret_file)?;
    let client_id = request.client_id.trim_matches([' ', '\t', '\r', '\n']);
    if client_id.is_empty() {
        return Err(Error::CredentialsNotFound(
            "the client ID is empty".to_owned(),
        ));
    }
    let ca_bundle = match &request.ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| Error::InvalidSpec {
                field: "--ca-file",
                message: format!("cannot read {}: {e}", path.display()),
            })?,
        ),
        None => None,
    };
    let client = TokenClient::new(ca_bundle.as_deref(), request.timeout)?;
    let credentials = ClientCredentials {
        client_id: client_id.to_owned(),
        client_secret: secret,
    };
    let issued = client
        .request_token(&url, request.token_api, &credentials, Timestamp::now())
        .await?;
    let now = Timestamp::now();
    let answered = issued.token_api.unwrap_or(request.token_api);
    Ok(CheckReport {
        token_api: answered,
        endpoint: token_endpoint(&url, answered).to_string(),
        lifetime_seconds: issued
            .expires_at
            .map(|at| at.duration_since(now).as_secs().max(0)),
        expires_at: issued.expires_at,
        subject: jwt_subject(&issued.access_token),
        access_token: issued.access_token,
    })
}

/// Reads the client secret, trimmed of the spaces and line ends that files
/// and `echo` add (as the controller trims the credentials Secret's values).
fn read_secret(path: &std::path::Path) -> Result<String, Error> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| {
        Error::CredentialsNotFound(format!(
            "cannot read the client secret from {}: {e}",
            path.display()
        ))
    })?;
    let secret = text.trim_matches([' ', '\t', '\r', '\n']);
    if secret.is_empty() {
        return Err(Error::CredentialsNotFound(format!(
            "the client secret file {} is empty",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

impl CheckReport {
    /// The report as printed: one `name: value` line each; the token only
    /// when `show_token`.
    pub fn render(&self, show_token: bool) -> String {
        let mut out = format!(
            "token API: {} (POST {})\n",
            self.token_api.as_str(),
            self.endpoint
        );
        out.push_str(&match self.lifetime_seconds {
            Some(s) => format!("lifetime: {s} s\n"),
            None => "lifetime: unknown (no expiresIn and no JWT exp)\n".to_owned(),
        });
        out.push_str(&match self.expires_at {
            Some(at) => format!("expires at: {}\n", crate::output::secret::rfc3339(at)),
            None => "expires at: unknown\n".to_owned(),
        });
        out.push_str(&match &self.subject {
            Some(sub) => format!("subject: {sub}\n"),
            None => "subject: unknown (not a JWT, or no sub claim)\n".to_owned(),
        });
        if show_token {
            out.push_str(&format!("access token: {}\n", self.access_token));
        }
        out
    }
}

/// Exit statuses of `check`, one per failure class (documented in `--help`
/// and the README). 2 is left to usage errors, as the argument parser uses it.
pub const EXIT_STATUSES: &[(u8, &str)] = &[
    (0, "a token was issued"),
    (1, "an unexpected error"),
    (2, "usage error (unknown or missing flags)"),
    (
        3,
        "invalid input: the URL, the CA file, or an empty or unreadable client ID or secret file",
    ),
    (
        4,
        "the credentials were rejected (HTTP 401/403, or invalid_client, unauthorized_client, invalid_grant or Run:ai's code 401/403 in any status)",
    ),
    (5, "rate limited (HTTP 429)"),
    (6, "unavailable (HTTP 503)"),
    (
        7,
        "the request was refused (another HTTP 4xx: check --url and --token-api)",
    ),
    (
        8,
        "a redirect (not followed: it would send the secret elsewhere)",
    ),
    (9, "a server error (another HTTP 5xx)"),
    (10, "no answer within the timeout"),
    (11, "TLS failed (an untrusted certificate: try --ca-file)"),
    (12, "no connection (DNS, refused, reset, proxy)"),
    (
        13,
        "an answer that cannot be read (HTML, not JSON, too large)",
    ),
    (14, "an answer without an access token"),
    (
        15,
        "the token API is not served there (HTTP 404, 405, 410 or 501): the message says which --token-api to use, or to check --url",
    ),
    (
        16,
        "the endpoint does not take this grant (unsupported_grant_type): the message says which --token-api to use",
    ),
];

/// The exit status for a failure of [`check`]; see [`EXIT_STATUSES`].
pub fn exit_status(err: &Error) -> u8 {
    match err {
        Error::InvalidSpec { .. } | Error::CredentialsNotFound(_) => 3,
        Error::InvalidCredentials { .. } => 4,
        Error::RateLimited { .. } => 5,
        Error::Unavailable { .. } => 6,
        Error::RequestRejected { .. } => 7,
        Error::Redirected { .. } => 8,
        Error::ServerError { .. } => 9,
        Error::Timeout { .. } => 10,
        Error::Tls { .. } => 11,
        Error::Connect { .. } => 12,
        Error::MalformedResponse(_) | Error::ResponseTooLarge { .. } => 13,
        Error::NoToken { .. } => 14,
        Error::TokenApiNotServed { .. } => 15,
        Error::GrantNotSupported { .. } => 16,
        Error::SecretConflict { .. }
        | Error::SecretWriteFailed { .. }
        | Error::Kube { .. }
        | Error::LeaseLost
        | Error::ReconcileTimeout { .. }
        | Error::Panicked(_)
        | Error::Startup(_) => 1,
    }
}

/// The exit statuses as `--help` shows them.
pub fn exit_statuses_help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in EXIT_STATUSES {
        text.push_str(&format!("  {code:>2}  {meaning}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_documented_status() {
        let samples = [
            Error::InvalidSpec {
                field: "spec.url",
                message: String::new(),
            },
            Error::InvalidCredentials {
                status: 401,
                detail: String::new(),
            },
            Error::RateLimited {
                retry_after: None,
                detail: String::new(),
            },
            Error::Unavailable {
                retry_after: None,
                detail: String::new(),
            },
            Error::RequestRejected {
                status: 404,
                detail: String::new(),
            },
            Error::Redirected {
                status: 302,
                location: String::new(),
            },
            Error::ServerError {
                status: 500,
                detail: String::new(),
            },
            Error::Timeout {
                url: String::new(),
                timeout: Duration::from_secs(1),
            },
            Error::Tls {
                url: String::new(),
                detail: String::new(),
            },
            Error::Connect {
                url: String::new(),
                detail: String::new(),
            },
            Error::MalformedResponse(String::new()),
            Error::NoToken {
                detail: String::new(),
            },
            Error::TokenApiNotServed {
                status: 404,
                endpoint: String::new(),
                asked: "V1",
            },
            Error::GrantNotSupported {
                endpoint: String::new(),
                asked: "V1",
            },
        ];
        let statuses: Vec<u8> = samples.iter().map(exit_status).collect();
        let mut distinct = statuses.clone();
        distinct.dedup();
        assert_eq!(distinct, statuses, "one status per class, in order");
        for status in statuses {
            assert!(
                EXIT_STATUSES.iter().any(|(code, _)| *code == status),
                "{status} is documented"
            );
            assert!(status > 2, "0-2 are success, unexpected and usage");
        }
    }

    #[test]
    fn the_token_is_shown_only_when_asked() {
        let report = CheckReport {
            token_api: TokenApi::V2,
            endpoint: "https://acme.run.ai/api/v2/token".into(),
            lifetime_seconds: Some(3600),
            expires_at: Some("2026-11-30T05:00:00Z".parse().unwrap()),
            subject: Some("app-1".into()),
            access_token: "the-token".into(),
        };
        let quiet = report.render(false);
        assert_eq!(
            quiet,
            "token API: V2 (POST https://acme.run.ai/api/v2/token)\nlifetime: 3600 s\nexpires at: 2026-11-30T05:00:00Z\nsubject: app-1\n"
        );
        assert!(report.render(true).ends_with("access token: the-token\n"));
        assert!(!format!("{report:?}").contains("the-token"));
    }
}
