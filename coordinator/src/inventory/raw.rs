//! The file format: what serde reads and writes, before validation.
//!
//! Why a separate, loose layer: serde stops at the first error and explains an enum mismatch
//! poorly. Here every value that can be wrong in a way worth explaining is a string or an
//! integer (`roles: [etcdd]`, `router_id: 300`, `address: 10.0.0.300`), and every field that
//! has a default is optional, so that the file always deserializes when its structure is right,
//! and [`super::validate`] can report every problem at once with the field and a hint. Only
//! structural errors (YAML syntax, an unknown key, a list where a map belongs) stop at serde.

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an inventory: a map with cluster, hosts and optional etcd, vip, kubernetes and pki"
)]
pub(crate) struct RawInventory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_even_etcd: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_single_etcd: bool,
    #[serde(default, deserialize_with = "null_is_default")]
    pub hosts: Vec<RawHost>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub etcd: RawEtcd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<RawVip>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub kubernetes: RawKubernetes,
    #[serde(default, deserialize_with = "null_is_default")]
    pub pki: RawPki,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a host: a map with name, address, roles and optional agent and fqdn"
)]
pub(crate) struct RawHost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "etcd settings: a map with binary, data_dir, client_port, peer_port, extra_flags, version, token"
)]
pub(crate) struct RawEtcd {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<RawBinary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<i64>,
    #[serde(
        default,
        deserialize_with = "null_is_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extra_flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RawRetention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_stall: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<RawSnapshots>,
}

/// `etcd.snapshots`: the schedule, the copies on hosts, and when status calls them stale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map of interval, copies, stale_after, reuse_for_repairs"
)]
pub(crate) struct RawSnapshots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_for_repairs: Option<String>,
}

/// `etcd.retention`: what the state dir and the hosts keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map of snapshots, snapshot_max_age, wiped_data_dirs, wiped_grace"
)]
pub(crate) struct RawRetention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiped_data_dirs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiped_grace: Option<String>,
}

/// `path: /usr/bin/etcd` or `upload: {file, sha256}`: exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an etcd binary source: a map with `path` or `upload`"
)]
pub(crate) struct RawBinary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<RawUpload>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an upload: a map with file and sha256"
)]
pub(crate) struct RawUpload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a VIP: a map with address, interface and router_id"
)]
pub(crate) struct RawVip {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "Kubernetes settings: a map with enabled, version, pod_subnet, service_subnet, cni_manifest, api_port"
)]
pub(crate) struct RawKubernetes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_manifest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_port: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "PKI settings: a map with key_algorithm and lifetime"
)]
pub(crate) struct RawPki {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
}

/// A key written with nothing after it (`etcd:` with every line below commented out) means
/// the defaults, as if it were absent.
fn null_is_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}
