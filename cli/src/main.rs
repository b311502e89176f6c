//! `haop`: the coordinator CLI. Parses arguments, sets up tracing and calls the library.

mod adopt;
mod agent;
mod certs;
mod docs;
mod etcd;
mod hosts;
mod identity;
mod lab;
mod operator;
mod output;
mod progress;
mod runbook;
mod signals;
mod status;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// haop stands up and keeps alive a highly available etcd cluster for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "haop", version, about, long_about = None)]
struct Cli {
    /// Where haop keeps its CAs, journal, snapshots and labs.
    #[arg(
        long,
        global = true,
        env = "HAOP_STATE_DIR",
        default_value = "/var/lib/haop"
    )]
    state_dir: PathBuf,

    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state dir's two CAs (agent channel, etcd) and haop's own certificates.
    Init(trust::InitArgs),
    /// Show, per host, each step and a diff of every file that `apply` would change. Changes
    /// nothing.
    Plan(runbook::PlanArgs),
    /// Run the runbook: preflight, certificates, etcd with TLS, quorum, keepalived, node
    /// preparation. Safe to repeat; a killed apply continues when run again. On an adopted
    /// cluster it first secures it live (see `haop adopt --help`).
    Apply(runbook::ApplyArgs),
    /// Take over a running cluster built by hand: discover it, write the full inventory,
    /// print what securing it will change. Changes nothing; `haop apply` secures it.
    ///
    /// Take over a running etcd cluster built by hand (a runbook like the seed's: cfssl
    /// certificates, the CA key on every host, client and peer certificate auth off), without
    /// downtime.
    ///
    /// The inventory lists the hosts and their agents (install the haop-agent .deb on the running
    /// hosts first); nothing else is assumed. adopt reads, through the agents and etcd's API, each
    /// member's unit and environment files, the certificates they name and the CA those chain to,
    /// where that CA's key lies, the members etcd lists, each master's kube-apiserver etcd client
    /// files and keepalived's VIP. It then writes the full inventory (the original is kept as
    /// FILE.before-adopt) and prints the plan. It changes nothing on any host.
    ///
    /// A cluster haop cannot understand (flags it does not know, members it cannot reach or that no
    /// host runs, more than one CA, plain-HTTP URLs, an unhealthy quorum) is refused with every
    /// problem listed, and nothing is written.
    ///
    /// `haop apply` then secures it live, one member at a time, each back and caught up with the
    /// quorum whole before the next: both CAs trusted and haop's certificates made on the hosts
    /// (CSR flow), the API servers switched to haop's etcd client certificates, client and peer
    /// certificate auth turned on, the old CA dropped, its key removed from every host. Killed
    /// anywhere, `haop apply` continues; `haop plan` and `haop adopt` again show where it stands.
    Adopt(adopt::AdoptArgs),
    /// The etcd cluster: members, recovery and healing, scaling, snapshots and restore,
    /// maintenance, and etcdctl environment.
    #[command(subcommand)]
    Etcd(etcd::EtcdCommand),
    /// Certificates: where they are and when they expire.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Bootstrap tokens that agents enroll with.
    #[command(subcommand)]
    Token(trust::TokenCommand),
    /// Certificates for people and jobs (a reader for monitoring, a short-lived admin, an etcd
    /// client for backups): issue, list, revoke.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Agents onto hosts over SSH: install, configure, enroll.
    #[command(subcommand)]
    Hosts(hosts::HostsCommand),
    /// Hosts on this machine, one network namespace each, to try haop and to rehearse repairs.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Talk to one agent directly: facts, units.
    Agent(agent::AgentArgs),
    /// The repair loop that runs unattended, on several admin hosts with one elected leader:
    /// heal, snapshots, defragmentation, certificates, and Prometheus metrics.
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// The cluster's health: hosts, etcd, units, VIP, certificates, drift. Exits 0 healthy,
    /// 1 degraded, 2 down (no etcd quorum, or no VIP holder).
    Status(status::StatusArgs),
}

fn main() -> ExitCode {
    if let Some(code) = docs::maybe_run() {
        return code;
    }
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init(args) => trust::init(&cli.state_dir, args),
            Command::Token(cmd) => trust::token(&cli.state_dir, cmd),
            Command::Identity(cmd) => identity::run(&cli.state_dir, cmd).await,
            Command::Plan(args) => runbook::plan(&cli.state_dir, args).await,
            Command::Apply(args) => runbook::apply(&cli.state_dir, args).await,
            Command::Adopt(args) => adopt::run(&cli.state_dir, args).await,
            Command::Etcd(cmd) => etcd::run(&cli.state_dir, cmd).await,
            Command::Certs(cmd) => certs::run(&cli.state_dir, cmd).await,
            Command::Hosts(cmd) => hosts::run(&cli.state_dir, cmd).await,
            Command::Lab(cmd) => lab::run(&cli.state_dir, cmd).await,
            Command::Agent(args) => agent::run(&cli.state_dir, args).await,
            Command::Operator(cmd) => operator::run(&cli.state_dir, cmd).await,
            Command::Status(args) => status::run(&cli.state_dir, args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// A unit name as systemctl takes it: a name without a unit suffix is a service (`etcd` means
/// `etcd.service`); anything else is passed on for the agent to judge.
pub fn unit_arg(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a unit name, such as etcd or etcd.service".into());
    }
    const SUFFIXES: [&str; 6] = [
        ".service", ".socket", ".timer", ".target", ".path", ".mount",
    ];
    Ok(
        if SUFFIXES.iter().any(|x| s.ends_with(x)) || s.contains('.') {
            s.to_string()
        } else {
            format!("{s}.service")
        },
    )
}

#[cfg(test)]
mod unit_arg_tests {
    #[test]
    fn a_bare_name_is_a_service_as_systemctl_takes_it() {
        assert_eq!(super::unit_arg("etcd").unwrap(), "etcd.service");
        assert_eq!(super::unit_arg("etcd.service").unwrap(), "etcd.service");
        assert_eq!(super::unit_arg("fstrim.timer").unwrap(), "fstrim.timer");
        assert!(super::unit_arg("").is_err());
    }
}
