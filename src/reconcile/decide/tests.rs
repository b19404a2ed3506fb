//! The decision with plain values and a fixed clock: every path from what
//! was read to what is done, without an API server.

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::{
    api::{RunaiCredential, validate_spec},
    output::secret::{HashKey, TargetSecret},
    reconcile::status::Failure,
    runai::client::ClientCredentials,
    runai::exchange::{GroupFailure, GroupKey, GroupToken, GroupView},
    token::schedule::{Desired, RefreshReason, TokenRecord},
};

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

fn key() -> HashKey {
    HashKey::new(vec![7; 32])
}

fn credential() -> RunaiCredential {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tokensync.dev/v1alpha1",
        "kind": "RunaiCredential",
        "metadata": {"name": "trainer", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {"url": "https://acme.run.ai", "clientCredentialsSecretRef": {"name": "creds"}},
    }))
    .unwrap()
}

fn creds() -> ClientCredentials {
    ClientCredentials {
        client_id: "app".into(),
        client_secret: "s3cr3t".into(),
    }
}

fn hash(k: &HashKey) -> String {
    k.credentials_hash(
        "https://acme.run.ai/",
        crate::api::TokenApi::default(),
        &creds(),
    )
}

fn record(k: &HashKey, issued: Timestamp, lifetime: i64) -> TokenRecord {
    TokenRecord {
        issued_at: issued,
        expires_at: Some(issued + secs(lifetime)),
        credentials_hash: hash(k),
        generation: 1,
        refresh_request: None,
        definition: None,
        token_api: None,
    }
}

/// A credential with no Secret yet, its credentials readable, alone in its group.
fn observed<'a>(cr: &'a RunaiCredential, k: &'a HashKey) -> Observed<'a> {
    Observed {
        cr,
        hash_key: k,
        now: now(),
        jitter: 0.0,
        spec: validate_spec(cr, false),
        old_targets: false,
        target: TargetSecret::Missing,
        stored: None,
        token_client: None,
        credentials: Ok(creds()),
        desired: Desired {
            credentials_hash: Some(hash(k)),
            generation: 1,
            refresh_request: cr.refresh_request().map(str::to_owned),
            definition: None,
        },
        backoff: None,
        pending: None,
        group_key: Some(GroupKey::new(&hash(k), &None)),
        group: Some((
            GroupKey::new(&hash(k), &None),
            GroupView {
                members: 1,
                ..GroupView::default()
            },
        )),
        readers: 1,
        namespace_terminating: None,
        obtained: None,
        written: None,
    }
}

/// The same, with a managed Secret holding `token` as recorded.
fn with_stored<'a>(mut o: Observed<'a>, token: &str, rec: TokenRecord) -> Observed<'a> {
    let secret = crate::output::secret::desired_secret(o.cr, token, &rec, o.hash_key);
    o.stored = crate::output::secret::stored_token(&secret, &o.cr.spec.target.key, o.hash_key);
    o.target = TargetSecret::Managed(Box::new(secret));
    o
}

fn finish(step: Step) -> Finish {
    match step {
        Step::Finish(f) => *f,
        other => panic!("expected Finish, got {other:?}"),
    }
}

fn condition<'a>(
    f: &'a Finish,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    f.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap()
}

/// Gives the group of `o` the token `token`, its text kept.
fn give_group(o: &mut Observed<'_>, token: GroupToken) {
    let view = &mut o.group.as_mut().unwrap().1;
    view.serial = token.serial;
    view.token = Some(token);
}

fn group_token(token: &str, issued: Timestamp, lifetime: i64, serial: u64) -> GroupToken {
    GroupToken {
        access_token: token.into(),
        issued_at: issued,
        expires_at: Some(issued + secs(lifetime)),
        serial,
        requested: true,
        token_api: None,
    }
}

#[test]
fn a_first_token_is_requested_written_and_announced() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    assert!(matches!(decide(&o), Step::ReadNamespace));
    o.namespace_terminating = Some(false);
    assert!(matches!(
        decide(&o),
        Step::RequestToken {
            reason: RefreshReason::NoToken
        }
    ));
    let token = adopt(&o, &group_token("tok-1", now(), 3600, 1));
    o.obtained = Some(Obtained::Token(token));
    match decide(&o) {
        Step::WriteSecret {
            secret,
            token,
            repair,
        } => {
            assert!(!repair);
            assert_eq!(token, "tok-1");
            assert_eq!(secret.metadata.name.as_deref(), Some("trainer"));
        }
        other => panic!("{other:?}"),
    }
    o.written = Some(Ok(()));
    let f = finish(decide(&o));
    assert!(f.status_changed);
    assert_eq!(condition(&f, "Ready").status, "True");
    assert_eq!(
        f.event.as_ref().map(|e| (e.warning, e.reason)),
        Some((false, "TokenIssued"))
    );
    assert_eq!(f.pending, Update::Clear);
    // Due at 2/3 of the hour (no jitter beyond a small share).
    let Requeue::At(at) = f.requeue else {
        panic!("{:?}", f.requeue)
    };
    assert!(at <= now() + secs(2400) && at > now() + secs(2000), "{at}");
}

#[test]
fn deletion_and_a_terminating_namespace_mean_no_request_and_no_write() {
    let (mut cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    o.namespace_terminating = Some(true);
    let f = finish(decide(&o));
    assert_eq!(
        (f.note, f.status.is_none(), f.event.is_none()),
        (Note::NamespaceTerminating, true, true)
    );
    cr.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let o = observed(&cr, &k);
    let f = finish(decide(&o));
    assert_eq!(
        (f.note, f.status.is_none(), f.requeue),
        (Note::Deleting, true, Requeue::OnChange)
    );
}

#[test]
fn an_invalid_spec_blocks_and_warns_once() {
    let (mut cr, k) = (credential(), key());
    cr.spec.refresh_interval = Some("often".into());
    let o = observed(&cr, &k);
    let f = finish(decide(&o));
    assert_eq!(condition(&f, "Ready").reason, "InvalidSpec");
    assert_eq!(f.event.as_ref().map(|e| e.warning), Some(true));
    assert_eq!(f.requeue, Requeue::OnChange);
    // The same status stored: no write, no second Warning.
    cr.status = f.status.clone();
    let f = finish(decide(&observed(&cr, &k)));
    assert!(!f.status_changed && f.event.is_none(), "{f:?}");
}

#[test]
fn a_foreign_secret_is_a_conflict_looked_at_again_later() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    o.target = TargetSecret::Foreign;
    let f = finish(decide(&o));
    assert_eq!(condition(&f, "Ready").reason, "SecretConflict");
    assert_eq!(f.requeue, Requeue::After(CONFLICT_RECHECK));
}

#[test]
fn a_fresh_token_costs_nothing() {
    let (mut cr, k) = (credential(), key());
    let issued = now() - secs(600);
    let o = with_stored(observed(&cr, &k), "tok-1", record(&k, issued, 3600));
    let f = finish(decide(&o));
    assert_eq!(f.note, Note::Fresh);
    assert_eq!(f.backoff, Update::Clear);
    // Positive control above (a first pass writes the status); now stored.
    cr.status = f.status.clone();
    let o = with_stored(observed(&cr, &k), "tok-1", record(&k, issued, 3600));
    let f = finish(decide(&o));
    assert!(!f.status_changed && f.event.is_none());
}

#[test]
fn an_edited_secret_is_repaired_with_the_same_token() {
    let (cr, k) = (credential(), key());
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(60), 3600),
    );
    if let TargetSecret::Managed(secret) = &mut o.target {
        secret
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("tokensync.dev/refresh-requested-at");
        secret
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("app.kubernetes.io/managed-by".into(), "someone".into());
    }
    o.namespace_terminating = Some(false);
    match decide(&o) {
        Step::WriteSecret { token, repair, .. } => {
            assert_eq!((token.as_str(), repair), ("tok-1", true))
        }
        other => panic!("{other:?}"),
    }
    o.written = Some(Ok(()));
    assert_eq!(finish(decide(&o)).note, Note::Fresh);
}

#[test]
fn a_newer_token_of_the_group_is_written_without_a_request_or_an_event() {
    let (cr, k) = (credential(), key());
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(60), 3600),
    );
    let view = &mut o.group.as_mut().unwrap().1;
    view.members = 6;
    view.token = Some(group_token("tok-2", now() - secs(5), 3600, 7));
    view.serial = 7;
    // Whether the namespace is being deleted is read before any write.
    assert!(matches!(decide(&o), Step::ReadNamespace));
    o.namespace_terminating = Some(false);
    match decide(&o) {
        Step::WriteSecret { token, repair, .. } => {
            assert_eq!((token.as_str(), repair), ("tok-2", false))
        }
        other => panic!("{other:?}"),
    }
    o.written = Some(Ok(()));
    let f = finish(decide(&o));
    assert!(
        f.event.is_none(),
        "a routine group refresh is not announced"
    );
    assert_eq!(f.status.as_ref().unwrap().shared_with, 5);
    // Positive control: the group's token being the stored one changes nothing.
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(60), 3600),
    );
    give_group(&mut o, group_token("tok-1", now() - secs(60), 3600, 7));
    assert_eq!(finish(decide(&o)).note, Note::Fresh);
}

#[test]
fn a_member_that_joins_takes_the_groups_fresh_token() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    give_group(&mut o, group_token("tok-g", now() - secs(60), 3600, 3));
    o.namespace_terminating = Some(false);
    match decide(&o) {
        Step::WriteSecret { token, .. } => assert_eq!(token, "tok-g"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_shortest_refresh_interval_of_a_group_wins() {
    let (mut cr, k) = (credential(), key());
    cr.spec.refresh_interval = Some("35m".into());
    let mut o = observed(&cr, &k);
    // 36 minutes old: fresh for the group (due at 40), due for this member.
    give_group(&mut o, group_token("tok-g", now() - secs(2160), 3600, 3));
    o.namespace_terminating = Some(false);
    assert!(matches!(
        decide(&o),
        Step::RequestToken {
            reason: RefreshReason::NoToken
        }
    ));
    let token = o.group.as_ref().unwrap().1.token.clone().unwrap();
    assert!(!accepts(&o, RefreshReason::NoToken, &token));
    assert!(accepts(
        &o,
        RefreshReason::NoToken,
        &group_token("new", now(), 3600, 4)
    ));
}

#[test]
fn a_refresh_request_needs_a_newer_token_than_the_group_had() {
    let (mut cr, k) = (credential(), key());
    cr.metadata.annotations = Some(
        [(
            "tokensync.dev/refresh-requested-at".to_owned(),
            "1".to_owned(),
        )]
        .into(),
    );
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(60), 3600),
    );
    give_group(&mut o, group_token("tok-1", now() - secs(60), 3600, 3));
    o.namespace_terminating = Some(false);
    assert!(matches!(
        decide(&o),
        Step::RequestToken {
            reason: RefreshReason::RefreshRequested
        }
    ));
    let seen = o.group.as_ref().unwrap().1.token.clone().unwrap();
    assert!(!accepts(&o, RefreshReason::RefreshRequested, &seen));
    // Another member's forced refresh that finished meanwhile serves this one.
    assert!(accepts(
        &o,
        RefreshReason::RefreshRequested,
        &group_token("tok-2", now(), 3600, 4)
    ));
    // A group that keeps no text (its token is only in a Secret) still
    // tells which token was seen: that one, its text read back meanwhile,
    // does not answer the request.
    let view = &mut o.group.as_mut().unwrap().1;
    view.token = None;
    assert_eq!(view.serial, 3);
    assert!(!accepts(&o, RefreshReason::RefreshRequested, &seen));
    assert!(accepts(
        &o,
        RefreshReason::RefreshRequested,
        &group_token("tok-2", now(), 3600, 4)
    ));
}

#[test]
fn the_group_backing_off_holds_back_a_member_and_warns_it_once() {
    let (mut cr, k) = (credential(), key());
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(3000), 3600),
    );
    let failure = GroupFailure {
        failure: Failure {
            reason: "TokenEndpointError",
            message: "HTTP 429".into(),
            attempts: 1,
        },
        retry_at: now() + secs(90),
    };
    o.group.as_mut().unwrap().1.failure = Some(failure.clone());
    let f = finish(decide(&o));
    assert_eq!(f.note, Note::Waiting);
    assert_eq!(condition(&f, "Degraded").status, "True");
    assert_eq!(
        condition(&f, "Ready").status,
        "True",
        "the token is still valid"
    );
    assert_eq!(f.requeue, Requeue::At(now() + secs(90)));
    assert_eq!(
        f.event.as_ref().map(|e| e.reason),
        Some("TokenEndpointError")
    );
    cr.status = f.status.clone();
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(3000), 3600),
    );
    o.group.as_mut().unwrap().1.failure = Some(failure.clone());
    assert!(finish(decide(&o)).event.is_none(), "shown already");
    // Past its retry time, the member asks (the exchange holds back the rest).
    o.now = now() + secs(91);
    o.namespace_terminating = Some(false);
    assert!(matches!(decide(&o), Step::RequestToken { .. }));
}

#[test]
fn an_expired_token_with_failing_refreshes_is_not_ready() {
    let (cr, k) = (credential(), key());
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(4000), 3600),
    );
    o.namespace_terminating = Some(false);
    o.obtained = Some(Obtained::Failed(GroupFailure {
        failure: Failure {
            reason: "TokenEndpointError",
            message: "HTTP 503".into(),
            attempts: 3,
        },
        retry_at: now() + secs(20),
    }));
    let f = finish(decide(&o));
    let ready = condition(&f, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TokenExpired")
    );
    assert_eq!(f.status.as_ref().unwrap().failed_attempts, 3);
}

#[test]
fn a_refused_write_keeps_the_token_and_the_truth() {
    let (cr, k) = (credential(), key());
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(3590), 3600),
    );
    o.namespace_terminating = Some(false);
    let token = adopt(&o, &group_token("tok-2", now(), 3600, 2));
    o.obtained = Some(Obtained::Token(token.clone()));
    o.written = Some(Err(Error::SecretWriteFailed {
        secret: "trainer".into(),
        status: 403,
        message: "quota".into(),
    }));
    let f = finish(decide(&o));
    assert_eq!(f.pending, Update::Set(token.clone()));
    assert!(matches!(f.backoff, Update::Set(_)));
    assert_eq!(
        condition(&f, "Ready").status,
        "True",
        "the old token has 10 s left"
    );
    assert_eq!(condition(&f, "Degraded").reason, "SecretWriteFailed");
    // The next pass writes the kept token with no request.
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(3590), 3600),
    );
    o.pending = Some(token);
    o.namespace_terminating = Some(false);
    match decide(&o) {
        Step::WriteSecret { token, .. } => assert_eq!(token, "tok-2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unreadable_credentials_back_off_and_warn_at_a_decaying_rate() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    o.credentials = Err(Error::CredentialsNotFound("Secret creds not found".into()));
    o.desired.credentials_hash = None;
    o.group_key = None;
    o.group = None;
    let f = finish(decide(&o));
    assert_eq!(condition(&f, "Ready").reason, "CredentialsNotFound");
    assert!(f.leave_group, "no longer a member of its group");
    assert!(f.event.is_some());
    let Update::Set((backoff, failure)) = f.backoff.clone() else {
        panic!("{:?}", f.backoff)
    };
    assert_eq!(failure.attempts, 1);
    // The third attempt in a row is not warned about; the fourth is.
    let mut third = observed(&cr, &k);
    third.credentials = Err(Error::CredentialsNotFound("Secret creds not found".into()));
    third.desired.credentials_hash = None;
    third.group_key = None;
    third.group = None;
    third.now = backoff.retry_at;
    third.backoff = Some((
        Backoff {
            retry_at: backoff.retry_at,
            ..backoff.clone()
        },
        Failure {
            attempts: 2,
            ..failure.clone()
        },
    ));
    assert!(finish(decide(&third)).event.is_none());
    third.backoff = Some((
        backoff.clone(),
        Failure {
            attempts: 3,
            ..failure
        },
    ));
    assert!(finish(decide(&third)).event.is_some());
}

#[test]
fn a_renamed_target_releases_the_old_secret_first() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    o.old_targets = true;
    assert!(matches!(decide(&o), Step::ReleaseOldTargets));
}

#[test]
fn a_secret_someone_else_creates_first_is_a_conflict_and_the_token_kept() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    o.namespace_terminating = Some(false);
    let token = adopt(&o, &group_token("tok-1", now(), 3600, 1));
    o.obtained = Some(Obtained::Token(token.clone()));
    o.written = Some(Err(Error::SecretConflict {
        secret: "trainer".into(),
    }));
    let f = finish(decide(&o));
    assert_eq!(condition(&f, "Ready").reason, "SecretConflict");
    assert_eq!(f.pending, Update::Set(token));
    assert_eq!(f.requeue, Requeue::After(CONFLICT_RECHECK));
}

#[test]
fn a_refused_write_without_a_valid_token_is_not_ready() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    o.namespace_terminating = Some(false);
    o.obtained = Some(Obtained::Token(adopt(
        &o,
        &group_token("tok-1", now(), 3600, 1),
    )));
    o.written = Some(Err(Error::SecretWriteFailed {
        secret: "trainer".into(),
        status: 422,
        message: "denied by a webhook".into(),
    }));
    let f = finish(decide(&o));
    let ready = condition(&f, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SecretWriteFailed")
    );
    assert_eq!(
        f.event.as_ref().map(|e| (e.warning, e.reason)),
        Some((true, "SecretWriteFailed"))
    );
}

#[test]
fn a_routine_refresh_is_requested_when_due_and_not_announced() {
    let (cr, k) = (credential(), key());
    // Issued 50 minutes ago with an hour's lifetime: past 2/3.
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(3000), 3600),
    );
    give_group(
        &mut o,
        GroupToken {
            requested: false,
            ..group_token("tok-1", now() - secs(3000), 3600, 1)
        },
    );
    o.namespace_terminating = Some(false);
    // The group's token is the one that is due: not taken again.
    assert!(matches!(
        decide(&o),
        Step::RequestToken {
            reason: RefreshReason::Due
        }
    ));
    o.obtained = Some(Obtained::Token(adopt(
        &o,
        &group_token("tok-2", now(), 3600, 2),
    )));
    assert!(matches!(
        decide(&o),
        Step::WriteSecret { repair: false, .. }
    ));
    o.written = Some(Ok(()));
    let f = finish(decide(&o));
    assert!(
        f.event.is_none(),
        "a routine refresh is counted, not announced"
    );
    assert_eq!(condition(&f, "Ready").status, "True");
}

#[test]
fn a_group_that_grows_writes_no_status_until_the_member_writes_anyway() {
    let (mut cr, k) = (credential(), key());
    let issued = now() - secs(600);
    let o = with_stored(observed(&cr, &k), "tok-1", record(&k, issued, 3600));
    cr.status = finish(decide(&o)).status;
    assert_eq!(cr.status.as_ref().unwrap().shared_with, 0);
    // Four more members joined.
    fn grown<'a>(cr: &'a RunaiCredential, k: &'a HashKey, issued: Timestamp) -> Observed<'a> {
        let mut o = with_stored(observed(cr, k), "tok-1", record(k, issued, 3600));
        let view = &mut o.group.as_mut().unwrap().1;
        view.members = 5;
        o
    }
    let f = finish(decide(&grown(&cr, &k, issued)));
    assert!(
        !f.status_changed,
        "a membership change alone writes nothing"
    );
    // Positive control: the next write for another reason carries the count.
    cr.metadata.generation = Some(2);
    let f = finish(decide(&grown(&cr, &k, issued)));
    assert!(f.status_changed);
    assert_eq!(f.status.unwrap().shared_with, 4);
}

#[test]
fn a_step_never_shows_the_token_or_the_secrets_data() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    give_group(
        &mut o,
        group_token("tok3n-in-debug", now() - secs(60), 3600, 3),
    );
    o.namespace_terminating = Some(false);
    let step = decide(&o);
    // Positive control: this step carries the token.
    let Step::WriteSecret { token, .. } = &step else {
        panic!("{step:?}")
    };
    assert_eq!(token, "tok3n-in-debug");
    let shown = format!("{step:?} {step:#?}");
    assert!(
        shown.contains("WriteSecret") && shown.contains("accessToken"),
        "{shown}"
    );
    for form in [
        "tok3n-in-debug".to_owned(),
        format!("{:?}", b"tok3n-in-debug"),
        "116, 111, 107, 51".to_owned(),
    ] {
        assert!(!shown.contains(&form), "{shown}");
    }
}

#[test]
fn a_terminating_namespace_gets_no_write_whatever_the_tokens_source() {
    let (cr, k) = (credential(), key());
    // The group's newer token, a repair of an edited Secret, a pending
    // token whose write failed before, and a token request.
    let mut shared = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(60), 3600),
    );
    give_group(&mut shared, group_token("tok-2", now() - secs(5), 3600, 7));
    let mut repair = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(60), 3600),
    );
    if let TargetSecret::Managed(secret) = &mut repair.target {
        secret
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("app.kubernetes.io/managed-by");
    }
    let mut pending = observed(&cr, &k);
    pending.pending = Some(PendingToken {
        access_token: "tok-p".into(),
        record: record(&k, now() - secs(5), 3600),
    });
    let request = observed(&cr, &k);
    for (what, mut o) in [
        ("shared", shared),
        ("repair", repair),
        ("pending", pending),
        ("request", request),
    ] {
        // Positive control: in a live namespace it writes (or asks).
        o.namespace_terminating = Some(false);
        assert!(
            matches!(
                decide(&o),
                Step::WriteSecret { .. } | Step::RequestToken { .. }
            ),
            "{what}: {:?}",
            decide(&o)
        );
        o.namespace_terminating = None;
        assert!(
            matches!(decide(&o), Step::ReadNamespace),
            "{what}: read first"
        );
        o.namespace_terminating = Some(true);
        let f = finish(decide(&o));
        assert_eq!(f.note, Note::NamespaceTerminating, "{what}");
    }
}

#[test]
fn only_what_defines_the_credential_mints_a_new_token() {
    let (mut cr, k) = (credential(), key());
    let defined = |o: &mut Observed<'_>, definition: &str| {
        o.desired.definition = Some(definition.to_owned());
        o.namespace_terminating = Some(false);
    };
    let rec = TokenRecord {
        definition: Some("d1".into()),
        ..record(&k, now() - secs(60), 3600)
    };
    // A cosmetic edit (a new generation, the same definition): the token
    // held stays, with no request, and it is still Ready's token.
    cr.metadata.generation = Some(2);
    let mut o = with_stored(observed(&cr, &k), "tok-1", rec.clone());
    defined(&mut o, "d1");
    o.desired.generation = 2;
    let f = finish(decide(&o));
    assert_eq!(f.note, Note::Fresh);
    assert_eq!(condition(&f, "Ready").status, "True");
    // Positive control: a new definition (another credentials Secret, other
    // CAs) asks for a token at once, and the held one is no longer Ready's.
    let mut o = with_stored(observed(&cr, &k), "tok-1", rec);
    defined(&mut o, "d2");
    o.desired.generation = 2;
    assert!(
        matches!(
            decide(&o),
            Step::RequestToken {
                reason: RefreshReason::SpecChanged
            }
        ),
        "{:?}",
        decide(&o)
    );
}

#[test]
fn a_refused_repair_is_reported_and_the_token_kept() {
    let (cr, k) = (credential(), key());
    let mut o = with_stored(
        observed(&cr, &k),
        "tok-1",
        record(&k, now() - secs(60), 3600),
    );
    if let TargetSecret::Managed(secret) = &mut o.target {
        secret
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("app.kubernetes.io/managed-by");
    }
    o.namespace_terminating = Some(false);
    // Positive control: the edited Secret is to be repaired.
    assert!(matches!(decide(&o), Step::WriteSecret { repair: true, .. }));
    o.written = Some(Err(Error::SecretWriteFailed {
        secret: "trainer".into(),
        status: 403,
        message: "denied by a webhook".into(),
    }));
    let f = finish(decide(&o));
    assert_eq!(condition(&f, "Degraded").status, "True");
    assert_eq!(condition(&f, "Degraded").reason, "SecretWriteFailed");
    assert_eq!(
        condition(&f, "Ready").status,
        "True",
        "the token there is still valid"
    );
    assert!(matches!(f.backoff, Update::Set(_)), "retried with backoff");
    assert!(f.event.is_some_and(|e| e.warning), "a Warning");
}

/// One row of the refresh rule: what is held and asked for, and the reason
/// of the token request both kinds must make (`None`: none).
struct Row {
    what: &'static str,
    /// Seconds since the held token was issued (it lives an hour); `None`:
    /// no token held.
    age: Option<i64>,
    /// The held record's refresh request, definition and generation.
    answered: Option<&'static str>,
    definition: Option<&'static str>,
    generation: i64,
    /// What the spec asks now.
    request: Option<&'static str>,
    want: Option<RefreshReason>,
}

const ROWS: &[Row] = &[
    Row {
        what: "no token",
        age: None,
        answered: None,
        definition: Some("d"),
        generation: 1,
        request: None,
        want: Some(RefreshReason::NoToken),
    },
    Row {
        what: "fresh",
        age: Some(600),
        answered: None,
        definition: Some("d"),
        generation: 1,
        request: None,
        want: None,
    },
    Row {
        what: "due at two thirds",
        age: Some(2500),
        answered: None,
        definition: Some("d"),
        generation: 1,
        request: None,
        want: Some(RefreshReason::Due),
    },
    Row {
        what: "expired",
        age: Some(3700),
        answered: None,
        definition: Some("d"),
        generation: 1,
        request: None,
        want: Some(RefreshReason::Due),
    },
    Row {
        what: "a refresh request",
        age: Some(600),
        answered: None,
        definition: Some("d"),
        generation: 1,
        request: Some("r1"),
        want: Some(RefreshReason::RefreshRequested),
    },
    Row {
        what: "a refresh request answered",
        age: Some(600),
        answered: Some("r1"),
        definition: Some("d"),
        generation: 1,
        request: Some("r1"),
        want: None,
    },
    Row {
        what: "another refresh request",
        age: Some(600),
        answered: Some("r1"),
        definition: Some("d"),
        generation: 1,
        request: Some("r2"),
        want: Some(RefreshReason::RefreshRequested),
    },
    Row {
        what: "a cosmetic spec change",
        age: Some(600),
        answered: None,
        definition: Some("d"),
        generation: 0,
        request: None,
        want: None,
    },
    Row {
        what: "defined anew",
        age: Some(600),
        answered: None,
        definition: Some("old"),
        generation: 1,
        request: None,
        want: Some(RefreshReason::SpecChanged),
    },
    Row {
        what: "an old record, another generation",
        age: Some(600),
        answered: None,
        definition: None,
        generation: 0,
        request: None,
        want: Some(RefreshReason::SpecChanged),
    },
    Row {
        what: "an old record, the same generation",
        age: Some(600),
        answered: None,
        definition: None,
        generation: 1,
        request: None,
        want: None,
    },
];

/// The refresh rule is one for both kinds: each row decided for a
/// RunaiCredential ([`decide`]) and for a ClusterRunaiCredential
/// ([`crate::reconcile::fanout::plan_token`]) asks for the same request.
#[test]
fn one_refresh_rule_for_both_kinds() {
    let k = key();
    for row in ROWS {
        let mut cr = credential();
        if let Some(value) = row.request {
            cr.metadata.annotations = Some(
                [(
                    crate::api::REFRESH_REQUESTED_AT_ANNOTATION.to_owned(),
                    value.to_owned(),
                )]
                .into(),
            );
        }
        let issued = now() - secs(row.age.unwrap_or(0));
        let rec = TokenRecord {
            refresh_request: row.answered.map(str::to_owned),
            definition: row.definition.map(str::to_owned),
            generation: row.generation,
            ..record(&k, issued, 3600)
        };
        let mut o = observed(&cr, &k);
        o.desired.definition = Some("d".to_owned());
        o.namespace_terminating = Some(false);
        if row.age.is_some() {
            o = with_stored(o, "held", rec.clone());
        }
        let namespaced = match decide(&o) {
            Step::RequestToken { reason } => Some(reason),
            Step::Finish(_) => None,
            other => panic!("{}: {other:?}", row.what),
        };
        let token = row.age.map(|_| group_token("held", issued, 3600, 1));
        let records: Vec<&TokenRecord> = row.age.map(|_| &rec).into_iter().collect();
        let answered = row.answered.filter(|a| row.request == Some(*a));
        let cluster =
            crate::reconcile::fanout::plan_token(&crate::reconcile::fanout::SourceFacts {
                uid: "uid-1",
                desired: &o.desired,
                token: token.as_ref(),
                records: &records,
                answered,
                refresh_interval: None,
                matched: 1,
                now: now(),
            });
        assert_eq!(namespaced, row.want, "RunaiCredential: {}", row.what);
        assert_eq!(cluster, row.want, "ClusterRunaiCredential: {}", row.what);
    }
}

/// Joining a group is a step the decision returns, not a side effect of
/// reading: a credential whose group is known but not joined joins first,
/// and one without a group key leaves.
#[test]
fn membership_is_decided_not_read() {
    let (cr, k) = (credential(), key());
    let mut o = observed(&cr, &k);
    o.group = None;
    assert!(matches!(decide(&o), Step::JoinGroup));
    // Once joined, the decision goes on (a first token is requested).
    let joined = observed(&cr, &k);
    let mut joined_read = joined;
    joined_read.namespace_terminating = Some(false);
    assert!(matches!(decide(&joined_read), Step::RequestToken { .. }));
    // An unusable spec: no join, and the finish leaves the group.
    let mut bad = observed(&cr, &k);
    bad.spec = Err(Error::InvalidSpec {
        field: "spec.url",
        message: "not https".into(),
    });
    bad.group_key = None;
    bad.group = None;
    assert!(finish(decide(&bad)).leave_group);
    // Positive control: a member with a fresh token stays.
    let issued = now() - secs(60);
    let fresh = with_stored(observed(&cr, &k), "tok", record(&k, issued, 3600));
    assert!(!finish(decide(&fresh)).leave_group);
}

/// A token a shell would interpret is never written into an EnvFile
/// output: a failed refresh naming the output, and no write.
#[test]
fn a_token_a_shell_would_interpret_is_not_written_into_an_env_file() {
    let k = key();
    let with_env_file: RunaiCredential = serde_json::from_value(serde_json::json!({
        "apiVersion": "tokensync.dev/v1alpha1", "kind": "RunaiCredential",
        "metadata": {"name": "trainer", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {"url": "https://acme.run.ai", "clientCredentialsSecretRef": {"name": "creds"},
                 "target": {"outputs": [{"key": "runai.env", "format": "EnvFile"}]}},
    }))
    .unwrap();
    let mut o = observed(&with_env_file, &k);
    o.namespace_terminating = Some(false);
    give_group(&mut o, group_token("a$(id)b", now(), 3600, 1));
    let f = finish(decide(&o));
    assert_eq!(condition(&f, "Ready").reason, "TokenEndpointError");
    assert!(condition(&f, "Ready").message.contains("\"runai.env\""));
    // Positive control: without the EnvFile output, the same token is written.
    let plain = credential();
    let mut o = observed(&plain, &k);
    o.namespace_terminating = Some(false);
    give_group(&mut o, group_token("a$(id)b", now(), 3600, 1));
    assert!(matches!(decide(&o), Step::WriteSecret { .. }));
}
