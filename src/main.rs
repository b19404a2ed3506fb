//! The `runai-token-sync` binary: flags and wiring only.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use runai_token_sync::{
    Error,
    api::{TokenApi, cluster_crd_yaml, crd_yaml},
    cli::{check, renew},
    health::WatchPulse,
    reconcile::Policy,
    runai::allowed_urls::AllowedUrls,
    runtime::controller::{self, LeaderElection, Settings},
    runtime::proxy,
    runtime::telemetry::{LogFormat, init_logging},
    runtime::token_file::{TokenFile, TokenFileLayer},
    runtime::watch_pulse::PulseLayer,
};

#[derive(Parser)]
#[command(
    version,
    about = "Keeps Run:ai API access tokens fresh in Kubernetes Secrets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CRDs (RunaiCredential, ClusterRunaiCredential) as YAML.
    Crd(CrdArgs),
    /// Request one token with an application's credentials, as the
    /// controller would, and print what came back. Needs no cluster.
    #[command(after_help = check::exit_statuses_help())]
    Check(CheckArgs),
    /// Ask for an immediate refresh of RunaiCredentials, or with --cluster of
    /// ClusterRunaiCredentials (sets the tokensync.dev/refresh-requested-at
    /// annotation), with the current kubeconfig.
    Renew(RenewArgs),
}

#[derive(clap::Args)]
struct CrdArgs {
    /// Only this kind's CRD (RunaiCredential or ClusterRunaiCredential).
    #[arg(long)]
    kind: Option<String>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Base URL of the Run:ai control plane, as spec.url holds it.
    #[arg(long)]
    url: String,

    /// Token API generation: Auto (V2, else V1 where V2 is not served), V1,
    /// V2 or AppToken.
    #[arg(long, default_value = "Auto", value_parser = parse_token_api)]
    token_api: TokenApi,

    /// The application's client ID.
    #[arg(long)]
    client_id: String,

    /// A file holding the client secret (`-` for standard input); never a
    /// flag, so that it stays out of shell history and process lists.
    #[arg(long)]
    client_secret_file: PathBuf,

    /// PEM certificates to trust besides the system roots (spec.caBundle).
    #[arg(long)]
    ca_file: Option<PathBuf>,

    /// Also print the access token.
    #[arg(long)]
    show_token: bool,

    /// Accept an http:// URL (the secret then travels in clear text).
    #[arg(long)]
    allow_insecure_http: bool,

    /// Timeout of the request, in seconds.
    #[arg(long, default_value_t = 15)]
    timeout_seconds: u64,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["names", "selector", "all"])))]
struct RenewArgs {
    /// Names of RunaiCredentials.
    names: Vec<String>,

    /// A label selector (`team=ml`).
    #[arg(short = 'l', long)]
    selector: Option<String>,

    /// Every RunaiCredential in the namespace.
    #[arg(long)]
    all: bool,

    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, conflicts_with = "cluster")]
    namespace: Option<String>,

    /// ClusterRunaiCredentials instead of RunaiCredentials.
    #[arg(long)]
    cluster: bool,
}

fn parse_token_api(value: &str) -> Result<TokenApi, String> {
    TokenApi::from_name(value).ok_or_else(|| format!("{value:?}: use Auto, V1, V2 or AppToken"))
}

/// The namespaces `--namespace` names: empty entries dropped (`a,,b`, a
/// trailing comma), surrounding spaces trimmed, and each one once, however
/// often it is named (one watch per namespace, not two controllers racing).
fn served_namespaces(named: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    named
        .into_iter()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty() && seen.insert(ns.clone()))
        .collect()
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only these namespaces, comma-separated (default: all namespaces).
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,

    /// The controller's own namespace, where it keeps its hash key Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    controller_namespace: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// Accept http:// Run:ai URLs. The client secret then travels in clear
    /// text: for local testing only.
    #[arg(long, env = "ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,

    /// Only these Run:ai URLs may be used, comma-separated patterns where `*`
    /// stands for one DNS label (`https://*.run.ai`) and a path is a prefix
    /// (`https://runai.example.com/runai/`). A RunaiCredential with another
    /// URL is refused before its credentials Secret is read. Default: any
    /// https:// URL.
    #[arg(long, env = "ALLOWED_URLS", value_delimiter = ',')]
    allowed_urls: Vec<String>,

    /// Use a Secret as client credentials only when it carries the label
    /// `tokensync.dev/credentials: "true"`; only such Secrets (and the
    /// controller's own) are then watched.
    #[arg(long, env = "CREDENTIALS_SECRET_LABEL_REQUIRED")]
    credentials_secret_label_required: bool,

    /// Timeout of each token request, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 15)]
    request_timeout_seconds: u64,

    /// Reconciliations run at once by each controller: one controller per
    /// namespace in --namespace, or one for all namespaces. Token requests
    /// are limited separately, across all controllers, by
    /// --max-concurrent-token-requests.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    concurrency: u16,

    /// Token requests in flight at once, across all namespaces and Run:ai
    /// applications (RunaiCredentials with identical url, token API, CA
    /// certificates and client credentials share one request).
    #[arg(long, env = "MAX_CONCURRENT_TOKEN_REQUESTS", default_value_t = 8)]
    max_concurrent_token_requests: u16,

    /// Address of the /metrics, /healthz and /readyz listener.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "127.0.0.1:8080")]
    metrics_address: SocketAddr,

    /// /healthz fails when the controller has made no progress (no
    /// reconciliation succeeded, the API server did not answer) for this many
    /// seconds while it has RunaiCredentials to keep.
    #[arg(long, env = "STALL_TIMEOUT_SECONDS", default_value_t = 180)]
    stall_timeout_seconds: u64,

    /// Serve ClusterRunaiCredentials (when their CRD is installed): their
    /// credentials Secrets are read from the controller's namespace, their
    /// Secrets written into the matched namespaces that are served.
    #[arg(long, env = "CLUSTER_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set)]
    cluster_credentials: bool,

    /// Serve only the ClusterRunaiCredentials with these labels (a label
    /// selector such as `tokensync.dev/controller=platform`), so that several
    /// installations in one cluster each serve their own. Default: all.
    #[arg(long, env = "CLUSTER_CREDENTIALS_SELECTOR")]
    cluster_credentials_selector: Option<String>,

    /// Run for high availability: only the replica holding the Lease reconciles.
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,

    /// Name of the leader Lease, in the controller's namespace.
    #[arg(long, env = "LEASE_NAME", default_value = "runai-token-sync")]
    lease_name: String,

    /// How long the lease lasts without renewal: a killed leader's successor
    /// takes over within this time.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,

    /// This replica's identity in the Lease (default: POD_NAME, else host name and a random suffix).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn main() -> ExitCode {
    runai_token_sync::runtime::allocator::tune_malloc();
    // One worker thread unless `TOKIO_WORKER_THREADS` says otherwise: the
    // work is waiting on the API server and Run:ai, and at 10,000
    // RunaiCredentials a second worker cost about 12% more CPU in handing
    // tasks between the two (`hack/bench.sh`), for no gain in time.
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(Cli::parse())),
        Err(e) => {
            eprintln!("runai-token-sync: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd(args) => match args.kind.as_deref() {
            None => {
                print!("{}---\n{}", crd_yaml(), cluster_crd_yaml());
                ExitCode::SUCCESS
            }
            Some("RunaiCredential") => {
                print!("{}", crd_yaml());
                ExitCode::SUCCESS
            }
            Some("ClusterRunaiCredential") => {
                print!("{}", cluster_crd_yaml());
                ExitCode::SUCCESS
            }
            Some(other) => {
                eprintln!(
                    "runai-token-sync crd: unknown kind {other:?}; use RunaiCredential or ClusterRunaiCredential"
                );
                ExitCode::from(2)
            }
        },
        Command::Check(args) => {
            let request = check::CheckRequest {
                url: args.url,
                token_api: args.token_api,
                client_id: args.client_id,
                client_secret_file: args.client_secret_file,
                ca_file: args.ca_file,
                allow_insecure_http: args.allow_insecure_http,
                timeout: Duration::from_secs(args.timeout_seconds.max(1)),
            };
            match check::check(&request).await {
                Ok(report) => {
                    print!("{}", report.render(args.show_token));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("runai-token-sync check: {} ({})", e, e.class());
                    ExitCode::from(check::exit_status(&e))
                }
            }
        }
        Command::Renew(args) => renew_command(args).await,
        Command::Run(args) => {
            init_logging(args.log_format);
            let identity = args.identity.unwrap_or_else(|| {
                let host =
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "runai-token-sync".to_owned());
                format!("{host}-{:08x}", rand::random::<u32>())
            });
            let allowed_urls = match AllowedUrls::parse(&args.allowed_urls) {
                Ok(list) => list,
                Err(e) => {
                    eprintln!("runai-token-sync: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut settings = Settings {
                namespaces: served_namespaces(args.namespaces),
                controller_namespace: args.controller_namespace,
                policy: Policy {
                    allow_insecure_http: args.allow_insecure_http,
                    allowed_urls,
                    credentials_label_required: args.credentials_secret_label_required,
                },
                request_timeout: Duration::from_secs(args.request_timeout_seconds.max(1)),
                concurrency: args.concurrency.max(1),
                max_concurrent_token_requests: usize::from(
                    args.max_concurrent_token_requests.max(1),
                ),
                metrics_address: args.metrics_address,
                stall_limit: Duration::from_secs(args.stall_timeout_seconds.max(5)),
                leader_election: args.leader_elect.then(|| LeaderElection {
                    lease_name: args.lease_name,
                    identity,
                    lease_duration: Duration::from_secs(args.lease_duration_seconds),
                }),
                api_server: String::new(),
                cluster_credentials: args.cluster_credentials,
                cluster_credentials_selector: args.cluster_credentials_selector,
                watch_pulse: WatchPulse::default(),
            };
            let inferred = match kube::Config::infer().await {
                Err(e) if is_about_proxies(&e) => {
                    tracing::warn!(error = %e, "a proxy variable cannot be read as kube reads it; loading the kubeconfig without it (proxies are still chosen from HTTPS_PROXY, HTTP_PROXY and NO_PROXY, ignoring what cannot be read)");
                    proxy::kubeconfig_ignoring_proxy_env().map_err(|reason| (e, reason))
                }
                other => other.map_err(|e| (e, String::new())),
            };
            let result = match inferred {
                Ok(mut config) => {
                    settings.api_server = config.cluster_url.to_string();
                    config.proxy_url =
                        proxy::api_server_proxy(&config.cluster_url, config.proxy_url);
                    // Every call has a timeout: a half-open connection must
                    // not stall the controller. Reads outlast the time after
                    // which the API server ends a watch request.
                    config.connect_timeout = Some(Duration::from_secs(10));
                    config.read_timeout = Some(runai_token_sync::runtime::WATCH_READ_TIMEOUT);
                    // kube's own retries of 429, 503 and 504 can wait minutes
                    // (15 tries, up to 1000 s apart): ours are bounded.
                    config.default_retry = false;
                    // A token file is read here, again as it rotates (see
                    // token_file); a static token or an exec plugin beside
                    // it stays kube's to handle, with kube's precedence.
                    let token_file = match config.auth_info.token_file.take() {
                        Some(path)
                            if config.auth_info.token.is_none()
                                && config.auth_info.exec.is_none() =>
                        {
                            Some(TokenFile::open(std::path::Path::new(&path)))
                        }
                        kept => {
                            config.auth_info.token_file = kept;
                            None
                        }
                    }
                    .transpose();
                    let client = token_file.and_then(|token_file| {
                        kube::client::ClientBuilder::try_from(config)
                            .map(|builder| {
                                builder
                                    .with_layer(&TokenFileLayer(token_file))
                                    .with_layer(&PulseLayer(settings.watch_pulse.clone()))
                                    // A retry sends the request again: the
                                    // buffer makes the boxed stack shareable.
                                    .with_layer(&tower::buffer::BufferLayer::new(1024))
                                    .with_layer(&tower::retry::RetryLayer::new(
                                        runai_token_sync::runtime::api_server_retry(),
                                    ))
                                    .build()
                            })
                            .map_err(|e| {
                                Error::Startup(format!(
                                    "cannot build a Kubernetes client for {}: {e}",
                                    settings.api_server
                                ))
                            })
                    });
                    match client {
                        Ok(client) => controller::run(client, settings).await,
                        Err(e) => Err(e),
                    }
                }
                Err((e, fallback)) => Err(Error::Startup(format!(
                    "cannot find a Kubernetes configuration (no usable kubeconfig and not running in a cluster): {e}{}",
                    if fallback.is_empty() {
                        String::new()
                    } else {
                        format!("; {fallback}")
                    }
                ))),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("runai-token-sync: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `renew`: exit 0 when every selected RunaiCredential was annotated, 1
/// otherwise (each failure is printed).
async fn renew_command(args: RenewArgs) -> ExitCode {
    let selection = match (args.selector, args.all) {
        (Some(selector), _) => renew::Selection::Selector(selector),
        (None, true) => renew::Selection::All,
        (None, false) => renew::Selection::Names(args.names),
    };
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(e) => {
            eprintln!("runai-token-sync renew: cannot find a kubeconfig: {e}");
            return ExitCode::FAILURE;
        }
    };
    let namespace = args
        .namespace
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("runai-token-sync renew: cannot build a Kubernetes client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (target, kind, scope) = if args.cluster {
        (
            renew::Target::Cluster,
            "clusterrunaicredential",
            "the cluster".to_owned(),
        )
    } else {
        (
            renew::Target::Namespaced(namespace.clone()),
            "runaicredential",
            format!("namespace {namespace}"),
        )
    };
    match renew::renew(client, &target, &selection, jiff::Timestamp::now()).await {
        Ok(renewed) if renewed.is_empty() => {
            eprintln!("runai-token-sync renew: no {kind} matched in {scope}");
            ExitCode::FAILURE
        }
        Ok(renewed) => {
            let mut failed = false;
            for one in renewed {
                match one.result {
                    Ok(()) => println!("{kind}/{} refresh requested", one.name),
                    Err(e) => {
                        failed = true;
                        eprintln!("{kind}/{}: {e}", one.name);
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("runai-token-sync renew: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether kube gave up on the kubeconfig because of a proxy variable.
fn is_about_proxies(err: &kube::config::InferConfigError) -> bool {
    use kube::config::KubeconfigError;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if matches!(
            e.downcast_ref::<KubeconfigError>(),
            Some(KubeconfigError::ParseProxyUrl(_) | KubeconfigError::ParseNoProxy(_))
        ) {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_namespace_is_served_once() {
        let named = ["ml", "ml", "", " ops ", "ops", "ml"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(served_namespaces(named), ["ml", "ops"]);
        // Positive control: distinct names all stay, in order.
        let distinct = ["b", "a"].map(str::to_owned).to_vec();
        assert_eq!(served_namespaces(distinct), ["b", "a"]);
    }
}
