//! The texts the seed's runbook puts on its hosts, rendered for a lab: pure functions of the
//! lab's names and addresses, so that each is pinned by a test against the seed.
//!
//! Deviations from the seed as printed, each the smallest an operator makes for the runbook to
//! work at all (the module docs of [`super`] say why): the short host name as an alias in
//! `/etc/hosts` and in the peer URLs of `--initial-cluster`; the short names in kubeadm's etcd
//! endpoints; `LimitNOFILE=400000` on every member (the seed's third unit says 4000, a typo);
//! the placeholders of `keepalived.conf` and `check_apiserver.sh` filled in.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::SeedHost;

/// The domain of the seed's `/etc/hosts` names (`etcd1.ledivan.local`).
pub const DOMAIN: &str = "ledivan.local";
/// The seed's `--initial-cluster-token`.
pub const CLUSTER_TOKEN: &str = "my-etcd-token";
/// Where the seed keeps its PKI, on etcd hosts and masters alike.
pub const PKI_DIR: &str = "/etc/kubernetes/pki/etcd";
/// The Kubernetes API server's port, as the seed's check script and kubeadm config use it.
pub const API_PORT: u16 = 6443;
/// The seed's `auth_pass` (keepalived reads only its first 8 characters).
pub const VRRP_PASSWORD: &str = "velotiotechnologies";

/// `ca-config.json`, exactly as the seed writes it.
pub const CA_CONFIG_JSON: &str = r#"{
    "signing": {
        "default": {
            "expiry": "43800h"
        },
        "profiles": {
            "server": {
                "expiry": "43800h",
                "usages": [
                    "signing",
                    "key encipherment",
                    "server auth",
                    "client auth"
                ]
            },
            "client": {
                "expiry": "43800h",
                "usages": [
                    "signing",
                    "key encipherment",
                    "client auth"
                ]
            },
            "peer": {
                "expiry": "43800h",
                "usages": [
                    "signing",
                    "key encipherment",
                    "server auth",
                    "client auth"
                ]
            }
        }
    }
}
"#;

/// `ca-csr.json`, exactly as the seed writes it.
pub const CA_CSR_JSON: &str = r#"{
    "CN": "etcd",
    "key": {
        "algo": "rsa",
        "size": 2048
    }
}
"#;

/// `client.json`, exactly as the seed writes it.
pub const CLIENT_JSON: &str = r#"{
    "CN": "client",
    "key": {
        "algo": "ecdsa",
        "size": 256
    }
}
"#;

/// What `cfssl print-defaults csr` prints (cfssl 1.4.1, `cli/printdefault/defaults.go`).
pub const PRINT_DEFAULTS_CSR: &str = r#"{
    "CN": "example.net",
    "hosts": [
        "example.net",
        "www.example.net"
    ],
    "key": {
        "algo": "ecdsa",
        "size": 256
    },
    "names": [
        {
            "C": "US",
            "ST": "CA",
            "L": "San Francisco"
        }
    ]
}
"#;

/// `/etc/default/keepalived` as Debian's keepalived package ships it.
pub const KEEPALIVED_DEFAULT: &str = "# Options to pass to keepalived\n\
\n\
# DAEMON_ARGS are appended to the keepalived command-line\n\
DAEMON_ARGS=\"\"\n";

/// `keepalived.service` as Debian's keepalived package (2.2.7, bookworm) ships it: keepalived
/// stays in the foreground (`--dont-fork`), so the agent's supervisor runs it as systemd does.
pub const KEEPALIVED_UNIT: &str = "[Unit]\n\
Description=Keepalive Daemon (LVS and VRRP)\n\
After=network-online.target\n\
Wants=network-online.target\n\
Documentation=man:keepalived(8)\n\
Documentation=man:keepalived.conf(5)\n\
Documentation=man:genhash(1)\n\
Documentation=https://keepalived.org\n\
ConditionFileNotEmpty=/etc/keepalived/keepalived.conf\n\
\n\
[Service]\n\
Type=notify\n\
EnvironmentFile=-/etc/default/keepalived\n\
ExecStart=/usr/sbin/keepalived --dont-fork $DAEMON_ARGS\n\
ExecReload=/bin/kill -HUP $MAINPID\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n";

/// `sed 's/FROM/TO/'`: the first `from` of each line becomes `to`.
fn sed_first(text: &str, from: &str, to: &str) -> String {
    sed_lines(text, from, to, |_| true)
}

/// `sed '0,/MARK/{s/FROM/TO/}'`: as [`sed_first`], on the lines up to and including the first
/// one containing `mark`.
fn sed_first_until(text: &str, mark: &str, from: &str, to: &str) -> String {
    let mut active = true;
    sed_lines(text, from, to, |line| {
        let now = active;
        if line.contains(mark) {
            active = false;
        }
        now
    })
}

fn sed_lines(text: &str, from: &str, to: &str, mut on: impl FnMut(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if on(line) {
            out.push_str(&line.replacen(from, to, 1));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// `config.json` on an etcd host: `cfssl print-defaults csr` with the seed's three seds.
pub fn config_json(peer_name: &str, private_ip: Ipv4Addr) -> String {
    let ip = private_ip.to_string();
    let text = sed_first(PRINT_DEFAULTS_CSR, "www.example.net", &ip);
    let text = sed_first(&text, "example.net", peer_name);
    sed_first_until(&text, "CN", "example.net", peer_name)
}

/// `/etc/hosts` on every lab host: localhost, and each etcd host as the seed names it, with
/// the short name as an alias (the name its certificates carry).
pub fn hosts_file(etcd: &[SeedHost]) -> String {
    let mut out = String::from("127.0.0.1 localhost\n");
    for h in etcd {
        let _ = writeln!(out, "{} {}.{DOMAIN} {}", h.address, h.name, h.name);
    }
    out
}

/// `/etc/etcd.env`: what the seed's two `echo >>` lines leave.
pub fn etcd_env(peer_name: &str, private_ip: Ipv4Addr) -> String {
    format!("PEER_NAME={peer_name}\nPRIVATE_IP={private_ip}\n")
}

/// The member name of the `index`-th etcd host (0-based): `master-0`, `master-1`, ...
pub fn member_name(index: usize) -> String {
    format!("master-{index}")
}

/// `--initial-cluster`: every member with its peer URL on the short host name.
pub fn initial_cluster(etcd: &[SeedHost]) -> String {
    etcd.iter()
        .enumerate()
        .map(|(i, h)| format!("{}=https://{}:2380", member_name(i), h.name))
        .collect::<Vec<_>>()
        .join(",")
}

/// `/etc/systemd/system/etcd.service` of the `index`-th etcd host, as the seed writes it
/// (`binary` is `/bin/etcd` in the seed).
pub fn etcd_unit(index: usize, etcd: &[SeedHost], binary: &str) -> String {
    let ip = etcd[index].address;
    let pki = PKI_DIR;
    format!(
        "[Unit]\n\
         Description=etcd\n\
         Documentation=httpss://github.com/coreos/etcd\n\
         Conflicts=etcd.service\n\
         Conflicts=etcd2.service\n\
         \n\
         [Service]\n\
         EnvironmentFile=/etc/etcd.env\n\
         Type=notify\n\
         Restart=always\n\
         RestartSec=5s\n\
         LimitNOFILE=400000\n\
         TimeoutStartSec=0\n\
         \n\
         ExecStart={binary} --name {name}  --data-dir /var/lib/etcd \
         --listen-client-urls https://{ip}:2379,https://127.0.0.1:2379 \
         --advertise-client-urls https://{ip}:2379 \
         --listen-peer-urls https://{ip}:2380 \
         --initial-advertise-peer-urls https://{ip}:2380 \
         --cert-file={pki}/server.pem --key-file={pki}/server-key.pem \
         --trusted-ca-file={pki}/ca.pem \
         --peer-cert-file={pki}/peer.pem --peer-key-file={pki}/peer-key.pem \
         --peer-trusted-ca-file={pki}/ca.pem \
         --initial-cluster {cluster} \
         --initial-cluster-token {CLUSTER_TOKEN} --initial-cluster-state new \
         --client-cert-auth=false --peer-client-cert-auth=false\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = member_name(index),
        cluster = initial_cluster(etcd),
    )
}

/// `/etc/keepalived/keepalived.conf`: the seed's template with `<state>`, `<interface>`,
/// `<priority>` and `<virtual ip>` filled in (MASTER 101 on the first master, BACKUP 100 on
/// the others).
pub fn keepalived_conf(first: bool, interface: &str, vip: Ipv4Addr) -> String {
    let (state, priority) = if first {
        ("MASTER", 101)
    } else {
        ("BACKUP", 100)
    };
    format!(
        "global_defs {{\n\
         \x20 router_id LVS_DEVEL\n\
         }}\n\
         \n\
         vrrp_script check_apiserver {{\n\
         \x20 script \"/etc/keepalived/check_apiserver.sh\"\n\
         \x20 interval 3\n\
         \x20 weight -2\n\
         \x20 fall 10\n\
         \x20 rise 2\n\
         }}\n\
         \n\
         vrrp_instance VI_1 {{\n\
         \x20   state {state}\n\
         \x20   interface {interface}\n\
         \x20   virtual_router_id 51\n\
         \x20   priority {priority}\n\
         \x20   authentication {{\n\
         \x20       auth_type PASS\n\
         \x20       auth_pass {VRRP_PASSWORD}\n\
         \x20   }}\n\
         \x20   virtual_ipaddress {{\n\
         \x20       {vip}\n\
         \x20   }}\n\
         \x20   track_script {{\n\
         \x20       check_apiserver\n\
         \x20   }}\n\
         }}\n"
    )
}

/// `/etc/keepalived/check_apiserver.sh`: the seed's script with `<VIRTUAL-IP>` filled in.
pub fn check_apiserver_sh(vip: Ipv4Addr) -> String {
    format!(
        "#!/bin/sh\n\
         \n\
         errorExit() {{\n\
         \x20   echo \"*** $*\" 1>&2\n\
         \x20   exit 1\n\
         }}\n\
         \n\
         curl --silent --max-time 2 --insecure https://localhost:{API_PORT}/ -o /dev/null || \
         errorExit \"Error GET https://localhost:{API_PORT}/\"\n\
         if ip addr | grep -q {vip}; then\n\
         \x20   curl --silent --max-time 2 --insecure https://{vip}:{API_PORT}/ -o /dev/null || \
         errorExit \"Error GET https://{vip}:{API_PORT}/\"\n\
         fi\n"
    )
}

/// The etcd endpoints the masters use: `https://etcdN:2379`, short names (the seed's
/// `etcdN.ledivan.local` fails TLS verification: the certificates name only `etcdN`).
pub fn etcd_endpoints(etcd: &[SeedHost]) -> Vec<String> {
    etcd.iter()
        .map(|h| format!("https://{}:2379", h.name))
        .collect()
}

/// `kubeadm-config.yaml` as the seed writes it, with `endpoint` (the VIP, or the single
/// master's address) as the control plane endpoint and the etcd hosts' short names.
pub fn kubeadm_config(endpoint: Ipv4Addr, etcd: &[SeedHost]) -> String {
    let mut endpoints = String::new();
    for (i, e) in etcd_endpoints(etcd).iter().enumerate() {
        let _ = writeln!(endpoints, "      - {e} # change ETCD_{i}_IP appropriately");
    }
    format!(
        "---\n\
         apiVersion: kubeadm.k8s.io/v1beta3\n\
         kind: ClusterConfiguration\n\
         kubernetesVersion: stable\n\
         controlPlaneEndpoint: \"{endpoint}:{API_PORT}\"\n\
         apiServerCertSANs:\n\
         - {endpoint}\n\
         etcd:\n\
         \x20 external:\n\
         \x20   endpoints:\n\
         {endpoints}\
         \x20   caFile: {PKI_DIR}/ca.pem\n\
         \x20   certFile: {PKI_DIR}/client.pem\n\
         \x20   keyFile: {PKI_DIR}/client-key.pem\n\
         networking:\n\
         \x20 podSubnet: 10.30.0.0/16\n\
         ---\n\
         kind: KubeletConfiguration\n\
         apiVersion: kubelet.config.k8s.io/v1beta1\n\
         cgroupDriver: systemd\n"
    )
}

/// The Kubernetes release the seed's cluster ran (`kubectl get nodes` in the seed: v1.25.4).
pub const KUBERNETES_VERSION: &str = "v1.25.4";

/// `/etc/kubernetes/manifests/kube-apiserver.yaml` of a master at `advertise`, as `kubeadm
/// init` (v1.25) writes it for the seed's config: kubeadm's `getAPIServerCommand` arguments,
/// sorted, with the external etcd's CA, client certificate and key; the static pod's probes,
/// host-path volumes (`/etc/kubernetes/pki/etcd` is inside the `k8s-certs` volume, so kubeadm
/// adds none for etcd) and fields in the order kubeadm's YAML serializer writes them.
pub fn kube_apiserver_manifest(advertise: Ipv4Addr, etcd: &[SeedHost]) -> String {
    let servers = etcd_endpoints(etcd).join(",");
    let k = "/etc/kubernetes/pki";
    let probe = |path: &str| {
        format!(
            "      httpGet:\n\
             \x20       host: {advertise}\n\
             \x20       path: {path}\n\
             \x20       port: {API_PORT}\n\
             \x20       scheme: HTTPS\n"
        )
    };
    let volumes = [
        ("/etc/ssl/certs", "ca-certs"),
        ("/etc/ca-certificates", "etc-ca-certificates"),
        (k, "k8s-certs"),
        (
            "/usr/local/share/ca-certificates",
            "usr-local-share-ca-certificates",
        ),
        ("/usr/share/ca-certificates", "usr-share-ca-certificates"),
    ];
    let mut mounts = String::new();
    let mut host_paths = String::new();
    for (path, name) in volumes {
        let _ = write!(
            mounts,
            "    - mountPath: {path}\n      name: {name}\n      readOnly: true\n"
        );
        let _ = write!(
            host_paths,
            "  - hostPath:\n      path: {path}\n      type: DirectoryOrCreate\n    name: {name}\n"
        );
    }
    format!(
        "# Written by `haop lab up --from-seed` as `kubeadm init` ({KUBERNETES_VERSION}) writes it for the seed's\n\
         # kubeadm-config.yaml. Kubernetes does not run in the lab (no kubelet reads this file).\n\
         apiVersion: v1\n\
         kind: Pod\n\
         metadata:\n\
         \x20 annotations:\n\
         \x20   kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: {advertise}:{API_PORT}\n\
         \x20 creationTimestamp: null\n\
         \x20 labels:\n\
         \x20   component: kube-apiserver\n\
         \x20   tier: control-plane\n\
         \x20 name: kube-apiserver\n\
         \x20 namespace: kube-system\n\
         spec:\n\
         \x20 containers:\n\
         \x20 - command:\n\
         \x20   - kube-apiserver\n\
         \x20   - --advertise-address={advertise}\n\
         \x20   - --allow-privileged=true\n\
         \x20   - --authorization-mode=Node,RBAC\n\
         \x20   - --client-ca-file={k}/ca.crt\n\
         \x20   - --enable-admission-plugins=NodeRestriction\n\
         \x20   - --enable-bootstrap-token-auth=true\n\
         \x20   - --etcd-cafile={PKI_DIR}/ca.pem\n\
         \x20   - --etcd-certfile={PKI_DIR}/client.pem\n\
         \x20   - --etcd-keyfile={PKI_DIR}/client-key.pem\n\
         \x20   - --etcd-servers={servers}\n\
         \x20   - --kubelet-client-certificate={k}/apiserver-kubelet-client.crt\n\
         \x20   - --kubelet-client-key={k}/apiserver-kubelet-client.key\n\
         \x20   - --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname\n\
         \x20   - --proxy-client-cert-file={k}/front-proxy-client.crt\n\
         \x20   - --proxy-client-key-file={k}/front-proxy-client.key\n\
         \x20   - --requestheader-allowed-names=front-proxy-client\n\
         \x20   - --requestheader-client-ca-file={k}/front-proxy-ca.crt\n\
         \x20   - --requestheader-extra-headers-prefix=X-Remote-Extra-\n\
         \x20   - --requestheader-group-headers=X-Remote-Group\n\
         \x20   - --requestheader-username-headers=X-Remote-User\n\
         \x20   - --secure-port={API_PORT}\n\
         \x20   - --service-account-issuer=https://kubernetes.default.svc.cluster.local\n\
         \x20   - --service-account-key-file={k}/sa.pub\n\
         \x20   - --service-account-signing-key-file={k}/sa.key\n\
         \x20   - --service-cluster-ip-range=10.96.0.0/12\n\
         \x20   - --tls-cert-file={k}/apiserver.crt\n\
         \x20   - --tls-private-key-file={k}/apiserver.key\n\
         \x20   image: registry.k8s.io/kube-apiserver:{KUBERNETES_VERSION}\n\
         \x20   imagePullPolicy: IfNotPresent\n\
         \x20   livenessProbe:\n\
         \x20     failureThreshold: 8\n\
         {liveness}\
         \x20     initialDelaySeconds: 10\n\
         \x20     periodSeconds: 10\n\
         \x20     timeoutSeconds: 15\n\
         \x20   name: kube-apiserver\n\
         \x20   readinessProbe:\n\
         \x20     failureThreshold: 3\n\
         {readiness}\
         \x20     periodSeconds: 1\n\
         \x20     timeoutSeconds: 15\n\
         \x20   resources:\n\
         \x20     requests:\n\
         \x20       cpu: 250m\n\
         \x20   startupProbe:\n\
         \x20     failureThreshold: 24\n\
         {startup}\
         \x20     initialDelaySeconds: 10\n\
         \x20     periodSeconds: 10\n\
         \x20     timeoutSeconds: 15\n\
         \x20   volumeMounts:\n\
         {mounts}\
         \x20 hostNetwork: true\n\
         \x20 priority: 2000001000\n\
         \x20 priorityClassName: system-node-critical\n\
         \x20 securityContext:\n\
         \x20   seccompProfile:\n\
         \x20     type: RuntimeDefault\n\
         \x20 volumes:\n\
         {host_paths}\
         status: {{}}\n",
        liveness = probe("/livez"),
        readiness = probe("/readyz"),
        startup = probe("/livez"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd3() -> Vec<SeedHost> {
        (1..=3)
            .map(|i| SeedHost {
                name: format!("etcd{i}"),
                address: Ipv4Addr::new(10, 77, 3, 10 + i),
            })
            .collect()
    }

    #[test]
    fn config_json_is_print_defaults_with_the_seeds_seds() {
        let got = config_json("etcd2", Ipv4Addr::new(10, 77, 3, 12));
        assert_eq!(
            got,
            r#"{
    "CN": "etcd2",
    "hosts": [
        "etcd2",
        "10.77.3.12"
    ],
    "key": {
        "algo": "ecdsa",
        "size": 256
    },
    "names": [
        {
            "C": "US",
            "ST": "CA",
            "L": "San Francisco"
        }
    ]
}
"#
        );
        // The third sed touches only the lines up to the first CN.
        assert_eq!(
            sed_first_until("a x\nCN x\nx\n", "CN", "x", "y"),
            "a y\nCN y\nx\n"
        );
        // The JSON files are valid JSON (cfssl reads them).
        for text in [CA_CONFIG_JSON, CA_CSR_JSON, CLIENT_JSON, got.as_str()] {
            serde_json::from_str::<serde_json::Value>(text).unwrap();
        }
    }

    #[test]
    fn hosts_and_env() {
        assert_eq!(
            hosts_file(&etcd3()),
            "127.0.0.1 localhost\n\
             10.77.3.11 etcd1.ledivan.local etcd1\n\
             10.77.3.12 etcd2.ledivan.local etcd2\n\
             10.77.3.13 etcd3.ledivan.local etcd3\n"
        );
        assert_eq!(
            etcd_env("etcd1", Ipv4Addr::new(10, 77, 3, 11)),
            "PEER_NAME=etcd1\nPRIVATE_IP=10.77.3.11\n"
        );
    }

    #[test]
    fn the_etcd_unit_is_the_seeds() {
        let unit = etcd_unit(1, &etcd3(), "/bin/etcd");
        let exec = "ExecStart=/bin/etcd --name master-1  --data-dir /var/lib/etcd \
            --listen-client-urls https://10.77.3.12:2379,https://127.0.0.1:2379 \
            --advertise-client-urls https://10.77.3.12:2379 \
            --listen-peer-urls https://10.77.3.12:2380 \
            --initial-advertise-peer-urls https://10.77.3.12:2380 \
            --cert-file=/etc/kubernetes/pki/etcd/server.pem \
            --key-file=/etc/kubernetes/pki/etcd/server-key.pem \
            --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.pem \
            --peer-cert-file=/etc/kubernetes/pki/etcd/peer.pem \
            --peer-key-file=/etc/kubernetes/pki/etcd/peer-key.pem \
            --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.pem \
            --initial-cluster master-0=https://etcd1:2380,master-1=https://etcd2:2380,master-2=https://etcd3:2380 \
            --initial-cluster-token my-etcd-token --initial-cluster-state new \
            --client-cert-auth=false --peer-client-cert-auth=false";
        let expected = format!(
            "[Unit]\nDescription=etcd\nDocumentation=httpss://github.com/coreos/etcd\n\
             Conflicts=etcd.service\nConflicts=etcd2.service\n\n[Service]\n\
             EnvironmentFile=/etc/etcd.env\nType=notify\nRestart=always\nRestartSec=5s\n\
             LimitNOFILE=400000\nTimeoutStartSec=0\n\n{exec}\n\n[Install]\n\
             WantedBy=multi-user.target\n"
        );
        assert_eq!(unit, expected);
        let other = etcd_unit(0, &etcd3(), "/usr/local/bin/etcd");
        assert!(other.contains("ExecStart=/usr/local/bin/etcd --name master-0  --data-dir"));
    }

    #[test]
    fn keepalived_is_the_seeds_template_filled_in() {
        let vip = Ipv4Addr::new(10, 77, 3, 10);
        let first = keepalived_conf(true, "eth0", vip);
        assert_eq!(
            first,
            "global_defs {\n  router_id LVS_DEVEL\n}\n\nvrrp_script check_apiserver {\n  \
             script \"/etc/keepalived/check_apiserver.sh\"\n  interval 3\n  weight -2\n  \
             fall 10\n  rise 2\n}\n\nvrrp_instance VI_1 {\n    state MASTER\n    \
             interface eth0\n    virtual_router_id 51\n    priority 101\n    \
             authentication {\n        auth_type PASS\n        auth_pass velotiotechnologies\n    \
             }\n    virtual_ipaddress {\n        10.77.3.10\n    }\n    track_script {\n        \
             check_apiserver\n    }\n}\n"
        );
        let other = keepalived_conf(false, "eth0", vip);
        assert!(other.contains("    state BACKUP\n") && other.contains("    priority 100\n"));
        let script = check_apiserver_sh(vip);
        assert!(script.starts_with("#!/bin/sh\n\nerrorExit() {\n"));
        assert!(script.contains(
            "curl --silent --max-time 2 --insecure https://localhost:6443/ -o /dev/null || \
             errorExit \"Error GET https://localhost:6443/\"\n"
        ));
        assert!(script.contains("if ip addr | grep -q 10.77.3.10; then\n"));
        assert!(script.contains("https://10.77.3.10:6443/ -o /dev/null"));
        assert!(!script.contains('<'));
    }

    #[test]
    fn kubeadm_files_name_the_seeds_client_files() {
        let cfg = kubeadm_config(Ipv4Addr::new(10, 77, 3, 10), &etcd3());
        let docs: Vec<serde_yaml_ng::Value> = cfg
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml_ng::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        let c = &docs[0];
        assert_eq!(c["kind"].as_str(), Some("ClusterConfiguration"));
        assert_eq!(c["controlPlaneEndpoint"].as_str(), Some("10.77.3.10:6443"));
        let ext = &c["etcd"]["external"];
        let eps: Vec<&str> = ext["endpoints"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(
            eps,
            [
                "https://etcd1:2379",
                "https://etcd2:2379",
                "https://etcd3:2379"
            ]
        );
        assert_eq!(
            ext["caFile"].as_str(),
            Some("/etc/kubernetes/pki/etcd/ca.pem")
        );
        assert_eq!(
            ext["certFile"].as_str(),
            Some("/etc/kubernetes/pki/etcd/client.pem")
        );
        assert_eq!(
            ext["keyFile"].as_str(),
            Some("/etc/kubernetes/pki/etcd/client-key.pem")
        );
        assert_eq!(c["networking"]["podSubnet"].as_str(), Some("10.30.0.0/16"));
        assert_eq!(docs[1]["cgroupDriver"].as_str(), Some("systemd"));

        let m = kube_apiserver_manifest(Ipv4Addr::new(10, 77, 3, 41), &etcd3());
        let pod: serde_yaml_ng::Value = serde_yaml_ng::from_str(&m).unwrap();
        assert_eq!(pod["kind"].as_str(), Some("Pod"));
        let c = &pod["spec"]["containers"][0];
        let args: Vec<&str> = c["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "kube-apiserver");
        let mut sorted = args[1..].to_vec();
        sorted.sort();
        assert_eq!(sorted, args[1..], "kubeadm sorts its arguments");
        for want in [
            "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.pem",
            "--etcd-certfile=/etc/kubernetes/pki/etcd/client.pem",
            "--etcd-keyfile=/etc/kubernetes/pki/etcd/client-key.pem",
            "--etcd-servers=https://etcd1:2379,https://etcd2:2379,https://etcd3:2379",
            "--advertise-address=10.77.3.41",
        ] {
            assert!(args.contains(&want), "{want} missing from {args:?}");
        }
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["host"].as_str(),
            Some("10.77.3.41")
        );
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        let vols = pod["spec"]["volumes"].as_sequence().unwrap();
        assert_eq!(mounts.len(), vols.len());
        for (mnt, vol) in mounts.iter().zip(vols) {
            assert_eq!(mnt["name"], vol["name"]);
            assert_eq!(mnt["mountPath"], vol["hostPath"]["path"]);
        }
        // haop's endpoint sync finds and rewrites the --etcd-servers line of this manifest.
        let eps = ["https://10.77.3.11:2379".to_string()];
        let synced = crate::etcd::kube_endpoints::set_etcd_servers(&m, &eps).unwrap();
        assert!(synced.contains("    - --etcd-servers=https://10.77.3.11:2379\n"));
    }

    #[test]
    fn keepalived_unit_runs_under_the_supervisor() {
        assert!(
            KEEPALIVED_UNIT.contains("ExecStart=/usr/sbin/keepalived --dont-fork $DAEMON_ARGS\n")
        );
        assert!(KEEPALIVED_DEFAULT.contains("DAEMON_ARGS=\"\"\n"));
    }
}
