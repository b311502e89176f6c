//! `kubeadm init` against the external etcd: its configuration file, and the join commands it
//! prints.
//!
//! Replaces the seed's "Run kubeadm init" and "join node cluster" steps. The seed's
//! `kubeadm-config.yaml` has a top-level `apiServerCertSANs` (a v1alpha field that v1beta3
//! rejects as unknown in strict mode), `kubernetesVersion: stable` (a download from dl.k8s.io
//! at init time), the etcd CA and the *CA's own* client certificate copied by scp, and no
//! `InitConfiguration`, so the API server advertises whatever interface kubeadm guesses. haop
//! renders, per master:
//!
//! * `ClusterConfiguration`: the VIP as `controlPlaneEndpoint` (and in `apiServer.certSANs`),
//!   the inventory's version pinned, the pod and service subnets, and `etcd.external` with
//!   every etcd member's client URL and the API server's own client certificate
//!   (`apiserver-etcd-client.crt`, issued by haop's etcd CA through the CSR flow; no key is
//!   copied);
//! * `InitConfiguration`: the master's own address as `advertiseAddress`, the inventory name as
//!   the node name, containerd's socket, and the kubelet's `node-ip` (the seed's
//!   `KUBELET_EXTRA_ARGS --node-ip=$(ifconfig | grep ...)` drop-in);
//! * `KubeletConfiguration` with `cgroupDriver: systemd`, matching containerd
//!   ([`super::nodeprep::containerd_config`]).
//!
//! The apiVersion follows the kubeadm binary found on the host: `kubeadm.k8s.io/v1beta3` for
//! 1.22 to 1.30, `kubeadm.k8s.io/v1beta4` from 1.31 (where v1beta3 is deprecated). The one
//! difference that touches this file is `kubeletExtraArgs`: a map in v1beta3, a list of
//! `name`/`value` pairs in v1beta4. kubeadm older than 1.22 (no v1beta3) is refused.
//!
//! Two more renderings keep kubeadm from moving keys and guessing addresses:
//!
//! * [`upload_certs_config`]: the same configuration with the external etcd's CA, certificate
//!   and key named at paths that never exist ([`NOT_UPLOADED_DIR`]). kubeadm's copycerts
//!   (`--upload-certs`, `init phase upload-certs`) puts the files that `etcd.external` names
//!   into the kubeadm-certs Secret, and every control-plane join writes them over the joining
//!   master's own: master1's etcd client key would reach every master. A missing file is
//!   stored empty, and a join skips empty entries, so with this file each master keeps the key
//!   it made itself. haop never passes `--upload-certs` to `kubeadm init`; it runs
//!   `kubeadm init phase upload-certs --upload-certs --config` with this file.
//! * [`join_configuration`]: a per-node `JoinConfiguration` (`kubeadm join --config`): the
//!   bootstrap token discovery, the node's name, containerd's socket and the kubelet's
//!   `node-ip`, and for a master its advertise address, port and certificate key. Flags alone
//!   (`kubeadm join ENDPOINT --token ...`) cannot set `node-ip` or the CRI socket, so a host
//!   with several interfaces registered whatever address the kubelet guessed.
//!
//! Without a pinned `kubernetes.version` kubeadm asks dl.k8s.io for `stable-1`;
//! [`with_kubernetes_version`] pins the file to the host's kubeadm version instead (what
//! kubeadm falls back to offline).
//!
//! [`parse_kubeadm_init_output`] reads the two `kubeadm join` commands from what `kubeadm init`
//! prints (the control-plane one, with `--certificate-key` when certificates were uploaded, and
//! the worker one) and checks each value's form before it reaches another host's command line.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::RenderedFile;
use crate::inventory::{Host, Inventory, Role, Version};

/// Where the configuration is written on the first master (`kubeadm init --config` reads it).
pub const CONFIG_PATH: &str = "/etc/kubernetes/kubeadm-config.yaml";
pub const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";
pub const ETCD_CA_FILE: &str = "/etc/kubernetes/pki/etcd/ca.crt";
pub const ETCD_CLIENT_CERT_FILE: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
pub const ETCD_CLIENT_KEY_FILE: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";
/// The configuration `kubeadm init phase upload-certs --config` reads (see the module doc).
pub const UPLOAD_CONFIG_PATH: &str = "/etc/kubernetes/kubeadm-upload-certs.yaml";
/// A directory haop never creates: the etcd files [`upload_certs_config`] names are in it, so
/// kubeadm's copycerts finds none of them and uploads nothing of the external etcd.
pub const NOT_UPLOADED_DIR: &str = "/etc/kubernetes/pki/haop-etcd-files-stay-on-each-master";
/// Where a node's JoinConfiguration is written for `kubeadm join --config` (mode 0600: it
/// holds the bootstrap token and the certificate key); removed once the join ran.
pub const JOIN_CONFIG_PATH: &str = "/etc/kubernetes/kubeadm-join.yaml";
pub const V1BETA3: &str = "kubeadm.k8s.io/v1beta3";
pub const V1BETA4: &str = "kubeadm.k8s.io/v1beta4";

/// Why `kubeadm-config.yaml` cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeadmError {
    #[error(
        "kubeadm {version} is too old: haop writes kubeadm.k8s.io/v1beta3 or v1beta4, which \
         need kubeadm 1.22 or newer; install a newer kubeadm"
    )]
    KubeadmTooOld { version: Version },
    #[error(
        "kubernetes.version {version} has no patch number; kubeadm needs an exact release \
         such as {version}.0"
    )]
    VersionWithoutPatch { version: Version },
    #[error("host {host} is not a master; kubeadm init runs on a master")]
    NotAMaster { host: String },
    #[error("the inventory has no etcd hosts; kubeadm needs the external etcd's endpoints")]
    NoEtcd,
}

/// The kubeadm config apiVersion that `kubeadm` (the binary's version) reads best.
pub fn api_version_for(kubeadm: Version) -> Result<&'static str, KubeadmError> {
    match (kubeadm.major(), kubeadm.minor()) {
        (0, _) | (1, 0..=21) => Err(KubeadmError::KubeadmTooOld { version: kubeadm }),
        (1, 22..=30) => Ok(V1BETA3),
        _ => Ok(V1BETA4),
    }
}

/// `host:port` with brackets around an IPv6 address.
fn host_port(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// `kubeadm-config.yaml` for `kubeadm init` on `master`, for a kubeadm binary of version
/// `kubeadm`. Three YAML documents, each starting with `---`.
pub fn kubeadm_config(
    inv: &Inventory,
    master: &Host,
    kubeadm: Version,
) -> Result<RenderedFile, KubeadmError> {
    let files = [ETCD_CA_FILE, ETCD_CLIENT_CERT_FILE, ETCD_CLIENT_KEY_FILE].map(String::from);
    render_config(inv, master, kubeadm, &files, CONFIG_PATH)
}

/// The configuration for `kubeadm init phase upload-certs --upload-certs --config`: the same as
/// [`kubeadm_config`] but the external etcd files in [`NOT_UPLOADED_DIR`], so none of them is
/// uploaded (see the module doc).
pub fn upload_certs_config(
    inv: &Inventory,
    master: &Host,
    kubeadm: Version,
) -> Result<RenderedFile, KubeadmError> {
    let files = [ETCD_CA_FILE, ETCD_CLIENT_CERT_FILE, ETCD_CLIENT_KEY_FILE].map(|f| {
        let name = f.rsplit('/').next().unwrap_or(f);
        format!("{NOT_UPLOADED_DIR}/{name}")
    });
    let mut f = render_config(inv, master, kubeadm, &files, UPLOAD_CONFIG_PATH)?;
    f.content = f.content.replacen(
        "# Managed by haop: kubeadm init with the external etcd (kubeadm init --config THIS).\n",
        "# Managed by haop: for `kubeadm init phase upload-certs --upload-certs --config THIS` only.\n\
         # The etcd files are named where none exists, so kubeadm uploads none of them: each\n\
         # master keeps its own etcd client key (kubeadm-config.yaml names the real files).\n",
        1,
    );
    Ok(f)
}

fn render_config(
    inv: &Inventory,
    master: &Host,
    kubeadm: Version,
    etcd_files: &[String; 3],
    path: &str,
) -> Result<RenderedFile, KubeadmError> {
    let api_version = api_version_for(kubeadm)?;
    if !master.has_role(Role::Master) {
        return Err(KubeadmError::NotAMaster {
            host: master.name.to_string(),
        });
    }
    let endpoints = inv.etcd_client_urls();
    if endpoints.is_empty() {
        return Err(KubeadmError::NoEtcd);
    }
    // Without a VIP (one master), the master itself is the endpoint.
    let endpoint_addr = inv.vip.as_ref().map_or(master.address, |v| v.address);

    let mut out = String::from(
        "# Managed by haop: kubeadm init with the external etcd (kubeadm init --config THIS).\n",
    );
    out.push_str(&format!(
        "---\n\
         apiVersion: {api_version}\n\
         kind: ClusterConfiguration\n\
         clusterName: \"{cluster}\"\n",
        cluster = inv.cluster,
    ));
    if let Some(v) = inv.kubernetes.version {
        if v.patch().is_none() {
            return Err(KubeadmError::VersionWithoutPatch { version: v });
        }
        out.push_str(&format!("kubernetesVersion: \"v{v}\"\n"));
    }
    out.push_str(&format!(
        "controlPlaneEndpoint: \"{}\"\n\
         apiServer:\n\
         \x20 certSANs:\n\
         \x20   - \"{endpoint_addr}\"\n\
         networking:\n\
         \x20 podSubnet: \"{}\"\n",
        host_port(endpoint_addr, inv.kubernetes.api_port),
        inv.kubernetes.pod_subnet,
    ));
    if let Some(s) = inv.kubernetes.service_subnet {
        out.push_str(&format!("  serviceSubnet: \"{s}\"\n"));
    }
    out.push_str("etcd:\n  external:\n    endpoints:\n");
    for e in &endpoints {
        out.push_str(&format!("      - \"{e}\"\n"));
    }
    let [ca, cert, key] = etcd_files;
    out.push_str(&format!(
        "    caFile: \"{ca}\"\n\
         \x20   certFile: \"{cert}\"\n\
         \x20   keyFile: \"{key}\"\n"
    ));

    let node_ip = master.address;
    let kubelet_extra_args = node_ip_arg(api_version, &node_ip.to_string());
    out.push_str(&format!(
        "---\n\
         apiVersion: {api_version}\n\
         kind: InitConfiguration\n\
         localAPIEndpoint:\n\
         \x20 advertiseAddress: \"{node_ip}\"\n\
         \x20 bindPort: {port}\n\
         nodeRegistration:\n\
         \x20 name: \"{name}\"\n\
         \x20 criSocket: \"{CRI_SOCKET}\"\n\
         \x20 kubeletExtraArgs:\n\
         {kubelet_extra_args}",
        name = master.name,
        port = inv.kubernetes.api_port,
    ));
    out.push_str(
        "---\n\
         apiVersion: kubelet.config.k8s.io/v1beta1\n\
         kind: KubeletConfiguration\n\
         cgroupDriver: systemd\n",
    );
    Ok(RenderedFile::new(path, out, 0o600))
}

/// `kubeletExtraArgs` with `node-ip` (under `nodeRegistration:`): a map in v1beta3, a list of
/// name/value pairs in v1beta4.
fn node_ip_arg(api_version: &str, node_ip: &str) -> String {
    if api_version == V1BETA3 {
        format!("    node-ip: \"{node_ip}\"\n")
    } else {
        format!("    - name: \"node-ip\"\n      value: \"{node_ip}\"\n")
    }
}

/// `text` (a rendering of [`kubeadm_config`] or [`upload_certs_config`]) with
/// `kubernetesVersion` set to `version` when it has none: kubeadm would look up `stable-1` on
/// the network for it.
pub fn with_kubernetes_version(text: &str, version: Version) -> String {
    if text.lines().any(|l| l.starts_with("kubernetesVersion:")) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 32);
    let mut done = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        if !done && line.starts_with("clusterName:") {
            out.push_str(&format!("kubernetesVersion: \"v{version}\"\n"));
            done = true;
        }
    }
    out
}

/// What a node's JoinConfiguration says about the node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNode {
    /// The node name (the inventory's host name).
    pub name: String,
    /// The kubelet's `node-ip` (the host's inventory address).
    pub node_ip: String,
    /// For a control-plane node: the API server's advertise address and port.
    pub control_plane: Option<(String, u16)>,
}

/// The JoinConfiguration of `node` for `kubeadm join --config`, in `api_version`, with the
/// discovery values and certificate key of `cmd` (checked by [`parse_kubeadm_init_output`]).
pub fn join_configuration(api_version: &str, node: &JoinNode, cmd: &JoinCommand) -> String {
    let mut out = format!(
        "# Managed by haop: kubeadm join --config THIS (removed after the join).\n\
         ---\n\
         apiVersion: {api_version}\n\
         kind: JoinConfiguration\n\
         discovery:\n\
         \x20 bootstrapToken:\n\
         \x20   apiServerEndpoint: \"{}\"\n\
         \x20   token: \"{}\"\n\
         \x20   caCertHashes:\n",
        cmd.endpoint, cmd.token
    );
    for h in &cmd.ca_cert_hashes {
        out.push_str(&format!("      - \"{h}\"\n"));
    }
    out.push_str(&format!(
        "nodeRegistration:\n\
         \x20 name: \"{}\"\n\
         \x20 criSocket: \"{CRI_SOCKET}\"\n\
         \x20 kubeletExtraArgs:\n\
         {}",
        node.name,
        node_ip_arg(api_version, &node.node_ip)
    ));
    if let Some((address, port)) = &node.control_plane {
        out.push_str(&format!(
            "controlPlane:\n\
             \x20 localAPIEndpoint:\n\
             \x20   advertiseAddress: \"{address}\"\n\
             \x20   bindPort: {port}\n"
        ));
        if let Some(k) = &cmd.certificate_key {
            out.push_str(&format!("  certificateKey: \"{k}\"\n"));
        }
    }
    out
}

/// One `kubeadm join` command as `kubeadm init` printed it, each value checked.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinCommand {
    /// The API server endpoint, `HOST:PORT` (the VIP's when there is one).
    pub endpoint: String,
    /// The bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// `sha256:` and 64 hex digits, one or more.
    pub ca_cert_hashes: Vec<String>,
    /// `--control-plane`: the node joins as a master.
    pub control_plane: bool,
    /// `--certificate-key` (64 hex digits) when `kubeadm init --upload-certs` uploaded the
    /// control-plane certificates.
    pub certificate_key: Option<String>,
}

impl JoinCommand {
    /// The arguments after `kubeadm` (`join ENDPOINT --token ...`), for the agent's command RPC.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "join".to_string(),
            self.endpoint.clone(),
            "--token".to_string(),
            self.token.clone(),
        ];
        for h in &self.ca_cert_hashes {
            a.push("--discovery-token-ca-cert-hash".to_string());
            a.push(h.clone());
        }
        if self.control_plane {
            a.push("--control-plane".to_string());
        }
        if let Some(k) = &self.certificate_key {
            a.push("--certificate-key".to_string());
            a.push(k.clone());
        }
        a
    }
}

impl fmt::Debug for JoinCommand {
    /// The token's secret half and the certificate key are secrets: only the token id shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token_id = self.token.split('.').next().unwrap_or("");
        f.debug_struct("JoinCommand")
            .field("endpoint", &self.endpoint)
            .field("token", &format_args!("{token_id}.<hidden>"))
            .field("ca_cert_hashes", &self.ca_cert_hashes)
            .field("control_plane", &self.control_plane)
            .field(
                "certificate_key",
                &self.certificate_key.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

/// The join commands of one `kubeadm init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinInfo {
    /// For more masters; kubeadm prints it only when `controlPlaneEndpoint` is set.
    pub control_plane: Option<JoinCommand>,
    pub worker: JoinCommand,
}

/// Why the output of `kubeadm init` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("kubeadm init printed no worker `kubeadm join` command")]
    NoWorkerJoin,
    #[error("kubeadm init printed more than one {which} `kubeadm join` command")]
    Duplicate { which: &'static str },
    #[error("a `kubeadm join` command has no {what}")]
    Missing { what: &'static str },
    #[error("a `kubeadm join` command has {flag} without a value")]
    NoValue { flag: String },
    #[error("a `kubeadm join` command has an unexpected argument {arg:?}")]
    Unexpected { arg: String },
    #[error("a `kubeadm join` command has a malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    #[error(
        "the worker and control-plane `kubeadm join` commands differ in {what}; the output is \
         not one kubeadm init's"
    )]
    Inconsistent { what: &'static str },
}

/// The `kubeadm join` commands in `stdout`, the output of `kubeadm init`: each starts with
/// `kubeadm join` (after indentation) and goes on over lines that end with `\`.
pub fn parse_kubeadm_init_output(stdout: &str) -> Result<JoinInfo, ParseError> {
    let mut control_plane = None;
    let mut worker = None;
    let mut lines = stdout.lines();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if !(t == "kubeadm join" || t.starts_with("kubeadm join ")) {
            continue;
        }
        let mut text = String::new();
        let mut cur = t.to_string();
        loop {
            let (body, more) = match cur.trim_end().strip_suffix('\\') {
                Some(b) => (b.to_string(), true),
                None => (cur.clone(), false),
            };
            text.push_str(&body);
            text.push(' ');
            if !more {
                break;
            }
            match lines.next() {
                Some(next) if !next.trim().is_empty() => cur = next.trim().to_string(),
                _ => break,
            }
        }
        let cmd = parse_join(&text)?;
        let (slot, which) = if cmd.control_plane {
            (&mut control_plane, "control-plane")
        } else {
            (&mut worker, "worker")
        };
        if slot.is_some() {
            return Err(ParseError::Duplicate { which });
        }
        *slot = Some(cmd);
    }
    let worker = worker.ok_or(ParseError::NoWorkerJoin)?;
    if let Some(cp) = &control_plane {
        if cp.endpoint != worker.endpoint {
            return Err(ParseError::Inconsistent { what: "endpoint" });
        }
        if cp.token != worker.token {
            return Err(ParseError::Inconsistent { what: "token" });
        }
        if cp.ca_cert_hashes != worker.ca_cert_hashes {
            return Err(ParseError::Inconsistent {
                what: "discovery-token-ca-cert-hash",
            });
        }
    }
    Ok(JoinInfo {
        control_plane,
        worker,
    })
}

fn parse_join(text: &str) -> Result<JoinCommand, ParseError> {
    let mut words = text.split_whitespace().skip(2); // kubeadm join
    let mut endpoint = None;
    let mut token = None;
    let mut hashes = Vec::new();
    let mut control_plane = false;
    let mut certificate_key = None;
    while let Some(w) = words.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match w.split_once('=') {
            Some((f, v)) if w.starts_with("--") => (f, Some(v.to_string())),
            _ => (w, None),
        };
        let mut value = |flag: &str| {
            inline
                .clone()
                .or_else(|| words.next().map(str::to_string))
                .ok_or_else(|| ParseError::NoValue {
                    flag: flag.to_string(),
                })
        };
        match flag {
            "--token" => token = Some(check_token(value(flag)?)?),
            "--discovery-token-ca-cert-hash" => hashes.push(check_hash(value(flag)?)?),
            "--certificate-key" => certificate_key = Some(check_cert_key(value(flag)?)?),
            "--control-plane" if inline.is_none() => control_plane = true,
            f if !f.starts_with('-') && endpoint.is_none() => {
                endpoint = Some(check_endpoint(f)?);
            }
            _ => {
                return Err(ParseError::Unexpected { arg: w.to_string() });
            }
        }
    }
    if certificate_key.is_some() && !control_plane {
        return Err(ParseError::Unexpected {
            arg: "--certificate-key (without --control-plane)".into(),
        });
    }
    Ok(JoinCommand {
        endpoint: endpoint.ok_or(ParseError::Missing {
            what: "API server endpoint",
        })?,
        token: token.ok_or(ParseError::Missing { what: "--token" })?,
        ca_cert_hashes: if hashes.is_empty() {
            return Err(ParseError::Missing {
                what: "--discovery-token-ca-cert-hash",
            });
        } else {
            hashes
        },
        control_plane,
        certificate_key,
    })
}

fn is_lower_alnum(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_token(t: String) -> Result<String, ParseError> {
    match t.split_once('.') {
        Some((id, secret))
            if id.len() == 6
                && secret.len() == 16
                && is_lower_alnum(id)
                && is_lower_alnum(secret) =>
        {
            Ok(t)
        }
        _ => Err(ParseError::Malformed {
            what: "--token",
            reason: "a bootstrap token is 6 and 16 characters of a-z0-9 joined by a dot",
        }),
    }
}

fn check_hash(h: String) -> Result<String, ParseError> {
    match h.strip_prefix("sha256:") {
        Some(hex) if is_hex(hex, 64) => Ok(h),
        _ => Err(ParseError::Malformed {
            what: "--discovery-token-ca-cert-hash",
            reason: "expected sha256: and 64 hex digits",
        }),
    }
}

fn check_cert_key(k: String) -> Result<String, ParseError> {
    if is_hex(&k, 64) {
        Ok(k)
    } else {
        Err(ParseError::Malformed {
            what: "--certificate-key",
            reason: "expected 64 hex digits",
        })
    }
}

fn check_endpoint(e: &str) -> Result<String, ParseError> {
    let bad = Err(ParseError::Malformed {
        what: "API server endpoint",
        reason: "expected HOST:PORT",
    });
    if e.parse::<SocketAddr>().is_ok() {
        return Ok(e.to_string());
    }
    let Some((host, port)) = e.rsplit_once(':') else {
        return bad;
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if host_ok && port.parse::<u16>().is_ok_and(|p| p > 0) {
        Ok(e.to_string())
    } else {
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_follows_kubeadm() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert_eq!(api_version_for(v("1.22.0")), Ok(V1BETA3));
        assert_eq!(api_version_for(v("1.30.9")), Ok(V1BETA3));
        assert_eq!(api_version_for(v("1.31.0")), Ok(V1BETA4));
        assert_eq!(api_version_for(v("1.33")), Ok(V1BETA4));
        let e = api_version_for(v("1.21.14")).unwrap_err();
        assert!(e.to_string().contains("1.22 or newer"), "{e}");
    }

    #[test]
    fn endpoint_forms() {
        assert!(check_endpoint("10.0.0.100:6443").is_ok());
        assert!(check_endpoint("[fd00::1]:6443").is_ok());
        assert!(check_endpoint("api.example.com:6443").is_ok());
        assert!(check_endpoint("10.0.0.100").is_err());
        assert!(check_endpoint("a;b:6443").is_err());
        assert!(check_endpoint("host:0").is_err());
    }

    #[test]
    fn join_command_debug_hides_secrets() {
        let c = JoinCommand {
            endpoint: "10.0.0.100:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![],
            control_plane: true,
            certificate_key: Some("k".into()),
        };
        let d = format!("{c:?}");
        assert!(d.contains("abcdef.<hidden>"), "{d}");
        assert!(!d.contains("0123456789abcdef"), "{d}");
    }
}
