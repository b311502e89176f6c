//! Rendering an etcd member's configuration: `/etc/etcd.env` and `etcd.service`.
//!
//! The seed hand-writes one long `ExecStart` per host with client and peer certificate auth
//! turned off. haop renders the same settings from data, with both turned on, as etcd's own
//! `ETCD_*` environment variables in `/etc/etcd.env` (etcd reads them natively, and a diff of
//! one variable per line is readable in `haop plan`), and one unit file that is identical on
//! every host. Pure functions: no IO.

use std::net::IpAddr;

/// Where the member's certificates live on its host (the seed's paths, `.crt`/`.key` names).
pub const PKI_DIR: &str = "/etc/kubernetes/pki/etcd";
pub const ENV_FILE: &str = "/etc/etcd.env";
/// How the member first joins: `ETCD_INITIAL_CLUSTER` and `ETCD_INITIAL_CLUSTER_STATE`. Apply
/// writes it only when it is missing; recovery rewrites it (state `existing`, the cluster from
/// `member add`). etcd ignores both once its data dir holds a member, so keeping them apart
/// from etcd.env lets a recovered member and a freshly formed one share the same etcd.env, and
/// a converged cluster plan nothing.
pub const BOOTSTRAP_ENV_FILE: &str = "/etc/etcd.bootstrap.env";

/// The bootstrap file once the member has joined. etcd ignores it while the data dir holds the
/// member; with an empty data dir etcd refuses to start ("couldn't find local name in the
/// initial cluster configuration") instead of rejoining under its old member ID with no log,
/// which could elect a leader that lost acknowledged writes. `haop etcd recover` re-adds such a
/// member properly.
pub const SEALED_BOOTSTRAP_ENV: &str =
    "# Managed by haop: sealed after this member joined. A member whose data is lost must be\n\
# brought back with `haop etcd recover`, not by starting it again.\n\
ETCD_INITIAL_CLUSTER=haop-sealed=https://127.0.0.1:1\n\
ETCD_INITIAL_CLUSTER_STATE=existing\n";
pub const UNIT_NAME: &str = "etcd.service";
/// The etcd CA's revocation list, in [`PKI_DIR`]: etcd checks every new client connection
/// against it (`ETCD_CLIENT_CRL_FILE`, re-read at each handshake), so `haop identity revoke
/// --etcd` takes effect without a restart. It must exist: etcd refuses every client when the
/// file is missing, so apply writes it before etcd.env names it.
pub const CLIENT_CRL: &str = "client-crl.pem";

/// Where an uploaded etcd binary is installed: `/usr/local/bin/etcd-VERSION` when the
/// inventory says the version, so that an upgrade puts the new binary beside the old one (kept
/// for a rollback) and the unit names the one it runs; `/usr/local/bin/etcd` otherwise.
pub fn uploaded_binary_path(version: Option<&str>) -> String {
    match version {
        Some(v) => format!("/usr/local/bin/etcd-{v}"),
        None => "/usr/local/bin/etcd".to_string(),
    }
}

/// `/etc/kubernetes/pki/etcd/client-crl.pem`.
pub fn client_crl_path() -> String {
    format!("{PKI_DIR}/{CLIENT_CRL}")
}
pub const DEFAULT_DATA_DIR: &str = "/var/lib/etcd";

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub address: IpAddr,
}

impl Member {
    pub fn peer_url(&self, port: u16) -> String {
        format!("https://{}:{port}", url_host(self.address))
    }

    pub fn client_url(&self, port: u16) -> String {
        format!("https://{}:{port}", url_host(self.address))
    }
}

fn url_host(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A member's TLS files and certificate auth (the `ETCD_*` TLS variables of `etcd.env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub peer_cert_file: String,
    pub peer_key_file: String,
    pub peer_trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub peer_client_cert_auth: bool,
    /// etcd refuses every client when this file is missing: only where haop wrote it.
    pub client_crl_file: Option<String>,
}

/// `new` to form a cluster, `existing` to join one (after `member add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// Everything that makes one member's configuration.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub member: Member,
    /// `name=https://addr:2380` for every member the cluster starts with (or, when joining, the
    /// list etcd answered to `member add`).
    pub initial_cluster: Vec<Member>,
    pub state: ClusterState,
    pub cluster_token: String,
    pub data_dir: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub binary: String,
    /// Extra `--flag=value` arguments from the inventory, passed as they are.
    pub extra_flags: Vec<String>,
}

impl MemberConfig {
    pub fn cert(&self, name: &str) -> String {
        format!("{PKI_DIR}/{name}")
    }

    /// The TLS files and settings of a member haop manages: its own certificates, the CA file
    /// next to them, both certificate auths on, the revocation list.
    pub fn haop_tls(&self) -> TlsSettings {
        TlsSettings {
            cert_file: self.cert("server.crt"),
            key_file: self.cert("server.key"),
            trusted_ca_file: self.cert("ca.crt"),
            peer_cert_file: self.cert("peer.crt"),
            peer_key_file: self.cert("peer.key"),
            peer_trusted_ca_file: self.cert("ca.crt"),
            client_cert_auth: true,
            peer_client_cert_auth: true,
            client_crl_file: Some(self.cert(CLIENT_CRL)),
        }
    }

    /// `/etc/etcd.env`: one `ETCD_*` variable per line.
    pub fn env_file(&self) -> String {
        self.env_file_with(&self.haop_tls())
    }

    /// `/etc/etcd.env` with other TLS settings than haop's own: the steps of adopting a
    /// cluster built by hand (`crate::adopt`) run its members on its own certificates, and
    /// with certificate auth off, for a while.
    pub fn env_file_with(&self, tls: &TlsSettings) -> String {
        let m = &self.member;
        let on_off = |b: bool| if b { "true" } else { "false" }.to_string();
        let mut vars = vec![
            ("ETCD_NAME", m.name.clone()),
            ("ETCD_DATA_DIR", self.data_dir.clone()),
            (
                "ETCD_LISTEN_CLIENT_URLS",
                format!(
                    "{},https://127.0.0.1:{}",
                    m.client_url(self.client_port),
                    self.client_port
                ),
            ),
            ("ETCD_ADVERTISE_CLIENT_URLS", m.client_url(self.client_port)),
            ("ETCD_LISTEN_PEER_URLS", m.peer_url(self.peer_port)),
            (
                "ETCD_INITIAL_ADVERTISE_PEER_URLS",
                m.peer_url(self.peer_port),
            ),
            ("ETCD_INITIAL_CLUSTER_TOKEN", self.cluster_token.clone()),
            ("ETCD_CERT_FILE", tls.cert_file.clone()),
            ("ETCD_KEY_FILE", tls.key_file.clone()),
            ("ETCD_TRUSTED_CA_FILE", tls.trusted_ca_file.clone()),
            ("ETCD_CLIENT_CERT_AUTH", on_off(tls.client_cert_auth)),
        ];
        if let Some(crl) = &tls.client_crl_file {
            vars.push(("ETCD_CLIENT_CRL_FILE", crl.clone()));
        }
        vars.extend([
            ("ETCD_PEER_CERT_FILE", tls.peer_cert_file.clone()),
            ("ETCD_PEER_KEY_FILE", tls.peer_key_file.clone()),
            (
                "ETCD_PEER_TRUSTED_CA_FILE",
                tls.peer_trusted_ca_file.clone(),
            ),
            (
                "ETCD_PEER_CLIENT_CERT_AUTH",
                on_off(tls.peer_client_cert_auth),
            ),
            // A member back from a partition or a restart asks before it campaigns, instead of
            // forcing an election on a healthy leader (3.4 and 3.5 default to false).
            ("ETCD_PRE_VOTE", "true".into()),
        ]);
        let mut out = String::from(
            "# Managed by haop: etcd member configuration (etcd reads ETCD_* variables).\n",
        );
        for (k, v) in vars {
            out.push_str(&format!("{k}={v}\n"));
        }
        out
    }

    /// `name=https://addr:2380,...` of the initial members.
    pub fn initial_cluster_string(&self) -> String {
        self.initial_cluster
            .iter()
            .map(|p| format!("{}={}", p.name, p.peer_url(self.peer_port)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `/etc/etcd.bootstrap.env` for forming the cluster (state `new`, the inventory's members),
    /// or for joining it with `initial_cluster` as `member add` answered.
    pub fn bootstrap_env_file(&self, initial_cluster: Option<&str>) -> String {
        let state = match self.state {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        };
        let cluster = initial_cluster
            .map(str::to_string)
            .unwrap_or_else(|| self.initial_cluster_string());
        format!(
            "# Managed by haop: how this member first joined (ignored by etcd once it has data).\n\
             ETCD_INITIAL_CLUSTER={cluster}\n\
             ETCD_INITIAL_CLUSTER_STATE={state}\n"
        )
    }

    /// `etcd.service`, the same on every host but for extra flags.
    pub fn unit_file(&self) -> String {
        let mut exec = self.binary.clone();
        for f in &self.extra_flags {
            exec.push(' ');
            exec.push_str(f);
        }
        format!(
            "# Managed by haop.\n\
             [Unit]\n\
             Description=etcd key-value store (member of a haop cluster)\n\
             Documentation=https://etcd.io/docs/\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Type=notify\n\
             EnvironmentFile={ENV_FILE}\n\
             EnvironmentFile={BOOTSTRAP_ENV_FILE}\n\
             ExecStart={exec}\n\
             Restart=always\n\
             RestartSec=1s\n\
             LimitNOFILE=65536\n\
             TimeoutStartSec=0\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MemberConfig {
        let ms: Vec<Member> = (1..=3)
            .map(|i| Member {
                name: format!("etcd{i}"),
                address: format!("10.0.0.{i}").parse().unwrap(),
            })
            .collect();
        MemberConfig {
            member: ms[0].clone(),
            initial_cluster: ms,
            state: ClusterState::New,
            cluster_token: "c1".into(),
            data_dir: DEFAULT_DATA_DIR.into(),
            client_port: 2379,
            peer_port: 2380,
            binary: "/usr/bin/etcd".into(),
            extra_flags: vec![],
        }
    }

    #[test]
    fn env_turns_certificate_auth_on_everywhere() {
        let env = cfg().env_file();
        assert!(env.contains("ETCD_CLIENT_CERT_AUTH=true\n"));
        assert!(env.contains("ETCD_PEER_CLIENT_CERT_AUTH=true\n"));
        assert!(!env.contains("ETCD_INITIAL_CLUSTER="));
        assert!(cfg().bootstrap_env_file(None).contains(
            "ETCD_INITIAL_CLUSTER=etcd1=https://10.0.0.1:2380,etcd2=https://10.0.0.2:2380,etcd3=https://10.0.0.3:2380\n"
        ));
        assert!(
            env.contains("ETCD_LISTEN_CLIENT_URLS=https://10.0.0.1:2379,https://127.0.0.1:2379\n")
        );
        assert!(cfg()
            .bootstrap_env_file(None)
            .contains("ETCD_INITIAL_CLUSTER_STATE=new\n"));
        assert!(!env.to_lowercase().contains("cert-auth=false"));
    }

    #[test]
    fn joining_member_says_existing() {
        let mut c = cfg();
        c.state = ClusterState::Existing;
        let b = c.bootstrap_env_file(Some("a=https://x:2380"));
        assert!(b.contains("ETCD_INITIAL_CLUSTER_STATE=existing\n"));
        assert!(b.contains("ETCD_INITIAL_CLUSTER=a=https://x:2380\n"));
        assert_eq!(
            c.env_file(),
            cfg().env_file(),
            "etcd.env does not depend on how it joined"
        );
    }

    #[test]
    fn unit_reads_the_env_file() {
        let u = cfg().unit_file();
        assert!(
            u.contains("EnvironmentFile=/etc/etcd.env\nEnvironmentFile=/etc/etcd.bootstrap.env\n")
        );
        assert!(u.contains("ExecStart=/usr/bin/etcd\n"));
        assert!(u.contains("Restart=always\n"));
    }
}
