//! `haop init` and `haop token`: the state dir's CAs and the tokens agents enroll with.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use haop_coordinator::pki::{parse_lifetime, KeyAlgorithm};
use haop_coordinator::trust::{self, format_unix, InitOptions, TokenUses, Trust};

use crate::output::Format;

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
    ///
    /// The token enrolls one host: once an agent enrolled with it, any other agent presenting it
    /// is refused. The state dir keeps only a verifier (a public key derived from the secret),
    /// so this is the only time the secret is shown.
    Create {
        /// How long the token can be used to enroll, such as 24h or 30m.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Let the token enroll any number of hosts until it expires (for one image baked for
        /// many machines). Keep the ttl short.
        #[arg(long)]
        reusable: bool,
    },
    /// List tokens: id, expiry, state (valid, claimed, used, expired) and the hosts that used
    /// them. Never secrets: the state dir has none.
    List {
        /// table or json.
        #[arg(short = 'o', long, default_value = "table")]
        output: Format,
    },
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
        TokenCommand::Create { ttl, reusable } => {
            trust.refuse_during_rotation("a bootstrap token")?;
            let ttl = parse_lifetime(&ttl).context("--ttl")?;
            let uses = if reusable {
                TokenUses::Many
            } else {
                TokenUses::Once
            };
            let (token, expires) = trust.tokens().create(ttl, uses)?;
            println!("token:    {}", token.expose());
            println!("ca_hash:  {}", trust.agent_ca.sha256_pin());
            println!("expires:  {}", format_unix(expires));
            println!(
                "uses:     {}",
                if reusable {
                    "any number of hosts until it expires"
                } else {
                    "one host"
                }
            );
            eprintln!(
                "\nPut both under [enroll] in the agent's /etc/haop/agent.toml, start it, and \
                 haop enrolls it on first contact."
            );
        }
        TokenCommand::List { output } => {
            let tokens = trust.tokens().list()?;
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<8} {:<26} {:<8} USED BY", "ID", "EXPIRES", "STATE");
            for t in tokens {
                let used: Vec<String> = t
                    .used_by
                    .iter()
                    .map(|u| {
                        let how = if u.done { "" } else { " (claimed)" };
                        format!("{}{how} at {}", u.host, format_unix(u.at_unix))
                    })
                    .collect();
                println!(
                    "{:<8} {:<26} {:<8} {}",
                    t.id,
                    format_unix(t.expires_unix),
                    t.state(),
                    if used.is_empty() {
                        "-".to_string()
                    } else {
                        used.join(", ")
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
