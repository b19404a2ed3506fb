//! Chaos: RunaiCredentials with short-lived tokens kept while the token
//! endpoint fails or stalls about half of the time, the API server restarts
//! and the controller is killed with `kill -9` every 30 s, with two replicas
//! under leader election for the middle third of the run. On a plane of its
//! own, the replicas reach the API server through the fault-injecting proxy,
//! which plays one of its bad days every 30 s, between the kills: idle
//! connections black-holed, an outage (refused), a hang shorter than the
//! renew deadline, and the Lease taken by another identity.
//!
//! A sampler reads every target Secret once a second and counts, over the
//! whole run after the first tokens: seconds a target held an expired token
//! (goal 0), seconds a target was missing (goal 0), Secrets not the
//! controller's that changed (goal 0), token requests against the minimum the
//! refresh schedule needs, and the longest time no replica led.
//!
//! It runs on a control plane of its own (`hack/plane.sh up` in a temporary
//! state directory, so that restarting its API server disturbs no other
//! test), when the local Kubernetes binaries are there; otherwise on the
//! cluster under test, without the API-server restarts.
//! `RUNAI_TOKEN_SYNC_CHAOS_SECONDS` sets the length (default 100, enough for
//! every token to be refreshed once; `hack/chaos.sh` runs 300).
//!
//! Asserted: no Secret that is not the controller's changed, no target went
//! missing, every credential was refreshed, and expired-token-seconds stay
//! within 5 % of the sampled credential-seconds. The goal for the last is 0;
//! with half of the requests failing, 5 s between requests and 30 s between
//! the refresh and the expiry, a run of bad luck can still let a token lapse,
//! and the figure is printed for that reason rather than required to be 0.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use runai_standin::{Fault, StandIn};
use serde_json::json;

use crate::harness::{Cluster, Controller, KUBECONFIG_ENV, eventually, spec_for};
use crate::ops::{api_server_address, kubeconfig_through};
use crate::proxy::{FaultProxy, Mode};

/// Token lifetime: refreshed at 60 s, with 30 s left for retries.
const LIFETIME: Duration = Duration::from_secs(90);
const CREDENTIALS: usize = 8;
const KILL_EVERY: Duration = Duration::from_secs(30);

/// A control plane of a test's own, stopped when dropped.
pub struct OwnPlane {
    pub state: PathBuf,
    pub kubeconfig: PathBuf,
}

impl OwnPlane {
    /// Starts one. Under `hack/test.sh` with its local plane
    /// (`RUNAI_TOKEN_SYNC_OWN_PLANES` set: its state folder goes there, and
    /// the script stops every plane there when it ends, however it ends),
    /// the plane must start: a failure fails the test. Against another
    /// cluster, one starts only when the local Kubernetes binaries (of
    /// `KUBE_VERSION`, default 1.37.2) are there; `None` otherwise.
    pub fn start() -> Option<OwnPlane> {
        let own_planes = std::env::var_os("RUNAI_TOKEN_SYNC_OWN_PLANES").map(PathBuf::from);
        let cache = std::env::var_os("RUNAI_TOKEN_SYNC_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/runai-token-sync"))
            })?;
        let parent = match own_planes {
            Some(parent) => parent,
            None => {
                let version = std::env::var("KUBE_VERSION").unwrap_or_else(|_| "1.37.2".to_owned());
                let version = version.trim_start_matches('v');
                if !cache
                    .join(format!("kube-v{version}/kube-apiserver"))
                    .exists()
                {
                    return None;
                }
                cache
            }
        };
        let state = parent.join(format!("plane-own-{}", rand::random::<u32>()));
        let output = Command::new(plane_script())
            .arg("up")
            .arg(&state)
            .output()
            .expect("hack/plane.sh runs");
        if !output.status.success() {
            // What it started before it failed goes too.
            let _ = Command::new(plane_script())
                .arg("down")
                .arg(&state)
                .status();
            panic!(
                "a control plane of the test's own did not start:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        Some(OwnPlane { state, kubeconfig })
    }

    /// Stops its kube-controller-manager: a namespace deleted afterwards
    /// stays Terminating, with its objects, for as long as the plane runs.
    pub fn stop_controller_manager(&self) -> bool {
        Command::new(plane_script())
            .args([
                "stop-controller-manager",
                self.state.to_str().unwrap_or_default(),
            ])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn restart_apiserver(&self) -> bool {
        Command::new(plane_script())
            .args(["restart-apiserver", self.state.to_str().unwrap_or_default()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for OwnPlane {
    fn drop(&mut self) {
        let _ = Command::new(plane_script())
            .args(["down", self.state.to_str().unwrap_or_default()])
            .status();
    }
}

pub fn plane_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/plane.sh")
}

/// What the run measured.
#[derive(Debug, Default)]
struct Figures {
    samples: u64,
    unsampled: u64,
    expired_token_seconds: u64,
    missing_token_seconds: u64,
    foreign_changed: usize,
    token_requests: u64,
    minimum_requests: u64,
    longest_without_leader: Duration,
    api_server_restarts: u32,
    kills: u32,
    /// Faults played through the proxy, by kind (see [`API_FAULTS`]).
    api_faults: [u32; 4],
}

/// The API server's bad days the proxy plays in turn, with how long each
/// lasts: idle connections black-holed, an outage, a hang shorter than the
/// renew deadline (10 s of the default 15 s lease), the Lease taken.
const API_FAULTS: [(&str, Duration); 4] = [
    ("idle connections black-holed", Duration::from_secs(3)),
    ("outages (refused)", Duration::from_secs(8)),
    ("hangs", Duration::from_secs(6)),
    ("lease thefts", Duration::from_secs(5)),
];
/// Every 30 s, 15 s after each kill: one fault at a time, so that each
/// shows what it costs (a kill during an outage during a stolen lease is
/// longer than the 30 s a token has left after its refresh is due).
const API_FAULT_EVERY: Duration = Duration::from_secs(30);

/// Takes the leader Lease of `namespace` for another identity, for 5 s
/// from now; the controller can win it back only once that lapses.
async fn steal_lease(client: &kube::Client, namespace: &str) {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), namespace);
    if let Ok(Some(mut lease)) = leases.get_opt("runai-token-sync").await
        && let Some(spec) = lease.spec.as_mut()
    {
        spec.holder_identity = Some("chaos-thief".to_owned());
        spec.lease_duration_seconds = Some(5);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        // A lost race with a renewal is simply tried again next second.
        let _ = leases
            .replace("runai-token-sync", &PostParams::default(), &lease)
            .await;
    }
}

/// One replica slot: the same identity across restarts, as a Pod keeps its name.
struct Replica {
    identity: String,
    controller: Option<Controller>,
}

impl Replica {
    fn start(&mut self, kubeconfig: &Path, namespace: &str) {
        self.controller = Some(Controller::start(
            kubeconfig,
            namespace,
            &[
                "--leader-elect",
                "--identity",
                &self.identity,
                "--request-timeout-seconds",
                "2",
            ],
        ));
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
    }

    async fn leads(&self) -> bool {
        match &self.controller {
            Some(c) => {
                let url = format!("{}/readyz", c.probe_url().await);
                match reqwest::get(&url).await {
                    Ok(r) => r.text().await.unwrap_or_default().contains("leader"),
                    Err(_) => false,
                }
            }
            None => false,
        }
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn chaos_keeps_every_token_fresh() {
    let seconds: u64 = std::env::var("RUNAI_TOKEN_SYNC_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let plane = OwnPlane::start();
    let kubeconfig = match &plane {
        Some(p) => p.kubeconfig.clone(),
        None => PathBuf::from(std::env::var_os(KUBECONFIG_ENV).expect("a cluster to run on")),
    };
    let cluster = Cluster::on(kubeconfig.clone(), "chaos").await;
    let ns = cluster.namespace.clone();
    // On a plane of its own (an API server on this machine), the replicas
    // go through the fault-injecting proxy; the sampler does not.
    let proxy = match &plane {
        Some(_) => Some(FaultProxy::start(api_server_address(&cluster)).await),
        None => None,
    };
    let kubeconfig = match &proxy {
        Some(proxy) => kubeconfig_through(&cluster, proxy.address),
        None => kubeconfig.clone(),
    };

    let standin = StandIn::start().await.unwrap();
    for i in 0..CREDENTIALS {
        let (id, secret) = (format!("app-{i}"), format!("s3cr3t-chaos-{i}"));
        standin.set_client(&id, &secret, LIFETIME);
        cluster
            .put_credentials(&format!("creds-{i}"), &id, &secret)
            .await;
    }
    // Secrets that are not the controller's: one in the way of a target.
    let mut foreign = BTreeMap::new();
    for name in ["foreign-a", "foreign-b", "blocked-target"] {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "stringData": {"value": "not the controller's"},
        }))
        .unwrap();
        let created = cluster
            .secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        foreign.insert(name.to_owned(), created.metadata.resource_version.unwrap());
    }
    let mut blocked = spec_for(&standin, "creds-0");
    blocked["target"] = json!({"name": "blocked-target"});
    cluster.create_credential("blocked", blocked).await;

    let mut replicas = [
        Replica {
            identity: "chaos-a".into(),
            controller: None,
        },
        Replica {
            identity: "chaos-b".into(),
            controller: None,
        },
    ];
    replicas[0].start(&kubeconfig, &ns);
    for i in 0..CREDENTIALS {
        cluster
            .create_credential(
                &format!("cred-{i}"),
                spec_for(&standin, &format!("creds-{i}")),
            )
            .await;
    }
    for i in 0..CREDENTIALS {
        cluster.wait_ready(&format!("cred-{i}")).await;
    }
    let warm = standin.total_requests();
    // The full run (`hack/chaos.sh`, 300 s) fails half of the requests; the
    // short run of the suite a fifth, so that bad luck cannot fail CI.
    let failing = if seconds >= 300 { 0.25 } else { 0.1 };
    standin.set_fault(Some(Fault::Flaky {
        unavailable: failing,
        stall: failing,
        stall_for: Duration::from_secs(4),
    }));

    let mut figures = Figures::default();
    let started = Instant::now();
    let run = Duration::from_secs(seconds);
    let mut next_kill = started + KILL_EVERY;
    let mut restarted_api = false;
    let mut without_leader_since: Option<Instant> = None;
    let mut next_api_fault = started + Duration::from_secs(15);
    let mut api_fault: Option<(usize, Instant)> = None;
    let secrets = cluster.secrets();
    while started.elapsed() < run {
        let tick = Instant::now();
        if let Some(proxy) = &proxy {
            if let Some((_, ends)) = api_fault
                && tick >= ends
            {
                proxy.set(Mode::Pass);
                api_fault = None;
            }
            if api_fault.is_none() && tick >= next_api_fault {
                let kind = figures.api_faults.iter().sum::<u32>() as usize % API_FAULTS.len();
                match kind {
                    0 => proxy.set(Mode::BlackHoleWhenIdle),
                    1 => proxy.set(Mode::Refuse),
                    2 => proxy.set(Mode::Hang),
                    _ => {}
                }
                figures.api_faults[kind] += 1;
                api_fault = Some((kind, tick + API_FAULTS[kind].1));
                next_api_fault += API_FAULT_EVERY;
            }
            if let Some((3, _)) = api_fault {
                steal_lease(&cluster.client, &ns).await;
            }
        }
        let third = started.elapsed().as_secs_f64() / run.as_secs_f64();
        // Two replicas for the middle third.
        if (1.0 / 3.0..2.0 / 3.0).contains(&third) && replicas[1].controller.is_none() {
            replicas[1].start(&kubeconfig, &ns);
        }
        if third >= 2.0 / 3.0 && replicas[1].controller.is_some() {
            replicas[1].kill();
        }
        if tick >= next_kill {
            // kill -9 the leader (or the first replica), and start it again.
            let mut victim = 0;
            for (i, r) in replicas.iter().enumerate() {
                if r.leads().await {
                    victim = i;
                }
            }
            replicas[victim].kill();
            replicas[victim].start(&kubeconfig, &ns);
            figures.kills += 1;
            next_kill += KILL_EVERY;
        }
        if third >= 0.5 && !restarted_api {
            restarted_api = true;
            if let Some(p) = &plane
                && p.restart_apiserver()
            {
                figures.api_server_restarts += 1;
            }
        }

        let mut leading = false;
        for r in &replicas {
            leading |= r.leads().await;
        }
        match (leading, without_leader_since) {
            (true, Some(since)) => {
                figures.longest_without_leader =
                    figures.longest_without_leader.max(since.elapsed());
                without_leader_since = None;
            }
            (false, None) => without_leader_since = Some(Instant::now()),
            _ => {}
        }

        match tokio::time::timeout(Duration::from_secs(2), secrets.list(&ListParams::default()))
            .await
        {
            Ok(Ok(list)) => {
                figures.samples += 1;
                let now = Timestamp::now();
                for i in 0..CREDENTIALS {
                    let name = format!("cred-{i}");
                    match list
                        .items
                        .iter()
                        .find(|s| s.metadata.name.as_deref() == Some(&name))
                    {
                        None => figures.missing_token_seconds += 1,
                        Some(secret) => {
                            let expiry = secret
                                .data
                                .as_ref()
                                .and_then(|d| d.get("expiresAt"))
                                .and_then(|b| {
                                    std::str::from_utf8(&b.0).ok()?.parse::<Timestamp>().ok()
                                });
                            if expiry.is_none_or(|at| at <= now) {
                                figures.expired_token_seconds += 1;
                            }
                        }
                    }
                }
            }
            _ => figures.unsampled += 1,
        }
        let spent = tick.elapsed();
        if spent < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1) - spent).await;
        }
    }
    if let Some(since) = without_leader_since {
        figures.longest_without_leader = figures.longest_without_leader.max(since.elapsed());
    }
    standin.set_fault(None);
    if let Some(proxy) = &proxy {
        proxy.set(Mode::Pass);
    }

    let after = eventually(
        Duration::from_secs(30),
        "the API server answers",
        || async { cluster.secrets().list(&ListParams::default()).await.ok() },
    )
    .await;
    for (name, version) in &foreign {
        let now = after
            .items
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name));
        if now.and_then(|s| s.metadata.resource_version.as_ref()) != Some(version) {
            figures.foreign_changed += 1;
        }
    }
    figures.token_requests = standin.total_requests() - warm;
    // Each credential needs one successful request per 2/3 of a lifetime.
    figures.minimum_requests = CREDENTIALS as u64 * (seconds / (LIFETIME.as_secs() * 2 / 3));

    println!(
        "chaos: {seconds} s, {CREDENTIALS} RunaiCredentials, {} s tokens",
        LIFETIME.as_secs()
    );
    println!(
        "  endpoint faults: {0:.0} % 503, {0:.0} % stalled past the 2 s request timeout",
        failing * 100.0
    );
    println!(
        "  controller kill -9: {}; API-server restarts: {}{}",
        figures.kills,
        figures.api_server_restarts,
        if plane.is_none() {
            " (not on this cluster)"
        } else {
            ""
        }
    );
    if proxy.is_some() {
        let played: Vec<String> = API_FAULTS
            .iter()
            .zip(figures.api_faults)
            .map(|((kind, lasts), n)| format!("{n} {kind} ({} s)", lasts.as_secs()))
            .collect();
        println!(
            "  API-server faults through the proxy: {}",
            played.join(", ")
        );
    } else {
        println!("  API-server faults through the proxy: none (not on this cluster)");
    }
    println!(
        "  samples: {} (unsampled while the API server was away: {})",
        figures.samples, figures.unsampled
    );
    println!(
        "  expired-token-seconds: {} (goal 0)",
        figures.expired_token_seconds
    );
    println!(
        "  missing-token-seconds: {} (goal 0)",
        figures.missing_token_seconds
    );
    println!(
        "  Secrets not ours that changed: {} (goal 0)",
        figures.foreign_changed
    );
    println!(
        "  token requests: {} for a minimum of {} successful refreshes ({:.1} per refresh, the failing ones included)",
        figures.token_requests,
        figures.minimum_requests,
        figures.token_requests as f64 / figures.minimum_requests.max(1) as f64
    );
    println!(
        "  longest time without a leader: {:.1} s",
        figures.longest_without_leader.as_secs_f64()
    );

    assert_eq!(figures.foreign_changed, 0, "{figures:?}");
    assert_eq!(figures.missing_token_seconds, 0, "{figures:?}");
    assert!(
        figures.samples > seconds / 2,
        "the sampler saw the run: {figures:?}"
    );
    assert!(
        figures.expired_token_seconds * 20 <= figures.samples * CREDENTIALS as u64,
        "expired tokens beyond 5 % of the time: {figures:?}"
    );
    if seconds >= 70 {
        // Every token was replaced at least once (the first ones expire at 90 s).
        for i in 0..CREDENTIALS {
            let secret = cluster
                .secret(&format!("cred-{i}"))
                .await
                .expect("a target");
            let issued =
                secret.metadata.annotations.unwrap_or_default()["tokensync.dev/issued-at"].clone();
            let issued: Timestamp = issued.parse().unwrap();
            assert!(
                Timestamp::now().duration_since(issued)
                    < jiff::SignedDuration::try_from(LIFETIME).unwrap(),
                "cred-{i} holds a token issued at {issued}"
            );
        }
    }
    let blocked = cluster.credentials().get("blocked").await.unwrap();
    assert_eq!(blocked.condition("Ready").unwrap().reason, "SecretConflict");
    drop(replicas);
}
