//! Faults the lab injects besides a crashed unit ([`Lab::crash`]): a host cut off from the
//! network, and a host's agent restarted. They are what a fault suite needs to rehearse a pulled
//! cable, a switch port gone dark, an agent upgrade or an agent crash in the middle of haop's
//! work, and what a person trying haop needs to see how it copes.
//!
//! A cut sets the machine-side end of the host's veth down. The host keeps running (its agent,
//! its etcd) and its `eth0` loses carrier; its packets go nowhere and nobody else's reach it, with
//! no reset or ICMP error, so peers and clients learn of it only by their own timeouts, as with
//! a real partition. A restore sets the veth up again; nothing else changed, so connections
//! resume where TCP's retransmissions find them. Both are ensures (they answer whether they
//! changed anything) and touch only a veth that is this lab's: named in its record and enslaved
//! to its own bridge.
//!
//! An agent restart stops the recorded agent (by pid, after checking it still is that agent:
//! SIGTERM for a graceful exit as an upgrade does, or SIGKILL as a crash), starts a new one with
//! the same root and config, records its pid at once, and waits until it answers over mTLS (it
//! is enrolled already). What the old agent ran is the new agent's business: its supervisor
//! adopts the units that kept running.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;
use tracing::info;

use super::agents::{self, AgentProcess};
use super::sys::{self, Ip};
use super::{blocking, Lab, LabError, LabHost, READY_TIMEOUT};

/// How an agent is stopped before it is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStop {
    /// SIGTERM: the agent exits gracefully, as for an upgrade.
    Term,
    /// SIGKILL: the agent crashes.
    Kill,
}

/// What [`Lab::restart_agent`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRestart {
    pub host: String,
    /// The agent that was stopped; none when it was not running.
    pub old_pid: Option<u32>,
    pub new_pid: u32,
}

/// How long a SIGTERMed agent may take to exit before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(15);

impl Lab {
    /// Cuts `host` off the lab's network (its veth down). Answers whether it was connected.
    pub fn cut(&self, host: &str) -> Result<bool, LabError> {
        self.set_link(host, false)
    }

    /// Connects `host` again after [`Lab::cut`] (its veth up). Answers whether it was cut off.
    pub fn restore(&self, host: &str) -> Result<bool, LabError> {
        self.set_link(host, true)
    }

    /// Whether `host` is cut off (its veth is down).
    pub fn is_cut(&self, host: &str) -> Result<bool, LabError> {
        let h = self.host(host)?;
        self.check_veth(h)?;
        Ok(!sys::link_is_up(&h.veth))
    }

    fn set_link(&self, host: &str, up: bool) -> Result<bool, LabError> {
        sys::require_root()?;
        let h = self.host(host)?.clone();
        self.check_veth(&h)?;
        if sys::link_is_up(&h.veth) == up {
            return Ok(false);
        }
        let state = if up { "up" } else { "down" };
        Ip::find()?.run(&["link", "set", "dev", &h.veth, state])?;
        info!(lab = %self.name(), host = %h.name, veth = %h.veth, state, "host link set");
        Ok(true)
    }

    /// Slows the traffic towards `host` to `rate` (tc's notation: `20mbit`, `512kbit`), as a
    /// slow or distant link would, or lifts the limit (`None`). Only what reaches the host is
    /// shaped (a token bucket on the machine-side end of its veth), which is what a member
    /// receiving a database waits on. Answers whether anything changed.
    pub fn throttle(&self, host: &str, rate: Option<&str>) -> Result<bool, LabError> {
        sys::require_root()?;
        let h = self.host(host)?.clone();
        self.check_veth(&h)?;
        let tc = sys::Tc::find()?;
        let shaped = tc.run(&["qdisc", "show", "dev", &h.veth])?.contains("tbf");
        match rate {
            None if !shaped => return Ok(false),
            None => {
                tc.run(&["qdisc", "del", "dev", &h.veth, "root"])?;
            }
            Some(rate) => {
                if !rate.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                    return Err(LabError::BadRate {
                        rate: rate.to_string(),
                    });
                }
                tc.run(&[
                    "qdisc", "replace", "dev", &h.veth, "root", "tbf", "rate", rate, "burst",
                    "64kb", "latency", "2s",
                ])?;
            }
        }
        info!(lab = %self.name(), host = %h.name, veth = %h.veth, rate = ?rate, "host link throttled");
        Ok(true)
    }

    /// The veth of `h` exists and is enslaved to this lab's bridge (which carries this lab's MAC).
    fn check_veth(&self, h: &LabHost) -> Result<(), LabError> {
        let not_ours = |reason: String| LabError::NotOurLink {
            link: h.veth.clone(),
            reason,
        };
        if !sys::link_exists(&h.veth) {
            return Err(not_ours("it does not exist".to_string()));
        }
        let bridge = &self.record.bridge;
        if sys::link_master(&h.veth).as_deref() != Some(bridge.as_str()) {
            return Err(not_ours(format!("it is not on the lab's bridge {bridge}")));
        }
        if sys::link_mac(bridge).as_deref() != Some(self.record.bridge_mac.as_str()) {
            return Err(not_ours(format!("bridge {bridge} belongs to another lab")));
        }
        Ok(())
    }

    /// Stops the agent of `host` as `how` says and starts a new one; answers once the new agent
    /// answers GetFacts over mTLS (at most [`READY_TIMEOUT`]). The new pid is in the lab's
    /// record before this returns, so `down` finds it whatever happens next.
    pub async fn restart_agent(
        &mut self,
        host: &str,
        how: AgentStop,
    ) -> Result<AgentRestart, LabError> {
        sys::require_root()?;
        if self.booted().is_some() {
            // systemd owns a booted host's agent: restart it there, as an operator would.
            return Err(LabError::SystemdOwnsAgent {
                lab: self.name().to_string(),
                host: host.to_string(),
            });
        }
        let agent = agents::find_agent_binary()?;
        let ip = Ip::find()?;
        let Some(i) = self.record.hosts.iter().position(|h| h.name == host) else {
            return Err(self.no_such_host(host));
        };
        let h = self.record.hosts[i].clone();
        let old_pid = match agents::agent_process(&h) {
            AgentProcess::Gone => None,
            AgentProcess::Foreign { pid, reason } => {
                return Err(LabError::ForeignProcess { pid, reason });
            }
            AgentProcess::Ours(pid) => {
                let (signal, grace) = match how {
                    AgentStop::Term => (Signal::SIGTERM, TERM_GRACE),
                    AgentStop::Kill => (Signal::SIGKILL, Duration::from_secs(5)),
                };
                agents::signal(pid, signal)?;
                let left = blocking(move || agents::wait_gone(&[pid], grace)).await;
                if !left.is_empty() {
                    agents::signal(pid, Signal::SIGKILL)?;
                    let left =
                        blocking(move || agents::wait_gone(&[pid], Duration::from_secs(5))).await;
                    if !left.is_empty() {
                        return Err(LabError::ForeignProcess {
                            pid,
                            reason: "the agent still runs 5 s after SIGKILL".to_string(),
                        });
                    }
                }
                info!(lab = %self.name(), host = %h.name, pid, signal = signal.as_str(), "agent stopped");
                Some(pid)
            }
        };
        let child = agents::spawn_agent(&ip, &agent, &h)?;
        let new_pid = child.id();
        {
            let host = &mut self.record.hosts[i];
            host.agent_pid = Some(new_pid);
            host.agent_start_time = sys::ProcStat::read(new_pid).map(|s| s.start_time);
        }
        if let Err(e) = self.record.write(&self.dir) {
            agents::detach(child);
            return Err(e);
        }
        let trust = std::sync::Arc::new(crate::trust::Trust::load(&self.state_dir())?);
        let started = vec![(self.record.hosts[i].clone(), child)];
        agents::wait_ready(trust, started, READY_TIMEOUT).await?;
        info!(lab = %self.name(), host = %h.name, old_pid = ?old_pid, new_pid, "agent restarted");
        Ok(AgentRestart {
            host: h.name,
            old_pid,
            new_pid,
        })
    }
}
