//! `haop adopt`: take over a running cluster built by hand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use haop_coordinator::adopt::{self, migrate, record::AdoptionRecord, AdoptError};

use crate::certs::load_inventory;
pub use crate::output::Format;

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The inventory: the hosts with their roles and agents.
    #[arg(short = 'f', long = "file")]
    inventory: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// Where the migration stands, as `haop plan` and a second `haop adopt` print it.
pub fn print_status(record: &AdoptionRecord, inv: &haop_coordinator::inventory::Inventory) {
    let phases = migrate::member_phases(record);
    println!(
        "Adoption of {} ({}): members at {}",
        record.cluster,
        if record.finished_unix.is_some() {
            "secured"
        } else {
            "`haop apply` continues it"
        },
        phases
            .iter()
            .map(|(h, p)| format!("{h}={p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for line in migrate::describe(record, inv) {
        println!("  {line}");
    }
}

pub async fn run(state_dir: &Path, args: AdoptArgs) -> anyhow::Result<ExitCode> {
    match adopt::adopt(state_dir, &args.inventory).await {
        Ok(done) => {
            if args.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&done)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "Adopted {}: {} etcd members, {} masters. Nothing on the hosts has changed.",
                done.cluster,
                done.members.len(),
                done.masters.len()
            );
            for m in &done.members {
                println!(
                    "  {:<10} member {} ({:x}), client cert auth {}, peer cert auth {}, CA key on the host: {}",
                    m.host,
                    m.name,
                    m.member_id,
                    if m.client_cert_auth { "on" } else { "OFF" },
                    if m.peer_client_cert_auth { "on" } else { "OFF" },
                    if m.ca_keys.is_empty() { "no".to_string() } else { m.ca_keys.join(", ") }
                );
            }
            for m in &done.masters {
                println!(
                    "  {:<10} kube-apiserver etcd client: {}",
                    m.host,
                    m.etcd_certfile.as_deref().unwrap_or("(no manifest)")
                );
            }
            println!(
                "Inventory written to {} (yours is kept as {}).",
                done.inventory.display(),
                done.original.display()
            );
            println!(
                "`haop apply -f {}` will, in order:",
                args.inventory.display()
            );
            for line in &done.plan {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(AdoptError::Already { .. }) => {
            let inv = load_inventory(&args.inventory)?;
            let record = AdoptionRecord::load(state_dir, inv.cluster.as_str())?
                .ok_or_else(|| anyhow::anyhow!("the adoption record vanished"))?;
            if args.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&record_view(&record))?);
            } else {
                print_status(&record, &inv);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

fn record_view(record: &AdoptionRecord) -> serde_json::Value {
    serde_json::json!({
        "cluster": record.cluster,
        "secured": record.finished_unix.is_some(),
        "members": migrate::member_phases(record)
            .into_iter()
            .map(|(h, p)| serde_json::json!({"host": h, "phase": p}))
            .collect::<Vec<_>>(),
        "steps": record.steps,
    })
}
