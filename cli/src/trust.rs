//! `haop init` and `haop token`: the state dir's CAs and the tokens agents enroll with.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use haop_coordinator::pki::{parse_lifetime, KeyAlgorithm};
use haop_coordinator::trust::{self, format_unix, InitOptions, Trust};

/// `haop init` options.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Key algorithm of the CAs and of haop's own certificates: ecdsa-p256 or rsa-2048 (the
    /// seed's).
    #[arg(long, default_value = "ecdsa-p256")]
    key_algorithm: KeyAlgorithm,
    /// Lifetime of the CAs, such as 43800h (five years, as the seed's ca-config.json).
    #[arg(long, default_value = "43800h")]
    lifetime: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it with the agent CA's hash, for an agent's
    /// /etc/haop/agent.toml ([enroll] token and ca_hash).
    Create {
        /// How long the token can be used to enroll, such as 24h or 30m.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// List tokens (ids and expiry, never secrets).
    List,
}

pub fn init(state_dir: &Path, args: InitArgs) -> anyhow::Result<ExitCode> {
    let lifetime = parse_lifetime(&args.lifetime).context("--lifetime")?;
    let report = trust::init(
        state_dir,
        InitOptions {
            algorithm: args.key_algorithm,
            lifetime,
        },
    )?;
    if report.created {
        println!("initialized {}", state_dir.display());
    } else {
        println!(
            "{} is already initialized; nothing changed",
            state_dir.display()
        );
    }
    println!("certificates:   {}", report.pki_dir.display());
    println!("agent CA hash:  {}", report.agent_ca_pin);
    Ok(ExitCode::SUCCESS)
}

pub fn token(state_dir: &Path, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let trust = Trust::load(state_dir)?;
    match cmd {
        TokenCommand::Create { ttl } => {
            let ttl = parse_lifetime(&ttl).context("--ttl")?;
            let (token, expires) = trust.tokens().create(ttl)?;
            println!("token:    {}", token.expose());
            println!("ca_hash:  {}", trust.agent_ca.sha256_pin());
            println!("expires:  {}", format_unix(expires));
            eprintln!(
                "\nPut both under [enroll] in the agent's /etc/haop/agent.toml, start it, and \
                 haop enrolls it on first contact."
            );
        }
        TokenCommand::List => {
            println!("{:<8} {:<26} STATE", "ID", "EXPIRES");
            for t in trust.tokens().list()? {
                println!(
                    "{:<8} {:<26} {}",
                    t.id,
                    format_unix(t.expires_unix),
                    if t.expired { "expired" } else { "valid" }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
