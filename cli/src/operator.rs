//! `haop operator run`: the highly available repair loop (see the coordinator's `operator`
//! module for what it does and how instances elect their leader).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use haop_coordinator::inventory::Span;
use haop_coordinator::operator::{self, config::OperatorConfig};

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Run the loop until SIGTERM or Ctrl-C. Run it on two or three admin hosts (each with a
    /// copy of the state dir): they elect one leader through etcd, and only the leader acts,
    /// every action fenced by its lease. Each round it looks at the cluster (as haop status
    /// does) and, as leader: heals failed members, keeps the snapshot schedule, defragments by
    /// policy (leader last, never on an unhealthy cluster), warns of expiring certificates and
    /// renews them if the config allows. Without quorum it does nothing and says why. Every
    /// instance serves Prometheus metrics when metrics_listen (or --metrics) is set.
    /// The haop .deb runs it as haop-operator@NAME.service with /etc/haop/NAME.yaml and
    /// /etc/haop/NAME.operator.toml (an example with every field:
    /// /usr/share/haop/operator.toml.example).
    Run {
        /// The inventory file (read again each round).
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// The operator's config (TOML: name, metrics_listen, interval, lease_ttl,
        /// status_timeout, heal, snapshots, [defrag], [certificates]); defaults without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// This instance's name in the election (overrides the config; default: host name).
        #[arg(long)]
        name: Option<String>,
        /// Serve /metrics on ADDRESS:PORT (overrides the config's metrics_listen).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// How often to look at the cluster, such as 10s (overrides the config).
        #[arg(long)]
        interval: Option<Span>,
        /// The election lease, such as 10s: a silent leader is replaced after this long.
        #[arg(long)]
        lease_ttl: Option<Span>,
    },
}

pub async fn run(state_dir: &Path, cmd: OperatorCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OperatorCommand::Run {
            inventory,
            config,
            name,
            metrics,
            interval,
            lease_ttl,
        } => {
            let mut c = match &config {
                Some(p) => OperatorConfig::load(p)?,
                None => OperatorConfig::default(),
            };
            if let Some(n) = name {
                // The same rules as the file's field.
                c.name = OperatorConfig::parse(&format!("name = {n:?}"))
                    .map_err(|e| anyhow::anyhow!("--name: {e}"))?
                    .name;
            }
            if let Some(m) = metrics {
                c.metrics_listen = Some(m);
            }
            if let Some(i) = interval {
                anyhow::ensure!(!i.duration().is_zero(), "--interval: at least 1s");
                c.interval = i.duration();
            }
            if let Some(t) = lease_ttl {
                anyhow::ensure!(
                    t.duration().as_secs() >= 2,
                    "--lease-ttl: at least 2s, not {t}"
                );
                c.lease_ttl = t.duration();
            }
            let say: operator::Say = Arc::new(|line: String| {
                let now = haop_coordinator::etcd::snapshots::meta::now().0;
                for l in line.lines() {
                    eprintln!("{now} {l}");
                }
            });
            operator::run(state_dir, &inventory, c, say, crate::signals::terminated())
                .await
                .with_context(|| format!("haop operator run -f {}", inventory.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
