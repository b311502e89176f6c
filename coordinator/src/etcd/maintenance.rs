//! `haop etcd compact`, `defrag` and `alarms`: keeping a member's database within its quota.
//!
//! etcd refuses writes once a database outgrows `--quota-backend-bytes` (the NOSPACE alarm).
//! The way out is the same three moves in order: compact the history, defragment each member so
//! the freed pages go back to the filesystem, disarm the alarm. Defragmentation blocks the
//! member it runs on, so it goes one member at a time, and the next member is touched only once
//! this one answers again; the time a member may take grows with its database (a 2 GiB
//! defragmentation rewrites 2 GiB), see [`super::api::scaled_timeout`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::api::{Compaction, EtcdApiError, EtcdClient};

/// Errors of the maintenance operations.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Etcd(#[from] EtcdApiError),
    #[error(
        "{endpoint} did not answer within {} s of its defragmentation; the members after it \
         were not touched",
        .waited.as_secs()
    )]
    NotBack { endpoint: String, waited: Duration },
}

/// One member's defragmentation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Defragmented {
    pub endpoint: String,
    pub before: i64,
    pub after: i64,
}

/// An active alarm, with the member's name where the member list answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Alarm {
    pub member_id: u64,
    pub member: Option<String>,
    pub alarm: String,
}

impl std::fmt::Display for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.member {
            Some(name) => write!(f, "{} on member {name} ({:x})", self.alarm, self.member_id),
            None => write!(f, "{} on member {:x}", self.alarm, self.member_id),
        }
    }
}

/// Compacts the history before the current revision (see [`EtcdClient::compact`]).
pub async fn compact(client: &EtcdClient) -> Result<Compaction, MaintenanceError> {
    Ok(client.compact().await?)
}

/// Defragments every endpoint in turn, each answering again before the next; `progress` hears
/// of each one as it is done.
pub async fn defrag_rolling(
    client: &EtcdClient,
    endpoints: &[String],
    progress: &(dyn Fn(&Defragmented) + Sync),
) -> Result<Vec<Defragmented>, MaintenanceError> {
    let mut done = Vec::new();
    for ep in endpoints {
        let before = client.status_of(ep).await?.db_size;
        client.defragment_sized(ep, before).await?;
        // The next member only once this one answers again.
        let waited = super::api::scaled_timeout(Duration::from_secs(60), before);
        let started = Instant::now();
        while client.health(ep).await.is_err() {
            if started.elapsed() > waited {
                return Err(MaintenanceError::NotBack {
                    endpoint: ep.clone(),
                    waited,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = client.status_of(ep).await?.db_size;
        let d = Defragmented {
            endpoint: ep.clone(),
            before,
            after,
        };
        progress(&d);
        done.push(d);
    }
    Ok(done)
}

/// The active alarms, members by name where the member list answers (it does during NOSPACE).
pub async fn alarms(client: &EtcdClient) -> Result<Vec<Alarm>, MaintenanceError> {
    let active = client.alarms().await?;
    if active.is_empty() {
        return Ok(Vec::new());
    }
    let names: HashMap<u64, String> = client
        .member_list()
        .await
        .map(|ms| ms.into_iter().map(|m| (m.id, m.name)).collect())
        .unwrap_or_default();
    Ok(active
        .into_iter()
        .map(|(member_id, alarm)| Alarm {
            member_id,
            member: names.get(&member_id).filter(|n| !n.is_empty()).cloned(),
            alarm,
        })
        .collect())
}

/// Disarms every active alarm; answers how many there were.
pub async fn disarm(client: &EtcdClient) -> Result<usize, MaintenanceError> {
    Ok(client.disarm_alarms().await?)
}
