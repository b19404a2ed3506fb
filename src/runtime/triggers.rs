//! Which RunaiCredential watch events start a reconciliation.
//!
//! A reconciliation is worth it when what [`reconcile_trigger`] hashes
//! changed: the object's identity, its generation (the spec), the refresh
//! annotation, deletion. The echo of the controller's own status write
//! changes none of them and starts nothing.
//!
//! kube-runtime's `predicate_filter` does the same but keeps, per object,
//! its name, namespace and uid as strings next to the hash: about 480 bytes
//! per RunaiCredential, 4.8 MB at 10,000. [`TriggerMemory`] keeps 16 bytes
//! per RunaiCredential: a hash of its namespace and name, and the trigger
//! hash. Two names with the same hash only cost a reconciliation more,
//! never one less: the trigger hash holds the uid, so one RunaiCredential's
//! event never looks like the other's last one.
//!
//! The objects let through also lose their uid and resourceVersion: the
//! controller's queue keeps a reference per RunaiCredential built from them,
//! and the reconciliation reads the object from the cache by name anyway.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Mutex,
};

use kube::{
    ResourceExt,
    api::ObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};

use crate::api::RunaiCredential;

/// What of a RunaiCredential is worth a reconciliation when it changes: its
/// identity, its generation (the spec), the refresh annotation and deletion.
/// A change of the status alone is not.
#[must_use]
pub fn reconcile_trigger(cr: &RunaiCredential) -> u64 {
    trigger_hash(&cr.metadata, cr.refresh_request())
}

/// The hash of what starts a reconciliation of either kind: the uid, the
/// generation, the value of the refresh annotation and whether deletion
/// began.
#[must_use]
pub fn trigger_hash(meta: &ObjectMeta, refresh_request: Option<&str>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        meta.uid.as_deref(),
        meta.generation,
        refresh_request,
        meta.deletion_timestamp.is_some(),
    )
        .hash(&mut hasher);
    hasher.finish()
}

fn name_key(namespace: Option<&str>, name: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut hasher);
    hasher.finish()
}

/// The last trigger hash of each RunaiCredential of one watch.
#[derive(Debug, Default)]
pub struct TriggerMemory {
    last: Mutex<HashMap<u64, u64>>,
}

impl TriggerMemory {
    fn last(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this version of `cr` should start a reconciliation; it is
    /// remembered as the last one seen.
    pub fn changed(&self, cr: &RunaiCredential) -> bool {
        let key = name_key(cr.metadata.namespace.as_deref(), &cr.name_any());
        let trigger = reconcile_trigger(cr);
        self.last().insert(key, trigger) != Some(trigger)
    }

    /// Forgets a deleted RunaiCredential.
    pub fn forget(&self, cr: &RunaiCredential) {
        let key = name_key(cr.metadata.namespace.as_deref(), &cr.name_any());
        self.last().remove(&key);
    }

    /// Keeps only what `store` holds: after a list, RunaiCredentials deleted
    /// while the watch was down are forgotten too.
    pub fn retain(&self, store: &Store<RunaiCredential>) {
        let live: std::collections::HashSet<u64> = store
            .state()
            .iter()
            .map(|cr| name_key(cr.metadata.namespace.as_deref(), &cr.name_any()))
            .collect();
        self.last().retain(|key, _| live.contains(key));
    }

    /// `cr` as a trigger, if it is one: without uid and resourceVersion, so
    /// that the queue's reference to it is only its namespace and name
    /// (see [`ObjectRef::from_obj`]).
    pub fn trigger(&self, mut cr: RunaiCredential) -> Option<RunaiCredential> {
        if !self.changed(&cr) {
            return None;
        }
        cr.metadata.uid = None;
        cr.metadata.resource_version = None;
        debug_assert!(ObjectRef::from_obj(&cr).extra.uid.is_none());
        Some(cr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::REFRESH_REQUESTED_AT_ANNOTATION;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn credential(name: &str, uid: &str, generation: i64) -> RunaiCredential {
        let mut cr: RunaiCredential = serde_json::from_value(serde_json::json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
            "metadata": {"name": name, "namespace": "ml", "uid": uid,
                         "generation": generation, "resourceVersion": "7"},
            "spec": {"url": "https://runai.example", "clientCredentialsSecretRef": {"name": "c"}}
        }))
        .unwrap();
        cr.status = None;
        cr
    }

    #[test]
    fn only_what_a_reconciliation_reads_triggers_one() {
        let memory = TriggerMemory::default();
        let first = credential("a", "u1", 1);
        // The first sight triggers, and the trigger carries only the name.
        let trigger = memory.trigger(first.clone()).expect("first sight");
        assert_eq!(trigger.metadata.uid, None);
        assert_eq!(trigger.metadata.resource_version, None);
        assert_eq!(ObjectRef::from_obj(&trigger), ObjectRef::from_obj(&first));
        // A status write's echo: a new resourceVersion, nothing else.
        let mut echo = first.clone();
        echo.metadata.resource_version = Some("8".into());
        echo.status = Some(Default::default());
        assert!(memory.trigger(echo).is_none());
        // A new generation, a refresh request, a deletion and a new object
        // of the same name each trigger.
        assert!(memory.changed(&credential("a", "u1", 2)));
        let mut asked = credential("a", "u1", 2);
        asked.metadata.annotations =
            Some([(REFRESH_REQUESTED_AT_ANNOTATION.to_owned(), "now".to_owned())].into());
        assert!(memory.changed(&asked));
        let mut deleted = asked.clone();
        deleted.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(memory.changed(&deleted));
        assert!(memory.changed(&credential("a", "u2", 1)));
        // Another RunaiCredential is remembered on its own.
        assert!(memory.changed(&credential("b", "u3", 1)));
        assert!(!memory.changed(&credential("b", "u3", 1)));
        assert_eq!(memory.last().len(), 2);
        // Forgotten once deleted: seen again, it triggers again.
        memory.forget(&credential("b", "u3", 1));
        assert_eq!(memory.last().len(), 1);
        assert!(memory.changed(&credential("b", "u3", 1)));
    }
}
