//! `haop plan`, `haop apply` and `haop etcd env`: the runbook from one inventory file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;
use haop_coordinator::runbook::plan::Phase;
use haop_coordinator::runbook::{self, Change, Event, Outcome, Runbook};
use indicatif::{ProgressBar, ProgressStyle};

use crate::certs::load_inventory;

pub use crate::output::Format;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The inventory file.
    #[arg(short = 'f', long = "file")]
    inventory: PathBuf,
    /// Exit 0 when there is nothing to do and 2 when there are changes (as
    /// `terraform plan -detailed-exitcode`), so scripts can check convergence.
    #[arg(long)]
    exit_code: bool,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Seconds to wait for each agent.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Only the steps of this host (repeat for several; `cluster` for cluster-wide steps).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Only the steps of this phase (repeat for several): hosts, certificates, etcd-binary,
    /// etcd-config, etcd-start, etcd-quorum, etcd-seal, keepalived, node-prep, kubeadm-config,
    /// kubeadm-init, kubeadm-join-masters, kubeadm-join-workers, cni.
    #[arg(long = "phase", value_name = "PHASE")]
    phases: Vec<Phase>,
    /// One line per step, without the diffs of the files it would create or change.
    #[arg(long)]
    no_diff: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The inventory file.
    #[arg(short = 'f', long = "file")]
    inventory: PathBuf,
    /// Seconds to wait for each agent.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

fn load(state_dir: &Path, inventory: &Path) -> anyhow::Result<Runbook> {
    let inv = load_inventory(inventory)?;
    Ok(Runbook::load(state_dir, inv)?)
}

pub async fn plan(state_dir: &Path, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let rb = load(state_dir, &args.inventory)?;
    for h in &args.hosts {
        if h != "cluster" && rb.inventory.host(h).is_none() {
            let names: Vec<&str> = rb.inventory.hosts.iter().map(|h| h.name.as_str()).collect();
            anyhow::bail!(
                "--host {h}: no such host in {} (hosts: {}, or cluster)",
                args.inventory.display(),
                names.join(", ")
            );
        }
    }
    let view = runbook::PlanView {
        hosts: args.hosts.clone(),
        phases: args.phases.clone(),
        no_diff: args.no_diff,
    };
    let planned = view.apply(runbook::plan(&rb, Duration::from_secs(args.timeout)).await?);
    let mut changes = planned.iter().filter(|p| p.change.is_change()).count();
    // An adopted cluster that is not secured yet: apply runs the migration first.
    let adoption = haop_coordinator::adopt::record::AdoptionRecord::load(
        state_dir,
        rb.inventory.cluster.as_str(),
    )?
    .filter(|r| r.finished_unix.is_none());
    if let Some(r) = &adoption {
        changes += 1;
        if args.output != Format::Json {
            crate::adopt::print_status(r, &rb.inventory);
            println!("The steps below follow the migration (some of them are its result).");
        }
    }
    if args.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&planned)?);
    } else {
        let mut target = None;
        for p in &planned {
            if !p.change.is_change() {
                continue;
            }
            if target != Some(&p.target) {
                println!("\n{}:", p.target);
                target = Some(&p.target);
            }
            match &p.change {
                Change::Unchanged => {}
                Change::Run { detail } => println!("  > [{}] {detail}", p.phase),
                Change::Create { detail, diff } | Change::Update { detail, diff } => {
                    let mark = if matches!(p.change, Change::Create { .. }) {
                        '+'
                    } else {
                        '~'
                    };
                    println!("  {mark} [{}] {detail}", p.phase);
                    for line in diff.lines() {
                        println!("      {line}");
                    }
                }
            }
        }
        println!(
            "\nPlan: {changes} of {} steps would change something{}.",
            planned.len(),
            if changes == 0 { " (nothing to do)" } else { "" }
        );
    }
    Ok(if args.exit_code && changes > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn apply(state_dir: &Path, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let inv = load_inventory(&args.inventory)?;
    // An adopted cluster is secured first (nothing happens on any other cluster).
    if let Some(m) =
        haop_coordinator::adopt::migrate::run(state_dir, &inv, &|line| eprintln!("  {line}"))
            .await?
    {
        let longest = m.restarts.iter().map(|r| r.seconds).fold(0.0, f64::max);
        println!(
            "Secured the adopted cluster: {} member restarts (longest {longest:.1} s), {} CA key file(s) removed, in {:.1} s.",
            m.restarts.len(),
            m.keys_removed.len(),
            m.seconds
        );
    }
    let rb = Runbook::load(state_dir, inv)?;
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::new(rb.steps.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let bar = Mutex::new(bar);
    let on_event = |e: Event<'_>| {
        let line = match &e {
            Event::Resuming { last_phase } => Some(format!(
                "the previous apply was interrupted (last phase: {last_phase}); continuing: every step is safe to repeat"
            )),
            Event::PhaseStarted(p) => Some(format!("== {p}")),
            Event::StepStarted { .. } => None,
            Event::StepDone {
                target,
                step,
                outcome,
                elapsed,
            } => Some(format!(
                "{target:<10} {:<9} {step} ({} ms){}",
                match outcome {
                    Outcome::Changed => "changed",
                    Outcome::Unchanged => "ok",
                    Outcome::Failed(_) => "FAILED",
                },
                elapsed.as_millis(),
                match outcome {
                    Outcome::Failed(why) => format!(": {why}"),
                    _ => String::new(),
                }
            )),
        };
        let guard = bar.lock().unwrap_or_else(|p| p.into_inner());
        match (guard.as_ref(), line) {
            (Some(b), Some(l)) => {
                if matches!(e, Event::StepDone { .. }) {
                    b.inc(1);
                }
                b.println(l);
            }
            (None, Some(l)) => eprintln!("{l}"),
            _ => {}
        }
    };
    let result = runbook::apply(&rb, Duration::from_secs(args.timeout), &on_event).await;
    if let Some(b) = bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
        b.finish_and_clear();
    }
    let report = result?;
    println!(
        "Apply complete: {} changed, {} unchanged, in {:.1} s.",
        report.changed,
        report.unchanged,
        report.elapsed_ms as f64 / 1000.0
    );
    Ok(ExitCode::SUCCESS)
}
