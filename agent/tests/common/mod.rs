//! Test certificates for the agent's mTLS, made with rcgen directly (the coordinator's PKI is
//! tested on its own; the agent must not depend on it).

#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use time::{Duration, OffsetDateTime};

/// A CA that can issue leaf certificates.
pub struct TestCa {
    pub cert_pem: String,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        TestCa {
            issuer: Issuer::new(params, key),
            name: name.to_string(),
            cert_pem,
        }
    }

    /// `other`'s name and key in a CA certificate signed by this CA: what a CA that agents
    /// trust gives a new CA for them to trust it too (a cross-certificate).
    pub fn endorse(&self, other: &TestCa) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, &other.name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        params
            .signed_by(other.issuer.key(), &self.issuer)
            .unwrap()
            .pem()
    }

    fn leaf(
        &self,
        cn: &str,
        org: Option<&str>,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        valid: (OffsetDateTime, OffsetDateTime),
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![eku];
        params.not_before = valid.0;
        params.not_after = valid.1;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The agent's serving certificate for 127.0.0.1.
    pub fn server(&self) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.leaf(
            "agent",
            None,
            vec![
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
                SanType::DnsName("localhost".try_into().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            (now - Duration::hours(1), now + Duration::days(1)),
        )
    }

    pub fn client(&self, cn: &str, org: Option<&str>) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.leaf(
            cn,
            org,
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            (now - Duration::hours(1), now + Duration::days(1)),
        )
    }

    pub fn expired_client(&self, cn: &str, org: Option<&str>) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.leaf(
            cn,
            org,
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            (now - Duration::days(10), now - Duration::days(1)),
        )
    }
}

use std::path::PathBuf;
use std::sync::Arc;

use haop_agent::config::AgentConfig;
use haop_agent::kernel::{KernelPaths, LabKernel};
use haop_agent::units::supervisor::Supervisor;
use haop_proto::v1::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A real agent served in-process on 127.0.0.1 with a temporary root, already enrolled with
/// `ca` (its identity files written where enrollment puts them).
pub struct TestAgent {
    pub root: tempfile::TempDir,
    pub kernel_dir: tempfile::TempDir,
    pub ca: TestCa,
    pub addr: std::net::SocketAddr,
    /// Connected with a `haop:admin` certificate.
    pub client: AgentClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Units outlive the agent; `shutdown` stops them so that no test leaves processes behind.
    units: Arc<Supervisor>,
}

impl TestAgent {
    pub async fn start() -> TestAgent {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut AgentConfig)) -> TestAgent {
        Self::start_inner(tweak, true).await
    }

    /// An agent without an identity: it serves enrollment only.
    pub async fn start_unenrolled(tweak: impl FnOnce(&mut AgentConfig)) -> TestAgent {
        Self::start_inner(tweak, false).await
    }

    async fn start_inner(tweak: impl FnOnce(&mut AgentConfig), enrolled: bool) -> TestAgent {
        let root = tempfile::tempdir().unwrap();
        let kernel_dir = tempfile::tempdir().unwrap();
        let proc = kernel_dir.path().join("proc");
        let sys = kernel_dir.path().join("sys");
        std::fs::create_dir_all(proc.join("sys/net/ipv4")).unwrap();
        std::fs::create_dir_all(sys.join("module/overlay")).unwrap();
        std::fs::write(proc.join("sys/net/ipv4/ip_forward"), "0\n").unwrap();
        std::fs::write(proc.join("swaps"), "Filename Type Size Used Priority\n").unwrap();

        let mut config = AgentConfig {
            root: root.path().to_path_buf(),
            exec_allow: vec![PathBuf::from("/usr/bin/env"), PathBuf::from("/bin/echo")],
            ..AgentConfig::default()
        };
        tweak(&mut config);
        let ca = TestCa::new("test agent CA");
        if enrolled {
            let pki = root.path().join("var/lib/haop-agent/pki");
            std::fs::create_dir_all(&pki).unwrap();
            let server = ca.server();
            std::fs::write(pki.join("agent.crt"), &server.cert_pem).unwrap();
            std::fs::write(pki.join("agent.key"), &server.key_pem).unwrap();
            std::fs::write(pki.join("ca.crt"), &ca.cert_pem).unwrap();
        }

        let fs = haop_agent::paths::HostFs::new(&config.root, config.managed_roots.clone());
        let units = Arc::new(Supervisor::new(fs, config.state_dir.clone()).unwrap());
        let kernel = Arc::new(LabKernel {
            paths: KernelPaths { proc, sys },
        });
        let agent = haop_agent::server::assemble(&config, units.clone(), kernel);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            haop_agent::server::serve(agent, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let admin = ca.client("haop", Some("haop:admin"));
        let client = if enrolled {
            connect(addr, &ca.cert_pem, Some(&admin)).await.unwrap()
        } else {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.cert_pem));
            AgentClient::new(
                Channel::from_shared(format!("https://{addr}"))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
                    .connect_lazy(),
            )
        };
        TestAgent {
            root,
            kernel_dir,
            ca,
            addr,
            client,
            stop: Some(tx),
            task: Some(task),
            units,
        }
    }

    pub fn real(&self, host_path: &str) -> PathBuf {
        self.root.path().join(host_path.trim_start_matches('/'))
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.units.stop_all().await;
    }
}

/// Connects over TLS trusting `ca_pem`, presenting `client` when given.
pub async fn connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&Leaf>,
) -> Result<AgentClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(AgentClient::new(channel))
}

impl TestCa {
    /// Signs a CSR as the coordinator would for an agent's serving certificate.
    pub fn sign_csr(&self, csr_pem: &str) -> String {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now = OffsetDateTime::now_utc();
        csr.params.not_before = now - Duration::hours(1);
        csr.params.not_after = now + Duration::days(1);
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        csr.signed_by(&self.issuer).unwrap().pem()
    }

    /// A CRL numbered `number` revoking the given certificates, signed by this CA.
    pub fn crl(&self, revoked: &[&Leaf], number: u64) -> String {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(1),
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|leaf| {
                    let (_, pem) =
                        x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
                    let cert = pem.parse_x509().unwrap();
                    rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                        revocation_time: now - Duration::minutes(1),
                        reason_code: None,
                        invalidity_date: None,
                    }
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    /// `sha256:<hex>` of the CA's public key, as `haop token create` prints it.
    pub fn pin(&self) -> String {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        haop_agent::enroll::spki_pin_of(&cert)
    }
}
