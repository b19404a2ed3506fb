//! One copy of each `caBundle` text in the cache of RunaiCredentials.
//!
//! A bundle is a kilobyte or more of PEM, and thousands of RunaiCredentials
//! often carry the same one. The watch replaces each cached `spec.caBundle`
//! with a short handle ([`CaBundles::intern`]); the reconciler turns it back
//! into the text ([`CaBundles::resolve`]). Objects that did not come through
//! the watch (tests, a handle-shaped text of a user's) resolve to themselves.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// What a handle starts with; a PEM bundle never does.
const HANDLE_PREFIX: &str = "interned-ca-bundle:sha256:";

/// The interned bundles, by handle.
#[derive(Debug, Default)]
pub struct CaBundles {
    texts: Mutex<HashMap<String, Arc<str>>>,
}

impl CaBundles {
    /// Keeps `pem` (once per distinct text) and returns its handle: the
    /// prefix and the SHA-256 of the text, 90 bytes whatever its length.
    pub fn intern(&self, pem: String) -> String {
        use sha2::Digest as _;
        use std::fmt::Write as _;
        let mut handle = String::with_capacity(HANDLE_PREFIX.len() + 64);
        handle.push_str(HANDLE_PREFIX);
        for byte in sha2::Sha256::digest(pem.as_bytes()) {
            let _ = write!(handle, "{byte:02x}");
        }
        let mut texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        texts
            .entry(handle.clone())
            .or_insert_with(|| Arc::from(pem));
        handle
    }

    /// The text of a `spec.caBundle` as cached: the interned text for a
    /// handle, the value itself otherwise.
    #[must_use]
    pub fn resolve(&self, cached: Option<&str>) -> Option<Arc<str>> {
        let cached = cached?;
        let texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            texts
                .get(cached)
                .cloned()
                .unwrap_or_else(|| Arc::from(cached)),
        )
    }

    /// Forgets the bundles no cached RunaiCredential refers to; `live`
    /// holds their `spec.caBundle` values as cached.
    pub fn retain(&self, live: &HashSet<&str>) {
        let mut texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        texts.retain(|handle, _| live.contains(handle.as_str()));
    }

    /// How many distinct bundles are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.texts.lock().unwrap_or_else(|p| p.into_inner()).len()
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

    #[test]
    fn one_copy_per_text_and_plain_values_resolve_to_themselves() {
        let bundles = CaBundles::default();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned();
        let a = bundles.intern(pem.clone());
        let b = bundles.intern(pem.clone());
        assert_eq!(a, b);
        assert_eq!(a.len(), HANDLE_PREFIX.len() + 64);
        assert_eq!(bundles.len(), 1);
        assert_eq!(bundles.resolve(Some(&a)).as_deref(), Some(pem.as_str()));
        assert_eq!(bundles.resolve(Some(&pem)).as_deref(), Some(pem.as_str()));
        assert_eq!(bundles.resolve(None), None);
        bundles.retain(&HashSet::new());
        assert!(bundles.is_empty());
    }
}
