//! The `runai-token-sync` binary: flags and wiring only.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use runai_token_sync::{
    Error,
    controller::{self, Settings},
    resource::crd_yaml,
    telemetry::{LogFormat, init_logging},
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
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,

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

    /// Timeout of each token request, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 15)]
    request_timeout_seconds: u64,

    /// RunaiCredentials reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
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
            let settings = Settings {
                namespace: args.namespace.filter(|ns| !ns.is_empty()),
                controller_namespace: args.controller_namespace,
                allow_insecure_http: args.allow_insecure_http,
                request_timeout: Duration::from_secs(args.request_timeout_seconds.max(1)),
                concurrency: args.concurrency.max(1),
            };
            let result = match kube::Config::infer().await {
                Ok(config) => {
                    let server = config.cluster_url.to_string();
                    match kube::Client::try_from(config) {
                        Ok(client) => {
                            controller::run(client, settings)
                                .await
                                .map_err(|e| match e {
                                    Error::Startup(message) => {
                                        Error::Startup(format!("{message} (API server {server})"))
                                    }
                                    other => other,
                                })
                        }
                        Err(e) => Err(Error::Startup(format!(
                            "cannot build a Kubernetes client for {server}: {e}"
                        ))),
                    }
                }
                Err(e) => Err(Error::Startup(format!(
                    "cannot find a Kubernetes configuration (no usable kubeconfig and not running in a cluster): {e}"
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
