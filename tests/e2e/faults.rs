//! The API server's bad days (api.md, "Talking to the API server:
//! faults"): the leader lease through hangs and theft.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::json;

use crate::harness::{
    Cluster, Controller, DeleteOnDrop, eventually, spec_for, standin_with, stays,
};
use crate::ops::{api_server_address, kubeconfig_through, leads};
use crate::proxy::{FaultProxy, Mode};
use crate::webhook::SlowWebhook;

const HOUR: Duration = Duration::from_secs(3600);

/// Asks for a refresh of `name` (a new value of the annotation).
async fn ask_refresh(cluster: &Cluster, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": value}}});
    cluster
        .credentials()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_stolen_lease_stops_all_work_and_is_led_again_after() {
    let cluster = Cluster::new("stolen-lease").await;
    let standin = standin_with("app", "s3cr3t-lease", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-lease")
        .await;
    let args = ["--leader-elect", "--lease-duration-seconds", "10"];
    let controller = Controller::start(&cluster.kubeconfig, &cluster.namespace, &args);
    cluster
        .create_credential("kept", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("kept").await;
    assert!(leads(&controller).await);
    let secret_version = || async {
        cluster
            .secret("kept")
            .await
            .unwrap()
            .metadata
            .resource_version
    };

    // Another identity takes the Lease and keeps renewing it for 20 s.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let steal = |lease: &mut Lease| {
        let spec = lease.spec.as_mut().unwrap();
        spec.holder_identity = Some("thief".to_owned());
        spec.lease_duration_seconds = Some(10);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    };
    // Taken over the controller's renewals: a write that loses a race with
    // one (409) reads the Lease again and tries again.
    let mut lease = eventually(Duration::from_secs(10), "the Lease is taken", || async {
        let mut lease = leases.get("runai-token-sync").await.ok()?;
        steal(&mut lease);
        leases
            .replace("runai-token-sync", &PostParams::default(), &lease)
            .await
            .ok()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the controller steps down",
        || async { (!leads(&controller).await).then_some(()) },
    )
    .await;
    let (requests, version) = (standin.requests("app"), secret_version().await);
    // A refresh asked for meanwhile is not answered: no request, no write.
    ask_refresh(&cluster, "kept", "during-theft").await;
    let stolen = Instant::now();
    while stolen.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        steal(&mut lease);
        lease = leases
            .replace("runai-token-sync", &PostParams::default(), &lease)
            .await
            .unwrap();
        assert!(
            !leads(&controller).await,
            "led while another held the Lease"
        );
        assert_eq!(
            standin.requests("app"),
            requests,
            "a token request while not leading"
        );
        assert_eq!(
            secret_version().await,
            version,
            "a Secret write while not leading"
        );
    }

    // The thief stops renewing: the same process leads again (it did not
    // exit) and answers the refresh asked for meanwhile.
    eventually(
        Duration::from_secs(30),
        "the controller leads again",
        || async { leads(&controller).await.then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the refresh is answered",
        || async { (standin.requests("app") > requests).then_some(()) },
    )
    .await;
    cluster.wait_ready("kept").await;
    assert!(
        controller.logs().contains("campaigning again"),
        "{}",
        controller.logs()
    );
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn the_lease_survives_a_short_hang_and_a_long_one_stops_work_until_it_ends() {
    let cluster = Cluster::new("hung-lease").await;
    let hole = FaultProxy::start(api_server_address(&cluster)).await;
    let relayed = kubeconfig_through(&cluster, hole.address);
    let standin = standin_with("app", "s3cr3t-hang", HOUR).await;
    cluster.put_credentials("creds", "app", "s3cr3t-hang").await;
    // Lease 15 s: renew deadline 10 s.
    let args = ["--leader-elect", "--lease-duration-seconds", "15"];
    let mut controller = Controller::start(&relayed, &cluster.namespace, &args);
    cluster
        .create_credential("kept", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("kept").await;
    eventually(Duration::from_secs(10), "the controller leads", || async {
        leads(&controller).await.then_some(())
    })
    .await;

    // A hang of 5 s, shorter than the renew deadline: still leading, and
    // running.
    hole.set(Mode::Hang);
    stays(
        Duration::from_secs(5),
        "leads through a short hang",
        || async { leads(&controller).await },
    )
    .await;
    hole.set(Mode::Pass);
    stays(Duration::from_secs(5), "still leads after it", || async {
        leads(&controller).await
    })
    .await;

    // A hang of 25 s, longer than the lease: the leader steps down within
    // its renew deadline (plus a renew period), not after minutes.
    hole.set(Mode::Hang);
    let hung = Instant::now();
    eventually(Duration::from_secs(15), "the leader steps down", || async {
        (!leads(&controller).await).then_some(())
    })
    .await;
    assert!(
        hung.elapsed() < Duration::from_secs(14),
        "stepped down {:?} into the hang",
        hung.elapsed()
    );
    while hung.elapsed() < Duration::from_secs(25) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    hole.set(Mode::Pass);
    // The same process leads again once the API server answers.
    eventually(
        Duration::from_secs(40),
        "the controller leads again",
        || async { leads(&controller).await.then_some(()) },
    )
    .await;
    let before = standin.requests("app");
    ask_refresh(&cluster, "kept", "after-the-hang").await;
    eventually(Duration::from_secs(30), "work goes on", || async {
        (standin.requests("app") > before).then_some(())
    })
    .await;
    assert!(controller.stop(), "the controller exits cleanly on SIGTERM");
}

/// The Event objects about `name` of `reason` in the test's namespace, with
/// their notes and series counts.
async fn events_of(cluster: &Cluster, name: &str, reason: &str) -> Vec<(String, i32)> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .map(|e| (e.note.unwrap_or_default(), e.series.map_or(1, |s| s.count)))
        .collect()
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn repeated_failures_aggregate_into_few_events_without_counters() {
    let cluster = Cluster::new("event-flood").await;
    let standin = standin_with("app", "s3cr3t-flood", HOUR).await;
    standin.set_fault(Some(runai_standin::Fault::Status {
        code: 503,
        retry_after: None,
    }));
    cluster
        .put_credentials("creds", "app", "s3cr3t-flood")
        .await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("failing", spec_for(&standin, "creds"))
        .await;
    // Backoff 5, 10, 20 s: four attempts in about 40 s, Warnings at the
    // 1st, 2nd and 4th.
    eventually(Duration::from_secs(60), "four attempts", || async {
        let cr = cluster.credentials().get("failing").await.ok()?;
        (cr.status?.failed_attempts >= 4).then_some(())
    })
    .await;
    let events = eventually(Duration::from_secs(10), "the Warnings", || async {
        let events = events_of(&cluster, "failing", "TokenEndpointError").await;
        (events.iter().map(|(_, count)| count).sum::<i32>() >= 3).then_some(events)
    })
    .await;
    assert!(
        events.len() <= 3,
        "at most 3 Event objects per credential and reason: {events:?}"
    );
    let this_year = format!("{}-", jiff::Timestamp::now().strftime("%Y"));
    for (note, _) in &events {
        assert!(
            !note.contains("time(s)") && !note.contains("attempt") && !note.contains(&this_year),
            "an Event message with a counter or a time: {note}"
        );
    }
    // Positive control: the repeats were published (the series counts them).
    assert!(
        events.iter().map(|(_, count)| count).sum::<i32>() >= 3,
        "{events:?}"
    );
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_watch_that_silently_stops_delivering_is_replaced_within_two_minutes() {
    let cluster = Cluster::new("dead-watch").await;
    let hole = FaultProxy::start(api_server_address(&cluster)).await;
    let relayed = kubeconfig_through(&cluster, hole.address);
    let standin = standin_with("app", "s3cr3t-dead", HOUR).await;
    standin.set_client("app-rotated", "s3cr3t-rotated", HOUR);
    standin.set_client("app-other", "s3cr3t-other", HOUR);
    cluster.put_credentials("creds", "app", "s3cr3t-dead").await;
    cluster
        .put_credentials("other-creds", "app-other", "s3cr3t-other")
        .await;
    let controller = Controller::start(&relayed, &cluster.namespace, &[]);
    for (name, creds) in [
        ("kept", "creds"),
        ("edited", "other-creds"),
        ("gone", "other-creds"),
    ] {
        cluster
            .create_credential(name, spec_for(&standin, creds))
            .await;
    }
    for name in ["kept", "edited", "gone"] {
        cluster.wait_ready(name).await;
    }
    let ns = cluster.namespace.clone();
    let series = format!("{{namespace=\"{ns}\",name=\"gone\"}}");
    assert!(
        controller.probe("/metrics").await.1.contains(&series),
        "the deleted credential's series is there before"
    );
    // Every idle connection the controller has (its watches among them)
    // stops delivering, without being closed; new connections work.
    hole.set(Mode::BlackHoleWhenIdle);
    tokio::time::sleep(crate::proxy::IDLE * 3).await;
    hole.set(Mode::Pass);
    // Positive control: the controller's connections (its watches) were
    // among those forgotten.
    assert!(hole.forgotten() >= 1, "no connection was black-holed");
    // A rotation of the credentials, an edit and a deletion.
    cluster
        .put_credentials("creds", "app-rotated", "s3cr3t-rotated")
        .await;
    cluster
        .patch_credential("edited", json!({"spec": {"target": {"key": "token"}}}))
        .await;
    cluster
        .credentials()
        .delete("gone", &Default::default())
        .await
        .unwrap();
    let changed = Instant::now();
    eventually(
        Duration::from_secs(120),
        "the rotation, the edit and the deletion take effect through replaced watches",
        || async {
            let rotated = standin.requests("app-rotated") >= 1;
            let edited = cluster.token("edited", "token").await.is_some();
            let forgotten = !controller.probe("/metrics").await.1.contains(&series);
            (rotated && edited && forgotten).then_some(())
        },
    )
    .await;
    let took = changed.elapsed();
    cluster.wait_ready("kept").await;
    assert!(took < Duration::from_secs(120), "{took:?}");
    assert!(
        controller
            .logs()
            .lines()
            .filter(|l| l.contains("became the leader")
                || l.contains("starting the RunaiCredential controller"))
            .count()
            <= 1,
        "no restart"
    );
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn after_five_outages_in_a_row_it_works_within_30_s_of_the_last() {
    let cluster = Cluster::new("outages").await;
    let proxy = FaultProxy::start(api_server_address(&cluster)).await;
    let relayed = kubeconfig_through(&cluster, proxy.address);
    let standin = standin_with("app", "s3cr3t-outages", HOUR).await;
    standin.set_client("app-after", "s3cr3t-after", HOUR);
    cluster
        .put_credentials("creds", "app", "s3cr3t-outages")
        .await;
    cluster
        .put_credentials("after-creds", "app-after", "s3cr3t-after")
        .await;
    // Lease 10 s: each outage outlasts its renew deadline, so the lease is
    // lost and taken again each time.
    let args = [
        "--leader-elect",
        "--lease-duration-seconds",
        "10",
        "--stall-timeout-seconds",
        "20",
    ];
    let mut controller = Controller::start(&relayed, &cluster.namespace, &args);
    cluster
        .create_credential("kept", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("kept").await;
    let mut back = Instant::now();
    for outage in 0..5 {
        // Down: connecting is refused, open connections are reset.
        proxy.set(Mode::Refuse);
        tokio::time::sleep(Duration::from_secs(12)).await;
        proxy.set(Mode::Pass);
        back = Instant::now();
        if outage < 4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    assert!(
        controller.logs().contains("campaigning again"),
        "the outages cost the lease: {}",
        controller.logs()
    );
    // Since the last outage ended: a new credential and a refresh asked for.
    cluster
        .create_credential("after", spec_for(&standin, "after-creds"))
        .await;
    let before = standin.requests("app");
    ask_refresh(&cluster, "kept", "after-the-outages").await;
    eventually(
        Duration::from_secs(30),
        "both are done within 30 s of the last outage",
        || async {
            let after = cluster.credentials().get("after").await.ok()?;
            let ready = after.condition("Ready")?.status == "True";
            (ready && standin.requests("app") > before).then_some(())
        },
    )
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(controller.probe("/healthz").await.0, 200);
    assert!(controller.is_running(), "no restart, no exit");
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_slow_webhook_fails_only_the_writes_it_judges_and_costs_no_token() {
    let cluster = Cluster::new("webhook").await;
    if !api_server_address(&cluster).ip().is_loopback() {
        eprintln!("skipped: the API server cannot reach a webhook served by this test");
        return;
    }
    // Judges the Secrets labelled `judged=yes` and answers after 3 s, past
    // its 1 s timeout.
    let webhook = SlowWebhook::register(&cluster, "judged", Duration::from_secs(3)).await;
    // Registered asynchronously: judged writes fail before the test goes on.
    let message = eventually(
        Duration::from_secs(30),
        "the webhook judges labelled Secrets",
        || async {
            let probe: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
                "metadata": {"generateName": "probe-", "labels": {"judged": "yes"}},
            }))
            .unwrap();
            match cluster
                .secrets()
                .create(&PostParams::default(), &probe)
                .await
            {
                Ok(created) => {
                    let name = created.metadata.name.unwrap();
                    let _ = cluster.secrets().delete(&name, &Default::default()).await;
                    None
                }
                Err(kube::Error::Api(status)) => Some(status.message),
                Err(_) => None,
            }
        },
    )
    .await;
    assert!(message.contains(&webhook.name), "{message}");
    let standin = standin_with("app-judged", "s3cr3t-judged", HOUR).await;
    // Refreshed every ~12 s: its schedule shows while the other fails.
    standin.set_client("app-free", "s3cr3t-free", Duration::from_secs(24));
    cluster
        .put_credentials("judged-creds", "app-judged", "s3cr3t-judged")
        .await;
    cluster
        .put_credentials("free-creds", "app-free", "s3cr3t-free")
        .await;
    let controller = Controller::start(&cluster.kubeconfig, &cluster.namespace, &[]);
    let mut judged = spec_for(&standin, "judged-creds");
    judged["target"] = json!({"labels": {"judged": "yes"}});
    cluster.create_credential("judged", judged).await;
    cluster
        .create_credential("free", spec_for(&standin, "free-creds"))
        .await;
    cluster.wait_ready("free").await;
    let free_requests = standin.requests("app-free");

    let failing = eventually(
        Duration::from_secs(60),
        "the judged credential fails its writes, retried",
        || async {
            let cr = cluster.credentials().get("judged").await.ok()?;
            let ready = cr.condition("Ready")?.clone();
            let attempts = cr.status.as_ref()?.failed_attempts;
            (ready.reason == "SecretWriteFailed" && attempts >= 2).then_some(ready)
        },
    )
    .await;
    assert_eq!(failing.status, "False");
    assert!(
        failing.message.contains(&webhook.name),
        "names the webhook: {}",
        failing.message
    );
    assert!(webhook.calls() >= 2, "the webhook was asked each time");
    assert_eq!(
        standin.requests("app-judged"),
        1,
        "the token obtained first is kept for the retries"
    );
    // The other credential kept its schedule meanwhile.
    eventually(
        Duration::from_secs(30),
        "the other credential is refreshed on schedule",
        || async { (standin.requests("app-free") > free_requests).then_some(()) },
    )
    .await;
    cluster.wait_ready("free").await;

    // The webhook answers in time again: the kept token is written.
    webhook.set_delay(Duration::ZERO);
    let retries_before = webhook.calls();
    // At the retry the backoff has come to, within a minute and a half.
    cluster
        .wait_condition("judged", "Ready", "True", Duration::from_secs(90))
        .await;
    assert!(webhook.calls() > retries_before);
    assert!(cluster.token("judged", "accessToken").await.is_some());
    assert_eq!(standin.requests("app-judged"), 1, "still the first token");
    controller.assert_logs_hold_none_of(&["s3cr3t-judged", "s3cr3t-free"]);
}

/// A kubeconfig for the test's API server whose user is the token in
/// `token_file` (read by the controller as it changes).
fn kubeconfig_with_token_file(cluster: &Cluster, token_file: &std::path::Path) -> PathBuf {
    let mut config = Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    for named in &mut config.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            // The token file alone: no other way in that could hide it.
            *auth = kube::config::AuthInfo {
                token_file: Some(token_file.display().to_string()),
                ..Default::default()
            };
        }
    }
    let path = std::env::temp_dir().join(format!(
        "rts-e2e-token-file-{}.kubeconfig",
        rand::random::<u64>()
    ));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// Runs kubectl against the test's API server; its standard output.
fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Replaces `path`'s content at once (a rename), as the kubelet's atomic
/// writer does.
fn swap_file(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn a_rotated_token_file_is_read_again_and_an_empty_one_keeps_the_last_token() {
    let cluster = Cluster::new("token-file").await;
    let ns = cluster.namespace.clone();
    // Two service accounts, each allowed everything in the namespace.
    for account in ["first", "second"] {
        kubectl(&cluster, &["-n", &ns, "create", "serviceaccount", account]).unwrap();
        kubectl(
            &cluster,
            &[
                "-n",
                &ns,
                "create",
                "rolebinding",
                account,
                "--clusterrole=cluster-admin",
                &format!("--serviceaccount={ns}:{account}"),
            ],
        )
        .unwrap();
    }
    let token_of = |account: &str| {
        kubectl(
            &cluster,
            &["-n", &ns, "create", "token", account, "--duration=1h"],
        )
        .unwrap()
        .trim()
        .to_owned()
    };
    let (first, second) = (token_of("first"), token_of("second"));
    let token_path = std::env::temp_dir().join(format!("rts-e2e-token-{}", rand::random::<u64>()));
    std::fs::write(&token_path, &first).unwrap();
    let kubeconfig = kubeconfig_with_token_file(&cluster, &token_path);

    let standin = standin_with("app", "s3cr3t-token-file", HOUR).await;
    cluster
        .put_credentials("creds", "app", "s3cr3t-token-file")
        .await;
    let controller = Controller::start(&kubeconfig, &ns, &[]);
    cluster
        .create_credential("kept", spec_for(&standin, "creds"))
        .await;
    cluster.wait_ready("kept").await;

    // The file now holds the second account's token, and the first
    // account is gone.
    swap_file(&token_path, &second);
    kubectl(&cluster, &["-n", &ns, "delete", "serviceaccount", "first"]).unwrap();
    // Positive control: the first token no longer opens anything.
    let refused = eventually(
        Duration::from_secs(15),
        "the first account's token is refused",
        || async { kubectl(&cluster, &["--token", &first, "-n", &ns, "get", "secrets"]).err() },
    )
    .await;
    assert!(refused.contains("Unauthorized"), "{refused}");
    let before = standin.requests("app");
    ask_refresh(&cluster, "kept", "after-the-rotation").await;
    eventually(
        Duration::from_secs(30),
        "work goes on with the second account's token",
        || async { (standin.requests("app") > before).then_some(()) },
    )
    .await;
    cluster.wait_ready("kept").await;

    // Emptied for a while (longer than a re-read): the last good token
    // is kept.
    swap_file(&token_path, "");
    eventually(
        Duration::from_secs(30),
        "the empty file was read",
        || async {
            controller
                .logs()
                .contains("cannot use the API server token file")
                .then_some(())
        },
    )
    .await;
    let before = standin.requests("app");
    ask_refresh(&cluster, "kept", "while-empty").await;
    eventually(
        Duration::from_secs(30),
        "work goes on while the file is empty",
        || async { (standin.requests("app") > before).then_some(()) },
    )
    .await;
    cluster.wait_ready("kept").await;
    swap_file(&token_path, &second);
    controller.assert_logs_hold_none_of(&[&first, &second, "s3cr3t-token-file"]);
    let _ = std::fs::remove_file(&token_path);
    let _ = std::fs::remove_file(&kubeconfig);
}

/// The API server's count of requests its priority level `level` rejected.
fn rejected_by(cluster: &Cluster, level: &str) -> u64 {
    let metrics = kubectl(cluster, &["get", "--raw", "/metrics"]).unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_flowcontrol_rejected_requests_total{")
                && l.contains(&format!("priority_level=\"{level}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum()
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn priority_and_fairness_rejections_are_retried_and_cost_no_token() {
    let cluster = Cluster::new("apf").await;
    let ns = cluster.namespace.clone();
    // The controller runs as a service account (an administrator's
    // requests are exempt from Priority and Fairness), whose requests a
    // FlowSchema sends to a priority level of the smallest share that
    // rejects what it cannot serve at once.
    kubectl(
        &cluster,
        &["-n", &ns, "create", "serviceaccount", "limited"],
    )
    .unwrap();
    kubectl(
        &cluster,
        &[
            "-n",
            &ns,
            "create",
            "rolebinding",
            "limited",
            "--clusterrole=cluster-admin",
            &format!("--serviceaccount={ns}:limited"),
        ],
    )
    .unwrap();
    let level = format!("rts-e2e-{ns}");
    let _cleanup = DeleteOnDrop {
        kubeconfig: cluster.kubeconfig.clone(),
        objects: vec![
            format!("flowschema.flowcontrol.apiserver.k8s.io/{level}"),
            format!("prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/{level}"),
        ],
    };
    let manifests = json!({"apiVersion": "v1", "kind": "List", "items": [
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "PriorityLevelConfiguration",
            "metadata": {"name": level},
            "spec": {"type": "Limited", "limited": {
                "nominalConcurrencyShares": 1,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            }},
        },
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": level},
            "spec": {
                "priorityLevelConfiguration": {"name": level},
                "matchingPrecedence": 50,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [{
                    "subjects": [{"kind": "ServiceAccount",
                        "serviceAccount": {"namespace": ns, "name": "limited"}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"],
                        "resources": ["*"], "namespaces": ["*"], "clusterScope": true}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }],
            },
        },
    ]});
    let file = std::env::temp_dir().join(format!("rts-e2e-apf-{}.json", rand::random::<u64>()));
    std::fs::write(&file, manifests.to_string()).unwrap();
    kubectl(&cluster, &["apply", "-f", &file.display().to_string()]).unwrap();
    let _ = std::fs::remove_file(&file);
    let token = kubectl(
        &cluster,
        &["-n", &ns, "create", "token", "limited", "--duration=1h"],
    )
    .unwrap();
    let token_path = std::env::temp_dir().join(format!("rts-e2e-token-{}", rand::random::<u64>()));
    std::fs::write(&token_path, token.trim()).unwrap();
    let kubeconfig = kubeconfig_with_token_file(&cluster, &token_path);

    // Twenty credentials of twenty applications, all at once: far more
    // requests at a time than the priority level serves.
    let standin = standin_with("app-0", "s3cr3t-apf-0", HOUR).await;
    let names: Vec<String> = (0..20).map(|i| format!("apf-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let (app, secret) = (format!("app-{i}"), format!("s3cr3t-apf-{i}"));
        standin.set_client(&app, &secret, HOUR);
        let creds = format!("creds-{i}");
        cluster.put_credentials(&creds, &app, &secret).await;
        cluster
            .create_credential(name, spec_for(&standin, &creds))
            .await;
    }
    let rejected_before = rejected_by(&cluster, &level);
    let controller = Controller::start(&kubeconfig, &ns, &["--concurrency", "20"]);
    for name in &names {
        cluster.wait_ready(name).await;
    }
    // Positive control: the API server did reject the controller's requests.
    let rejected = rejected_by(&cluster, &level) - rejected_before;
    assert!(
        rejected > 0,
        "no request was rejected: the test proves nothing"
    );
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            standin.requests(&format!("app-{i}")),
            1,
            "{name}: one token request, however many rejections"
        );
        let cr = cluster.credentials().get(name).await.unwrap();
        assert_ne!(
            cr.condition("Stalled").map(|c| c.status.as_str()),
            Some("True"),
            "{name}"
        );
        let events = cluster.events(name).await;
        assert!(
            !events
                .iter()
                .any(|(_, reason, _)| reason == "SecretWriteFailed"),
            "{name}: {events:?}"
        );
    }
    eprintln!("the API server rejected {rejected} of the controller's requests");
    controller.assert_logs_hold_none_of(&[token.trim(), "s3cr3t-apf-1"]);
    let _ = std::fs::remove_file(&token_path);
    let _ = std::fs::remove_file(&kubeconfig);
}
