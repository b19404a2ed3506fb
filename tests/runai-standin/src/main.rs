//! `runai-standin`: runs the Run:ai token endpoint stand-in until interrupted.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use runai_standin::StandIn;

#[derive(Parser)]
#[command(about = "A local stand-in for Run:ai's token endpoints (V1, V2, AppToken) over HTTPS")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// An accepted client, as ID:SECRET. Repeat for more.
    #[arg(long = "client", value_parser = parse_client, required_unless_present = "clients_file")]
    clients: Vec<(String, String)>,
    /// A file of accepted clients, one ID:SECRET per line.
    #[arg(long)]
    clients_file: Option<PathBuf>,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime_seconds: u64,
    /// Write the CA certificate (PEM) here.
    #[arg(long)]
    ca_file: PathBuf,
    /// Write the base URL here.
    #[arg(long)]
    url_file: Option<PathBuf>,
}

fn parse_client(text: &str) -> Result<(String, String), String> {
    text.split_once(':')
        .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        .ok_or_else(|| format!("{text:?} is not ID:SECRET"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = Args::parse();
    if let Some(path) = &args.clients_file {
        for line in std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let client = parse_client(line.trim())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            args.clients.push(client);
        }
    }
    let standin = StandIn::start_on(args.listen).await?;
    for (id, secret) in &args.clients {
        standin.set_client(id, secret, Duration::from_secs(args.lifetime_seconds));
    }
    std::fs::write(&args.ca_file, standin.ca_pem())?;
    if let Some(path) = &args.url_file {
        std::fs::write(path, standin.url())?;
    }
    println!("runai-standin listening on {}", standin.url());
    tokio::signal::ctrl_c().await?;
    println!(
        "runai-standin: {} token requests served",
        standin.total_requests()
    );
    Ok(())
}
