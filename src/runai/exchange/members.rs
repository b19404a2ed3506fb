//! Who belongs to a group, and waking them when it gets a new token.

use std::sync::Mutex;

use tokio::sync::mpsc;

/// A member of a group, as far as the exchange knows it: whom to wake when
/// the group gets a new token. The exchange knows no object kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    /// A namespaced object whose one Secret holds the token (a
    /// RunaiCredential): once it does, the group may drop its copy.
    Namespaced { namespace: Box<str>, name: Box<str> },
    /// A cluster-scoped object that hands the token to many Secrets (a
    /// ClusterRunaiCredential): the group keeps its copy.
    ClusterScoped { name: Box<str> },
}

impl Member {
    /// The namespaced object `name` in `namespace`.
    #[must_use]
    pub fn namespaced(namespace: &str, name: &str) -> Self {
        Member::Namespaced {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The cluster-scoped object `name`.
    #[must_use]
    pub fn cluster_scoped(name: &str) -> Self {
        Member::ClusterScoped { name: name.into() }
    }
}

/// The members of one group, by uid: a list, as most groups are small (a
/// map's least allocation is several times one entry).
#[derive(Default)]
pub(super) struct Members(Vec<(Box<str>, Member)>);

impl Members {
    /// Adds `uid` as `member`, or updates it.
    pub(super) fn insert(&mut self, uid: &str, member: Member) {
        if let Some(known) = self.0.iter_mut().find(|(m, _)| **m == *uid) {
            known.1 = member;
        } else {
            // Most groups have one member: room for exactly one, not the
            // four a first push would make.
            if self.0.is_empty() {
                self.0.reserve_exact(1);
            }
            self.0.push((uid.into(), member));
        }
    }

    pub(super) fn remove(&mut self, uid: &str) {
        self.0.retain(|(m, _)| **m != *uid);
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `uid` is the one member, with one Secret of its own.
    pub(super) fn is_sole_namespaced(&self, uid: &str) -> bool {
        matches!(self.0.as_slice(), [(only, Member::Namespaced { .. })] if **only == *uid)
    }

    /// Every member but `uid`.
    pub(super) fn others(&self, uid: &str) -> Vec<Member> {
        self.0
            .iter()
            .filter(|(member, _)| &**member != uid)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// A stream of namespaced members to reconcile, limited to one namespace or
/// not.
type Subscriber = (Option<String>, mpsc::UnboundedSender<Member>);

/// The streams that wake members: namespaced ones by namespace, and one for
/// cluster-scoped ones.
#[derive(Default)]
pub(super) struct Wakers {
    namespaced: Mutex<Vec<Subscriber>>,
    cluster_scoped: Mutex<Option<mpsc::UnboundedSender<Member>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wakers {
    pub(super) fn subscribe(&self, namespace: Option<String>) -> mpsc::UnboundedReceiver<Member> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.namespaced).push((namespace, tx));
        rx
    }

    pub(super) fn subscribe_cluster(&self) -> mpsc::UnboundedReceiver<Member> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.cluster_scoped) = Some(tx);
        rx
    }

    /// Sends each member to the stream that serves it.
    pub(super) fn wake(&self, members: Vec<Member>) {
        if members.is_empty() {
            return;
        }
        let mut subscribers = lock(&self.namespaced);
        subscribers.retain(|(_, tx)| !tx.is_closed());
        for member in members {
            let namespace = match &member {
                Member::Namespaced { namespace, .. } => namespace.clone(),
                Member::ClusterScoped { .. } => {
                    if let Some(tx) = lock(&self.cluster_scoped).as_ref() {
                        let _ = tx.send(member);
                    }
                    continue;
                }
            };
            if let Some((_, tx)) = subscribers
                .iter()
                .find(|(ns, _)| ns.as_deref().is_none_or(|ns| *ns == *namespace))
            {
                let _ = tx.send(member);
            }
        }
    }
}
