//! `haop certs`: the certificates haop issued, and when they expire.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use haop_coordinator::inventory::Inventory;

pub use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Every certificate in the state dir and on every host of the inventory (etcd server,
    /// peer and CA certificates, the masters' kube-apiserver etcd client certificates, each
    /// agent's serving certificate), soonest expiry first.
    /// Exits 1 when one could not be read or expires within 30 days.
    List {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Per-host timeout, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Re-issue certificates through the CSR flow (new keys on the hosts) and restart etcd
    /// members one at a time, each back healthy with the quorum whole before the next.
    Renew {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Renew certificates expiring within this many days, such as 30d (or 30).
        #[arg(long, default_value = "30d")]
        expiring_within: String,
        /// Renew every certificate whatever its expiry.
        #[arg(long)]
        all: bool,
    },
    /// Replace a CA without downtime by the bundle protocol: old and new trusted everywhere,
    /// every certificate issued again by the new one, the old one dropped and its key deleted.
    ///
    /// --etcd: every phase is a rolling restart of the etcd members (etcd reads its trusted CAs
    /// only when it starts), one at a time, leadership handed away first, each back and caught
    /// up with the quorum whole before the next; the masters' kube-apiserver etcd client
    /// certificates and CA files follow (kubelet restarts the API server through an annotation
    /// of its manifest). An etcdctl set up with `eval "$(haop etcd env)"` keeps working
    /// throughout. Identities issued with `haop identity issue --etcd` before the rotation are
    /// refused afterwards: they are listed at the start; issue them again.
    ///
    /// Killed anywhere, run it again: it continues from its journal in the state dir.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["etcd", "agent"])))]
    RotateCa {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// The etcd CA (etcd's server, peer and client certificates).
        #[arg(long)]
        etcd: bool,
        /// The agent CA (the control channel between haop and its agents).
        #[arg(long)]
        agent: bool,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Loads an inventory, printing its warnings; errors list every problem.
pub fn load_inventory(path: &Path) -> anyhow::Result<Inventory> {
    let (inv, warnings) = Inventory::load(path)?;
    for w in warnings {
        eprintln!("{w}");
    }
    Ok(inv)
}

pub async fn run(state_dir: &Path, cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::RotateCa {
            inventory,
            etcd,
            agent: _,
            output,
        } => {
            let inv = load_inventory(&inventory)?;
            if !etcd {
                anyhow::bail!("rotate-ca --agent is not in this build");
            }
            let done = haop_coordinator::certs::rotate_etcd::run(state_dir, &inv, &|line| {
                eprintln!("  {line}")
            })
            .await?;
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                let longest = done.restarts.iter().map(|r| r.seconds).fold(0.0, f64::max);
                println!(
                    "etcd CA rotated in {:.1} s: {} member restarts (longest {longest:.1} s); new CA {}.",
                    done.seconds,
                    done.restarts.len(),
                    done.new_ca_sha256
                );
                if !done.stale_identities.is_empty() {
                    println!(
                        "Issue these identities again (the old CA signed them): {}",
                        done.stale_identities.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Renew {
            inventory,
            expiring_within,
            all,
        } => {
            let days: i64 = expiring_within.trim_end_matches('d').parse().map_err(|_| {
                anyhow::anyhow!(
                    "--expiring-within: {expiring_within:?} is not a number of days such as 30d"
                )
            })?;
            let inv = load_inventory(&inventory)?;
            let renewed = haop_coordinator::certs::renew::renew(
                state_dir,
                inv,
                haop_coordinator::certs::renew::RenewOptions {
                    expiring_within_days: days,
                    all,
                    member_timeout: Duration::from_secs(60),
                },
                &|line| eprintln!("  {line}"),
            )
            .await?;
            println!("{} certificate(s) renewed.", renewed.len());
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::List {
            inventory,
            output,
            timeout,
        } => {
            let inv = load_inventory(&inventory)?;
            let rows = haop_coordinator::certs::list(state_dir, &inv, Duration::from_secs(timeout))
                .await?;
            let bad = rows.iter().any(|r| r.error.is_some() || r.days_left < 30);
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<10} {:<44} {:>9} {:<24} {:<26} SANS",
                    "WHERE", "PATH", "DAYS LEFT", "USAGES", "SUBJECT"
                );
                for r in &rows {
                    if let Some(e) = &r.error {
                        println!("{:<10} {:<44} {:>9} {e}", r.location, r.path, "ERROR");
                        continue;
                    }
                    let usages = if r.is_ca {
                        "CA".to_string()
                    } else {
                        r.usages.join(",")
                    };
                    println!(
                        "{:<10} {:<44} {:>9} {:<24} {:<26} {}",
                        r.location,
                        r.path,
                        r.days_left,
                        usages,
                        r.subject,
                        r.sans.join(",")
                    );
                }
            }
            Ok(if bad {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
