use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = warren::cli::Cli::parse();
    // Daemons log at info; operator commands stay quiet unless RUST_LOG says otherwise.
    let default = match &cli.command {
        warren::cli::Cmd::Cluster(warren::cli::ClusterCmd::Init(_))
        | warren::cli::Cmd::Manager(warren::cli::ManagerCmd::Join(_) | warren::cli::ManagerCmd::Start(_))
        | warren::cli::Cmd::Worker(_) =>
        // openraft logs every failed replication RPC (each heartbeat) at ERROR; peer reachability
        // is reported once per change by `manager::peers` instead.
        {
            "info,openraft=warn,openraft::replication=off"
        }
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .init();
    match warren::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(warren::cli::exit_code(&e))
        }
    }
}
