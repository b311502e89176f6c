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
