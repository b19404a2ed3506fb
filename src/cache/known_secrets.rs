//! Which Secrets exist, as the Secret watches last listed and followed them,
//! so that a reconciliation skips reading a target Secret that surely does
//! not exist (every new RunaiCredential's): at a cold start of thousands of
//! RunaiCredentials, one of their two reads.
//!
//! "Surely" rests on the conditional writes rather than on the watches being
//! current: a Secret created by someone else since the watch last saw its
//! namespace makes the controller's create fail with 409 AlreadyExists, and
//! the reconciliation then reads it from etcd and decides again (see
//! `reconcile::reconcile_at`). So an answer of "missing" that is wrong costs
//! one refused create; it never overwrites anything.
//!
//! Only a watch of every Secret of its namespaces is registered: one limited
//! by a label selector (`--credentials-secret-label-required`) cannot see an
//! unlabelled Secret that took a target's name, and would have every retry
//! of that conflict end in a refused create.
//!
//! Each watch keeps the hashes of the names it has seen (8 bytes a Secret);
//! two names with one hash only make a Secret look present (it is then read,
//! as without this set) or, once the other is deleted, missing (a refused
//! create, as above).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use kube::{Resource, ResourceExt, runtime::watcher};

/// The Secrets one watch has seen.
#[derive(Debug, Default)]
pub struct SeenSecrets {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Hashes of (namespace, name) of the Secrets that exist.
    names: HashSet<u64>,
    /// While the watch (re)lists: the names listed so far, which replace
    /// `names` once the list is complete.
    listing: Option<HashSet<u64>>,
    /// A complete list has been seen.
    synced: bool,
}

fn key(namespace: &str, name: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut hasher);
    hasher.finish()
}

fn key_of<K: Resource>(object: &K) -> u64 {
    key(&object.namespace().unwrap_or_default(), &object.name_any())
}

impl SeenSecrets {
    /// Follows one event of the watch.
    pub fn observe<K: Resource>(&self, event: &watcher::Event<K>) {
        let mut seen = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Init => seen.listing = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                let key = key_of(object);
                match seen.listing.as_mut() {
                    Some(listing) => listing.insert(key),
                    None => seen.names.insert(key),
                };
            }
            watcher::Event::InitDone => {
                if let Some(listing) = seen.listing.take() {
                    seen.names = listing;
                }
                seen.synced = true;
            }
            watcher::Event::Apply(object) => {
                seen.names.insert(key_of(object));
            }
            watcher::Event::Delete(object) => {
                seen.names.remove(&key_of(object));
            }
        }
    }

    /// `Some(whether the Secret was seen)`, or `None` before a complete list
    /// and while the watch lists again (after it expired, Secrets created
    /// meanwhile are in no set yet).
    fn has(&self, namespace: &str, name: &str) -> Option<bool> {
        let seen = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (seen.synced && seen.listing.is_none()).then(|| seen.names.contains(&key(namespace, name)))
    }
}

/// The Secret watches, each with the namespace it covers (`None`: all).
#[derive(Debug, Default)]
pub struct KnownSecrets {
    watches: Mutex<Vec<(Option<String>, Arc<SeenSecrets>)>>,
}

impl KnownSecrets {
    /// A watch covering `namespace` (`None`: all namespaces); feed it the
    /// watch's events with [`SeenSecrets::observe`].
    pub fn watch(&self, namespace: Option<&str>) -> Arc<SeenSecrets> {
        let seen = Arc::new(SeenSecrets::default());
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((namespace.map(str::to_owned), seen.clone()));
        seen
    }

    /// Whether no Secret `namespace/name` exists as far as the watches know:
    /// at least one watch covers the namespace, every one of them has
    /// listed it completely, and none has seen the Secret. False whenever
    /// in doubt (then the Secret is read).
    pub fn surely_missing(&self, namespace: &str, name: &str) -> bool {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let mut covering = watches
            .iter()
            .filter(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .peekable();
        covering.peek().is_some()
            && covering.all(|(_, seen)| seen.has(namespace, name) == Some(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ObjectMeta;

    fn secret(namespace: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn missing_only_after_a_complete_list_and_until_seen() {
        let known = KnownSecrets::default();
        // No watch: in doubt.
        assert!(!known.surely_missing("ml", "a"));
        let all = known.watch(None);
        all.observe(&watcher::Event::<Secret>::Init);
        all.observe(&watcher::Event::InitApply(secret("ml", "b")));
        // Listing, not yet complete: in doubt.
        assert!(!known.surely_missing("ml", "a"));
        all.observe(&watcher::Event::<Secret>::InitDone);
        assert!(known.surely_missing("ml", "a"));
        // Positive control: a listed one is not missing, nor is the same
        // name in another namespace taken for it.
        assert!(!known.surely_missing("ml", "b"));
        assert!(known.surely_missing("other", "b"));
        all.observe(&watcher::Event::Apply(secret("ml", "a")));
        assert!(!known.surely_missing("ml", "a"));
        all.observe(&watcher::Event::Delete(secret("ml", "a")));
        assert!(known.surely_missing("ml", "a"));
    }

    #[test]
    fn a_relist_replaces_what_was_seen_once_complete() {
        let known = KnownSecrets::default();
        let all = known.watch(None);
        all.observe(&watcher::Event::<Secret>::Init);
        all.observe(&watcher::Event::InitApply(secret("ml", "gone")));
        all.observe(&watcher::Event::<Secret>::InitDone);
        // The watch expired; "gone" was deleted meanwhile.
        all.observe(&watcher::Event::<Secret>::Init);
        all.observe(&watcher::Event::InitApply(secret("ml", "kept")));
        // Until the relist completes, nothing is surely missing: a Secret
        // created while the watch was down is in neither list yet.
        assert!(!known.surely_missing("ml", "gone"));
        assert!(!known.surely_missing("ml", "created-meanwhile"));
        all.observe(&watcher::Event::<Secret>::InitDone);
        assert!(known.surely_missing("ml", "created-meanwhile"));
        assert!(known.surely_missing("ml", "gone"));
        assert!(!known.surely_missing("ml", "kept"));
    }

    #[test]
    fn every_watch_of_a_namespace_must_have_listed_it() {
        let known = KnownSecrets::default();
        // Two watches of one namespace (labelled credentials and the
        // controller's own Secrets) and one of another.
        let credentials = known.watch(Some("ml"));
        let own = known.watch(Some("ml"));
        let elsewhere = known.watch(Some("other"));
        for seen in [&credentials, &elsewhere] {
            seen.observe(&watcher::Event::<Secret>::Init);
            seen.observe(&watcher::Event::<Secret>::InitDone);
        }
        assert!(!known.surely_missing("ml", "a"), "one watch has not listed");
        own.observe(&watcher::Event::<Secret>::Init);
        own.observe(&watcher::Event::InitApply(secret("ml", "a")));
        own.observe(&watcher::Event::<Secret>::InitDone);
        assert!(!known.surely_missing("ml", "a"), "one watch has seen it");
        assert!(known.surely_missing("ml", "b"));
        assert!(known.surely_missing("other", "a"));
        // A namespace no watch covers: in doubt.
        assert!(!known.surely_missing("third", "a"));
    }
}
