//! The `RunaiCredential` custom resource (`tokensync.dev/v1alpha1`).
//!
//! The doc comments on these types become the CRD's OpenAPI descriptions, so
//! they are written for the user who runs `kubectl explain runaicredential`.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a Secret's name must look like (a DNS subdomain).
pub const SECRET_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

pub mod cluster;
pub mod gaps;
pub mod template;

pub use cluster::{
    ClusterRunaiCredential, ClusterRunaiCredentialSpec, ClusterRunaiCredentialStatus,
    FailedNamespace,
};

/// API group of the custom resource.
pub const GROUP: &str = "tokensync.dev";

/// Annotation on a RunaiCredential: setting it to a new value requests an
/// immediate refresh, once per value.
pub const REFRESH_REQUESTED_AT_ANNOTATION: &str = "tokensync.dev/refresh-requested-at";

/// Condition type: the target Secret holds a valid token.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: refreshing fails although a token may still be valid.
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Condition type (kstatus): the current generation's token is not in place
/// yet, and the controller is working on it. Source: the kstatus conventions
/// of sigs.k8s.io/cli-utils, read by Flux, Argo CD and `kubectl wait`.
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// Condition type (kstatus): no progress without a change from a person.
pub const CONDITION_STALLED: &str = "Stalled";

/// Keeps a Run:ai API access token fresh in a Kubernetes Secret.
///
/// The controller requests a token from the Run:ai control plane at `spec.url`
/// with the client credentials of an application (service account), writes it
/// into the target Secret, and replaces it before it expires.
// Each printer column repeats `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tokensync.dev",
    version = "v1alpha1",
    kind = "RunaiCredential",
    plural = "runaicredentials",
    singular = "runaicredential",
    shortname = "runaicred",
    shortname = "runaicreds",
    namespaced,
    status = "RunaiCredentialStatus",
    derive = "PartialEq",
    doc = "RunaiCredential keeps a Run:ai API access token fresh in a Secret of its namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the target Secret holds a valid token"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.secretName",
        description = "The Secret the token is written to"
    ),
    printcolumn(
        name = "Expires",
        // `date` would render a future time as `<invalid>` in kubectl.
        type_ = "string",
        json_path = ".status.expirationTime",
        description = "When the current token expires"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1,
        description = "Why the credential is or is not ready"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RunaiCredentialSpec {
    /// Base URL of the Run:ai control plane: `https://<tenant>.run.ai` for SaaS,
    /// the Run:ai UI URL for a self-hosted installation. Only `https://` URLs are
    /// used; an `http://` URL is refused unless the controller runs with its
    /// insecure-HTTP flag, which exists for local testing only.
    // Loose on purpose: the controller's own check names what is wrong
    // (a query, credentials, a scheme) in the Ready condition.
    #[schemars(extend("pattern" = "^https?://\\S+$"))]
    pub url: String,

    /// Which generation of the Run:ai token API to call. `Auto` (default):
    /// `V2` first, `V1` when this Run:ai does not serve `/api/v2/token` (HTTP
    /// 404, 405, 410 or 501); the generation that answered is remembered and
    /// shown in `status.tokenApi`, and detected again when it stops being
    /// served. Refused credentials never cause a fallback. `V1`:
    /// `POST {url}/api/v1/token` with a JSON client-credentials grant, for
    /// Run:ai 2.19 and later (deprecated since 2.25). `V2`:
    /// `POST {url}/api/v2/token`, OAuth2 form-encoded, for the newest
    /// releases. `AppToken`: the legacy `app_token` grant of Run:ai 2.18 and
    /// older, never chosen by `Auto`.
    #[serde(default)]
    pub token_api: TokenApi,

    /// The Secret, in this RunaiCredential's namespace, that holds the client ID
    /// and client secret of the Run:ai application (service account).
    pub client_credentials_secret_ref: ClientCredentialsSecretRef,

    /// PEM-encoded CA certificates to trust for `url`, besides the system roots.
    /// Needed when a self-hosted Run:ai is served with a certificate from a
    /// private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,

    /// The longest a token stays in the Secret before it is replaced, as a
    /// duration such as `45m`, `1h30m` or `90s`. Without it, the next refresh
    /// is at two thirds of the token's lifetime (or after 30 minutes when the
    /// lifetime is unknown); with it, whichever comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub refresh_interval: Option<String>,

    /// The Secret the token is written to.
    #[serde(default)]
    pub target: Target,
}

/// Which generation of the Run:ai token API to call (runai-token-api.md:
/// V1 deprecated in Run:ai 2.25 in favour of V2, and removable two versions
/// later).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum TokenApi {
    /// `V2`, falling back to `V1` where V2 is not served; see
    /// `spec.tokenApi`.
    #[default]
    Auto,
    /// `POST {url}/api/v1/token` with `{"grantType":"client_credentials","clientId","clientSecret"}`.
    V1,
    /// `POST {url}/api/v2/token`, form-encoded OAuth2 client-credentials grant.
    V2,
    /// Legacy `POST {url}/api/v1/token` with `{"grantType":"app_token","AppId","AppSecret"}`.
    AppToken,
}

impl TokenApi {
    /// The name used in the spec, in logs and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenApi::Auto => "Auto",
            TokenApi::V1 => "V1",
            TokenApi::V2 => "V2",
            TokenApi::AppToken => "AppToken",
        }
    }

    /// The generation named `name` (as in the spec); `None` for another
    /// name.
    pub fn from_name(name: &str) -> Option<TokenApi> {
        [
            TokenApi::Auto,
            TokenApi::V1,
            TokenApi::V2,
            TokenApi::AppToken,
        ]
        .into_iter()
        .find(|api| api.as_str() == name)
    }
}

/// A reference to the Secret holding the client credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCredentialsSecretRef {
    /// Name of the Secret. It is always read from the RunaiCredential's own
    /// namespace.
    #[schemars(length(min = 1, max = 253), extend("pattern" = SECRET_NAME_PATTERN))]
    pub name: String,

    /// Key of the client ID (application ID) in the Secret's data.
    #[serde(default = "default_client_id_key")]
    #[schemars(length(min = 1))]
    pub client_id_key: String,

    /// Key of the client secret (application secret) in the Secret's data.
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(min = 1))]
    pub client_secret_key: String,
}

fn default_client_id_key() -> String {
    "clientId".to_owned()
}

fn default_client_secret_key() -> String {
    "clientSecret".to_owned()
}

/// The Secret the token is written to, in the RunaiCredential's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of the Secret. Defaults to the RunaiCredential's name. A Secret of
    /// that name that exists and is not managed by this RunaiCredential is never
    /// modified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), extend("pattern" = SECRET_NAME_PATTERN))]
    pub name: Option<String>,

    /// Key under which the raw access token (without a `Bearer ` prefix) is
    /// written.
    #[serde(default = "default_target_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,

    /// Labels put on the Secret, besides the controller's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations put on the Secret, besides the controller's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// What happens to the Secret when the RunaiCredential is deleted. `Delete`
    /// (default): the Secret is owned by the RunaiCredential and garbage-collected
    /// with it. `Retain`: the Secret is left in place.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// More keys derived from the same token, written in the same Secret
    /// write as `key` and replaced with it: an `Authorization` header value,
    /// an env file, a JSON document or a template. Each key must differ from
    /// `key`, from `expiresAt` and from the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
}

/// One more key of the target Secret, rendered from the token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// The Secret key (letters, digits, `-`, `_`, `.`; at most 253
    /// characters, as for any Secret key).
    #[schemars(length(min = 1, max = 253), extend("pattern" = SECRET_KEY_PATTERN))]
    pub key: String,

    /// `BearerHeader`: `Bearer <token>`. `EnvFile`: the lines
    /// `RUNAI_URL=<url>`, `RUNAI_TOKEN=<token>`, `RUNAI_TOKEN_EXPIRES_AT=<RFC 3339
    /// expiry, empty when unknown>`. `Json`: `{"url":…,"accessToken":…,"expiresAt":…}`
    /// (`null` when the expiry is unknown). `Template`: `template` with its
    /// placeholders replaced.
    pub format: OutputFormat,

    /// For `format: Template` only. The placeholders are `${token}`, `${url}`
    /// (`spec.url` as written) and `${expiresAt}` (RFC 3339 in UTC with whole
    /// seconds, empty when unknown); `$${` is a literal `${`. No functions: an
    /// unknown placeholder is an invalid spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// The shape of an output key's value; see [`Output::format`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OutputFormat {
    /// `Bearer <token>`: the value of an HTTP `Authorization` header (RFC 6750).
    BearerHeader,
    /// `RUNAI_URL`, `RUNAI_TOKEN` and `RUNAI_TOKEN_EXPIRES_AT` lines, for a
    /// shell's `source` or a tool's env file.
    EnvFile,
    /// A JSON object with `url`, `accessToken` and `expiresAt`.
    Json,
    /// The `template` field with its placeholders replaced.
    Template,
}

/// Characters a POSIX shell interprets in an unquoted `NAME=value` line:
/// refused in a URL written into an `EnvFile` output, which is meant to be
/// sourced.
const SHELL_SPECIAL: &str = "$`\\\"'\\;&|<>()*?[]{}~#! \t";

/// A Secret data key (Kubernetes `IsConfigMapKey`).
const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

fn default_target_key() -> String {
    "accessToken".to_owned()
}

impl Default for Target {
    fn default() -> Self {
        Target {
            name: None,
            key: default_target_key(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            deletion_policy: DeletionPolicy::default(),
            outputs: Vec::new(),
        }
    }
}

/// What happens to the target Secret when the RunaiCredential is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// The Secret is owned by the RunaiCredential and deleted with it.
    #[default]
    Delete,
    /// The Secret is left in place.
    Retain,
}

/// The observed state of a RunaiCredential. It never holds a token or a secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunaiCredentialStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` is True while the target Secret holds an unexpired token obtained
    /// with the current spec and credentials. `Degraded` is True while
    /// refreshing fails although the current token may still be valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The Secret the token is written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// When the current token was obtained (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<String>,

    /// When the current token expires (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,

    /// When the next refresh (or retry) is planned (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<String>,

    /// Consecutive failed refresh attempts since the last success.
    #[serde(default)]
    pub failed_attempts: u32,

    /// How many other RunaiCredentials share this one's token exchange (the
    /// same url, token API, CA certificates, client ID and client secret);
    /// 0 when none.
    #[serde(default)]
    pub shared_with: u32,

    /// The token API generation that issued the current token (`V1`, `V2`
    /// or `AppToken`); under `spec.tokenApi: Auto`, the one detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_api: Option<TokenApi>,
}

impl RunaiCredential {
    /// Name of the target Secret: `spec.target.name`, else the resource's name.
    pub fn target_secret_name(&self) -> String {
        self.spec
            .target
            .name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The value of the refresh annotation, if set.
    pub fn refresh_request(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(REFRESH_REQUESTED_AT_ANNOTATION)
            .map(String::as_str)
    }

    /// A condition of the status by type.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// The CRD generated from the types.
///
/// Two changes to what schemars writes (see [`for_kubernetes`]):
/// `nullable` is dropped from the schema, and integer formats Kubernetes
/// does not know become `int64`.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    for_kubernetes(<RunaiCredential as kube::CustomResourceExt>::crd())
}

/// The ClusterRunaiCredential CRD, generated from the types.
pub fn cluster_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    for_kubernetes(<ClusterRunaiCredential as kube::CustomResourceExt>::crd())
}

/// A CRD as the API server takes it without a warning:
///
/// - without the `nullable` marks schemars puts on optional fields: API
///   servers publish a nullable field without its type in OpenAPI v2, so
///   `kubectl explain` would show `<>` for every optional field. Optional
///   fields stay optional (set or absent, never null), and a `null` sent for
///   one is pruned by the API server.
/// - with the integer formats schemars writes for Rust's unsigned and small
///   integers (`uint32`, ...) replaced by `int64`, which holds each of their
///   values: Kubernetes knows only `int32` and `int64` among integer formats
///   (the list is k8s.io/kube-openapi's `strfmt` registry) and warns about
///   any other on every apply of the CRD ("unrecognized format"). The
///   `minimum` schemars writes for unsigned types stays.
fn for_kubernetes(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("nullable");
                if map.get("type").and_then(|t| t.as_str()) == Some("integer")
                    && matches!(
                        map.get("format").and_then(|f| f.as_str()),
                        Some("uint8" | "uint16" | "uint32" | "int8" | "int16")
                    )
                {
                    map.insert("format".to_owned(), "int64".into());
                }
                map.values_mut().for_each(clean);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(crd).expect("a CRD always serializes");
    clean(&mut value);
    serde_json::from_value(value).expect("these changes keep a valid CRD")
}

/// The CRD as YAML, as committed under `crds/`.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crd()).expect("a CRD always serializes")
}

/// The ClusterRunaiCredential CRD as YAML, as committed under `crds/`.
pub fn cluster_crd_yaml() -> String {
    serde_yaml::to_string(&cluster_crd()).expect("a CRD always serializes")
}

// Validation of what the CRD schema cannot check.

/// What a valid spec resolves to.
#[derive(Debug)]
pub struct ValidSpec {
    pub url: url::Url,
    /// `spec.refreshInterval`, parsed.
    pub refresh_interval: Option<std::time::Duration>,
}

/// Checks what the CRD schema cannot: URL details, duration syntax, names.
///
/// # Errors
///
/// [`crate::Error::InvalidSpec`] naming the field and what is wrong with it.
pub fn validate_spec(
    cr: &RunaiCredential,
    allow_insecure_http: bool,
) -> Result<ValidSpec, crate::Error> {
    validate_source(
        &cr.spec.url,
        cr.spec.refresh_interval.as_deref(),
        &cr.spec.target,
        allow_insecure_http,
    )
}

/// Checks a ClusterRunaiCredential's spec as [`validate_spec`] does, and its
/// namespace selection.
///
/// # Errors
///
/// [`crate::Error::InvalidSpec`] naming the field and what is wrong with it.
pub fn validate_cluster_spec(
    crc: &ClusterRunaiCredential,
    allow_insecure_http: bool,
) -> Result<ValidSpec, crate::Error> {
    let invalid = |field, message: String| crate::Error::InvalidSpec { field, message };
    if let Some(selector) = &crc.spec.namespace_selector {
        kube::core::Selector::try_from(selector.clone())
            .map_err(|e| invalid("spec.namespaceSelector", e.to_string()))?;
    }
    // api.md, "ClusterRunaiCredential: safe selection": an empty selector
    // (a Kubernetes LabelSelector without requirements selects everything)
    // and no names would hand the token to every namespace; neither field
    // is read the same way, as a mistake rather than as "none".
    let empty_selector = crc.spec.namespace_selector.as_ref().is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(|l| l.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    if empty_selector && crc.spec.namespaces.is_empty() {
        return Err(invalid(
            "spec.namespaceSelector",
            "matches every namespace; name the namespaces or give a non-empty selector".to_owned(),
        ));
    }
    if let Some(name) = crc.spec.namespaces.iter().find(|n| !is_dns_label(n)) {
        return Err(invalid(
            "spec.namespaces",
            format!("{name:?} is not a namespace name"),
        ));
    }
    validate_source(
        &crc.spec.url,
        crc.spec.refresh_interval.as_deref(),
        &crc.spec.target,
        allow_insecure_http,
    )
}

/// Longest `refreshInterval` text, in bytes; also the CRD's `maxLength`.
pub const MAX_REFRESH_INTERVAL_LEN: usize = 64;
/// Longest run of digits in a `refreshInterval`: humantime panics on sums
/// that overflow `Duration` (`18446744073709551615s 1000000000ns`), and no
/// sensible interval needs more than 9 digits in one term.
const MAX_DIGITS: usize = 9;

/// Parses a `refreshInterval` such as `45m`, `1h30m` or `90s` (humantime's
/// syntax). Values above the schedule's longest wait (`token::schedule::MAX_REFRESH_AFTER`) are accepted; the schedule
/// caps them.
///
/// # Errors
///
/// A message naming the text when it is not such a duration, is longer than
/// [`MAX_REFRESH_INTERVAL_LEN`] or has a number of more than 9 digits, or is
/// shorter than 10 s.
pub fn parse_refresh_interval(text: &str) -> Result<Duration, String> {
    let longest_number = text
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    if text.len() > MAX_REFRESH_INTERVAL_LEN || longest_number > MAX_DIGITS {
        return Err(format!(
            "{:?} is not a duration such as 45m, 1h30m or 90s (too long)",
            text.chars()
                .take(MAX_REFRESH_INTERVAL_LEN)
                .collect::<String>()
        ));
    }
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 45m, 1h30m or 90s ({e})"))?;
    if d < Duration::from_secs(10) {
        return Err(format!("{text:?} is shorter than the minimum of 10s"));
    }
    Ok(d)
}

/// Data key of the token's expiry (RFC 3339), when known: reserved in
/// every target Secret, so neither `target.key` nor an output may use it.
pub const EXPIRES_AT_KEY: &str = "expiresAt";

/// What both kinds share: the URL, the refresh interval and the target.
fn validate_source(
    url: &str,
    refresh_interval: Option<&str>,
    target: &Target,
    allow_insecure_http: bool,
) -> Result<ValidSpec, crate::Error> {
    let invalid = |field, message: String| crate::Error::InvalidSpec { field, message };
    let written = url;
    let url = validate_url(url, allow_insecure_http)?;
    let refresh_interval = refresh_interval
        .map(parse_refresh_interval)
        .transpose()
        .map_err(|m| invalid("spec.refreshInterval", m))?;
    let key = &target.key;
    if key == EXPIRES_AT_KEY
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(invalid(
            "spec.target.key",
            format!(
                "{key:?} is not a usable Secret key (letters, digits, '-', '_', '.'; not {:?})",
                EXPIRES_AT_KEY
            ),
        ));
    }
    // Checked here too, not only by the schema: a Secret write that the API
    // server refuses would otherwise cost a token request on every retry.
    if let Some(name) = &target.name
        && !is_dns_subdomain(name)
    {
        return Err(invalid(
            "spec.target.name",
            format!(
                "{name:?} is not a valid Secret name (lower-case letters, digits, '-' and '.')"
            ),
        ));
    }
    if let Some((key, value)) = target
        .labels
        .iter()
        .find(|(k, v)| !is_qualified_name(k) || !is_label_value(v))
    {
        return Err(invalid(
            "spec.target.labels",
            format!(
                "{key:?}: {value:?} is not a valid label (keys like example.com/name, values of at most 63 letters, digits, '-', '_', '.')"
            ),
        ));
    }
    if let Some(key) = target.annotations.keys().find(|k| !is_qualified_name(k)) {
        return Err(invalid(
            "spec.target.annotations",
            format!("{key:?} is not a valid annotation key (like example.com/name)"),
        ));
    }
    if let Some(key) = target
        .labels
        .keys()
        .chain(target.annotations.keys())
        .find(|k| k.starts_with("tokensync.dev/") || k.as_str() == "app.kubernetes.io/managed-by")
    {
        return Err(invalid(
            "spec.target.labels",
            format!("{key:?} is the controller's own; it marks which Secrets it manages"),
        ));
    }
    check_outputs(target).map_err(|m| invalid("spec.target.outputs", m))?;
    if target
        .outputs
        .iter()
        .any(|o| o.format == OutputFormat::EnvFile)
        && let Some(c) = written.trim().chars().find(|c| SHELL_SPECIAL.contains(*c))
    {
        return Err(invalid(
            "spec.url",
            format!(
                "contains {c:?}, which a shell reading the EnvFile output would interpret; use the URL without it"
            ),
        ));
    }
    Ok(ValidSpec {
        url,
        refresh_interval,
    })
}

/// Checks a Run:ai base URL as `spec.url` is checked: `https://` (or
/// `http://` with `allow_insecure_http`), a host, no user information (the
/// credentials belong in the Secret), no query or fragment.
///
/// # Errors
///
/// [`crate::Error::InvalidSpec`] on `spec.url`, saying what is wrong.
pub fn validate_url(raw: &str, allow_insecure_http: bool) -> Result<url::Url, crate::Error> {
    let invalid = |field, message: String| crate::Error::InvalidSpec { field, message };
    let url = url::Url::parse(raw.trim())
        .map_err(|e| invalid("spec.url", format!("{raw:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => {
            return Err(invalid(
                "spec.url",
                "http:// is refused because the client secret would travel in clear text; use https:// (the controller accepts http:// only when started with --allow-insecure-http, for local testing)".to_owned(),
            ));
        }
        other => {
            return Err(invalid(
                "spec.url",
                format!("scheme {other:?} is not supported; use https://"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("spec.url", "has no host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "spec.url",
            "must not contain credentials; put them in the credentials Secret".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "spec.url",
            "must not have a query or fragment".to_owned(),
        ));
    }
    Ok(url)
}

/// Checks `target.outputs`: usable and distinct keys, and formats and
/// templates that render.
///
/// # Errors
///
/// A message saying which output is wrong and why.
pub fn check_outputs(target: &Target) -> Result<(), String> {
    let mut taken = std::collections::BTreeSet::from([target.key.as_str(), EXPIRES_AT_KEY]);
    for output in &target.outputs {
        let key = output.key.as_str();
        if key.is_empty()
            || key.len() > 253
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(format!(
                "{key:?} is not a usable Secret key (letters, digits, '-', '_', '.')"
            ));
        }
        if !taken.insert(key) {
            return Err(format!(
                "key {key:?} is used twice (by target.key, by expiresAt or by another output)"
            ));
        }
        template::check(output)?;
    }
    Ok(())
}

/// A DNS label (RFC 1123), as namespace names are.
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// A DNS subdomain (RFC 1123), as Kubernetes object names are.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A label value: empty, or up to 63 alphanumerics, '-', '_', '.', starting
/// and ending with an alphanumeric.
fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label or annotation key: an optional DNS-subdomain prefix and '/', then
/// a name of the label-value shape.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    #[test]
    fn refresh_interval_syntax() {
        assert_eq!(parse_refresh_interval("45m"), Ok(Duration::from_secs(2700)));
        assert_eq!(
            parse_refresh_interval("1h30m"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(parse_refresh_interval("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_refresh_interval("soon").is_err());
        assert!(parse_refresh_interval("1s").is_err());
        assert_eq!(
            parse_refresh_interval("2d"),
            Ok(Duration::from_secs(172_800))
        );
        // Sums that would overflow inside the parser are refused, not a panic.
        for huge in [
            "18446744073709551615s 1000000000ns",
            "18446744073709551615s 999999999ns 1ns",
            "9999999999h",
            &"1h".repeat(40),
        ] {
            assert!(parse_refresh_interval(huge).is_err(), "{huge}");
        }
    }
    use crate::Error;

    fn cr(url: &str) -> RunaiCredential {
        let spec: RunaiCredentialSpec = serde_json::from_value(serde_json::json!({
            "url": url,
            "clientCredentialsSecretRef": {"name": "c"},
        }))
        .unwrap();
        RunaiCredential::new("trainer", spec)
    }

    fn field_of(result: Result<ValidSpec, Error>) -> &'static str {
        match result {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn the_controllers_own_labels_and_shell_unsafe_env_file_urls_are_refused() {
        for key in [
            "tokensync.dev/cluster-credential",
            "app.kubernetes.io/managed-by",
        ] {
            let mut labelled = cr("https://acme.run.ai");
            labelled.spec.target.labels.insert(key.into(), "x".into());
            assert_eq!(
                field_of(validate_spec(&labelled, false)),
                "spec.target.labels",
                "{key}"
            );
        }
        let env_file = |url: &str| {
            let mut with = cr(url);
            with.spec.target.outputs.push(Output {
                key: "runai.env".into(),
                format: OutputFormat::EnvFile,
                template: None,
            });
            validate_spec(&with, false)
        };
        assert!(env_file("https://acme.run.ai/runai/").is_ok());
        assert!(
            env_file(" https://acme.run.ai ").is_ok(),
            "spaces around are trimmed"
        );
        assert_eq!(field_of(env_file("https://acme.run.ai/$(id)")), "spec.url");
        assert_eq!(field_of(env_file("https://acme.run.ai/a;b")), "spec.url");
        // The same URL without an EnvFile output is fine.
        assert!(validate_spec(&cr("https://acme.run.ai/a;b"), false).is_ok());
    }

    #[test]
    fn spec_validation_names_the_field() {
        assert!(validate_spec(&cr("https://acme.run.ai"), false).is_ok());
        assert_eq!(
            field_of(validate_spec(&cr("http://acme.run.ai"), false)),
            "spec.url"
        );
        assert!(validate_spec(&cr("http://127.0.0.1:8080"), true).is_ok());
        assert_eq!(
            field_of(validate_spec(&cr("https://u:p@acme.run.ai"), false)),
            "spec.url"
        );
        assert_eq!(
            field_of(validate_spec(&cr("https://acme.run.ai/?a=b"), false)),
            "spec.url"
        );
        let mut bad_interval = cr("https://acme.run.ai");
        bad_interval.spec.refresh_interval = Some("often".into());
        assert_eq!(
            field_of(validate_spec(&bad_interval, false)),
            "spec.refreshInterval"
        );
        let mut bad_key = cr("https://acme.run.ai");
        bad_key.spec.target.key = "expiresAt".into();
        assert_eq!(field_of(validate_spec(&bad_key, false)), "spec.target.key");
        let mut bad_name = cr("https://acme.run.ai");
        bad_name.spec.target.name = Some("Not_A_Name".into());
        assert_eq!(
            field_of(validate_spec(&bad_name, false)),
            "spec.target.name"
        );
        let mut bad_label = cr("https://acme.run.ai");
        bad_label.spec.target.labels = [("team".to_owned(), "has space".to_owned())].into();
        assert_eq!(
            field_of(validate_spec(&bad_label, false)),
            "spec.target.labels"
        );
        let mut bad_annotation = cr("https://acme.run.ai");
        bad_annotation.spec.target.annotations = [("/oops".to_owned(), "x".to_owned())].into();
        assert_eq!(
            field_of(validate_spec(&bad_annotation, false)),
            "spec.target.annotations"
        );
        let mut fine = cr("https://acme.run.ai");
        fine.spec.target.name = Some("trainer-token.v1".into());
        fine.spec.target.labels = [
            ("example.com/team".to_owned(), "ml_1".to_owned()),
            ("empty".to_owned(), String::new()),
        ]
        .into();
        fine.spec.target.annotations =
            [("example.com/owner".to_owned(), "any text at all".to_owned())].into();
        assert!(validate_spec(&fine, false).is_ok());
        let mut long = cr("https://acme.run.ai");
        long.metadata.name = Some("x".repeat(70));
        assert!(validate_spec(&long, false).is_ok(), "long names work");
        for url in [
            "https://host/runai",
            "https://host/runai/",
            "https://host:8443/a/b/",
        ] {
            assert!(validate_spec(&cr(url), false).is_ok(), "{url}");
        }
        for url in [
            "https://host/runai?x=1",
            "https://host/runai#top",
            "https://host/?",
        ] {
            assert_eq!(
                field_of(validate_spec(&cr(url), false)),
                "spec.url",
                "{url}"
            );
        }
    }
}
