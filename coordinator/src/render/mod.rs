//! Rendering the files of the runbook's host steps: pure functions from the inventory (and the
//! few secrets the caller keeps in the state dir) to file text.
//!
//! The seed has a person type these files into `vim` and `cat <<EOF` on every host, with
//! per-host values edited by hand (`state <state>`, `priority <priority>`, `<VIRTUAL-IP>`). Here
//! every artifact is computed from one inventory, so that `haop plan` can show a unified diff
//! of what would change and `haop apply` writes exactly what the plan showed. Nothing in this
//! module does IO: each renderer answers a [`RenderedFile`] (path, content, mode) or, for what
//! the agent writes itself (modules, sysctls), plain data.
//!
//! * [`hosts`]: haop's block in `/etc/hosts` and the merge that keeps every other line.
//! * [`keepalived`]: `keepalived.conf`, `check_apiserver.sh` and `keepalived.service` on masters.
//! * [`nodeprep`]: kernel modules, sysctls and containerd's `config.toml` on Kubernetes nodes.
//! * [`kubeadm`]: `kubeadm-config.yaml` for `kubeadm init` against the external etcd, and the
//!   parser of the join commands `kubeadm init` prints.

pub mod hosts;
pub mod keepalived;
pub mod kubeadm;
pub mod nodeprep;

/// One file as a step wants it on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path on the host.
    pub path: String,
    pub content: String,
    /// Permission bits (`0o644`, `0o755`).
    pub mode: u32,
}

impl RenderedFile {
    pub(crate) fn new(path: &str, content: String, mode: u32) -> RenderedFile {
        RenderedFile {
            path: path.to_string(),
            content,
            mode,
        }
    }
}
