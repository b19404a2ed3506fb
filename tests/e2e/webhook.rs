//! A validating admission webhook on Secrets, served over HTTPS on this
//! machine, whose answers a test can slow down: the API server's slow
//! webhooks (api.md, "Talking to the API server: faults").

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::BodyExt as _;
use hyper::{Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::harness::DeleteOnDrop;

/// A running webhook, registered for the Secrets of one namespace that
/// carry a label; unregistered when dropped.
pub(crate) struct SlowWebhook {
    /// The registration's name, which the API server's errors carry.
    pub(crate) name: String,
    delay_ms: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
    /// Unregisters it, also when the test failed (its selectors already
    /// keep other tests' Secrets out).
    _registration: DeleteOnDrop,
}

impl SlowWebhook {
    /// Serves the webhook and registers it (timeout 1 s, failurePolicy
    /// Fail) for CREATE and UPDATE of the Secrets in the cluster's namespace labelled
    /// `label=yes`; each answer (allowed) comes after `delay`.
    pub(crate) async fn register(
        cluster: &crate::harness::Cluster,
        label: &str,
        delay: Duration,
    ) -> SlowWebhook {
        let namespace = &cluster.namespace;
        let delay_ms = Arc::new(AtomicU64::new(u64::try_from(delay.as_millis()).unwrap()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (address, ca_pem) = serve(delay_ms.clone(), calls.clone()).await;
        let name = format!("slow-{namespace}.e2e.tokensync.dev");
        let configuration: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": name,
                "clientConfig": {
                    "url": format!("https://{address}/validate"),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
                },
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["secrets"],
                }],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {label: "yes"}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 1,
            }],
        }))
        .unwrap();
        Api::<ValidatingWebhookConfiguration>::all(cluster.client.clone())
            .create(&PostParams::default(), &configuration)
            .await
            .unwrap();
        SlowWebhook {
            delay_ms,
            calls,
            _registration: DeleteOnDrop {
                kubeconfig: cluster.kubeconfig.clone(),
                objects: vec![format!("validatingwebhookconfiguration/{name}")],
            },
            name,
        }
    }

    /// Answers after `delay` from now on.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::Release);
    }

    /// How many reviews the API server has sent.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }
}

/// Serves the webhook on a free local port with a fresh self-signed
/// certificate for 127.0.0.1; returns its address and that certificate.
async fn serve(delay_ms: Arc<AtomicU64>, calls: Arc<AtomicUsize>) -> (SocketAddr, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, delay_ms, calls) = (acceptor.clone(), delay_ms.clone(), calls.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (delay_ms, calls) = (delay_ms.clone(), calls.clone());
                    async move {
                        calls.fetch_add(1, Ordering::AcqRel);
                        let body = request.into_body().collect().await?.to_bytes();
                        let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let delay = Duration::from_millis(delay_ms.load(Ordering::Acquire));
                        tokio::time::sleep(delay).await;
                        let answer = json!({
                            "apiVersion": "admission.k8s.io/v1",
                            "kind": "AdmissionReview",
                            "response": {"uid": review["request"]["uid"], "allowed": true},
                        });
                        let mut response = Response::new(http_body_util::Full::new(Bytes::from(
                            answer.to_string(),
                        )));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (address, certificate.pem())
}
