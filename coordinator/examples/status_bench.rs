//! Benchmark: `haop status` over many agents (the target, in BENCHMARKS.md: 200 agents in under
//! 1 s).
//!
//! Starts N real agents in this process, each on its own loopback address (127.0.1.1,
//! 127.0.1.2, ...) with its own temporary root and an mTLS identity from a fresh state dir,
//! writes an inventory of N hosts, and times the status collection (the same library call
//! `haop status` makes) over them, several rounds. The one etcd endpoint of the inventory has
//! no etcd behind it (it answers "connection refused" at once), so what is measured is the
//! agent fan-out. Run as:
//!
//! ```sh
//! cargo run --release -p haop-coordinator --example status_bench -- [AGENTS] [ROUNDS]
//! ```
//!
//! It prints one line per round and a median, and nothing else changes on the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haop_agent::config::AgentConfig;
use haop_agent::kernel::LabKernel;
use haop_agent::units::supervisor::Supervisor;
use haop_coordinator::inventory::{AgentEndpoint, ClusterName, Host, HostName, Inventory, Role};
use haop_coordinator::pki::{
    CertificateAuthority, ExpectedNames, KeyAlgorithm, Profile, SigningRequest, AGENT_CA,
};
use haop_coordinator::status::{collect, StatusOptions};
use haop_coordinator::trust::{self, pki_dir, InitOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let agents: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let state = tempfile::tempdir()?;
    trust::init(state.path(), InitOptions::default())?;
    let ca = CertificateAuthority::load(&pki_dir(state.path()), AGENT_CA)?;
    let certs = tempfile::tempdir()?;

    let mut hosts = Vec::new();
    let mut stops = Vec::new();
    let mut roots = Vec::new();
    for i in 0..agents {
        let ip = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        let name = format!("host{i:03}");
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("etc"))?;
        std::fs::write(root.path().join("etc/hostname"), format!("{name}\n"))?;
        // The agent's identity, as enrollment would leave it.
        let leaf = ca.issue_local(
            certs.path(),
            &name,
            KeyAlgorithm::EcdsaP256,
            &SigningRequest {
                profile: Profile::Server,
                lifetime: Duration::from_secs(3600),
                expected: ExpectedNames::for_host(&name, None, &[IpAddr::V4(ip)]),
                organization: None,
                common_name: name.clone(),
            },
        )?;
        let pki = root.path().join("var/lib/haop-agent/pki");
        std::fs::create_dir_all(&pki)?;
        std::fs::copy(&leaf.cert_path, pki.join("agent.crt"))?;
        std::fs::copy(&leaf.key_path, pki.join("agent.key"))?;
        std::fs::write(pki.join("ca.crt"), ca.cert_pem())?;

        let config = AgentConfig {
            root: root.path().to_path_buf(),
            ..AgentConfig::default()
        };
        let fs = haop_agent::paths::HostFs::new(&config.root, config.managed_roots.clone());
        let units = Arc::new(Supervisor::new(fs, config.state_dir.clone())?);
        let agent = haop_agent::server::assemble(&config, units, Arc::new(LabKernel::default()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 7443)).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = haop_agent::server::serve(agent, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        stops.push(tx);
        roots.push(root);
        let roles = if i == 0 {
            vec![Role::Etcd]
        } else {
            vec![Role::Worker]
        };
        let mut host = Host::new(HostName::try_from(name.as_str())?, IpAddr::V4(ip), roles);
        host.agent = format!("https://{ip}:7443").parse::<AgentEndpoint>()?;
        hosts.push(host);
    }
    let mut inv = Inventory::new(ClusterName::try_from("bench")?, hosts);
    inv.kubernetes.enabled = false;
    inv.allow_single_etcd = true;

    let options = StatusOptions {
        timeout: Duration::from_secs(2),
        identity: None,
    };
    let mut times = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        let report = collect(state.path(), &inv, &options).await?;
        let elapsed = t.elapsed();
        let reachable = serde_json::to_value(&report)?["hosts"]
            .as_array()
            .map(|h| h.iter().filter(|h| h["reachable"] == true).count())
            .unwrap_or(0);
        println!(
            "round {}: {} agents, {} reachable, {:.0} ms",
            round + 1,
            agents,
            reachable,
            elapsed.as_secs_f64() * 1000.0
        );
        times.push(elapsed);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "status over {agents} agents: median {:.0} ms, min {:.0} ms, max {:.0} ms ({rounds} rounds; target < 1000 ms)",
        median.as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
    for s in stops {
        let _ = s.send(());
    }
    Ok(())
}
