//! The `runai-token-sync` binary: flags and wiring only.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use runai_token_sync::{
    Error,
    api::crd_yaml,
    reconcile::Policy,
    runai::allowed_urls::AllowedUrls,
    runtime::controller::{self, LeaderElection, Settings},
    runtime::proxy,
    runtime::telemetry::{LogFormat, init_logging},
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
    /// Print the RunaiCredential CRD as YAML.
    Crd,
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml());
            ExitCode::SUCCESS
        }
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
                namespaces: args
                    .namespaces
                    .into_iter()
                    .filter(|ns| !ns.is_empty())
                    .collect(),
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
                    // not stall the controller. Reads outlast the 290 s after
                    // which the API server ends a watch.
                    config.connect_timeout = Some(Duration::from_secs(10));
                    config.read_timeout = Some(Duration::from_secs(295));
                    match kube::Client::try_from(config) {
                        Ok(client) => controller::run(client, settings).await,
                        Err(e) => Err(Error::Startup(format!(
                            "cannot build a Kubernetes client for {}: {e}",
                            settings.api_server
                        ))),
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
