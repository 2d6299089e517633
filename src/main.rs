use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = warren::cli::Cli::parse();
    // Run by containerd's shim once per container: no runtime, no tracing, little memory.
    if let warren::cli::Cmd::LogWriter { file } = &cli.command {
        return warren::worker::log_writer::run(file);
    }
    drop(cli);
    run()
}

// Parses again: the simulator's `main` attribute takes no arguments.
#[tokio::main]
async fn run() -> ExitCode {
    let cli = warren::cli::Cli::parse();
    let daemon = matches!(
        &cli.command,
        warren::cli::Cmd::Cluster(warren::cli::ClusterCmd::Init(_))
            | warren::cli::Cmd::Manager(warren::cli::ManagerCmd::Join(_) | warren::cli::ManagerCmd::Start(_))
            | warren::cli::Cmd::Worker(_)
    );
    if daemon {
        warren::failstop::install_panic_hook();
    } else {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`warren service inspect X | head -3`) instead of panicking on the closed pipe.
        // (Not by restoring SIGPIPE's default: a socket write the server cut would kill us.)
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
                std::process::exit(141); // 128 + SIGPIPE, what a writer killed by it reports
            }
            default(info);
        }));
    }
    // Daemons log at info; operator commands stay quiet unless RUST_LOG says otherwise.
    // openraft logs every failed replication RPC (each heartbeat) at ERROR; peer reachability
    // is reported once per change by `manager::peers` instead.
    let default = if daemon {
        "info,openraft=warn,openraft::replication=off"
    } else {
        "warn"
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colours only for a person watching a terminal, not in a log file.
        warren::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line, with the span fields (node, service, task ids).
        warren::cli::LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    if daemon {
        match warren::manager::listener::raise_open_file_limit() {
            Ok((before, after)) if after > before => {
                tracing::info!(
                    before,
                    after,
                    "raised the soft limit on open files to the hard limit"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not raise the soft limit on open files"),
        }
    }
    match warren::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(warren::cli::exit_code(&e))
        }
    }
}
