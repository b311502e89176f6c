//! `/readyz` against a real TLS server on loopback (tokio-rustls, raw HTTP/1.1 answers as
//! kube-apiserver writes them), and the pure parts: targets, rows, body details.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::pki::{CertificateAuthority, ExpectedNames, KeyAlgorithm, Profile, SigningRequest};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA in `dir` and a server certificate from it for `ips`: (CA PEM, cert PEM, key PEM).
fn pki(dir: &std::path::Path, ca_name: &str, ips: Vec<IpAddr>) -> (String, String, String) {
    let ca = CertificateAuthority::create(
        dir,
        ca_name,
        "kubernetes",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(3600),
    )
    .unwrap();
    let leaf = ca
        .issue_local(
            dir,
            &format!("{ca_name}-apiserver"),
            KeyAlgorithm::EcdsaP256,
            &SigningRequest {
                profile: Profile::Server,
                lifetime: Duration::from_secs(3600),
                expected: ExpectedNames {
                    dns: vec!["kubernetes".into()],
                    ips,
                },
                organization: None,
                common_name: "kube-apiserver".into(),
            },
        )
        .unwrap();
    let key = std::fs::read_to_string(&leaf.key_path).unwrap();
    (ca.cert_pem().to_string(), leaf.cert_pem, key)
}

/// How the test server behaves after accepting a connection.
#[derive(Clone, Copy)]
enum Serve {
    /// TLS, then this raw HTTP response.
    Answer(&'static str),
    /// Accepts TCP and never says anything.
    Silent,
}

/// A TLS server on loopback; every request head it reads is sent on the channel.
async fn server(
    cert: &str,
    key: &str,
    serve: Serve,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Serve::Answer(response) = serve else {
                    // Hold the connection open without a word.
                    let _keep = tcp;
                    std::future::pending::<()>().await;
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, rx)
}

const READY: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
                     X-Content-Type-Options: nosniff\r\nContent-Length: 2\r\n\r\nok";

/// kube-apiserver's answer with the etcd check failing, chunked as Go writes a long body.
const NOT_READY: &str = "HTTP/1.1 500 Internal Server Error\r\n\
    Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n\
    Transfer-Encoding: chunked\r\n\r\n\
    1a\r\n[+]ping ok\n[+]log ok\n[-]et\r\n\
    36\r\ncd failed: reason withheld\n[+]informer-sync ok\nreadyz \r\n\
    d\r\ncheck failed\n\r\n\
    0\r\n\r\n";

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[tokio::test]
async fn ready_and_not_ready_answers_with_the_failed_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), "kube-ca", vec![LOOPBACK]);
    let config = client_config(&ca).unwrap();

    let (addr, mut heads) = server(&cert, &key, Serve::Answer(READY)).await;
    let (result, latency) = readyz(config.clone(), addr, soon()).await;
    assert_eq!(result, Ok((200, "ok".to_string())));
    assert!(latency < Duration::from_secs(5));
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: {addr}\r\n")),
        "{head}"
    );

    let (addr, _) = server(&cert, &key, Serve::Answer(NOT_READY)).await;
    let answer = readyz(config, addr, soon()).await;
    let (status, body) = answer.0.clone().unwrap();
    assert_eq!(status, 500);
    assert!(body.ends_with("readyz check failed\n"), "{body:?}");
    let target = Target {
        via: ApiVia::Master,
        host: Some("master2".into()),
        addr,
    };
    let row = endpoint_row(&target, Some(answer));
    assert!(!row.ready);
    assert_eq!(row.http_status, Some(500));
    assert_eq!(
        row.outcome(),
        "HTTP 500: [-]etcd failed: reason withheld",
        "{row:?}"
    );
    assert_eq!(row.url, format!("https://{addr}/readyz"));
}

#[tokio::test]
async fn a_server_the_cluster_ca_did_not_sign_for_that_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = pki(dir.path(), "kube-ca", vec![LOOPBACK]);
    let (_, other_cert, other_key) = pki(dir.path(), "other-ca", vec![LOOPBACK]);
    let config = client_config(&ca).unwrap();
    let (addr, mut heads) = server(&other_cert, &other_key, Serve::Answer(READY)).await;
    let (result, _) = readyz(config, addr, soon()).await;
    let e = result.unwrap_err();
    // Another cluster's CA has the same name ("kubernetes", as kubeadm names every CA): the
    // signature is what tells them apart.
    assert!(
        e.starts_with("TLS: invalid peer certificate: BadSignature"),
        "{e}"
    );

    // Signed by the cluster CA, but for another address.
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), "kube-ca", vec!["10.0.0.21".parse().unwrap()]);
    let (addr, _) = server(&cert, &key, Serve::Answer(READY)).await;
    let (result, _) = readyz(client_config(&ca).unwrap(), addr, soon()).await;
    let e = result.unwrap_err();
    assert!(
        e.starts_with("TLS: ") && e.contains("not valid for name \"127.0.0.1\""),
        "{e}"
    );
    assert!(
        heads.try_recv().is_err(),
        "no request reached an unverified server"
    );
}

#[tokio::test]
async fn a_silent_server_costs_the_deadline_and_a_closed_port_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), "kube-ca", vec![LOOPBACK]);
    let config = client_config(&ca).unwrap();
    let (addr, _) = server(&cert, &key, Serve::Silent).await;
    let started = Instant::now();
    let (result, latency) =
        readyz(config.clone(), addr, started + Duration::from_millis(300)).await;
    assert_eq!(result, Err(LATE.to_string()));
    assert!(latency >= Duration::from_millis(300), "{latency:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A port nobody listens on: refused at once.
    let closed = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (result, _) = readyz(config, addr, soon()).await;
    let e = result.unwrap_err();
    assert!(e.starts_with("cannot connect: "), "{e}");
}

#[test]
fn the_ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, key) = pki(dir.path(), "kube-ca", vec![LOOPBACK]);
    assert!(client_config(&ca).is_ok());
    assert_eq!(
        client_config(&key).unwrap_err(),
        "holds no certificate",
        "a key is no CA"
    );
    assert!(client_config("").is_err());
    let broken = ca.replace("-----END CERTIFICATE-----", "");
    assert!(client_config(&broken).is_err());
}

#[test]
fn details_name_the_failed_checks_or_the_first_line() {
    assert_eq!(detail("ok"), Some("ok".into()));
    assert_eq!(detail(""), None);
    assert_eq!(
        detail("[+]ping ok\n[-]etcd failed: reason withheld\n[-]shutdown failed: reason withheld\nreadyz check failed\n"),
        Some("[-]etcd failed: reason withheld; [-]shutdown failed: reason withheld".into())
    );
    assert_eq!(
        detail("\n{\"kind\":\"Status\",\"code\":403}\n"),
        Some("{\"kind\":\"Status\",\"code\":403}".into())
    );
    let long = detail(&"x".repeat(1000)).unwrap();
    assert_eq!(long.chars().count(), MAX_DETAIL + 1);
}

#[test]
fn targets_are_the_vip_then_each_master_on_the_api_server_port() {
    let yaml = "cluster: c\n\
                hosts:\n\
                \x20 - {name: etcd1, address: 10.0.0.11, roles: [etcd]}\n\
                \x20 - {name: etcd2, address: 10.0.0.12, roles: [etcd]}\n\
                \x20 - {name: etcd3, address: 10.0.0.13, roles: [etcd]}\n\
                \x20 - {name: master1, address: 10.0.0.21, roles: [master]}\n\
                \x20 - {name: master2, address: 10.0.0.22, roles: [master]}\n\
                vip: {address: 10.0.0.100}\n";
    let (mut inv, _) = Inventory::from_yaml(yaml, "inv.yaml").unwrap();
    let t = targets(&inv);
    let shown: Vec<(ApiVia, Option<&str>, String)> = t
        .iter()
        .map(|t| (t.via, t.host.as_deref(), t.addr.to_string()))
        .collect();
    assert_eq!(
        shown,
        [
            (ApiVia::Vip, None, "10.0.0.100:6443".to_string()),
            (
                ApiVia::Master,
                Some("master1"),
                "10.0.0.21:6443".to_string()
            ),
            (
                ApiVia::Master,
                Some("master2"),
                "10.0.0.22:6443".to_string()
            ),
        ]
    );
    let row = endpoint_row(&t[0], None);
    assert_eq!(row.url, "https://10.0.0.100:6443/readyz");
    assert!(!row.ready && row.latency_ms.is_none());
    assert!(row.error.unwrap().contains("no Kubernetes CA"));

    // The inventory's API port, wherever it is asked.
    inv.kubernetes.api_port = 8443;
    let ports: Vec<u16> = targets(&inv).iter().map(|t| t.addr.port()).collect();
    assert_eq!(ports, [8443, 8443, 8443]);

    inv.kubernetes.enabled = false;
    assert!(targets(&inv).is_empty());
}
