//! The state dir during a rotation of the agent CA: the phase file, which files are the CAs and
//! haop's admin identity at each moment, and the final switch.
//!
//! `haop certs rotate-ca --agent` ([`crate::certs::rotate_agent`]) moves the control channel
//! to a new CA in phases. While it runs, the state dir holds both CAs side by side:
//!
//! ```text
//! pki/agent-ca.crt, .key            the old CA: untouched until the end
//! pki/agent-ca-next.crt, .key       the new CA (key 0600), from the prepare phase
//! pki/haop-admin-next.crt, .key     haop's admin identity from the new CA, from reissue
//! pki/agent-ca-rotation.json        this phase file (the [`Journal`]), written atomically
//! pki/retired/agent-ca-<pin>.crt    the old CA's certificate, kept for the record at the end
//! ```
//!
//! Every command that talks to agents reads the phase file through [`crate::trust::Trust`]:
//! until the drop phase is done it trusts the old and the new CA for agents' serving
//! certificates ([`agent_roots_pem`]), and it presents the newest admin identity whose key and
//! certificate match ([`admin_paths`]). So at every instant each agent and the coordinator
//! trust each other, whichever phase a killed rotation stopped in.
//!
//! The end ([`finalize`]) renames the new CA's and the new admin identity's files over the old
//! ones, after the old CA's certificate was copied to `retired/` and its key deleted. Each step
//! is a rename or a removal, and the loaders here take the first *matching* pair among the
//! names a pair can have at any step, so a state dir cut between two renames still loads, and
//! `finalize` run again continues from where it stopped; the phase file goes last.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{io, now_unix, pki_dir, TrustError, ADMIN_CERT};
use crate::pki::{cert_pin, key_matches_cert, CertificateAuthority, AGENT_CA};

/// The phase file, in `<state-dir>/pki/`.
pub const JOURNAL_FILE: &str = "agent-ca-rotation.json";
/// File stem of the new agent CA while the rotation runs.
pub const NEXT_CA: &str = "agent-ca-next";
/// File stem of haop's admin identity from the new CA while the rotation runs.
pub const NEXT_ADMIN: &str = "haop-admin-next";
/// Where retired CA certificates are kept, under `<state-dir>/pki/`.
pub const RETIRED_DIR: &str = "retired";

/// The phases of a rotation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The new CA exists beside the old; haop trusts both for agents' serving certificates.
    Prepare,
    /// Every agent trusts both for client certificates.
    Trust,
    /// Every agent serves a certificate from the new CA; haop's admin identity and the agent
    /// revocation list are the new CA's.
    Reissue,
    /// Every agent trusts the new CA alone.
    Drop,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Prepare, Phase::Trust, Phase::Reissue, Phase::Drop];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Trust => "trust",
            Phase::Reissue => "reissue",
            Phase::Drop => "drop",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A phase done, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseDone {
    pub phase: Phase,
    pub at_unix: i64,
}

/// `pki/agent-ca-rotation.json`: which CAs, and the phases done so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// `sha256:<hex>` of the old CA's public key (the enrollment pin before).
    pub old_pin: String,
    /// Of the new CA's (the enrollment pin after).
    pub new_pin: String,
    /// When the old CA became valid: an agent-channel identity issued after it was issued by
    /// it, and stops working at the end.
    pub old_not_before_unix: i64,
    pub started_unix: i64,
    /// The phases done, in order.
    #[serde(default)]
    pub done: Vec<PhaseDone>,
}

impl Journal {
    /// A rotation from the CA `old_pin` to `new_pin`, nothing done yet.
    pub fn new(old_pin: String, new_pin: String, old_not_before_unix: i64) -> Journal {
        Journal {
            old_pin,
            new_pin,
            old_not_before_unix,
            started_unix: now_unix(),
            done: Vec::new(),
        }
    }

    fn path(state_dir: &Path) -> PathBuf {
        pki_dir(state_dir).join(JOURNAL_FILE)
    }

    /// The phase file of `state_dir`; `None` when no rotation runs.
    pub fn load(state_dir: &Path) -> Result<Option<Journal>, TrustError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| TrustError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Writes the phase file atomically and durably.
    pub fn save(&self, state_dir: &Path) -> Result<(), TrustError> {
        let data = serde_json::to_vec_pretty(self).expect("the journal serializes");
        Ok(crate::fsio::write_atomic(
            &Self::path(state_dir),
            &data,
            0o644,
        )?)
    }

    /// Whether `phase` is done.
    pub fn completed(&self, phase: Phase) -> bool {
        self.done.iter().any(|d| d.phase == phase)
    }

    /// The first phase not done; `None` when only the final switch is left.
    pub fn next_phase(&self) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| !self.completed(*p))
    }

    /// Records `phase` as done (again: no change). Phases are done in order: recording one
    /// whose predecessor is not done is a bug.
    pub fn complete(&mut self, phase: Phase) {
        if self.completed(phase) {
            return;
        }
        assert_eq!(
            self.next_phase(),
            Some(phase),
            "rotation phases are done in order"
        );
        self.done.push(PhaseDone {
            phase,
            at_unix: now_unix(),
        });
    }

    /// What the phase file says, for messages: "after trust", "before prepare".
    pub fn describe(&self) -> String {
        match self.done.last() {
            Some(d) => format!("{} done", d.phase),
            None => "started".to_string(),
        }
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The first of `candidates` (certificate, key) whose two files exist and match, and whose
/// certificate has the pin `pin` when one is asked for.
fn first_pair(candidates: &[(PathBuf, PathBuf)], pin: Option<&str>) -> Option<(PathBuf, PathBuf)> {
    candidates.iter().find_map(|(cert, key)| {
        let (c, k) = (read(cert)?, read(key)?);
        let ok = key_matches_cert(&k, &c) && pin.is_none_or(|p| cert_pin(&c).as_deref() == Some(p));
        ok.then(|| (cert.clone(), key.clone()))
    })
}

fn stem_pair(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    )
}

/// Where a pair of files `base` and its `next` may be found at any step of the switch: both
/// new, the new key already renamed, both renamed.
fn switch_candidates(dir: &Path, base: &str, next: &str) -> Vec<(PathBuf, PathBuf)> {
    let (crt, key) = stem_pair(dir, base);
    let (next_crt, next_key) = stem_pair(dir, next);
    vec![
        (next_crt.clone(), next_key),
        (next_crt, key.clone()),
        (crt, key),
    ]
}

/// haop's admin identity to present to agents: the newest pair that matches (the new CA's
/// once it was issued, through every step of the switch), else `pki/haop-admin.*`.
pub fn admin_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = pki_dir(state_dir);
    first_pair(&switch_candidates(&dir, ADMIN_CERT, NEXT_ADMIN), None)
        .unwrap_or_else(|| stem_pair(&dir, ADMIN_CERT))
}

/// The new CA of the rotation `journal`, wherever the switch left its files.
pub fn load_new_ca(
    state_dir: &Path,
    journal: &Journal,
) -> Result<CertificateAuthority, TrustError> {
    let dir = pki_dir(state_dir);
    let (cert, key) = first_pair(
        &switch_candidates(&dir, AGENT_CA, NEXT_CA),
        Some(&journal.new_pin),
    )
    .ok_or_else(|| TrustError::RotationState {
        dir: dir.clone(),
        reason: format!(
            "the new agent CA ({}) is not in {} or {} (with its key)",
            journal.new_pin, NEXT_CA, AGENT_CA
        ),
    })?;
    Ok(CertificateAuthority::load_pair(NEXT_CA, cert, key)?)
}

/// The old CA of the rotation `journal`, while its key is still there.
pub fn load_old_ca(
    state_dir: &Path,
    journal: &Journal,
) -> Result<CertificateAuthority, TrustError> {
    let dir = pki_dir(state_dir);
    let (cert, key) = stem_pair(&dir, AGENT_CA);
    if read(&cert).and_then(|c| cert_pin(&c)).as_deref() != Some(journal.old_pin.as_str()) {
        return Err(TrustError::RotationState {
            dir,
            reason: format!("the old agent CA ({}) is gone", journal.old_pin),
        });
    }
    Ok(CertificateAuthority::load_pair(AGENT_CA, cert, key)?)
}

/// The CA certificates haop trusts for agents' serving certificates: the agent CA; during a
/// rotation the old and the new until every agent dropped the old, then the new alone. Reads
/// no key, so a machine with only a reader identity can use it.
pub fn agent_roots_pem(state_dir: &Path) -> Result<String, TrustError> {
    let dir = pki_dir(state_dir);
    let (crt, _) = stem_pair(&dir, AGENT_CA);
    let (next_crt, _) = stem_pair(&dir, NEXT_CA);
    let read_cert = |p: &Path| std::fs::read_to_string(p).map_err(io("read", p));
    let Some(journal) = Journal::load(state_dir)? else {
        return read_cert(&crt);
    };
    let next = read(&next_crt);
    if journal.completed(Phase::Drop) {
        // The new CA alone, under either name.
        return match next {
            Some(pem) if cert_pin(&pem).as_deref() == Some(journal.new_pin.as_str()) => Ok(pem),
            _ => read_cert(&crt),
        };
    }
    let mut roots = read_cert(&crt)?;
    if let Some(next) = next {
        if !roots.ends_with('\n') {
            roots.push('\n');
        }
        roots.push_str(&next);
    }
    Ok(roots)
}

/// The CA that signs the agent channel's revocation lists now: the new one once every agent
/// trusts it (the trust phase done), the old one before.
pub fn crl_signer(state_dir: &Path) -> Result<CertificateAuthority, TrustError> {
    match Journal::load(state_dir)? {
        Some(j) if j.completed(Phase::Trust) => load_new_ca(state_dir, &j),
        Some(j) => load_old_ca(state_dir, &j),
        None => Ok(CertificateAuthority::load(&pki_dir(state_dir), AGENT_CA)?),
    }
}

/// The old CA's certificate kept for the record: `pki/retired/agent-ca-<first 16 hex digits of
/// its pin>.crt`.
pub fn retired_path(state_dir: &Path, old_pin: &str) -> PathBuf {
    let hex = old_pin.trim_start_matches("sha256:");
    pki_dir(state_dir)
        .join(RETIRED_DIR)
        .join(format!("{AGENT_CA}-{}.crt", &hex[..hex.len().min(16)]))
}

fn rename(from: &Path, to: &Path) -> Result<(), TrustError> {
    std::fs::rename(from, to).map_err(io("rename", from))?;
    sync_dir(to)
}

fn sync_dir(path: &Path) -> Result<(), TrustError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// The end of a rotation whose drop phase is done: the old CA's certificate to `retired/`, its
/// key deleted, the new CA and the new admin identity under the usual names, the phase file
/// removed. Each step checks what is there first, so a run cut anywhere continues. Answers
/// where the old certificate went.
pub fn finalize(state_dir: &Path, journal: &Journal) -> Result<PathBuf, TrustError> {
    assert!(
        journal.completed(Phase::Drop),
        "finalize only after the drop phase"
    );
    let dir = pki_dir(state_dir);
    // The new CA must be whole before anything of the old goes.
    load_new_ca(state_dir, journal)?;
    let (crt, key) = stem_pair(&dir, AGENT_CA);
    let (next_crt, next_key) = stem_pair(&dir, NEXT_CA);
    let retired = retired_path(state_dir, &journal.old_pin);
    let old_cert = read(&crt).filter(|c| cert_pin(c).as_deref() == Some(journal.old_pin.as_str()));
    if let Some(old_cert) = &old_cert {
        if !retired.exists() {
            crate::fsio::create_private_dir(retired.parent().expect("retired/ has a parent"))?;
            crate::fsio::write_atomic(&retired, old_cert.as_bytes(), 0o644)?;
        }
        // The old key: deleted (it matches the old certificate still in place).
        if read(&key).is_some_and(|k| key_matches_cert(&k, old_cert)) {
            std::fs::remove_file(&key).map_err(io("remove", &key))?;
            sync_dir(&key)?;
            info!(key = %key.display(), "old agent CA key deleted");
        }
    }
    if next_key.exists() {
        rename(&next_key, &key)?;
    }
    if next_crt.exists() {
        rename(&next_crt, &crt)?;
    }
    let (admin_crt, admin_key) = stem_pair(&dir, ADMIN_CERT);
    let (next_admin_crt, next_admin_key) = stem_pair(&dir, NEXT_ADMIN);
    if next_admin_key.exists() {
        rename(&next_admin_key, &admin_key)?;
    }
    if next_admin_crt.exists() {
        rename(&next_admin_crt, &admin_crt)?;
    }
    // Everything in place: the new CA loads under its own name.
    CertificateAuthority::load(&dir, AGENT_CA)?;
    let path = Journal::path(state_dir);
    std::fs::remove_file(&path).map_err(io("remove", &path))?;
    sync_dir(&path)?;
    info!(pin = %journal.new_pin, "agent CA rotation finished");
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ExpectedNames, KeyAlgorithm, Profile, SigningRequest, ROLE_ADMIN};
    use crate::trust::{init, InitOptions, Trust};
    use std::time::Duration;

    #[test]
    fn the_phase_file_records_phases_in_order_and_survives_a_reload() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(pki_dir(state.path())).unwrap();
        assert_eq!(Journal::load(state.path()).unwrap(), None);
        let mut j = Journal::new("sha256:aa".into(), "sha256:bb".into(), 5);
        assert_eq!(j.next_phase(), Some(Phase::Prepare));
        assert_eq!(j.describe(), "started");
        j.complete(Phase::Prepare);
        j.complete(Phase::Prepare);
        j.complete(Phase::Trust);
        j.save(state.path()).unwrap();
        let back = Journal::load(state.path()).unwrap().unwrap();
        assert_eq!(back, j);
        assert_eq!(back.next_phase(), Some(Phase::Reissue));
        assert!(back.completed(Phase::Trust) && !back.completed(Phase::Reissue));
        assert_eq!(back.describe(), "trust done");
        let text = std::fs::read_to_string(pki_dir(state.path()).join(JOURNAL_FILE)).unwrap();
        assert!(text.contains("\"phase\": \"trust\""), "{text}");
        // No temp file beside it.
        let names: Vec<_> = std::fs::read_dir(pki_dir(state.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::write(pki_dir(state.path()).join(JOURNAL_FILE), "{").unwrap();
        assert!(matches!(
            Journal::load(state.path()),
            Err(TrustError::Corrupt { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "in order")]
    fn a_phase_cannot_be_skipped() {
        let mut j = Journal::new("a".into(), "b".into(), 0);
        j.complete(Phase::Trust);
    }

    /// A state dir in the middle of a rotation: the new CA and admin identity made, every phase
    /// done; the switch not begun.
    fn rotated(state: &Path) -> (Journal, String, String) {
        init(state, InitOptions::default()).unwrap();
        let dir = pki_dir(state);
        let old = CertificateAuthority::load(&dir, AGENT_CA).unwrap();
        let new = CertificateAuthority::create(
            &dir,
            NEXT_CA,
            "haop agent CA 2",
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(3600 * 24),
        )
        .unwrap();
        let mut j = Journal::new(
            old.sha256_pin(),
            new.sha256_pin(),
            old.not_before().unix_timestamp(),
        );
        j.complete(Phase::Prepare);
        j.save(state).unwrap();
        // Trusted: both.
        let roots = agent_roots_pem(state).unwrap();
        assert_eq!(roots.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(
            crl_signer(state).unwrap().sha256_pin(),
            old.sha256_pin(),
            "the old CA signs until every agent trusts the new"
        );
        j.complete(Phase::Trust);
        j.save(state).unwrap();
        assert_eq!(crl_signer(state).unwrap().sha256_pin(), new.sha256_pin());
        let admin = new
            .issue_local(
                &dir,
                NEXT_ADMIN,
                KeyAlgorithm::EcdsaP256,
                &SigningRequest {
                    profile: Profile::Client,
                    lifetime: Duration::from_secs(3600),
                    expected: ExpectedNames::none(),
                    organization: Some(ROLE_ADMIN.into()),
                    common_name: "haop".into(),
                },
            )
            .unwrap();
        j.complete(Phase::Reissue);
        j.complete(Phase::Drop);
        j.save(state).unwrap();
        (j, old.cert_pem().to_string(), admin.cert_pem)
    }

    #[test]
    fn a_switch_cut_at_any_step_loads_and_is_finished_by_running_it_again() {
        // Each step of finalize, simulated by hand, then the real one from there.
        for cut in 0..=6 {
            let state = tempfile::tempdir().unwrap();
            let st = state.path();
            let (j, old_cert, new_admin) = rotated(st);
            let dir = pki_dir(st);
            let (crt, key) = stem_pair(&dir, AGENT_CA);
            let (next_crt, next_key) = stem_pair(&dir, NEXT_CA);
            let (admin_crt, admin_key) = stem_pair(&dir, ADMIN_CERT);
            let (next_admin_crt, next_admin_key) = stem_pair(&dir, NEXT_ADMIN);
            let retire = || {
                let r = retired_path(st, &j.old_pin);
                std::fs::create_dir_all(r.parent().unwrap()).unwrap();
                std::fs::write(r, &old_cert).unwrap();
            };
            let steps: [&dyn Fn(); 6] = [
                &retire,
                &|| std::fs::remove_file(&key).unwrap(),
                &|| std::fs::rename(&next_key, &key).unwrap(),
                &|| std::fs::rename(&next_crt, &crt).unwrap(),
                &|| std::fs::rename(&next_admin_key, &admin_key).unwrap(),
                &|| std::fs::rename(&next_admin_crt, &admin_crt).unwrap(),
            ];
            for step in &steps[..cut] {
                step();
            }
            // Loadable at this step: the new CA, new-only roots, the new admin.
            let trust = Trust::load(st).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            assert_eq!(trust.agent_ca.sha256_pin(), j.new_pin, "cut {cut}");
            assert_eq!(agent_roots_pem(st).unwrap().matches("BEGIN").count(), 1);
            assert_eq!(cert_pin(&agent_roots_pem(st).unwrap()).unwrap(), j.new_pin);
            assert_eq!(trust.admin_cert_pem(), new_admin, "cut {cut}");

            let retired = finalize(st, &j).unwrap();
            assert_eq!(std::fs::read_to_string(&retired).unwrap(), old_cert);
            assert!(Journal::load(st).unwrap().is_none());
            for gone in [&next_crt, &next_key, &next_admin_crt, &next_admin_key] {
                assert!(!gone.exists(), "cut {cut}: {}", gone.display());
            }
            let ca = CertificateAuthority::load(&dir, AGENT_CA).unwrap();
            assert_eq!(ca.sha256_pin(), j.new_pin);
            assert_eq!(std::fs::read_to_string(&admin_crt).unwrap(), new_admin);
            // The old key is nowhere in the state dir.
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if let Ok(text) = std::fs::read_to_string(&p) {
                    assert!(
                        !(crate::pki::is_private_key_pem(text.as_bytes())
                            && key_matches_cert(&text, &old_cert)),
                        "cut {cut}: {} holds the old key",
                        p.display()
                    );
                }
            }
            let trust = Trust::load(st).unwrap();
            assert!(trust.rotation().is_none());
        }
    }
}
