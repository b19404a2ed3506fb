//! Proxies from the environment for the Kubernetes API server connection.
//!
//! Token requests get theirs from reqwest, which reads the same variables.
//! For the API server, kube reads only `HTTPS_PROXY` and compares `NO_PROXY`
//! with the proxy's own address rather than the API server's, and ignores
//! both in a Pod. Both clients therefore follow one rule here, the one of
//! hyper-util's matcher (also reqwest's): `HTTPS_PROXY`/`HTTP_PROXY`/
//! `ALL_PROXY` by the API server's scheme, and `NO_PROXY` entries as hosts,
//! domain suffixes (`.svc`, `example.com`), IP addresses and CIDR ranges; the
//! lower-case forms too. A variable that cannot be read is ignored rather than
//! stopping the controller.

use hyper_util::client::proxy::matcher::Matcher;

/// The proxy to reach `cluster_url` through, as the environment says.
///
/// `configured` is what kube chose: a `proxy-url` set in the kubeconfig is
/// kept; one that kube took from `HTTPS_PROXY` is decided again with
/// `NO_PROXY` applied to the API server's host. The proxy's URL is returned
/// as the variable wrote it, user and password included (kube sends them as
/// `Proxy-Authorization`). A scheme kube cannot use (`socks4`) leaves the API
/// server connection direct, with a warning.
pub fn api_server_proxy(
    cluster_url: &http::Uri,
    configured: Option<http::Uri>,
) -> Option<http::Uri> {
    let kube_env_proxy = env_var(&["HTTPS_PROXY", "https_proxy"]);
    let from_kubeconfig = configured.filter(|uri| {
        kube_env_proxy
            .as_deref()
            .and_then(|p| p.trim().parse::<http::Uri>().ok())
            .is_none_or(|env| env != *uri)
    });
    if from_kubeconfig.is_some() {
        return from_kubeconfig;
    }
    Matcher::from_env().intercept(cluster_url)?;
    let variables: &[&str] = match cluster_url.scheme_str() {
        Some("http") => &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"],
        _ => &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"],
    };
    let raw = env_var(variables)?;
    usable_by_kube(&raw)
}

/// The first of `names` that is set to something other than blanks.
fn env_var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|v| !v.trim().is_empty())
}

/// A proxy URL as kube can use it: `http`, `https` or `socks5` (`socks5h`
/// is taken as `socks5`; no scheme means `http`, as curl has it).
fn usable_by_kube(raw: &str) -> Option<http::Uri> {
    let raw = raw.trim();
    let with_scheme = match raw.split_once("://") {
        None => format!("http://{raw}"),
        Some(("socks5h", rest)) => format!("socks5://{rest}"),
        Some(("http" | "https" | "socks5", _)) => raw.to_owned(),
        Some((scheme, _)) => {
            tracing::warn!(
                scheme,
                "a proxy of this scheme cannot be used for the Kubernetes API server; connecting to it directly"
            );
            return None;
        }
    };
    with_scheme.parse().ok()
}

/// Loads the current context of the kubeconfig (`KUBECONFIG` or
/// `~/.kube/config`) the way kube does, but without reading any proxy
/// variable: kube refuses to load a kubeconfig at all when `HTTPS_PROXY` or
/// `NO_PROXY` holds something it cannot parse (`a,,b`, a trailing comma, an
/// unknown scheme), while those variables must never stop the controller. The
/// proxy is then chosen by [`api_server_proxy`] as always.
///
/// # Errors
///
/// A message when there is no kubeconfig, no current context, no server URL,
/// or an unreadable certificate authority.
pub fn kubeconfig_ignoring_proxy_env() -> Result<kube::Config, String> {
    use base64::Engine as _;
    use kube::config::Kubeconfig;
    use rustls::pki_types::{CertificateDer, pem::PemObject};

    let kubeconfig = Kubeconfig::read().map_err(|e| e.to_string())?;
    let context_name = kubeconfig
        .current_context
        .clone()
        .ok_or("the kubeconfig sets no current-context")?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| format!("the kubeconfig has no context {context_name:?}"))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| format!("the kubeconfig has no cluster {:?}", context.cluster))?;
    let auth_info = context
        .user
        .as_ref()
        .and_then(|user| kubeconfig.auth_infos.iter().find(|a| &a.name == user))
        .and_then(|a| a.auth_info.clone())
        .unwrap_or_default();
    let server = cluster
        .server
        .as_deref()
        .ok_or("the kubeconfig's cluster has no server")?;
    let mut config = kube::Config::new(
        server
            .parse()
            .map_err(|e| format!("the kubeconfig's server {server:?}: {e}"))?,
    );
    config.default_namespace = context.namespace.unwrap_or_else(|| "default".to_owned());
    config.accept_invalid_certs = cluster.insecure_skip_tls_verify.unwrap_or(false);
    config.disable_compression = cluster.disable_compression.unwrap_or(false);
    config.tls_server_name = cluster.tls_server_name.clone();
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("certificate-authority-data: {e}"))?,
        ),
        (None, Some(path)) => {
            Some(std::fs::read(path).map_err(|e| format!("certificate-authority {path}: {e}"))?)
        }
        (None, None) => None,
    };
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|der| der.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the kubeconfig's certificate authority: {e}"))?;
        config.root_cert = Some(certs);
    }
    config.proxy_url = cluster.proxy_url.as_deref().and_then(|p| p.parse().ok());
    config.auth_info = auth_info;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy `matcher` picks for `url`, if any.
    fn proxy_for(matcher: &Matcher, url: &http::Uri) -> Option<http::Uri> {
        matcher
            .intercept(url)
            .map(|intercept| intercept.uri().clone())
    }

    #[test]
    fn proxy_urls_keep_their_credentials_and_kube_usable_schemes() {
        let uri = |s: &str| usable_by_kube(s).map(|u| u.to_string());
        assert_eq!(
            uri("http://u:p@proxy.corp:3128"),
            Some("http://u:p@proxy.corp:3128/".into())
        );
        assert_eq!(
            uri("proxy.corp:3128"),
            Some("http://proxy.corp:3128/".into())
        );
        assert_eq!(
            uri("socks5h://proxy:1080"),
            Some("socks5://proxy:1080/".into())
        );
        assert_eq!(
            uri("socks5://proxy:1080"),
            Some("socks5://proxy:1080/".into())
        );
        assert_eq!(uri("socks4://proxy:1080"), None);
        assert_eq!(uri("::not a uri::"), None);
    }

    fn matcher(no_proxy: &str) -> Matcher {
        Matcher::builder()
            .https("http://proxy.corp:3128")
            .http("http://plain-proxy.corp:3128")
            .no(no_proxy)
            .build()
    }

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    #[test]
    fn no_proxy_hosts_suffixes_and_cidrs() {
        let m = matcher("localhost,.svc,example.com,10.0.0.0/8,192.168.1.7");
        let proxied = |url: &str| proxy_for(&m, &uri(url));
        assert_eq!(proxied("https://kubernetes.default.svc"), None);
        assert_eq!(proxied("https://api.example.com:6443"), None);
        assert_eq!(proxied("https://example.com"), None);
        assert_eq!(proxied("https://10.96.0.1:443"), None);
        assert_eq!(proxied("https://192.168.1.7:6443"), None);
        assert_eq!(proxied("https://localhost:6443"), None);
        assert_eq!(
            proxied("https://192.168.1.8:6443"),
            Some(uri("http://proxy.corp:3128"))
        );
        assert_eq!(
            proxied("https://acme.run.ai"),
            Some(uri("http://proxy.corp:3128"))
        );
        assert_eq!(
            proxied("http://acme.run.ai"),
            Some(uri("http://plain-proxy.corp:3128")),
            "HTTP_PROXY for plain http"
        );
    }

    #[test]
    fn unreadable_entries_do_not_stop_anything() {
        // A trailing comma, blanks and junk: the good entries still apply.
        let m = matcher("10.0.0.0/8,, not a host ,");
        assert_eq!(proxy_for(&m, &uri("https://10.1.2.3")), None);
        assert!(proxy_for(&m, &uri("https://acme.run.ai")).is_some());
        let broken = Matcher::builder().https("::not a uri::").build();
        assert_eq!(proxy_for(&broken, &uri("https://acme.run.ai")), None);
    }
}
