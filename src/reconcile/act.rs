//! The I/O of a reconciliation: Kubernetes writes and reads that the
//! decision asks for. No decision is made here.

use futures::FutureExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        events::{Event, EventType},
        reflector::ObjectRef,
    },
};
use tracing::{info, warn};

use super::{Context, FIELD_MANAGER};
use crate::{
    api::{RunaiCredential, RunaiCredentialStatus},
    error::Error,
    metrics::CredentialLabels,
    output::secret,
};

/// Deletes (`deletionPolicy: Delete`) or releases (`Retain`) the Secrets this
/// RunaiCredential manages under another name than `current`: those left
/// behind by a change of `spec.target.name`. Releasing removes the
/// controller's labels, its `tokensync.dev/` annotations and its owner
/// reference, and leaves the data and the user's labels and annotations.
///
/// # Errors
///
/// [`Error::Kube`] when the Secrets cannot be listed, deleted or patched.
pub(super) async fn release_old_targets(
    cr: &RunaiCredential,
    secrets: &Api<Secret>,
    current: &str,
) -> Result<(), Error> {
    let selector = format!(
        "{}={},{}={}",
        secret::MANAGED_BY_LABEL,
        secret::MANAGED_BY,
        secret::CREDENTIAL_LABEL,
        secret::credential_label_value(&cr.name_any())
    );
    let listed = secrets
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("listing the Secrets of earlier target names"))?;
    for old in listed.items {
        let name = old.name_any();
        if name == current {
            continue;
        }
        match cr.spec.target.deletion_policy {
            crate::api::DeletionPolicy::Delete => {
                info!(secret = %name, "deleting the Secret of an earlier target name");
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: old.metadata.uid.clone(),
                        resource_version: old.metadata.resource_version.clone(),
                    }),
                    ..DeleteParams::default()
                };
                match secrets.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(
                            Error::kube("deleting the Secret of an earlier target name")(e),
                        );
                    }
                }
            }
            crate::api::DeletionPolicy::Retain => {
                info!(secret = %name, "releasing the Secret of an earlier target name");
                let patch = secret::release_patch(&old, cr.uid().as_deref());
                secrets
                    .patch(&name, &update_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::kube(
                        "releasing the Secret of an earlier target name",
                    ))?;
            }
        }
    }
    Ok(())
}

/// Whether the namespace is being deleted. Unknown (the controller may not
/// read namespaces, as with `watchNamespaces`, where the API server then
/// refuses the write instead) counts as not.
pub(super) async fn namespace_terminating(ctx: &Context, namespace: &str) -> bool {
    // Served from the watch when all namespaces are (no API call).
    if let Some(namespaces) = &ctx.namespaces
        && matches!(namespaces.wait_until_ready().now_or_never(), Some(Ok(())))
    {
        return namespaces
            .get(&ObjectRef::new(namespace))
            .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some());
    }
    if !ctx.may_read_namespaces() {
        return false;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(Some(ns)) => {
            ns.metadata.deletion_timestamp.is_some()
                || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
        }
        // Not granted (Roles only, as with `watchNamespaces`): not asked again.
        Err(kube::Error::Api(status)) if status.code == 403 => {
            ctx.namespaces_unreadable();
            false
        }
        Ok(None) | Err(_) => false,
    }
}

/// Writes the target Secret, never into an object that was not seen as
/// ours: a missing Secret is created (if someone else creates it first, the
/// answer is [`Error::SecretConflict`]); a managed one is updated only if it
/// is still the version that was read (a merge patch of what the
/// controller owns, [`secret::update_patch`], with its `resourceVersion` as
/// precondition); one made `immutable`, or whose type was changed, is
/// deleted (with the same precondition) and created again. Create and
/// update are both operations `Update` of [`FIELD_MANAGER`]: one owner.
///
/// # Errors
///
/// [`Error::SecretConflict`] when another object took the name,
/// [`Error::SecretWriteFailed`] when the API server refuses the write (see
/// [`is_refusal`]), [`Error::Kube`] otherwise (a changed Secret, an outage).
/// Returns the resourceVersion of the Secret written.
/// Whether the API server's answer to a Secret write judges that write
/// (the same write would meet the same answer), rather than an outage: 400,
/// 403 and 422 (a quota, an admission webhook's denial, missing rights),
/// a denial by an admission webhook whatever code it chose, and a 500 from
/// an admission webhook that could not be called or did not answer in time (failurePolicy Fail: the API server's message begins
/// "failed calling webhook" and names it; k8s.io/apiserver, admission
/// webhook errors). These are reported as such (`SecretWriteFailed`), with
/// the token kept for the retries.
#[must_use]
pub fn is_refusal(status: u16, message: &str) -> bool {
    matches!(status, 400 | 403 | 422)
        || (status == 500 && message.contains("failed calling webhook"))
        // A denial carries the webhook's own code, which may be any.
        || (message.contains("admission webhook") && message.contains("denied the request"))
}

pub(super) async fn write_secret(
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    desired: Secret,
    token: &str,
) -> Result<Option<String>, Error> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let refused = |err: kube::Error| match err {
        kube::Error::Api(status) if is_refusal(status.code, &status.message) => {
            Error::SecretWriteFailed {
                secret: name.clone(),
                status: status.code,
                message: crate::error::sanitize_detail(&status.message, &[token])
                    .trim_start_matches(": ")
                    .to_owned(),
            }
        }
        kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists" => {
            Error::SecretConflict {
                secret: name.clone(),
            }
        }
        other => Error::Kube {
            action: "writing the target Secret",
            source: other,
        },
    };
    let create = |secret: Secret| async move {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        secrets
            .create(&params, &secret)
            .await
            .map(|s| s.metadata.resource_version)
    };
    match existing {
        None => create(desired).await.map_err(refused),
        Some(current) if secret::needs_replacement(current) => {
            info!(secret = %name, "replacing the target Secret (made immutable or of another type)");
            let preconditions = Preconditions {
                uid: current.metadata.uid.clone(),
                resource_version: current.metadata.resource_version.clone(),
            };
            secrets
                .delete(
                    &name,
                    &DeleteParams {
                        preconditions: Some(preconditions),
                        ..DeleteParams::default()
                    },
                )
                .await
                .map_err(refused)?;
            create(desired).await.map_err(refused)
        }
        Some(current) => {
            // One merge patch under the manager of the create: what the
            // controller stops setting goes, nothing of others is named,
            // and a Secret changed since it was read is read again
            // (`resourceVersion` precondition), never overwritten.
            let patch = secret::update_patch(current, &desired);
            secrets
                .patch(&name, &update_params(), &Patch::Merge(&patch))
                .await
                .map(|s| s.metadata.resource_version)
                .map_err(refused)
        }
    }
}

/// The parameters of every merge patch of the controller: under
/// [`FIELD_MANAGER`], as its creates, so that one owner holds all it set.
pub(super) fn update_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Records the status in the metrics and writes it when `changed` (the
/// decision compared it with the stored one).
///
/// # Errors
///
/// [`Error::LeaseLost`] after the lease was lost, [`Error::Kube`] when the
/// API server refuses the write (a 404 after deletion is no error).
pub(super) async fn write_status(
    cr: &RunaiCredential,
    ctx: &Context,
    new: &RunaiCredentialStatus,
    changed: bool,
) -> Result<(), Error> {
    let expires_at = new
        .expiration_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| t.as_second());
    let credential = CredentialLabels::new(&cr.namespace().unwrap_or_default(), &cr.name_any());
    let ready = new
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::CONDITION_READY)
        .map_or("Unknown", |c| c.status.as_str());
    ctx.metrics
        .observe_credential(credential, expires_at, new.failed_attempts, ready);
    ctx.ensure_acting()?;
    if !changed {
        return Ok(());
    }
    let api: Api<RunaiCredential> =
        Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    apply_status(&api, &cr.name_any(), new).await
}

/// Writes `status` with a server-side apply of the status subresource
/// (the controller owns all of it).
///
/// # Errors
///
/// [`Error::Kube`] when the API server refuses it (a 404 after deletion is
/// no error: there is no status left to write).
pub(super) async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .or_else(|err| match err {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        other => Err(Error::kube("writing the status")(other)),
    })
}

/// Publishes an Event about the object `about` (a RunaiCredential, or a
/// ClusterRunaiCredential: an `events.k8s.io/v1` Event about a
/// cluster-scoped object goes to the `default` namespace, where `kubectl
/// describe` looks for it); a failure to publish is logged only. A Normal
/// Event goes out only within [`Context`]'s budget for them (a burst of
/// [`super::NORMAL_EVENT_BURST`], then [`super::NORMAL_EVENTS_PER_SECOND`]), so
/// that thousands of first tokens at a cold start do not double the API
/// server's writes; Warnings always go out (they are spaced by the decision).
pub(super) async fn publish(
    ctx: &Context,
    about: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    if type_ == EventType::Normal && !ctx.normal_event_allowed() {
        return;
    }
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "RefreshToken".to_owned(),
        secondary: None,
    };
    // An Event is a courtesy: failing to publish one must not fail the work.
    if let Err(err) = ctx.recorder.publish(&event, about).await {
        warn!(error = %err, "could not publish an Event");
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::is_refusal;

    #[test]
    fn webhooks_that_fail_or_time_out_are_refusals_and_outages_are_not() {
        // What a 1.37 API server says when a webhook outlasts its timeout.
        let slow = r#"Internal error occurred: failed calling webhook "slow.e2e.tokensync.dev": failed to call webhook: Post "https://127.0.0.1:4443/validate?timeout=1s": context deadline exceeded"#;
        assert!(is_refusal(500, slow));
        assert!(is_refusal(
            400,
            "admission webhook \"x\" denied the request"
        ));
        assert!(is_refusal(403, "secrets is forbidden"));
        assert!(is_refusal(422, "Secret is invalid"));
        assert!(
            !is_refusal(500, "etcdserver: request timed out"),
            "an outage"
        );
        assert!(
            !is_refusal(503, "failed calling webhook"),
            "unavailable: an outage"
        );
        assert!(!is_refusal(409, "the object has been modified"));
        assert!(!is_refusal(429, "too many requests"));
    }
}
