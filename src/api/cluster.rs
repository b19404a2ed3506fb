//! ClusterRunaiCredential: one Run:ai application's token handed to many
//! namespaces, without handing out its client secret (api.md,
//! "ClusterRunaiCredential").

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ClientCredentialsSecretRef, Target, TokenApi};

/// The most failed namespaces a status lists.
pub const MAX_FAILED_NAMESPACES: usize = 20;

/// Keeps a Run:ai API access token fresh in a Secret of every matched
/// namespace. The client secret stays in the controller's namespace.
// Each printer column repeats `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tokensync.dev",
    version = "v1alpha1",
    kind = "ClusterRunaiCredential",
    plural = "clusterrunaicredentials",
    singular = "clusterrunaicredential",
    shortname = "crunaicred",
    status = "ClusterRunaiCredentialStatus",
    derive = "PartialEq",
    doc = "ClusterRunaiCredential keeps a Run:ai API access token fresh in a Secret of every namespace it selects.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every matched namespace holds a valid token"
    ),
    printcolumn(
        name = "Namespaces",
        type_ = "string",
        json_path = ".status.namespaces",
        description = "Namespaces synced / matched"
    ),
    printcolumn(
        name = "Expires",
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
pub struct ClusterRunaiCredentialSpec {
    /// Base URL of the Run:ai control plane, as in a RunaiCredential.
    #[schemars(extend("pattern" = "^https?://\\S+$"))]
    pub url: String,

    /// Which generation of the Run:ai token API to call, as in a
    /// RunaiCredential: `Auto` (default: V2, else V1 where V2 is not served),
    /// `V1`, `V2` or `AppToken`; the generation that answered is shown in
    /// `status.tokenApi`.
    #[serde(default)]
    pub token_api: TokenApi,

    /// The Secret holding the client ID and secret. Always read from the
    /// controller's own namespace, never from a team namespace.
    pub client_credentials_secret_ref: ClientCredentialsSecretRef,

    /// PEM-encoded CA certificates to trust for `url`, besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,

    /// The longest a token stays in the Secrets before it is replaced, as a
    /// duration such as `45m` or `1h30m` (see RunaiCredential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub refresh_interval: Option<String>,

    /// Namespaces whose labels match get the Secret (OR-ed with
    /// `namespaces`). Empty matches every namespace; absent matches none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Namespaces that get the Secret by name (OR-ed with
    /// `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,

    /// The Secret written into each matched namespace; `name` defaults to
    /// this ClusterRunaiCredential's name. With `deletionPolicy: Delete` the
    /// Secrets are owned by it and deleted with it, and a namespace that
    /// stops matching loses its Secret; with `Retain` they are released
    /// (the controller's labels and annotations removed, the data kept).
    #[serde(default)]
    pub target: Target,
}

/// A namespace whose Secret could not be written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct FailedNamespace {
    /// The namespace.
    pub namespace: String,
    /// As a RunaiCredential's Ready reason (`SecretConflict`, `SecretWriteFailed`).
    pub reason: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// The observed state of a ClusterRunaiCredential. It never holds a token or
/// a secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRunaiCredentialStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Degraded`, `Reconciling` and `Stalled`. Ready is True when
    /// every matched namespace holds a fresh token (`TokenReady`) or none
    /// matches (`NoMatchingNamespaces`); False with `NamespacesFailed` when
    /// some namespaces failed, or with the exchange's reason when there is no
    /// valid token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Namespaces that match (Terminating ones excluded).
    #[serde(default)]
    pub matched_namespaces: u32,

    /// Matched namespaces whose Secret holds the current token.
    #[serde(default)]
    pub synced_namespaces: u32,

    /// `synced/matched`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<String>,

    /// Namespaces whose Secret could not be written, at most 20 (in name
    /// order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_namespaces: Vec<FailedNamespace>,

    /// RFC 3339 time of the last successful token request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<String>,

    /// RFC 3339 expiry of the current token, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,

    /// RFC 3339 time of the planned next refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<String>,

    /// Consecutive failed refresh attempts since the last success.
    #[serde(default)]
    pub failed_attempts: u32,

    /// How many other RunaiCredentials and ClusterRunaiCredentials share
    /// this one's token exchange.
    #[serde(default)]
    pub shared_with: u32,

    /// The token API generation that issued the current token (`V1`, `V2`
    /// or `AppToken`); under `spec.tokenApi: Auto`, the one detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_api: Option<TokenApi>,
}

impl ClusterRunaiCredential {
    /// Name of the Secret in each namespace: `spec.target.name`, else the
    /// resource's name.
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
            .get(super::REFRESH_REQUESTED_AT_ANNOTATION)
            .map(String::as_str)
    }

    /// A condition of the status, by type.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}
