//! `haop-agent`: parses flags, enters its root, sets up tracing and serves.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use haop_agent::config::{AgentConfig, KernelMode, ServiceManagerKind};
use haop_agent::logging;
use tracing_subscriber::filter::LevelFilter;

/// haop's host agent: executes host operations for the haop coordinator over gRPC.
#[derive(Debug, Parser)]
#[command(name = "haop-agent", version, about, long_about = None)]
struct Args {
    /// Config file (TOML). Flags override it.
    #[arg(long, env = "HAOP_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, such as 10.0.0.5:7443.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Treat DIR as the host's `/`: enter it in a private mount namespace (chroot, with the
    /// machine's /usr, /dev, /proc and /sys visible). Used by `haop lab`. Needs root.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Bootstrap token for enrollment (`abcdef.0123456789abcdef`; prefer the config file or
    /// HAOP_AGENT_TOKEN, which other users cannot read from the process list).
    #[arg(long, env = "HAOP_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Pinned hash of the agent CA for enrollment (`sha256:...`, from `haop token create`).
    #[arg(long)]
    ca_hash: Option<String>,
    /// Service manager backend.
    #[arg(long, value_enum)]
    service_manager: Option<ServiceManagerKind>,
    /// How kernel settings reach the kernel: `host`, or `lab` for hosts sharing a machine.
    #[arg(long, value_enum)]
    kernel: Option<KernelMode>,
    /// Log level: off, error, warn, info, debug or trace [default: RUST_LOG when it is one of
    /// these, else info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rust_log = std::env::var("RUST_LOG").ok();
    let (level, ignored) = logging::choose_level(args.log_level, rust_log.as_deref());
    logging::init(level);
    if let Some(value) = ignored {
        tracing::warn!(rust_log = %value, %level, "RUST_LOG is not a plain level; ignored");
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %haop_agent::error::render_chain(e.as_ref()), "agent failed");
            eprintln!(
                "haop-agent: {}",
                haop_agent::error::render_chain(e.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::from_file(path)?,
        None => AgentConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(r) = args.root {
        config.root = r;
    }
    if let Some(t) = &args.token {
        config.enroll_token = Some(haop_agent::config::parse_token(t, "--token")?);
    }
    if let Some(h) = &args.ca_hash {
        config.enroll_ca_hash = Some(haop_agent::config::parse_ca_hash(h, "--ca-hash")?);
    }
    if let Some(s) = args.service_manager {
        config.service_manager = s;
    }
    if let Some(k) = args.kernel {
        config.kernel = k;
    }
    config.validate()?;
    if config.root != std::path::Path::new("/") {
        haop_agent::rootfs::enter(&config.root)?;
        config.root = PathBuf::from("/");
    }
    // Two workers, not one: some RPCs compute or do file IO on the runtime (an RSA key for a
    // CSR, an fsynced write), and the second worker keeps the other RPCs and the supervisor's
    // unit monitors answering meanwhile. An idle worker costs about 30 kB (its touched stack).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let agent = haop_agent::server::build(&config).await?;
        haop_agent::server::serve(agent, listener, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
