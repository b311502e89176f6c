//! Assembling and serving the agent.
//!
//! [`build`] picks the backends the config asks for; [`serve`] takes a bound listener and a
//! shutdown future (as mini-redis does), so tests start a real server on a real socket in-process
//! and stop it when they are done.
//!
//! The listener serves in one of two modes, decided by the agent's identity on disk:
//! * not enrolled: plaintext, the `Enrollment` service only (the `Agent` RPCs answer
//!   UNAUTHENTICATED, since no caller has a certificate);
//! * enrolled: mTLS only, clients must present a certificate from a CA of the agent's trust
//!   bundle. TLS is terminated by [`crate::tls::LiveTls`], so a new trust bundle or serving
//!   certificate (a rotation of the agent CA) takes effect without a restart.
//!
//! When enrollment completes, the plaintext server drains and the same listener is served again
//! with mTLS. On shutdown the units keep running (see [`crate::units::supervisor`]).

use std::future::Future;
use std::sync::Arc;

use futures_util::stream;
use haop_proto::v1::agent_server::AgentServer;
use haop_proto::v1::enrollment_server::EnrollmentServer;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::info;

use crate::config::{AgentConfig, KernelMode, ServiceManagerKind};
use crate::enroll::{EnrollConfig, EnrollmentService};
use crate::identity::{IdentityError, IdentityStore};
use crate::kernel::{HostKernel, Kernel, LabKernel};
use crate::paths::HostFs;
use crate::service::{AgentService, MAX_MESSAGE};
use crate::tls::{LiveTls, TlsError};
use crate::units::supervisor::Supervisor;
use crate::units::systemd::{systemd_is_pid1, Systemd};
use crate::units::{ServiceManager, UnitError};

/// How long open connections may drain after a shutdown was asked for.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("serving gRPC")]
    Transport(#[from] tonic::transport::Error),
}

/// Everything `serve` needs: the RPC service, the identity and what enrollment checks.
#[derive(Debug, Clone)]
pub struct Agent {
    pub service: AgentService,
    pub identity: IdentityStore,
    pub enroll: EnrollConfig,
    /// The TLS configuration in force, shared with the RPCs that change it.
    pub tls: LiveTls,
}

/// Builds the agent with the backends `config` names.
pub async fn build(config: &AgentConfig) -> Result<Agent, UnitError> {
    let fs = HostFs::new(&config.root, config.managed_roots.clone());
    let use_systemd = match config.service_manager {
        ServiceManagerKind::Systemd => true,
        ServiceManagerKind::Supervisor => false,
        ServiceManagerKind::Auto => systemd_is_pid1(),
    };
    let units: Arc<dyn ServiceManager> = if use_systemd {
        Arc::new(Systemd::new())
    } else {
        let sup = Supervisor::new(fs.clone(), config.state_dir.clone())?;
        sup.start_enabled().await;
        Arc::new(sup)
    };
    let kernel: Arc<dyn Kernel> = match config.kernel {
        KernelMode::Host => Arc::new(HostKernel::default()),
        KernelMode::Lab => Arc::new(LabKernel::default()),
    };
    Ok(assemble(config, units, kernel))
}

/// Puts an agent together from chosen backends (tests pass in-memory kernels here).
pub fn assemble(
    config: &AgentConfig,
    units: Arc<dyn ServiceManager>,
    kernel: Arc<dyn Kernel>,
) -> Agent {
    let fs = HostFs::new(&config.root, config.managed_roots.clone());
    let identity = IdentityStore::new(&fs, &config.state_dir);
    let tls = LiveTls::new(identity.clone());
    let service = AgentService::new(config, units, kernel, identity.clone(), tls.clone());
    Agent {
        tls,
        enroll: EnrollConfig {
            token: config.enroll_token.clone(),
            ca_hash: config.enroll_ca_hash.clone(),
            hostname: crate::facts::hostname(&fs),
        },
        service,
        identity,
    }
}

/// Serves `agent` on `listener` until `shutdown` completes. Units keep running.
pub async fn serve(
    agent: Agent,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let units = agent.service.units();
    let listener = Arc::new(listener);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = serve_modes(&agent, listener, stop_rx).await;
    units.shutdown().await;
    result
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn incoming(
    listener: Arc<TcpListener>,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((accepted, l))
    })
}

async fn serve_modes(
    agent: &Agent,
    listener: Arc<TcpListener>,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().ok();
    loop {
        let grpc = |svc: AgentService| {
            AgentServer::new(svc)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        };
        if agent.tls.reload()? {
            info!(addr = ?addr, backend = agent.service.units().backend(), "agent serving mTLS");
            if agent.enroll.token.is_some() {
                info!(
                    "the bootstrap token under [enroll] is spent (this agent is enrolled and \
                     haop accepts a token once); it can be removed from the config"
                );
            }
            let server = tonic::transport::Server::builder()
                .add_service(grpc(agent.service.clone()))
                .serve_with_incoming_shutdown(agent.tls.incoming(listener), stopped(stop.clone()));
            // Graceful shutdown waits for clients to hang up; a coordinator that keeps its
            // connection open must not keep the agent (and its supervised units) alive.
            tokio::select! {
                r = server => r?,
                _ = async {
                    stopped(stop).await;
                    tokio::time::sleep(DRAIN).await;
                } => info!(seconds = DRAIN.as_secs(), "clients still connected after the drain time; stopping"),
            }
            return Ok(());
        }
        info!(addr = ?addr, "agent not enrolled: serving enrollment only");
        let enrolled = Arc::new(Notify::new());
        let enrollment = EnrollmentService::new(
            agent.enroll.clone(),
            agent.identity.clone(),
            enrolled.clone(),
        );
        let mut stop_probe = stop.clone();
        let stop_for_server = stop.clone();
        let notified = enrolled.clone();
        tonic::transport::Server::builder()
            .add_service(EnrollmentServer::new(enrollment))
            .add_service(grpc(agent.service.clone()))
            .serve_with_incoming_shutdown(incoming(listener.clone()), async move {
                tokio::select! {
                    _ = notified.notified() => {}
                    _ = stopped(stop_for_server) => {}
                }
            })
            .await?;
        if *stop_probe.borrow_and_update() {
            return Ok(());
        }
    }
}
