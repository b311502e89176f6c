//! The agent's mTLS, reloaded live: a new trust bundle or serving certificate takes effect for
//! the next handshake, with no restart.
//!
//! Why not tonic's own TLS: it builds its rustls configuration once, when the server starts, so
//! changing what the agent trusts would need a restart, and a restarted agent is a window in
//! which the coordinator cannot reach it (and a restart of the built-in supervisor's agent is
//! more than a reload). Here the agent terminates TLS itself: [`LiveTls`] holds the current
//! rustls configuration, each accepted connection is handshaken (in its own task, with a
//! deadline, so a slow client holds up no other) with whatever configuration is current at that
//! moment, and tonic serves the established streams. Connections already open keep the
//! configuration they were made with; every call on them is still admitted against the current
//! bundle ([`crate::policy::Policy::admit`] asks [`crate::trust::TrustBundle::admits`]), so a
//! certificate whose CA was dropped is refused from its next call.
//!
//! Lifecycle: [`LiveTls::reload`] when the server switches to mTLS (after enrollment or at
//! start), and after `InstallTrustBundle` and `InstallServingCertificate` rewrote the identity
//! files; [`LiveTls::incoming`] for the server's stream of connections.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::identity::{IdentityError, IdentityStore, TlsMaterial};
use crate::trust::{self, TrustBundle};

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS configuration could not be built from the identity files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the agent is not enrolled: it has no TLS identity")]
    NotEnrolled,
    #[error("{what} in {dir}: {reason}")]
    Material {
        what: &'static str,
        dir: String,
        reason: String,
    },
}

/// The agent's current TLS configuration and trust bundle, shared by the acceptor and the
/// RPCs that change them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveTls {
    identity: IdentityStore,
    bundle: TrustBundle,
    config: Arc<RwLock<Option<Arc<ServerConfig>>>>,
}

impl LiveTls {
    pub fn new(identity: IdentityStore) -> LiveTls {
        LiveTls {
            identity,
            bundle: TrustBundle::default(),
            config: Arc::new(RwLock::new(None)),
        }
    }

    /// The trust bundle in force (empty until the first reload).
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Reads the identity files and puts them in force for the next handshake and call.
    /// Answers `false` when the agent is not enrolled (nothing changes then). On an error the
    /// configuration in force stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(material) = self.identity.load()? else {
            return Ok(false);
        };
        let dir = self.identity.dir.display().to_string();
        let config = server_config(&material, &dir)?;
        let cas = trust::read_bundle(&material.ca_pem).map_err(|e| TlsError::Material {
            what: "the trust bundle",
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        let pins: Vec<String> = cas.iter().map(|c| c.pin.clone()).collect();
        *self.config.write().expect("tls lock") = Some(Arc::new(config));
        self.bundle.set(cas);
        info!(trusted = ?pins, "TLS identity and trust bundle in force");
        Ok(true)
    }

    fn current(&self) -> Option<Arc<ServerConfig>> {
        self.config.read().expect("tls lock").clone()
    }

    /// The connections accepted on `listener`, each handshaken with the configuration current
    /// when it arrived. Failed handshakes (a certificate from a CA the agent does not trust, a
    /// port scanner) are logged and dropped. Accepting stops when the stream is dropped.
    pub fn incoming(
        &self,
        listener: Arc<TcpListener>,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let live = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Some(config) = live.current() else {
                    warn!(%peer, "no TLS configuration in force; connection dropped");
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = TlsAcceptor::from(config).accept(tcp);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// A rustls server configuration from the identity: the serving certificate and key, client
/// certificates required and verified against every CA of the bundle, HTTP/2 by ALPN.
pub fn server_config(m: &TlsMaterial, dir: &str) -> Result<ServerConfig, TlsError> {
    let bad = |what: &'static str, reason: String| TlsError::Material {
        what,
        dir: dir.to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(m.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("the serving certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes())
        .map_err(|e| bad("the serving key", e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(m.ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| bad("the trust bundle", e.to_string()))?;
        roots
            .add(ca)
            .map_err(|e| bad("the trust bundle", e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| bad("the trust bundle", e.to_string()))?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad("the serving certificate and key", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
