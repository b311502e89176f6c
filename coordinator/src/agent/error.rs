//! [`AgentError`]: the one error of a call to an agent.

use tonic::Code;

use super::ConnectError;

/// A call to a host's agent that failed. The message names the host and the RPC, then either
/// the agent's answer (code and detail) or that the connection broke before any answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The host has no agent endpoint (not a host of the inventory).
    #[error("{host} is not a host of the inventory")]
    UnknownHost { host: String },
    /// The agent could not be reached at all.
    #[error("cannot reach the agent of {host}")]
    Connect {
        host: String,
        #[source]
        source: ConnectError,
    },
    /// A local file the call needed could not be read (nothing was changed on the host).
    #[error("{host}: cannot read {}: {detail}", .path.display())]
    Local {
        host: String,
        path: std::path::PathBuf,
        detail: String,
    },
    /// The agent answered with an error.
    #[error("agent of {host}: {rpc}: {code:?}: {detail}")]
    Refused {
        host: String,
        rpc: &'static str,
        code: Code,
        detail: String,
    },
    /// The connection broke before an answer came (the agent exited, restarted or was cut off):
    /// whether the call took effect is unknown.
    #[error(
        "agent of {host}: {rpc}: the connection to the agent broke before it answered \
         ({detail}); the agent may have exited or restarted, so the outcome is unknown"
    )]
    Broken {
        host: String,
        rpc: &'static str,
        detail: String,
    },
}

impl AgentError {
    /// The error for `status`, the answer to `rpc` on `host`.
    pub fn from_status(host: &str, rpc: &'static str, status: tonic::Status) -> AgentError {
        match broken_transport(&status) {
            Some(detail) => AgentError::Broken {
                host: host.to_string(),
                rpc,
                detail,
            },
            None => AgentError::Refused {
                host: host.to_string(),
                rpc,
                code: status.code(),
                detail: status.message().to_string(),
            },
        }
    }

    /// The host whose agent failed.
    pub fn host(&self) -> &str {
        match self {
            AgentError::UnknownHost { host }
            | AgentError::Local { host, .. }
            | AgentError::Connect { host, .. }
            | AgentError::Refused { host, .. }
            | AgentError::Broken { host, .. } => host,
        }
    }

    /// The gRPC code of the agent's answer; `Unavailable` when there was none.
    pub fn code(&self) -> Code {
        match self {
            AgentError::Refused { code, .. } => *code,
            AgentError::UnknownHost { .. } => Code::NotFound,
            AgentError::Local { .. } => Code::InvalidArgument,
            AgentError::Connect { .. } | AgentError::Broken { .. } => Code::Unavailable,
        }
    }

    /// The agent's own words, without host and RPC (for a table cell that names them already).
    pub fn detail(&self) -> String {
        match self {
            AgentError::Refused { detail, .. } => detail.clone(),
            AgentError::Broken { detail, .. } => format!("connection broke ({detail})"),
            AgentError::Connect { source, .. } => crate::error_chain(source),
            AgentError::UnknownHost { .. } | AgentError::Local { .. } => self.to_string(),
        }
    }

    /// Whether the call may have taken effect without an answer saying so.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, AgentError::Broken { .. })
    }

    /// Whether the agent answered NotFound (a path, a unit).
    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound && matches!(self, AgentError::Refused { .. })
    }
}

/// When the connection broke before any answer, its root cause; tonic's own `Display` of a
/// transport failure is a debug dump.
fn broken_transport(s: &tonic::Status) -> Option<String> {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::transport::Error>().is_some() {
            let mut root = e;
            while let Some(next) = root.source() {
                root = next;
            }
            return Some(root.to_string());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_host_rpc_code_and_detail() {
        let s = tonic::Status::failed_precondition("unit etcd.service is not installed");
        let e = AgentError::from_status("etcd1", "UnitAction", s);
        assert_eq!(
            e.to_string(),
            "agent of etcd1: UnitAction: FailedPrecondition: unit etcd.service is not installed"
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(!e.outcome_unknown());
        assert_eq!(e.host(), "etcd1");
    }

    #[test]
    fn not_found_is_an_answer() {
        let e = AgentError::from_status("m1", "ReadFile", tonic::Status::not_found("no"));
        assert!(e.is_not_found());
    }
}
