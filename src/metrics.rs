//! Prometheus metrics, all prefixed `runai_token_sync_`.
//!
//! Labels hold only fixed strings (results, token API names, error classes)
//! and, for the per-credential gauges, the RunaiCredential's namespace and
//! name, as cert-manager does for certificates. Never a URL, a secret or a token.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, text::encode},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::api::TokenApi;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenRequestLabels {
    token_api: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenApiLabels {
    token_api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrdLabels {
    crd: String,
}

/// Identifies one RunaiCredential in the per-credential gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl CredentialLabels {
    pub fn new(namespace: &str, name: &str) -> Self {
        CredentialLabels {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// The values of a condition's `status`, and so of the Ready gauge's
/// `condition` label (Kubernetes API conventions).
const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms … ~41 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The controller's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    reconciliations: Family<ResultLabels, Counter>,
    reconcile_duration: HistogramFamily<ResultLabels>,
    token_requests: Family<TokenRequestLabels, Counter>,
    token_request_duration: HistogramFamily<TokenApiLabels>,
    credentials: Arc<CredentialSeries>,
    leader: Gauge,
    crd_missing_fields: Family<CrdLabels, Gauge>,
}

/// What the per-credential series of one RunaiCredential show.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CredentialState {
    /// Unix seconds; no series when unknown.
    expires_at: Option<i64>,
    failures: u32,
    /// Index into [`CONDITION_STATUSES`].
    ready: u8,
}

/// The per-credential gauges (token expiration, consecutive failures, Ready
/// status): five series per RunaiCredential, rendered at each scrape from
/// one small record each.
///
/// As a `Family` of gauges per metric they took about 700 bytes per
/// RunaiCredential (a hash table entry and a shared counter per series); this
/// is under 200.
#[derive(Debug, Default)]
struct CredentialSeries {
    states: Mutex<HashMap<CredentialLabels, CredentialState>>,
    /// The deprecated token endpoint each credential's last answer came
    /// from; empty for all but those.
    deprecated: Mutex<HashMap<CredentialLabels, Vec<Arc<str>>>>,
    /// The deprecated endpoints already announced per credential (kept
    /// when the series goes, so that an Event is never repeated).
    announced: Mutex<HashMap<CredentialLabels, Vec<Arc<str>>>>,
}

impl CredentialSeries {
    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialLabels, CredentialState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deprecated(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialLabels, Vec<Arc<str>>>> {
        self.deprecated.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn announced(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialLabels, Vec<Arc<str>>>> {
        self.announced.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn credential_labels(c: &CredentialLabels) -> [(&'static str, &str); 2] {
    [("namespace", &c.namespace), ("name", &c.name)]
}

impl Collector for CredentialSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A copy (about 60 bytes per RunaiCredential), so that the lock is
        // not held while a slow scraper takes the text.
        let states: Vec<(CredentialLabels, CredentialState)> =
            self.states().iter().map(|(c, s)| (c.clone(), *s)).collect();
        let deprecated: Vec<(CredentialLabels, Vec<Arc<str>>)> = self
            .deprecated()
            .iter()
            .map(|(c, e)| (c.clone(), e.clone()))
            .collect();
        if !deprecated.is_empty() {
            let mut family = encoder.encode_descriptor(
                "token_api_deprecated",
                "1 for each token endpoint that answered a credential with a Deprecation header (RFC 9745) since this process started",
                None,
                MetricType::Gauge,
            )?;
            for (credential, endpoints) in &deprecated {
                for endpoint in endpoints {
                    let labels = [
                        ("namespace", &*credential.namespace),
                        ("name", &*credential.name),
                        ("endpoint", &**endpoint),
                    ];
                    family.encode_family(&labels)?.encode_gauge(&1i64)?;
                }
            }
        }
        if states.is_empty() {
            return Ok(());
        }

        if states.iter().any(|(_, s)| s.expires_at.is_some()) {
            let mut family = encoder.encode_descriptor(
                "token_expiration_timestamp_seconds",
                "When the token in a RunaiCredential's Secret expires (Unix time), when known",
                None,
                MetricType::Gauge,
            )?;
            for (credential, state) in states.iter() {
                if let Some(at) = state.expires_at {
                    let labels = credential_labels(credential);
                    family.encode_family(&labels)?.encode_gauge(&(at as f64))?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "consecutive_failures",
            "Failed refresh attempts of a RunaiCredential since its last success",
            None,
            MetricType::Gauge,
        )?;
        for (credential, state) in states.iter() {
            let labels = credential_labels(credential);
            family
                .encode_family(&labels)?
                .encode_gauge(&i64::from(state.failures))?;
        }
        let mut family = encoder.encode_descriptor(
            "credential_ready_status",
            "The Ready condition of a credential: 1 on the series of its status (True, False or Unknown), 0 on the others; as cert-manager's certmanager_certificate_ready_status",
            None,
            MetricType::Gauge,
        )?;
        for (credential, state) in states.iter() {
            for (i, condition) in CONDITION_STATUSES.iter().enumerate() {
                let labels = [
                    ("namespace", &*credential.namespace),
                    ("name", &*credential.name),
                    ("condition", *condition),
                ];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&i64::from(usize::from(state.ready) == i))?;
            }
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("runai_token_sync");
        let reconciliations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "RunaiCredential reconciliations, by result (success or error)",
            reconciliations.clone(),
        );
        let reconcile_duration: HistogramFamily<ResultLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of RunaiCredential reconciliations, token requests included",
            reconcile_duration.clone(),
        );
        let token_requests = Family::<TokenRequestLabels, Counter>::default();
        registry.register(
            "token_requests",
            "Token requests to Run:ai, by token API (of a success, the generation that answered; of a failure, spec.tokenApi) and result (success or the failure class)",
            token_requests.clone(),
        );
        let token_request_duration: HistogramFamily<TokenApiLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "token_request_duration_seconds",
            "Latency of the Run:ai token endpoint",
            token_request_duration.clone(),
        );
        let credentials = Arc::new(CredentialSeries::default());
        registry.register_collector(Box::new(credentials.clone()));
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (or runs without leader election), else 0",
            leader.clone(),
        );
        let crd_missing_fields = Family::<CrdLabels, Gauge>::default();
        registry.register(
            "crd_missing_fields",
            "Fields (and enum values) the controller knows that the installed CRD lacks; 0 when it is current",
            crd_missing_fields.clone(),
        );
        Metrics {
            registry,
            reconciliations,
            reconcile_duration,
            token_requests,
            token_request_duration,
            credentials,
            leader,
            crd_missing_fields,
        }
    }

    /// Records one reconciliation.
    pub fn reconciled(&self, success: bool, duration: Duration) {
        let labels = ResultLabels {
            result: if success { "success" } else { "error" },
        };
        self.reconciliations.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records one token request; `result` is `"success"` or an error class.
    pub fn token_requested(&self, api: TokenApi, result: &'static str, duration: Duration) {
        let token_api = api.as_str();
        self.token_requests
            .get_or_create(&TokenRequestLabels { token_api, result })
            .inc();
        self.token_request_duration
            .get_or_create(&TokenApiLabels { token_api })
            .observe(duration.as_secs_f64());
    }

    /// Sets the per-credential gauges from what its status shows:
    /// `expires_at` in Unix seconds, `ready` the status of its Ready
    /// condition (`True`, `False`; anything else counts as `Unknown`).
    pub fn observe_credential(
        &self,
        credential: CredentialLabels,
        expires_at: Option<i64>,
        failures: u32,
        ready: &str,
    ) {
        // "Unknown" for anything but True and False.
        let ready = CONDITION_STATUSES[..2]
            .iter()
            .position(|c| *c == ready)
            .unwrap_or(2) as u8;
        let state = CredentialState {
            expires_at,
            failures,
            ready,
        };
        let mut states = self.credentials.states();
        match states.get_mut(&credential) {
            Some(known) => *known = state,
            None => {
                states.insert(credential, state);
            }
        }
    }

    /// Records which deprecated endpoint (RFC 9745 `Deprecation` header)
    /// answered `credential` last: the series of
    /// `runai_token_sync_token_api_deprecated`, which goes once an answer
    /// comes without one (`None`). Returns whether that is news (the first
    /// time for this credential and endpoint while the process runs, or
    /// since it was forgotten), so that it is announced once, never per
    /// refresh.
    pub fn note_deprecated(&self, credential: &CredentialLabels, endpoint: Option<&str>) -> bool {
        let Some(endpoint) = endpoint else {
            self.credentials.deprecated().remove(credential);
            return false;
        };
        let endpoint: Arc<str> = endpoint.into();
        self.credentials
            .deprecated()
            .insert(credential.clone(), vec![endpoint.clone()]);
        let mut announced = self.credentials.announced();
        let endpoints = announced.entry(credential.clone()).or_default();
        if endpoints.contains(&endpoint) {
            return false;
        }
        endpoints.push(endpoint);
        true
    }

    /// Drops the gauges of RunaiCredentials that no longer exist.
    pub fn retain_credentials(&self, live: &HashSet<CredentialLabels>) {
        self.credentials
            .states()
            .retain(|credential, _| live.contains(credential));
        self.credentials
            .deprecated()
            .retain(|credential, _| live.contains(credential));
        self.credentials
            .announced()
            .retain(|credential, _| live.contains(credential));
    }

    /// Drops the gauges of one deleted RunaiCredential.
    pub fn forget_credential(&self, credential: &CredentialLabels) {
        self.credentials.states().remove(credential);
        self.credentials.deprecated().remove(credential);
        self.credentials.announced().remove(credential);
    }

    /// Sets how many fields (and enum values) the installed CRD `crd`
    /// lacks of the controller's (see [`crate::api::gaps`]).
    pub fn set_crd_missing_fields(&self, crd: &str, missing: usize) {
        self.crd_missing_fields
            .get_or_create(&CrdLabels {
                crd: crd.to_owned(),
            })
            .set(i64::try_from(missing).unwrap_or(i64::MAX));
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        self.encode_in_chunks(|chunk| {
            text.push_str(&chunk);
            true
        });
        text
    }

    /// The metrics in the Prometheus text format, handed to `send` in pieces
    /// of about [`METRICS_CHUNK`] bytes; stops when `send` returns false
    /// (the scraper went away). At 10,000 RunaiCredentials the whole text is
    /// several megabytes: rendered in one string, it added that much to the
    /// resident memory at every scrape.
    pub fn encode_in_chunks(&self, send: impl FnMut(String) -> bool) {
        let mut writer = ChunkWriter {
            buffer: String::with_capacity(METRICS_CHUNK),
            send,
        };
        if encode(&mut writer, &self.registry).is_ok() && !writer.buffer.is_empty() {
            (writer.send)(writer.buffer);
        }
    }
}

/// The size in bytes of the pieces [`Metrics::encode_in_chunks`] hands on.
pub const METRICS_CHUNK: usize = 64 * 1024;

struct ChunkWriter<F> {
    buffer: String,
    send: F,
}

impl<F: FnMut(String) -> bool> std::fmt::Write for ChunkWriter<F> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buffer.push_str(s);
        if self.buffer.len() >= METRICS_CHUNK {
            let full = std::mem::replace(&mut self.buffer, String::with_capacity(METRICS_CHUNK));
            if !(self.send)(full) {
                return Err(std::fmt::Error);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(name: &str) -> CredentialLabels {
        CredentialLabels::new("ml", name)
    }

    #[test]
    fn a_deprecated_endpoint_is_news_once_per_credential_until_forgotten() {
        let m = Metrics::new();
        let v1 = Some("https://acme.run.ai/api/v1/token");
        assert!(!m.encode().contains("token_api_deprecated"));
        assert!(m.note_deprecated(&credential("a"), v1));
        assert!(!m.note_deprecated(&credential("a"), v1), "not news twice");
        assert!(
            m.note_deprecated(&credential("b"), v1),
            "another credential"
        );
        let text = m.encode();
        assert!(
            text.contains(
                "runai_token_sync_token_api_deprecated{namespace=\"ml\",name=\"a\",endpoint=\"https://acme.run.ai/api/v1/token\"} 1"
            ),
            "{text}"
        );
        // An answer without the header: the series goes; the announcement
        // is not repeated when the header comes back.
        assert!(!m.note_deprecated(&credential("b"), None));
        assert!(!m.encode().contains("name=\"b\",endpoint"));
        assert!(!m.note_deprecated(&credential("b"), v1));
        assert!(m.encode().contains("name=\"b\",endpoint"));
        m.forget_credential(&credential("a"));
        assert!(!m.encode().contains("name=\"a\",endpoint"));
        assert!(
            m.note_deprecated(&credential("a"), v1),
            "news again once forgotten"
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.reconciled(true, Duration::from_millis(12));
        m.token_requested(TokenApi::V2, "rate_limited", Duration::from_millis(80));
        m.observe_credential(credential("a"), Some(1_800_000_000), 2, "False");
        m.set_leader(true);
        let text = m.encode();
        for line in [
            "runai_token_sync_reconciliations_total{result=\"success\"} 1",
            "runai_token_sync_token_requests_total{token_api=\"V2\",result=\"rate_limited\"} 1",
            "runai_token_sync_token_expiration_timestamp_seconds{namespace=\"ml\",name=\"a\"} 1800000000",
            "runai_token_sync_consecutive_failures{namespace=\"ml\",name=\"a\"} 2",
            "runai_token_sync_leader 1",
            "runai_token_sync_credential_ready_status{namespace=\"ml\",name=\"a\",condition=\"False\"} 1",
            "runai_token_sync_credential_ready_status{namespace=\"ml\",name=\"a\",condition=\"True\"} 0",
            "runai_token_sync_credential_ready_status{namespace=\"ml\",name=\"a\",condition=\"Unknown\"} 0",
            "runai_token_sync_reconcile_duration_seconds_count{result=\"success\"} 1",
            "runai_token_sync_token_request_duration_seconds_count{token_api=\"V2\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn deleted_credentials_lose_their_series() {
        let m = Metrics::new();
        m.observe_credential(credential("kept"), Some(1), 0, "True");
        m.observe_credential(credential("gone"), Some(2), 1, "False");
        m.retain_credentials(&[credential("kept")].into());
        let text = m.encode();
        assert!(text.contains("name=\"kept\""), "{text}");
        assert!(!text.contains("name=\"gone\""), "{text}");
    }

    #[test]
    fn a_deleted_credential_loses_its_series_at_once() {
        let m = Metrics::new();
        m.observe_credential(credential("kept"), Some(1), 0, "True");
        m.observe_credential(credential("gone"), Some(2), 1, "False");
        m.forget_credential(&credential("gone"));
        let text = m.encode();
        assert!(
            text.contains("name=\"kept\",condition=\"True\"} 1"),
            "{text}"
        );
        assert!(!text.contains("name=\"gone\""), "{text}");
    }

    #[test]
    fn thousands_of_series_are_rendered_in_pieces() {
        let m = Metrics::new();
        for i in 0..2_000 {
            m.observe_credential(credential(&format!("c{i}")), Some(i), 0, "True");
        }
        let mut pieces = Vec::new();
        m.encode_in_chunks(|chunk| {
            pieces.push(chunk);
            true
        });
        assert!(pieces.len() > 1, "one piece of {} bytes", pieces[0].len());
        assert!(pieces.iter().all(|p| p.len() < 2 * METRICS_CHUNK));
        assert_eq!(pieces.concat(), m.encode());
        assert!(m.encode().ends_with("# EOF\n"));
        // A scraper gone after the first piece stops the rendering.
        let mut sent = 0;
        m.encode_in_chunks(|_| {
            sent += 1;
            false
        });
        assert_eq!(sent, 1);
    }

    #[test]
    fn unknown_expiry_removes_the_gauge() {
        let m = Metrics::new();
        m.observe_credential(credential("a"), Some(5), 0, "True");
        m.observe_credential(credential("a"), None, 1, "False");
        assert!(!m.encode().contains("token_expiration_timestamp_seconds{"));
    }
}
