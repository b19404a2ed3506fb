//! The shared token exchange (api.md, "Shared token exchange").
//!
//! RunaiCredentials with the same URL, token API, trusted CAs, client ID and
//! client secret form one *group*, keyed by [`GroupKey`] (a keyed hash: the
//! secret itself is never a key). A group holds the last token obtained for
//! it and, while its requests fail, one backoff for all members:
//!
//! - one request at a time per group (single flight): a member that needs a
//!   token while another member's request is in flight waits for it and takes
//!   its answer if it suits it;
//! - a failed request holds back the whole group until its retry time, so
//!   that a rate-limited Run:ai application is asked once, not once per
//!   RunaiCredential;
//! - a token obtained by a request is offered to every other member, which is
//!   reconciled at once to write it ([`Exchange::subscribe`]);
//! - after a restart, the members' Secrets seed the group ([`Exchange::offer`]),
//!   so that no request is made while their token is fresh;
//! - a group that serves one RunaiCredential does not keep its token's text
//!   once that RunaiCredential's Secret holds it ([`Exchange::held_in`]): the
//!   Secret is the copy, and a member that joins later reads it from there
//!   ([`GroupView::held_by`]).
//!   At ten thousand RunaiCredentials of as many applications, the texts
//!   (a Run:ai token is a JWT of about a kilobyte) would otherwise be most of
//!   the controller's memory.
//!
//! Token requests of all groups together are limited by one semaphore
//! (`--max-concurrent-token-requests`).
//!
//! This module holds state and does no decision of a member's own: what a
//! member accepts is the caller's predicate, and the retry time of a failure
//! comes from [`crate::token::schedule::retry_at`].

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use tokio::sync::{Semaphore, mpsc};

use crate::{
    error::Error,
    runai::client::TrustKey,
    token::schedule::{self, Failure},
};

/// The identity of a group: the keyed hash of url, token API and client
/// credentials (the one kept in each Secret's record) and the hash of the
/// trusted CA certificates. Holds no secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey([u8; 32]);

impl GroupKey {
    /// The key of the group of credentials whose keyed hash is
    /// `credentials_hash` and which trust `trust`: SHA-256 over both, 32
    /// bytes per member whatever the lengths.
    #[must_use]
    pub fn new(credentials_hash: &str, trust: &TrustKey) -> Self {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        hash.update(credentials_hash.as_bytes());
        hash.update([u8::from(trust.is_some())]);
        if let Some(trust) = trust {
            hash.update(trust);
        }
        GroupKey(hash.finalize().into())
    }
}

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

/// A group's token. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupToken {
    pub access_token: String,
    /// When it was obtained, to the second.
    pub issued_at: Timestamp,
    /// When it expires, if known.
    pub expires_at: Option<Timestamp>,
    /// Increases with every token the exchange takes in; 0 for none.
    pub serial: u64,
    /// Obtained by a request of this process (not recovered from a Secret).
    pub requested: bool,
}

impl std::fmt::Debug for GroupToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupToken")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("serial", &self.serial)
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

/// A Secret that holds a group's token under the data key `key`, as
/// `namespace/name/key` in one allocation (none of the three may contain a
/// `/`: Kubernetes object names and Secret data keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHolder(Box<str>);

impl TokenHolder {
    /// The Secret `name` in `namespace`, with the token under `key`.
    #[must_use]
    pub fn new(namespace: &str, name: &str, key: &str) -> Self {
        TokenHolder(format!("{namespace}/{name}/{key}").into_boxed_str())
    }

    fn part(&self, n: usize) -> &str {
        self.0.splitn(3, '/').nth(n).unwrap_or_default()
    }

    /// The Secret's namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.part(0)
    }

    /// The Secret's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.part(1)
    }

    /// The data key of the token.
    #[must_use]
    pub fn key(&self) -> &str {
        self.part(2)
    }
}

/// The last failed request of a group, held against every member until
/// `retry_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFailure {
    pub failure: Failure,
    pub retry_at: Timestamp,
}

/// What a member sees of its group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupView {
    /// The group's token, when the group keeps its text.
    pub token: Option<GroupToken>,
    /// The group has a token whose text it does not keep: the Secret that
    /// holds it (see the module's documentation).
    pub held_by: Option<TokenHolder>,
    /// The serial of the group's token, whether or not its text is kept; 0
    /// for none.
    pub serial: u64,
    pub failure: Option<GroupFailure>,
    /// How many RunaiCredentials the group serves, this one included.
    pub members: usize,
}

#[derive(Default)]
struct Group {
    /// Held while a request is in flight: the single flight.
    flight: tokio::sync::Mutex<()>,
    state: Mutex<GroupState>,
}

/// A group's token as the group keeps it.
struct Held {
    /// `None` while the group serves one RunaiCredential whose Secret holds
    /// the token.
    text: Option<String>,
    /// Tells whether a text offered is this token without keeping it.
    fingerprint: u64,
    issued_at: Timestamp,
    expires_at: Option<Timestamp>,
    serial: u64,
    requested: bool,
}

impl Held {
    fn token(&self) -> Option<GroupToken> {
        self.text.as_ref().map(|text| GroupToken {
            access_token: text.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            serial: self.serial,
            requested: self.requested,
        })
    }
}

/// The fingerprint of a token's text: only ever compared with another
/// fingerprint of this process, never shown or kept elsewhere.
fn fingerprint(text: &str) -> u64 {
    use std::hash::BuildHasher as _;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default).hash_one(text)
}

#[derive(Default)]
struct GroupState {
    token: Option<Held>,
    /// A Secret known to hold `token` ([`Exchange::held_in`]).
    holder: Option<TokenHolder>,
    failure: Option<GroupFailure>,
    /// By uid; a list, as most groups are small (a map's least allocation is
    /// several times one entry).
    members: Vec<(Box<str>, Member)>,
}

/// The outcome of [`Exchange::obtain`].
#[derive(Debug)]
pub enum Exchanged {
    /// The group's token suited the member: no request was made for it.
    Shared(GroupToken),
    /// This member's request obtained the token.
    Requested(GroupToken),
    /// This member's request failed; a refresh failure is now the group's.
    Failed(Error),
    /// A request of another member failed while this one waited: the group
    /// is backing off.
    HeldBack,
}

/// A stream of namespaced members to reconcile, limited to one namespace or
/// not.
type Subscriber = (Option<String>, mpsc::UnboundedSender<Member>);

/// The groups of all RunaiCredentials of this process.
pub struct Exchange {
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    /// The group of each member, by uid.
    member_of: Mutex<HashMap<String, GroupKey>>,
    in_flight: Semaphore,
    serial: std::sync::atomic::AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
    cluster_subscriber: Mutex<Option<mpsc::UnboundedSender<Member>>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("groups", &lock(&self.groups).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Exchange {
    /// An exchange allowing at most `max_in_flight` token requests at once
    /// (at least 1).
    #[must_use]
    pub fn new(max_in_flight: usize) -> Self {
        Exchange {
            groups: Mutex::default(),
            member_of: Mutex::default(),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            serial: std::sync::atomic::AtomicU64::new(0),
            subscribers: Mutex::default(),
            cluster_subscriber: Mutex::default(),
        }
    }

    /// A stream of namespaced members to reconcile because their group got
    /// a new token; `namespace` limits it to one namespace (`None`: all).
    pub fn subscribe(&self, namespace: Option<String>) -> mpsc::UnboundedReceiver<Member> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers).push((namespace, tx));
        rx
    }

    /// A stream of cluster-scoped members to reconcile because their group
    /// got a new token (one subscriber).
    pub fn subscribe_cluster(&self) -> mpsc::UnboundedReceiver<Member> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.cluster_subscriber) = Some(tx);
        rx
    }

    fn group(&self, key: &GroupKey) -> Arc<Group> {
        lock(&self.groups).entry(*key).or_default().clone()
    }

    /// Makes `uid` (the RunaiCredential `member`) a member of the group `key`,
    /// leaving any group it was in before, and returns what it sees of it.
    pub fn join(&self, uid: &str, member: Member, key: &GroupKey) -> GroupView {
        let previous = lock(&self.member_of).insert(uid.to_owned(), *key);
        if let Some(old) = previous.filter(|old| old != key) {
            self.leave_group(uid, &old);
        }
        let group = self.group(key);
        let mut state = lock(&group.state);
        if let Some(known) = state.members.iter_mut().find(|(m, _)| **m == *uid) {
            known.1 = member;
        } else {
            // Most groups have one member: room for exactly one, not the
            // four a first push would make.
            if state.members.is_empty() {
                state.members.reserve_exact(1);
            }
            state.members.push((uid.into(), member));
        }
        view(&state)
    }

    /// The group `uid` is a member of, if any.
    #[must_use]
    pub fn group_of(&self, uid: &str) -> Option<GroupKey> {
        lock(&self.member_of).get(uid).copied()
    }

    /// What the group `key` holds now.
    #[must_use]
    pub fn view(&self, key: &GroupKey) -> GroupView {
        let group = lock(&self.groups).get(key).cloned();
        group.map(|g| view(&lock(&g.state))).unwrap_or_default()
    }

    /// Removes `uid` from whatever group it is in (its credentials can no
    /// longer be read, or it is gone).
    pub fn leave(&self, uid: &str) {
        if let Some(key) = lock(&self.member_of).remove(uid) {
            self.leave_group(uid, &key);
        }
    }

    fn leave_group(&self, uid: &str, key: &GroupKey) {
        let mut groups = lock(&self.groups);
        if let Some(group) = groups.get(key) {
            let empty = {
                let mut state = lock(&group.state);
                state.members.retain(|(m, _)| **m != *uid);
                state.members.is_empty()
            };
            // A group with a request in flight is kept until it ends.
            if empty && group.flight.try_lock().is_ok() {
                groups.remove(key);
            }
        }
    }

    /// Forgets every member not in `live` (uids of existing
    /// RunaiCredentials), and groups left without members.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let gone: Vec<String> = lock(&self.member_of)
            .keys()
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.leave(&uid);
        }
    }

    /// Has these RunaiCredentials reconciled (through [`Exchange::subscribe`]).
    pub fn nudge(&self, refs: Vec<Member>) {
        self.notify(refs);
    }

    /// How many groups are kept.
    #[must_use]
    pub fn groups(&self) -> usize {
        lock(&self.groups).len()
    }

    /// Offers a token found in a member's Secret (after a restart, or where
    /// [`GroupView::held_by`] pointed): kept as the group's token when the
    /// group has none or an older one; the group's own token gets its text
    /// back. Returns the group's view afterwards, with the text.
    pub fn offer(
        &self,
        key: &GroupKey,
        access_token: &str,
        issued_at: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> GroupView {
        let group = self.group(key);
        let mut state = lock(&group.state);
        let offered = fingerprint(access_token);
        match state.token.as_mut() {
            Some(held) if held.issued_at == issued_at && held.fingerprint == offered => {
                if held.text.is_none() {
                    held.text = Some(access_token.to_owned());
                }
            }
            Some(held) if held.issued_at >= issued_at => {}
            _ => {
                state.token = Some(Held {
                    text: Some(access_token.to_owned()),
                    fingerprint: offered,
                    issued_at,
                    expires_at,
                    serial: self.next_serial(),
                    requested: false,
                });
                state.holder = None;
            }
        }
        view(&state)
    }

    /// Records that the Secret `holder` of the member `uid` holds
    /// `access_token`: when that is the group's token and `uid` is the one
    /// member of the group (a RunaiCredential), the group stops keeping its
    /// text, and a member that joins later reads it from `holder`.
    pub fn held_in(&self, key: &GroupKey, uid: &str, access_token: &str, holder: TokenHolder) {
        let Some(group) = lock(&self.groups).get(key).cloned() else {
            return;
        };
        let mut state = lock(&group.state);
        if state
            .token
            .as_ref()
            .is_some_and(|held| held.fingerprint == fingerprint(access_token))
        {
            state.holder = Some(holder);
            let alone = matches!(state.members.as_slice(), [(only, Member::Namespaced { .. })] if **only == *uid);
            if alone && let Some(held) = state.token.as_mut() {
                held.text = None;
            }
        }
    }

    fn next_serial(&self) -> u64 {
        self.serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// Obtains a token for the group `key` on behalf of member `uid`: waits
    /// for a request of another member in flight, then takes the group's
    /// token if `accept` says it suits, holds back while the group backs off
    /// after a failure (one that came after `seen_failure`, or any before
    /// its retry time, whatever the caller saw), or else makes one
    /// request with `request` (within the global limit). A successful
    /// request's token becomes the group's and the other members are
    /// reconciled; a failed one becomes the group's failure, retried at the
    /// time [`schedule::retry_at`] gives from `now` (`jitter` in `[0, 1)`).
    pub async fn obtain<F, Fut>(
        &self,
        key: &GroupKey,
        uid: &str,
        accept: impl Fn(&GroupToken) -> bool,
        seen_failure: Option<&GroupFailure>,
        (now, jitter): (Timestamp, f64),
        request: F,
    ) -> Exchanged
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(crate::runai::client::IssuedToken, Timestamp), Error>>,
    {
        let group = self.group(key);
        let flight = group.flight.lock().await;
        let outcome = self
            .obtain_in(&group, uid, accept, seen_failure, (now, jitter), request)
            .await;
        drop(flight);
        // Every member may have left while the request was in flight (a
        // group is kept until its request ends): an empty group goes now.
        self.drop_if_empty(key);
        outcome
    }

    async fn obtain_in<F, Fut>(
        &self,
        group: &Group,
        uid: &str,
        accept: impl Fn(&GroupToken) -> bool,
        seen_failure: Option<&GroupFailure>,
        (now, jitter): (Timestamp, f64),
        request: F,
    ) -> Exchanged
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(crate::runai::client::IssuedToken, Timestamp), Error>>,
    {
        {
            let state = lock(&group.state);
            if let Some(token) = state
                .token
                .as_ref()
                .and_then(Held::token)
                .filter(|t| accept(t))
            {
                return Exchanged::Shared(token);
            }
            // Enforced here, where no caller can skip it: a failure new to
            // the caller, or one whose retry time (`Retry-After`, backoff)
            // has not come, holds the request back.
            if let Some(failure) = &state.failure
                && (Some(failure) != seen_failure || now < failure.retry_at)
            {
                return Exchanged::HeldBack;
            }
        }
        let permit = self.in_flight.acquire().await;
        let result = request().await;
        drop(permit);
        match result {
            Ok((issued, now)) => {
                let token = GroupToken {
                    access_token: issued.access_token,
                    issued_at: schedule::whole_seconds(now),
                    expires_at: issued.expires_at.map(schedule::whole_seconds),
                    serial: self.next_serial(),
                    requested: true,
                };
                let others: Vec<Member> = {
                    let mut state = lock(&group.state);
                    // Kept whole until a member's Secret holds it (offered
                    // back after the write).
                    state.token = Some(Held {
                        text: Some(token.access_token.clone()),
                        fingerprint: fingerprint(&token.access_token),
                        issued_at: token.issued_at,
                        expires_at: token.expires_at,
                        serial: token.serial,
                        requested: true,
                    });
                    state.holder = None;
                    state.failure = None;
                    state
                        .members
                        .iter()
                        .filter(|(member, _)| &**member != uid)
                        .map(|(_, r)| r.clone())
                        .collect()
                };
                self.notify(others);
                Exchanged::Requested(token)
            }
            Err(err) if err.is_refresh_failure() => {
                let mut state = lock(&group.state);
                let attempts = state
                    .failure
                    .as_ref()
                    .map_or(0, |f| f.failure.attempts)
                    .saturating_add(1);
                let valid_until = state
                    .token
                    .as_ref()
                    .and_then(|t| t.expires_at)
                    .filter(|at| *at > now);
                state.failure = Some(GroupFailure {
                    failure: Failure {
                        reason: err.reason(),
                        message: err.to_string(),
                        attempts,
                    },
                    retry_at: schedule::retry_at(
                        now,
                        attempts,
                        err.retry_after(),
                        valid_until,
                        jitter,
                    ),
                });
                Exchanged::Failed(err)
            }
            Err(err) => Exchanged::Failed(err),
        }
    }

    /// Forgets the group `key` if it has no member and no request in flight.
    fn drop_if_empty(&self, key: &GroupKey) {
        let mut groups = lock(&self.groups);
        let empty = groups.get(key).is_some_and(|group| {
            lock(&group.state).members.is_empty() && group.flight.try_lock().is_ok()
        });
        if empty {
            groups.remove(key);
        }
    }

    fn notify(&self, refs: Vec<Member>) {
        if refs.is_empty() {
            return;
        }
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|(_, tx)| !tx.is_closed());
        for member in refs {
            let namespace = match &member {
                Member::Namespaced { namespace, .. } => namespace.clone(),
                Member::ClusterScoped { .. } => {
                    if let Some(tx) = lock(&self.cluster_subscriber).as_ref() {
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

fn view(state: &GroupState) -> GroupView {
    let token = state.token.as_ref().and_then(Held::token);
    GroupView {
        held_by: match (&token, &state.token) {
            (None, Some(_)) => state.holder.clone(),
            _ => None,
        },
        serial: state.token.as_ref().map_or(0, |held| held.serial),
        token,
        failure: state.failure.clone(),
        members: state.members.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runai::client::IssuedToken;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn key(n: u8) -> GroupKey {
        GroupKey::new(&format!("hash{n}"), &None)
    }

    fn member(name: &str) -> Member {
        Member::namespaced("ns", name)
    }

    fn issued(token: &str) -> Result<(IssuedToken, Timestamp), Error> {
        Ok((
            IssuedToken {
                access_token: token.to_owned(),
                expires_at: None,
            },
            Timestamp::from_second(1_000).unwrap(),
        ))
    }

    #[tokio::test]
    async fn concurrent_members_share_one_request() {
        let exchange = Arc::new(Exchange::new(4));
        let requests = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (exchange, requests) = (exchange.clone(), requests.clone());
            exchange.join(&format!("uid{i}"), member(&format!("m{i}")), &key(1));
            tasks.push(tokio::spawn(async move {
                exchange
                    .obtain(
                        &key(1),
                        &format!("uid{i}"),
                        |_| true,
                        None,
                        (Timestamp::now(), 0.0),
                        || async {
                            requests.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            issued("tok")
                        },
                    )
                    .await
            }));
        }
        let mut requested = 0;
        for task in tasks {
            match task.await.unwrap() {
                Exchanged::Requested(t) => {
                    requested += 1;
                    assert_eq!(t.access_token, "tok");
                }
                Exchanged::Shared(t) => assert_eq!(t.access_token, "tok"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((requests.load(Ordering::SeqCst), requested), (1, 1));
        assert_eq!(exchange.view(&key(1)).members, 6);
    }

    #[tokio::test]
    async fn a_token_that_does_not_suit_is_requested_again_and_others_are_told() {
        let exchange = Exchange::new(1);
        let mut told = exchange.subscribe(None);
        exchange.join("a", member("a"), &key(1));
        exchange.join("b", member("b"), &key(1));
        exchange.offer(&key(1), "old", Timestamp::from_second(10).unwrap(), None);
        let outcome = exchange
            .obtain(
                &key(1),
                "a",
                |t| t.access_token != "old",
                None,
                (Timestamp::now(), 0.0),
                || async { issued("new") },
            )
            .await;
        assert!(
            matches!(outcome, Exchanged::Requested(ref t) if t.access_token == "new"),
            "{outcome:?}"
        );
        assert_eq!(told.try_recv().unwrap(), member("b"));
        assert!(told.try_recv().is_err(), "the requester itself is not told");
    }

    #[tokio::test]
    async fn a_failure_holds_back_the_group_until_seen() {
        let exchange = Exchange::new(1);
        exchange.join("a", member("a"), &key(1));
        exchange.join("b", member("b"), &key(1));
        let failed = exchange
            .obtain(
                &key(1),
                "a",
                |_| false,
                None,
                (Timestamp::now(), 0.0),
                || async {
                    Err(Error::RateLimited {
                        retry_after: Some(std::time::Duration::from_secs(90)),
                        detail: String::new(),
                    })
                },
            )
            .await;
        assert!(matches!(failed, Exchanged::Failed(_)), "{failed:?}");
        let view = exchange.view(&key(1));
        let failure = view.failure.clone().expect("the group's failure");
        assert_eq!(failure.failure.attempts, 1);
        assert!(failure.retry_at >= Timestamp::now() + jiff::SignedDuration::from_secs(89));
        // Another member that had not seen it is held back, with no request.
        let held = exchange
            .obtain(
                &key(1),
                "b",
                |_| false,
                None,
                (Timestamp::now(), 0.0),
                || async { panic!("no request") },
            )
            .await;
        assert!(matches!(held, Exchanged::HeldBack), "{held:?}");
        // Nor does having seen it let a member ask before the retry time.
        let early = exchange
            .obtain(
                &key(1),
                "b",
                |_| false,
                Some(&failure),
                (failure.retry_at - jiff::SignedDuration::from_secs(1), 0.0),
                || async { panic!("no request before the retry time") },
            )
            .await;
        assert!(matches!(early, Exchanged::HeldBack), "{early:?}");
        // Positive control: one that saw it, at its retry time, asks again.
        let retried = exchange
            .obtain(
                &key(1),
                "b",
                |_| false,
                Some(&failure),
                (failure.retry_at, 0.0),
                || async { issued("t") },
            )
            .await;
        assert!(matches!(retried, Exchanged::Requested(_)), "{retried:?}");
        assert_eq!(exchange.view(&key(1)).failure, None);
    }

    #[tokio::test]
    async fn a_group_left_during_its_request_goes_when_the_request_ends() {
        let exchange = Arc::new(Exchange::new(1));
        exchange.join("a", member("a"), &key(1));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let obtaining = {
            let exchange = exchange.clone();
            tokio::spawn(async move {
                exchange
                    .obtain(
                        &key(1),
                        "a",
                        |_| false,
                        None,
                        (Timestamp::now(), 0.0),
                        || async {
                            let _ = wait.await;
                            issued("tok")
                        },
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        exchange.leave("a");
        // Positive control: kept while its request is in flight.
        assert_eq!(exchange.groups(), 1);
        release.send(()).unwrap();
        obtaining.await.unwrap();
        assert_eq!(exchange.groups(), 0, "no empty group left behind");
    }

    #[tokio::test]
    async fn a_group_of_one_keeps_no_text_once_its_secret_holds_it() {
        let exchange = Exchange::new(1);
        exchange.join("a", member("a"), &key(1));
        let requested = exchange
            .obtain(
                &key(1),
                "a",
                |_| false,
                None,
                (Timestamp::now(), 0.0),
                || async { issued("tok") },
            )
            .await;
        assert!(
            matches!(requested, Exchanged::Requested(_)),
            "{requested:?}"
        );
        // Kept until written: a member joining meanwhile would need it.
        assert!(exchange.view(&key(1)).token.is_some());
        let holder = TokenHolder::new("ns", "a", "accessToken");
        // Only the one member's own Secret counts (a member that just left
        // may still be finishing its write).
        exchange.held_in(
            &key(1),
            "gone",
            "tok",
            TokenHolder::new("ns", "gone", "accessToken"),
        );
        assert!(exchange.view(&key(1)).token.is_some());
        // Another text is not the group's token: nothing changes.
        exchange.held_in(&key(1), "a", "other", holder.clone());
        assert!(exchange.view(&key(1)).token.is_some());
        exchange.held_in(&key(1), "a", "tok", holder.clone());
        let view = exchange.view(&key(1));
        assert_eq!((view.token, view.held_by.as_ref()), (None, Some(&holder)));
        assert_eq!(view.serial, 1, "which token it was is still known");
        assert_eq!(
            (holder.namespace(), holder.name(), holder.key()),
            ("ns", "a", "accessToken")
        );

        // A joiner is pointed at the holder; the text read there is taken
        // back without a new serial, and kept while two are served.
        assert_eq!(
            exchange.join("b", member("b"), &key(1)).held_by,
            Some(holder.clone())
        );
        let at = Timestamp::from_second(1_000).unwrap();
        assert!(exchange.offer(&key(1), "forged", at, None).token.is_none());
        let back = exchange.offer(&key(1), "tok", at, None);
        let token = back.token.expect("the text is back");
        assert_eq!(
            (token.access_token.as_str(), token.serial, token.requested),
            ("tok", 1, true)
        );
        assert_eq!(back.held_by, None);
        exchange.held_in(
            &key(1),
            "b",
            "tok",
            TokenHolder::new("ns", "b", "accessToken"),
        );
        assert!(
            exchange.view(&key(1)).token.is_some(),
            "two members share it"
        );
    }

    #[test]
    fn a_group_with_a_cluster_member_keeps_the_text() {
        let exchange = Exchange::new(1);
        // `uid`'s Secret holds the group's token: is the text still kept?
        let kept_after_held_in = |group: u8, uid: &str| {
            exchange.offer(
                &key(group),
                "tok",
                Timestamp::from_second(10).unwrap(),
                None,
            );
            let holder = TokenHolder::new("ns", uid, "accessToken");
            exchange.held_in(&key(group), uid, "tok", holder);
            exchange.view(&key(group)).token.is_some()
        };
        exchange.join("c", Member::cluster_scoped("c"), &key(1));
        assert!(kept_after_held_in(1, "c"));
        // Positive control: a RunaiCredential alone in its group does not.
        exchange.join("a", member("a"), &key(2));
        assert!(!kept_after_held_in(2, "a"));
    }

    #[test]
    fn members_move_between_groups_and_empty_groups_go() {
        let exchange = Exchange::new(1);
        exchange.join("a", member("a"), &key(1));
        exchange.join("b", member("b"), &key(1));
        assert_eq!(exchange.join("a", member("a"), &key(2)).members, 1);
        assert_eq!(exchange.view(&key(1)).members, 1);
        exchange.retain(&["a".to_owned()].into());
        assert_eq!(exchange.groups(), 1);
        assert_eq!(exchange.view(&key(2)).members, 1);
    }

    #[test]
    fn keys_differ_by_trusted_cas() {
        assert_ne!(
            GroupKey::new("h", &None),
            GroupKey::new("h", &Some([1; 32]))
        );
        assert_eq!(
            GroupKey::new("h", &Some([1; 32])),
            GroupKey::new("h", &Some([1; 32]))
        );
    }
}
