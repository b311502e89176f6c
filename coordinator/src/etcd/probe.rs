//! What a rolling change asks of etcd, from two places: haop's own etcd client, or etcdctl run
//! by an agent on an etcd host with that host's own certificate files.
//!
//! Why the second: a cluster built by hand verifies every client certificate against its own CA
//! (etcd requires a client certificate of the trusted CA whenever `--trusted-ca-file` is set,
//! whatever `--client-cert-auth` says; the flag only decides whether the certificate's CN is
//! taken as the user). haop holds no certificate of that CA and never will: its key stays on the
//! hosts until adoption removes it, and no key travels. Until every member also trusts haop's
//! CA (the first round of the migration), haop asks through an agent, whose etcdctl
//! (allow-listed, no shell) presents the host's own certificate from where it lies. Both answer
//! the same questions ([`Probe`]), so the rolling restart ([`super::rolling`]) is one code path.

use std::future::Future;

use haop_proto::v1 as pb;
use serde::Deserialize;

use super::api::{EndpointStatus, EtcdApiError, EtcdClient, Member};
use crate::agent::HostAgent;

/// The questions a rolling change asks etcd.
pub trait Probe: Sync {
    fn status_of(
        &self,
        url: &str,
    ) -> impl Future<Output = Result<EndpointStatus, EtcdApiError>> + Send;
    /// Answers when `url` serves a linearizable read.
    fn healthy(&self, url: &str) -> impl Future<Output = Result<(), EtcdApiError>> + Send;
    fn members(&self) -> impl Future<Output = Result<Vec<Member>, EtcdApiError>> + Send;
    fn move_leader(
        &self,
        leader_url: &str,
        to: u64,
    ) -> impl Future<Output = Result<(), EtcdApiError>> + Send;
}

impl Probe for EtcdClient {
    async fn status_of(&self, url: &str) -> Result<EndpointStatus, EtcdApiError> {
        EtcdClient::status_of(self, url).await
    }
    async fn healthy(&self, url: &str) -> Result<(), EtcdApiError> {
        self.health(url).await.map(|_| ())
    }
    async fn members(&self) -> Result<Vec<Member>, EtcdApiError> {
        self.member_list().await
    }
    async fn move_leader(&self, leader_url: &str, to: u64) -> Result<(), EtcdApiError> {
        EtcdClient::move_leader(self, leader_url, to).await
    }
}

/// etcdctl on one host, with certificate files that lie on that host.
#[derive(Debug, Clone)]
pub struct AgentEtcdctl {
    pub agent: HostAgent,
    /// Every member's client URL, for questions about the cluster.
    pub endpoints: Vec<String>,
    pub cacert: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
struct StatusRow {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: StatusBody,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusBody {
    header: Header,
    version: String,
    #[serde(rename = "dbSize")]
    db_size: i64,
    #[serde(rename = "dbSizeInUse")]
    db_size_in_use: i64,
    leader: u64,
    #[serde(rename = "raftIndex")]
    raft_index: u64,
    #[serde(rename = "raftTerm")]
    raft_term: u64,
    #[serde(rename = "raftAppliedIndex")]
    raft_applied_index: u64,
    errors: Vec<String>,
    #[serde(rename = "isLearner")]
    is_learner: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Header {
    member_id: u64,
}

#[derive(Debug, Deserialize)]
struct MemberList {
    #[serde(default)]
    members: Vec<MemberRow>,
}

#[derive(Debug, Deserialize)]
struct MemberRow {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
}

/// `etcdctl endpoint status -w json` of one endpoint.
pub fn parse_status(json: &str) -> Result<EndpointStatus, String> {
    let rows: Vec<StatusRow> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let r = rows.into_iter().next().ok_or("no endpoint in the answer")?;
    Ok(EndpointStatus {
        endpoint: r.endpoint,
        member_id: r.status.header.member_id,
        leader_id: r.status.leader,
        raft_term: r.status.raft_term,
        raft_index: r.status.raft_index,
        raft_applied_index: r.status.raft_applied_index,
        db_size: r.status.db_size,
        db_size_in_use: r.status.db_size_in_use,
        is_learner: r.status.is_learner,
        errors: r.status.errors,
        version: r.status.version,
    })
}

/// `etcdctl member list -w json`.
pub fn parse_members(json: &str) -> Result<Vec<Member>, String> {
    let list: MemberList = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(list
        .members
        .into_iter()
        .map(|m| Member {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        })
        .collect())
}

impl AgentEtcdctl {
    async fn run(
        &self,
        op: &'static str,
        endpoints: &str,
        args: &[&str],
    ) -> Result<String, EtcdApiError> {
        let err = |message: String| EtcdApiError::Etcdctl {
            host: self.agent.host().to_string(),
            endpoint: endpoints.to_string(),
            op,
            message,
        };
        let mut all = vec![
            format!("--endpoints={endpoints}"),
            format!("--cacert={}", self.cacert),
            format!("--cert={}", self.cert),
            format!("--key={}", self.key),
            "--dial-timeout=2s".to_string(),
            "--command-timeout=5s".to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = self
            .agent
            .exec(pb::ExecRequest {
                program: "etcdctl".into(),
                args: all,
                timeout_seconds: 15,
                env: [("ETCDCTL_API".to_string(), "3".to_string())].into(),
                ..Default::default()
            })
            .await
            .map_err(|e| err(crate::error::short_error(&e)))?;
        if out.exit_code != 0 {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(err(stderr
                .trim()
                .lines()
                .last()
                .unwrap_or("failed")
                .to_string()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `etcdctl member update ID --peer-urls=URLS`.
    pub async fn member_update(&self, id: u64, peer_urls: &[String]) -> Result<(), EtcdApiError> {
        let eps = self.endpoints.join(",");
        self.run(
            "member update",
            &eps,
            &[
                "member",
                "update",
                &format!("{id:x}"),
                &format!("--peer-urls={}", peer_urls.join(",")),
            ],
        )
        .await
        .map(|_| ())
    }
}

impl Probe for AgentEtcdctl {
    async fn status_of(&self, url: &str) -> Result<EndpointStatus, EtcdApiError> {
        let out = self
            .run(
                "endpoint status",
                url,
                &["endpoint", "status", "-w", "json"],
            )
            .await?;
        parse_status(&out).map_err(|message| EtcdApiError::Etcdctl {
            host: self.agent.host().to_string(),
            endpoint: url.to_string(),
            op: "endpoint status",
            message,
        })
    }
    async fn healthy(&self, url: &str) -> Result<(), EtcdApiError> {
        self.run("endpoint health", url, &["endpoint", "health"])
            .await
            .map(|_| ())
    }
    async fn members(&self) -> Result<Vec<Member>, EtcdApiError> {
        let eps = self.endpoints.join(",");
        let out = self
            .run("member list", &eps, &["member", "list", "-w", "json"])
            .await?;
        parse_members(&out).map_err(|message| EtcdApiError::Etcdctl {
            host: self.agent.host().to_string(),
            endpoint: eps.clone(),
            op: "member list",
            message,
        })
    }
    async fn move_leader(&self, leader_url: &str, to: u64) -> Result<(), EtcdApiError> {
        self.run(
            "move-leader",
            leader_url,
            &["move-leader", &format!("{to:x}")],
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_etcdctls_json() {
        // etcdctl 3.4.23 `endpoint status -w json` (zero fields are left out).
        let s = parse_status(r#"[{"Endpoint":"https://10.77.1.11:2379","Status":{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"revision":12,"raft_term":3},"version":"3.4.23","dbSize":20480,"leader":9372538179322589801,"raftIndex":19,"raftTerm":3,"raftAppliedIndex":19,"dbSizeInUse":20480}}]"#).unwrap();
        assert_eq!(s.member_id, 9372538179322589801);
        assert_eq!(s.leader_id, s.member_id);
        assert_eq!((s.raft_index, s.raft_applied_index), (19, 19));
        assert_eq!(s.version, "3.4.23");
        let m = parse_members(r#"{"header":{"cluster_id":1,"member_id":2,"raft_term":3},"members":[{"ID":9372538179322589801,"name":"master-0","peerURLs":["https://etcd1:2380"],"clientURLs":["https://10.77.1.11:2379"]},{"ID":10501334649042878790,"peerURLs":["https://10.77.1.14:2380"],"isLearner":true}]}"#).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "master-0");
        assert!(m[1].is_learner && m[1].name.is_empty());
        assert_eq!(m[1].id, 10501334649042878790);
    }
}
