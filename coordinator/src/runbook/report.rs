//! What plan and apply report: per step a [`Planned`] change or an [`Outcome`], per apply an
//! [`ApplyReport`], and the [`Event`]s a progress display follows.

use std::time::Duration;

use super::exec::Change;
use super::plan::{Phase, Target};

/// One step and what it would change (`haop plan`, and its `-o json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Planned {
    pub phase: Phase,
    /// The host, or `"cluster"` in JSON for a cluster-wide step.
    #[serde(rename = "host")]
    pub target: Target,
    pub step: String,
    pub change: Change,
}

/// Which part of a plan to show: `haop plan --host`, `--phase` and `--no-diff`.
#[derive(Debug, Clone, Default)]
pub struct PlanView {
    /// Only these targets (host names, or `cluster`); all when empty.
    pub hosts: Vec<String>,
    /// Only these phases; all when empty.
    pub phases: Vec<Phase>,
    /// Drop the diffs.
    pub no_diff: bool,
}

impl PlanView {
    /// `planned` narrowed to this view.
    pub fn apply(&self, planned: Vec<Planned>) -> Vec<Planned> {
        planned
            .into_iter()
            .filter(|p| {
                (self.hosts.is_empty() || self.hosts.iter().any(|h| *h == p.target.to_string()))
                    && (self.phases.is_empty() || self.phases.contains(&p.phase))
            })
            .map(|mut p| {
                if self.no_diff {
                    if let Change::Create { diff, .. } | Change::Update { diff, .. } = &mut p.change
                    {
                        diff.clear();
                    }
                }
                p
            })
            .collect()
    }
}

/// What happened to one step during apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Changed,
    Unchanged,
    Failed(String),
}

/// Events apply reports as it goes (for a progress display).
#[derive(Debug, Clone)]
pub enum Event<'a> {
    PhaseStarted(Phase),
    StepStarted {
        target: &'a Target,
        step: &'a str,
    },
    StepDone {
        target: &'a Target,
        step: &'a str,
        outcome: &'a Outcome,
        elapsed: Duration,
    },
    Resuming {
        last_phase: String,
    },
}

/// The outcome of apply.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyReport {
    pub changed: usize,
    pub unchanged: usize,
    pub elapsed_ms: u128,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(host: &str, phase: Phase, diff: &str) -> Planned {
        Planned {
            phase,
            target: if host == "cluster" {
                Target::Cluster
            } else {
                Target::Host(host.into())
            },
            step: "s".into(),
            change: Change::Create {
                detail: "create /x".into(),
                diff: diff.into(),
            },
        }
    }

    #[test]
    fn a_view_narrows_by_host_and_phase_and_drops_diffs() {
        let all = vec![
            planned("etcd1", Phase::EtcdConfig, "+a\n"),
            planned("master1", Phase::Keepalived, "+b\n"),
            planned("cluster", Phase::EtcdQuorum, ""),
        ];
        let by_host = PlanView {
            hosts: vec!["master1".into()],
            ..PlanView::default()
        };
        let shown = by_host.apply(all.clone());
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].target.to_string(), "master1");
        let by_phase = PlanView {
            phases: vec![Phase::EtcdConfig, Phase::EtcdQuorum],
            no_diff: true,
            ..PlanView::default()
        };
        let shown = by_phase.apply(all.clone());
        assert_eq!(shown.len(), 2);
        assert!(shown
            .iter()
            .all(|p| matches!(&p.change, Change::Create { diff, .. } if diff.is_empty())));
        assert_eq!(PlanView::default().apply(all).len(), 3);
        assert_eq!("etcd-config".parse::<Phase>().unwrap(), Phase::EtcdConfig);
        assert!("etcd-configs"
            .parse::<Phase>()
            .unwrap_err()
            .contains("keepalived"));
    }
}
