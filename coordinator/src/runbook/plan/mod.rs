//! The plan: pure functions from the inventory to the runbook's steps.
//!
//! Nothing here reads a file or asks a host. [`desired`] turns an inventory (and the VRRP
//! password from the state dir) into every [`Step`], each with its phase; [`kubeadm`] adds the
//! Kubernetes phases and decides how kubeadm-config.yaml is rendered. What a step looks like on a
//! host, and how it is made so, is the executor's (`runbook::exec`), one module per action
//! family.
//!
//! Lifecycle: `Runbook::load` calls [`desired`] once per command; `haop plan` checks each step,
//! `haop apply` runs them phase by phase, `haop etcd add` and `haop certs renew` pick the steps
//! they need out of the same list.

mod desired;
pub mod kubeadm;
mod step;

pub use desired::{apiserver_etcd_client, desired, member_config, Context, PlanError};
pub use step::{
    unit_file_path, Action, CertificateSpec, FileAction, Issuer, KernelAction, KubeadmAction,
    Phase, Step, Target, UnitAction, WaitAction, HOSTS_FILE,
};
