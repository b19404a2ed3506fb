//! Who may send which credentials where: the `--allowed-urls` patterns.
//!
//! Creating a RunaiCredential lets its author send any Secret of the
//! namespace to `spec.url`. A platform team that wants to rule out sending
//! client secrets anywhere but its Run:ai control planes lists them here.

use std::fmt;

use crate::error::Error;

/// One allowed URL pattern: a scheme, a host whose labels may each be `*`
/// (exactly one DNS label), an optional port and an optional path prefix,
/// e.g. `https://*.run.ai` or `https://runai.example.com/runai/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlPattern {
    text: String,
    scheme: String,
    host_labels: Vec<String>,
    port: Option<u16>,
    /// Always ends with `/`.
    path_prefix: String,
}

impl UrlPattern {
    /// Parses one pattern.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong: not a URL, another scheme than
    /// `https`/`http`, no host, a `*` that is not a whole label, credentials,
    /// a query or a fragment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        // `*` is not a valid host character for the URL parser: stand in a
        // placeholder label, then put the wildcard back.
        const PLACEHOLDER: &str = "wildcard-label-placeholder";
        let parsed = url::Url::parse(&text.replace('*', PLACEHOLDER))
            .map_err(|e| format!("{text:?} is not a URL pattern: {e}"))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(format!("{text:?}: only https:// (or http://) patterns"));
        }
        if !parsed.username().is_empty()
            || parsed.password().is_some()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(format!(
                "{text:?}: a pattern has no credentials, query or fragment"
            ));
        }
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            return Err(format!("{text:?} has no host"));
        };
        let host_labels: Vec<String> = host
            .split('.')
            .map(|label| match label {
                PLACEHOLDER => Ok("*".to_owned()),
                l if l.contains(PLACEHOLDER) => Err(format!(
                    "{text:?}: `*` stands for a whole DNS label, as in https://*.run.ai"
                )),
                l => Ok(l.to_owned()),
            })
            .collect::<Result<_, _>>()?;
        let mut path_prefix = parsed.path().to_owned();
        if !path_prefix.ends_with('/') {
            path_prefix.push('/');
        }
        Ok(UrlPattern {
            text: text.to_owned(),
            scheme: parsed.scheme().to_owned(),
            host_labels,
            port: parsed.port_or_known_default(),
            path_prefix,
        })
    }

    /// Whether `url` is allowed by this pattern: same scheme and port, each
    /// host label equal or matched by `*`, and the path under the pattern's.
    /// A path with an encoded slash or backslash (`%2F`, `%5C`, either case)
    /// is never under a prefix: a server that decodes it would read `..`
    /// segments the check did not see (dot segments themselves, also
    /// encoded as `%2E`, are resolved by the URL parser, WHATWG URL §4.4).
    pub fn matches(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let labels: Vec<&str> = host.split('.').collect();
        let mut path = url.path().to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        url.scheme() == self.scheme
            && url.port_or_known_default() == self.port
            && labels.len() == self.host_labels.len()
            && labels.iter().zip(&self.host_labels).all(|(have, want)| {
                (want == "*" && !have.is_empty()) || have.eq_ignore_ascii_case(want)
            })
            && path.starts_with(&self.path_prefix)
            && !has_encoded_separator(url.path())
    }
}

/// Whether `path` holds an encoded `/` or `\\` (`%2F`, `%5C`, either case).
fn has_encoded_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The `--allowed-urls` list; empty allows every URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedUrls(Vec<UrlPattern>);

impl AllowedUrls {
    /// Parses the patterns, skipping empty entries (`a,,b`, a trailing comma).
    ///
    /// # Errors
    ///
    /// [`Error::Startup`] naming the first pattern that cannot be read.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, Error> {
        patterns
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                UrlPattern::parse(p).map_err(|m| Error::Startup(format!("--allowed-urls: {m}")))
            })
            .collect::<Result<_, _>>()
            .map(AllowedUrls)
    }

    /// Checks `url` (already validated as a URL) against the list.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] on `spec.url` when the list is set and no
    /// pattern matches.
    pub fn check(&self, url: &url::Url) -> Result<(), Error> {
        if self.0.is_empty() || self.0.iter().any(|p| p.matches(url)) {
            return Ok(());
        }
        let allowed: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        Err(Error::InvalidSpec {
            field: "spec.url",
            message: format!(
                "{} is not among the URLs this controller may send credentials to ({}); ask the platform team that runs runai-token-sync",
                url.as_str(),
                allowed.join(", ")
            ),
        })
    }

    /// Whether any pattern is set.
    pub fn is_restricted(&self) -> bool {
        !self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str], url: &str) -> bool {
        AllowedUrls::parse(patterns)
            .unwrap()
            .check(&url.parse().unwrap())
            .is_ok()
    }

    #[test]
    fn a_star_is_exactly_one_label() {
        let p = ["https://*.run.ai"];
        assert!(allowed(&p, "https://acme.run.ai"));
        assert!(allowed(&p, "https://ACME.run.ai/"));
        assert!(allowed(&p, "https://acme.run.ai/any/path"));
        assert!(!allowed(&p, "https://run.ai"));
        assert!(!allowed(&p, "https://a.b.run.ai"));
        assert!(!allowed(&p, "https://acme.run.ai.evil.com"));
        assert!(!allowed(&p, "https://acmerun.ai"));
        assert!(!allowed(&p, "http://acme.run.ai"), "scheme");
        assert!(!allowed(&p, "https://acme.run.ai:8443"), "port");
    }

    #[test]
    fn path_prefixes_and_ports() {
        let p = ["https://runai.example.com/runai/", "https://10.0.0.5:8443"];
        assert!(allowed(&p, "https://runai.example.com/runai"));
        assert!(allowed(&p, "https://runai.example.com/runai/"));
        assert!(allowed(&p, "https://runai.example.com/runai/x"));
        assert!(!allowed(&p, "https://runai.example.com/runaix"));
        assert!(!allowed(&p, "https://runai.example.com/"));
        assert!(allowed(&p, "https://10.0.0.5:8443/"));
        assert!(!allowed(&p, "https://10.0.0.5/"));
        let root = ["https://runai.example.com/"];
        assert!(allowed(&root, "https://runai.example.com"));
        assert!(allowed(&root, "https://runai.example.com:443/a"));
    }

    #[test]
    fn a_path_prefix_cannot_be_escaped() {
        let p = ["https://runai.example.com/runai/"];
        for escape in [
            "https://runai.example.com/runai/..%2Fadmin",
            "https://runai.example.com/runai/..%2fadmin",
            "https://runai.example.com/runai/..%5Cadmin",
            "https://runai.example.com/runai/..%5cadmin",
            "https://runai.example.com/runai/%2E%2E/admin",
            "https://runai.example.com/runai/%2e%2e/admin",
            "https://runai.example.com/runai/../admin",
            "https://runai.example.com/runai/./../admin",
            "https://runai.example.com/runai\\..\\admin",
        ] {
            assert!(!allowed(&p, escape), "{escape}");
        }
        // Positive control: the same prefix with a plain path below it.
        assert!(allowed(&p, "https://runai.example.com/runai/./tenant/"));
        assert!(allowed(&p, "https://runai.example.com/runai/tenant%20a"));
    }

    #[test]
    fn unset_allows_everything_and_the_message_names_the_list() {
        assert!(allowed(&[], "https://anything.example"));
        assert!(allowed(&["", " "], "https://anything.example"));
        let list = AllowedUrls::parse(&["https://*.run.ai"]).unwrap();
        let err = list
            .check(&"https://evil.example".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        let text = err.to_string();
        assert!(
            text.starts_with("spec.url: https://evil.example/ is not among"),
            "{text}"
        );
        assert!(text.contains("https://*.run.ai"), "{text}");
    }

    #[test]
    fn bad_patterns_are_refused_at_start() {
        for bad in [
            "acme.run.ai",
            "ftp://x",
            "https://a*.run.ai",
            "https://x/?q",
            "https://u:p@x",
        ] {
            assert!(AllowedUrls::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
