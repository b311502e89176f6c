//! Least privilege: what each role may do, per RPC and per path, decided here and nowhere else.
//!
//! Why: a `haop:reader` certificate goes to monitoring and to whoever runs `haop status`; it
//! must get what `haop status` and `haop certs list` need (facts, unit states, certificates,
//! whether a file is there) and never content that can hold a secret. A `haop:admin`
//! certificate changes hosts, yet even it has no use for etcd's raw data (snapshots go through
//! etcd's API), a private key, or the agent's own bootstrap token and key, so it does not get
//! them either: a stolen or misused certificate then exposes less. [`crate::secrets`] stays as a
//! second line behind this table: it refuses a PEM private key wherever it hides; this table
//! refuses by what a path is, before anything is read, so secrets that are not PEM keys (a VRRP
//! password, a bootstrap token, etcd's data) are refused too.
//!
//! The two tables:
//! * [`callers`]: which roles may call each RPC at all;
//! * [`rights`]: for each [`PathClass`], which [`Use`]s each role may make of a path there.
//!
//! [`Guarded`] says, for every request message, its RPC and each path it names with the use the
//! RPC makes of it, so [`Policy::admit`] judges a request whole, before its handler looks at it.
//! A path's class comes from the path asked for and, inside the managed roots, from where its
//! symlinks lead; every class found must allow the use. Stat's sha256 is content: it is given
//! only to a caller who may read the content (a digest of a short secret, such as an
//! eight-character VRRP password in an otherwise known file, can be searched for offline).
//!
//! Lifecycle: the service builds one [`Policy`] at start. The declared data dirs are read on each
//! check, so a directory declared with EnsureUnit is etcd's data from the next request on.
//! Refusals are PERMISSION_DENIED (through [`crate::error`]), logged with the caller.

use haop_proto::v1 as pb;
use tonic::{Request, Streaming};
use tracing::{debug, warn};

use crate::auth::{self, AuthError, Caller, Role, ROLE_ADMIN};
use crate::datadirs::DeclaredDirs;
use crate::error::AgentError;
use crate::paths::{HostFs, HostPath};
use crate::revocation::Revocations;
use crate::trust::TrustBundle;

/// Every RPC of `haop.agent.v1.Agent`. (The `Enrollment` service is served only before the
/// agent has an identity, to callers without certificates; it reveals and accepts no secret.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    GetFacts,
    WriteFile,
    ReadFile,
    RemoveFile,
    Stat,
    UploadFile,
    EnsureUnit,
    UnitAction,
    UnitStatus,
    LoadModules,
    ApplySysctl,
    DisableSwap,
    WipeDataDir,
    ListWipedDataDirs,
    PruneWipedDataDirs,
    Exec,
    CreateCsr,
    InstallCertificate,
    WhoAmI,
    InstallRevocations,
    DownloadFile,
    InstallTrustBundle,
    CreateServingCsr,
    InstallServingCertificate,
}

impl Rpc {
    pub const ALL: [Rpc; 24] = [
        Rpc::GetFacts,
        Rpc::WriteFile,
        Rpc::ReadFile,
        Rpc::RemoveFile,
        Rpc::Stat,
        Rpc::UploadFile,
        Rpc::EnsureUnit,
        Rpc::UnitAction,
        Rpc::UnitStatus,
        Rpc::LoadModules,
        Rpc::ApplySysctl,
        Rpc::DisableSwap,
        Rpc::WipeDataDir,
        Rpc::ListWipedDataDirs,
        Rpc::PruneWipedDataDirs,
        Rpc::Exec,
        Rpc::CreateCsr,
        Rpc::InstallCertificate,
        Rpc::WhoAmI,
        Rpc::InstallRevocations,
        Rpc::DownloadFile,
        Rpc::InstallTrustBundle,
        Rpc::CreateServingCsr,
        Rpc::InstallServingCertificate,
    ];

    /// The method's name, as in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::GetFacts => "GetFacts",
            Rpc::WriteFile => "WriteFile",
            Rpc::ReadFile => "ReadFile",
            Rpc::RemoveFile => "RemoveFile",
            Rpc::Stat => "Stat",
            Rpc::UploadFile => "UploadFile",
            Rpc::EnsureUnit => "EnsureUnit",
            Rpc::UnitAction => "UnitAction",
            Rpc::UnitStatus => "UnitStatus",
            Rpc::LoadModules => "LoadModules",
            Rpc::ApplySysctl => "ApplySysctl",
            Rpc::DisableSwap => "DisableSwap",
            Rpc::WipeDataDir => "WipeDataDir",
            Rpc::ListWipedDataDirs => "ListWipedDataDirs",
            Rpc::PruneWipedDataDirs => "PruneWipedDataDirs",
            Rpc::Exec => "Exec",
            Rpc::CreateCsr => "CreateCsr",
            Rpc::InstallCertificate => "InstallCertificate",
            Rpc::WhoAmI => "WhoAmI",
            Rpc::InstallRevocations => "InstallRevocations",
            Rpc::DownloadFile => "DownloadFile",
            Rpc::InstallTrustBundle => "InstallTrustBundle",
            Rpc::CreateServingCsr => "CreateServingCsr",
            Rpc::InstallServingCertificate => "InstallServingCertificate",
        }
    }
}

const BOTH: &[Role] = &[Role::Admin, Role::Reader];
const ADMIN: &[Role] = &[Role::Admin];

/// The first table: who may call each RPC at all. Paths are judged by [`rights`] on top.
pub fn callers(rpc: Rpc) -> &'static [Role] {
    match rpc {
        // What `haop status` and `haop certs list` ask; nothing in them is a secret.
        Rpc::GetFacts => BOTH,
        Rpc::UnitStatus => BOTH,
        Rpc::WhoAmI => BOTH,
        // Names and sizes of moved-aside data dirs (status accounts for their space).
        Rpc::ListWipedDataDirs => BOTH,
        // Per path: see `rights`.
        Rpc::ReadFile => BOTH,
        Rpc::Stat => BOTH,
        // Everything else changes the host.
        Rpc::WriteFile => ADMIN,
        Rpc::RemoveFile => ADMIN,
        Rpc::UploadFile => ADMIN,
        Rpc::EnsureUnit => ADMIN,
        Rpc::UnitAction => ADMIN,
        Rpc::LoadModules => ADMIN,
        Rpc::ApplySysctl => ADMIN,
        Rpc::DisableSwap => ADMIN,
        Rpc::WipeDataDir => ADMIN,
        // Only the CA's holder revokes; the agent also checks the CA's signature on the list.
        Rpc::InstallRevocations => ADMIN,
        Rpc::PruneWipedDataDirs => ADMIN,
        Rpc::Exec => ADMIN,
        Rpc::CreateCsr => ADMIN,
        Rpc::InstallCertificate => ADMIN,
        // Streams a snapshot copy back for a restore: per path (only encrypted copies).
        Rpc::DownloadFile => ADMIN,
        // The agent CA's rotation: what the agent trusts and its own serving certificate. The
        // agent's own files, at paths it chooses (no request names one); the agent also checks
        // that a new CA is endorsed by a trusted CA's key (crate::trust).
        Rpc::InstallTrustBundle => ADMIN,
        Rpc::CreateServingCsr => ADMIN,
        Rpc::InstallServingCertificate => ADMIN,
    }
}

/// What an RPC does with a path it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// ReadFile: the whole content. Also Stat's sha256.
    Content,
    /// ReadFile with `certificates_only`: the certificate blocks alone.
    Certificates,
    /// Stat without the digest: exists, kind, size, mode, owner, mtime.
    Metadata,
    /// WriteFile, UploadFile, EnsureUnit's unit file, InstallCertificate's certificate and CA.
    Write,
    /// RemoveFile. Apart from Write because a private key may be removed (the CA key a
    /// hand-built cluster copied to every host, which adoption takes away) but never replaced:
    /// a key written from outside would be a key someone else knows.
    Remove,
    /// CreateCsr's key, and the key InstallCertificate matches the certificate against: used on
    /// the host, never sent.
    Key,
    /// EnsureUnit's data_dirs and WipeDataDir's path: a directory declared, then moved aside.
    DataDir,
    /// DownloadFile: the whole content, streamed back, of a file that the agent also checks
    /// is haop's encrypted snapshot format.
    Download,
}

impl Use {
    fn verb(self) -> &'static str {
        match self {
            Use::Content => "read",
            Use::Certificates => "read the certificates of",
            Use::Metadata => "stat",
            Use::Write => "write",
            Use::Remove => "remove",
            Use::Key => "use as a key",
            Use::DataDir => "declare or wipe as a data dir",
            Use::Download => "stream back",
        }
    }
}

/// What a path holds, as far as who may see or change it. [`Policy::class`] decides, first
/// match in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// The agent's own: its state dir (its key in `pki/`, the declared data dirs) and
    /// `/etc/haop/agent.toml` (the bootstrap token, and the agent's limits: managed roots and
    /// the exec allow-list). No request reads or changes them, nor wipes a directory holding them.
    AgentOwn,
    /// etcd's data: every declared data dir, `/var/lib/etcd`, and anything moved aside
    /// (`*.wiped-*`). Only etcd, and WipeDataDir, touch it.
    EtcdData,
    /// Copies of snapshots that haop keeps on the host, `/var/lib/haop/snapshot-copies`:
    /// the whole keyspace, encrypted under a key the host never holds.
    SnapshotCopy,
    /// etcd snapshots: `/var/lib/haop/restore` and `*.db` files. The whole keyspace.
    Snapshot,
    /// Private keys: `*.key`.
    Key,
    /// Files that hold a password haop writes: `/etc/keepalived/keepalived.conf`.
    Password,
    /// kubeadm's kubeconfigs, `/etc/kubernetes/*.conf`: a client key or a bootstrap token, and
    /// certificates.
    Kubeconfig,
    /// Known to hold nothing secret: certificates (`*.crt`), `/etc/modules-load.d`,
    /// `/etc/sysctl.d`.
    Public,
    /// Everything else: the host's configuration that apply writes and plan compares (it may
    /// hold a secret an operator added, such as registry credentials in containerd's config).
    Config,
}

impl PathClass {
    pub const ALL: [PathClass; 9] = [
        PathClass::AgentOwn,
        PathClass::EtcdData,
        PathClass::SnapshotCopy,
        PathClass::Snapshot,
        PathClass::Key,
        PathClass::Password,
        PathClass::Kubeconfig,
        PathClass::Public,
        PathClass::Config,
    ];

    fn what(self) -> &'static str {
        match self {
            PathClass::AgentOwn => {
                "the agent's own files (its bootstrap token, its key, its limits), which no \
                 request reads or changes"
            }
            PathClass::EtcdData => {
                "etcd's data, which leaves the host only through etcd's API (haop etcd \
                 snapshot save)"
            }
            PathClass::SnapshotCopy => {
                "an encrypted snapshot copy, which only an admin writes and streams back"
            }
            PathClass::Snapshot => "an etcd snapshot (the whole keyspace), which is only uploaded",
            PathClass::Key => "a private key, which is used where it is and never leaves the host",
            PathClass::Password => "a file holding a password (keepalived's VRRP auth_pass)",
            PathClass::Kubeconfig => {
                "a kubeconfig, which holds a client key or a bootstrap token beside its \
                 certificates"
            }
            PathClass::Public => "a certificate or kernel settings",
            PathClass::Config => "host configuration, which may hold a secret",
        }
    }
}

/// The second table: the uses each role may make of a path of each class.
pub fn rights(class: PathClass, role: Role) -> &'static [Use] {
    use Use::{Certificates, Content, DataDir, Download, Key, Metadata, Remove, Write};
    match (class, role) {
        (PathClass::AgentOwn, Role::Admin) => &[],
        (PathClass::AgentOwn, Role::Reader) => &[],
        // Declared, and moved aside when a member is recovered; never read: nothing in haop
        // reads it, and a copy of etcd's data is a snapshot, taken through etcd's API. Its
        // metadata (sizes, never content or digests) is how recovery follows a learner
        // receiving the database and checks a host has room for it.
        (PathClass::EtcdData, Role::Admin) => &[Metadata, DataDir],
        (PathClass::EtcdData, Role::Reader) => &[],
        // `haop etcd snapshot save` and the schedule put encrypted copies here, prune removes
        // them, and `haop etcd restore --from-host` streams one back when the coordinator's
        // state dir lost its own. An admin may stream a copy back because it is ciphertext
        // under the coordinator's snapshot key, which never reaches a host: DownloadFile serves
        // only files in haop's encrypted format (the agent checks the magic), so the etcd data
        // an admin cannot read elsewhere does not leave the host readable this way. Never
        // ReadFile's content, nor Stat's digest.
        (PathClass::SnapshotCopy, Role::Admin) => &[Metadata, Write, Remove, Download],
        (PathClass::SnapshotCopy, Role::Reader) => &[],
        // `haop etcd restore` uploads one for etcdctl to restore from.
        (PathClass::Snapshot, Role::Admin) => &[Write, Remove],
        (PathClass::Snapshot, Role::Reader) => &[],
        // apply checks that a key is there and has the host make a CSR for it; adoption removes
        // the CA key a hand-built cluster copied around. Never read, never written from outside.
        (PathClass::Key, Role::Admin) => &[Metadata, Key, Remove],
        (PathClass::Key, Role::Reader) => &[],
        // apply writes keepalived.conf and plan compares it.
        (PathClass::Password, Role::Admin) => &[Content, Metadata, Write, Remove],
        (PathClass::Password, Role::Reader) => &[],
        // status and certs list read their certificates; apply asks whether admin.conf exists.
        (PathClass::Kubeconfig, Role::Admin) => &[Certificates, Metadata],
        (PathClass::Kubeconfig, Role::Reader) => &[Certificates, Metadata],
        // status compares the node-preparation files and reads the cluster CA in full.
        (PathClass::Public, Role::Admin) => &[Content, Certificates, Metadata, Write, Remove],
        (PathClass::Public, Role::Reader) => &[Content, Certificates, Metadata],
        (PathClass::Config, Role::Admin) => {
            &[Content, Certificates, Metadata, Write, Remove, DataDir]
        }
        (PathClass::Config, Role::Reader) => &[Certificates, Metadata],
    }
}

/// Why the policy refused a request.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error(
        "{} changes the host and needs a {ROLE_ADMIN} certificate; {caller} has {}",
        .rpc.name(),
        .role.as_str()
    )]
    Rpc {
        rpc: Rpc,
        caller: String,
        role: Role,
    },
    #[error(
        "{}: {} may not {} {path}{}: it is {}{}",
        .rpc.name(),
        .role.as_str(),
        .how.verb(),
        through(.via.as_ref()),
        .class.what(),
        hint(*.class, *.role, *.how)
    )]
    Path {
        rpc: Rpc,
        role: Role,
        how: Use,
        path: HostPath,
        /// Where the path leads, when the class came from there.
        via: Option<HostPath>,
        class: PathClass,
    },
}

fn through(via: Option<&HostPath>) -> String {
    via.map(|v| format!(" (through a symlink to {v})"))
        .unwrap_or_default()
}

/// What the caller may ask instead, when there is something.
fn hint(class: PathClass, role: Role, how: Use) -> &'static str {
    if how == Use::Content && rights(class, role).contains(&Use::Certificates) {
        "; ask for certificates_only to read its certificates"
    } else {
        ""
    }
}

/// A request message: its RPC, and each path it names with the use the RPC makes of it.
pub trait Guarded {
    const RPC: Rpc;
    fn paths(&self) -> Vec<(Use, String)> {
        Vec::new()
    }
}

macro_rules! no_paths {
    ($($msg:ty => $rpc:ident),* $(,)?) => {
        $(impl Guarded for $msg {
            const RPC: Rpc = Rpc::$rpc;
        })*
    };
}

no_paths! {
    pb::GetFactsRequest => GetFacts,
    pb::UnitActionRequest => UnitAction,
    pb::UnitStatusRequest => UnitStatus,
    pb::LoadModulesRequest => LoadModules,
    pb::ApplySysctlRequest => ApplySysctl,
    pb::DisableSwapRequest => DisableSwap,
    pb::ExecRequest => Exec,
    pb::WhoAmIRequest => WhoAmI,
    pb::InstallRevocationsRequest => InstallRevocations,
    // The agent's own trust bundle, pending key and serving certificate, at fixed places in its
    // state dir: the request names no path.
    pb::InstallTrustBundleRequest => InstallTrustBundle,
    pb::CreateServingCsrRequest => CreateServingCsr,
    pb::InstallServingCertificateRequest => InstallServingCertificate,
    // Both act on the moved-aside copies of the unit's declared data dirs, found by the agent
    // itself beside each declared dir; the request names no path.
    pb::WipedDataDirsRequest => ListWipedDataDirs,
    pb::PruneWipedDataDirsRequest => PruneWipedDataDirs,
}

/// The upload's path comes in its first message: the handler checks it with [`Policy::check`].
impl Guarded for Streaming<pb::UploadChunk> {
    const RPC: Rpc = Rpc::UploadFile;
}

impl Guarded for pb::ReadFileRequest {
    const RPC: Rpc = Rpc::ReadFile;
    fn paths(&self) -> Vec<(Use, String)> {
        let how = if self.certificates_only {
            Use::Certificates
        } else {
            Use::Content
        };
        vec![(how, self.path.clone())]
    }
}

impl Guarded for pb::DownloadFileRequest {
    const RPC: Rpc = Rpc::DownloadFile;
    fn paths(&self) -> Vec<(Use, String)> {
        vec![(Use::Download, self.path.clone())]
    }
}

impl Guarded for pb::StatRequest {
    const RPC: Rpc = Rpc::Stat;
    fn paths(&self) -> Vec<(Use, String)> {
        vec![(Use::Metadata, self.path.clone())]
    }
}

impl Guarded for pb::WriteFileRequest {
    const RPC: Rpc = Rpc::WriteFile;
    fn paths(&self) -> Vec<(Use, String)> {
        vec![(Use::Write, self.path.clone())]
    }
}

impl Guarded for pb::RemoveFileRequest {
    const RPC: Rpc = Rpc::RemoveFile;
    fn paths(&self) -> Vec<(Use, String)> {
        vec![(Use::Remove, self.path.clone())]
    }
}

impl Guarded for pb::EnsureUnitRequest {
    const RPC: Rpc = Rpc::EnsureUnit;
    fn paths(&self) -> Vec<(Use, String)> {
        let mut paths = vec![(
            Use::Write,
            format!("{}/{}", crate::service::UNIT_DIR, self.name),
        )];
        paths.extend(self.data_dirs.iter().map(|d| (Use::DataDir, d.clone())));
        paths
    }
}

impl Guarded for pb::WipeDataDirRequest {
    const RPC: Rpc = Rpc::WipeDataDir;
    fn paths(&self) -> Vec<(Use, String)> {
        vec![(Use::DataDir, self.path.clone())]
    }
}

impl Guarded for pb::CreateCsrRequest {
    const RPC: Rpc = Rpc::CreateCsr;
    fn paths(&self) -> Vec<(Use, String)> {
        vec![(Use::Key, self.key_path.clone())]
    }
}

impl Guarded for pb::InstallCertificateRequest {
    const RPC: Rpc = Rpc::InstallCertificate;
    fn paths(&self) -> Vec<(Use, String)> {
        let mut paths = vec![
            (Use::Write, self.cert_path.clone()),
            (Use::Key, self.key_path.clone()),
        ];
        if !self.ca_path.is_empty() {
            paths.push((Use::Write, self.ca_path.clone()));
        }
        paths
    }
}

/// Where etcd keeps its data unless a unit declares otherwise (the seed's and haop's default).
const DEFAULT_DATA_DIR: &str = "/var/lib/etcd";
/// Where `haop etcd restore` uploads its snapshot.
const SNAPSHOT_DIR: &str = "/var/lib/haop/restore";
/// Where haop keeps encrypted copies of its snapshots.
const SNAPSHOT_COPY_DIR: &str = haop_proto::SNAPSHOT_COPY_DIR;
/// The agent's config on a host (the .deb's conffile) and on a lab host.
const AGENT_CONFIG: &str = "/etc/haop/agent.toml";
const KEEPALIVED_CONF: &str = "/etc/keepalived/keepalived.conf";
const KUBECONFIG_DIR: &str = "/etc/kubernetes";
const PUBLIC_DIRS: &[&str] = &["/etc/modules-load.d", "/etc/sysctl.d"];

/// The agent's policy over its host: the tables above, applied to real paths.
#[derive(Debug)]
pub struct Policy {
    fs: HostFs,
    declared: DeclaredDirs,
    agent_own: Vec<HostPath>,
    revocations: Revocations,
    trusted: TrustBundle,
}

/// Logs a refusal (who tried what is worth an operator's look) and makes it the RPC's error.
fn refuse(caller: &Caller, denied: Denied) -> AgentError {
    warn!(
        caller = %caller.common_name,
        role = caller.role.as_str(),
        reason = %denied,
        "refused by policy"
    );
    denied.into()
}

fn hp(s: &str) -> HostPath {
    HostPath::try_from(s).expect("the policy's own paths are valid")
}

impl Policy {
    pub fn new(
        fs: HostFs,
        state_dir: &HostPath,
        revocations: Revocations,
        trusted: TrustBundle,
    ) -> Self {
        let declared = DeclaredDirs::new(&fs, state_dir);
        Policy {
            fs,
            declared,
            agent_own: vec![state_dir.clone(), hp(AGENT_CONFIG)],
            revocations,
            trusted,
        }
    }

    /// The revocation list this policy enforces.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Who the caller is, and whether the request is allowed whole: a certificate still issued
    /// by a CA of the trust bundle in force (the connection may predate a change of the bundle)
    /// and not revoked, the RPC for its role, then every path it names. Paths that do not parse
    /// are left to the handler, which refuses the same string as INVALID_ARGUMENT.
    pub fn admit<T: Guarded>(&self, req: &Request<T>) -> Result<Caller, AgentError> {
        let rpc = T::RPC;
        let caller = auth::authenticate(req, rpc.name()).inspect_err(|e: &AuthError| {
            debug!(rpc = rpc.name(), error = %e, "caller not authenticated");
        })?;
        let leaf = req
            .peer_certs()
            .and_then(|c| c.first().map(|d| d.as_ref().to_vec()))
            .unwrap_or_default();
        if !self.trusted.admits(&leaf) {
            let e = AuthError::NotTrusted {
                rpc: rpc.name(),
                common_name: caller.common_name.clone(),
            };
            warn!(caller = %caller.common_name, error = %e, "certificate of an untrusted CA refused");
            return Err(e.into());
        }
        if let Some(generation) = self.revocations.revoked_by(&caller.serial) {
            let e = AuthError::Revoked {
                rpc: rpc.name(),
                common_name: caller.common_name.clone(),
                serial: caller.serial_hex(),
                generation,
            };
            warn!(caller = %caller.common_name, error = %e, "revoked certificate refused");
            return Err(e.into());
        }
        if !callers(rpc).contains(&caller.role) {
            return Err(refuse(
                &caller,
                Denied::Rpc {
                    rpc,
                    caller: caller.common_name.clone(),
                    role: caller.role,
                },
            ));
        }
        for (how, raw) in req.get_ref().paths() {
            if let Ok(path) = HostPath::try_from(raw.as_str()) {
                self.check(&caller, rpc, how, &path)?;
            }
        }
        Ok(caller)
    }

    /// Whether `caller` may make `how` of `path` in `rpc`; refuses with the reason.
    pub fn check(
        &self,
        caller: &Caller,
        rpc: Rpc,
        how: Use,
        path: &HostPath,
    ) -> Result<(), AgentError> {
        let Some((class, via)) = self
            .classes(path, how)
            .into_iter()
            .find(|(class, _)| !rights(*class, caller.role).contains(&how))
        else {
            return Ok(());
        };
        let denied = Denied::Path {
            rpc,
            role: caller.role,
            how,
            path: path.clone(),
            via,
            class,
        };
        Err(refuse(caller, denied))
    }

    /// Whether `caller` may make `how` of `path`, without a reason (Stat asks it for the digest).
    pub fn allows(&self, caller: &Caller, how: Use, path: &HostPath) -> bool {
        self.classes(path, how)
            .iter()
            .all(|(class, _)| rights(*class, caller.role).contains(&how))
    }

    /// The class of `path` itself, and of where it leads when that differs (with the target);
    /// for a data dir, also [`PathClass::AgentOwn`] when the agent's own files lie inside it.
    fn classes(&self, path: &HostPath, how: Use) -> Vec<(PathClass, Option<HostPath>)> {
        let mut classes = vec![(self.class(path), None)];
        if let Ok((resolved, _)) = self.fs.resolve(path) {
            if resolved != *path {
                classes.push((self.class(&resolved), Some(resolved)));
            }
        }
        if how == Use::DataDir && self.agent_own.iter().any(|own| own.starts_with(path)) {
            classes.push((PathClass::AgentOwn, None));
        }
        classes
    }

    /// What `path` is, by the first rule of [`PathClass`] that matches.
    pub fn class(&self, path: &HostPath) -> PathClass {
        let name = path.file_name().unwrap_or("");
        let under = |dir: &str| path.starts_with(&hp(dir));
        if self.agent_own.iter().any(|own| path.starts_with(own)) {
            return PathClass::AgentOwn;
        }
        if under(DEFAULT_DATA_DIR)
            || path
                .as_path()
                .iter()
                .any(|c| c.to_string_lossy().contains(".wiped-"))
            || self.declared_dirs().iter().any(|d| path.starts_with(d))
        {
            return PathClass::EtcdData;
        }
        if under(SNAPSHOT_COPY_DIR) {
            return PathClass::SnapshotCopy;
        }
        if under(SNAPSHOT_DIR) || name.ends_with(".db") {
            return PathClass::Snapshot;
        }
        // haop's `.key`, and cfssljson's `-key.pem` (the seed's ca-key.pem, server-key.pem).
        if name.ends_with(".key") || name.ends_with("-key.pem") {
            return PathClass::Key;
        }
        if *path == hp(KEEPALIVED_CONF) {
            return PathClass::Password;
        }
        if path.parent() == Some(hp(KUBECONFIG_DIR)) && name.ends_with(".conf") {
            return PathClass::Kubeconfig;
        }
        if name.ends_with(".crt") || PUBLIC_DIRS.iter().any(|d| under(d)) {
            return PathClass::Public;
        }
        PathClass::Config
    }

    /// Every unit's declared data dirs. Unreadable declarations fail closed: every path of the
    /// roots where data dirs live is then etcd's data.
    fn declared_dirs(&self) -> Vec<HostPath> {
        match self.declared.load() {
            Ok(all) => all
                .into_values()
                .flatten()
                .filter_map(|d| HostPath::try_from(d.as_str()).ok())
                .collect(),
            Err(e) => {
                warn!(error = %e, "declared data dirs unreadable; treating every managed root as etcd's data");
                self.fs.managed_roots().to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller {
            common_name: "test".into(),
            role,
            serial: vec![1],
        }
    }

    fn policy() -> (tempfile::TempDir, Policy) {
        let dir = tempfile::tempdir().unwrap();
        let fs = HostFs::new(dir.path(), crate::paths::default_managed_roots());
        let revocations = Revocations::load(&dir.path().join("var/lib/haop-agent/pki"));
        let policy = Policy::new(
            fs,
            &hp("/var/lib/haop-agent"),
            revocations,
            TrustBundle::default(),
        );
        (dir, policy)
    }

    #[test]
    fn every_rpc_is_open_to_admins_and_only_reads_to_readers() {
        for rpc in Rpc::ALL {
            assert!(callers(rpc).contains(&Role::Admin), "{rpc:?}");
        }
        let read: Vec<Rpc> = Rpc::ALL
            .into_iter()
            .filter(|r| callers(*r).contains(&Role::Reader))
            .collect();
        assert_eq!(
            read,
            [
                Rpc::GetFacts,
                Rpc::ReadFile,
                Rpc::Stat,
                Rpc::UnitStatus,
                Rpc::ListWipedDataDirs,
                Rpc::WhoAmI
            ]
        );
    }

    #[test]
    fn a_reader_never_writes_and_reads_content_only_where_nothing_is_secret() {
        for class in PathClass::ALL {
            let r = rights(class, Role::Reader);
            for u in [Use::Write, Use::Remove, Use::Key, Use::DataDir] {
                assert!(!r.contains(&u), "{class:?} {u:?}");
            }
            assert_eq!(
                r.contains(&Use::Content),
                class == PathClass::Public,
                "{class:?}"
            );
            // A reader gets nothing of a reader's more than an admin gets.
            for u in r {
                assert!(rights(class, Role::Admin).contains(u), "{class:?} {u:?}");
            }
        }
        for class in [
            PathClass::AgentOwn,
            PathClass::EtcdData,
            PathClass::SnapshotCopy,
            PathClass::Snapshot,
            PathClass::Key,
            PathClass::Kubeconfig,
        ] {
            assert!(
                !rights(class, Role::Admin).contains(&Use::Content),
                "{class:?}"
            );
        }
        // Streaming back is for encrypted snapshot copies alone, and admins alone.
        for class in PathClass::ALL {
            for role in [Role::Admin, Role::Reader] {
                assert_eq!(
                    rights(class, role).contains(&Use::Download),
                    (class, role) == (PathClass::SnapshotCopy, Role::Admin),
                    "{class:?} {role:?}"
                );
            }
        }
    }

    #[test]
    fn paths_are_classed_by_what_they_hold() {
        let (_dir, p) = policy();
        for (path, class) in [
            ("/etc/haop/agent.toml", PathClass::AgentOwn),
            ("/var/lib/haop-agent/pki/agent.key", PathClass::AgentOwn),
            ("/var/lib/etcd", PathClass::EtcdData),
            ("/var/lib/etcd/member/snap/db", PathClass::EtcdData),
            (
                "/var/lib/etcd.wiped-20260101T000000Z/member/wal/0.wal",
                PathClass::EtcdData,
            ),
            ("/var/lib/haop/restore/snapshot.db", PathClass::Snapshot),
            (
                "/var/lib/haop/snapshot-copies/c/20260101T000000.000Z-etcd1.snap",
                PathClass::SnapshotCopy,
            ),
            (
                "/var/lib/haop/snapshot-copies/c/x.db",
                PathClass::SnapshotCopy,
            ),
            ("/var/lib/haop/backup.db", PathClass::Snapshot),
            ("/etc/kubernetes/pki/etcd/server.key", PathClass::Key),
            ("/etc/kubernetes/pki/etcd/ca-key.pem", PathClass::Key),
            ("/etc/kubernetes/pki/etcd/ca.pem", PathClass::Config),
            ("/etc/keepalived/keepalived.conf", PathClass::Password),
            ("/etc/kubernetes/admin.conf", PathClass::Kubeconfig),
            ("/etc/kubernetes/pki/etcd/ca.crt", PathClass::Public),
            ("/etc/modules-load.d/haop.conf", PathClass::Public),
            ("/etc/sysctl.d/haop.conf", PathClass::Public),
            ("/etc/etcd.env", PathClass::Config),
            ("/etc/keepalived/check_apiserver.sh", PathClass::Config),
            (
                "/etc/kubernetes/manifests/kube-apiserver.yaml",
                PathClass::Config,
            ),
            ("/etc/haop/other.toml", PathClass::Config),
        ] {
            assert_eq!(p.class(&hp(path)), class, "{path}");
        }
    }

    #[test]
    fn a_key_may_be_removed_but_never_read_or_written() {
        let r = rights(PathClass::Key, Role::Admin);
        assert!(r.contains(&Use::Remove));
        for u in [Use::Write, Use::Content, Use::Certificates, Use::Download] {
            assert!(!r.contains(&u), "{u:?}");
        }
    }

    #[test]
    fn a_declared_data_dir_is_etcds_data() {
        let (_dir, p) = policy();
        let d = hp("/var/lib/haop/etcd");
        assert_eq!(p.class(&d.join("member").unwrap()), PathClass::Config);
        p.declared
            .declare(
                &crate::names::UnitName::try_from("etcd.service").unwrap(),
                std::slice::from_ref(&d),
            )
            .unwrap();
        assert_eq!(p.class(&d.join("member").unwrap()), PathClass::EtcdData);
    }

    #[test]
    fn a_symlink_is_judged_by_where_it_leads_too() {
        let (dir, p) = policy();
        std::fs::create_dir_all(dir.path().join("etc/haop")).unwrap();
        std::os::unix::fs::symlink("agent.toml", dir.path().join("etc/haop/innocent.conf"))
            .unwrap();
        let link = hp("/etc/haop/innocent.conf");
        let admin = caller(Role::Admin);
        assert!(!p.allows(&admin, Use::Content, &link));
        let err = p
            .check(&admin, Rpc::ReadFile, Use::Content, &link)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("through a symlink to /etc/haop/agent.toml"),
            "{err}"
        );
    }

    #[test]
    fn a_data_dir_cannot_hold_the_agents_own_files() {
        let (_dir, p) = policy();
        let admin = caller(Role::Admin);
        assert!(p.allows(&admin, Use::DataDir, &hp("/var/lib/etcd")));
        assert!(p.allows(&admin, Use::DataDir, &hp("/var/lib/haop/etcd")));
        for dir in ["/etc/haop", "/var/lib", "/"] {
            assert!(!p.allows(&admin, Use::DataDir, &hp(dir)), "{dir}");
        }
    }

    #[test]
    fn refusals_say_why_and_what_to_ask_instead() {
        let (_dir, p) = policy();
        let reader = caller(Role::Reader);
        let err = p
            .check(
                &reader,
                Rpc::ReadFile,
                Use::Content,
                &hp("/etc/kubernetes/admin.conf"),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("haop:reader may not read /etc/kubernetes/admin.conf"),
            "{err}"
        );
        assert!(err.contains("certificates_only"), "{err}");
        let err = p
            .check(
                &reader,
                Rpc::ReadFile,
                Use::Content,
                &hp("/etc/keepalived/keepalived.conf"),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("VRRP"), "{err}");
        assert!(!err.contains("certificates_only"), "{err}");
    }
}
