//! The shape of the target Secret, and what it records about its token.
//!
//! Everything the controller needs to know after a restart is kept on the
//! Secret itself: when the token was issued and expires, and keyed hashes of
//! the credentials and of the token. Never the client secret.

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt};
use sha2::Sha256;

use crate::{
    api::{ClientCredentialsSecretRef, DeletionPolicy, RunaiCredential, TokenApi},
    error::Error,
    runai::client::ClientCredentials,
    token::schedule::TokenRecord,
};

/// Label on every Secret the controller writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "runai-token-sync";
/// Label naming the RunaiCredential a Secret belongs to.
pub const CREDENTIAL_LABEL: &str = "tokensync.dev/credential";
/// Label naming the ClusterRunaiCredential a Secret belongs to (instead of
/// [`CREDENTIAL_LABEL`]).
pub const CLUSTER_CREDENTIAL_LABEL: &str = "tokensync.dev/cluster-credential";
/// Longest label value (Kubernetes label syntax).
const MAX_LABEL_VALUE: usize = 63;
/// Characters of a long name kept before the hash in its label value.
const LABEL_NAME_PREFIX: usize = 54;

/// The value of [`CREDENTIAL_LABEL`] for a RunaiCredential name: the name
/// itself when it fits a label value (63 characters at most, a Kubernetes
/// limit), else its first 54 characters, `-` and 8 hex digits of the
/// SHA-256 of the whole name, so that long names still work and stay apart.
pub fn credential_label_value(name: &str) -> String {
    if name.len() <= MAX_LABEL_VALUE {
        return name.to_owned();
    }
    use sha2::Digest as _;
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Object names are ASCII, so byte and character counts agree.
    format!("{}-{hash}", &name[..LABEL_NAME_PREFIX])
}

pub use crate::api::EXPIRES_AT_KEY;

/// The prefix of the annotations that hold the token's record: all of
/// them are the controller's.
const RECORD_ANNOTATION_PREFIX: &str = "tokensync.dev/";
const ISSUED_AT_ANNOTATION: &str = "tokensync.dev/issued-at";
const CREDENTIALS_HASH_ANNOTATION: &str = "tokensync.dev/credentials-hash";
const TOKEN_HASH_ANNOTATION: &str = "tokensync.dev/token-hash";
const GENERATION_ANNOTATION: &str = "tokensync.dev/generation";
const REFRESH_REQUEST_ANNOTATION: &str = "tokensync.dev/answered-refresh-request";
const DEFINITION_ANNOTATION: &str = "tokensync.dev/definition-hash";
/// The token API generation that issued the token (`V1`, `V2`, `AppToken`).
const TOKEN_API_ANNOTATION: &str = "tokensync.dev/token-api";

/// The key for the keyed hashes kept on target Secrets. A keyed hash, unlike
/// a plain one, cannot be used to guess a weak client secret offline by
/// someone who can read the target Secret.
#[derive(Clone)]
pub struct HashKey(Vec<u8>);

impl HashKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        HashKey(bytes)
    }

    fn digest(&self, parts: &[&str]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        for part in parts {
            // Length-prefixed, so that ("ab","c") and ("a","bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let bytes = mac.finalize().into_bytes();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Hash of everything a token depends on.
    pub fn credentials_hash(&self, url: &str, api: TokenApi, creds: &ClientCredentials) -> String {
        self.digest(&[
            "credentials/v1",
            url,
            api.as_str(),
            &creds.client_id,
            &creds.client_secret,
        ])
    }

    /// Hash of what defines a credential besides its url, token API and
    /// credentials ([`HashKey::credentials_hash`]): the trusted CAs (their
    /// [`TrustKey`](crate::runai::client::TrustKey), whatever the PEM's
    /// formatting) and the credentials Secret's name and keys.
    pub fn definition_hash(
        &self,
        trust: &crate::runai::client::TrustKey,
        reference: &ClientCredentialsSecretRef,
    ) -> String {
        let trust: String = trust.iter().flatten().map(|b| format!("{b:02x}")).collect();
        self.digest(&[
            "definition/v1",
            &trust,
            &reference.name,
            &reference.client_id_key,
            &reference.client_secret_key,
        ])
    }

    /// Hash of a token and of everything recorded about it, to notice when
    /// someone changed either in the Secret (a forged expiry would otherwise
    /// postpone refreshes). A record without a definition is hashed as it
    /// was before the definition was kept, so that such Secrets stay intact.
    pub fn token_hash(&self, token: &str, record: &TokenRecord) -> String {
        let expires_at = record.expires_at.map(rfc3339).unwrap_or_default();
        let (issued_at, generation) = (rfc3339(record.issued_at), record.generation.to_string());
        let mut parts = vec![
            "token/v2",
            token,
            &issued_at,
            &expires_at,
            &record.credentials_hash,
            &generation,
            record.refresh_request.as_deref().unwrap_or_default(),
        ];
        if let Some(definition) = &record.definition {
            parts[0] = "token/v3";
            parts.push(definition);
        }
        self.digest(&parts)
    }
}

pub use crate::token::schedule::hashes_equal;

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey([redacted])")
    }
}

/// What exists under the target Secret's name. `Debug` never shows the
/// Secret's data.
pub enum TargetSecret {
    Missing,
    /// Exists and belongs to someone else: never touched.
    Foreign,
    Managed(Box<Secret>),
}

impl std::fmt::Debug for TargetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSecret::Missing => f.write_str("Missing"),
            TargetSecret::Foreign => f.write_str("Foreign"),
            TargetSecret::Managed(secret) => f
                .debug_tuple("Managed")
                .field(&secret.metadata.name)
                .finish(),
        }
    }
}

impl TargetSecret {
    /// What `existing` is to `credential` ([`is_managed`]).
    pub fn classify(existing: Option<Secret>, credential: &RunaiCredential) -> Self {
        let name = credential.name_any();
        let label = credential_label_value(&name);
        let uid = credential.uid();
        let manager = Manager {
            label: (CREDENTIAL_LABEL, &label),
            kind: "RunaiCredential",
            name: &name,
            uid: uid.as_deref(),
        };
        match existing {
            None => TargetSecret::Missing,
            Some(secret) if is_managed(&secret, &manager) => {
                TargetSecret::Managed(Box::new(secret))
            }
            Some(_) => TargetSecret::Foreign,
        }
    }
}

/// A credential, as the owner of Secrets: the label that names it on them,
/// its kind, name and uid.
#[derive(Clone, Copy, Debug)]
pub struct Manager<'a> {
    /// [`CREDENTIAL_LABEL`] or [`CLUSTER_CREDENTIAL_LABEL`], and its value.
    pub label: (&'static str, &'a str),
    /// `RunaiCredential` or `ClusterRunaiCredential`.
    pub kind: &'static str,
    pub name: &'a str,
    pub uid: Option<&'a str>,
}

/// Whether `secret` is managed by `manager`, the one rule for both kinds:
///
/// - its controller owner reference is `manager` (by uid): ours, even if
///   someone removed its labels, so that it is put right;
/// - or it is labelled for `manager` (managed-by and the credential label)
///   and every controller owner reference it has is `manager`'s, or that of
///   an earlier object of the same kind and name (another uid: names are
///   unique, so that object no longer exists). A credential deleted and
///   created again takes over the Secret it left behind (api.md,
///   "Recreated credentials"); one owned by any other object stays a
///   conflict.
pub fn is_managed(secret: &Secret, manager: &Manager<'_>) -> bool {
    let controllers = || {
        secret
            .owner_references()
            .iter()
            .filter(|o| o.controller == Some(true))
    };
    let owned = manager
        .uid
        .is_some_and(|uid| controllers().any(|o| o.uid == uid && o.kind == manager.kind));
    let labels = secret.labels();
    let labelled = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(manager.label.0).map(String::as_str) == Some(manager.label.1);
    owned || (labelled && controllers().all(|o| o.kind == manager.kind && o.name == manager.name))
}

/// The token held by a managed Secret, with its record. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub access_token: String,
    pub record: TokenRecord,
    /// Whether the token is still the one the record describes.
    pub intact: bool,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("record", &self.record)
            .field("intact", &self.intact)
            .finish_non_exhaustive()
    }
}

/// Reads the token and its record from a managed Secret; `None` when either
/// is missing or unreadable (the Secret is then rewritten with a new token).
pub fn stored_token(secret: &Secret, token_key: &str, hash_key: &HashKey) -> Option<StoredToken> {
    let annotations = secret.annotations();
    let data = secret.data.as_ref()?;
    let access_token = String::from_utf8(data.get(token_key)?.0.clone()).ok()?;
    let expires_at = match data.get(EXPIRES_AT_KEY) {
        Some(bytes) => Some(std::str::from_utf8(&bytes.0).ok()?.parse().ok()?),
        None => None,
    };
    let record = TokenRecord {
        issued_at: annotations.get(ISSUED_AT_ANNOTATION)?.parse().ok()?,
        expires_at,
        credentials_hash: annotations.get(CREDENTIALS_HASH_ANNOTATION)?.clone(),
        generation: annotations.get(GENERATION_ANNOTATION)?.parse().ok()?,
        refresh_request: annotations.get(REFRESH_REQUEST_ANNOTATION).cloned(),
        definition: annotations.get(DEFINITION_ANNOTATION).cloned(),
        token_api: annotations
            .get(TOKEN_API_ANNOTATION)
            .and_then(|name| TokenApi::from_name(name))
            .filter(|api| *api != TokenApi::Auto),
    };
    let stored_hash = annotations.get(TOKEN_HASH_ANNOTATION);
    let matches = |record: &TokenRecord| {
        !access_token.is_empty()
            && stored_hash.is_some_and(|stored| {
                hashes_equal(stored, &hash_key.token_hash(&access_token, record))
            })
    };
    if !matches(&record) && record.refresh_request.is_some() {
        // An answered request left behind by a write that could not remove
        // it (as one made by a server-side apply after a create could not):
        // the token is still the one recorded, for no request. The optional
        // annotation never invalidates it; the next write removes it.
        let without = TokenRecord {
            refresh_request: None,
            ..record.clone()
        };
        if matches(&without) {
            return Some(StoredToken {
                access_token,
                record: without,
                intact: true,
            });
        }
    }
    let intact = matches(&record);
    Some(StoredToken {
        access_token,
        record,
        intact,
    })
}

/// The Secret as it must be: token, expiry, labels, annotations and, with
/// `deletionPolicy: Delete`, the controller owner reference.
pub fn desired_secret(
    credential: &RunaiCredential,
    token: &str,
    record: &TokenRecord,
    hash_key: &HashKey,
) -> Secret {
    let target = &credential.spec.target;
    let owner = SecretOwner {
        secret_name: credential.target_secret_name(),
        namespace: credential.namespace().unwrap_or_default(),
        label: (
            CREDENTIAL_LABEL,
            credential_label_value(&credential.name_any()),
        ),
        owner_reference: match target.deletion_policy {
            DeletionPolicy::Delete => credential.controller_owner_ref(&()),
            DeletionPolicy::Retain => None,
        },
    };
    desired_secret_for(
        &owner,
        target,
        credential.spec.url.trim(),
        token,
        record,
        hash_key,
    )
}

/// Whose Secret it is: where it goes, the label that names its owner, and
/// the owner reference (with `deletionPolicy: Delete`).
#[derive(Clone, Debug)]
pub struct SecretOwner {
    pub secret_name: String,
    pub namespace: String,
    /// [`CREDENTIAL_LABEL`] or [`CLUSTER_CREDENTIAL_LABEL`], and its value.
    pub label: (&'static str, String),
    pub owner_reference: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// The Secret as it must be for `owner`, from `target` and the token
/// obtained from `url` (`spec.url` as written).
pub fn desired_secret_for(
    owner: &SecretOwner,
    target: &crate::api::Target,
    url: &str,
    token: &str,
    record: &TokenRecord,
    hash_key: &HashKey,
) -> Secret {
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    labels.insert(owner.label.0.to_owned(), owner.label.1.clone());

    let mut annotations = target.annotations.clone();
    annotations.insert(ISSUED_AT_ANNOTATION.to_owned(), rfc3339(record.issued_at));
    annotations.insert(
        CREDENTIALS_HASH_ANNOTATION.to_owned(),
        record.credentials_hash.clone(),
    );
    annotations.insert(
        TOKEN_HASH_ANNOTATION.to_owned(),
        hash_key.token_hash(token, record),
    );
    annotations.insert(
        GENERATION_ANNOTATION.to_owned(),
        record.generation.to_string(),
    );
    if let Some(request) = &record.refresh_request {
        annotations.insert(REFRESH_REQUEST_ANNOTATION.to_owned(), request.clone());
    }
    if let Some(api) = record.token_api {
        annotations.insert(TOKEN_API_ANNOTATION.to_owned(), api.as_str().to_owned());
    }
    if let Some(definition) = &record.definition {
        annotations.insert(DEFINITION_ANNOTATION.to_owned(), definition.clone());
    }

    let mut data = BTreeMap::new();
    data.insert(target.key.clone(), ByteString(token.as_bytes().to_vec()));
    // Rendered with the token, so that all keys change in one write.
    for output in &target.outputs {
        data.insert(
            output.key.clone(),
            ByteString(super::formats::render(output, token, url, record.expires_at).into_bytes()),
        );
    }
    if let Some(expires_at) = record.expires_at {
        data.insert(
            EXPIRES_AT_KEY.to_owned(),
            ByteString(rfc3339(expires_at).into_bytes()),
        );
    }

    Secret {
        metadata: ObjectMeta {
            name: Some(owner.secret_name.clone()),
            namespace: Some(owner.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner.owner_reference.clone().map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// A JSON merge patch that releases a Secret from the controller: its labels
/// ([`MANAGED_BY_LABEL`], [`CREDENTIAL_LABEL`], [`CLUSTER_CREDENTIAL_LABEL`]), its `tokensync.dev/`
/// annotations and the owner reference of `owner_uid` are removed; the data
/// and everything else stay. The `resourceVersion` read is a precondition.
pub fn release_patch(secret: &Secret, owner_uid: Option<&str>) -> serde_json::Value {
    let annotations: serde_json::Map<String, serde_json::Value> = secret
        .annotations()
        .keys()
        .filter(|k| k.starts_with(RECORD_ANNOTATION_PREFIX))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    let owners: Vec<_> = secret
        .owner_references()
        .iter()
        .filter(|o| Some(o.uid.as_str()) != owner_uid)
        .cloned()
        .collect();
    serde_json::json!({
        "metadata": {
            "resourceVersion": secret.metadata.resource_version,
            "labels": {MANAGED_BY_LABEL: null, CREDENTIAL_LABEL: null, CLUSTER_CREDENTIAL_LABEL: null},
            "annotations": annotations,
            "ownerReferences": owners,
        }
    })
}

/// The owner references `existing` must have for `desired`, when they
/// differ in the controller's own (kinds `RunaiCredential` and
/// `ClusterRunaiCredential`): those of others kept, ours as desired. `None`
/// when nothing is to change.
pub fn owners_to_set(
    existing: &Secret,
    desired: &Secret,
) -> Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>> {
    let ours = |r: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference| {
        matches!(
            r.kind.as_str(),
            "RunaiCredential" | "ClusterRunaiCredential"
        )
    };
    let have: Vec<_> = existing.owner_references().iter().filter(ours).collect();
    let want: Vec<_> = desired.owner_references().iter().filter(ours).collect();
    // The same owners, with the same controller flag: one of ours that lost
    // the flag is set again (else `needs_repair` would find it wrong for good).
    if have.len() == want.len()
        && have.iter().all(|h| {
            want.iter()
                .any(|w| w.uid == h.uid && w.controller == h.controller)
        })
    {
        return None;
    }
    Some(
        existing
            .owner_references()
            .iter()
            .filter(|r| !ours(r))
            .chain(desired.owner_references().iter())
            .cloned()
            .collect(),
    )
}

/// Whether a managed Secret must be deleted and created again rather than
/// updated: it was made `immutable`, or its type is not `Opaque` (a Secret's
/// type cannot be changed in place).
pub fn needs_replacement(existing: &Secret) -> bool {
    existing.immutable == Some(true) || existing.type_.as_deref().unwrap_or("Opaque") != "Opaque"
}

/// The field manager of every write the controller makes, and the name
/// under which the API server records what it owns of an object
/// (`metadata.managedFields`).
pub const FIELD_MANAGER: &str = "runai-token-sync";

/// The keys of a Secret's labels, annotations and data that the controller
/// owns: those the API server records under [`FIELD_MANAGER`] (whatever the
/// operation: a create, a merge patch, and the server-side applies of
/// earlier versions), and every `tokensync.dev/` annotation (the token's
/// record, ours by name). A key someone else changed since is theirs, and
/// so is one that someone else set too (it stays when the controller stops
/// setting it); a key nobody set is nobody's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedKeys {
    pub labels: BTreeSet<String>,
    pub annotations: BTreeSet<String>,
    pub data: BTreeSet<String>,
}

/// What the controller owns of `secret` (see [`OwnedKeys`]), read from its
/// `metadata.managedFields` (fieldsV1, the only format the API server
/// writes; an entry of a subresource owns nothing of these).
pub fn owned_keys(secret: &Secret) -> OwnedKeys {
    fn keys(fields: Option<&serde_json::Value>, into: &mut BTreeSet<String>) {
        let Some(serde_json::Value::Object(fields)) = fields else {
            return;
        };
        into.extend(
            fields
                .keys()
                .filter_map(|k| k.strip_prefix("f:"))
                .map(str::to_owned),
        );
    }
    let (mut owned, mut others) = (OwnedKeys::default(), OwnedKeys::default());
    for entry in secret.managed_fields() {
        if entry.subresource.as_deref().is_some_and(|s| !s.is_empty()) {
            continue;
        }
        let Some(fields) = &entry.fields_v1 else {
            continue;
        };
        let into = if entry.manager.as_deref() == Some(FIELD_MANAGER) {
            &mut owned
        } else {
            &mut others
        };
        let metadata = fields.0.get("f:metadata");
        keys(metadata.and_then(|m| m.get("f:labels")), &mut into.labels);
        keys(
            metadata.and_then(|m| m.get("f:annotations")),
            &mut into.annotations,
        );
        keys(fields.0.get("f:data"), &mut into.data);
    }
    // A key someone else also set (with the same value) is theirs as well:
    // it stays when the controller stops setting it.
    owned.labels.retain(|k| !others.labels.contains(k));
    owned
        .annotations
        .retain(|k| !others.annotations.contains(k));
    owned.data.retain(|k| !others.data.contains(k));
    owned.annotations.extend(
        secret
            .annotations()
            .keys()
            .filter(|k| k.starts_with(RECORD_ANNOTATION_PREFIX))
            .cloned(),
    );
    owned
}

/// The keys the controller owns in `existing` that `desired` no longer
/// sets: an output, a `target.labels` or `target.annotations` key, an
/// answered refresh request, removed since the Secret was written.
pub fn stale_keys(existing: &Secret, desired: &Secret) -> OwnedKeys {
    fn stale<V>(
        owned: BTreeSet<String>,
        have: Option<&BTreeMap<String, V>>,
        want: Option<&BTreeMap<String, V>>,
    ) -> BTreeSet<String> {
        owned
            .into_iter()
            .filter(|k| have.is_some_and(|h| h.contains_key(k)))
            .filter(|k| !want.is_some_and(|w| w.contains_key(k)))
            .collect()
    }
    let owned = owned_keys(existing);
    OwnedKeys {
        labels: stale(
            owned.labels,
            existing.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
        ),
        annotations: stale(
            owned.annotations,
            existing.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
        ),
        data: stale(owned.data, existing.data.as_ref(), desired.data.as_ref()),
    }
}

/// The JSON merge patch (RFC 7386) that turns the managed Secret `existing`
/// into `desired` as far as the controller is concerned: the labels,
/// annotations and data keys that differ are set, the keys it owns and no
/// longer sets are removed, its owner reference is set or removed (others'
/// kept). Nothing else is named, so nothing else is touched. The
/// `resourceVersion` read is a precondition: a Secret changed since is read
/// again, never overwritten.
///
/// Sent under [`FIELD_MANAGER`], like the create, so that the API server
/// records one owner (operation `Update`) for all the controller set: a
/// server-side apply after a create would be a second owner of the same
/// manager, and an apply never removes what the create set.
pub fn update_patch(existing: &Secret, desired: &Secret) -> serde_json::Value {
    use serde_json::{Map, Value};
    fn changes<V: PartialEq + serde::Serialize>(
        have: Option<&BTreeMap<String, V>>,
        want: Option<&BTreeMap<String, V>>,
        stale: &BTreeSet<String>,
    ) -> Map<String, Value> {
        let mut patch: Map<String, Value> = want
            .into_iter()
            .flatten()
            .filter(|(k, v)| have.and_then(|h| h.get(*k)) != Some(*v))
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
            .collect();
        patch.extend(stale.iter().map(|k| (k.clone(), Value::Null)));
        patch
    }
    let stale = stale_keys(existing, desired);
    let mut metadata = Map::new();
    metadata.insert(
        "resourceVersion".to_owned(),
        serde_json::to_value(&existing.metadata.resource_version).unwrap_or(Value::Null),
    );
    let labels = changes(
        existing.metadata.labels.as_ref(),
        desired.metadata.labels.as_ref(),
        &stale.labels,
    );
    if !labels.is_empty() {
        metadata.insert("labels".to_owned(), Value::Object(labels));
    }
    let annotations = changes(
        existing.metadata.annotations.as_ref(),
        desired.metadata.annotations.as_ref(),
        &stale.annotations,
    );
    if !annotations.is_empty() {
        metadata.insert("annotations".to_owned(), Value::Object(annotations));
    }
    if let Some(owners) = owners_to_set(existing, desired) {
        // A merge patch replaces a list whole: others' entries are in it.
        metadata.insert(
            "ownerReferences".to_owned(),
            serde_json::to_value(owners).unwrap_or(Value::Null),
        );
    }
    let mut patch = Map::new();
    patch.insert("metadata".to_owned(), Value::Object(metadata));
    let data = changes(existing.data.as_ref(), desired.data.as_ref(), &stale.data);
    if !data.is_empty() {
        patch.insert("data".to_owned(), Value::Object(data));
    }
    Value::Object(patch)
}

/// Whether an existing Secret differs from the desired one in anything the
/// controller sets, or still holds a key it owns and no longer sets
/// ([`stale_keys`]). Labels, annotations and keys added by others are left
/// alone.
pub fn needs_repair(existing: &Secret, desired: &Secret) -> bool {
    fn subset<V: PartialEq>(
        want: Option<&BTreeMap<String, V>>,
        have: Option<&BTreeMap<String, V>>,
    ) -> bool {
        want.into_iter()
            .flatten()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    }
    let owner_ok = match desired.metadata.owner_references.as_deref() {
        Some([want]) => existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|have| have.uid == want.uid && have.controller == Some(true)),
        _ => !existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|have| {
                matches!(
                    have.kind.as_str(),
                    "RunaiCredential" | "ClusterRunaiCredential"
                ) && have.controller == Some(true)
            }),
    };
    let stale = stale_keys(existing, desired);
    let nothing_stale =
        stale.labels.is_empty() && stale.annotations.is_empty() && stale.data.is_empty();
    !(owner_ok
        && nothing_stale
        && existing.type_ == desired.type_
        && subset(
            desired.metadata.labels.as_ref(),
            existing.metadata.labels.as_ref(),
        )
        && subset(
            desired.metadata.annotations.as_ref(),
            existing.metadata.annotations.as_ref(),
        )
        && subset(desired.data.as_ref(), existing.data.as_ref()))
}

/// Label a credentials Secret must carry, with the value `"true"`, when the
/// controller runs with `--credentials-secret-label-required`.
pub const CREDENTIALS_LABEL: &str = "tokensync.dev/credentials";

/// Checks that the credentials Secret carries [`CREDENTIALS_LABEL`]`: "true"`.
///
/// # Errors
///
/// [`Error::CredentialsNotFound`] saying that the label is required, when it
/// is missing or has another value; a missing Secret is left to
/// [`read_credentials`].
pub fn require_credentials_label(
    secret: Option<&Secret>,
    reference: &ClientCredentialsSecretRef,
) -> Result<(), Error> {
    match secret {
        Some(secret)
            if secret.labels().get(CREDENTIALS_LABEL).map(String::as_str) != Some("true") =>
        {
            Err(Error::CredentialsNotFound(format!(
                "the credentials Secret {} lacks the label {CREDENTIALS_LABEL}: \"true\", which this controller requires before it uses a Secret as client credentials (--credentials-secret-label-required)",
                reference.name
            )))
        }
        _ => Ok(()),
    }
}

/// Reads the client credentials from the credentials Secret.
pub fn read_credentials(
    secret: Option<&Secret>,
    reference: &ClientCredentialsSecretRef,
) -> Result<ClientCredentials, Error> {
    let name = &reference.name;
    let Some(secret) = secret else {
        return Err(Error::CredentialsNotFound(format!(
            "the credentials Secret {name} does not exist in this namespace"
        )));
    };
    let value = |key: &str| -> Result<String, Error> {
        let missing = || {
            Error::CredentialsNotFound(format!(
                "the credentials Secret {name} has no non-empty key {key:?}"
            ))
        };
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(missing)?;
        let text = std::str::from_utf8(&bytes.0).map_err(|_| {
            Error::CredentialsNotFound(format!(
                "the value of key {key:?} in the credentials Secret {name} is not UTF-8 text"
            ))
        })?;
        // A trailing newline is the most common accident of `kubectl create
        // secret --from-file`, and Run:ai IDs and secrets hold no whitespace.
        let text = text.trim_matches([' ', '\t', '\r', '\n']);
        if text.is_empty() {
            return Err(missing());
        }
        Ok(text.to_owned())
    };
    Ok(ClientCredentials {
        client_id: value(&reference.client_id_key)?,
        client_secret: value(&reference.client_secret_key)?,
    })
}

pub use crate::token::schedule::whole_seconds;

/// A timestamp as RFC 3339 to the second.
pub fn rfc3339(t: Timestamp) -> String {
    whole_seconds(t).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    fn with_owners(owners: serde_json::Value) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "ownerReferences": owners}
        }))
        .unwrap()
    }

    #[test]
    fn an_owner_reference_of_ours_that_must_go_is_named_and_others_are_kept() {
        let ours = serde_json::json!({"apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential", "name": "t", "uid": "u1", "controller": true});
        let theirs =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u2"});
        let existing = with_owners(serde_json::json!([ours, theirs]));
        // Retain now: ours goes, theirs stays.
        let owners = owners_to_set(&existing, &with_owners(serde_json::json!([]))).unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "u2");
        // Unchanged: nothing to do.
        assert!(owners_to_set(&existing, &with_owners(serde_json::json!([ours]))).is_none());
        // Ours without its controller flag: set again.
        let unflagged = serde_json::json!({"apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential", "name": "t", "uid": "u1"});
        let owners = owners_to_set(
            &with_owners(serde_json::json!([unflagged, theirs])),
            &with_owners(serde_json::json!([ours])),
        )
        .unwrap();
        assert_eq!(owners.len(), 2);
        assert!(
            owners
                .iter()
                .any(|o| o.uid == "u1" && o.controller == Some(true))
        );
        // Delete now: ours added, theirs kept.
        let retained = with_owners(serde_json::json!([theirs]));
        let owners = owners_to_set(&retained, &with_owners(serde_json::json!([ours]))).unwrap();
        assert_eq!(owners.len(), 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RunaiCredentialSpec, Target};

    fn credential(policy: DeletionPolicy) -> RunaiCredential {
        let spec: RunaiCredentialSpec = serde_json::from_value(serde_json::json!({
            "url": "https://acme.run.ai",
            "clientCredentialsSecretRef": {"name": "runai-client"},
        }))
        .unwrap();
        let mut cr = RunaiCredential::new("trainer", spec);
        cr.metadata.namespace = Some("ml".into());
        cr.metadata.uid = Some("uid-1".into());
        cr.spec.target = Target {
            labels: [("team".to_owned(), "ml".to_owned())].into(),
            deletion_policy: policy,
            ..Target::default()
        };
        cr
    }

    fn record() -> TokenRecord {
        TokenRecord {
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: Some("2026-01-01T01:00:00Z".parse().unwrap()),
            credentials_hash: "abc".into(),
            generation: 3,
            refresh_request: Some("r1".into()),
            definition: None,
            token_api: None,
        }
    }

    fn key() -> HashKey {
        HashKey::new(b"test-key".to_vec())
    }

    #[test]
    fn desired_secret_shape() {
        let cr = credential(DeletionPolicy::Delete);
        let secret = desired_secret(&cr, "tok", &record(), &key());
        assert_eq!(secret.metadata.name.as_deref(), Some("trainer"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data["accessToken"].0, b"tok");
        assert_eq!(data[EXPIRES_AT_KEY].0, b"2026-01-01T01:00:00Z");
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[CREDENTIAL_LABEL], "trainer");
        assert_eq!(labels["team"], "ml");
        let owners = secret.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].controller, Some(true));

        let retained = desired_secret(
            &credential(DeletionPolicy::Retain),
            "tok",
            &record(),
            &key(),
        );
        assert!(retained.metadata.owner_references.is_none());
    }

    #[test]
    fn record_round_trips_and_detects_tampering() {
        let cr = credential(DeletionPolicy::Delete);
        let mut secret = desired_secret(&cr, "tok", &record(), &key());
        let stored = stored_token(&secret, "accessToken", &key()).unwrap();
        assert_eq!(stored.record, record());
        assert!(stored.intact);
        assert!(!format!("{stored:?}").contains("tok\""));

        secret
            .data
            .as_mut()
            .unwrap()
            .insert("accessToken".into(), ByteString(b"forged".to_vec()));
        assert!(!stored_token(&secret, "accessToken", &key()).unwrap().intact);
        // A different hash key (a different controller installation) does not trust it either.
        let other = desired_secret(&cr, "tok", &record(), &HashKey::new(b"other".to_vec()));
        assert!(!stored_token(&other, "accessToken", &key()).unwrap().intact);
        assert!(stored_token(&secret, "otherKey", &key()).is_none());

        // A forged expiry (which would postpone refreshes) is noticed too.
        let mut postponed = desired_secret(&cr, "tok", &record(), &key());
        postponed.data.as_mut().unwrap().insert(
            EXPIRES_AT_KEY.into(),
            ByteString(b"2099-01-01T00:00:00Z".to_vec()),
        );
        assert!(
            !stored_token(&postponed, "accessToken", &key())
                .unwrap()
                .intact
        );
    }

    #[test]
    fn repair_is_needed_only_for_what_the_controller_sets() {
        let cr = credential(DeletionPolicy::Delete);
        let desired = desired_secret(&cr, "tok", &record(), &key());
        let mut existing = desired.clone();
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(!needs_repair(&existing, &desired));

        let mut unlabelled = desired.clone();
        unlabelled.metadata.labels.as_mut().unwrap().remove("team");
        assert!(needs_repair(&unlabelled, &desired));

        let mut orphaned = desired.clone();
        orphaned.metadata.owner_references = None;
        assert!(needs_repair(&orphaned, &desired));

        let retained = desired_secret(
            &credential(DeletionPolicy::Retain),
            "tok",
            &record(),
            &key(),
        );
        assert!(
            needs_repair(&desired, &retained),
            "a left-over owner reference is removed"
        );
    }

    #[test]
    fn debug_never_shows_the_secret_data() {
        let cr = credential(DeletionPolicy::Delete);
        let secret = desired_secret(&cr, "tok3n-value", &record(), &key());
        let shown = format!("{:?}", TargetSecret::classify(Some(secret), &cr));
        assert!(
            shown.contains("Managed") && shown.contains("trainer"),
            "{shown}"
        );
        assert!(
            !shown.contains("tok3n") && !shown.contains("116, 111, 107"),
            "{shown}"
        );
        assert!(
            hashes_equal("abc", "abc") && !hashes_equal("abc", "abd") && !hashes_equal("abc", "ab")
        );
    }

    #[test]
    fn ownership() {
        let cr = credential(DeletionPolicy::Delete);
        let mut other = credential(DeletionPolicy::Delete);
        other.metadata.name = Some("other".into());
        other.metadata.uid = Some("uid-2".into());
        let ours = desired_secret(&cr, "tok", &record(), &key());
        assert!(matches!(
            TargetSecret::classify(Some(ours.clone()), &cr),
            TargetSecret::Managed(_)
        ));
        // Still ours by its owner reference when someone removed the labels.
        let mut unlabelled = ours.clone();
        unlabelled.metadata.labels = None;
        assert!(matches!(
            TargetSecret::classify(Some(unlabelled), &cr),
            TargetSecret::Managed(_)
        ));
        // Left behind by an earlier RunaiCredential of this name: adopted.
        let mut recreated = cr.clone();
        recreated.metadata.uid = Some("uid-new".into());
        assert!(matches!(
            TargetSecret::classify(Some(ours.clone()), &recreated),
            TargetSecret::Managed(_)
        ));
        // Labelled for it, but owned by an object of another kind: not ours.
        let mut owned_elsewhere = ours.clone();
        owned_elsewhere.metadata.owner_references = Some(vec![
            serde_json::from_value(serde_json::json!({"apiVersion": "apps/v1",
                "kind": "Deployment", "name": "trainer", "uid": "uid-d", "controller": true}))
            .unwrap(),
        ]);
        assert!(matches!(
            TargetSecret::classify(Some(owned_elsewhere), &cr),
            TargetSecret::Foreign
        ));
        assert!(matches!(
            TargetSecret::classify(Some(ours), &other),
            TargetSecret::Foreign
        ));
        assert!(matches!(
            TargetSecret::classify(Some(Secret::default()), &cr),
            TargetSecret::Foreign
        ));
        assert!(matches!(
            TargetSecret::classify(None, &cr),
            TargetSecret::Missing
        ));
    }

    #[test]
    fn credentials_are_read_and_trimmed() {
        let reference: ClientCredentialsSecretRef =
            serde_json::from_value(serde_json::json!({"name": "c"})).unwrap();
        let secret = Secret {
            data: Some(
                [
                    ("clientId".to_owned(), ByteString(b"id\n".to_vec())),
                    ("clientSecret".to_owned(), ByteString(b"s3cr3t".to_vec())),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        let creds = read_credentials(Some(&secret), &reference).unwrap();
        assert_eq!(creds.client_id, "id");
        assert_eq!(creds.client_secret, "s3cr3t");
        let mut padded = secret.clone();
        padded.data.as_mut().unwrap().insert(
            "clientSecret".to_owned(),
            ByteString(b" \t s3cr3t\r\n".to_vec()),
        );
        let creds = read_credentials(Some(&padded), &reference).unwrap();
        assert_eq!(creds.client_secret, "s3cr3t");
        let mut blank = secret.clone();
        blank
            .data
            .as_mut()
            .unwrap()
            .insert("clientSecret".to_owned(), ByteString(b"\n".to_vec()));
        let err = read_credentials(Some(&blank), &reference).unwrap_err();
        assert_eq!(err.reason(), "CredentialsNotFound");

        let missing = read_credentials(None, &reference).unwrap_err();
        assert_eq!(missing.reason(), "CredentialsNotFound");
        let mut partial = secret.clone();
        partial.data.as_mut().unwrap().remove("clientSecret");
        let err = read_credentials(Some(&partial), &reference).unwrap_err();
        assert!(err.to_string().contains("clientSecret"), "{err}");
    }

    #[test]
    fn long_names_get_a_hashed_label_value() {
        assert_eq!(credential_label_value("trainer"), "trainer");
        let exact = "a".repeat(63);
        assert_eq!(credential_label_value(&exact), exact);
        let long = format!("{}-x", "b".repeat(68));
        let value = credential_label_value(&long);
        assert_eq!(value.len(), 63);
        assert!(value.starts_with(&"b".repeat(54)));
        assert_eq!(value.as_bytes()[54], b'-');
        assert!(value[55..].bytes().all(|b| b.is_ascii_hexdigit()));
        let other = format!("{}-y", "b".repeat(68));
        assert_ne!(
            value,
            credential_label_value(&other),
            "names differing at the end stay apart"
        );
        assert_eq!(value, credential_label_value(&long), "stable");
    }

    #[test]
    fn hashes_depend_on_every_input() {
        let k = key();
        let creds = ClientCredentials {
            client_id: "id".into(),
            client_secret: "s".into(),
        };
        let base = k.credentials_hash("https://a", TokenApi::V1, &creds);
        assert_eq!(base, k.credentials_hash("https://a", TokenApi::V1, &creds));
        assert_ne!(base, k.credentials_hash("https://b", TokenApi::V1, &creds));
        assert_ne!(base, k.credentials_hash("https://a", TokenApi::V2, &creds));
        let rotated = ClientCredentials {
            client_secret: "t".into(),
            ..creds.clone()
        };
        assert_ne!(
            base,
            k.credentials_hash("https://a", TokenApi::V1, &rotated)
        );
        assert_eq!(base.len(), 64, "hex of a SHA-256 HMAC");
    }
}

#[cfg(test)]
mod write_model_tests {
    use super::*;
    use serde_json::json;

    /// A Secret as the API server returns it after the controller created
    /// it (operation Update) and an earlier version applied it (operation
    /// Apply), and someone else added a label, and the status subresource
    /// of some other manager recorded a field.
    fn written() -> Secret {
        serde_json::from_value(json!({
            "metadata": {
                "name": "trainer", "namespace": "ml", "resourceVersion": "7",
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, "tier": "gold", "team": "ml", "theirs": "x",
                           "shared": "s"},
                "annotations": {"note": "first", "tokensync.dev/answered-refresh-request": "r1",
                                "theirs": "y"},
                "managedFields": [
                    {"manager": FIELD_MANAGER, "operation": "Update", "apiVersion": "v1",
                     "fieldsType": "FieldsV1", "fieldsV1": {
                        "f:data": {".": {}, "f:accessToken": {}, "f:authorization": {}},
                        "f:metadata": {"f:labels": {".": {}, "f:tier": {}, "f:team": {}, "f:shared": {},
                            "f:app.kubernetes.io/managed-by": {}},
                            "f:annotations": {".": {}, "f:note": {}}},
                        "f:type": {}}},
                    {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": "v1",
                     "fieldsType": "FieldsV1", "fieldsV1": {
                        "f:data": {"f:legacy": {}}}},
                    {"manager": "someone-else", "operation": "Apply", "apiVersion": "v1",
                     "fieldsType": "FieldsV1", "fieldsV1": {
                        "f:data": {"f:theirs": {}},
                        "f:metadata": {"f:labels": {"f:theirs": {}, "f:shared": {}},
                                       "f:annotations": {"f:theirs": {}}}}},
                    {"manager": FIELD_MANAGER, "operation": "Update", "apiVersion": "v1",
                     "subresource": "status", "fieldsType": "FieldsV1", "fieldsV1": {
                        "f:data": {"f:fromStatus": {}}}},
                ],
            },
            "type": "Opaque",
            "data": {"accessToken": "dG9r", "authorization": "QmVhcmVyIHRvaw==",
                     "legacy": "eA==", "theirs": "eg==", "fromStatus": "eg=="},
        }))
        .unwrap()
    }

    /// What the controller sets now: no `tier`, no `note`, no
    /// `authorization` output, no answered request, a new token.
    fn desired() -> Secret {
        serde_json::from_value(json!({
            "metadata": {
                "name": "trainer", "namespace": "ml",
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, "team": "ml"},
                "annotations": {},
            },
            "type": "Opaque",
            "data": {"accessToken": "bmV3"},
        }))
        .unwrap()
    }

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn what_the_controller_owns_is_read_from_its_managed_fields_entries() {
        let owned = owned_keys(&written());
        assert_eq!(
            owned.labels,
            set(&["app.kubernetes.io/managed-by", "team", "tier"]),
            "`shared` is someone else's too"
        );
        assert_eq!(
            owned.annotations,
            set(&["note", "tokensync.dev/answered-refresh-request"]),
            "the record's annotations are ours by name"
        );
        assert_eq!(
            owned.data,
            set(&["accessToken", "authorization", "legacy"]),
            "every operation of our manager; never a subresource's, never others'"
        );
        let mut bare = written();
        bare.metadata.managed_fields = None;
        assert_eq!(
            owned_keys(&bare),
            OwnedKeys {
                annotations: set(&["tokensync.dev/answered-refresh-request"]),
                ..OwnedKeys::default()
            }
        );
    }

    #[test]
    fn the_patch_removes_only_what_the_controller_stopped_setting() {
        let patch = update_patch(&written(), &desired());
        assert_eq!(
            patch,
            json!({
                "metadata": {
                    "resourceVersion": "7",
                    "labels": {"tier": null},
                    "annotations": {"note": null, "tokensync.dev/answered-refresh-request": null},
                },
                "data": {"accessToken": "bmV3", "authorization": null, "legacy": null},
            }),
            "unchanged values and others' keys are not named"
        );
        assert!(needs_repair(&written(), &desired()));
    }

    #[test]
    fn a_secret_patched_as_planned_needs_no_repair() {
        let existing = written();
        let patch = update_patch(&existing, &desired());
        let mut merged = serde_json::to_value(&existing).unwrap();
        json_merge(&mut merged, &patch);
        let merged: Secret = serde_json::from_value(merged).unwrap();
        assert!(!needs_repair(&merged, &desired()));
        let labels = merged.metadata.labels.unwrap();
        assert_eq!(labels.get("theirs").map(String::as_str), Some("x"));
        assert!(merged.data.unwrap().contains_key("theirs"));
    }

    #[test]
    fn an_owner_reference_change_replaces_the_list_with_others_kept() {
        let mut existing = written();
        existing.metadata.owner_references = Some(vec![
            serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u2"}),
            )
            .unwrap(),
        ]);
        let mut desired = desired();
        desired.metadata.owner_references = Some(vec![
            serde_json::from_value(
                json!({"apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
                                          "name": "trainer", "uid": "u1", "controller": true}),
            )
            .unwrap(),
        ]);
        let patch = update_patch(&existing, &desired);
        let owners = patch["metadata"]["ownerReferences"].as_array().unwrap();
        let uids: Vec<_> = owners.iter().map(|o| o["uid"].as_str().unwrap()).collect();
        assert_eq!(uids, ["u2", "u1"]);
    }

    #[test]
    fn a_leftover_answered_request_does_not_invalidate_the_token() {
        let key = HashKey::new(b"k".to_vec());
        let record = TokenRecord {
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: None,
            credentials_hash: "abc".into(),
            generation: 1,
            refresh_request: None,
            definition: None,
            token_api: None,
        };
        let mut cr = RunaiCredential::new(
            "trainer",
            serde_json::from_value(json!({
                "url": "https://acme.run.ai",
                "clientCredentialsSecretRef": {"name": "c"},
            }))
            .unwrap(),
        );
        cr.metadata.namespace = Some("ml".into());
        let mut secret = desired_secret(&cr, "tok", &record, &key);
        // Positive control: the record as written is intact.
        assert!(stored_token(&secret, "accessToken", &key).unwrap().intact);
        secret
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(REFRESH_REQUEST_ANNOTATION.to_owned(), "old".to_owned());
        let stored = stored_token(&secret, "accessToken", &key).unwrap();
        assert!(stored.intact);
        assert_eq!(stored.record, record, "read as answering no request");
        // A forged token is still caught with the leftover present.
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("accessToken".into(), ByteString(b"forged".to_vec()));
        assert!(!stored_token(&secret, "accessToken", &key).unwrap().intact);
    }

    /// RFC 7386, as the API server applies a merge patch.
    fn json_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match patch {
            serde_json::Value::Object(fields) => {
                if !target.is_object() {
                    *target = json!({});
                }
                for (key, value) in fields {
                    if value.is_null() {
                        target.as_object_mut().unwrap().remove(key);
                    } else {
                        json_merge(&mut target[key], value);
                    }
                }
            }
            other => *target = other.clone(),
        }
    }
}
