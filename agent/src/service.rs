//! The gRPC service: the edge where raw requests become validated types.
//!
//! Each RPC first has [`crate::policy`] admit the request (the caller's role, for the RPC and
//! for every path it names), then converts its message into the types of [`crate::names`] and
//! [`crate::paths`], so a request that is not allowed, or a bad name or path, is refused before
//! anything touches the host; then it calls one operation module. Unit operations and wipes hold one lock, so the fence of a wipe (unit
//! stopped) cannot be undone by a concurrent start between check and act.

use std::collections::BTreeMap;
use std::sync::Arc;

use haop_proto::v1 as pb;
use haop_proto::v1::agent_server::Agent;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, Instrument};

use crate::config::AgentConfig;
use crate::csr;
use crate::datadirs::{self, DeclaredDirs};
use crate::error::AgentError;
use crate::exec::{AllowList, ExecRequest};
use crate::files::{self, Ownership};
use crate::identity::IdentityStore;
use crate::kernel::{self, Kernel, ModuleOutcome, SysctlOutcome};
use crate::names::{DropInName, ModuleName, SysctlKey, SysctlValue, UnitName};
use crate::paths::{HostFs, HostPath};
use crate::policy::{Policy, Rpc, Use};
use crate::secrets;
use crate::tls::LiveTls;
use crate::trust::{self, Offer};
use crate::units::{unitfile, ServiceManager, UnitAction, UnitState};

/// Largest file ReadFile returns.
pub const READ_CAP: u64 = 4 * 1024 * 1024;
/// Largest file UploadFile accepts: an etcd snapshot for `haop etcd restore` of a database at
/// etcd's recommended largest quota (8 GiB), with room. (A 2 GiB database's snapshot is a little
/// over 2 GiB: the cap was once exactly that, and restore at 2 GiB failed on it.)
pub const UPLOAD_CAP: u64 = 10 * 1024 * 1024 * 1024;
/// Largest gRPC message the agent decodes (WriteFile carries whole small files).
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;
/// Where unit files go.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The agent's state shared by every RPC.
#[derive(Debug)]
struct Inner {
    fs: HostFs,
    units: Arc<dyn ServiceManager>,
    kernel: Arc<dyn Kernel>,
    declared: DeclaredDirs,
    allow: AllowList,
    identity: IdentityStore,
    policy: Policy,
    unit_lock: tokio::sync::Mutex<()>,
    /// The TLS configuration in force, reloaded after the identity files change.
    tls: LiveTls,
    /// Held while the trust bundle or the serving certificate changes: one at a time.
    identity_lock: tokio::sync::Mutex<()>,
}

/// The `haop.agent.v1.Agent` implementation.
#[derive(Debug, Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

type AgentResult<T> = Result<Response<T>, Status>;

fn host_path(p: &str) -> Result<HostPath, AgentError> {
    Ok(HostPath::try_from(p)?)
}

impl AgentService {
    pub fn new(
        config: &AgentConfig,
        units: Arc<dyn ServiceManager>,
        kernel: Arc<dyn Kernel>,
        identity: IdentityStore,
        tls: LiveTls,
    ) -> Self {
        let fs = HostFs::new(&config.root, config.managed_roots.clone());
        let declared = DeclaredDirs::new(&fs, &config.state_dir);
        let revocations = crate::revocation::Revocations::load(&identity.dir);
        let policy = Policy::new(
            fs.clone(),
            &config.state_dir,
            revocations,
            tls.bundle().clone(),
        );
        AgentService {
            inner: Arc::new(Inner {
                fs,
                units,
                kernel,
                declared,
                allow: AllowList::new(config.exec_allow.clone()),
                identity,
                policy,
                unit_lock: tokio::sync::Mutex::new(()),
                tls,
                identity_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The service manager, for start-up (start enabled units) and shutdown.
    pub fn units(&self) -> Arc<dyn ServiceManager> {
        self.inner.units.clone()
    }

    fn fs(&self) -> &HostFs {
        &self.inner.fs
    }

    fn write_managed(
        &self,
        path: &HostPath,
        content: &[u8],
        own: Ownership,
        create_parents: bool,
    ) -> Result<files::Written, AgentError> {
        let (_, real) = self.fs().resolve(path)?;
        files::prepare_parent(&real, create_parents)?;
        Ok(files::ensure_file(&real, content, own)?)
    }

    async fn unit_status(&self, unit: &UnitName) -> Result<UnitState, AgentError> {
        Ok(self.inner.units.status(unit).await?)
    }
}

fn unit_status_pb(name: &UnitName, s: UnitState) -> pb::UnitStatus {
    pb::UnitStatus {
        name: name.to_string(),
        installed: s.installed,
        active_state: s.active_state,
        sub_state: s.sub_state,
        main_pid: s.main_pid,
        since_unix_ms: s.since_unix_ms,
        restart_count: s.restart_count,
        enabled: s.enabled,
        last_exit: s.last_exit,
    }
}

fn root_owned(mode: u32) -> Ownership {
    Ownership {
        mode,
        uid: 0,
        gid: 0,
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_facts(&self, req: Request<pb::GetFactsRequest>) -> AgentResult<pb::Facts> {
        self.inner.policy.admit(&req)?;
        let this = self.clone();
        let facts = tokio::task::spawn_blocking(move || {
            crate::facts::collect(
                this.fs(),
                this.inner.kernel.as_ref(),
                this.inner.units.backend(),
            )
        })
        .await
        .map_err(|e| Status::internal(format!("collecting facts: {e}")))?;
        Ok(Response::new(pb::Facts {
            revocation_generation: self.inner.policy.revocations().generation(),
            ..facts
        }))
    }

    async fn write_file(
        &self,
        req: Request<pb::WriteFileRequest>,
    ) -> AgentResult<pb::WriteFileResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("write_file", path = %req.path);
        async {
            let path = host_path(&req.path)?;
            if secrets::holds_private_key(&req.content) {
                return Err(AgentError::Invalid(format!(
                    "refusing to write a private key to {path}: private keys never travel; \
                     use CreateCsr to have this host generate its own"
                )));
            }
            let own = Ownership::resolve(req.mode, &req.owner, &req.group)?;
            let w = self.write_managed(&path, &req.content, own, req.create_parents)?;
            if w.changed {
                info!(path = %path, sha256 = %w.sha256, "file written");
            }
            Ok::<_, AgentError>(pb::WriteFileResponse {
                changed: w.changed,
                sha256: w.sha256,
                size: w.size,
            })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn read_file(
        &self,
        req: Request<pb::ReadFileRequest>,
    ) -> AgentResult<pb::ReadFileResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let result = (|| {
            let path = host_path(&req.path)?;
            let (_, real) = self.fs().resolve(&path)?;
            let limit = match req.max_bytes {
                0 => READ_CAP,
                n => n.min(READ_CAP),
            };
            let (mut content, mode) = files::read_capped(&real, limit)?;
            if req.certificates_only {
                content = secrets::certificates_in(&content);
            }
            if secrets::holds_private_key(&content) {
                return Err(AgentError::Secret(path.to_string()));
            }
            Ok::<_, AgentError>(pb::ReadFileResponse {
                sha256: files::sha256_hex(&content),
                content,
                mode,
            })
        })();
        result.map(Response::new).map_err(Status::from)
    }

    async fn remove_file(
        &self,
        req: Request<pb::RemoveFileRequest>,
    ) -> AgentResult<pb::RemoveFileResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let result = (|| {
            let path = host_path(&req.path)?;
            let (_, real) = self.fs().resolve(&path)?;
            let changed = files::remove_file(&real)?;
            if changed {
                info!(path = %path, "file removed");
            }
            Ok::<_, AgentError>(pb::RemoveFileResponse { changed })
        })();
        result.map(Response::new).map_err(Status::from)
    }

    async fn stat(&self, req: Request<pb::StatRequest>) -> AgentResult<pb::StatResponse> {
        let caller = self.inner.policy.admit(&req)?;
        use std::os::unix::fs::MetadataExt;
        let req = req.into_inner();
        let result = (|| {
            let path = host_path(&req.path)?;
            // Stat is read-only and reveals no content, so it may look outside the managed
            // roots (preflight checks that /usr/sbin/keepalived exists); the digest is given
            // only inside them, and only to a caller who may read the content.
            let (real, managed) = match self.fs().resolve(&path) {
                Ok((_, real)) => (real, true),
                Err(crate::paths::PathError::OutsideManagedRoots { .. }) => {
                    (self.fs().real(&path), false)
                }
                Err(e) => return Err(e.into()),
            };
            let meta = match std::fs::symlink_metadata(&real) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let (fs_available_bytes, fs_total_bytes) =
                        crate::usage::filesystem_space(&real).unwrap_or_default();
                    return Ok(pb::StatResponse {
                        fs_available_bytes,
                        fs_total_bytes,
                        ..Default::default()
                    });
                }
                Err(e) => return Err(files::io("inspect", &real)(e).into()),
            };
            let (fs_available_bytes, fs_total_bytes) =
                crate::usage::filesystem_space(&real).unwrap_or_default();
            let kind = if meta.is_file() {
                "file"
            } else if meta.is_dir() {
                "dir"
            } else if meta.file_type().is_symlink() {
                "symlink"
            } else {
                "other"
            };
            let sha256 = if managed
                && meta.is_file()
                && meta.len() <= 64 * 1024 * 1024
                && self.inner.policy.allows(&caller, Use::Content, &path)
            {
                files::sha256_file(&real)?
            } else {
                String::new()
            };
            let tree_bytes = if req.tree && managed {
                crate::usage::tree_bytes(&real).map_err(files::io("measure", &real))?
            } else {
                0
            };
            Ok::<_, AgentError>(pb::StatResponse {
                exists: true,
                kind: kind.into(),
                size: meta.len(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                modified_unix_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
                sha256,
                tree_bytes,
                fs_available_bytes,
                fs_total_bytes,
            })
        })();
        result.map(Response::new).map_err(Status::from)
    }

    async fn upload_file(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> AgentResult<pb::WriteFileResponse> {
        let caller = self.inner.policy.admit(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload: no header"))?;
        let header = first.header.ok_or_else(|| {
            Status::invalid_argument("the first upload message must carry the header")
        })?;
        let path = host_path(&header.path).map_err(Status::from)?;
        self.inner
            .policy
            .check(&caller, Rpc::UploadFile, Use::Write, &path)?;
        if header.sha256.len() != 64 || !header.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "upload to {path}: sha256 must be 64 hex digits"
            )));
        }
        let limit = if header.size > 0 {
            header.size.min(UPLOAD_CAP)
        } else {
            UPLOAD_CAP
        };
        let (_, real) = self
            .fs()
            .resolve(&path)
            .map_err(|e| Status::from(AgentError::from(e)))?;
        files::prepare_parent(&real, header.create_parents)
            .map_err(|e| Status::from(AgentError::from(e)))?;
        // A declared size the filesystem cannot hold is refused before a byte is written.
        if header.size > UPLOAD_CAP {
            return Err(Status::resource_exhausted(format!(
                "upload to {path}: {} bytes, more than the {UPLOAD_CAP} bytes allowed",
                header.size
            )));
        }
        if let Ok((available, _)) = crate::usage::filesystem_space(&real) {
            if header.size > available {
                return Err(Status::resource_exhausted(format!(
                    "upload to {path}: {} bytes, and its filesystem has {available} bytes free",
                    header.size
                )));
            }
        }
        let own = Ownership::resolve(header.mode, "", "")
            .map_err(|e| Status::from(AgentError::from(e)))?;
        let mut upload = files::Upload::begin(&real, own, &header.sha256)
            .map_err(|e| Status::from(AgentError::from(e)))?;
        upload
            .write(&first.data, limit)
            .map_err(|e| Status::from(AgentError::from(e)))?;
        while let Some(chunk) = stream.message().await? {
            if chunk.header.is_some() {
                return Err(Status::invalid_argument(
                    "only the first upload message may carry a header",
                ));
            }
            upload
                .write(&chunk.data, limit)
                .map_err(|e| Status::from(AgentError::from(e)))?;
        }
        let w = upload
            .finish()
            .map_err(|e| Status::from(AgentError::from(e)))?;
        if w.changed {
            info!(path = %path, sha256 = %w.sha256, size = w.size, "file uploaded");
        }
        Ok(Response::new(pb::WriteFileResponse {
            changed: w.changed,
            sha256: w.sha256,
            size: w.size,
        }))
    }

    type DownloadFileStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::DownloadChunk, Status>>;

    async fn download_file(
        &self,
        req: Request<pb::DownloadFileRequest>,
    ) -> AgentResult<Self::DownloadFileStream> {
        let caller = self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let path = host_path(&req.path).map_err(Status::from)?;
        let (_, real) = self
            .fs()
            .resolve(&path)
            .map_err(|e| Status::from(AgentError::from(e)))?;
        let mut file = files::open_regular(&real).map_err(|e| Status::from(AgentError::from(e)))?;
        // The policy let an admin ask for this path; the content must be ciphertext as well.
        let mut magic = [0u8; 8];
        let n = files::read_full(&mut file, &mut magic)
            .map_err(|e| Status::from(AgentError::from(files::io("read", &real)(e))))?;
        if n != magic.len() || &magic != haop_proto::ENCRYPTED_SNAPSHOT_MAGIC {
            return Err(AgentError::NotEncrypted(path.to_string()).into());
        }
        info!(caller = %caller.common_name, path = %path, "streaming a snapshot copy back");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || files::stream_back(file, &magic, &real, &tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn ensure_unit(
        &self,
        req: Request<pb::EnsureUnitRequest>,
    ) -> AgentResult<pb::EnsureUnitResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("ensure_unit", unit = %req.name);
        async {
            let name = UnitName::try_from(req.name.as_str())?;
            let parsed = unitfile::parse(&req.content).map_err(|e| {
                AgentError::Invalid(format!("unit file for {name} is not valid: {e}"))
            })?;
            if name.as_str().ends_with(".service") {
                unitfile::ServiceSpec::from_unit(&parsed).map_err(|e| {
                    AgentError::Invalid(format!("unit file for {name} is not valid: {e}"))
                })?;
            }
            let dirs = req
                .data_dirs
                .iter()
                .map(|d| {
                    let p = host_path(d)?;
                    if p.is_root() {
                        return Err(AgentError::Invalid(format!(
                            "data dir of {name} cannot be /"
                        )));
                    }
                    self.fs().resolve(&p)?;
                    Ok(p)
                })
                .collect::<Result<Vec<_>, AgentError>>()?;
            let path = host_path(&format!("{UNIT_DIR}/{name}"))?;
            let _guard = self.inner.unit_lock.lock().await;
            let w = self.write_managed(&path, req.content.as_bytes(), root_owned(0o644), true)?;
            let declared = self.inner.declared.declare(&name, &dirs)?;
            if w.changed {
                self.inner.units.reload().await?;
                info!(unit = %name, "unit file installed");
            }
            Ok::<_, AgentError>(pb::EnsureUnitResponse {
                changed: w.changed || declared,
                path: path.to_string(),
            })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn unit_action(
        &self,
        req: Request<pb::UnitActionRequest>,
    ) -> AgentResult<pb::UnitActionResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("unit_action", unit = %req.name, action = req.action);
        async {
            let name = UnitName::try_from(req.name.as_str())?;
            let action = match pb::Action::try_from(req.action) {
                Ok(pb::Action::Start) => UnitAction::Start,
                Ok(pb::Action::Stop) => UnitAction::Stop,
                Ok(pb::Action::Restart) => UnitAction::Restart,
                Ok(pb::Action::Enable) => UnitAction::Enable,
                Ok(pb::Action::Disable) => UnitAction::Disable,
                Ok(pb::Action::Unspecified) | Err(_) => {
                    return Err(AgentError::Invalid(format!(
                        "unknown action {} for {name}",
                        req.action
                    )))
                }
            };
            let _guard = self.inner.unit_lock.lock().await;
            let changed = self.inner.units.action(&name, action).await?;
            if changed {
                info!(unit = %name, action = ?action, "unit changed");
            }
            let status = self.unit_status(&name).await?;
            Ok::<_, AgentError>(pb::UnitActionResponse {
                changed,
                status: Some(unit_status_pb(&name, status)),
            })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn unit_status(
        &self,
        req: Request<pb::UnitStatusRequest>,
    ) -> AgentResult<pb::UnitStatus> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let result = async {
            let name = UnitName::try_from(req.name.as_str())?;
            let status = self.unit_status(&name).await?;
            Ok::<_, AgentError>(unit_status_pb(&name, status))
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn load_modules(
        &self,
        req: Request<pb::LoadModulesRequest>,
    ) -> AgentResult<pb::LoadModulesResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let result = async {
            let file = DropInName::try_from(req.name.as_str())?;
            let modules = req
                .modules
                .iter()
                .map(|m| ModuleName::try_from(m.as_str()))
                .collect::<Result<Vec<_>, _>>()?;
            if modules.is_empty() {
                return Err(AgentError::Invalid("no modules given".into()));
            }
            let mut text = String::from("# Managed by haop.\n");
            for m in &modules {
                text.push_str(m.as_str());
                text.push('\n');
            }
            let path = host_path(&format!("/etc/modules-load.d/{}.conf", file.as_str()))?;
            let w = self.write_managed(&path, text.as_bytes(), root_owned(0o644), true)?;
            let mut resp = pb::LoadModulesResponse {
                changed: w.changed,
                ..Default::default()
            };
            for m in &modules {
                match self.inner.kernel.load_module(m).await? {
                    ModuleOutcome::AlreadyLoaded => {}
                    ModuleOutcome::Loaded => {
                        resp.changed = true;
                        resp.loaded.push(m.to_string());
                    }
                    ModuleOutcome::NotLoaded(why) => resp.not_loaded.push(format!("{m}: {why}")),
                }
            }
            info!(file = %path, changed = resp.changed, "modules ensured");
            Ok::<_, AgentError>(resp)
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn apply_sysctl(
        &self,
        req: Request<pb::ApplySysctlRequest>,
    ) -> AgentResult<pb::ApplySysctlResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let result = async {
            let file = DropInName::try_from(req.name.as_str())?;
            let mut values = BTreeMap::new();
            for (k, v) in &req.values {
                values.insert(
                    SysctlKey::try_from(k.as_str())?,
                    SysctlValue::try_from(v.as_str())?,
                );
            }
            if values.is_empty() {
                return Err(AgentError::Invalid("no sysctls given".into()));
            }
            let mut text = String::from("# Managed by haop.\n");
            for (k, v) in &values {
                text.push_str(&format!("{} = {}\n", k, v.as_str()));
            }
            let path = host_path(&format!("/etc/sysctl.d/{}.conf", file.as_str()))?;
            let w = self.write_managed(&path, text.as_bytes(), root_owned(0o644), true)?;
            let mut resp = pb::ApplySysctlResponse {
                changed: w.changed,
                ..Default::default()
            };
            for (k, v) in &values {
                match self.inner.kernel.apply_sysctl(k, v).await? {
                    SysctlOutcome::Unchanged => {}
                    SysctlOutcome::Applied => {
                        resp.changed = true;
                        resp.applied.push(k.to_string());
                    }
                    SysctlOutcome::PersistedOnly(why) => {
                        resp.persisted_only.push(format!("{k}: {why}"))
                    }
                }
            }
            info!(file = %path, changed = resp.changed, "sysctls ensured");
            Ok::<_, AgentError>(resp)
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn disable_swap(
        &self,
        req: Request<pb::DisableSwapRequest>,
    ) -> AgentResult<pb::DisableSwapResponse> {
        self.inner.policy.admit(&req)?;
        let result = async {
            let swapped_off = self.inner.kernel.swap_off().await?;
            let fstab = host_path("/etc/fstab")?;
            let (_, real) = self.fs().resolve(&fstab)?;
            let mut commented = 0;
            match std::fs::read_to_string(&real) {
                Ok(text) => {
                    let (new, n) = kernel::comment_out_swap(&text);
                    if n > 0 {
                        use std::os::unix::fs::MetadataExt;
                        let meta = std::fs::metadata(&real).map_err(files::io("inspect", &real))?;
                        let own = Ownership {
                            mode: meta.mode() & 0o7777,
                            uid: meta.uid(),
                            gid: meta.gid(),
                        };
                        files::write_atomic(&real, new.as_bytes(), own)?;
                        commented = n;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(files::io("read", &real)(e).into()),
            }
            info!(
                devices = swapped_off.len(),
                fstab_lines = commented,
                "swap disabled"
            );
            Ok::<_, AgentError>(pb::DisableSwapResponse {
                changed: !swapped_off.is_empty() || commented > 0,
                swapped_off,
                fstab_lines_commented: commented,
            })
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn wipe_data_dir(
        &self,
        req: Request<pb::WipeDataDirRequest>,
    ) -> AgentResult<pb::WipeDataDirResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("wipe_data_dir", unit = %req.unit, path = %req.path);
        async {
            let unit = UnitName::try_from(req.unit.as_str())?;
            let path = host_path(&req.path)?;
            let _guard = self.inner.unit_lock.lock().await;
            let state = self.unit_status(&unit).await?;
            let running = state
                .is_running()
                .then(|| format!("{} ({})", state.active_state, state.sub_state))
                .or_else(|| {
                    (state.sub_state == "auto-restart").then(|| "waiting to restart".to_string())
                });
            let wiped = datadirs::wipe(
                self.fs(),
                &self.inner.declared,
                &unit,
                &path,
                running,
                req.delete,
                time::OffsetDateTime::now_utc(),
            )?;
            if wiped.changed {
                info!(unit = %unit, path = %path, moved_to = ?wiped.moved_to, "data dir wiped");
            }
            Ok::<_, AgentError>(pb::WipeDataDirResponse {
                changed: wiped.changed,
                moved_to: wiped.moved_to.map(|p| p.to_string()).unwrap_or_default(),
            })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn list_wiped_data_dirs(
        &self,
        req: Request<pb::WipedDataDirsRequest>,
    ) -> AgentResult<pb::WipedDataDirsResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let run = || {
            let unit = UnitName::try_from(req.unit.as_str())?;
            let present = datadirs::wiped_copies(self.fs(), &self.inner.declared, &unit)?;
            Ok::<_, AgentError>(pb::WipedDataDirsResponse {
                present: present.into_iter().map(wiped_pb).collect(),
                removed: Vec::new(),
            })
        };
        run().map(Response::new).map_err(Status::from)
    }

    async fn prune_wiped_data_dirs(
        &self,
        req: Request<pb::PruneWipedDataDirsRequest>,
    ) -> AgentResult<pb::WipedDataDirsResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("prune_wiped_data_dirs", unit = %req.unit);
        let _enter = span.enter();
        let run = || {
            let unit = UnitName::try_from(req.unit.as_str())?;
            let now_ms =
                (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
            let min_age_ms =
                i64::try_from(req.min_age_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
            let (present, removed) = datadirs::prune_wiped(
                self.fs(),
                &self.inner.declared,
                &unit,
                req.keep as usize,
                min_age_ms,
                now_ms,
            )?;
            for r in &removed {
                info!(unit = %unit, path = %r.path, bytes = r.bytes, "moved-aside data dir deleted");
            }
            Ok::<_, AgentError>(pb::WipedDataDirsResponse {
                present: present.into_iter().map(wiped_pb).collect(),
                removed: removed.into_iter().map(wiped_pb).collect(),
            })
        };
        run().map(Response::new).map_err(Status::from)
    }

    async fn exec(&self, req: Request<pb::ExecRequest>) -> AgentResult<pb::ExecResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("exec", program = %req.program);
        async {
            let env: BTreeMap<String, String> = req.env.into_iter().collect();
            let exec = ExecRequest::validate(
                &self.inner.allow,
                &req.program,
                req.args,
                env,
                req.stdin,
                req.timeout_seconds,
            )?;
            let out = exec.run().await?;
            info!(program = %exec.program.display(), code = out.code, "program ran");
            Ok::<_, AgentError>(pb::ExecResponse {
                exit_code: out.code,
                stdout: out.stdout,
                stderr: out.stderr,
                timed_out: out.timed_out,
                program: exec.program.display().to_string(),
            })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn create_csr(
        &self,
        req: Request<pb::CreateCsrRequest>,
    ) -> AgentResult<pb::CreateCsrResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("create_csr", key = %req.key_path);
        async {
            let path = host_path(&req.key_path)?;
            let (_, real) = self.fs().resolve(&path)?;
            let algo = match pb::KeyAlgorithm::try_from(req.algorithm) {
                Ok(pb::KeyAlgorithm::Unspecified | pb::KeyAlgorithm::EcdsaP256) => {
                    csr::KeyAlgorithm::EcdsaP256
                }
                Ok(pb::KeyAlgorithm::Rsa2048) => csr::KeyAlgorithm::Rsa2048,
                Err(_) => {
                    return Err(AgentError::Invalid(format!(
                        "unknown key algorithm {}",
                        req.algorithm
                    )))
                }
            };
            let ips = req
                .ip_addresses
                .iter()
                .map(|a| {
                    a.parse::<std::net::IpAddr>()
                        .map_err(|_| AgentError::Invalid(format!("invalid IP address {a:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let org = (!req.organization.is_empty()).then_some(req.organization.as_str());
            let out = csr::generate_key_and_csr(
                &real,
                algo,
                &req.common_name,
                org,
                &req.dns_names,
                &ips,
                req.rotate,
            )?;
            info!(key = %path, new_key = out.new_key, "certificate request created");
            Ok::<_, AgentError>(pb::CreateCsrResponse {
                csr_pem: out.csr_pem,
                new_key: out.new_key,
            })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn install_certificate(
        &self,
        req: Request<pb::InstallCertificateRequest>,
    ) -> AgentResult<pb::InstallCertificateResponse> {
        self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let span = info_span!("install_certificate", cert = %req.cert_path);
        async {
            if secrets::holds_private_key(req.cert_pem.as_bytes())
                || secrets::holds_private_key(req.ca_pem.as_bytes())
            {
                return Err(AgentError::Invalid(
                    "refusing a certificate bundle that carries a private key".into(),
                ));
            }
            let cert = host_path(&req.cert_path)?;
            let key = host_path(&req.key_path)?;
            let (_, cert_real) = self.fs().resolve(&cert)?;
            let (_, key_real) = self.fs().resolve(&key)?;
            let mut changed = csr::install_certificate(&cert_real, &req.cert_pem, &key_real)?;
            if !req.ca_path.is_empty() {
                let ca = host_path(&req.ca_path)?;
                let (_, ca_real) = self.fs().resolve(&ca)?;
                changed |= csr::install_ca_certificate(&ca_real, &req.ca_pem, &req.cert_pem)?;
            }
            Ok::<_, AgentError>(pb::InstallCertificateResponse { changed })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> AgentResult<pb::WhoAmIResponse> {
        let caller = self.inner.policy.admit(&req)?;
        Ok(Response::new(pb::WhoAmIResponse {
            hostname: crate::facts::hostname(self.fs()),
            enrolled: self.inner.identity.is_enrolled(),
            serving_cert_pem: std::fs::read_to_string(self.inner.identity.cert_path())
                .unwrap_or_default(),
            serial: caller.serial_hex(),
            common_name: caller.common_name,
            role: caller.role.as_str().to_string(),
            trusted_ca_pins: self.inner.tls.bundle().pins(),
        }))
    }

    async fn install_trust_bundle(
        &self,
        req: Request<pb::InstallTrustBundleRequest>,
    ) -> AgentResult<pb::InstallTrustBundleResponse> {
        let caller = self.inner.policy.admit(&req)?;
        let caller_der = req
            .peer_certs()
            .and_then(|c| c.first().map(|d| d.as_ref().to_vec()))
            .unwrap_or_default();
        let req = req.into_inner();
        let _held = self.inner.identity_lock.lock().await;
        let result = (|| {
            let offered = trust::parse_bundle(&req.bundle_pem)?;
            let current = self.inner.tls.bundle().get();
            let held = self.inner.policy.revocations().held();
            trust::check_install(&Offer {
                current: &current,
                offered: &offered,
                endorsements_pem: &req.endorsements_pem,
                caller_der: &caller_der,
                held_crl: held.as_ref().map(|(pem, g)| (pem.as_str(), *g)),
            })?;
            let changed = self.inner.identity.write_bundle(&offered)?;
            if changed || current != offered {
                self.inner.tls.reload()?;
            }
            let pins = self.inner.tls.bundle().pins();
            info!(caller = %caller.common_name, changed, trusted = ?pins, "InstallTrustBundle");
            Ok::<_, AgentError>(pb::InstallTrustBundleResponse {
                changed,
                trusted_ca_pins: pins,
            })
        })();
        result.map(Response::new).map_err(Status::from)
    }

    async fn create_serving_csr(
        &self,
        req: Request<pb::CreateServingCsrRequest>,
    ) -> AgentResult<pb::CreateCsrResponse> {
        let caller = self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let _held = self.inner.identity_lock.lock().await;
        let result = (|| {
            let algo = match pb::KeyAlgorithm::try_from(req.algorithm) {
                Ok(pb::KeyAlgorithm::Unspecified | pb::KeyAlgorithm::EcdsaP256) => {
                    csr::KeyAlgorithm::EcdsaP256
                }
                Ok(pb::KeyAlgorithm::Rsa2048) => csr::KeyAlgorithm::Rsa2048,
                Err(_) => {
                    return Err(AgentError::Invalid(format!(
                        "unknown key algorithm {}",
                        req.algorithm
                    )))
                }
            };
            let ips = req
                .ip_addresses
                .iter()
                .map(|a| {
                    a.parse::<std::net::IpAddr>()
                        .map_err(|_| AgentError::Invalid(format!("invalid IP address {a:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !self.inner.identity.is_enrolled() {
                return Err(crate::tls::TlsError::NotEnrolled.into());
            }
            let out = csr::generate_key_and_csr(
                &self.inner.identity.pending_key_path(),
                algo,
                &crate::facts::hostname(self.fs()),
                None,
                &req.dns_names,
                &ips,
                false,
            )?;
            info!(caller = %caller.common_name, new_key = out.new_key, "serving certificate request created");
            Ok::<_, AgentError>(pb::CreateCsrResponse {
                csr_pem: out.csr_pem,
                new_key: out.new_key,
            })
        })();
        result.map(Response::new).map_err(Status::from)
    }

    async fn install_serving_certificate(
        &self,
        req: Request<pb::InstallServingCertificateRequest>,
    ) -> AgentResult<pb::InstallServingCertificateResponse> {
        let caller = self.inner.policy.admit(&req)?;
        let req = req.into_inner();
        let _held = self.inner.identity_lock.lock().await;
        let result = (|| {
            let bundle = self.inner.tls.bundle().get();
            let changed = self
                .inner
                .identity
                .install_serving(&req.cert_pem, &bundle)?;
            // Also when unchanged: a reload that failed after an earlier install is retried.
            self.inner.tls.reload()?;
            info!(caller = %caller.common_name, changed, "InstallServingCertificate");
            Ok::<_, AgentError>(pb::InstallServingCertificateResponse { changed })
        })();
        result.map(Response::new).map_err(Status::from)
    }

    async fn install_revocations(
        &self,
        req: Request<pb::InstallRevocationsRequest>,
    ) -> AgentResult<pb::InstallRevocationsResponse> {
        let caller = self.inner.policy.admit(&req)?;
        let crl_pem = req.into_inner().crl_pem;
        let (generation, changed, revoked) = self
            .inner
            .policy
            .revocations()
            .install(&crl_pem)
            .map_err(AgentError::from)?;
        info!(caller = %caller.common_name, generation, changed, revoked, "InstallRevocations");
        Ok(Response::new(pb::InstallRevocationsResponse {
            generation,
            changed,
            revoked: revoked as u32,
        }))
    }
}

fn wiped_pb(c: datadirs::WipedCopy) -> pb::WipedDataDir {
    pb::WipedDataDir {
        path: c.path.to_string(),
        data_dir: c.data_dir,
        bytes: c.bytes,
        moved_unix_ms: c.moved_unix_ms,
    }
}
