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
//! comes from [`crate::token::schedule::retry_at`]. It is split by job:
//! [`members`] (who belongs, and waking them), [`cache`] (the token),
//! [`failure`] (the failure and its retry time); this file keeps the
//! groups, the single flight and the limit on requests in flight.

mod cache;
mod failure;
mod members;
pub mod pace;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use tokio::sync::{Semaphore, mpsc};

pub use cache::{GroupToken, TokenHolder};
pub use failure::GroupFailure;
pub use members::Member;
pub use pace::AppKey;

use crate::{
    api::TokenApi,
    error::Error,
    runai::client::{Deprecation, IssuedToken, TrustKey},
    token::schedule,
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
    /// How many credentials the group serves, this one included.
    pub members: usize,
    /// The generation that issued the group's token, when known: the one
    /// `Auto` calls first next time.
    pub token_api: Option<TokenApi>,
    /// The notice of deprecation that the group's last answer carried.
    pub deprecation: Option<Deprecation>,
}

#[derive(Default)]
struct Group {
    /// Held while a request is in flight: the single flight.
    flight: tokio::sync::Mutex<()>,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    cache: cache::TokenCache,
    failure: Option<GroupFailure>,
    members: members::Members,
    deprecation: Option<Deprecation>,
}

impl GroupState {
    fn view(&self) -> GroupView {
        GroupView {
            token: self.cache.token(),
            held_by: self.cache.held_by(),
            serial: self.cache.serial(),
            failure: self.failure.clone(),
            members: self.members.len(),
            token_api: self.cache.token_api(),
            deprecation: self.deprecation.clone(),
        }
    }
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

/// The groups of all credentials of this process.
pub struct Exchange {
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    /// The group of each member, by uid.
    member_of: Mutex<HashMap<String, GroupKey>>,
    in_flight: Semaphore,
    serial: std::sync::atomic::AtomicU64,
    wakers: members::Wakers,
    /// One pace per Run:ai application, across groups.
    paces: pace::Paces,
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

/// Whether the group's still-valid token expires within
/// [`schedule::RETRY_BEFORE_EXPIRY`] (and a few seconds) of `now`: its
/// request then goes whatever its application's pace says, as a retry is
/// never held past that point by a `Retry-After` (api.md, Edge cases).
fn urgent(group: &Group, now: Timestamp) -> bool {
    let margin = schedule::RETRY_BEFORE_EXPIRY + std::time::Duration::from_secs(5);
    lock(&group.state)
        .cache
        .valid_until(now)
        .is_some_and(|until| schedule::delay_until(now, until) <= margin)
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
            wakers: members::Wakers::default(),
            paces: pace::Paces::default(),
        }
    }

    /// A stream of namespaced members to reconcile because their group got
    /// a new token; `namespace` limits it to one namespace (`None`: all).
    pub fn subscribe(&self, namespace: Option<String>) -> mpsc::UnboundedReceiver<Member> {
        self.wakers.subscribe(namespace)
    }

    /// A stream of cluster-scoped members to reconcile because their group
    /// got a new token (one subscriber).
    pub fn subscribe_cluster(&self) -> mpsc::UnboundedReceiver<Member> {
        self.wakers.subscribe_cluster()
    }

    fn group(&self, key: &GroupKey) -> Arc<Group> {
        lock(&self.groups).entry(*key).or_default().clone()
    }

    /// Makes `uid` (the credential `member`) a member of the group `key`,
    /// leaving any group it was in before, and returns what it sees of it.
    pub fn join(&self, uid: &str, member: Member, key: &GroupKey) -> GroupView {
        let previous = lock(&self.member_of).insert(uid.to_owned(), *key);
        if let Some(old) = previous.filter(|old| old != key) {
            self.leave_group(uid, &old);
        }
        // The member is added under the lock of all groups: another
        // member's leaving cannot drop the group in between.
        let groups = &mut lock(&self.groups);
        let group = groups.entry(*key).or_default();
        let mut state = lock(&group.state);
        state.members.insert(uid, member);
        state.view()
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
        group.map(|g| lock(&g.state).view()).unwrap_or_default()
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
                state.members.remove(uid);
                state.members.is_empty()
            };
            // A group with a request in flight is kept until it ends.
            if empty && group.flight.try_lock().is_ok() {
                groups.remove(key);
            }
        }
    }

    /// Forgets every member not in `live` (uids of existing credentials),
    /// and groups left without members.
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

    /// Has these members reconciled (through [`Exchange::subscribe`] and
    /// [`Exchange::subscribe_cluster`]).
    pub fn nudge(&self, members: Vec<Member>) {
        self.wakers.wake(members);
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
        token_api: Option<TokenApi>,
    ) -> GroupView {
        let group = self.group(key);
        let mut state = lock(&group.state);
        state
            .cache
            .offer(access_token, issued_at, expires_at, token_api, || {
                self.next_serial()
            });
        state.view()
    }

    /// Records that the Secret `holder` of the member `uid` holds
    /// `access_token`: when that is the group's token and `uid` is the one
    /// member of the group (a namespaced one, with one Secret), the group
    /// stops keeping its text, and a member that joins later reads it from
    /// `holder`.
    pub fn held_in(&self, key: &GroupKey, uid: &str, access_token: &str, holder: TokenHolder) {
        let Some(group) = lock(&self.groups).get(key).cloned() else {
            return;
        };
        let mut state = lock(&group.state);
        let sole = state.members.is_sole_namespaced(uid);
        state.cache.held_in(access_token, holder, sole);
    }

    fn next_serial(&self) -> u64 {
        self.serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// Obtains a token for the group `key` on behalf of member `uid`: waits
    /// for a request of another member in flight (the single flight), then
    /// takes the group's token if `accept` says it suits, holds back while
    /// the group backs off after a failure (one that came after
    /// `seen_failure`, or any before its retry time, whatever the caller
    /// saw), or else makes one request with `request` (within the global
    /// limit). A successful request's token becomes the group's and the
    /// other members are woken; a failed one becomes the group's failure,
    /// retried at the time [`schedule::retry_at`] gives from `now` (`jitter`
    /// in `[0, 1)`).
    ///
    /// A request waits for its turn in its Run:ai application `app` (see
    /// [`pace`]); one held back there fails as rate limited, without being
    /// sent, and is retried when the application's turn comes.
    #[allow(clippy::too_many_arguments)]
    pub async fn obtain<F, Fut>(
        &self,
        key: &GroupKey,
        app: AppKey,
        uid: &str,
        accept: impl Fn(&GroupToken) -> bool,
        seen_failure: Option<&GroupFailure>,
        (now, jitter): (Timestamp, f64),
        request: F,
    ) -> Exchanged
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(IssuedToken, Timestamp), Error>>,
    {
        let group = self.group(key);
        let flight = group.flight.lock().await;
        let answer = {
            let state = lock(&group.state);
            match state.cache.token().filter(|t| accept(t)) {
                Some(token) => Some(Exchanged::Shared(token)),
                None => failure::holds_back(state.failure.as_ref(), seen_failure, now)
                    .then_some(Exchanged::HeldBack),
            }
        };
        let outcome = match answer {
            Some(answer) => answer,
            None => match self.paces.admit(app, urgent(&group, now)).await {
                Ok(turn) => {
                    let permit = self.in_flight.acquire().await;
                    let result = request().await;
                    drop(permit);
                    self.paces.finish(turn, &result);
                    self.take_result(&group, uid, result, now, jitter)
                }
                Err(wait) => {
                    let held = Error::RateLimited {
                        retry_after: Some(wait),
                        detail: ": held back, not sent: a request for the same Run:ai application (URL and client ID) was rate limited".to_owned(),
                    };
                    // Counted from when the wait ended, not from the
                    // caller's `now`, taken before the locks.
                    let until = Timestamp::now()
                        .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
                        .unwrap_or(now);
                    let mut state = lock(&group.state);
                    state.failure = Some(failure::held(state.failure.as_ref(), &held, until));
                    Exchanged::Failed(held)
                }
            },
        };
        drop(flight);
        // Every member may have left while the request was in flight (a
        // group is kept until its request ends): an empty group goes now.
        self.drop_if_empty(key);
        outcome
    }

    /// Makes a request's outcome the group's: its token (the other members
    /// woken), or its failure.
    fn take_result(
        &self,
        group: &Group,
        uid: &str,
        result: Result<(IssuedToken, Timestamp), Error>,
        now: Timestamp,
        jitter: f64,
    ) -> Exchanged {
        match result {
            Ok((issued, at)) => {
                let token = GroupToken {
                    access_token: issued.access_token,
                    issued_at: schedule::whole_seconds(at),
                    expires_at: issued.expires_at.map(schedule::whole_seconds),
                    serial: self.next_serial(),
                    requested: true,
                    token_api: issued.token_api,
                };
                let others = {
                    let mut state = lock(&group.state);
                    state.cache.requested(&token);
                    state.failure = None;
                    state.deprecation = issued.deprecation;
                    state.members.others(uid)
                };
                self.wakers.wake(others);
                Exchanged::Requested(token)
            }
            Err(err) if err.is_refresh_failure() => {
                let mut state = lock(&group.state);
                let valid_until = state.cache.valid_until(now);
                state.failure = Some(failure::after(
                    state.failure.as_ref(),
                    &err,
                    valid_until,
                    now,
                    jitter,
                ));
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
}

#[cfg(test)]
mod tests {
    use super::*;
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
                token_api: None,
                deprecation: None,
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
                        AppKey::new("https://a", "app"),
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
        exchange.offer(
            &key(1),
            "old",
            Timestamp::from_second(10).unwrap(),
            None,
            None,
        );
        let outcome = exchange
            .obtain(
                &key(1),
                AppKey::new("https://a", "app"),
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

    #[tokio::test(start_paused = true)]
    async fn a_failure_holds_back_the_group_until_seen() {
        let exchange = Exchange::new(1);
        exchange.join("a", member("a"), &key(1));
        exchange.join("b", member("b"), &key(1));
        let failed = exchange
            .obtain(
                &key(1),
                AppKey::new("https://a", "app"),
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
                AppKey::new("https://a", "app"),
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
                AppKey::new("https://a", "app"),
                "b",
                |_| false,
                Some(&failure),
                (failure.retry_at - jiff::SignedDuration::from_secs(1), 0.0),
                || async { panic!("no request before the retry time") },
            )
            .await;
        assert!(matches!(early, Exchanged::HeldBack), "{early:?}");
        // Positive control: one that saw it, at its retry time (when the
        // application's own hold has passed too), asks again.
        tokio::time::advance(std::time::Duration::from_secs(91)).await;
        let retried = exchange
            .obtain(
                &key(1),
                AppKey::new("https://a", "app"),
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
                        AppKey::new("https://a", "app"),
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
                AppKey::new("https://a", "app"),
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
        assert!(
            exchange
                .offer(&key(1), "forged", at, None, None)
                .token
                .is_none()
        );
        let back = exchange.offer(&key(1), "tok", at, None, None);
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
