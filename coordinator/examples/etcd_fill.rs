//! Benchmark helper: fill an etcd cluster with Kubernetes-like data up to a database size
//! (issue #13, "etcd at real sizes"), and check that a cluster holds that data.
//!
//! It talks to etcd as etcdctl does after `eval "$(haop etcd env -f INV)"`: the endpoints,
//! the CA and the client certificate and key come from `ETCDCTL_ENDPOINTS`, `ETCDCTL_CACERT`,
//! `ETCDCTL_CERT` and `ETCDCTL_KEY` (the last two may be unset for a cluster without client
//! certificate auth, such as the seed's).
//!
//! ```sh
//! eval "$(haop etcd env -f INV)"
//! cargo run --release -p haop-coordinator --example etcd_fill -- --size 500M [--verify]
//! cargo run --release -p haop-coordinator --example etcd_fill -- --count 123456   # same data
//! cargo run --release -p haop-coordinator --example etcd_fill -- --verify-only --count 123456
//! ```
//!
//! # The mix
//!
//! Key number `i` (0, 1, 2, ...) is a pure function of the seed (`--seed`, default 1) and `i`:
//! its resource, namespace, name, value size and value bytes all come from a SplitMix64 stream
//! seeded with both. A fill writes keys 0..N-1 and nothing else, so two fills with the same
//! seed and the same N hold byte-identical data (`--count N` repeats a fill that stopped at N).
//! Shares are of keys; value sizes are uniform within their range:
//!
//! | resource (key)                                                 | keys   | value size      |
//! | -------------------------------------------------------------- | -----: | --------------- |
//! | `/registry/events/NS/POD.HASH`                                 | 30%    | 0.5-2 KiB       |
//! | `/registry/pods/NS/NAME`                                       | 22%    | 2-8 KiB         |
//! | `/registry/configmaps/NS/NAME`                                 | 10%    | 0.5-4 KiB       |
//! | `/registry/secrets/NS/NAME`                                    | 10%    | 0.5-4 KiB       |
//! | `/registry/replicasets/NS/NAME`                                | 8%     | 1-4 KiB         |
//! | `/registry/endpointslices/NS/NAME`                             | 6%     | 1-4 KiB         |
//! | `/registry/leases/NS/NAME`                                     | 5%     | 0.5-1 KiB       |
//! | `/registry/deployments/NS/NAME`                                | 4.9%   | 2-6 KiB         |
//! | `/registry/services/specs/NS/NAME`                             | 4%     | 0.5-2 KiB       |
//! | `/registry/configmaps/NS/NAME` (dashboards, bundles)           | 0.06%  | 100 KiB-1 MiB   |
//! | `/registry/apiextensions.k8s.io/customresourcedefinitions/NAME`| 0.04%  | 100 KiB-1 MiB   |
//!
//! About 3.1 KiB per key on average: the small values carry about 82% of the bytes and the
//! 0.1% large ones about 18% (a 2 GiB database holds some 650 000 keys, 650 of them large).
//! Namespaces: `kube-system` 20%, `default` 10%, the rest spread over 38 others. A value is a
//! JSON-like header (kind, namespace, name) padded with pseudo-random text to its size. Keys
//! are only ever created, never rewritten, so the database holds no old revisions and its size
//! is the data's.
//!
//! # How it writes and when it stops
//!
//! `--writers` tasks (default 16) share one TLS connection to the leader (found with `endpoint
//! status`; HTTP/2 multiplexes them) and each puts one key per request, as the API server
//! does, so etcd sees one raft entry per key and takes its own raft snapshots as it would
//! under Kubernetes. A put that fails is retried (a leader election is not a failed fill);
//! `database space exceeded` stops the fill at once. With `--size`, a monitor asks every
//! endpoint's status every 250 ms and stops the writers once the smallest `dbSize` reaches the
//! target. Every key a writer took is written before it stops, so the keys written are always
//! 0..N-1. Progress goes to stderr every 2 s; at the end one line to stdout:
//!
//! ```text
//! fill: keys=N large=L value_bytes=B db_size=D seconds=S db_mib_per_s=R value_mib_per_s=V seed=1
//! ```
//!
//! `--verify` (after writing) and `--verify-only` (no writes; needs `--count N`) check the
//! cluster against the generator: the number of keys under `/registry/` and under each
//! resource's prefix, and the value of every `--sample`th key (default 16; 1 = every key)
//! byte for byte. `--serializable` reads each endpoint's own copy (point `ETCDCTL_ENDPOINTS`
//! at one member to check that member, for example a recovered one). It prints `verify: ok
//! keys=N sampled=M` or the differences, and exits 1 on a difference.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// One kind of object: its key prefix, its share of keys (per 10 000) and value sizes.
#[derive(Debug)]
struct Kind {
    name: &'static str,
    /// Key prefix, up to the namespace (or the name, for cluster-scoped objects).
    prefix: &'static str,
    namespaced: bool,
    weight: u32,
    min: usize,
    max: usize,
    large: bool,
    /// The object's `kind` in its header.
    object: &'static str,
}

/// The mix documented at the top; the weights add up to 10 000.
const KINDS: &[Kind] = &[
    Kind {
        name: "events",
        prefix: "/registry/events/",
        namespaced: true,
        weight: 3000,
        min: KIB / 2,
        max: 2 * KIB,
        large: false,
        object: "Event",
    },
    Kind {
        name: "pods",
        prefix: "/registry/pods/",
        namespaced: true,
        weight: 2200,
        min: 2 * KIB,
        max: 8 * KIB,
        large: false,
        object: "Pod",
    },
    Kind {
        name: "configmaps",
        prefix: "/registry/configmaps/",
        namespaced: true,
        weight: 1000,
        min: KIB / 2,
        max: 4 * KIB,
        large: false,
        object: "ConfigMap",
    },
    Kind {
        name: "secrets",
        prefix: "/registry/secrets/",
        namespaced: true,
        weight: 1000,
        min: KIB / 2,
        max: 4 * KIB,
        large: false,
        object: "Secret",
    },
    Kind {
        name: "replicasets",
        prefix: "/registry/replicasets/",
        namespaced: true,
        weight: 800,
        min: KIB,
        max: 4 * KIB,
        large: false,
        object: "ReplicaSet",
    },
    Kind {
        name: "endpointslices",
        prefix: "/registry/endpointslices/",
        namespaced: true,
        weight: 600,
        min: KIB,
        max: 4 * KIB,
        large: false,
        object: "EndpointSlice",
    },
    Kind {
        name: "leases",
        prefix: "/registry/leases/",
        namespaced: true,
        weight: 500,
        min: KIB / 2,
        max: KIB,
        large: false,
        object: "Lease",
    },
    Kind {
        name: "deployments",
        prefix: "/registry/deployments/",
        namespaced: true,
        weight: 490,
        min: 2 * KIB,
        max: 6 * KIB,
        large: false,
        object: "Deployment",
    },
    Kind {
        name: "services",
        prefix: "/registry/services/specs/",
        namespaced: true,
        weight: 400,
        min: KIB / 2,
        max: 2 * KIB,
        large: false,
        object: "Service",
    },
    Kind {
        name: "configmaps (large)",
        prefix: "/registry/configmaps/",
        namespaced: true,
        weight: 6,
        min: 100 * KIB,
        max: 1024 * KIB,
        large: true,
        object: "ConfigMap",
    },
    Kind {
        name: "customresourcedefinitions",
        prefix: "/registry/apiextensions.k8s.io/customresourcedefinitions/",
        namespaced: false,
        weight: 4,
        min: 100 * KIB,
        max: 1024 * KIB,
        large: true,
        object: "CustomResourceDefinition",
    },
];

const APPS: &[&str] = &[
    "api",
    "web",
    "worker",
    "cache",
    "db",
    "queue",
    "auth",
    "search",
    "billing",
    "mailer",
    "ingest",
    "report",
    "scheduler",
    "gateway",
    "metrics",
    "logs",
];
const GROUPS: &[&str] = &[
    "monitoring.coreos.com",
    "cert-manager.io",
    "networking.istio.io",
    "argoproj.io",
    "cilium.io",
];
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// SplitMix64: small, fast, and the same sequence everywhere.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn for_key(seed: u64, i: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.rotate_left(32));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Key number `i`: which kind it is, its key and the size of its value.
#[derive(Debug)]
struct Item {
    kind: usize,
    namespace: String,
    name: String,
    key: String,
    size: usize,
}

fn namespace(r: &mut Rng) -> String {
    match r.range(0, 99) {
        0..=19 => "kube-system".to_string(),
        20..=29 => "default".to_string(),
        n => match n % 38 {
            0 => "monitoring".to_string(),
            1 => "ingress-nginx".to_string(),
            2 => "cert-manager".to_string(),
            m => format!("team-{m:02}"),
        },
    }
}

fn kind_of(r: &mut Rng) -> usize {
    let mut w = r.range(0, 9999) as u32;
    for (k, kind) in KINDS.iter().enumerate() {
        if w < kind.weight {
            return k;
        }
        w -= kind.weight;
    }
    0
}

fn item(seed: u64, i: u64) -> Item {
    let mut r = Rng::for_key(seed, i, 0);
    let kind = kind_of(&mut r);
    let k = &KINDS[kind];
    let namespace = if k.namespaced {
        namespace(&mut r)
    } else {
        String::new()
    };
    let app = APPS[r.range(0, APPS.len() as u64 - 1) as usize];
    // The index keeps every key unique; the rest makes it look like its kind.
    let name = match k.name {
        "events" => format!("{app}-{i:07x}.{:016x}", r.next()),
        "pods" => format!("{app}-{:08x}-{i:07x}", r.next() as u32),
        "leases" => format!("node-{i:07x}"),
        "customresourcedefinitions" => format!(
            "{app}-{i:07x}.{}",
            GROUPS[r.range(0, GROUPS.len() as u64 - 1) as usize]
        ),
        "configmaps (large)" => format!("{app}-dashboards-{i:07x}"),
        _ => format!("{app}-{i:07x}"),
    };
    let key = if k.namespaced {
        format!("{}{namespace}/{name}", k.prefix)
    } else {
        format!("{}{name}", k.prefix)
    };
    let size = r.range(k.min as u64, k.max as u64) as usize;
    Item {
        kind,
        namespace,
        name,
        key,
        size,
    }
}

/// The value of key number `i`: a JSON-like header, padded with pseudo-random text to its size.
fn value(seed: u64, i: u64, it: &Item) -> Vec<u8> {
    let k = &KINDS[it.kind];
    let mut v = format!(
        "{{\"kind\":\"{}\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{}\",\"namespace\":\"{}\",\"uid\":\"{:016x}\"}},\"data\":\"",
        k.object, it.name, it.namespace, i
    )
    .into_bytes();
    let body = it.size.saturating_sub(v.len() + 2);
    v.reserve(body + 2);
    let mut r = Rng::for_key(seed, i, 1);
    while v.len() < it.size - 2 {
        let mut x = r.next();
        for _ in 0..8 {
            if v.len() >= it.size - 2 {
                break;
            }
            v.push(ALPHABET[(x & 63) as usize]);
            x >>= 6;
        }
    }
    v.extend_from_slice(b"\"}");
    v
}

#[derive(Debug)]
struct Args {
    size: Option<u64>,
    count: Option<u64>,
    seed: u64,
    writers: usize,
    verify: bool,
    verify_only: bool,
    serializable: bool,
    sample: u64,
}

const USAGE: &str = "usage: etcd_fill (--size SIZE | --count N) [--seed N] [--writers N] [--verify]
       etcd_fill --verify-only --count N [--seed N] [--sample K] [--serializable]
SIZE: bytes, or with K, M, G (KiB, MiB, GiB): 10M, 500M, 2G.
Reads ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY (see `haop etcd env`).";

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1024),
        Some('M' | 'm') => (&t[..t.len() - 1], MIB),
        Some('G' | 'g') => (&t[..t.len() - 1], 1024 * MIB),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("bad size {s:?} (say 10M, 500M or 2G)"))?;
    if n.is_nan() || n <= 0.0 {
        bail!("bad size {s:?}: must be positive");
    }
    Ok((n * mult as f64) as u64)
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        size: None,
        count: None,
        seed: 1,
        writers: 16,
        verify: false,
        verify_only: false,
        serializable: false,
        sample: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut val = || -> anyhow::Result<String> {
            inline
                .clone()
                .or_else(|| it.next())
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--size" => a.size = Some(parse_size(&val()?)?),
            "--count" => a.count = Some(val()?.parse().context("bad --count")?),
            "--seed" => a.seed = val()?.parse().context("bad --seed")?,
            "--writers" => a.writers = val()?.parse().context("bad --writers")?,
            "--sample" => a.sample = val()?.parse().context("bad --sample")?,
            "--verify" => a.verify = true,
            "--verify-only" => a.verify_only = true,
            "--serializable" => a.serializable = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.verify_only && a.count.is_none() {
        bail!("--verify-only needs --count N (the keys a fill wrote)\n{USAGE}");
    }
    if !a.verify_only && a.size.is_none() == a.count.is_none() {
        bail!("give one of --size and --count\n{USAGE}");
    }
    if a.writers == 0 || a.sample == 0 {
        bail!("--writers and --sample must be at least 1");
    }
    Ok(a)
}

/// The connection settings `haop etcd env` prints.
#[derive(Debug)]
struct Etcd {
    endpoints: Vec<String>,
    options: ConnectOptions,
}

impl Etcd {
    fn from_env() -> anyhow::Result<Etcd> {
        let endpoints: Vec<String> = std::env::var("ETCDCTL_ENDPOINTS")
            .context("ETCDCTL_ENDPOINTS is not set (eval \"$(haop etcd env -f INV)\" first)")?
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            bail!("ETCDCTL_ENDPOINTS names no endpoint");
        }
        let read = |var: &str| -> anyhow::Result<Option<Vec<u8>>> {
            match std::env::var(var) {
                Ok(p) if !p.is_empty() => Ok(Some(
                    std::fs::read(&p).with_context(|| format!("cannot read {var}={p}"))?,
                )),
                _ => Ok(None),
            }
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        if endpoints.iter().any(|e| e.starts_with("https://")) {
            let ca = read("ETCDCTL_CACERT")?.context("ETCDCTL_CACERT is not set")?;
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            match (read("ETCDCTL_CERT")?, read("ETCDCTL_KEY")?) {
                (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(cert, key)),
                (None, None) => {}
                _ => bail!("set both ETCDCTL_CERT and ETCDCTL_KEY, or neither"),
            }
            options = options.with_tls(tls);
        }
        Ok(Etcd { endpoints, options })
    }

    async fn client(&self, endpoints: &[String]) -> anyhow::Result<Client> {
        Client::connect(endpoints, Some(self.options.clone()))
            .await
            .with_context(|| format!("cannot connect to {}", endpoints.join(",")))
    }

    /// One client per endpoint, for per-member questions.
    async fn per_endpoint(&self) -> anyhow::Result<Vec<(String, Client)>> {
        let mut out = Vec::new();
        for e in &self.endpoints {
            out.push((e.clone(), self.client(std::slice::from_ref(e)).await?));
        }
        Ok(out)
    }
}

/// Each endpoint's `(dbSize, is_leader)`, or its error.
async fn statuses(per: &mut [(String, Client)]) -> Vec<(String, Result<(i64, bool), String>)> {
    let mut out = Vec::new();
    for (ep, c) in per.iter_mut() {
        let r = tokio::time::timeout(Duration::from_secs(5), c.status()).await;
        out.push((
            ep.clone(),
            match r {
                Ok(Ok(s)) => Ok((
                    s.db_size(),
                    s.header().is_some_and(|h| h.member_id() == s.leader()),
                )),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("status timed out".to_string()),
            },
        ));
    }
    out
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

#[derive(Debug, Default)]
struct Counters {
    next: AtomicU64,
    written: AtomicU64,
    bytes: AtomicU64,
    large: AtomicU64,
    stop: AtomicBool,
    failed: std::sync::Mutex<Option<String>>,
}

async fn put_retrying(c: &mut Client, key: &str, val: Vec<u8>) -> Result<(), String> {
    let mut attempt = 0u32;
    loop {
        match c.put(key, val.clone(), None).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("database space exceeded") {
                    return Err(format!(
                        "etcd refused {key}: {msg} (raise --quota-backend-bytes for this size)"
                    ));
                }
                attempt += 1;
                if attempt > 30 {
                    return Err(format!("put {key} failed {attempt} times; last: {msg}"));
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
            }
        }
    }
}

async fn writer(mut c: Client, seed: u64, count: Option<u64>, n: Arc<Counters>) {
    loop {
        if n.stop.load(Ordering::SeqCst) {
            return;
        }
        let i = n.next.fetch_add(1, Ordering::SeqCst);
        if count.is_some_and(|c| i >= c) {
            return;
        }
        // From here on, key i is written (or the fill fails): the keys written stay 0..N-1.
        let it = item(seed, i);
        let v = value(seed, i, &it);
        let len = (it.key.len() + v.len()) as u64;
        if let Err(e) = put_retrying(&mut c, &it.key, v).await {
            n.stop.store(true, Ordering::SeqCst);
            n.failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
            return;
        }
        n.written.fetch_add(1, Ordering::SeqCst);
        n.bytes.fetch_add(len, Ordering::SeqCst);
        if KINDS[it.kind].large {
            n.large.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn fill(etcd: &Etcd, a: &Args) -> anyhow::Result<u64> {
    let mut per = etcd.per_endpoint().await?;
    let first = statuses(&mut per).await;
    let mut leader = None;
    let mut start_db = i64::MAX;
    for (ep, s) in &first {
        match s {
            Ok((db, is_leader)) => {
                start_db = start_db.min(*db);
                if *is_leader {
                    leader = Some(ep.clone());
                }
            }
            Err(e) => bail!("{ep} does not answer its status: {e}"),
        }
    }
    // One connection, to the leader: followers would only forward every put to it.
    let writes_to = leader.map_or_else(|| etcd.endpoints.clone(), |l| vec![l]);
    let client = etcd.client(&writes_to).await?;
    match (a.size, a.count) {
        (Some(s), _) => eprintln!(
            "fill: to dbSize {:.1} MiB (now {:.1} MiB), seed {}, {} writers, writing to {}",
            mib(s),
            mib(start_db.max(0) as u64),
            a.seed,
            a.writers,
            writes_to.join(",")
        ),
        (None, Some(c)) => eprintln!(
            "fill: keys 0..{c}, seed {}, {} writers, writing to {}",
            a.seed,
            a.writers,
            writes_to.join(",")
        ),
        (None, None) => {}
    }
    let n = Arc::new(Counters::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.writers {
        tasks.spawn(writer(client.clone(), a.seed, a.count, n.clone()));
    }
    let mut last_print = Instant::now();
    let mut db: i64 = start_db.max(0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            r = tasks.join_next() => match r {
                Some(r) => { r.context("a writer panicked")?; continue; }
                None => break,
            },
        }
        // The smallest dbSize of the endpoints that answer: every member reaches the target.
        let sizes: Vec<i64> = statuses(&mut per)
            .await
            .into_iter()
            .filter_map(|(_, s)| s.ok().map(|(d, _)| d))
            .collect();
        if let Some(min) = sizes.iter().min() {
            db = *min;
        }
        if let Some(target) = a.size {
            if db >= target as i64 {
                n.stop.store(true, Ordering::SeqCst);
            }
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let bytes = n.bytes.load(Ordering::SeqCst);
            eprintln!(
                "fill: {} keys, {:.1} MiB of values, dbSize {:.1} MiB, {:.1} s, {:.1} MiB/s",
                n.written.load(Ordering::SeqCst),
                mib(bytes),
                mib(db.max(0) as u64),
                secs,
                mib(bytes) / secs
            );
        }
    }
    if let Some(e) = n.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        bail!(
            "fill failed after {} keys: {e}",
            n.written.load(Ordering::SeqCst)
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let keys = n.written.load(Ordering::SeqCst);
    // The last batch lands in the backend within its 100 ms commit interval.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sizes: Vec<i64> = statuses(&mut per)
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok().map(|(d, _)| d))
        .collect();
    let db = sizes.iter().min().copied().unwrap_or(db).max(0) as u64;
    let bytes = n.bytes.load(Ordering::SeqCst);
    let grown = db.saturating_sub(start_db.max(0) as u64);
    println!(
        "fill: keys={keys} large={} value_bytes={bytes} db_size={db} seconds={secs:.3} \
         db_mib_per_s={:.2} value_mib_per_s={:.2} seed={}",
        n.large.load(Ordering::SeqCst),
        mib(grown) / secs,
        mib(bytes) / secs,
        a.seed
    );
    Ok(keys)
}

/// Checks that the cluster holds exactly keys 0..count-1 of the seed's fill under /registry/.
async fn verify(etcd: &Etcd, a: &Args, count: u64) -> anyhow::Result<bool> {
    let client = etcd.client(&etcd.endpoints).await?;
    let started = Instant::now();
    let mut expected: BTreeMap<&'static str, i64> = BTreeMap::new();
    expected.insert("/registry/", count as i64);
    for i in 0..count {
        let it = item(a.seed, i);
        *expected.entry(KINDS[it.kind].prefix).or_default() += 1;
    }
    let opts = |o: GetOptions| {
        if a.serializable {
            o.with_serializable()
        } else {
            o
        }
    };
    let mut ok = true;
    for (prefix, want) in &expected {
        let mut c = client.clone();
        let got = c
            .get(
                *prefix,
                Some(opts(GetOptions::new().with_prefix().with_count_only())),
            )
            .await
            .with_context(|| format!("cannot count the keys under {prefix}"))?
            .count();
        if got != *want {
            eprintln!("verify: {prefix}: {got} keys, expected {want}");
            ok = false;
        }
    }
    // Values, every `sample`th key, a few requests in flight.
    let next = Arc::new(AtomicU64::new(0));
    let sampled = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut c, next, sampled, bad) =
            (client.clone(), next.clone(), sampled.clone(), bad.clone());
        let (seed, step, serializable) = (a.seed, a.sample, a.serializable);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst) * step;
                if i >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let it = item(seed, i);
                let o = if serializable {
                    GetOptions::new().with_serializable()
                } else {
                    GetOptions::new()
                };
                let r = c
                    .get(it.key.as_str(), Some(o))
                    .await
                    .with_context(|| format!("cannot read {}", it.key))?;
                sampled.fetch_add(1, Ordering::SeqCst);
                let want = value(seed, i, &it);
                let problem = match r.kvs().first() {
                    None => Some(format!("{} is missing", it.key)),
                    Some(kv) if kv.value() != want.as_slice() => Some(format!(
                        "{} holds {} bytes that differ from the {} written",
                        it.key,
                        kv.value().len(),
                        want.len()
                    )),
                    Some(_) => None,
                };
                if let Some(p) = problem {
                    bad.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a verifier panicked")??;
    }
    let bad = bad.lock().unwrap_or_else(|e| e.into_inner());
    for p in bad.iter().take(10) {
        eprintln!("verify: {p}");
    }
    if bad.len() > 10 {
        eprintln!("verify: ... and {} more", bad.len() - 10);
    }
    ok &= bad.is_empty();
    let sampled = sampled.load(Ordering::SeqCst);
    if ok {
        println!(
            "verify: ok keys={count} sampled={sampled} seconds={:.3}",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "verify: FAILED keys={count} sampled={sampled} bad_values={}",
            bad.len()
        );
    }
    Ok(ok)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let etcd = Etcd::from_env()?;
    let count = if a.verify_only {
        a.count.unwrap_or(0)
    } else {
        fill(&etcd, &a).await?
    };
    if (a.verify || a.verify_only) && !verify(&etcd, &a, count).await? {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_add_up() {
        assert_eq!(KINDS.iter().map(|k| k.weight).sum::<u32>(), 10_000);
    }

    #[test]
    fn keys_and_values_are_deterministic_and_sized() {
        for i in [0, 1, 2, 1000, 123_456] {
            let (a, b) = (item(1, i), item(1, i));
            assert_eq!(a.key, b.key);
            let v = value(1, i, &a);
            assert_eq!(v, value(1, i, &b));
            assert_eq!(v.len(), a.size);
            assert!(a.key.starts_with(KINDS[a.kind].prefix));
        }
        assert_ne!(item(1, 5).key, item(2, 5).key);
    }

    #[test]
    fn mix_is_as_documented() {
        let n = 200_000u64;
        let (mut total, mut large, mut large_bytes) = (0usize, 0u64, 0usize);
        for i in 0..n {
            let it = item(1, i);
            total += it.size;
            if KINDS[it.kind].large {
                large += 1;
                large_bytes += it.size;
            }
        }
        let mean_kib = total as f64 / n as f64 / 1024.0;
        assert!((2.9..3.4).contains(&mean_kib), "mean {mean_kib} KiB");
        assert!((150..250).contains(&large), "{large} large values");
        let share = large_bytes as f64 / total as f64;
        assert!(
            (0.14..0.22).contains(&share),
            "large values hold {share} of the bytes"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10M").unwrap(), 10 * MIB);
        assert_eq!(parse_size("2G").unwrap(), 2048 * MIB);
        assert_eq!(parse_size("500MiB").unwrap(), 500 * MIB);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("x").is_err());
    }
}
