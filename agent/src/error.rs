//! The agent's errors and their one mapping to gRPC statuses.
//!
//! Every module has its own error enum with context; [`AgentError`] gathers them, and the single
//! `From<AgentError> for Status` below decides the code. It has no wildcard arm, so a new error
//! kind cannot reach a client with a code nobody chose. The message is the whole error chain,
//! rendered once, so the operator sees the path, unit or program and the OS's reason.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::command::CommandError;
use crate::csr::CsrError;
use crate::datadirs::WipeError;
use crate::exec::ExecError;
use crate::files::FileError;
use crate::identity::ServingError;
use crate::kernel::KernelError;
use crate::names::NameError;
use crate::paths::PathError;
use crate::policy::Denied;
use crate::revocation::RevocationError;
use crate::tls::TlsError;
use crate::trust::TrustError;
use crate::units::UnitError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Wipe(#[from] WipeError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Serving(#[from] ServingError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0} holds a private key; private keys never leave their host")]
    Secret(String),
    #[error(
        "{0} is not in haop's encrypted snapshot format; DownloadFile streams back encrypted \
         snapshot copies only"
    )]
    NotEncrypted(String),
}

/// The error and its sources, once: "write /etc/x: Permission denied (os error 13)".
pub fn render_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn path_code(e: &PathError) -> Code {
    match e {
        PathError::Invalid { .. } => Code::InvalidArgument,
        PathError::OutsideManagedRoots { .. } | PathError::SymlinkEscape { .. } => {
            Code::PermissionDenied
        }
        PathError::SymlinkLoop { .. } => Code::FailedPrecondition,
        PathError::Io { .. } => Code::Internal,
    }
}

fn file_code(e: &FileError) -> Code {
    match e {
        FileError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => Code::NotFound,
            std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            _ => Code::Internal,
        },
        FileError::IsDirectory { .. } | FileError::NoParent { .. } => Code::FailedPrecondition,
        FileError::TooLarge { .. } => Code::ResourceExhausted,
        FileError::UnknownOwner { .. } => Code::InvalidArgument,
        FileError::ChecksumMismatch { .. } => Code::DataLoss,
    }
}

fn csr_code(e: &CsrError) -> Code {
    match e {
        CsrError::File(f) => file_code(f),
        CsrError::NoKey { .. } => Code::FailedPrecondition,
        CsrError::InvalidName { .. }
        | CsrError::UnknownAlgorithm(_)
        | CsrError::InvalidCertificate { .. }
        | CsrError::KeyMismatch { .. } => Code::InvalidArgument,
        CsrError::KeyGeneration { .. } | CsrError::Request { .. } | CsrError::CreateDir { .. } => {
            Code::Internal
        }
    }
}

fn trust_code(e: &TrustError) -> Code {
    match e {
        TrustError::Empty
        | TrustError::TooMany { .. }
        | TrustError::Format { .. }
        | TrustError::Unacceptable { .. } => Code::InvalidArgument,
        TrustError::NotEndorsed { .. } => Code::PermissionDenied,
        TrustError::LocksOutCaller { .. } | TrustError::DropsRevocationSigner { .. } => {
            Code::FailedPrecondition
        }
    }
}

fn command_code(e: &CommandError) -> Code {
    match e {
        CommandError::Spawn { .. } | CommandError::Failed { .. } => Code::Internal,
    }
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Status {
        let code = match &err {
            AgentError::Auth(e) => match e {
                AuthError::NoCertificate { .. }
                | AuthError::BadCertificate { .. }
                | AuthError::Revoked { .. }
                | AuthError::NotTrusted { .. } => Code::Unauthenticated,
            },
            AgentError::Denied(e) => match e {
                Denied::Rpc { .. } | Denied::Path { .. } => Code::PermissionDenied,
            },
            AgentError::Name(_) | AgentError::Invalid(_) => Code::InvalidArgument,
            AgentError::Secret(_) => Code::PermissionDenied,
            AgentError::NotEncrypted(_) => Code::PermissionDenied,
            AgentError::Csr(e) => csr_code(e),
            AgentError::Revocation(e) => match e {
                RevocationError::Format(_) | RevocationError::NoNumber => Code::InvalidArgument,
                RevocationError::Signature(_) => Code::PermissionDenied,
                RevocationError::Older { .. } | RevocationError::NotEnrolled => {
                    Code::FailedPrecondition
                }
                RevocationError::File(f) => file_code(f),
            },
            AgentError::Trust(e) => trust_code(e),
            AgentError::Serving(e) => match e {
                ServingError::Invalid(_) | ServingError::KeyMismatch { .. } => {
                    Code::InvalidArgument
                }
                ServingError::NotFromBundle { .. } => Code::PermissionDenied,
                ServingError::Trust(t) => trust_code(t),
                ServingError::Csr(c) => csr_code(c),
                ServingError::File(f) => file_code(f),
            },
            AgentError::Tls(e) => match e {
                TlsError::NotEnrolled => Code::FailedPrecondition,
                TlsError::Identity(_) | TlsError::Material { .. } => Code::Internal,
            },
            AgentError::Path(e) => path_code(e),
            AgentError::File(e) => file_code(e),
            AgentError::Unit(e) => match e {
                UnitError::NotInstalled { .. } => Code::NotFound,
                UnitError::InvalidUnitFile { .. } => Code::InvalidArgument,
                UnitError::Spawn { .. } | UnitError::Command { .. } | UnitError::Io { .. } => {
                    Code::Internal
                }
                UnitError::StopTimeout { .. } => Code::DeadlineExceeded,
            },
            AgentError::Kernel(e) => match e {
                KernelError::UnknownSysctl { .. } => Code::NotFound,
                KernelError::MissingProgram { .. } => Code::FailedPrecondition,
                KernelError::Io { .. } => Code::Internal,
                KernelError::Command(c) => command_code(c),
            },
            AgentError::Wipe(e) => match e {
                WipeError::NotDeclared { .. } | WipeError::Forbidden { .. } => {
                    Code::PermissionDenied
                }
                WipeError::UnitRunning { .. } => Code::FailedPrecondition,
                WipeError::Path(p) => path_code(p),
                WipeError::File(f) => file_code(f),
                WipeError::Corrupt { .. } => Code::Internal,
            },
            AgentError::Exec(e) => match e {
                ExecError::NotAllowed { .. } => Code::PermissionDenied,
                ExecError::NotInstalled { .. } => Code::FailedPrecondition,
                ExecError::Invalid { .. } => Code::InvalidArgument,
                ExecError::Command(c) => command_code(c),
            },
        };
        Status::new(code, render_chain(&err))
    }
}
