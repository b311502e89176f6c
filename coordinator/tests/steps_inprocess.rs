//! The runbook's executor steps against real agents served in this process: no root, no network
//! namespaces, no lab.
//!
//! Each test makes a state dir with `haop init`, serves one real agent per host on 127.0.0.1
//! (port 0, a temporary root, the lab kernel, the built-in supervisor), enrolls it with a
//! bootstrap token as a real host is enrolled, and builds an inventory whose agent endpoints are
//! those agents. Steps come from the plan of that inventory (or are written here for a unit that
//! can run on any machine), and go through the same `exec::check` and `exec::run` that `haop
//! plan` and `haop apply` use. Every family is shown two ways (omicron's saga tests): run twice,
//! the second run changes nothing and every check says unchanged; failed midway (a write the
//! agent refuses, the agent gone between two steps, a key made but its certificate not
//! installed), the rerun converges.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haop_agent::config::AgentConfig;
use haop_agent::kernel::{KernelPaths, LabKernel};
use haop_agent::units::supervisor::Supervisor;
use haop_coordinator::agent::{self, AgentError, ExpectedAgent, HostAgent};
use haop_coordinator::inventory::Inventory;
use haop_coordinator::pki::{inspect, spki_pin};
use haop_coordinator::runbook::exec::certificates::{self, CertificateError, Reissue};
use haop_coordinator::runbook::exec::files::FileError;
use haop_coordinator::runbook::exec::kernel::modules_file;
use haop_coordinator::runbook::exec::units::UnitError;
use haop_coordinator::runbook::exec::{self, Change, RunContext, StepError};
use haop_coordinator::runbook::plan::{
    Action, CertificateSpec, FileAction, KernelAction, Phase, Step, Target, UnitAction,
};
use haop_coordinator::runbook::Runbook;
use haop_coordinator::trust::{self, InitOptions, Trust};
use haop_proto::enroll::Token;
use haop_proto::v1 as pb;

const T: Duration = Duration::from_secs(5);

/// Polls `check` until it answers `Some`, for at most `T`.
async fn wait_for<V, F, Fut>(what: &str, mut check: F) -> V
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<V>>,
{
    let deadline = Instant::now() + T;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One served agent. Its units outlive it, as on a real host.
struct Served {
    endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    units: Arc<Supervisor>,
}

/// A host: its root (kept across agent restarts) and its agent, when one is serving.
struct Host {
    name: String,
    roles: &'static str,
    address: IpAddr,
    root: tempfile::TempDir,
    kernel: tempfile::TempDir,
    agent: Option<Served>,
}

/// A state dir, its hosts and their agents.
struct World {
    state: tempfile::TempDir,
    trust: Trust,
    pin: String,
    /// The operator's machine: files to upload.
    local: tempfile::TempDir,
    hosts: Vec<Host>,
    /// Supervisors of agents that were stopped (their units may still run).
    retired: Vec<Arc<Supervisor>>,
}

impl World {
    /// `hosts`: name and roles (`"[etcd]"`), each served and enrolled.
    async fn new(hosts: &[(&str, &'static str)]) -> World {
        let state = tempfile::tempdir().unwrap();
        let report = trust::init(state.path(), InitOptions::default()).unwrap();
        let trust = Trust::load(state.path()).unwrap();
        let mut world = World {
            state,
            trust,
            pin: report.agent_ca_pin,
            local: tempfile::tempdir().unwrap(),
            hosts: Vec::new(),
            retired: Vec::new(),
        };
        for (i, (name, roles)) in hosts.iter().enumerate() {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("etc")).unwrap();
            std::fs::write(root.path().join("etc/hostname"), format!("{name}\n")).unwrap();
            let kernel = tempfile::tempdir().unwrap();
            let proc = kernel.path().join("proc");
            std::fs::create_dir_all(proc.join("sys/net/ipv4")).unwrap();
            std::fs::create_dir_all(kernel.path().join("sys/module/overlay")).unwrap();
            std::fs::write(proc.join("sys/net/ipv4/ip_forward"), "0\n").unwrap();
            std::fs::write(proc.join("swaps"), "Filename Type Size Used Priority\n").unwrap();
            world.hosts.push(Host {
                name: name.to_string(),
                roles,
                address: format!("10.0.0.{}", 11 + i).parse().unwrap(),
                root,
                kernel,
                agent: None,
            });
            world.start(name).await;
        }
        world
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }

    fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts.iter_mut().find(|h| h.name == name).unwrap()
    }

    /// Serves `name`'s agent on a new port: enrolled with a bootstrap token the first time, with
    /// the identity on its root afterwards (an agent restarted, as after an upgrade).
    async fn start(&mut self, name: &str) {
        let (token, _) = self
            .trust
            .tokens()
            .create(
                Duration::from_secs(600),
                haop_coordinator::trust::TokenUses::Once,
            )
            .unwrap();
        let pin = self.pin.clone();
        let host = self.host_mut(name);
        assert!(host.agent.is_none(), "{name} already has an agent");
        let config = AgentConfig {
            root: host.root.path().to_path_buf(),
            enroll_token: Some(Token::parse(&token.expose()).unwrap()),
            enroll_ca_hash: Some(pin),
            ..AgentConfig::default()
        };
        let fs = haop_agent::paths::HostFs::new(&config.root, config.managed_roots.clone());
        let units = Arc::new(Supervisor::new(fs, config.state_dir.clone()).unwrap());
        // As `haop-agent` starts: enabled units are started, or adopted when still running.
        units.start_enabled().await;
        let kernel = Arc::new(LabKernel {
            paths: KernelPaths {
                proc: host.kernel.path().join("proc"),
                sys: host.kernel.path().join("sys"),
            },
        });
        let served = haop_agent::server::assemble(&config, units.clone(), kernel);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("https://{}", listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            haop_agent::server::serve(served, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        host.agent = Some(Served {
            endpoint: endpoint.clone(),
            stop,
            task,
            units,
        });
        let expected = ExpectedAgent {
            hostname: name.to_string(),
            fqdn: None,
            addresses: vec!["127.0.0.1".parse().unwrap()],
        };
        agent::enroll(&self.trust, &endpoint, &expected, T)
            .await
            .unwrap();
        let trust = &self.trust;
        wait_for("the agent to serve mTLS", || async {
            let a = HostAgent::connect(trust, name, &endpoint, T).await.ok()?;
            a.who_am_i().await.ok()
        })
        .await;
    }

    /// Stops `name`'s agent as an agent exits: its units keep running.
    async fn stop(&mut self, name: &str) {
        let served = self.host_mut(name).agent.take().unwrap();
        let _ = served.stop.send(());
        served.task.await.unwrap();
        self.retired.push(served.units);
    }

    /// An admin connection to `name`'s agent.
    async fn agent(&self, name: &str) -> HostAgent {
        let endpoint = &self.host(name).agent.as_ref().unwrap().endpoint;
        HostAgent::connect(&self.trust, name, endpoint, T)
            .await
            .unwrap()
    }

    /// Where `path` of host `name` is on this machine.
    fn real(&self, name: &str, path: &str) -> PathBuf {
        self.host(name)
            .root
            .path()
            .join(path.trim_start_matches('/'))
    }

    /// A file on the operator's machine.
    fn local_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.local.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// The inventory of these hosts (agent endpoints: the agents as served now); `extra` is
    /// appended (etcd settings...).
    fn inventory(&self, extra: &str) -> Inventory {
        let mut text = String::from("cluster: t\nhosts:\n");
        for h in &self.hosts {
            let endpoint = h
                .agent
                .as_ref()
                .map(|a| a.endpoint.clone())
                .unwrap_or_else(|| "https://127.0.0.1:1".into());
            text.push_str(&format!(
                "  - {{name: {}, address: {}, roles: {}, agent: \"{endpoint}\"}}\n",
                h.name, h.address, h.roles
            ));
        }
        if !extra.contains("kubernetes:") {
            text.push_str("kubernetes: {enabled: false}\n");
        }
        text.push_str(extra);
        Inventory::from_yaml(&text, "test.yaml").unwrap().0
    }

    fn runbook(&self, extra: &str) -> Runbook {
        Runbook::load(self.state.path(), self.inventory(extra)).unwrap()
    }

    /// Every supervisor this world made, serving or not.
    fn supervisors(&self) -> Vec<Arc<Supervisor>> {
        let serving = self.hosts.iter().filter_map(|h| h.agent.as_ref());
        let mut all: Vec<_> = serving.map(|a| a.units.clone()).collect();
        all.extend(self.retired.iter().cloned());
        all
    }

    /// Stops every agent and every unit any of them started.
    async fn shutdown(mut self) {
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        for n in names {
            if self.host(&n).agent.is_some() {
                self.stop(&n).await;
            }
        }
        for units in self.retired.iter().rev() {
            units.stop_all().await;
        }
    }
}

/// A test that panicked never reached `shutdown`: its sleeper, if it still runs, is killed here
/// (recognised by its pid file and its command line, never by name alone).
impl Drop for World {
    fn drop(&mut self) {
        for (unit, expected) in [(UNIT, SLEEPER_CMDLINE), (ETCD_UNIT, FAKE_ETCD_CMDLINE)] {
            let unit = haop_agent::names::UnitName::try_from(unit).unwrap();
            for sup in self.supervisors() {
                let Ok(pid) = std::fs::read_to_string(sup.pid_file(&unit)) else {
                    continue;
                };
                let Ok(pid) = pid.trim().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline == expected {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// The steps of `host` whose action `pick` takes, in plan order.
fn steps_of(rb: &Runbook, host: &str, pick: impl Fn(&Action) -> bool) -> Vec<Step> {
    rb.steps
        .iter()
        .filter(|s| s.target.is_host(host) && pick(&s.action))
        .cloned()
        .collect()
}

/// Runs `steps` in order as apply runs one host's steps: the files changed so far reach the
/// unit steps, and the first failure stops the host. Answers each result, up to the failure.
async fn run_in_order(
    steps: &[Step],
    agent: &HostAgent,
    ctx: &RunContext,
) -> Vec<Result<bool, StepError>> {
    let mut changed = HashSet::new();
    let mut out = Vec::new();
    for s in steps {
        let r = exec::run(s, Some(agent), ctx, &changed).await;
        if let Ok(true) = r {
            changed.extend(s.action.writes());
        }
        let failed = r.is_err();
        out.push(r);
        if failed {
            break;
        }
    }
    out
}

/// Runs one step on its own, as the first step of a run.
async fn run1(step: &Step, agent: &HostAgent, ctx: &RunContext) -> Result<bool, StepError> {
    exec::run(step, Some(agent), ctx, &HashSet::new()).await
}

/// Every result of `results` succeeded; answers whether each changed something.
fn changed(results: Vec<Result<bool, StepError>>, steps: &[Step]) -> Vec<bool> {
    results
        .into_iter()
        .zip(steps)
        .map(|(r, s)| {
            r.unwrap_or_else(|e| panic!("{}: {}", s.name, haop_coordinator::error_chain(&e)))
        })
        .collect()
}

/// What each of `steps` would change.
async fn checks(steps: &[Step], agent: &HostAgent, ctx: &RunContext) -> Vec<Change> {
    let mut out = Vec::new();
    for s in steps {
        let c = exec::check(s, Some(agent), ctx).await;
        out.push(c.unwrap_or_else(|e| panic!("{}: {}", s.name, haop_coordinator::error_chain(&e))));
    }
    out
}

fn unchanged(n: usize) -> Vec<Change> {
    vec![Change::Unchanged; n]
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// An error that is the agent's answer (a refusal), not a connection that broke.
fn is_refusal(e: &AgentError) -> bool {
    matches!(e, AgentError::Refused { .. })
}

/// An error from an agent that is not there.
fn is_unreachable(e: &AgentError) -> bool {
    e.code() == tonic::Code::Unavailable
}

// --- files -------------------------------------------------------------------------------------

const ETCD_BINARY: &[u8] = b"#!/bin/sh\n# not etcd: a stand-in uploaded by the test\n";

fn upload_extra(world: &World) -> String {
    let local = world.local_file("etcd", ETCD_BINARY);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ETCD_BINARY));
    format!(
        "etcd: {{binary: {{upload: {{file: {}, sha256: {sha}}}}}}}\n",
        local.display()
    )
}

fn is_file_step(a: &Action) -> bool {
    matches!(a, Action::File(_))
}

#[tokio::test]
async fn file_steps_change_once_then_check_and_run_unchanged() {
    let world = World::new(&[("etcd1", "[etcd]")]).await;
    std::fs::write(
        world.real("etcd1", "/etc/hosts"),
        "127.0.0.1 localhost\n10.9.9.9 elsewhere\n",
    )
    .unwrap();
    let rb = world.runbook(&upload_extra(&world));
    let steps = steps_of(&rb, "etcd1", is_file_step);
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "file /etc/hosts (haop's block)",
            "binary /usr/local/bin/etcd (uploaded)",
            "file /etc/kubernetes/pki/etcd/client-crl.pem",
            "file /etc/etcd.env",
            "file /etc/etcd.bootstrap.env (when missing)",
            "file /etc/etcd.bootstrap.env (sealed)",
        ]
    );
    let c = world.agent("etcd1").await;

    // What a plan shows before anything ran: every step a change, /etc/hosts as a diff.
    let before = checks(&steps, &c, &rb.ctx).await;
    assert!(before.iter().all(Change::is_change), "{before:?}");
    let Change::Update { diff, .. } = &before[0] else {
        panic!("{:?}", before[0]);
    };
    assert!(diff.contains("+# BEGIN haop"), "{diff}");

    // First run: everything changes.
    let first = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(first, [true; 6]);
    // Second run: nothing does, and the plan agrees.
    let second = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(second, [false; 6]);
    assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(6));

    // What is on the host: the block merged (other lines kept), the binary, the env file with
    // its mode, the bootstrap file sealed (the when-missing content never replaced it again).
    let hosts = std::fs::read_to_string(world.real("etcd1", "/etc/hosts")).unwrap();
    assert!(
        hosts.starts_with("127.0.0.1 localhost\n10.9.9.9 elsewhere\n"),
        "{hosts}"
    );
    assert!(
        hosts.contains("10.0.0.11") && hosts.contains("etcd1"),
        "{hosts}"
    );
    let binary = world.real("etcd1", "/usr/local/bin/etcd");
    assert_eq!(std::fs::read(&binary).unwrap(), ETCD_BINARY);
    assert_eq!(mode(&binary), 0o755);
    // The etcd CA's revocation list, world-readable (etcd reads it as its own user).
    let crl = world.real("etcd1", "/etc/kubernetes/pki/etcd/client-crl.pem");
    assert!(std::fs::read_to_string(&crl)
        .unwrap()
        .starts_with("-----BEGIN X509 CRL-----"));
    assert_eq!(mode(&crl), 0o644);
    let env = world.real("etcd1", "/etc/etcd.env");
    let Action::File(FileAction::Content { content, .. }) = &steps[3].action else {
        panic!("{:?}", steps[3].action);
    };
    assert_eq!(&std::fs::read(&env).unwrap(), content);
    assert_eq!(mode(&env), 0o640);
    let bootstrap =
        std::fs::read_to_string(world.real("etcd1", "/etc/etcd.bootstrap.env")).unwrap();
    assert_eq!(
        bootstrap,
        haop_coordinator::etcd::config::SEALED_BOOTSTRAP_ENV
    );

    // A file changed by hand on the host is a diff in the plan and is put back by a run.
    std::fs::write(&env, "ETCD_NAME=someone-else\n").unwrap();
    let Change::Update { diff, .. } = exec::check(&steps[3], Some(&c), &rb.ctx).await.unwrap()
    else {
        panic!("expected an update");
    };
    assert!(diff.contains("-ETCD_NAME=someone-else"), "{diff}");
    assert!(run1(&steps[3], &c, &rb.ctx).await.unwrap());
    assert_eq!(&std::fs::read(&env).unwrap(), content);
    world.shutdown().await;
}

#[tokio::test]
async fn a_refused_file_write_stops_the_host_and_the_rerun_converges() {
    let world = World::new(&[("etcd1", "[etcd]")]).await;
    let rb = world.runbook(&upload_extra(&world));
    let steps = steps_of(&rb, "etcd1", is_file_step);
    let c = world.agent("etcd1").await;
    // Something in the way of /etc/etcd.env that no write replaces, not even root's.
    let env = world.real("etcd1", "/etc/etcd.env");
    std::fs::create_dir_all(env.join("in-the-way")).unwrap();

    let results = run_in_order(&steps, &c, &rb.ctx).await;
    assert_eq!(results.len(), 4, "the failure stops the host's later steps");
    assert!(results[..3].iter().all(|r| matches!(r, Ok(true))));
    match &results[3] {
        Err(StepError::File(FileError::Agent(e))) if is_refusal(e) => {
            assert_eq!(e.host(), "etcd1");
        }
        other => panic!("expected the agent's refusal, got {other:?}"),
    }
    assert!(!world.real("etcd1", "/etc/etcd.bootstrap.env").exists());

    // The cause fixed, the same steps run again: what was done is unchanged, the rest is done.
    std::fs::remove_dir_all(&env).unwrap();
    let rerun = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(rerun, [false, false, false, true, true, true]);
    let again = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(again, [false; 6]);
    assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(6));
    world.shutdown().await;
}

#[tokio::test]
async fn file_steps_resume_after_the_agent_went_away_between_two_steps() {
    let mut world = World::new(&[("etcd1", "[etcd]")]).await;
    let rb = world.runbook(&upload_extra(&world));
    let steps = steps_of(&rb, "etcd1", is_file_step);
    let c = world.agent("etcd1").await;
    assert!(run1(&steps[0], &c, &rb.ctx).await.unwrap());
    assert!(run1(&steps[1], &c, &rb.ctx).await.unwrap());

    world.stop("etcd1").await;
    let err = run1(&steps[2], &c, &rb.ctx).await.unwrap_err();
    match &err {
        StepError::File(FileError::Agent(e)) if is_unreachable(e) => {}
        other => panic!("expected an unreachable agent, got {other:?}"),
    }
    // A step of a host without a connection says so (apply's preflight stops before that).
    let err = exec::run(&steps[2], None, &rb.ctx, &HashSet::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StepError::NotConnected { ref host } if host == "etcd1"),
        "{err}"
    );

    // The agent is back (another port, same host): the rerun picks up where the host is.
    world.start("etcd1").await;
    let c = world.agent("etcd1").await;
    let rerun = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(rerun, [false, false, true, true, true, true]);
    assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(6));
    world.shutdown().await;
}

// --- units -------------------------------------------------------------------------------------

const CONF: &str = "/etc/haop/sleeper.conf";
const UNIT: &str = "sleeper.service";
/// The sleeper's `/proc/PID/cmdline`.
const SLEEPER_CMDLINE: &[u8] = b"/bin/sleep\x0060\x00";

/// A unit that runs on any machine, its config file, and the unit running (restarted when
/// either file is newer than its process).
fn unit_steps(conf: &str) -> Vec<Step> {
    let step = |name: &str, action| Step {
        phase: Phase::EtcdConfig,
        target: Target::Host("etcd1".into()),
        name: name.to_string(),
        action,
    };
    vec![
        step(
            "file sleeper.conf",
            Action::File(FileAction::Content {
                path: CONF.into(),
                content: conf.as_bytes().to_vec(),
                mode: 0o644,
            }),
        ),
        step(
            "unit sleeper.service",
            Action::Unit(UnitAction::File {
                name: UNIT.into(),
                content:
                    "[Unit]\nDescription=haop test sleeper\n\n[Service]\nExecStart=/bin/sleep 60\n"
                        .into(),
                data_dirs: vec!["/var/lib/haop/sleeper".into()],
            }),
        ),
        step(
            "unit sleeper.service running",
            Action::Unit(UnitAction::Running {
                unit: UNIT.into(),
                restart_on: vec![CONF.into(), format!("/etc/systemd/system/{UNIT}")],
                rolling_etcd: None,
                start_delay_ms: 0,
            }),
        ),
    ]
}

async fn main_pid(c: &HostAgent) -> u32 {
    let s = c.unit_status(UNIT).await.unwrap();
    assert_eq!(s.active_state, "active", "{s:?}");
    assert!(s.main_pid > 0 && s.enabled, "{s:?}");
    s.main_pid
}

#[tokio::test]
async fn unit_steps_start_once_and_restart_only_for_newer_files() {
    let world = World::new(&[("etcd1", "[etcd]")]).await;
    let rb = world.runbook("");
    let c = world.agent("etcd1").await;
    let steps = unit_steps("one\n");
    let before = checks(&steps, &c, &rb.ctx).await;
    assert!(matches!(&before[1], Change::Create { .. }), "{before:?}");
    assert!(
        matches!(&before[2], Change::Run { detail } if detail.starts_with("start and enable")),
        "{before:?}"
    );

    let first = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(first, [true, true, true]);
    let pid = main_pid(&c).await;
    let Action::Unit(UnitAction::File { content, .. }) = &steps[1].action else {
        panic!("{:?}", steps[1].action);
    };
    let unit_file = world.real("etcd1", &format!("/etc/systemd/system/{UNIT}"));
    assert_eq!(&std::fs::read_to_string(unit_file).unwrap(), content);
    // Started after its files: the second run neither starts nor restarts it.
    let second = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(second, [false, false, false]);
    assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(3));
    assert_eq!(main_pid(&c).await, pid);

    // An earlier apply wrote a new config and was killed before the restart: the file is newer
    // than the process, so the plan says why and the next run restarts it, once.
    let edited = unit_steps("two\n");
    assert!(run1(&edited[0], &c, &rb.ctx).await.unwrap());
    let Change::Run { detail } = exec::check(&edited[2], Some(&c), &rb.ctx).await.unwrap() else {
        panic!("expected a restart");
    };
    assert_eq!(
        detail,
        format!("restart {UNIT}: {CONF} changed after it started")
    );
    assert!(run1(&edited[2], &c, &rb.ctx).await.unwrap());
    let restarted = main_pid(&c).await;
    assert_ne!(restarted, pid);
    assert!(!run1(&edited[2], &c, &rb.ctx).await.unwrap());
    assert_eq!(main_pid(&c).await, restarted);

    // In one run, a file this run changed restarts the unit even if its time says nothing.
    let this_run: HashSet<String> = [CONF.to_string()].into();
    assert!(exec::run(&edited[2], Some(&c), &rb.ctx, &this_run)
        .await
        .unwrap());
    assert_ne!(main_pid(&c).await, restarted);
    world.shutdown().await;
}

#[tokio::test]
async fn unit_steps_converge_when_the_agent_goes_away_midway_and_adopt_what_runs() {
    let mut world = World::new(&[("etcd1", "[etcd]")]).await;
    let rb = world.runbook("");
    let steps = unit_steps("one\n");
    let c = world.agent("etcd1").await;
    assert!(run1(&steps[0], &c, &rb.ctx).await.unwrap());
    assert!(run1(&steps[1], &c, &rb.ctx).await.unwrap());

    // The agent exits between the unit file and the start.
    world.stop("etcd1").await;
    match run1(&steps[2], &c, &rb.ctx).await {
        Err(StepError::Unit(UnitError::Agent(e))) if is_unreachable(&e) => {}
        other => panic!("expected an unreachable agent, got {other:?}"),
    }
    world.start("etcd1").await;
    let c = world.agent("etcd1").await;
    let rerun = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(rerun, [false, false, true]);
    let pid = main_pid(&c).await;

    // The agent restarts while the unit runs: the next agent adopts the process, and the step
    // neither starts a second one nor restarts it.
    world.stop("etcd1").await;
    world.start("etcd1").await;
    let c = world.agent("etcd1").await;
    assert_eq!(main_pid(&c).await, pid);
    let again = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(again, [false, false, false]);
    assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(3));
    assert_eq!(main_pid(&c).await, pid);
    world.shutdown().await;
}

// --- certificates ------------------------------------------------------------------------------

fn cert_steps(rb: &Runbook, host: &str) -> Vec<Step> {
    steps_of(rb, host, |a| matches!(a, Action::Certificate(_)))
}

fn spec(step: &Step) -> &CertificateSpec {
    match &step.action {
        Action::Certificate(spec) => spec,
        other => panic!("{other:?}"),
    }
}

/// The public key of the key file at `path`, as `sha256:<hex>` of its SubjectPublicKeyInfo.
fn key_pin(path: &Path) -> String {
    use rcgen::PublicKeyData;
    let pem = std::fs::read_to_string(path).unwrap();
    spki_pin(
        &rcgen::KeyPair::from_pem(&pem)
            .unwrap()
            .subject_public_key_info(),
    )
}

/// The certificate at `path` is for the key at `key`, from `ca_pem`, with `names`.
fn assert_issued(cert: &Path, key: &Path, ca_pem: &str, names: &[String]) {
    let info = &inspect(&std::fs::read_to_string(cert).unwrap()).unwrap()[0];
    let ca = &inspect(ca_pem).unwrap()[0];
    assert_eq!(
        info.authority_key_id,
        ca.subject_key_id,
        "{}",
        cert.display()
    );
    assert_eq!(
        info.spki_sha256,
        key_pin(key),
        "{} is for its key",
        cert.display()
    );
    let mut have = info.dns_names.clone();
    have.extend(info.ip_addresses.iter().cloned());
    let (mut have, mut want) = (have, names.to_vec());
    have.sort();
    want.sort();
    assert_eq!(have, want);
    assert_eq!(mode(key), 0o600);
}

#[tokio::test]
async fn certificate_steps_issue_once_through_the_csr_flow() {
    let world = World::new(&[("etcd1", "[etcd]"), ("m1", "[master]")]).await;
    let rb = world.runbook("");
    let ca_pem = rb.ctx.etcd_ca.cert_pem().to_string();
    for host in ["etcd1", "m1"] {
        let steps = cert_steps(&rb, host);
        assert_eq!(steps.len(), if host == "etcd1" { 2 } else { 1 });
        let c = world.agent(host).await;
        for s in &checks(&steps, &c, &rb.ctx).await {
            assert!(
                matches!(s, Change::Create { detail, .. } if detail.starts_with("issue /etc/kubernetes/pki/")),
                "{s:?}"
            );
        }
        let first = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
        assert!(first.iter().all(|c| *c), "{first:?}");
        let snapshot = |s: &Step| {
            let spec = spec(s);
            (
                std::fs::read(world.real(host, &spec.cert_path)).unwrap(),
                std::fs::read(world.real(host, &spec.key_path)).unwrap(),
            )
        };
        let issued: Vec<_> = steps.iter().map(snapshot).collect();
        for s in &steps {
            let spec = spec(s);
            assert_issued(
                &world.real(host, &spec.cert_path),
                &world.real(host, &spec.key_path),
                &ca_pem,
                &spec.names.to_strings(),
            );
            assert_eq!(
                std::fs::read_to_string(world.real(host, &spec.ca_path)).unwrap(),
                ca_pem
            );
        }
        // The second run issues nothing: same certificates, same keys.
        let second = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
        assert!(second.iter().all(|c| !c), "{second:?}");
        assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(steps.len()));
        assert_eq!(steps.iter().map(snapshot).collect::<Vec<_>>(), issued);
    }
    // No key of a host reached the state dir (they are born on the hosts and stay there).
    let mut host_keys = Vec::new();
    for host in ["etcd1", "m1"] {
        for s in cert_steps(&rb, host) {
            host_keys.push(std::fs::read(world.real(host, &spec(&s).key_path)).unwrap());
        }
    }
    for file in walk(world.state.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for key in &host_keys {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "a host key in {}",
                file.display()
            );
        }
    }
    world.shutdown().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_foreign_or_half_renewed_certificate_is_issued_again() {
    let world = World::new(&[("etcd1", "[etcd]")]).await;
    let rb = world.runbook("");
    let steps = cert_steps(&rb, "etcd1");
    let server = &steps[0];
    let spec = spec(server);
    let (cert, key) = (
        world.real("etcd1", &spec.cert_path),
        world.real("etcd1", &spec.key_path),
    );
    let c = world.agent("etcd1").await;
    assert!(run1(server, &c, &rb.ctx).await.unwrap());
    let key_before = key_pin(&key);

    // A certificate from another CA in its place: the plan says so, the run replaces it and
    // keeps the host's key.
    let other = rcgen::generate_simple_self_signed(vec!["etcd1".to_string()]).unwrap();
    std::fs::write(&cert, other.cert.pem()).unwrap();
    assert_eq!(
        certificates::problem(spec, &c, &rb.ctx).await.unwrap(),
        Some(Reissue::ForeignIssuer)
    );
    let Change::Create { detail, .. } = exec::check(server, Some(&c), &rb.ctx).await.unwrap()
    else {
        panic!("expected a new certificate");
    };
    assert!(detail.ends_with("is not signed by haop's CA"), "{detail}");
    assert!(run1(server, &c, &rb.ctx).await.unwrap());
    assert_eq!(key_pin(&key), key_before);
    assert_issued(
        &cert,
        &key,
        rb.ctx.etcd_ca.cert_pem(),
        &spec.names.to_strings(),
    );

    // A renewal made a new key and stopped before its certificate was installed: the old
    // certificate is valid but not for the key. The run finds out through a CSR of the key in
    // place (no key leaves the host) and issues for it.
    c.create_csr(pb::CreateCsrRequest {
        key_path: spec.key_path.clone(),
        common_name: spec.common_name.clone(),
        dns_names: spec.names.dns.clone(),
        ip_addresses: spec.names.ips.iter().map(|i| i.to_string()).collect(),
        rotate: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let rotated = key_pin(&key);
    assert_ne!(rotated, key_before);
    assert!(run1(server, &c, &rb.ctx).await.unwrap());
    assert_eq!(key_pin(&key), rotated, "issued for the key in place");
    assert_issued(
        &cert,
        &key,
        rb.ctx.etcd_ca.cert_pem(),
        &spec.names.to_strings(),
    );
    assert!(!run1(server, &c, &rb.ctx).await.unwrap());
    world.shutdown().await;
}

#[tokio::test]
async fn a_certificate_install_stopped_midway_converges_on_rerun_with_the_same_key() {
    let world = World::new(&[("etcd1", "[etcd]")]).await;
    let rb = world.runbook("");
    let steps = cert_steps(&rb, "etcd1");
    let c = world.agent("etcd1").await;
    let spec0 = spec(&steps[0]);
    let (cert, key, ca) = (
        world.real("etcd1", &spec0.cert_path),
        world.real("etcd1", &spec0.key_path),
        world.real("etcd1", &spec0.ca_path),
    );
    // The CA file cannot be written: the key is made, the CSR signed, the certificate
    // installed, and then the install of the CA next to it is refused.
    std::fs::create_dir_all(ca.join("in-the-way")).unwrap();
    let results = run_in_order(&steps, &c, &rb.ctx).await;
    assert_eq!(results.len(), 1, "the failure stops the host's later steps");
    match &results[0] {
        Err(StepError::Certificate(CertificateError::Agent(e))) if is_refusal(e) => {}
        other => panic!("expected the agent's refusal, got {other:?}"),
    }
    let made = key_pin(&key);
    assert!(
        cert.is_file(),
        "the agent installs the certificate before its CA"
    );

    // The cause removed, the plan sees what is missing and the rerun issues for the key the
    // failed run made.
    std::fs::remove_dir_all(&ca).unwrap();
    assert_eq!(
        certificates::problem(spec0, &c, &rb.ctx).await.unwrap(),
        Some(Reissue::CaMissing {
            ca_path: spec0.ca_path.clone()
        })
    );
    let rerun = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(rerun, [true, true]);
    assert_eq!(key_pin(&key), made, "the key of the failed run is kept");
    assert_issued(
        &cert,
        &key,
        rb.ctx.etcd_ca.cert_pem(),
        &spec0.names.to_strings(),
    );
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        rb.ctx.etcd_ca.cert_pem()
    );
    let again = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(again, [false, false]);
    assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(2));
    world.shutdown().await;
}

// --- kernel ------------------------------------------------------------------------------------

#[tokio::test]
async fn kernel_steps_change_once() {
    let world = World::new(&[("etcd1", "[etcd]"), ("m1", "[master]")]).await;
    let rb = world.runbook("");
    let steps = steps_of(&rb, "m1", |a| matches!(a, Action::Kernel(_)));
    assert_eq!(steps.len(), 3);
    let c = world.agent("m1").await;
    let first = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    // No swap on a lab host: nothing to turn off.
    assert_eq!(first, [true, true, false]);
    let second = changed(run_in_order(&steps, &c, &rb.ctx).await, &steps);
    assert_eq!(second, [false, false, false]);
    assert_eq!(checks(&steps, &c, &rb.ctx).await, unchanged(3));
    let Action::Kernel(KernelAction::Modules { name, modules }) = &steps[0].action else {
        panic!("{:?}", steps[0].action);
    };
    let file = world.real("m1", &format!("/etc/modules-load.d/{name}.conf"));
    assert_eq!(
        std::fs::read_to_string(file).unwrap(),
        modules_file(modules)
    );
    world.shutdown().await;
}

// --- recovery's host steps (etcd::member_host) -------------------------------------------------

const ETCD_UNIT: &str = "etcd.service";
/// What the stand-in etcd becomes once its script has exec'd: `/bin/sleep 61`. The steps below
/// write etcd's real unit and env files; the process they start must not be a real etcd here
/// (an in-process agent runs programs in this machine's view of the filesystem).
const FAKE_ETCD_CMDLINE: &[u8] = b"/bin/sleep\x0061\x00";

/// A host with recovery's view of it: the inventory (its etcd binary the stand-in), the
/// member's config, and its agent.
async fn member_world() -> (
    World,
    Inventory,
    haop_coordinator::etcd::config::MemberConfig,
    HostAgent,
) {
    let world = World::new(&[("etcd1", "[etcd]")]).await;
    let script = world.local_file("fake-etcd", b"#!/bin/sh\nexec /bin/sleep 61\n");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let inv = world.inventory(&format!(
        "etcd: {{binary: {{path: {}}}}}\n",
        script.display()
    ));
    let cfg = haop_coordinator::runbook::plan::member_config(&inv, inv.host("etcd1").unwrap());
    let agent = world.agent("etcd1").await;
    (world, inv, cfg, agent)
}

#[tokio::test]
async fn recovery_host_steps_start_and_seal_once() {
    use haop_coordinator::etcd::member_host;
    let (world, _inv, cfg, agent) = member_world().await;
    let cluster = "etcd1=https://10.0.0.11:2380,etcd2=https://10.0.0.12:2380";
    assert!(member_host::start_existing(&agent, &cfg, cluster)
        .await
        .unwrap());
    let pid = wait_for("the member to run", || async {
        let s = agent.unit_status(ETCD_UNIT).await.ok()?;
        (s.main_pid != 0 && s.active_state == "active").then_some(s.main_pid)
    })
    .await;
    let boot = std::fs::read_to_string(world.real("etcd1", "/etc/etcd.bootstrap.env"));
    let boot = boot.unwrap_or_default();
    assert!(
        boot.contains(&format!("ETCD_INITIAL_CLUSTER={cluster}"))
            && boot.contains("ETCD_INITIAL_CLUSTER_STATE=existing"),
        "{boot}"
    );
    // Twice: nothing changes and the same process runs.
    assert!(!member_host::start_existing(&agent, &cfg, cluster)
        .await
        .unwrap());
    assert_eq!(agent.unit_status(ETCD_UNIT).await.unwrap().main_pid, pid);
    // Sealed once the member is a voter; sealing again changes nothing.
    assert!(member_host::seal(&agent).await.unwrap());
    assert!(!member_host::seal(&agent).await.unwrap());
    let sealed = std::fs::read_to_string(world.real("etcd1", "/etc/etcd.bootstrap.env")).unwrap();
    assert_eq!(sealed, haop_coordinator::etcd::config::SEALED_BOOTSTRAP_ENV);
    assert!(member_host::stop(&agent).await.unwrap());
    assert!(!member_host::stop(&agent).await.unwrap());
    world.shutdown().await;
}

#[tokio::test]
async fn recovery_wipe_is_fenced_and_resumes_after_the_agent_went_away() {
    use haop_coordinator::etcd::api::Member;
    use haop_coordinator::etcd::member_host::{self, MemberHostError, Owner};
    let (mut world, inv, cfg, agent) = member_world().await;
    let data_dir = inv.etcd.data_dir.display().to_string();
    member_host::start_existing(&agent, &cfg, "etcd1=https://10.0.0.11:2380")
        .await
        .unwrap();
    std::fs::create_dir_all(world.real("etcd1", "/var/lib/etcd/member/snap")).unwrap();
    std::fs::write(world.real("etcd1", "/var/lib/etcd/member/snap/db"), b"data").unwrap();
    let peer = inv.etcd_peer_url(inv.host("etcd1").unwrap());
    let owner = Owner {
        host: "etcd1",
        peer_url: Some(&peer),
        member_id: Some(0x42),
    };
    let db = world.real("etcd1", "/var/lib/etcd/member/snap/db");

    // Fence 1: the agent reached is another host.
    let elsewhere = Owner {
        host: "etcd9",
        ..owner.clone()
    };
    let e = member_host::wipe(&agent, &elsewhere, &[], &data_dir)
        .await
        .unwrap_err();
    assert!(matches!(e, MemberHostError::Fence(_)), "{e}");
    // Fence 2: the member is still in the cluster, by ID, by name or by peer URL.
    for m in [
        Member {
            id: 0x42,
            name: String::new(),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner: false,
        },
        Member {
            id: 7,
            name: "etcd1".into(),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner: true,
        },
        Member {
            id: 8,
            name: String::new(),
            peer_urls: vec![peer.clone()],
            client_urls: vec![],
            is_learner: true,
        },
    ] {
        let e = member_host::wipe(&agent, &owner, &[m], &data_dir)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("still in the cluster"), "{e}");
    }
    // Fence 3, in the agent: the unit still runs.
    let e = member_host::wipe(&agent, &owner, &[], &data_dir)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("stop it"), "{e}");
    assert!(db.exists(), "a fence let the data go");

    // Stopped; then the agent goes away before the wipe, as a coordinator or host might.
    member_host::stop(&agent).await.unwrap();
    world.stop("etcd1").await;
    assert!(member_host::wipe(&agent, &owner, &[], &data_dir)
        .await
        .is_err());
    assert!(db.exists());
    world.start("etcd1").await;
    let agent = world.agent("etcd1").await;
    // Stopped on request, the member stays stopped across the agent's restart (that is not a
    // boot); the rerun's plan stops it first all the same (stop, then wipe), which changes
    // nothing.
    let s = agent.unit_status(ETCD_UNIT).await.unwrap();
    assert_ne!(s.active_state, "active", "the new agent started it: {s:?}");
    assert!(!member_host::stop(&agent).await.unwrap());
    let w = member_host::wipe(&agent, &owner, &[], &data_dir)
        .await
        .unwrap();
    assert!(
        w.changed && w.moved_to.starts_with("/var/lib/etcd.wiped-"),
        "{w:?}"
    );
    assert!(!db.exists());
    assert!(world
        .real("etcd1", &format!("{}/member/snap/db", w.moved_to))
        .exists());
    // Twice: nothing left to move.
    let again = member_host::wipe(&agent, &owner, &[], &data_dir)
        .await
        .unwrap();
    assert!(!again.changed);
    world.shutdown().await;
}

// --- haop plan of a fresh cluster -------------------------------------------------------------

/// A first apply writes the files an operator most wants to read: the plan shows each new file
/// whole, as a diff from nothing, with the VRRP password masked, in the JSON a script reads.
#[tokio::test]
async fn plan_shows_new_files_whole_with_secrets_masked() {
    let world = World::new(&[
        ("etcd1", "[etcd]"),
        ("master1", "[master]"),
        ("master2", "[master]"),
    ])
    .await;
    let rb = world
        .runbook("vip: {address: 10.0.0.100}\nkubernetes: {enabled: true, version: \"1.30.2\"}\n");
    let planned = haop_coordinator::runbook::plan(&rb, T).await.unwrap();
    let json = serde_json::to_value(&planned).unwrap();
    let password = std::fs::read_to_string(world.state.path().join("secrets/t.vrrp")).unwrap();
    let password = password.trim();
    assert_eq!(password.len(), 8);
    assert!(
        !json.to_string().contains(password),
        "the VRRP password is in the plan"
    );
    let created = |path: &str| -> Vec<String> {
        json.as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["change"]["kind"] == "create"
                    && p["change"]["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with(&format!("create {path} ")))
            })
            .map(|p| p["change"]["diff"].as_str().unwrap().to_string())
            .collect()
    };
    for (path, hosts, must) in [
        (
            "/etc/keepalived/keepalived.conf",
            2,
            &["vrrp_instance", "auth_pass ********", "virtual_ipaddress"][..],
        ),
        (
            "/etc/etcd.env",
            1,
            &["ETCD_NAME=etcd1", "ETCD_CLIENT_CERT_AUTH=true"][..],
        ),
        ("/etc/systemd/system/etcd.service", 1, &["ExecStart="][..]),
        (
            "/etc/kubernetes/kubeadm-config.yaml",
            1,
            &["controlPlaneEndpoint", "external"][..],
        ),
    ] {
        let diffs = created(path);
        assert_eq!(diffs.len(), hosts, "{path}: {json:#}");
        for d in diffs {
            assert!(
                d.starts_with(&format!("--- /dev/null\n+++ {path}\n")),
                "{path}: {d}"
            );
            // Every line added: a diff from nothing.
            assert!(
                d.lines()
                    .skip(3)
                    .all(|l| l.starts_with('+') || l.starts_with("\\")),
                "{path}: {d}"
            );
            for m in must {
                assert!(d.contains(m), "{path} lacks {m}: {d}");
            }
        }
    }
    world.shutdown().await;
}

/// A recorded, encrypted snapshot in `state`'s snapshot dir of cluster `t`, as `take` leaves
/// one (the bytes are not a real etcd database: copies never look inside).
fn fake_snapshot(
    state: &Path,
    stamp: &str,
    member: &str,
    verified: bool,
) -> (PathBuf, haop_coordinator::etcd::snapshots::meta::Meta) {
    use haop_coordinator::etcd::snapshots::{self, crypt, meta};
    use sha2::Digest;
    let key = crypt::SnapshotKey::load_or_create(state).unwrap();
    let dir = snapshots::snapshot_dir(state, "t");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{stamp}-{member}.snap"));
    let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let mut enc = crypt::Encryptor::new(&key, Vec::new(), "test").unwrap();
    enc.write(&plain).unwrap();
    let file = enc.finish().unwrap();
    std::fs::write(&path, &file).unwrap();
    let (at, now) = meta::now();
    let m = meta::Meta {
        format: meta::META_FORMAT,
        cluster: "t".into(),
        taken_at: at.clone(),
        taken_unix: now,
        member: member.into(),
        endpoint: String::new(),
        etcd_version: None,
        revision: 10,
        key_count: 3,
        hash_kv: 1,
        compact_revision: 0,
        size: plain.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&plain)),
        encrypted: true,
        key_id: Some(key.id()),
        file_size: file.len() as u64,
        file_sha256: hex::encode(sha2::Sha256::digest(&file)),
        copies: Vec::new(),
        verification: verified.then(|| meta::Verification {
            at,
            at_unix: now,
            ok: true,
            detail: "as recorded".into(),
            restored: None,
            etcd_version: None,
            seconds: 0.1,
        }),
    };
    meta::write(&path, &m).unwrap();
    (path, m)
}

#[tokio::test]
async fn snapshot_copies_go_to_other_hosts_come_back_checked_and_are_pruned_by_each_host() {
    use haop_coordinator::etcd::snapshots::{self, copies, meta};
    let world = World::new(&[
        ("etcd1", "[etcd]"),
        ("etcd2", "[etcd]"),
        ("etcd3", "[etcd]"),
    ])
    .await;
    let st = world.state.path();
    let inv = world.inventory("etcd: {snapshots: {copies: 2}, retention: {snapshots: 2}}\n");
    let (first, m) = fake_snapshot(st, "20260101T000000.000Z", "etcd1", false);
    let name = first.file_name().unwrap().to_str().unwrap().to_string();

    // Two copies, not on the member it came from; as the file is, owner-only.
    let r = snapshots::copy_to_hosts(st, &inv, &first, &|_| {})
        .await
        .unwrap();
    let hosts: Vec<&str> = r.made.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(hosts, ["etcd2", "etcd3"]);
    for h in ["etcd2", "etcd3"] {
        let real = world.real(h, &copies::host_path("t", &name));
        assert_eq!(
            std::fs::read(&real).unwrap(),
            std::fs::read(&first).unwrap()
        );
        assert_eq!(std::fs::metadata(&real).unwrap().mode() & 0o777, 0o600);
    }
    assert!(!world.real("etcd1", copies::COPY_DIR).exists());
    assert_eq!(meta::read(&first).unwrap().unwrap().copies.len(), 2);
    // Again: it has its copies, nothing is sent.
    let again = snapshots::copy_to_hosts(st, &inv, &first, &|_| {})
        .await
        .unwrap();
    assert!(again.made.is_empty() && again.total == 2, "{again:?}");

    // The operator's machine lost everything but pki/ and secrets/.
    let lost = tempfile::tempdir().unwrap();
    for d in ["pki", "secrets"] {
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg(st.join(d))
            .arg(lost.path())
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // Unverified copies are not taken without a name...
    let err = copies::fetch(lost.path(), &inv, "etcd2", None, &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, copies::CopyError::NoneVerified { .. }),
        "{err}"
    );
    // ...once verified (and the hosts' records refreshed), the newest verified one comes back.
    meta::update(&first, |m| {
        m.verification = fake_snapshot(st, "20250101T000000.000Z", "x", true)
            .1
            .verification
    })
    .unwrap();
    std::fs::remove_file(snapshots::snapshot_dir(st, "t").join("20250101T000000.000Z-x.snap"))
        .unwrap();
    std::fs::remove_file(snapshots::snapshot_dir(st, "t").join("20250101T000000.000Z-x.json"))
        .unwrap();
    snapshots::refresh_copies(st, &inv, &first, &|l| panic!("{l}"))
        .await
        .unwrap();
    let fetched = copies::fetch(lost.path(), &inv, "etcd2", None, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&first).unwrap()
    );
    let e = snapshots::Entry::read(&fetched);
    assert_eq!(e.state, snapshots::State::Verified, "{e:?}");
    assert_eq!(e.meta.as_ref().unwrap().sha256, m.sha256);
    // It decrypts with the kept key to what the record says.
    let plain = snapshots::Plaintext::open(lost.path(), &fetched)
        .await
        .unwrap();
    assert_eq!(plain.sha256, m.sha256);

    // A copy changed on its host is refused, and nothing is kept.
    let on3 = world.real("etcd3", &copies::host_path("t", &name));
    let mut bytes = std::fs::read(&on3).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&on3, &bytes).unwrap();
    let lost3 = tempfile::tempdir().unwrap();
    for d in ["pki", "secrets"] {
        std::process::Command::new("cp")
            .arg("-a")
            .arg(lost.path().join(d))
            .arg(lost3.path())
            .output()
            .unwrap();
    }
    let err = copies::fetch(lost3.path(), &inv, "etcd3", Some(&name), &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, copies::CopyError::Mismatch { .. }), "{err}");
    assert!(snapshots::list(lost3.path(), "t").is_empty());

    // Three newer, unverified snapshots with their copies; the retention (2) on every host
    // keeps the two newest and the newest verified one.
    for (i, member) in ["etcd2", "etcd3", "etcd1"].iter().enumerate() {
        let (p, _) = fake_snapshot(st, &format!("2026010{}T000000.000Z", i + 2), member, false);
        snapshots::copy_to_hosts(st, &inv, &p, &|_| {})
            .await
            .unwrap();
    }
    let (removed, on_hosts) = snapshots::prune_everywhere(st, &inv, &|l| panic!("{l}"))
        .await
        .unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(first.exists(), "the newest verified snapshot is kept");
    for h in ["etcd1", "etcd2", "etcd3"] {
        let index = copies::host_copies(st, &inv, h).await.unwrap();
        let names: Vec<&str> = index.copies.iter().map(|c| c.name.as_str()).collect();
        assert!(names.len() <= 3, "{h}: {names:?} after {on_hosts:?}");
        let dir = world.real(h, &copies::host_dir("t"));
        let files = std::fs::read_dir(&dir)
            .map(|d| d.count())
            .unwrap_or_default();
        assert_eq!(
            files,
            names.len() + usize::from(!names.is_empty()),
            "{h}: files beside the index: {names:?}"
        );
        if names.contains(&name.as_str()) {
            assert!(names.len() <= 3);
        } else {
            assert!(names.len() <= 2, "{h}: {names:?}");
        }
    }
}
