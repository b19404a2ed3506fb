//! Which RunaiCredentials a Secret event concerns, without a scan of every
//! RunaiCredential: an index kept up to date from the RunaiCredential watch,
//! next to the watch's own store.
//!
//! A Secret concerns the RunaiCredentials that read their client credentials
//! from it, the one that writes to it (so that a conflicting Secret going
//! away is noticed), and the one whose label it carries (a Secret it
//! manages, also under an earlier target name). Only RunaiCredentials that
//! exist are found, so an event about a deleted one triggers nothing.
//!
//! What the store answers by name is not indexed: a RunaiCredential whose
//! target Secret has its own name, and one whose label value is its name
//! (names up to 63 characters). The index holds, per RunaiCredential, one
//! entry under its credentials Secret and, only when needed, one under a
//! target name of its choosing or a hashed label: a few dozen bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::{
    ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use crate::{api::RunaiCredential, output::secret::credential_label_value};

/// (namespace, name) of a Secret, or (namespace, label value).
type Key = (String, String);

#[derive(Debug, Default)]
struct Inner {
    /// Readers of each credentials Secret: name and a hash of url, token
    /// API and `caBundle` (see [`SecretIndex::readers_like`]).
    readers: HashMap<Key, Vec<(String, u64)>>,
    /// Target names other than the RunaiCredential's own.
    targets: HashMap<Key, Vec<String>>,
    /// Label values of names too long to be their own label value.
    labels: HashMap<Key, String>,
}

/// The index; see the module documentation.
#[derive(Debug, Default)]
pub struct SecretIndex {
    inner: Mutex<Inner>,
}

/// A hash of what decides whether two readers of one Secret share a token
/// exchange: url, token API and `caBundle`.
fn reading_hash(cr: &RunaiCredential) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        cr.spec.url.trim(),
        cr.spec.token_api.as_str(),
        cr.spec.ca_bundle.as_deref(),
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// Pushes onto a list that usually holds one entry: a first push makes room
/// for exactly one, not the four a `Vec` makes by default (at 10,000
/// RunaiCredentials with a credentials Secret each, about 1 MB).
fn push_one<V>(list: &mut Vec<V>, value: V) {
    if list.is_empty() {
        list.reserve_exact(1);
    }
    list.push(value);
}

fn remove_from<V: PartialEq>(map: &mut HashMap<Key, Vec<V>>, key: &Key, is: impl Fn(&V) -> bool) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|v| !is(v));
        if list.is_empty() {
            map.remove(key);
        }
    }
}

impl Inner {
    fn add(&mut self, cr: &RunaiCredential) {
        let (namespace, name) = (cr.namespace().unwrap_or_default(), cr.name_any());
        let reader = (
            namespace.clone(),
            cr.spec.client_credentials_secret_ref.name.clone(),
        );
        push_one(
            self.readers.entry(reader).or_default(),
            (name.clone(), reading_hash(cr)),
        );
        let target = cr.target_secret_name();
        if target != name {
            push_one(
                self.targets.entry((namespace.clone(), target)).or_default(),
                name.clone(),
            );
        }
        let label = credential_label_value(&name);
        if label != name {
            self.labels.insert((namespace, label), name);
        }
    }

    fn remove(&mut self, cr: &RunaiCredential) {
        let (namespace, name) = (cr.namespace().unwrap_or_default(), cr.name_any());
        let reader = (
            namespace.clone(),
            cr.spec.client_credentials_secret_ref.name.clone(),
        );
        remove_from(&mut self.readers, &reader, |(n, _)| *n == name);
        let target = cr.target_secret_name();
        if target != name {
            remove_from(&mut self.targets, &(namespace.clone(), target), |n| {
                *n == name
            });
        }
        let label = credential_label_value(&name);
        if label != name {
            self.labels.remove(&(namespace, label));
        }
    }
}

impl SecretIndex {
    /// Takes in one event of the RunaiCredential watch before the store
    /// does (`store` still holds the object as it was): an update moves the
    /// entries of the old version to the new one.
    pub fn observe(&self, store: &Store<RunaiCredential>, event: &watcher::Event<RunaiCredential>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(cr) => {
                if let Some(old) = store.get(&ObjectRef::from_obj(cr)) {
                    inner.remove(&old);
                }
                inner.add(cr);
            }
            watcher::Event::Delete(cr) => {
                if let Some(old) = store.get(&ObjectRef::from_obj(cr)) {
                    inner.remove(&old);
                } else {
                    inner.remove(cr);
                }
            }
            // A relist: rebuilt from the store once it holds the new list.
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => {}
        }
    }

    /// Rebuilds the entries of `scope` (one namespace, or `None` for all)
    /// from `store`, after a relist reached it.
    pub fn rebuild(&self, scope: Option<&str>, store: &Store<RunaiCredential>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let outside = |key: &Key| scope.is_some_and(|ns| key.0 != ns);
        inner.readers.retain(|key, _| outside(key));
        inner.targets.retain(|key, _| outside(key));
        inner.labels.retain(|key, _| outside(key));
        for cr in store.state() {
            inner.add(&cr);
        }
    }

    /// The RunaiCredentials the Secret `name` in `namespace` concerns, given
    /// the value of its [`crate::output::secret::CREDENTIAL_LABEL`] when it
    /// carries the controller's labels; `store` answers by name.
    #[must_use]
    pub fn lookup(
        &self,
        store: &Store<RunaiCredential>,
        namespace: &str,
        name: &str,
        credential_label: Option<&str>,
    ) -> Vec<ObjectRef<RunaiCredential>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        let mut names: Vec<&str> = Vec::new();
        names.extend(
            inner
                .readers
                .get(&key)
                .into_iter()
                .flatten()
                .map(|(n, _)| n.as_str()),
        );
        names.extend(
            inner
                .targets
                .get(&key)
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
        // The RunaiCredential of the same name, when this is its target.
        let same = ObjectRef::<RunaiCredential>::new(name).within(namespace);
        if store
            .get(&same)
            .is_some_and(|cr| cr.target_secret_name() == name)
        {
            names.push(name);
        }
        if let Some(label) = credential_label {
            match inner.labels.get(&(namespace.to_owned(), label.to_owned())) {
                Some(long) => names.push(long),
                None if store
                    .get(&ObjectRef::new(label).within(namespace))
                    .is_some() =>
                {
                    names.push(label)
                }
                None => {}
            }
        }
        let mut refs: Vec<ObjectRef<RunaiCredential>> = Vec::with_capacity(names.len());
        for n in names {
            let r = ObjectRef::new(n).within(namespace);
            if !refs.contains(&r) {
                refs.push(r);
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
        let key = (
            cr.namespace().unwrap_or_default(),
            cr.spec.client_credentials_secret_ref.name.clone(),
        );
        let hash = reading_hash(cr);
        inner.readers.get(&key).map_or(0, |readers| {
            readers.iter().filter(|(_, h)| *h == hash).count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RunaiCredentialSpec;
    use kube::runtime::reflector;

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

    /// Feeds an event to the index, then to the store, as the watch does.
    fn feed(
        index: &SecretIndex,
        store: &Store<RunaiCredential>,
        writer: &mut reflector::store::Writer<RunaiCredential>,
        event: watcher::Event<RunaiCredential>,
    ) {
        index.observe(store, &event);
        writer.apply_watcher_event(&event);
        if matches!(event, watcher::Event::InitDone) {
            index.rebuild(None, store);
        }
    }

    #[test]
    fn secrets_map_to_their_credentials_and_deleted_ones_drop_out() {
        let index = SecretIndex::default();
        let (store, mut writer) = reflector::store();
        let long = format!("long-{}", "x".repeat(70));
        for cr in [
            credential(&long, "ml", Some("elsewhere")),
            credential("short", "ml", None),
            credential("other", "other-ns", None),
        ] {
            feed(&index, &store, &mut writer, watcher::Event::Apply(cr));
        }
        // The credentials Secret concerns both readers in its namespace only.
        assert_eq!(index.lookup(&store, "ml", "creds", None).len(), 2);
        // Both read the same Secret with the same spec: one exchange.
        assert_eq!(index.readers_like(&credential("short", "ml", None)), 2);
        assert_eq!(
            index.readers_like(&credential("other", "other-ns", None)),
            1
        );
        // A target of its own name, one of another name, and a hashed label
        // (an earlier target's Secret).
        assert_eq!(
            index.lookup(&store, "ml", "short", None),
            vec![ObjectRef::new("short").within("ml")]
        );
        assert_eq!(
            index.lookup(&store, "ml", "elsewhere", None),
            vec![ObjectRef::new(&long).within("ml")]
        );
        let label = credential_label_value(&long);
        assert_eq!(
            index.lookup(&store, "ml", "old-target", Some(&label)),
            vec![ObjectRef::new(&long).within("ml")]
        );
        assert_eq!(
            index.lookup(&store, "ml", "old-target", Some("short")),
            vec![ObjectRef::new("short").within("ml")]
        );
        assert!(index.lookup(&store, "ml", "unrelated", None).is_empty());
        // A renamed target: the old name no longer maps.
        feed(
            &index,
            &store,
            &mut writer,
            watcher::Event::Apply(credential("short", "ml", Some("renamed"))),
        );
        assert!(index.lookup(&store, "ml", "short", None).is_empty());
        assert_eq!(index.lookup(&store, "ml", "renamed", None).len(), 1);
        // Deleted: nothing maps to it, not even its label.
        feed(
            &index,
            &store,
            &mut writer,
            watcher::Event::Delete(credential("short", "ml", Some("renamed"))),
        );
        assert!(
            index
                .lookup(&store, "ml", "renamed", Some("short"))
                .is_empty()
        );
        assert_eq!(index.lookup(&store, "ml", "creds", None).len(), 1);
        // A relist drops what it no longer lists.
        feed(&index, &store, &mut writer, watcher::Event::Init);
        feed(
            &index,
            &store,
            &mut writer,
            watcher::Event::InitApply(credential("other", "other-ns", None)),
        );
        feed(&index, &store, &mut writer, watcher::Event::InitDone);
        assert!(index.lookup(&store, "ml", "creds", None).is_empty());
        assert!(index.lookup(&store, "ml", "elsewhere", None).is_empty());
        assert_eq!(index.lookup(&store, "other-ns", "creds", None).len(), 1);
    }
}
