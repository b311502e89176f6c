//! The agent's RPCs over mTLS against a real agent in a lab host (its own network namespace and
//! root directory), checked from this machine: files land under the host's root with their
//! modes, ensures report `changed` only once, uploads are checked, the wipe fence holds for `/`,
//! `..` and a symlink leading outside, kernel settings are persisted.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use haop_coordinator::agent;
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::trust::Trust;
use haop_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_on_a_lab_host() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("HAOP_SKIP_LAB_TESTS").is_some(),
            "lab tests need root; set HAOP_SKIP_LAB_TESTS=1 to skip them"
        );
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let name = format!("t{}-rpc", std::process::id() % 100_000);
    let spec = LabSpec {
        etcd: 1,
        masters: 0,
        workers: 0,
        from_seed: false,
    };
    let lab = LabGuard::up(state.path(), &name, spec)
        .await
        .expect("lab up");
    let host = lab.hosts()[0].clone();
    let root = host.root_dir.clone();
    let trust = Trust::load(state.path()).unwrap();
    let mut c = agent::connect(&trust, &host.endpoint, Duration::from_secs(5))
        .await
        .unwrap();

    // WriteFile, twice; ReadFile; Stat; RemoveFile.
    let w = pb::WriteFileRequest {
        path: "/etc/haop/demo.conf".into(),
        content: b"a = 1\n".to_vec(),
        mode: 0o640,
        create_parents: true,
        ..Default::default()
    };
    assert!(c.write_file(w.clone()).await.unwrap().into_inner().changed);
    assert!(!c.write_file(w).await.unwrap().into_inner().changed);
    let real = root.join("etc/haop/demo.conf");
    assert_eq!(std::fs::read(&real).unwrap(), b"a = 1\n");
    assert_eq!(
        std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let r = c
        .read_file(pb::ReadFileRequest {
            path: "/etc/haop/demo.conf".into(),
            max_bytes: 0,
            certificates_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.content, b"a = 1\n");
    let st = c
        .stat(pb::StatRequest {
            path: "/etc/haop/demo.conf".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.exists && st.kind == "file" && st.mode == 0o640);
    assert!(
        c.remove_file(pb::RemoveFileRequest {
            path: "/etc/haop/demo.conf".into()
        })
        .await
        .unwrap()
        .into_inner()
        .changed
    );
    assert!(!real.exists());

    // UploadFile with its digest checked.
    let data = vec![42u8; 200_000];
    let sha = hex::encode(Sha256::digest(&data));
    let msgs = vec![
        pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: "/usr/local/bin/tool".into(),
                mode: 0o755,
                sha256: sha.clone(),
                size: data.len() as u64,
                create_parents: true,
            }),
            data: data[..100_000].to_vec(),
        },
        pb::UploadChunk {
            header: None,
            data: data[100_000..].to_vec(),
        },
    ];
    let up = c
        .upload_file(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert!(up.changed && up.sha256 == sha);
    assert_eq!(
        std::fs::read(root.join("usr/local/bin/tool")).unwrap(),
        data
    );

    // LoadModules and DisableSwap persist their files; a lab host never touches the machine.
    let m = c
        .load_modules(pb::LoadModulesRequest {
            name: "k8s".into(),
            modules: vec!["overlay".into(), "br_netfilter".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(m.changed);
    assert!(
        std::fs::read_to_string(root.join("etc/modules-load.d/k8s.conf"))
            .unwrap()
            .contains("br_netfilter\n")
    );
    std::fs::write(root.join("etc/fstab"), "/swap.img none swap sw 0 0\n").unwrap();
    let s = c
        .disable_swap(pb::DisableSwapRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.fstab_lines_commented, 1);
    assert!(
        s.swapped_off.is_empty(),
        "a lab host must not swapoff the machine"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/fstab")).unwrap(),
        "#/swap.img none swap sw 0 0\n"
    );

    // The wipe fence on a real agent: `/`, `..` and a symlink leading outside are refused.
    c.ensure_unit(pb::EnsureUnitRequest {
        name: "data.service".into(),
        content: "[Service]\nExecStart=/bin/sleep 300\n".into(),
        data_dirs: vec!["/var/lib/etcd".into()],
    })
    .await
    .unwrap();
    for (path, code) in [
        ("/", Code::PermissionDenied),
        ("/var/lib/../lib/etcd", Code::InvalidArgument),
    ] {
        let e = c
            .wipe_data_dir(pb::WipeDataDirRequest {
                unit: "data.service".into(),
                path: path.into(),
                delete: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{path}: {}", e.message());
    }
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"x").unwrap();
    std::fs::create_dir_all(root.join("var/lib")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("var/lib/etcd")).unwrap();
    let e = c
        .wipe_data_dir(pb::WipeDataDirRequest {
            unit: "data.service".into(),
            path: "/var/lib/etcd".into(),
            delete: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        root.join("etc/hostname").exists(),
        "the symlink target survived"
    );

    lab.down().expect("lab down");
}
