//! One HTTPS GET, for the few endpoints haop reads that are not gRPC: the API servers'
//! `/readyz` (status) and etcd's `/version` (the cluster version, which upgrades wait for).
//!
//! Why by hand and small: one TLS connection (rustls, aws-lc like the rest of haop), one
//! HTTP/1.1 request, the body read up to a bound, the server verified by the caller's roots
//! under the IP address asked; no connection pool, redirects or proxies to get wrong.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::error::short_error;

fn roots(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("not a PEM file: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no certificate".to_string());
    }
    Ok(roots)
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
}

/// A TLS client that trusts the certificates of `ca_pem` and nothing else, without a client
/// certificate.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, String> {
    Ok(Arc::new(
        builder()?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth(),
    ))
}

/// The same, presenting the client certificate `cert_pem` with its key.
pub fn client_config_with_identity(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("client key: {e}"))?;
    Ok(Arc::new(
        builder()?
            .with_root_certificates(roots(ca_pem)?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?,
    ))
}

/// `GET https://ADDR{path}`, the server verified under `ADDR`'s IP: the status and at most
/// `max_body` bytes of the body.
pub async fn get(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
    max_body: usize,
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(config)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {}", short_error(&e)))?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(
            hyper::header::USER_AGENT,
            concat!("haop/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP request: {e}"))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {}", short_error(&e)))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let mut exchange = std::pin::pin!(exchange);
    // The connection future does the IO; it ends early only when the connection fails.
    tokio::select! {
        biased;
        r = &mut exchange => r,
        c = conn => match c {
            Ok(()) => exchange.await,
            Err(e) => Err(format!("HTTP: {}", short_error(&e))),
        },
    }
}
