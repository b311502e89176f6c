//! `haop certs rotate-ca --agent`: a new agent CA, without downtime and without restarting
//! anything.
//!
//! The agent CA is the root of the control channel: agents accept haop's (and every
//! identity's) client certificate because it chains to it, and haop accepts an agent because
//! its serving certificate does. Replacing it at once would cut one side off from the other, so
//! the rotation follows the bundle protocol (as Gardener rotates its CAs): trust old and new,
//! move every certificate to the new, then trust the new alone. Four phases, each for every
//! host of the inventory, one host after the other (rolling), each host's step an ensure that
//! checks the agent's answer before and after:
//!
//! 1. **prepare**: the new CA is created beside the old (`pki/agent-ca-next.*`, key 0600; the
//!    old is not touched until the end) and the phase file written; from then on haop trusts
//!    both CAs for agents' serving certificates.
//! 2. **trust**: every agent gets the bundle old + new for client certificates
//!    (`InstallTrustBundle`), the new CA endorsed by the old one's key (a cross-certificate: an
//!    agent takes a new CA only from whoever holds a CA key it trusts). Over the existing mTLS
//!    channel: no token, no restart; the agent reloads its TLS configuration live.
//! 3. **reissue**: every agent gets a serving certificate from the new CA for a key it makes
//!    itself (`CreateServingCsr`, `InstallServingCertificate`), checked on a new connection
//!    that trusts the new CA alone; the agent revocation list is re-signed by the new CA under
//!    a new number and installed everywhere (agents accept lists of either CA now); haop's own
//!    admin identity is re-issued from the new CA (`pki/haop-admin-next.*`) and checked on
//!    every agent.
//! 4. **drop**: every agent trusts the new CA alone; then the state dir switches
//!    ([`crate::trust::rotation::finalize`]): the old CA's certificate goes to `pki/retired/`,
//!    its key is deleted, the new CA and admin identity take the usual names, and the
//!    enrollment pin (what `haop token create` prints for new agents) is the new CA's.
//!
//! Why it never loses contact: an agent trusts the new CA before haop presents a certificate
//! of it (trust before reissue), haop trusts the new CA before any agent serves one of it
//! (prepare before reissue), and an agent drops the old CA only after haop stopped presenting
//! one of it (reissue before drop; the agent itself refuses a bundle that would lock its caller
//! out). Every phase starts only when every agent of the inventory answers; a host that fails
//! stops the run with its name, leaving every pair still trusting each other.
//!
//! Resumable: the phase file (`pki/agent-ca-rotation.json`, written atomically) says which
//! phases are done; a run killed anywhere is run again and continues with the first phase not
//! done, whose steps skip what each agent already has. A run after a finished rotation starts a
//! new one.
//!
//! What breaks: identities issued with `haop identity issue` for the agent channel by the old
//! CA are refused once it is dropped. They are listed (and the run wants `--yes` while any is
//! active), to be issued again from the new CA afterwards. New enrollments, tokens and
//! agent-channel identities are refused while the rotation runs (they would pin the old CA).
//! etcd's CA and certificates are another matter: nothing here touches etcd.

use std::path::Path;
use std::time::Duration;

use haop_proto::v1 as pb;
use serde::Serialize;

use crate::agent::{connect_with, AgentError, HostAgent};
use crate::identity::{crl, Channel, IdentityError, IdentityRecord, IdentityStore};
use crate::inventory::{Host, Inventory};
use crate::pki::{
    CertificateAuthority, ExpectedNames, PkiError, Profile, SigningRequest, DEFAULT_LIFETIME,
    MAX_LIFETIME, ROLE_ADMIN,
};
use crate::trust::rotation::{self, Journal, Phase, NEXT_ADMIN, NEXT_CA};
use crate::trust::{pki_dir, Trust, TrustError};

/// How long an endorsement of the new CA is valid: it is made again by every run that needs it.
const ENDORSEMENT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How the rotation runs.
#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// Go on although agent-channel identities of the old CA are active (they stop working).
    pub yes: bool,
    /// How long connecting to an agent and each of its answers may take.
    pub timeout: Duration,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            yes: false,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What one host's step of a phase did.
#[derive(Debug, Clone, Serialize)]
pub struct HostStep {
    pub phase: Phase,
    /// The host, or `state-dir` for haop's own files.
    pub host: String,
    pub changed: bool,
    pub detail: String,
}

/// What a rotation did, for the table and `-o json`.
#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    /// The retired CA's pin.
    pub old_ca_pin: String,
    /// The new CA's pin: the enrollment pin (`ca_hash`) for new agents from now on.
    pub new_ca_pin: String,
    /// The phases already done when this run began, when it continued a killed one.
    pub resumed_after: Option<String>,
    /// Each host's step of each phase this run went through, in order.
    pub steps: Vec<HostStep>,
    /// Where the retired CA's certificate is kept.
    pub retired_ca_cert: String,
    /// The agent revocation list's number after the rotation (0: none).
    pub revocation_generation: u64,
    /// Agent-channel identities issued by the retired CA that are still within their
    /// lifetime: refused from now on, to be issued again with `haop identity issue`.
    pub identities_to_reissue: Vec<IdentityRecord>,
}

/// Why a rotation stopped; each says where, and that running it again continues.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "{} agent-channel identit{} issued by the agent CA being retired will be refused once it \
         is dropped: {list}. Nothing was changed. Run again with --yes to rotate anyway, then \
         issue them again with haop identity issue (or revoke them first)",
        .count,
        if *.count == 1 { "y" } else { "ies" }
    )]
    IdentitiesActive { count: usize, list: String },
    #[error(
        "before the {phase} phase, the agents of {hosts} could not be reached ({details}); \
         nothing of this phase was changed. Bring them back (every agent of the inventory takes \
         part) and run haop certs rotate-ca --agent again: it continues where it stopped"
    )]
    Unreachable {
        phase: Phase,
        hosts: String,
        details: String,
    },
    #[error(
        "the agent of {host} cannot take part in a rotation of the agent CA (it does not report \
         its trust bundle); upgrade haop-agent there first (haop agent upgrade). Nothing was \
         changed"
    )]
    OldAgent { host: String },
    #[error(
        "{phase} phase failed on {host}; it and haop still trust each other. Run haop certs \
         rotate-ca --agent again: it continues with {host}"
    )]
    Host {
        phase: Phase,
        host: String,
        #[source]
        source: AgentError,
    },
    #[error(
        "{phase} phase: {host}: {reason}. Run haop certs rotate-ca --agent again: it continues \
         where it stopped"
    )]
    Check {
        phase: Phase,
        host: String,
        reason: String,
    },
    #[error(
        "the rotation is finished (the agent CA is now {new_pin}; do not run it again, that \
         would start another), but checking the agents afterwards failed: {detail}; see haop \
         status"
    )]
    Finished {
        new_pin: String,
        #[source]
        detail: Box<RotateError>,
    },
}

fn host_error(phase: Phase, host: &str) -> impl FnOnce(AgentError) -> RotateError + '_ {
    move |source| RotateError::Host {
        phase,
        host: host.to_string(),
        source,
    }
}

/// A phase's steps, reported as they happen.
struct Steps<'a> {
    progress: &'a (dyn Fn(String) + Sync),
    done: Vec<HostStep>,
}

impl Steps<'_> {
    fn record(&mut self, phase: Phase, host: &str, changed: bool, detail: impl Into<String>) {
        let detail = detail.into();
        (self.progress)(format!("{phase:<7} {host}: {detail}"));
        self.done.push(HostStep {
            phase,
            host: host.to_string(),
            changed,
            detail,
        });
    }
}

/// One agent, connected for a phase, and what it said it is.
struct Connected {
    host: Host,
    agent: HostAgent,
    who: pb::WhoAmIResponse,
}

/// The names the inventory gives `host`, as enrollment put them in its serving certificate.
fn names_of(host: &Host) -> ExpectedNames {
    ExpectedNames::for_host(
        host.name.as_str(),
        host.fqdn.as_ref().map(|f| f.as_str()),
        &[host.address],
    )
}

/// Connects to every agent of `inventory` at once, with haop's current identity and trust,
/// and asks each who it is. Every agent must answer, or the phase does not begin.
async fn connect_all(
    trust: &Trust,
    inventory: &Inventory,
    phase: Phase,
    timeout: Duration,
) -> Result<Vec<Connected>, RotateError> {
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in inventory.hosts.iter().enumerate() {
        let (host, tls) = (host.clone(), trust.client_tls());
        set.spawn(async move {
            let name = host.name.as_str().to_string();
            let attempt = async {
                let client = connect_with(tls, host.agent.as_str(), timeout)
                    .await
                    .map_err(|source| AgentError::Connect {
                        host: name.clone(),
                        source,
                    })?;
                let agent = HostAgent::new(&name, client);
                let who = agent.who_am_i().await?;
                Ok::<_, AgentError>((agent, who))
            };
            let result = match tokio::time::timeout(timeout * 2, attempt).await {
                Ok(r) => r.map_err(|e| e.detail()),
                Err(_) => Err("no answer in time".to_string()),
            };
            (i, host, result)
        });
    }
    let mut answers = set.join_all().await;
    answers.sort_by_key(|(i, _, _)| *i);
    let mut connected = Vec::new();
    let mut missing = Vec::new();
    for (_, host, result) in answers {
        match result {
            Ok((agent, who)) => connected.push(Connected { host, agent, who }),
            Err(detail) => missing.push((host.name.as_str().to_string(), detail)),
        }
    }
    if !missing.is_empty() {
        return Err(RotateError::Unreachable {
            phase,
            hosts: missing
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            details: missing
                .iter()
                .map(|(h, d)| format!("{h}: {d}"))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    if let Some(old) = connected.iter().find(|c| c.who.trusted_ca_pins.is_empty()) {
        return Err(RotateError::OldAgent {
            host: old.host.name.as_str().to_string(),
        });
    }
    Ok(connected)
}

/// Rotates the agent CA of `state_dir` on every host of `inventory`, or continues the rotation
/// a killed run left; `progress` hears every host's step.
pub async fn run(
    state_dir: &Path,
    inventory: &Inventory,
    opts: RotateOptions,
    progress: &(dyn Fn(String) + Sync),
) -> Result<RotateReport, RotateError> {
    let trust = Trust::load(state_dir)?;
    let resumed = trust.rotation().cloned();
    let (old_pin, old_not_before) = match &resumed {
        Some(j) => (j.old_pin.clone(), j.old_not_before_unix),
        None => (
            trust.agent_ca.sha256_pin(),
            trust.agent_ca.not_before().unix_timestamp(),
        ),
    };
    let store = IdentityStore::new(state_dir);
    let to_reissue = store.issued_by(Channel::Agent, &old_pin, old_not_before)?;
    let dropped = resumed.as_ref().is_some_and(|j| j.completed(Phase::Drop));
    if !to_reissue.is_empty() && !opts.yes && !dropped {
        return Err(RotateError::IdentitiesActive {
            count: to_reissue.len(),
            list: to_reissue
                .iter()
                .map(|r| format!("{} ({}, serial {})", r.name, r.role.as_str(), r.serial))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if let Some(j) = &resumed {
        progress(format!(
            "continuing the rotation from {} to {} ({})",
            j.old_pin,
            j.new_pin,
            j.describe()
        ));
    }
    let mut steps = Steps {
        progress,
        done: Vec::new(),
    };
    let mut journal = match resumed.clone() {
        Some(j) => j,
        None => prepare(state_dir, &trust, inventory, opts, &mut steps).await?,
    };
    drop(trust);
    if !journal.completed(Phase::Trust) {
        trust_phase(state_dir, inventory, opts, &journal, &mut steps).await?;
        journal.complete(Phase::Trust);
        journal.save(state_dir)?;
        crate::failpoint::hit("rotate-agent:after-phase:trust");
    }
    if !journal.completed(Phase::Reissue) {
        reissue_phase(state_dir, inventory, opts, &journal, &mut steps).await?;
        journal.complete(Phase::Reissue);
        journal.save(state_dir)?;
        crate::failpoint::hit("rotate-agent:after-phase:reissue");
    }
    if !journal.completed(Phase::Drop) {
        drop_phase(state_dir, inventory, opts, &journal, &mut steps).await?;
        journal.complete(Phase::Drop);
        journal.save(state_dir)?;
        crate::failpoint::hit("rotate-agent:after-phase:drop");
    }
    let retired = rotation::finalize(state_dir, &journal)?;
    steps.record(
        Phase::Drop,
        "state-dir",
        true,
        format!(
            "the old CA's key deleted, its certificate kept as {}; the new CA is pki/agent-ca",
            retired.display()
        ),
    );
    // The end state, checked as every later command will see it: the new CA alone.
    let trust = Trust::load(state_dir)?;
    connect_all(&trust, inventory, Phase::Drop, opts.timeout)
        .await
        .map_err(|e| RotateError::Finished {
            new_pin: journal.new_pin.clone(),
            detail: Box::new(e),
        })?;
    Ok(RotateReport {
        old_ca_pin: journal.old_pin.clone(),
        new_ca_pin: journal.new_pin.clone(),
        resumed_after: resumed.map(|j| j.describe()),
        steps: steps.done,
        retired_ca_cert: retired.display().to_string(),
        revocation_generation: store.generation(Channel::Agent)?,
        identities_to_reissue: to_reissue,
    })
}

/// Phase 1: the new CA beside the old, and the phase file that makes haop trust both.
async fn prepare(
    state_dir: &Path,
    trust: &Trust,
    inventory: &Inventory,
    opts: RotateOptions,
    steps: &mut Steps<'_>,
) -> Result<Journal, RotateError> {
    connect_all(trust, inventory, Phase::Prepare, opts.timeout).await?;
    let dir = pki_dir(state_dir);
    let old = &trust.agent_ca;
    let (cert, key) = (
        dir.join(format!("{NEXT_CA}.crt")),
        dir.join(format!("{NEXT_CA}.key")),
    );
    // A run killed after making the new CA and before writing the phase file left it: use it.
    // A key without its certificate is what a kill during the making leaves: make it again.
    if key.exists() && !cert.exists() {
        std::fs::remove_file(&key).map_err(|source| TrustError::Io {
            action: "remove",
            path: key.clone(),
            source,
        })?;
    }
    let new = if cert.exists() {
        CertificateAuthority::load(&dir, NEXT_CA)?
    } else {
        let span = old.not_after() - old.not_before();
        let lifetime = Duration::try_from(span)
            .unwrap_or(DEFAULT_LIFETIME)
            .clamp(Duration::from_secs(24 * 3600), MAX_LIFETIME);
        let now = time::OffsetDateTime::now_utc();
        let name = format!(
            "haop agent CA {}",
            now.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
        CertificateAuthority::create(&dir, NEXT_CA, &name, old.algorithm(), lifetime)?
    };
    let mut journal = Journal::new(
        old.sha256_pin(),
        new.sha256_pin(),
        old.not_before().unix_timestamp(),
    );
    journal.complete(Phase::Prepare);
    journal.save(state_dir)?;
    steps.record(
        Phase::Prepare,
        "state-dir",
        true,
        format!(
            "new agent CA {} ({}) beside the old one {}; haop trusts both for agents",
            new.sha256_pin(),
            new.cert_path().display(),
            old.sha256_pin()
        ),
    );
    crate::failpoint::hit("rotate-agent:after-phase:prepare");
    Ok(journal)
}

/// Phase 2: every agent trusts the old and the new CA.
async fn trust_phase(
    state_dir: &Path,
    inventory: &Inventory,
    opts: RotateOptions,
    journal: &Journal,
    steps: &mut Steps<'_>,
) -> Result<(), RotateError> {
    const PHASE: Phase = Phase::Trust;
    let trust = Trust::load(state_dir)?;
    let agents = connect_all(&trust, inventory, PHASE, opts.timeout).await?;
    let old = rotation::load_old_ca(state_dir, journal)?;
    let new = rotation::load_new_ca(state_dir, journal)?;
    let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
    let endorsement = old.endorse(&new, ENDORSEMENT_LIFETIME)?;
    for c in agents {
        let host = c.host.name.as_str();
        let pins = &c.who.trusted_ca_pins;
        if pins.contains(&journal.new_pin) {
            steps.record(PHASE, host, false, "trusts the old and the new CA already");
            continue;
        }
        let r = c
            .agent
            .install_trust_bundle(&bundle, &endorsement)
            .await
            .map_err(host_error(PHASE, host))?;
        if !(r.trusted_ca_pins.contains(&journal.old_pin)
            && r.trusted_ca_pins.contains(&journal.new_pin))
        {
            return Err(RotateError::Check {
                phase: PHASE,
                host: host.to_string(),
                reason: format!(
                    "after the install it trusts {:?}, not the old and the new CA",
                    r.trusted_ca_pins
                ),
            });
        }
        steps.record(
            PHASE,
            host,
            true,
            "trusts the old and the new CA for client certificates",
        );
        crate::failpoint::hit(&format!("rotate-agent:after-trust:{host}"));
    }
    Ok(())
}

/// Phase 3: serving certificates, the revocation list and haop's admin identity from the new CA.
async fn reissue_phase(
    state_dir: &Path,
    inventory: &Inventory,
    opts: RotateOptions,
    journal: &Journal,
    steps: &mut Steps<'_>,
) -> Result<(), RotateError> {
    const PHASE: Phase = Phase::Reissue;
    let trust = Trust::load(state_dir)?;
    let agents = connect_all(&trust, inventory, PHASE, opts.timeout).await?;
    let new = rotation::load_new_ca(state_dir, journal)?;

    // The revocation list, signed by the new CA under a newer number, before any agent could
    // be asked to drop the old CA that signed the one it holds.
    let store = IdentityStore::new(state_dir);
    if store.generation(Channel::Agent)? > 0 {
        let file = std::fs::read_to_string(crl::path(state_dir, Channel::Agent)).ok();
        let current = file.as_deref().is_some_and(|pem| {
            crl::signed_by(pem, &new)
                && crl::number_of(pem) == store.generation(Channel::Agent).ok()
        });
        if !current {
            store.renumber(Channel::Agent)?;
        }
        let (generation, pem) = crl::current(state_dir, Channel::Agent, &new)?;
        for c in &agents {
            let host = c.host.name.as_str();
            let r = c
                .agent
                .install_revocations(&pem)
                .await
                .map_err(host_error(PHASE, host))?;
            steps.record(
                PHASE,
                host,
                r.changed,
                format!("revocation list {generation}, signed by the new CA"),
            );
        }
    }

    // Each agent's serving certificate, checked on a new connection trusting the new CA alone.
    for c in &agents {
        let host = c.host.name.as_str();
        if ensure_serving(&trust, &new, c, PHASE, opts).await? {
            steps.record(
                PHASE,
                host,
                true,
                "serves a new certificate of the new CA (key made on the host)",
            );
            crate::failpoint::hit(&format!("rotate-agent:after-reissue:{host}"));
        } else {
            steps.record(
                PHASE,
                host,
                false,
                "serves a certificate of the new CA already",
            );
        }
    }

    // haop's own admin identity.
    let dir = pki_dir(state_dir);
    let (admin_cert, _) = rotation::admin_paths(state_dir);
    let current = std::fs::read_to_string(&admin_cert).unwrap_or_default();
    if new.issued(&current) {
        steps.record(
            PHASE,
            "state-dir",
            false,
            "haop's admin identity is the new CA's already",
        );
    } else {
        new.issue_local(
            &dir,
            NEXT_ADMIN,
            new.algorithm(),
            &SigningRequest {
                profile: Profile::Client,
                lifetime: DEFAULT_LIFETIME,
                expected: ExpectedNames::none(),
                organization: Some(ROLE_ADMIN.to_string()),
                common_name: "haop".to_string(),
            },
        )?;
        steps.record(
            PHASE,
            "state-dir",
            true,
            format!("haop's admin identity re-issued from the new CA ({NEXT_ADMIN}.crt)"),
        );
    }
    // Every agent takes it (they trust both CAs).
    let trust = Trust::load(state_dir)?;
    if !new.issued(trust.admin_cert_pem()) {
        return Err(RotateError::Check {
            phase: PHASE,
            host: "state-dir".into(),
            reason: "haop does not present its new admin identity".into(),
        });
    }
    for c in connect_all(&trust, inventory, PHASE, opts.timeout).await? {
        if c.who.role != ROLE_ADMIN {
            return Err(RotateError::Check {
                phase: PHASE,
                host: c.host.name.as_str().to_string(),
                reason: format!("the agent sees haop's new identity as {:?}", c.who.role),
            });
        }
    }
    Ok(())
}

/// Makes the agent of `c` serve a certificate of `new` for a key it makes, unless it does
/// already (answers whether it changed anything), and checks it on a new connection that
/// trusts `new` alone.
async fn ensure_serving(
    trust: &Trust,
    new: &CertificateAuthority,
    c: &Connected,
    phase: Phase,
    opts: RotateOptions,
) -> Result<bool, RotateError> {
    let host = c.host.name.as_str();
    if new.issued(&c.who.serving_cert_pem) {
        return Ok(false);
    }
    let names = names_of(&c.host);
    let csr = c
        .agent
        .create_serving_csr(pb::CreateServingCsrRequest {
            dns_names: names.dns.clone(),
            ip_addresses: names.ips.iter().map(|i| i.to_string()).collect(),
            algorithm: pb::KeyAlgorithm::EcdsaP256 as i32,
        })
        .await
        .map_err(host_error(phase, host))?;
    let cert = new.sign_csr(
        &csr.csr_pem,
        &SigningRequest {
            profile: Profile::Server,
            lifetime: DEFAULT_LIFETIME,
            expected: names,
            organization: None,
            common_name: host.to_string(),
        },
    )?;
    c.agent
        .install_serving_certificate(&cert)
        .await
        .map_err(host_error(phase, host))?;
    let tls = trust.client_tls_trusting(new.cert_pem());
    let fresh = connect_with(tls, c.host.agent.as_str(), opts.timeout)
        .await
        .map_err(|source| {
            host_error(phase, host)(AgentError::Connect {
                host: host.to_string(),
                source,
            })
        })?;
    let who = HostAgent::new(host, fresh)
        .who_am_i()
        .await
        .map_err(host_error(phase, host))?;
    if !new.issued(&who.serving_cert_pem) {
        return Err(RotateError::Check {
            phase,
            host: host.to_string(),
            reason: "the agent does not serve its new certificate".into(),
        });
    }
    Ok(true)
}

/// Phase 4: every agent trusts the new CA alone.
async fn drop_phase(
    state_dir: &Path,
    inventory: &Inventory,
    opts: RotateOptions,
    journal: &Journal,
    steps: &mut Steps<'_>,
) -> Result<(), RotateError> {
    const PHASE: Phase = Phase::Drop;
    let trust = Trust::load(state_dir)?;
    let agents = connect_all(&trust, inventory, PHASE, opts.timeout).await?;
    let new = rotation::load_new_ca(state_dir, journal)?;
    for c in agents {
        let host = c.host.name.as_str();
        // Whatever happened to it since the reissue phase, it drops the old CA only once it
        // serves a certificate haop can verify without it.
        if ensure_serving(&trust, &new, &c, PHASE, opts).await? {
            steps.record(
                PHASE,
                host,
                true,
                "serves a new certificate of the new CA (key made on the host)",
            );
        }
        if c.who.trusted_ca_pins == [journal.new_pin.clone()] {
            steps.record(PHASE, host, false, "trusts the new CA alone already");
            continue;
        }
        let r = c
            .agent
            .install_trust_bundle(new.cert_pem(), "")
            .await
            .map_err(host_error(PHASE, host))?;
        if r.trusted_ca_pins != [journal.new_pin.clone()] {
            return Err(RotateError::Check {
                phase: PHASE,
                host: host.to_string(),
                reason: format!("after the install it trusts {:?}", r.trusted_ca_pins),
            });
        }
        steps.record(PHASE, host, true, "trusts the new CA alone");
        crate::failpoint::hit(&format!("rotate-agent:after-drop:{host}"));
    }
    Ok(())
}
