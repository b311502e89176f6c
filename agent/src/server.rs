//! Assembling and serving the agent.
//!
//! [`build`] picks the backends the config asks for; [`serve`] takes a bound listener and a
//! shutdown future (as mini-redis does), so tests start a real server on a real socket in-process
//! and stop it when they are done. On shutdown the supervisor's children are stopped too.

use std::future::Future;
use std::sync::Arc;

use haop_proto::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use crate::config::{AgentConfig, KernelMode, ServiceManagerKind};
use crate::kernel::{HostKernel, Kernel, LabKernel};
use crate::paths::HostFs;
use crate::service::{AgentService, MAX_MESSAGE};
use crate::units::supervisor::Supervisor;
use crate::units::systemd::{systemd_is_pid1, Systemd};
use crate::units::{ServiceManager, UnitError};

/// Builds the service with the backends `config` names.
pub async fn build(config: &AgentConfig) -> Result<AgentService, UnitError> {
    let fs = HostFs::new(&config.root, config.managed_roots.clone());
    let use_systemd = match config.service_manager {
        ServiceManagerKind::Systemd => true,
        ServiceManagerKind::Supervisor => false,
        ServiceManagerKind::Auto => systemd_is_pid1(),
    };
    let units: Arc<dyn ServiceManager> = if use_systemd {
        Arc::new(Systemd::new())
    } else {
        let sup = Supervisor::new(fs, config.state_dir.clone())?;
        sup.start_enabled().await;
        Arc::new(sup)
    };
    let kernel: Arc<dyn Kernel> = match config.kernel {
        KernelMode::Host => Arc::new(HostKernel::default()),
        KernelMode::Lab => Arc::new(LabKernel::default()),
    };
    Ok(AgentService::new(config, units, kernel))
}

/// Serves `service` on `listener` until `shutdown` completes, then stops supervised units.
pub async fn serve(
    service: AgentService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let units = service.units();
    let addr = listener.local_addr().ok();
    info!(addr = ?addr, backend = units.backend(), "agent serving");
    let server = AgentServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let result = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    info!("agent stopping supervised units");
    units.shutdown().await;
    result
}
