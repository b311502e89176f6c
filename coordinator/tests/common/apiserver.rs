//! The kube-apiserver stand-in's files on a lab master, shared by the tests that need an API
//! server answering /readyz over TLS (status, the keepalived check, kubeadm's endpoint sync):
//! a test CA where kubeadm keeps the cluster CA, a server certificate for the master, its name
//! and the VIP, and the stand-in script (tests/fixtures/kube-apiserver-standin).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use haop_coordinator::lab::LabHost;
use haop_coordinator::pki::{
    CertificateAuthority, ExpectedNames, KeyAlgorithm, Profile, SigningRequest,
};

/// Writes `data` at `rel` under a host's root with `mode`, making its directory.
pub fn put(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A test fixture's bytes (tests/fixtures/NAME).
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The test's cluster CA, in `state/kube-standin-pki`. Long-lived, as kubeadm's (status
/// reads its expiry too).
pub struct StandinCa {
    dir: PathBuf,
    pub ca: CertificateAuthority,
}

impl StandinCa {
    pub fn create(state: &Path) -> StandinCa {
        let dir = state.join("kube-standin-pki");
        let ca = CertificateAuthority::create(
            &dir,
            "kube-ca-standin",
            "kubernetes",
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(400 * 86_400),
        )
        .unwrap();
        StandinCa { dir, ca }
    }

    /// On `host`: the CA at /etc/kubernetes/pki/ca.crt, a server certificate (CN
    /// kube-apiserver; `kubernetes`, the host's name, localhost, its address and `vip`) and
    /// key under /var/lib/haop-standin, and the stand-in at /usr/local/bin.
    pub fn install(&self, host: &LabHost, vip: IpAddr) {
        let leaf = self
            .ca
            .issue_local(
                &self.dir,
                &host.name,
                KeyAlgorithm::EcdsaP256,
                &SigningRequest {
                    profile: Profile::Server,
                    lifetime: Duration::from_secs(3600),
                    expected: ExpectedNames {
                        dns: vec!["kubernetes".into(), host.name.clone(), "localhost".into()],
                        ips: vec![host.address.into(), vip],
                    },
                    organization: None,
                    common_name: "kube-apiserver".into(),
                },
            )
            .unwrap();
        let r = &host.root_dir;
        put(
            r,
            "etc/kubernetes/pki/ca.crt",
            self.ca.cert_pem().as_bytes(),
            0o644,
        );
        put(
            r,
            "var/lib/haop-standin/apiserver.crt",
            leaf.cert_pem.as_bytes(),
            0o644,
        );
        put(
            r,
            "var/lib/haop-standin/apiserver.key",
            &std::fs::read(&leaf.key_path).unwrap(),
            0o600,
        );
        put(
            r,
            "usr/local/bin/kube-apiserver-standin",
            &fixture("kube-apiserver-standin"),
            0o755,
        );
    }
}
