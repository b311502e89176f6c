//! The executor of one step: checking it against a host, and running it.
//!
//! Every action family owns both halves, in its own module: how the host is read to say what
//! would change (`check`, all `haop plan` does; it changes nothing) and how it is made to match
//! (`run`, an idempotent ensure through the agent that answers whether anything changed):
//!
//! * [`files`]: whole files, files written only when missing, haop's /etc/hosts block, uploads.
//! * [`units`]: unit files and units running, with restarts on changed files and rolling etcd
//!   restarts that keep the quorum.
//! * [`certificates`]: keys born on the host, certificates through the CSR flow.
//! * [`kernel`]: modules, sysctls, swap.
//! * [`waits`]: the etcd quorum and the VIP, states the run holds for.
//! * [`kubeadm`]: kubeadm-config.yaml, init, joins (with [`join_info`]), the CNI manifest.
//!
//! [`check`] and [`run`] only map a step to its family and its target to an agent. Running a
//! step twice changes nothing the second time; a step that failed midway (an agent gone, a
//! write refused) is simply run again, since each family compares before it acts.
//!
//! The families share [`change`] (what a plan shows), [`context`] (what a run shares) and
//! [`command`] (programs run through the agent); they never use one another, except that
//! `kubeadm` keeps its join info in [`join_info`].

pub mod certificates;
pub mod change;
pub mod command;
pub mod context;
pub mod files;
pub mod join_info;
pub mod kernel;
pub mod kubeadm;
pub mod units;
pub mod waits;

use std::collections::HashSet;

pub use certificates::issue_certificate;
pub use change::Change;
pub use context::RunContext;

use crate::agent::{AgentError, HostAgent};
use crate::runbook::plan::{Action, Step, Target};

/// Errors of one step; the executor adds the host and the step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A host step with no connection to the host's agent.
    #[error("no connection to the agent of {host}")]
    NotConnected { host: String },
    /// A family that acts through one host's agent, planned for the whole cluster.
    #[error("step {step:?} needs a host, not the whole cluster")]
    NeedsHost { step: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(transparent)]
    Unit(#[from] units::UnitError),
    #[error(transparent)]
    Certificate(#[from] certificates::CertificateError),
    #[error(transparent)]
    Wait(#[from] waits::WaitError),
    #[error(transparent)]
    Kubeadm(#[from] kubeadm::KubeadmStepError),
    #[error(transparent)]
    Command(#[from] command::CommandError),
}

impl StepError {
    /// The connection to the host's agent broke before it answered (the agent restarted or
    /// exited in the middle of the call): the step may or may not have acted. Every step of
    /// these families is an ensure that compares before it acts, so running it again once the
    /// agent answers is how to finish it. kubeadm's steps are left out: they are not retried
    /// behind the operator's back.
    pub fn agent_interrupted(&self) -> bool {
        let agent = match self {
            StepError::Agent(e)
            | StepError::File(files::FileError::Agent(e))
            | StepError::Unit(units::UnitError::Agent(e))
            | StepError::Certificate(certificates::CertificateError::Agent(e)) => e,
            _ => return false,
        };
        agent.outcome_unknown()
    }
}

/// The agent a host step acts through.
fn agent_of<'a>(step: &Step, agent: Option<&'a HostAgent>) -> Result<&'a HostAgent, StepError> {
    match (&step.target, agent) {
        (Target::Host(_), Some(a)) => Ok(a),
        (Target::Host(host), None) => Err(StepError::NotConnected { host: host.clone() }),
        (Target::Cluster, _) => Err(StepError::NeedsHost {
            step: step.name.clone(),
        }),
    }
}

/// What `step` would change; `agent` is its host's (`None` for a cluster-wide step).
pub async fn check(
    step: &Step,
    agent: Option<&HostAgent>,
    ctx: &RunContext,
) -> Result<Change, StepError> {
    Ok(match &step.action {
        Action::File(a) => files::check(a, agent_of(step, agent)?).await?,
        Action::Unit(a) => units::check(a, agent_of(step, agent)?).await?,
        Action::Certificate(a) => certificates::check(a, agent_of(step, agent)?, ctx).await?,
        Action::Kernel(a) => kernel::check(a, agent_of(step, agent)?).await?,
        Action::Wait(a) => waits::check(a, ctx).await,
        Action::Kubeadm(a) => kubeadm::check(a, agent_of(step, agent)?, ctx).await?,
    })
}

/// Makes the target of `step` match it; answers whether anything changed. `changed_paths` are
/// the files this run changed on the step's host so far (a unit restarts on them).
pub async fn run(
    step: &Step,
    agent: Option<&HostAgent>,
    ctx: &RunContext,
    changed_paths: &HashSet<String>,
) -> Result<bool, StepError> {
    Ok(match &step.action {
        Action::File(a) => files::run(a, agent_of(step, agent)?).await?,
        Action::Unit(a) => units::run(a, agent_of(step, agent)?, ctx, changed_paths).await?,
        Action::Certificate(a) => certificates::run(a, agent_of(step, agent)?, ctx).await?,
        Action::Kernel(a) => kernel::run(a, agent_of(step, agent)?).await?,
        Action::Wait(a) => waits::run(a, ctx).await?,
        Action::Kubeadm(a) => kubeadm::run(a, agent_of(step, agent)?, ctx).await?,
    })
}
