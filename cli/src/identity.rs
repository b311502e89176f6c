//! `haop identity issue|list|revoke`: certificates for people and jobs, and taking them back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use haop_coordinator::agent::Agents;
use haop_coordinator::identity::{crl, push, Channel, IdentityRole, IdentityStore, IssueRequest};
use haop_coordinator::inventory::{Inventory, Role};
use haop_coordinator::pki::{parse_lifetime, KeyAlgorithm};
use haop_coordinator::trust::{format_unix, Trust};

use crate::certs::load_inventory;
use crate::output::Format;

/// A role, as given on the command line.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RoleArg {
    /// Agents: facts, unit states, certificates and stat; nothing secret, nothing changed.
    Reader,
    /// Agents: everything haop does. etcd: a client with full access.
    Admin,
}

impl From<RoleArg> for IdentityRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Reader => IdentityRole::Reader,
            RoleArg::Admin => IdentityRole::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Issue a key and certificate for a person or a job, written to --out as NAME.key (0600),
    /// NAME.crt and the CA to trust (agent-ca.crt or etcd-ca.crt).
    ///
    /// The key is made here and is not kept in the state dir: hand the files to their holder.
    /// Agent-channel identities carry their role (haop:reader, haop:admin) for haop-agent's
    /// policy: `haop status --cert NAME.crt --key NAME.key` works with a reader. With --etcd the
    /// certificate is an etcd client certificate (CN = NAME, the etcd user name if etcd auth is
    /// enabled later), for a backup job or a metrics scrape.
    ///
    /// Example: haop identity issue prometheus --role reader --ttl 720h --out /etc/prometheus/haop
    Issue {
        /// The identity's name: lowercase letters, digits and dashes. It is the certificate's CN.
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// An etcd client certificate (signed by the etcd CA) instead of an agent one.
        #[arg(long)]
        etcd: bool,
        /// Lifetime, such as 8h or 720h. Default: 8h for an admin (a lost admin certificate is
        /// root on every host until it expires or is revoked), 720h for a reader.
        #[arg(long)]
        ttl: Option<String>,
        /// Where to write the files; created (0700) when missing. Existing files are never
        /// overwritten.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// ecdsa-p256 or rsa-2048.
        #[arg(long, default_value = "ecdsa-p256")]
        key_algorithm: KeyAlgorithm,
    },
    /// Every identity ever issued with its channel, role, serial, expiry and state (valid,
    /// expired, revoked), haop's own first; and each channel's revocation list number.
    List {
        #[arg(short = 'o', long, default_value = "table")]
        output: Format,
    },
    /// Revoke an identity by name or serial: the channel's revocation list gets a new number,
    /// is signed by its CA and pushed to every host of the inventory at once (agents for an
    /// agent identity, etcd members for an etcd one). Agents refuse the certificate from the
    /// next call; etcd from the next connection.
    ///
    /// Hosts that cannot be reached are listed; they get the list on the next `haop apply` or
    /// `haop status` (run as haop's admin). Revoking again pushes the list again.
    Revoke {
        /// The identity's name, or its serial (hex, as `haop identity list` shows it).
        identity: String,
        /// The inventory whose hosts get the list.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Only an etcd identity of that name.
        #[arg(long, conflicts_with = "agent")]
        etcd: bool,
        /// Only an agent identity of that name.
        #[arg(long)]
        agent: bool,
        #[arg(short = 'o', long, default_value = "table")]
        output: Format,
    },
}

pub async fn run(state_dir: &Path, cmd: IdentityCommand) -> anyhow::Result<ExitCode> {
    let store = IdentityStore::new(state_dir);
    match cmd {
        IdentityCommand::Issue {
            name,
            role,
            etcd,
            ttl,
            out,
            key_algorithm,
        } => {
            Trust::load(state_dir)?;
            let ttl = match ttl {
                Some(t) => parse_lifetime(&t).context("--ttl")?,
                None if role == RoleArg::Admin => std::time::Duration::from_secs(8 * 3600),
                None => std::time::Duration::from_secs(720 * 3600),
            };
            let channel = if etcd { Channel::Etcd } else { Channel::Agent };
            let issued = store.issue(&IssueRequest {
                name,
                channel,
                role: role.into(),
                ttl,
                out_dir: out,
                algorithm: key_algorithm,
            })?;
            let r = &issued.record;
            println!(
                "issued {} ({} {}), serial {}, valid until {}",
                r.name,
                r.channel.as_str(),
                r.role.as_str(),
                r.serial,
                format_unix(r.not_after_unix)
            );
            println!("certificate: {}", issued.cert_path.display());
            println!(
                "key:         {}  (0600; not kept by haop)",
                issued.key_path.display()
            );
            println!("CA:          {}", issued.ca_path.display());
            if channel == Channel::Agent {
                eprintln!(
                    "\nUse it with: haop status -f INVENTORY --cert {} --key {}",
                    issued.cert_path.display(),
                    issued.key_path.display()
                );
            }
        }
        IdentityCommand::List { output } => {
            let all = store.list()?;
            let agent = store.generation(Channel::Agent)?;
            let etcd = store.generation(Channel::Etcd)?;
            let retired = |r: &haop_coordinator::identity::IdentityRecord| {
                !r.built_in && ca_retired(state_dir, r)
            };
            if output == Format::Json {
                let identities: Vec<serde_json::Value> = all
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r).expect("records serialize");
                        v["ca_retired"] = retired(r).into();
                        v
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "revocation_generation": { "agent": agent, "etcd": etcd },
                        "identities": identities,
                    }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            println!(
                "{:<24} {:<6} {:<7} {:<34} {:<21} STATE",
                "NAME", "CHANNEL", "ROLE", "SERIAL", "EXPIRES"
            );
            for r in &all {
                let state = match r.revoked_unix {
                    Some(at) => format!("revoked {}", format_unix(at)),
                    None if r.built_in => format!("{} (haop's own)", r.state(now)),
                    None if retired(r) && r.is_active(now) => {
                        "refused: its CA was rotated (issue it again)".to_string()
                    }
                    None => r.state(now).to_string(),
                };
                println!(
                    "{:<24} {:<7} {:<7} {:<34} {:<21} {}",
                    r.name,
                    r.channel.as_str(),
                    r.role.as_str(),
                    r.serial,
                    format_unix(r.not_after_unix),
                    state
                );
            }
            println!("\nrevocation lists: agent {agent}, etcd {etcd}");
        }
        IdentityCommand::Revoke {
            identity,
            inventory,
            etcd,
            agent,
            output,
        } => {
            let inv = load_inventory(&inventory)?;
            let trust = Arc::new(Trust::load(state_dir)?);
            let only = match (etcd, agent) {
                (true, _) => Some(Channel::Etcd),
                (_, true) => Some(Channel::Agent),
                _ => None,
            };
            let revoked = store.revoke(&identity, only)?;
            let channel = revoked.record.channel;
            let ca = crl::signer(state_dir, channel)?;
            let (generation, pem) = crl::current(state_dir, channel, &ca)?;
            let agents = Arc::new(Agents::new(trust, &inv));
            let pushed = match channel {
                Channel::Agent => push::to_agents(agents, &host_names(&inv, None), &pem).await,
                Channel::Etcd => {
                    let hosts = host_names(&inv, Some(Role::Etcd));
                    let path = haop_coordinator::etcd::config::client_crl_path();
                    push::to_etcd_hosts(agents, &hosts, &path, generation, &pem).await
                }
            };
            let missed: Vec<&push::Pushed> = pushed.iter().filter(|p| p.error.is_some()).collect();
            if output == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "identity": revoked.record,
                        "revoked_now": revoked.now,
                        "generation": generation,
                        "hosts": pushed,
                    }))?
                );
            } else {
                println!(
                    "{} {} ({}, serial {}); revocation list {} {generation}",
                    if revoked.now {
                        "revoked"
                    } else {
                        "already revoked:"
                    },
                    revoked.record.name,
                    channel.as_str(),
                    revoked.record.serial,
                    channel.as_str(),
                );
                for p in &pushed {
                    match &p.error {
                        None => println!(
                            "  {:<12} {}",
                            p.host,
                            if p.changed { "installed" } else { "had it" }
                        ),
                        Some(e) => println!("  {:<12} NOT REACHED: {e}", p.host),
                    }
                }
                if !missed.is_empty() {
                    eprintln!(
                        "\n{} host(s) did not get the list; they get it on the next `haop apply` \
                         or `haop status` run as haop's admin, or run this command again.",
                        missed.len()
                    );
                }
            }
            if !missed.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the CA that issued `r` is no longer its channel's CA (rotated since): the pin it was
/// issued under differs, or, for records without one, it was issued before the CA was made.
fn ca_retired(state_dir: &Path, r: &haop_coordinator::identity::IdentityRecord) -> bool {
    let ca = haop_coordinator::trust::pki_dir(state_dir).join(format!(
        "{}.crt",
        haop_coordinator::identity::store::ca_name(r.channel)
    ));
    let Some(info) = std::fs::read_to_string(ca)
        .ok()
        .and_then(|pem| haop_coordinator::pki::inspect(&pem).ok())
        .and_then(|mut infos| (!infos.is_empty()).then(|| infos.remove(0)))
    else {
        return false;
    };
    match &r.ca_pin {
        Some(pin) => *pin != info.spki_sha256,
        None => r.issued_unix < info.not_before.unix_timestamp(),
    }
}

/// The inventory's hosts, or those with `role`.
fn host_names(inv: &Inventory, role: Option<Role>) -> Vec<String> {
    inv.hosts
        .iter()
        .filter(|h| role.is_none_or(|r| h.has_role(r)))
        .map(|h| h.name.as_str().to_string())
        .collect()
}
