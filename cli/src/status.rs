//! `haop status`: the cluster's health in one screen, or as JSON/YAML for monitoring; the exit
//! code is the verdict (0 healthy, 1 degraded, 2 down).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use haop_coordinator::status::{self, StatusOptions, StatusReport};

use crate::certs::load_inventory;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
    /// Prometheus' text format, for node_exporter's textfile collector (alert rules:
    /// monitoring/haop-alerts.yaml).
    Prometheus,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The inventory file.
    #[arg(short = 'f', long = "file")]
    inventory: PathBuf,
    /// table for people; json and yaml follow docs/status-schema.json; prometheus writes
    /// metrics (for example to /var/lib/prometheus/node-exporter/haop.prom from a timer).
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Refresh every 2 s in place until Ctrl-C; exits with the last verdict.
    #[arg(long)]
    watch: bool,
    /// Per-host timeout in seconds: an unreachable host shows as such after this long.
    #[arg(long, default_value_t = 2.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Client certificate for the agents (such as a haop:reader one) instead of the state
    /// dir's admin certificate; needs --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 300.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 300"
        )),
    }
}

/// Pause between two rounds of `--watch`.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

fn color_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn format(report: &StatusReport, output: Format) -> anyhow::Result<String> {
    Ok(match output {
        Format::Table => status::table::render(report, color_wanted()),
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
        Format::Yaml => serde_yaml_ng::to_string(report)?,
        Format::Prometheus => status::prometheus::render(report),
    })
}

pub async fn run(state_dir: &Path, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let inv = load_inventory(&args.inventory)?;
    // An adopted cluster before its migration's trust round accepts only clients of its own
    // CA: say so, rather than let etcd look down for no reason given.
    if let Ok(Some(r)) =
        haop_coordinator::adopt::record::AdoptionRecord::load(state_dir, inv.cluster.as_str())
    {
        if r.finished_unix.is_none() {
            let phases = haop_coordinator::adopt::migrate::member_phases(&r);
            if phases.iter().any(|(_, p)| p == "trust") {
                eprintln!(
                    "note: {} is being adopted and not every member trusts haop's CA yet ({}): etcd refuses haop's client until `haop apply` has done the trust round",
                    r.cluster,
                    phases
                        .iter()
                        .map(|(h, p)| format!("{h}={p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    let options = StatusOptions {
        timeout: Duration::from_secs_f64(args.timeout),
        identity: args.cert.zip(args.key),
    };
    if !args.watch {
        let report = status::collect(state_dir, &inv, &options).await?;
        print!("{}", format(&report, args.output)?);
        return Ok(ExitCode::from(report.verdict.exit_code));
    }
    loop {
        let report = status::collect(state_dir, &inv, &options).await?;
        let last = report.verdict.exit_code;
        let text = format(&report, args.output)?;
        let mut stdout = std::io::stdout().lock();
        // Clear the screen and home the cursor, then draw the new round.
        write!(stdout, "\x1b[2J\x1b[H{text}")?;
        stdout.flush()?;
        drop(stdout);
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::from(last)),
        }
    }
}
