//! Running the controller: watches and their triggers, leader election, the
//! metrics and health server, telemetry, and the API server's proxy.

pub mod allocator;
pub mod cluster;
pub mod controller;
pub mod crds;
pub mod leader;
pub mod proxy;
pub mod server;
pub mod telemetry;
pub mod token_file;
pub mod triggers;
pub mod watch_pulse;

/// The watch configuration for what may number in the thousands
/// (RunaiCredentials, Secrets): the first list, and any list after the watch
/// expired, is read from etcd in pages of 500 objects (kube's default page
/// size), not in one answer from the API server's watch cache.
///
/// The watch cache ignores `limit` when asked with `resourceVersion=0`, so
/// that "any" list semantic returns all objects at once: at 10,000
/// RunaiCredentials a single body of tens of megabytes, parsed whole, with
/// every object's `managedFields`, before the cache keeps what decisions
/// read. That peak, not what is kept, set the controller's resident memory.
/// Pages cost the API server one etcd range read per 500 objects, once per
/// start. Source: Kubernetes API concepts, "Retrieving large results sets in
/// chunks" and "Semantics for get and list".
pub(crate) fn paged_watch_config() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS)
}

/// The configuration of the watches of small, unpaged lists (the "any"
/// list semantic, from the API server's cache), with the same timeout.
pub(crate) fn cached_watch_config() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default()
        .any_semantic()
        .timeout(WATCH_TIMEOUT_SECONDS)
}

/// How long a failing watch waits before it tries again: from 0.8 s,
/// doubling, up to [`WATCH_RETRY_MAX`] plus a random jitter of up to as
/// much again, and from the start after two minutes without a failure.
/// kube-runtime's default goes up to 30 s plus as much jitter, which could
/// leave the controller idle a minute after the API server came back; this
/// keeps it within 30 s, however many outages came before (api.md,
/// "Talking to the API server: faults").
pub(crate) fn watch_backoff() -> impl kube::runtime::utils::Backoff + 'static {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(800))
        .with_max_delay(WATCH_RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        kube::runtime::watcher::ExponentialBackoff::from(delays),
        std::time::Duration::from_secs(120),
    )
}

/// The longest delay of [`watch_backoff`] before its jitter (seconds): with
/// the jitter, a watch tries again at most 20 s after it failed.
pub const WATCH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// How the Kubernetes client retries an answer that says "later" (429
/// from Priority and Fairness or a starting API server, 503, 504): up to 5
/// times, from 0.1 s doubling up to 5 s apart, or after the answer's
/// `Retry-After` when it says longer. Bounded, so that a call waits at
/// most about half a minute for an API server that keeps answering so,
/// and the failure then takes the controller's own retry path (a kept
/// token, a requeue), never a new token request. kube's default (15 tries,
/// up to 1000 s apart) could hold a watch or a write for minutes.
#[must_use]
pub fn api_server_retry() -> kube::client::retry::RetryPolicy {
    kube::client::retry::RetryPolicy::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
        5,
        true,
    )
    .expect("a valid backoff: 0.1 s up to 5 s")
}

/// How long the API server keeps each watch request open (seconds), so
/// that a live watch answers within it: the API server ends the request
/// and the watch goes on with a new one from where it was. A watch whose
/// connection silently stopped delivering (a load balancer that dropped it
/// without closing it) then fails by the client's read timeout,
/// [`WATCH_READ_TIMEOUT`], and is replaced, instead of leaving the caches
/// stale for good (api.md, "Talking to the API server: faults": replaced
/// within 90 s).
pub const WATCH_TIMEOUT_SECONDS: u32 = 50;

/// The Kubernetes client's read timeout: a little more than
/// [`WATCH_TIMEOUT_SECONDS`], since a watch request is the longest read
/// the controller makes; every other call answers far sooner.
pub const WATCH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(65);

/// Drops from an object's metadata what no decision reads before its cache
/// keeps it: `managedFields` (emptied lists keep their allocation, so the
/// field goes) and the last-applied copy of the spec that `kubectl apply`
/// leaves, often the largest annotation.
pub(crate) fn strip_for_cache(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The object a member of the shared exchange stands for, to reconcile it.
pub(crate) fn member_ref<K>(
    member: crate::runai::exchange::Member,
) -> kube::runtime::reflector::ObjectRef<K>
where
    K: kube::Resource<DynamicType = ()>,
{
    use crate::runai::exchange::Member;
    match member {
        Member::Namespaced { namespace, name } => {
            kube::runtime::reflector::ObjectRef::new(&name).within(&namespace)
        }
        Member::ClusterScoped { name } => kube::runtime::reflector::ObjectRef::new(&name),
    }
}
