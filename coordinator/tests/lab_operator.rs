//! `haop operator run` in the lab, with real etcd: two instances on two hosts (the lab's
//! workers, which are not in the inventory: admin machines that only reach the cluster) elect
//! one leader through etcd; a member crashed and wiped is healed by the leader alone; the
//! leader's host is cut off in the middle of the recovery (a failpoint holds it right after
//! `member remove`), the other instance takes over once the lease expires and finishes, and no
//! action of the old leader is recorded after the new leader's election. A writer runs
//! throughout and every acknowledged write is on every member afterwards. A real Prometheus
//! (Debian's) scrapes both instances. With two members of three stopped, both instances hold
//! back and say why, and no action is recorded.
//!
//! Also here: `haop status` right after the etcd leader is SIGKILLed tells the election from a
//! lost quorum (degraded, not down).

mod common;

use common::{assert_all_present, haop, members, require_root, text, voters_named, Writer};

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::inventory::{Inventory, Role};
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::operator::election;

const ELECTED: &str = "elected: this instance leads";

/// An operator instance in a lab host's network namespace, killed when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(
        st: &Path,
        namespace: &str,
        inv: &str,
        name: &str,
        metrics: &str,
        env: &[(&str, &str)],
    ) -> Operator {
        let log = st.join(format!("operator-{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", namespace])
            .arg(common::haop_bin())
            .args([
                "operator",
                "run",
                "-f",
                inv,
                "--name",
                name,
                "--interval",
                "1s",
                "--lease-ttl",
                // Long enough that an etcd leader election under a loaded CI machine (the
                // crashed member may have led) never costs the operator its lease.
                "10s",
                "--metrics",
                metrics,
            ])
            .env("HAOP_STATE_DIR", st)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Operator {
            child: cmd.spawn().expect("start haop operator run"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the instance leads, as its log last said.
    fn leads(&self) -> bool {
        self.log()
            .lines()
            .rev()
            .find(|l| l.contains(ELECTED) || l.contains("lost the leadership"))
            .is_some_and(|l| l.contains(ELECTED))
    }

    /// Waits until the instance leads; panics with the log after `limit`.
    async fn wait_leads(&self, limit: Duration) {
        let start = Instant::now();
        while !self.leads() {
            assert!(
                start.elapsed() < limit,
                "{} does not lead after {limit:?}:\n{}",
                self.log.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the log has `needle`; panics with the log after `limit`.
    async fn wait_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in {} within {limit:?}:\n{}",
                self.log.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A prometheus server scraping `targets`, killed (and its data removed) when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: haop-operator\n    static_configs:\n      - targets: [{}]\n",
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package; scripts/setup installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query with one result, when it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let body = http_get(&format!("127.0.0.1:{}", self.port), &path)?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let r = v["data"]["result"].as_array()?;
        if r.len() != 1 {
            return None;
        }
        r[0]["value"][1].as_str()?.parse().ok()
    }

    async fn wait_for(&self, q: &str, want: f64, limit: Duration) {
        let start = Instant::now();
        loop {
            let got = self.query(q);
            if got == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "prometheus: {q} is {got:?}, not {want}, after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.1 GET; the body when the answer is 200.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_elect_one_that_heals_and_a_cut_off_leader_is_replaced() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-op", std::process::id() % 100_000);
    let spec = LabSpec {
        etcd: 3,
        masters: 0,
        workers: 2,
        from_seed: false,
    };
    let lab = LabGuard::up(st, &name, spec).await.expect("lab up");
    // The inventory is the three etcd hosts; the workers are the admin machines the
    // operators run on.
    let (mut inventory, _) = Inventory::load(&lab.inventory_path()).unwrap();
    inventory
        .hosts
        .retain(|h| h.roles.iter().all(|r| *r == Role::Etcd));
    let inv_path = st.join("inventory.yaml");
    std::fs::write(&inv_path, inventory.to_yaml().unwrap()).unwrap();
    let inv = inv_path.display().to_string();
    let applied = haop(st, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));

    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    let writer = Writer::start(st, &endpoints, "/writer");

    let w1 = lab.host("worker1").unwrap().clone();
    let w2 = lab.host("worker2").unwrap().clone();
    let m1 = format!("{}:9469", w1.address);
    let m2 = format!("{}:9469", w2.address);
    // op-a pauses 25 s right after the member removal of a recovery.
    let a = Operator::start(
        st,
        &w1.namespace,
        &inv,
        "op-a",
        &m1,
        &[
            ("HAOP_FAILPOINT", "recover:after-remove"),
            ("HAOP_FAILPOINT_SLEEP", "25"),
        ],
    );
    a.wait_leads(Duration::from_secs(30)).await;
    let b = Operator::start(st, &w2.namespace, &inv, "op-b", &m2, &[]);
    b.wait_log("not the leader (op-a leads)", Duration::from_secs(30))
        .await;

    // A real Prometheus scrapes both: exactly one leads, and the cluster's metrics are there.
    let prometheus = Prometheus::start(&[m1.clone(), m2.clone()]);
    prometheus
        .wait_for("sum(haop_operator_leader)", 1.0, Duration::from_secs(60))
        .await;
    prometheus
        .wait_for(
            "haop_operator_leader{operator=\"op-a\"}",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    prometheus
        .wait_for(
            "max(haop_etcd_members_healthy)",
            3.0,
            Duration::from_secs(30),
        )
        .await;
    // The leader's first round keeps the snapshot schedule (no verified snapshot yet).
    prometheus
        .wait_for(
            "haop_operator_actions_total{operator=\"op-a\",kind=\"snapshot\"}",
            1.0,
            Duration::from_secs(90),
        )
        .await;
    drop(prometheus);

    // etcd3 crashes and loses its disk: op-a starts the recovery and holds after the removal.
    lab.crash("etcd3", "etcd.service", true)
        .await
        .expect("crash");
    a.wait_log(
        "failpoint recover:after-remove: pausing",
        Duration::from_secs(90),
    )
    .await;
    // op-a's host is cut off: op-b takes over once the lease expires, and finishes.
    // One leadership from the start until the cut: the lease was renewed all along, also
    // while etcd3 was down.
    assert!(
        a.leads() && !b.leads() && !a.log().contains("lost the leadership"),
        "op-a should have led without a break until the cut:\n{}\n{}",
        a.log(),
        b.log()
    );
    lab.cut("worker1").unwrap();
    let cut_at = Instant::now();
    b.wait_leads(Duration::from_secs(30)).await;
    let took_over = cut_at.elapsed();
    let start = Instant::now();
    loop {
        let healthy = client.statuses(&endpoints).await.iter().all(|s| s.is_ok());
        if healthy && members(&client).await == voters_named(3) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "op-b did not finish the recovery:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // op-a knew it lost the leadership while cut off, and stopped.
    a.wait_log("lost the leadership", Duration::from_secs(30))
        .await;
    lab.restore("worker1").unwrap();
    // Past op-a's pause: had it kept going, its next step would come now.
    tokio::time::sleep(Duration::from_secs(27).saturating_sub(cut_at.elapsed())).await;

    let raw = election::Endpoints::connect(&client, Duration::from_secs(5))
        .await
        .unwrap();
    let records = election::actions(&raw).await.unwrap();
    let of = |who: &str| -> Vec<&(i64, election::ActionRecord)> {
        records.iter().filter(|(_, r)| r.instance == who).collect()
    };
    let (by_a, by_b) = (of("op-a"), of("op-b"));
    assert!(
        by_a.iter().any(|(_, r)| r.step.starts_with("remove etcd3")),
        "op-a removed etcd3: {records:?}"
    );
    assert!(
        by_b.iter()
            .any(|(_, r)| r.step.starts_with("add-learner etcd3")),
        "op-b added etcd3 back: {records:?}"
    );
    // The leadership under which op-b finished the recovery, and its first recorded step:
    // op-b could take it only after op-a's key was gone with op-a's lease.
    let b_leadership = by_b
        .iter()
        .find(|(_, r)| r.step.starts_with("add-learner etcd3"))
        .map(|(_, r)| r.leader_revision)
        .unwrap();
    let b_first = by_b
        .iter()
        .filter(|(_, r)| r.leader_revision == b_leadership)
        .map(|(rev, _)| *rev)
        .min()
        .unwrap();
    for (rev, r) in &by_a {
        assert!(
            *rev < b_first,
            "op-a's step {:?} was recorded at revision {rev}, after op-b's first step as the \
             new leader at {b_first}",
            r.step
        );
    }
    assert!(
        !by_a.iter().any(|(_, r)| r.step.starts_with("add-learner")),
        "op-a went on after losing the lease: {records:?}"
    );
    println!(
        "takeover {:.1} s after the cut; records: {} by op-a, {} by op-b",
        took_over.as_secs_f64(),
        by_a.len(),
        by_b.len()
    );

    let (acked, gap) = writer.finish_with_gap().await;
    assert!(acked.len() > 10, "the writer wrote {}", acked.len());
    for ep in &endpoints {
        let one = EtcdClient::connect(st, std::slice::from_ref(ep), Duration::from_secs(2))
            .await
            .unwrap();
        assert_all_present(&one, &acked).await;
    }
    println!(
        "writer: {} acknowledged writes, longest gap {:.1} s",
        acked.len(),
        gap.as_secs_f64()
    );

    // Lost quorum: two members stopped. Both instances hold back and say why; nothing is done.
    let before = records.len();
    // Both at once: one stopped alone is a failed member the leader rightly heals.
    let stops: Vec<_> = ["etcd2", "etcd3"]
        .into_iter()
        .map(|host| {
            let (st, name) = (st.to_path_buf(), name.clone());
            std::thread::spawn(move || {
                haop(
                    &st,
                    &[
                        "agent",
                        "--lab",
                        &name,
                        "--host",
                        host,
                        "unit",
                        "etcd.service",
                        "stop",
                    ],
                )
            })
        })
        .collect();
    for s in stops {
        let stopped = s.join().unwrap();
        assert!(stopped.status.success(), "{}", text(&stopped));
    }
    for op in [&a, &b] {
        op.wait_log("etcd has no quorum", Duration::from_secs(60))
            .await;
    }
    assert!(b.log().contains("haop etcd restore"), "{}", b.log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for host in ["etcd2", "etcd3"] {
        let started = haop(
            st,
            &[
                "agent",
                "--lab",
                &name,
                "--host",
                host,
                "unit",
                "etcd.service",
                "start",
            ],
        );
        assert!(started.status.success(), "{}", text(&started));
    }
    let start = Instant::now();
    let after = loop {
        if let Ok(r) = election::actions(&raw).await {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "etcd did not come back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let during: Vec<_> = after
        .iter()
        .skip(before)
        .filter(|(_, r)| !r.step.starts_with("snapshot"))
        .collect();
    assert!(
        !during
            .iter()
            .any(|(_, r)| ["stop-unit", "remove", "wipe", "add-learner"]
                .iter()
                .any(|k| r.step.starts_with(k))),
        "the operator acted on members while the quorum was lost: {during:?}"
    );
    println!("op-a:\n{}\nop-b:\n{}", a.log(), b.log());
    drop((a, b));
    lab.down().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_an_election_from_a_lost_quorum() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-el", std::process::id() % 100_000);
    let (lab, inv, inventory) = common::applied_lab(st, &name).await;
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    for round in 0..2 {
        // Find the leader, kill it, and ask status at once and a little later.
        let leader = loop {
            let s = client.statuses(&endpoints).await;
            let ok: Vec<_> = s.iter().flatten().collect();
            if let Some(l) = ok.iter().find(|s| s.leader_id == s.member_id) {
                break inventory
                    .etcd_hosts()
                    .iter()
                    .zip(&s)
                    .find(|(_, s)| s.as_ref().is_ok_and(|s| s.member_id == l.member_id))
                    .map(|(h, _)| h.name.as_str().to_string())
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        lab.crash(&leader, "etcd.service", false)
            .await
            .expect("crash");
        for delay in [0u64, 600] {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let s = common::status::status(st, &inv, &[]);
            let verdict = s.json["verdict"]["health"].as_str().unwrap().to_string();
            let problems = s.json["problems"].to_string();
            println!(
                "round {round}, {delay} ms after killing {leader}: {verdict}, electing {}, \
                 leader {}",
                s.json["etcd"]["electing"], s.json["etcd"]["leader"]
            );
            assert_ne!(
                verdict, "down",
                "an election is not a lost quorum: {problems}"
            );
            assert!(!problems.contains("no quorum"), "{problems}");
        }
        // The killed member is restarted by its unit; wait for three healthy members.
        let start = Instant::now();
        while !client.statuses(&endpoints).await.iter().all(|s| s.is_ok())
            || client.health(&endpoints[0]).await.is_err()
        {
            assert!(start.elapsed() < Duration::from_secs(60), "not back");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    lab.down().unwrap();
}
