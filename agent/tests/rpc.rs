//! Every agent RPC over real gRPC with mTLS on a real socket, against a real agent served
//! in-process with a temporary host root, called with an admin certificate. Kernel interfaces point at a scratch /proc and /sys so these tests never
//! change the machine; the lab tests (coordinator/tests) cover the real kernel inside a network
//! namespace.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::TestAgent;
use haop_agent::paths::HostPath;
use haop_proto::v1 as pb;
use haop_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;
use tonic::Code;

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_req(path: &str, content: &[u8], mode: u32) -> pb::WriteFileRequest {
    pb::WriteFileRequest {
        path: path.into(),
        content: content.to_vec(),
        mode,
        create_parents: true,
        ..Default::default()
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn files_land_under_the_root_with_mode_and_are_ensured() {
    let mut a = TestAgent::start().await;
    let r = a
        .client
        .write_file(write_req("/etc/haop/x.conf", b"hello\n", 0o600))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.size, 6);
    let real = a.real("/etc/haop/x.conf");
    assert_eq!(std::fs::read(&real).unwrap(), b"hello\n");
    assert_eq!(mode_of(&real), 0o600);

    let again = a
        .client
        .write_file(write_req("/etc/haop/x.conf", b"hello\n", 0o600))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed, "identical content must not be rewritten");
    assert_eq!(again.sha256, r.sha256);

    let read = a
        .client
        .read_file(pb::ReadFileRequest {
            path: "/etc/haop/x.conf".into(),
            max_bytes: 0,
            certificates_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.content, b"hello\n");
    assert_eq!(read.mode, 0o600);

    let st = a
        .client
        .stat(pb::StatRequest {
            path: "/etc/haop/x.conf".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.exists);
    assert_eq!((st.kind.as_str(), st.size, st.mode), ("file", 6, 0o600));
    assert_eq!(st.sha256, r.sha256);

    let rm = a
        .client
        .remove_file(pb::RemoveFileRequest {
            path: "/etc/haop/x.conf".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rm.changed);
    assert!(!real.exists());
    let st = a
        .client
        .stat(pb::StatRequest {
            path: "/etc/haop/x.conf".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!st.exists);
    a.shutdown().await;
}

#[tokio::test]
async fn hostile_paths_are_refused_and_nothing_is_written() {
    let mut a = TestAgent::start().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(a.real("/var/lib")).unwrap();
    std::os::unix::fs::symlink(outside.path(), a.real("/var/lib/etcd")).unwrap();

    for (path, code) in [
        ("/etc/passwd", Code::PermissionDenied),
        ("/etc/haop/../passwd", Code::InvalidArgument),
        ("etc/haop/x", Code::InvalidArgument),
        ("/etc/haop/x\0y", Code::InvalidArgument),
        ("/var/lib/etcd/member", Code::PermissionDenied),
    ] {
        let err = a
            .client
            .write_file(write_req(path, b"owned", 0o644))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{path:?}: {}", err.message());
        assert!(!err.message().is_empty());
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert!(!a.real("/etc/passwd").exists());
    let err = a
        .client
        .write_file(write_req("/etc/shadow", b"x", 0o644))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("/etc/shadow") && err.message().contains("managed roots"),
        "{}",
        err.message()
    );
    a.shutdown().await;
}

#[tokio::test]
async fn upload_checks_sha256_before_putting_the_file_in_place() {
    let mut a = TestAgent::start().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha = haop_agent::files::sha256_hex(&data);
    let chunks = |sha: String| {
        let mut msgs = vec![pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: "/usr/local/bin/etcd".into(),
                mode: 0o755,
                sha256: sha,
                size: data.len() as u64,
                create_parents: true,
            }),
            data: Vec::new(),
        }];
        for c in data.chunks(64 * 1024) {
            msgs.push(pb::UploadChunk {
                header: None,
                data: c.to_vec(),
            });
        }
        tokio_stream::iter(msgs)
    };
    let bad = a
        .client
        .upload_file(chunks("0".repeat(64)))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::DataLoss, "{}", bad.message());
    assert!(!a.real("/usr/local/bin/etcd").exists());
    assert_eq!(
        std::fs::read_dir(a.real("/usr/local/bin")).unwrap().count(),
        0,
        "no temp file left"
    );

    let ok = a
        .client
        .upload_file(chunks(sha.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.changed);
    assert_eq!(ok.sha256, sha);
    assert_eq!(std::fs::read(a.real("/usr/local/bin/etcd")).unwrap(), data);
    assert_eq!(mode_of(&a.real("/usr/local/bin/etcd")), 0o755);
    let again = a
        .client
        .upload_file(chunks(sha.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    a.shutdown().await;
}

const SLEEPER: &str = "[Unit]\nDescription=test sleeper\n\n[Service]\nExecStart=/bin/sleep 300\nRestart=always\nRestartSec=100ms\n";

async fn status(c: &mut AgentClient<Channel>, name: &str) -> pb::UnitStatus {
    c.unit_status(pb::UnitStatusRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn action(
    c: &mut AgentClient<Channel>,
    name: &str,
    act: pb::Action,
) -> pb::UnitActionResponse {
    c.unit_action(pb::UnitActionRequest {
        name: name.into(),
        action: act as i32,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn supervised_unit_is_restarted_after_sigkill() {
    let mut a = TestAgent::start().await;
    let r = a
        .client
        .ensure_unit(pb::EnsureUnitRequest {
            name: "sleeper.service".into(),
            content: SLEEPER.into(),
            data_dirs: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.path, "/etc/systemd/system/sleeper.service");
    assert_eq!(
        std::fs::read_to_string(a.real("/etc/systemd/system/sleeper.service")).unwrap(),
        SLEEPER
    );
    let again = a
        .client
        .ensure_unit(pb::EnsureUnitRequest {
            name: "sleeper.service".into(),
            content: SLEEPER.into(),
            data_dirs: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);

    let started = action(&mut a.client, "sleeper.service", pb::Action::Start).await;
    assert!(started.changed);
    let pid = started.status.unwrap().main_pid;
    assert!(pid > 0);
    assert!(
        !action(&mut a.client, "sleeper.service", pb::Action::Start)
            .await
            .changed
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut client = a.client.clone();
    wait_for(
        "the killed unit to come back",
        Duration::from_secs(10),
        || {
            let mut c = client.clone();
            async move {
                let s = status(&mut c, "sleeper.service").await;
                s.active_state == "active" && s.main_pid != 0 && s.main_pid != pid
            }
        },
    )
    .await;
    let s = status(&mut client, "sleeper.service").await;
    assert_eq!(s.restart_count, 1);
    assert!(s.last_exit.contains("SIGKILL"), "{}", s.last_exit);

    let stopped = action(&mut a.client, "sleeper.service", pb::Action::Stop).await;
    assert!(stopped.changed);
    assert_eq!(stopped.status.unwrap().active_state, "inactive");
    a.shutdown().await;
}

#[tokio::test]
async fn bad_unit_files_and_names_are_refused() {
    let mut a = TestAgent::start().await;
    for (name, content) in [
        ("../evil.service", SLEEPER),
        ("evil.service\n[Service]", SLEEPER),
        ("nosuffix", SLEEPER),
        ("noexec.service", "[Unit]\nDescription=x\n"),
        ("nul.service", "[Service]\nExecStart=/bin/sleep 1\0\n"),
    ] {
        let err = a
            .client
            .ensure_unit(pb::EnsureUnitRequest {
                name: name.into(),
                content: content.into(),
                data_dirs: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{name:?}: {}",
            err.message()
        );
    }
    assert!(
        !a.real("/etc/systemd/system").exists()
            || std::fs::read_dir(a.real("/etc/systemd/system"))
                .unwrap()
                .count()
                == 0
    );
    let err = a
        .client
        .unit_action(pb::UnitActionRequest {
            name: "missing.service".into(),
            action: pb::Action::Start as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(err.message().contains("missing.service"));
    a.shutdown().await;
}

#[tokio::test]
async fn wipe_is_fenced() {
    let mut a = TestAgent::start().await;
    std::fs::create_dir_all(a.real("/var/lib/etcd/member/snap")).unwrap();
    std::fs::write(a.real("/var/lib/etcd/member/snap/db"), b"data").unwrap();
    a.client
        .ensure_unit(pb::EnsureUnitRequest {
            name: "sleeper.service".into(),
            content: SLEEPER.into(),
            data_dirs: vec!["/var/lib/etcd".into()],
        })
        .await
        .unwrap();
    action(&mut a.client, "sleeper.service", pb::Action::Start).await;

    let wipe = |unit: &str, path: &str| pb::WipeDataDirRequest {
        unit: unit.into(),
        path: path.into(),
        delete: false,
    };
    let err = a
        .client
        .wipe_data_dir(wipe("sleeper.service", "/var/lib/etcd"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("stop it"), "{}", err.message());
    for (path, code) in [
        ("/", Code::PermissionDenied),
        ("/var/lib/../lib/etcd", Code::InvalidArgument),
        ("/var/lib/haop-agent", Code::PermissionDenied),
    ] {
        let err = a
            .client
            .wipe_data_dir(wipe("sleeper.service", path))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{path}: {}", err.message());
    }
    assert!(a.real("/var/lib/etcd/member/snap/db").exists());

    action(&mut a.client, "sleeper.service", pb::Action::Stop).await;
    let w = a
        .client
        .wipe_data_dir(wipe("sleeper.service", "/var/lib/etcd"))
        .await
        .unwrap()
        .into_inner();
    assert!(w.changed);
    assert!(
        w.moved_to.starts_with("/var/lib/etcd.wiped-"),
        "{}",
        w.moved_to
    );
    assert!(!a.real("/var/lib/etcd").exists());
    assert!(a.real(&format!("{}/member/snap/db", w.moved_to)).exists());

    // A declared dir that became a symlink to somewhere else is not followed.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), a.real("/var/lib/etcd")).unwrap();
    let err = a
        .client
        .wipe_data_dir(pb::WipeDataDirRequest {
            unit: "sleeper.service".into(),
            path: "/var/lib/etcd".into(),
            delete: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(outside.path().join("precious").exists());
    a.shutdown().await;
}

#[tokio::test]
async fn exec_runs_only_allowed_programs() {
    let mut a = TestAgent::start().await;
    let out = a
        .client
        .exec(pb::ExecRequest {
            program: "echo".into(),
            args: vec!["hello".into(), "$(id)".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, b"hello $(id)\n", "no shell expansion");
    assert_eq!(out.program, "/bin/echo");
    for program in ["sh", "/bin/sh", "/bin/../bin/echo", "rm"] {
        let err = a
            .client
            .exec(pb::ExecRequest {
                program: program.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{program}");
        assert!(err.message().contains("allow-list"), "{}", err.message());
    }
    a.shutdown().await;
}

#[tokio::test]
async fn kernel_settings_are_persisted_and_applied() {
    let mut a = TestAgent::start().await;
    let r = a
        .client
        .load_modules(pb::LoadModulesRequest {
            name: "k8s".into(),
            modules: vec!["overlay".into(), "br_netfilter".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(
        std::fs::read_to_string(a.real("/etc/modules-load.d/k8s.conf")).unwrap(),
        "# Managed by haop.\noverlay\nbr_netfilter\n"
    );
    assert_eq!(r.not_loaded.len(), 1, "{:?}", r.not_loaded);
    assert!(r.not_loaded[0].starts_with("br_netfilter"));

    let mut values = std::collections::HashMap::new();
    values.insert("net.ipv4.ip_forward".to_string(), "1".to_string());
    values.insert("vm.swappiness".to_string(), "0".to_string());
    let r = a
        .client
        .apply_sysctl(pb::ApplySysctlRequest {
            name: "k8s".into(),
            values: values.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.applied, vec!["net.ipv4.ip_forward"]);
    assert_eq!(r.persisted_only.len(), 1);
    assert_eq!(
        std::fs::read_to_string(a.real("/etc/sysctl.d/k8s.conf")).unwrap(),
        "# Managed by haop.\nnet.ipv4.ip_forward = 1\nvm.swappiness = 0\n"
    );
    assert_eq!(
        std::fs::read_to_string(a.kernel_dir.path().join("proc/sys/net/ipv4/ip_forward")).unwrap(),
        "1\n"
    );
    let again = a
        .client
        .apply_sysctl(pb::ApplySysctlRequest {
            name: "k8s".into(),
            values,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);

    let mut bad = std::collections::HashMap::new();
    bad.insert("net/ipv4/../../x".to_string(), "1".to_string());
    let err = a
        .client
        .apply_sysctl(pb::ApplySysctlRequest {
            name: "k8s".into(),
            values: bad,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sysctl key"), "{}", err.message());

    std::fs::write(
        a.real("/etc/fstab"),
        "UUID=1 / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n",
    )
    .unwrap();
    let r = a
        .client
        .disable_swap(pb::DisableSwapRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.fstab_lines_commented, 1);
    assert_eq!(
        std::fs::read_to_string(a.real("/etc/fstab")).unwrap(),
        "UUID=1 / ext4 defaults 0 1\n#/swap.img none swap sw 0 0\n"
    );
    let r = a
        .client
        .disable_swap(pb::DisableSwapRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!r.changed);
    a.shutdown().await;
}

#[tokio::test]
async fn facts_report_the_host() {
    let mut a = TestAgent::start().await;
    std::fs::create_dir_all(a.real("/etc")).unwrap();
    std::fs::write(a.real("/etc/hostname"), "etcd7\n").unwrap();
    let f = a
        .client
        .get_facts(pb::GetFactsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.hostname, "etcd7");
    assert_eq!(f.service_manager, "supervisor");
    assert_eq!(f.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(f.interfaces.iter().any(|i| i.name == "lo"));
    assert!(f.cpus > 0 && f.memory_total_bytes > 0);
    assert!(f.now_unix_ms > 0);
    let _ = HostPath::try_from("/").unwrap();
    a.shutdown().await;
}

/// What recovery follows and accounts for: a data dir's bytes, the room left on its
/// filesystem, and the moved-aside copies, listed with their sizes and pruned by count.
#[tokio::test]
async fn data_dir_sizes_and_moved_aside_copies() {
    let mut a = TestAgent::start().await;
    std::fs::create_dir_all(a.real("/var/lib/etcd/member/snap")).unwrap();
    std::fs::write(a.real("/var/lib/etcd/member/snap/db"), vec![7u8; 3000]).unwrap();
    std::fs::write(a.real("/var/lib/etcd/member/wal"), vec![7u8; 500]).unwrap();
    let stat = |path: &str, tree: bool| pb::StatRequest {
        path: path.into(),
        tree,
    };
    let st = a
        .client
        .stat(stat("/var/lib/etcd", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.tree_bytes, 3500);
    assert!(st.fs_total_bytes > 0 && st.fs_available_bytes <= st.fs_total_bytes);
    // Without `tree`, nothing is walked; a missing path still tells the room of its parent's
    // filesystem.
    let st = a
        .client
        .stat(stat("/var/lib/etcd", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.tree_bytes, 0);
    let st = a
        .client
        .stat(stat("/var/lib/etcd-new/member", true))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.exists && st.fs_total_bytes > 0);

    a.client
        .ensure_unit(pb::EnsureUnitRequest {
            name: "sleeper.service".into(),
            content: SLEEPER.into(),
            data_dirs: vec!["/var/lib/etcd".into()],
        })
        .await
        .unwrap();
    let mut moved = Vec::new();
    for _ in 0..3 {
        std::fs::create_dir_all(a.real("/var/lib/etcd/member")).unwrap();
        std::fs::write(a.real("/var/lib/etcd/member/db"), vec![1u8; 100]).unwrap();
        let w = a
            .client
            .wipe_data_dir(pb::WipeDataDirRequest {
                unit: "sleeper.service".into(),
                path: "/var/lib/etcd".into(),
                delete: false,
            })
            .await
            .unwrap()
            .into_inner();
        moved.push(w.moved_to);
    }
    let listed = a
        .client
        .list_wiped_data_dirs(pb::WipedDataDirsRequest {
            unit: "sleeper.service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.present.len(), 3, "{listed:?}");
    assert!(listed.present.iter().all(|c| c.data_dir == "/var/lib/etcd"));
    // The first copy holds the original 3500 bytes and a 100-byte db, the others 100 each.
    let total: u64 = listed.present.iter().map(|c| c.bytes).sum();
    assert_eq!(total, 3800);
    assert_eq!(listed.present[0].path, moved[2], "newest first");
    // Kept: the newest one; the grace of an hour would keep all of them.
    let graced = a
        .client
        .prune_wiped_data_dirs(pb::PruneWipedDataDirsRequest {
            unit: "sleeper.service".into(),
            keep: 1,
            min_age_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(graced.removed.is_empty());
    let pruned = a
        .client
        .prune_wiped_data_dirs(pb::PruneWipedDataDirsRequest {
            unit: "sleeper.service".into(),
            keep: 1,
            min_age_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.removed.len(), 2, "{pruned:?}");
    assert_eq!(pruned.present.len(), 1);
    for gone in &pruned.removed {
        assert!(!a.real(&gone.path).exists(), "{} still there", gone.path);
    }
    assert!(a.real(&pruned.present[0].path).exists());
    // Another unit's name is not an answer about this one.
    let err = a
        .client
        .prune_wiped_data_dirs(pb::PruneWipedDataDirsRequest {
            unit: "../etc".into(),
            keep: 0,
            min_age_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    a.shutdown().await;
}
