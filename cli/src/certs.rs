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
