//! What the lab tests share: the `haop` binary, the root check, a writer, status reports.

#![allow(dead_code)]

pub mod status;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `haop` binary built next to this test binary (cargo puts tests in target/*/deps).
pub fn haop_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    for d in [dir, dir.parent().unwrap()] {
        let p = d.join("haop");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the haop binary is not built next to {}: run cargo build first",
        exe.display()
    );
}

/// Runs `haop ARGS` with `state` as its state dir.
pub fn haop(state: &Path, args: &[&str]) -> Output {
    Command::new(haop_bin())
        .env("HAOP_STATE_DIR", state)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run haop")
}

/// stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether the lab can run (root). Not root fails the test unless skipping was asked for
/// with HAOP_SKIP_LAB_TESTS: a silent pass would hide that nothing was tested.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("HAOP_SKIP_LAB_TESTS").is_some(),
        "lab tests need root; set HAOP_SKIP_LAB_TESTS=1 to skip them"
    );
    false
}

/// A client that keeps putting keys and remembers every write etcd acknowledged.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    /// Starts writing `PREFIX/00000000`, `PREFIX/00000001`, ... every 5 ms.
    pub fn start(state: &Path, endpoints: &[String], prefix: &str) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, state, endpoints, prefix) = (
            stop.clone(),
            state.to_path_buf(),
            endpoints.to_vec(),
            prefix.to_string(),
        );
        let task = tokio::spawn(async move {
            let c = haop_coordinator::etcd_api::EtcdClient::connect(
                &state,
                &endpoints,
                std::time::Duration::from_secs(2),
            )
            .await
            .unwrap();
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("{prefix}/{i:08}");
                if c.put(&key, b"v").await.is_ok() {
                    acked.push(key);
                }
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            acked
        });
        Writer { stop, task }
    }

    /// Stops and answers the acknowledged keys.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}
