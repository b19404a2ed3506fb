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
pub mod triggers;

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
    kube::runtime::watcher::Config::default()
}

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
