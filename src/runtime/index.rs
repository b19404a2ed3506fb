//! Which RunaiCredentials a Secret event concerns, without a scan of every
//! RunaiCredential: an index kept up to date from the RunaiCredential watch.
//!
//! A Secret concerns the RunaiCredentials that read their client credentials
//! from it, those that write to it (so that a conflicting Secret going away
//! is noticed), and the one whose label it carries (a Secret it manages,
//! also under an earlier target name). Only RunaiCredentials that exist are
//! in the index, so an event about a deleted one triggers nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::{api::RunaiCredential, output::secret::credential_label_value};

type Key = (String, String);

/// What a RunaiCredential is indexed under: (namespace, Secret name) of its
/// credentials and target Secrets, (namespace, label value), and what it
/// reads its token with (see [`SecretIndex::readers_like`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    secrets: [Key; 2],
    label: Key,
    reading: Reading,
}

/// The credentials Secret (namespace, name) and a hash of url, token API
/// and `caBundle` text: RunaiCredentials alike in these share a token
/// exchange whenever the Secret can be read.
type Reading = (String, String, u64);

#[derive(Debug, Default)]
struct Inner {
    by_secret: HashMap<Key, HashSet<ObjectRef<RunaiCredential>>>,
    by_label: HashMap<Key, HashSet<ObjectRef<RunaiCredential>>>,
    entries: HashMap<ObjectRef<RunaiCredential>, Entry>,
    readers: HashMap<Reading, usize>,
    /// Seen since the last relist began (`Init`), to drop what went away.
    relisted: Option<HashSet<ObjectRef<RunaiCredential>>>,
}

/// The index; see the module documentation.
#[derive(Debug, Default)]
pub struct SecretIndex {
    inner: Mutex<Inner>,
}

/// A RunaiCredential's reference without its uid and resourceVersion, which
/// equality ignores anyway: a few bytes less per entry.
fn key_of(cr: &RunaiCredential) -> ObjectRef<RunaiCredential> {
    ObjectRef::new(&cr.name_any()).within(&cr.namespace().unwrap_or_default())
}

fn reading_of(cr: &RunaiCredential) -> Reading {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        cr.spec.url.trim(),
        cr.spec.token_api.as_str(),
        cr.spec.ca_bundle.as_deref(),
    )
        .hash(&mut hasher);
    (
        cr.namespace().unwrap_or_default(),
        cr.spec.client_credentials_secret_ref.name.clone(),
        hasher.finish(),
    )
}

fn entry_of(cr: &RunaiCredential) -> Entry {
    let namespace = cr.namespace().unwrap_or_default();
    Entry {
        reading: reading_of(cr),
        secrets: [
            (
                namespace.clone(),
                cr.spec.client_credentials_secret_ref.name.clone(),
            ),
            (namespace.clone(), cr.target_secret_name()),
        ],
        label: (namespace, credential_label_value(&cr.name_any())),
    }
}

fn remove(inner: &mut Inner, r: &ObjectRef<RunaiCredential>) {
    if let Some(old) = inner.entries.remove(r) {
        for key in old.secrets {
            if let Some(set) = inner.by_secret.get_mut(&key) {
                set.remove(r);
                if set.is_empty() {
                    inner.by_secret.remove(&key);
                }
            }
        }
        if let Some(set) = inner.by_label.get_mut(&old.label) {
            set.remove(r);
            if set.is_empty() {
                inner.by_label.remove(&old.label);
            }
        }
        if let Some(count) = inner.readers.get_mut(&old.reading) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.readers.remove(&old.reading);
            }
        }
    }
}

fn insert(inner: &mut Inner, cr: &RunaiCredential) {
    let r = key_of(cr);
    let entry = entry_of(cr);
    if inner.entries.get(&r) == Some(&entry) {
        return;
    }
    remove(inner, &r);
    for key in &entry.secrets {
        inner
            .by_secret
            .entry(key.clone())
            .or_default()
            .insert(r.clone());
    }
    inner
        .by_label
        .entry(entry.label.clone())
        .or_default()
        .insert(r.clone());
    *inner.readers.entry(entry.reading.clone()).or_default() += 1;
    inner.entries.insert(r, entry);
}

impl SecretIndex {
    /// Takes in one event of the RunaiCredential watch of `scope` (one
    /// namespace, or `None` for all): a relist forgets only what it covers.
    pub fn observe(&self, scope: Option<&str>, event: &watcher::Event<RunaiCredential>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(cr) => insert(&mut inner, cr),
            watcher::Event::Delete(cr) => remove(&mut inner, &key_of(cr)),
            watcher::Event::Init => inner.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(cr) => {
                insert(&mut inner, cr);
                let r = key_of(cr);
                if let Some(seen) = inner.relisted.as_mut() {
                    seen.insert(r);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = inner.relisted.take() {
                    let gone: Vec<_> = inner
                        .entries
                        .keys()
                        .filter(|r| scope.is_none_or(|ns| r.namespace.as_deref() == Some(ns)))
                        .filter(|r| !seen.contains(*r))
                        .cloned()
                        .collect();
                    for r in gone {
                        remove(&mut inner, &r);
                    }
                }
            }
        }
    }

    /// The RunaiCredentials the Secret `name` in `namespace` concerns, given
    /// the value of its [`crate::output::secret::CREDENTIAL_LABEL`] when it
    /// carries the controller's labels.
    #[must_use]
    pub fn lookup(
        &self,
        namespace: &str,
        name: &str,
        credential_label: Option<&str>,
    ) -> Vec<ObjectRef<RunaiCredential>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        let mut refs: Vec<ObjectRef<RunaiCredential>> = inner
            .by_secret
            .get(&key)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if let Some(label) = credential_label {
            let key = (namespace.to_owned(), label.to_owned());
            for r in inner.by_label.get(&key).into_iter().flatten() {
                if !refs.contains(r) {
                    refs.push(r.clone());
                }
            }
        }
        refs
    }

    /// How many RunaiCredentials read their client credentials from the same
    /// Secret with the same url, token API and `caBundle` as `cr` (it
    /// included, once indexed): all of them share its token exchange when the
    /// Secret can be read, so this is known before any of them is reconciled.
    #[must_use]
    pub fn readers_like(&self, cr: &RunaiCredential) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.readers.get(&reading_of(cr)).copied().unwrap_or(0)
    }

    /// How many RunaiCredentials are indexed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RunaiCredentialSpec;

    fn credential(name: &str, namespace: &str, target: Option<&str>) -> RunaiCredential {
        let spec: RunaiCredentialSpec = serde_json::from_value(serde_json::json!({
            "url": "https://acme.run.ai",
            "clientCredentialsSecretRef": {"name": "creds"},
            "target": {"name": target},
        }))
        .unwrap();
        let mut cr = RunaiCredential::new(name, spec);
        cr.metadata.namespace = Some(namespace.to_owned());
        cr
    }

    #[test]
    fn secrets_map_to_their_credentials_and_deleted_ones_drop_out() {
        let index = SecretIndex::default();
        let long = format!("long-{}", "x".repeat(70));
        for cr in [
            credential(&long, "ml", Some("elsewhere")),
            credential("short", "ml", None),
            credential("other", "other-ns", None),
        ] {
            index.observe(None, &watcher::Event::Apply(cr));
        }
        // The credentials Secret concerns both readers in its namespace only.
        assert_eq!(index.lookup("ml", "creds", None).len(), 2);
        // Both read the same Secret with the same spec: one exchange.
        assert_eq!(index.readers_like(&credential("short", "ml", None)), 2);
        assert_eq!(
            index.readers_like(&credential("other", "other-ns", None)),
            1
        );
        // A target name, and a hashed label (an earlier target's Secret).
        assert_eq!(
            index.lookup("ml", "elsewhere", None),
            vec![ObjectRef::new(&long).within("ml")]
        );
        let label = credential_label_value(&long);
        assert_eq!(
            index.lookup("ml", "old-target", Some(&label)),
            vec![ObjectRef::new(&long).within("ml")]
        );
        assert!(index.lookup("ml", "unrelated", None).is_empty());
        // A renamed target: the old name no longer maps.
        index.observe(
            None,
            &watcher::Event::Apply(credential("short", "ml", Some("renamed"))),
        );
        assert!(index.lookup("ml", "short", None).is_empty());
        assert_eq!(index.lookup("ml", "renamed", None).len(), 1);
        // Deleted: nothing maps to it, not even its label.
        index.observe(
            None,
            &watcher::Event::Delete(credential("short", "ml", Some("renamed"))),
        );
        assert!(index.lookup("ml", "renamed", Some("short")).is_empty());
        // A relist drops what it no longer lists.
        index.observe(None, &watcher::Event::Init);
        index.observe(
            None,
            &watcher::Event::InitApply(credential("other", "other-ns", None)),
        );
        index.observe(None, &watcher::Event::InitDone);
        assert_eq!(index.len(), 1);
        assert!(index.lookup("ml", "creds", None).is_empty());
    }
}
