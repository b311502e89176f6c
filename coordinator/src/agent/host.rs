//! [`HostAgent`]: one host's agent, connected, with the coordinator's vocabulary.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use haop_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::{connect, AgentError, Client};
use crate::trust::Trust;

/// A connected agent and the name of its host. Cheap to clone (one multiplexed channel); every
/// method takes `&self` and may run concurrently with the others.
#[derive(Debug, Clone)]
pub struct HostAgent {
    host: String,
    client: Client,
}

impl HostAgent {
    /// Connects to the agent of `host` at `endpoint` over mTLS with haop's admin identity.
    pub async fn connect(
        trust: &Trust,
        host: &str,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<HostAgent, AgentError> {
        let client =
            connect(trust, endpoint, timeout)
                .await
                .map_err(|source| AgentError::Connect {
                    host: host.to_string(),
                    source,
                })?;
        Ok(HostAgent::new(host, client))
    }

    /// Wraps an already connected client (another identity, a test's in-process agent).
    pub fn new(host: &str, client: Client) -> HostAgent {
        HostAgent {
            host: host.to_string(),
            client,
        }
    }

    /// The inventory name of the host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The raw client, for the few callers that stream or need a request field the facade
    /// does not expose.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one RPC; a failure becomes an [`AgentError`] naming this host and `rpc`.
    pub async fn call<T, F, Fut>(&self, rpc: &'static str, f: F) -> Result<T, AgentError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        f(self.client.clone())
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| AgentError::from_status(&self.host, rpc, s))
    }

    /// The agent's hostname and identity.
    pub async fn who_am_i(&self) -> Result<pb::WhoAmIResponse, AgentError> {
        self.call("WhoAmI", |mut c| async move {
            c.who_am_i(pb::WhoAmIRequest {}).await
        })
        .await
    }

    /// Installs the agent CA's revocation list; answers the generation the agent enforces and
    /// whether it changed.
    pub async fn install_revocations(
        &self,
        crl_pem: &str,
    ) -> Result<pb::InstallRevocationsResponse, AgentError> {
        let crl_pem = crl_pem.to_string();
        self.call("InstallRevocations", |mut c| async move {
            c.install_revocations(pb::InstallRevocationsRequest { crl_pem })
                .await
        })
        .await
    }

    /// Replaces the agent's trust bundle (the CAs it accepts client certificates from) with
    /// `bundle_pem`, each CA it does not trust yet endorsed in `endorsements_pem`.
    pub async fn install_trust_bundle(
        &self,
        bundle_pem: &str,
        endorsements_pem: &str,
    ) -> Result<pb::InstallTrustBundleResponse, AgentError> {
        let req = pb::InstallTrustBundleRequest {
            bundle_pem: bundle_pem.to_string(),
            endorsements_pem: endorsements_pem.to_string(),
        };
        self.call("InstallTrustBundle", |mut c| async move {
            c.install_trust_bundle(req).await
        })
        .await
    }

    /// Has the agent make (or keep) the pending key of its next serving certificate and
    /// answer a CSR for it with these names.
    pub async fn create_serving_csr(
        &self,
        req: pb::CreateServingCsrRequest,
    ) -> Result<pb::CreateCsrResponse, AgentError> {
        self.call("CreateServingCsr", |mut c| async move {
            c.create_serving_csr(req).await
        })
        .await
    }

    /// Puts a new serving certificate in use on the agent; answers `changed`.
    pub async fn install_serving_certificate(&self, cert_pem: &str) -> Result<bool, AgentError> {
        let req = pb::InstallServingCertificateRequest {
            cert_pem: cert_pem.to_string(),
        };
        Ok(self
            .call("InstallServingCertificate", |mut c| async move {
                c.install_serving_certificate(req).await
            })
            .await?
            .changed)
    }

    /// The host's facts (OS, addresses, swap, free space, service manager...).
    pub async fn facts(&self) -> Result<pb::Facts, AgentError> {
        self.call("GetFacts", |mut c| async move {
            c.get_facts(pb::GetFactsRequest {}).await
        })
        .await
    }

    /// A file's text and mode; `None` when it does not exist.
    pub async fn read_text(&self, path: &str) -> Result<Option<(String, u32)>, AgentError> {
        let r = self
            .read(pb::ReadFileRequest {
                path: path.to_string(),
                max_bytes: 0,
                certificates_only: false,
            })
            .await?;
        Ok(r.map(|r| (String::from_utf8_lossy(&r.content).into_owned(), r.mode)))
    }

    /// A file as the agent answers it; `None` when it does not exist.
    pub async fn read(
        &self,
        req: pb::ReadFileRequest,
    ) -> Result<Option<pb::ReadFileResponse>, AgentError> {
        match self
            .call("ReadFile", |mut c| async move { c.read_file(req).await })
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What is at `path` (never its content).
    pub async fn stat(&self, path: &str) -> Result<pb::StatResponse, AgentError> {
        let path = path.to_string();
        self.call("Stat", |mut c| async move {
            c.stat(pb::StatRequest { path, tree: false }).await
        })
        .await
    }

    /// What is at `path` with, for a directory, the bytes of the files below it; the
    /// filesystem's room is in the answer too (see `StatResponse`).
    pub async fn stat_tree(&self, path: &str) -> Result<pb::StatResponse, AgentError> {
        let path = path.to_string();
        self.call("Stat", |mut c| async move {
            c.stat(pb::StatRequest { path, tree: true }).await
        })
        .await
    }

    /// The moved-aside copies of `unit`'s data directories, newest first.
    pub async fn wiped_data_dirs(&self, unit: &str) -> Result<Vec<pb::WipedDataDir>, AgentError> {
        let unit = unit.to_string();
        Ok(self
            .call("ListWipedDataDirs", |mut c| async move {
                c.list_wiped_data_dirs(pb::WipedDataDirsRequest { unit })
                    .await
            })
            .await?
            .present)
    }

    /// Deletes moved-aside copies of `unit`'s data directories beyond the newest `keep` that
    /// are older than `min_age`.
    pub async fn prune_wiped_data_dirs(
        &self,
        unit: &str,
        keep: u32,
        min_age: Duration,
    ) -> Result<pb::WipedDataDirsResponse, AgentError> {
        let req = pb::PruneWipedDataDirsRequest {
            unit: unit.to_string(),
            keep,
            min_age_seconds: min_age.as_secs(),
        };
        self.call("PruneWipedDataDirs", |mut c| async move {
            c.prune_wiped_data_dirs(req).await
        })
        .await
    }

    /// Whether `path` exists.
    pub async fn exists(&self, path: &str) -> Result<bool, AgentError> {
        Ok(self.stat(path).await?.exists)
    }

    /// Ensures `path` holds `content` with `mode` (parents created); answers `changed`.
    pub async fn write_file(
        &self,
        path: &str,
        content: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<bool, AgentError> {
        self.write(pb::WriteFileRequest {
            path: path.to_string(),
            content: content.into(),
            mode,
            create_parents: true,
            ..Default::default()
        })
        .await
    }

    /// [`write_file`](Self::write_file) with every field of the request.
    pub async fn write(&self, req: pb::WriteFileRequest) -> Result<bool, AgentError> {
        Ok(self
            .call("WriteFile", |mut c| async move { c.write_file(req).await })
            .await?
            .changed)
    }

    /// Ensures `path` is gone; answers `changed`.
    pub async fn remove_file(&self, path: &str) -> Result<bool, AgentError> {
        let path = path.to_string();
        Ok(self
            .call("RemoveFile", |mut c| async move {
                c.remove_file(pb::RemoveFileRequest { path }).await
            })
            .await?
            .changed)
    }

    /// Streams the local file `local` to `path` on the host, 1 MiB at a time (a 2 GiB snapshot
    /// is never held in memory), with its sha256 (taken first, in one pass over the file)
    /// checked by the agent before the file takes its place; answers `changed`. `sent` hears the
    /// bytes sent so far.
    pub async fn upload_file(
        &self,
        path: &str,
        mode: u32,
        local: &std::path::Path,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<bool, AgentError> {
        let local_err = |e: std::io::Error| AgentError::Local {
            host: self.host.clone(),
            path: local.to_path_buf(),
            detail: e.to_string(),
        };
        let (sha256, size) = sha256_of_file(local).await.map_err(local_err)?;
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        // The file read 1 MiB at a time into the stream upload_stream sends; the reader stops
        // when the upload ends early (the channel closes).
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        let reader = async move {
            loop {
                let mut buf = vec![0u8; 1024 * 1024];
                let chunk = read_full(&mut file, &mut buf).await.map(|n| {
                    buf.truncate(n);
                    buf
                });
                let last = matches!(&chunk, Ok(b) if b.is_empty()) || chunk.is_err();
                if last {
                    if let Err(e) = chunk {
                        let _ = tx.send(Err(e)).await;
                    }
                    return;
                }
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        };
        let upload = self.upload_stream(path, mode, &sha256, size, local, rx, sent);
        let (answer, ()) = tokio::join!(upload, reader);
        answer
    }

    /// Streams chunks from `chunks` to `path` on the host, as [`upload_file`](Self::upload_file)
    /// does a local file, when the bytes are produced on the way (a snapshot decrypted as it is
    /// sent): `sha256` and `size` are the whole content's, known beforehand, and the agent
    /// checks them before the file takes its place. A chunk that is an error ends the upload
    /// with that error (naming `local`, where the bytes come from), and the agent keeps
    /// nothing. `sent` hears the bytes sent so far.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_stream(
        &self,
        path: &str,
        mode: u32,
        sha256: &str,
        size: u64,
        local: &std::path::Path,
        mut chunks: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<bool, AgentError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadChunk>(4);
        let header = pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: path.to_string(),
                mode,
                sha256: sha256.to_string(),
                size,
                create_parents: true,
            }),
            data: Vec::new(),
        };
        let rpc = self.call("UploadFile", |mut c| async move {
            c.upload_file(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        let feed = async move {
            if tx.send(header).await.is_err() {
                return Ok(());
            }
            let mut total = 0u64;
            while let Some(chunk) = chunks.recv().await {
                let data = chunk?;
                total += data.len() as u64;
                if tx
                    .send(pb::UploadChunk { header: None, data })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                sent(total);
            }
            Ok::<(), std::io::Error>(())
        };
        let (answer, fed) = tokio::join!(rpc, feed);
        fed.map_err(|e| AgentError::Local {
            host: self.host.clone(),
            path: local.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(answer?.changed)
    }

    /// Streams the file at `path` back from the host (DownloadFile: an encrypted snapshot copy;
    /// the agent refuses anything else), giving each piece to `sink` as it arrives. The
    /// agent's closing sha256 and size must match what arrived, or the call fails: a caller
    /// keeps the bytes only on `Ok`. Answers the sha256 (hex) and size.
    pub async fn download(
        &self,
        path: &str,
        sink: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
    ) -> Result<(String, u64), AgentError> {
        let req = pb::DownloadFileRequest {
            path: path.to_string(),
        };
        let mut stream = self
            .call(
                "DownloadFile",
                |mut c| async move { c.download_file(req).await },
            )
            .await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let local = |detail: String| AgentError::Local {
            host: self.host.clone(),
            path: std::path::PathBuf::from(path),
            detail,
        };
        loop {
            let chunk = stream
                .message()
                .await
                .map_err(|s| AgentError::from_status(&self.host, "DownloadFile", s))?;
            let Some(chunk) = chunk else {
                return Err(local(
                    "the agent's stream ended before its last message".into(),
                ));
            };
            if chunk.last {
                let sha = hex::encode(hasher.finalize());
                if chunk.sha256 != sha || chunk.size != size {
                    return Err(local(format!(
                        "received {size} bytes with sha256 {sha}, the agent sent {} bytes with \
                         sha256 {}",
                        chunk.size, chunk.sha256
                    )));
                }
                return Ok((sha, size));
            }
            hasher.update(&chunk.data);
            size += chunk.data.len() as u64;
            sink(&chunk.data).map_err(|e| local(format!("cannot keep what arrived: {e}")))?;
        }
    }

    /// Ensures the unit file of `name` (and its declared data dirs); answers `changed`.
    pub async fn ensure_unit(
        &self,
        name: &str,
        content: &str,
        data_dirs: &[String],
    ) -> Result<bool, AgentError> {
        let req = pb::EnsureUnitRequest {
            name: name.to_string(),
            content: content.to_string(),
            data_dirs: data_dirs.to_vec(),
        };
        Ok(self
            .call(
                "EnsureUnit",
                |mut c| async move { c.ensure_unit(req).await },
            )
            .await?
            .changed)
    }

    /// Starts, stops, restarts, enables or disables a unit; answers `changed`.
    pub async fn unit_action(&self, name: &str, action: pb::Action) -> Result<bool, AgentError> {
        let req = pb::UnitActionRequest {
            name: name.to_string(),
            action: action as i32,
        };
        Ok(self
            .call(
                "UnitAction",
                |mut c| async move { c.unit_action(req).await },
            )
            .await?
            .changed)
    }

    /// A unit's state as the service manager sees it.
    pub async fn unit_status(&self, name: &str) -> Result<pb::UnitStatus, AgentError> {
        let name = name.to_string();
        self.call("UnitStatus", |mut c| async move {
            c.unit_status(pb::UnitStatusRequest { name }).await
        })
        .await
    }

    /// Ensures a modules-load.d file and loads the modules; answers `changed`.
    pub async fn load_modules(&self, name: &str, modules: &[String]) -> Result<bool, AgentError> {
        let req = pb::LoadModulesRequest {
            name: name.to_string(),
            modules: modules.to_vec(),
        };
        Ok(self
            .call(
                "LoadModules",
                |mut c| async move { c.load_modules(req).await },
            )
            .await?
            .changed)
    }

    /// Ensures a sysctl.d file and applies it; answers `changed`.
    pub async fn apply_sysctl(
        &self,
        name: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<bool, AgentError> {
        let req = pb::ApplySysctlRequest {
            name: name.to_string(),
            values: values.clone().into_iter().collect(),
        };
        Ok(self
            .call(
                "ApplySysctl",
                |mut c| async move { c.apply_sysctl(req).await },
            )
            .await?
            .changed)
    }

    /// Turns swap off and comments it out of fstab; answers `changed`.
    pub async fn disable_swap(&self) -> Result<bool, AgentError> {
        Ok(self
            .call("DisableSwap", |mut c| async move {
                c.disable_swap(pb::DisableSwapRequest {}).await
            })
            .await?
            .changed)
    }

    /// Moves aside (or deletes) the data dir `path` of the stopped `unit`: the agent checks
    /// that the unit is stopped and that `path` is one of its declared data dirs.
    pub async fn wipe_data_dir(
        &self,
        unit: &str,
        path: &str,
        delete: bool,
    ) -> Result<pb::WipeDataDirResponse, AgentError> {
        let req = pb::WipeDataDirRequest {
            unit: unit.to_string(),
            path: path.to_string(),
            delete,
        };
        self.call(
            "WipeDataDir",
            |mut c| async move { c.wipe_data_dir(req).await },
        )
        .await
    }

    /// Runs an allow-listed program (no shell).
    pub async fn exec(&self, req: pb::ExecRequest) -> Result<pb::ExecResponse, AgentError> {
        self.call("Exec", |mut c| async move { c.exec(req).await })
            .await
    }

    /// Has the host make (or keep) a key and answer a CSR for it.
    pub async fn create_csr(
        &self,
        req: pb::CreateCsrRequest,
    ) -> Result<pb::CreateCsrResponse, AgentError> {
        self.call("CreateCsr", |mut c| async move { c.create_csr(req).await })
            .await
    }

    /// Installs a signed certificate (and its CA) next to the key the host made.
    pub async fn install_certificate(
        &self,
        req: pb::InstallCertificateRequest,
    ) -> Result<pb::InstallCertificateResponse, AgentError> {
        self.call("InstallCertificate", |mut c| async move {
            c.install_certificate(req).await
        })
        .await
    }
}

/// The messages of an `UploadFile` of `data` to `path`: the header, then 1 MiB chunks.
pub fn upload_chunks(path: &str, mode: u32, sha256: &str, data: &[u8]) -> Vec<pb::UploadChunk> {
    let mut msgs = vec![pb::UploadChunk {
        header: Some(pb::UploadHeader {
            path: path.to_string(),
            mode,
            sha256: sha256.to_string(),
            size: data.len() as u64,
            create_parents: true,
        }),
        data: Vec::new(),
    }];
    msgs.extend(data.chunks(1024 * 1024).map(|chunk| pb::UploadChunk {
        header: None,
        data: chunk.to_vec(),
    }));
    msgs
}

/// The sha256 (hex) and size of a local file, read in 1 MiB blocks.
pub async fn sha256_of_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = read_full(&mut file, &mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Fills `buf` from `file` unless the file ends first; answers how much was read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
