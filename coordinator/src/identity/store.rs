//! `<state-dir>/identities.json`: every identity issued, and each channel's CRL number.
//!
//! Read-modify-writes hold [`crate::fsio::FileLock`] on `identities.lock`, so two `haop
//! identity` commands cannot lose each other's records or hand out one CRL number twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::info;

use super::{io, normalize_serial_hex, Channel, IdentityError, IdentityRole};
use crate::fsio::FileLock;
use crate::pki::{
    inspect, CertificateAuthority, ExpectedNames, KeyAlgorithm, Profile, SigningRequest, AGENT_CA,
    ETCD_CA, ROLE_ADMIN, ROLE_READER,
};
use crate::trust::{format_unix, pki_dir, ADMIN_CERT, ETCD_CLIENT_CERT};

const STORE_FILE: &str = "identities.json";
const LOCK_FILE: &str = "identities.lock";

/// One identity as issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub name: String,
    pub channel: Channel,
    pub role: IdentityRole,
    /// Lowercase hex, no leading zero bytes.
    pub serial: String,
    pub issued_unix: i64,
    pub not_after_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_unix: Option<i64>,
    /// haop's own certificate (listed, never revoked); not stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub built_in: bool,
    /// `sha256:<hex>` of the public key of the CA that issued it (absent in records written
    /// before it was kept): after a rotation of that channel's CA, the identity no longer works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pin: Option<String>,
}

impl IdentityRecord {
    /// Neither revoked nor expired at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_unix.is_none() && self.not_after_unix > now
    }

    /// One word for `haop identity list`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_unix.is_some() {
            "revoked"
        } else if self.not_after_unix <= now {
            "expired"
        } else {
            "valid"
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    /// The CRL number last issued for each channel (0: none yet).
    #[serde(default)]
    agent_crl_number: u64,
    #[serde(default)]
    etcd_crl_number: u64,
    #[serde(default)]
    identities: Vec<IdentityRecord>,
}

impl StoreFile {
    fn number(&mut self, channel: Channel) -> &mut u64 {
        match channel {
            Channel::Agent => &mut self.agent_crl_number,
            Channel::Etcd => &mut self.etcd_crl_number,
        }
    }
}

/// What `issue` is asked for.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub name: String,
    pub channel: Channel,
    pub role: IdentityRole,
    pub ttl: Duration,
    /// Where the key, the certificate and the CA certificate are written.
    pub out_dir: PathBuf,
    pub algorithm: KeyAlgorithm,
}

/// What `issue` wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    pub record: IdentityRecord,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_path: PathBuf,
}

/// The revocation `revoke` made (or found made).
#[derive(Debug, Clone)]
pub struct Revoked {
    pub record: IdentityRecord,
    /// False when it was revoked before (the list is pushed again all the same).
    pub now: bool,
    pub generation: u64,
}

/// The identity store of a state dir.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    state_dir: PathBuf,
    path: PathBuf,
    lock: PathBuf,
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The CA file stem of a channel.
pub fn ca_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Agent => AGENT_CA,
        Channel::Etcd => ETCD_CA,
    }
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    if !crate::pki::is_file_stem(name) {
        return Err(IdentityError::InvalidName { name: name.into() });
    }
    if name == "haop" || name.starts_with("kube-") || name.ends_with("-ca") {
        return Err(IdentityError::Reserved { name: name.into() });
    }
    Ok(())
}

impl IdentityStore {
    pub fn new(state_dir: &Path) -> IdentityStore {
        IdentityStore {
            state_dir: state_dir.to_path_buf(),
            path: state_dir.join(STORE_FILE),
            lock: state_dir.join(LOCK_FILE),
        }
    }

    fn load(&self) -> Result<StoreFile, IdentityError> {
        match std::fs::read(&self.path) {
            Ok(d) => serde_json::from_slice(&d).map_err(|source| IdentityError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreFile::default()),
            Err(e) => Err(io("read", &self.path)(e)),
        }
    }

    fn save(&self, file: &StoreFile) -> Result<(), IdentityError> {
        let data = serde_json::to_vec_pretty(file).expect("identities serialize");
        Ok(crate::fsio::write_private(&self.path, &data)?)
    }

    fn locked(&self) -> Result<FileLock, IdentityError> {
        Ok(FileLock::exclusive(&self.lock)?)
    }

    /// The CRL number last issued for `channel` (0: never).
    pub fn generation(&self, channel: Channel) -> Result<u64, IdentityError> {
        Ok(*self.load()?.number(channel))
    }

    /// Serials revoked on `channel` whose certificates have not expired (an expired
    /// certificate is refused by TLS anyway), with when each was revoked.
    pub fn revoked_serials(
        &self,
        channel: Channel,
    ) -> Result<Vec<(Vec<u8>, OffsetDateTime)>, IdentityError> {
        let now = now_unix();
        Ok(self
            .load()?
            .identities
            .into_iter()
            .filter(|r| r.channel == channel && r.not_after_unix > now)
            .filter_map(|r| {
                let at = r.revoked_unix?;
                let serial = hex::decode(&r.serial).ok()?;
                Some((
                    serial,
                    OffsetDateTime::from_unix_timestamp(at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                ))
            })
            .collect())
    }

    /// Issues a certificate for a key made here, written to `req.out_dir` as `NAME.key` (0600),
    /// `NAME.crt` and the CA's certificate (`agent-ca.crt` or `etcd-ca.crt`), and records it.
    /// Refuses an active identity of the same name and channel, and files already there.
    pub fn issue(&self, req: &IssueRequest) -> Result<Issued, IdentityError> {
        check_name(&req.name)?;
        crate::pki::check_lifetime(req.ttl).map_err(|reason| IdentityError::Lifetime {
            value: format!("{:?}", req.ttl),
            reason: reason.into(),
        })?;
        let _lock = self.locked()?;
        let mut file = self.load()?;
        let now = now_unix();
        if let Some(r) = file
            .identities
            .iter()
            .find(|r| r.name == req.name && r.channel == req.channel && r.is_active(now))
        {
            return Err(IdentityError::Exists {
                name: r.name.clone(),
                channel: r.channel.as_str(),
                serial: r.serial.clone(),
                until: format_unix(r.not_after_unix),
            });
        }
        if req.channel == Channel::Agent {
            if let Some(j) = crate::trust::rotation::Journal::load(&self.state_dir)? {
                return Err(crate::trust::TrustError::Rotating {
                    what: "an agent-channel identity",
                    phase: j.describe(),
                }
                .into());
            }
        }
        let ca = CertificateAuthority::load(&pki_dir(&self.state_dir), ca_name(req.channel))?;
        let cert_path = req.out_dir.join(format!("{}.crt", req.name));
        let key_path = req.out_dir.join(format!("{}.key", req.name));
        let ca_path = req.out_dir.join(format!("{}.crt", ca_name(req.channel)));
        for p in [&cert_path, &key_path] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(IdentityError::FileExists { path: p.clone() });
            }
        }
        if let Ok(existing) = std::fs::read_to_string(&ca_path) {
            if existing != ca.cert_pem() {
                return Err(IdentityError::FileExists { path: ca_path });
            }
        }
        let organization = match (req.channel, req.role) {
            (Channel::Agent, IdentityRole::Admin) => Some(ROLE_ADMIN.to_string()),
            (Channel::Agent, IdentityRole::Reader) => Some(ROLE_READER.to_string()),
            // etcd authenticates by CN alone; the role is kept here for when auth is enabled.
            (Channel::Etcd, _) => None,
        };
        let local = ca.issue_local(
            &req.out_dir,
            &req.name,
            req.algorithm,
            &SigningRequest {
                profile: Profile::Client,
                lifetime: req.ttl,
                expected: ExpectedNames::none(),
                organization,
                common_name: req.name.clone(),
            },
        )?;
        crate::fsio::write_atomic(&ca_path, ca.cert_pem().as_bytes(), 0o644)?;
        let info = inspect(&local.cert_pem)?
            .into_iter()
            .next()
            .expect("issue_local writes one certificate");
        let record = IdentityRecord {
            name: req.name.clone(),
            channel: req.channel,
            role: req.role,
            serial: normalize_serial_hex(&info.serial_hex),
            issued_unix: now,
            not_after_unix: info.not_after.unix_timestamp(),
            revoked_unix: None,
            built_in: false,
            ca_pin: Some(ca.sha256_pin()),
        };
        file.identities.push(record.clone());
        self.save(&file)?;
        info!(
            name = %record.name,
            channel = record.channel.as_str(),
            role = record.role.as_str(),
            serial = %record.serial,
            "identity issued"
        );
        Ok(Issued {
            record,
            cert_path: local.cert_path,
            key_path: local.key_path,
            ca_path,
        })
    }

    /// haop's own certificates, as identities.
    fn built_ins(&self) -> Vec<IdentityRecord> {
        let dir = pki_dir(&self.state_dir);
        [
            (ADMIN_CERT, Channel::Agent),
            (ETCD_CLIENT_CERT, Channel::Etcd),
        ]
        .into_iter()
        .filter_map(|(file, channel)| {
            let pem = std::fs::read_to_string(dir.join(format!("{file}.crt"))).ok()?;
            let info = inspect(&pem).ok()?.into_iter().next()?;
            Some(IdentityRecord {
                name: format!("haop ({file})"),
                channel,
                role: IdentityRole::Admin,
                serial: normalize_serial_hex(&info.serial_hex),
                issued_unix: info.not_before.unix_timestamp(),
                not_after_unix: info.not_after.unix_timestamp(),
                revoked_unix: None,
                built_in: true,
                ca_pin: None,
            })
        })
        .collect()
    }

    /// Every identity: haop's own first, then as issued.
    pub fn list(&self) -> Result<Vec<IdentityRecord>, IdentityError> {
        let mut out = self.built_ins();
        out.extend(self.load()?.identities);
        Ok(out)
    }

    /// Gives `channel`'s revocation list a new number without changing what it revokes, so that
    /// a list signed by another CA (the agent CA's rotation re-signs it with the new one) is
    /// newer than the one hosts hold. Answers the new number.
    pub fn renumber(&self, channel: Channel) -> Result<u64, IdentityError> {
        let _lock = self.locked()?;
        let mut file = self.load()?;
        *file.number(channel) += 1;
        let generation = *file.number(channel);
        self.save(&file)?;
        info!(
            channel = channel.as_str(),
            generation, "revocation list renumbered"
        );
        Ok(generation)
    }

    /// The active identities of `channel` issued by the CA with pin `ca_pin`, which became valid
    /// at `ca_not_before_unix` (records without a pin count when issued after that).
    pub fn issued_by(
        &self,
        channel: Channel,
        ca_pin: &str,
        ca_not_before_unix: i64,
    ) -> Result<Vec<IdentityRecord>, IdentityError> {
        let now = now_unix();
        Ok(self
            .load()?
            .identities
            .into_iter()
            .filter(|r| r.channel == channel && r.is_active(now))
            .filter(|r| match &r.ca_pin {
                Some(pin) => pin == ca_pin,
                None => r.issued_unix >= ca_not_before_unix,
            })
            .collect())
    }

    /// Revokes the identity named `selector` (or with that serial), optionally only on
    /// `channel`, and numbers a new list for its channel. Revoking a revoked identity changes
    /// nothing and answers the current number (so the list can be pushed again).
    pub fn revoke(
        &self,
        selector: &str,
        channel: Option<Channel>,
    ) -> Result<Revoked, IdentityError> {
        let serial = normalize_serial_hex(selector);
        for b in self.built_ins() {
            if (b.serial == serial || selector == "haop") && channel.is_none_or(|c| c == b.channel)
            {
                return Err(IdentityError::BuiltIn {
                    name: b.name,
                    channel: b.channel.as_str(),
                });
            }
        }
        let _lock = self.locked()?;
        let mut file = self.load()?;
        let now = now_unix();
        let matches: Vec<usize> = file
            .identities
            .iter()
            .enumerate()
            .filter(|(_, r)| channel.is_none_or(|c| c == r.channel))
            .filter(|(_, r)| r.serial == serial || r.name == selector)
            .map(|(i, _)| i)
            .collect();
        // A name reused after a revocation: the active one is meant.
        let active: Vec<usize> = matches
            .iter()
            .copied()
            .filter(|i| file.identities[*i].is_active(now))
            .collect();
        let pick = match (matches.len(), active.len()) {
            (0, _) => return Err(IdentityError::Unknown(selector.to_string())),
            (1, _) => matches[0],
            (_, 1) => active[0],
            _ => {
                let which = matches
                    .iter()
                    .map(|i| {
                        let r = &file.identities[*i];
                        format!("{} {} serial {}", r.channel.as_str(), r.name, r.serial)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(IdentityError::Ambiguous {
                    selector: selector.to_string(),
                    count: matches.len(),
                    which,
                });
            }
        };
        let channel = file.identities[pick].channel;
        if file.identities[pick].revoked_unix.is_some() {
            let record = file.identities[pick].clone();
            return Ok(Revoked {
                record,
                now: false,
                generation: *file.number(channel),
            });
        }
        file.identities[pick].revoked_unix = Some(now);
        *file.number(channel) += 1;
        let generation = *file.number(channel);
        self.save(&file)?;
        let record = file.identities[pick].clone();
        info!(
            name = %record.name,
            channel = channel.as_str(),
            serial = %record.serial,
            generation,
            "identity revoked"
        );
        Ok(Revoked {
            record,
            now: true,
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{init, InitOptions};

    fn req(dir: &Path, name: &str, channel: Channel, role: IdentityRole) -> IssueRequest {
        IssueRequest {
            name: name.into(),
            channel,
            role,
            ttl: Duration::from_secs(3600),
            out_dir: dir.to_path_buf(),
            algorithm: KeyAlgorithm::EcdsaP256,
        }
    }

    #[test]
    fn issue_list_revoke() {
        let state = tempfile::tempdir().unwrap();
        init(state.path(), InitOptions::default()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(state.path());
        let issued = store
            .issue(&req(
                out.path(),
                "prom",
                Channel::Agent,
                IdentityRole::Reader,
            ))
            .unwrap();
        let info = inspect(&std::fs::read_to_string(&issued.cert_path).unwrap())
            .unwrap()
            .remove(0);
        assert_eq!(info.organizations, vec![ROLE_READER.to_string()]);
        assert_eq!(info.common_name.as_deref(), Some("prom"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issued.key_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(issued.ca_path.ends_with("agent-ca.crt"));

        // The same name again is refused while active; so are the files.
        let err = store
            .issue(&req(
                out.path(),
                "prom",
                Channel::Agent,
                IdentityRole::Reader,
            ))
            .unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
        // The same name on etcd is another identity, and its files collide.
        let err = store
            .issue(&req(
                out.path(),
                "prom",
                Channel::Etcd,
                IdentityRole::Reader,
            ))
            .unwrap_err();
        assert!(matches!(err, IdentityError::FileExists { .. }), "{err}");

        let listed = store.list().unwrap();
        assert_eq!(listed.iter().filter(|r| r.built_in).count(), 2);
        assert!(listed
            .iter()
            .any(|r| r.name == "prom" && r.serial == issued.record.serial));

        assert_eq!(store.generation(Channel::Agent).unwrap(), 0);
        let r = store.revoke("prom", None).unwrap();
        assert!(r.now);
        assert_eq!(r.generation, 1);
        let again = store.revoke(&issued.record.serial, None).unwrap();
        assert!(!again.now);
        assert_eq!(again.generation, 1);
        let serials = store.revoked_serials(Channel::Agent).unwrap();
        assert_eq!(serials.len(), 1);
        assert_eq!(hex::encode(&serials[0].0), issued.record.serial);
        assert!(store.revoked_serials(Channel::Etcd).unwrap().is_empty());

        // A revoked name can be issued again.
        let out2 = tempfile::tempdir().unwrap();
        store
            .issue(&req(
                out2.path(),
                "prom",
                Channel::Agent,
                IdentityRole::Reader,
            ))
            .unwrap();
    }

    #[test]
    fn haop_itself_and_bad_names_are_refused() {
        let state = tempfile::tempdir().unwrap();
        init(state.path(), InitOptions::default()).unwrap();
        let store = IdentityStore::new(state.path());
        let admin = store.list().unwrap().remove(0);
        let err = store.revoke(&admin.serial, None).unwrap_err();
        assert!(matches!(err, IdentityError::BuiltIn { .. }), "{err}");
        assert!(matches!(
            store.revoke("haop", None).unwrap_err(),
            IdentityError::BuiltIn { .. }
        ));
        let out = tempfile::tempdir().unwrap();
        for bad in ["", "Alice", "-x", "a/b", "haop", "kube-apiserver"] {
            assert!(
                store
                    .issue(&req(out.path(), bad, Channel::Agent, IdentityRole::Reader))
                    .is_err(),
                "{bad}"
            );
        }
        assert!(matches!(
            store.revoke("nobody", None).unwrap_err(),
            IdentityError::Unknown(_)
        ));
    }
}
