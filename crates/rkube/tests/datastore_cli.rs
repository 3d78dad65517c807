//! The `rkube datastore` and `rkube server` commands, run as a user would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rkube_store::{EmbeddedOptions, EmbeddedStore, Endpoint, EtcdStore, RangeRequest, Store};

fn rkube(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_rkube"))
        .args(args)
        .env("RKUBE_LOG", "warn")
        .output()
        .unwrap();
    eprintln!(
        "rkube {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `rkube datastore snapshot VERB FILE --data-dir DIR`
fn snapshot(verb: &str, file: &Path, data_dir: &Path) -> Output {
    let (file, dir) = (file.to_str().unwrap(), data_dir.to_str().unwrap());
    rkube(&["datastore", "snapshot", verb, file, "--data-dir", dir])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn seed(data_dir: &Path, n: usize) -> Vec<(Bytes, Bytes)> {
    let s =
        EmbeddedStore::open(Endpoint::embedded_dir(data_dir), EmbeddedOptions::default()).unwrap();
    for i in 0..n {
        s.create(
            format!("/registry/pods/default/p{i}").as_bytes(),
            Bytes::from(format!("pod {i}")),
            None,
        )
        .await
        .unwrap();
    }
    dump(&s).await
}

async fn dump(s: &dyn Store) -> Vec<(Bytes, Bytes)> {
    s.range(RangeRequest::prefix(""))
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

async fn open_dump(data_dir: &Path) -> Vec<(Bytes, Bytes)> {
    let s =
        EmbeddedStore::open(Endpoint::embedded_dir(data_dir), EmbeddedOptions::default()).unwrap();
    dump(&s).await
}

#[tokio::test]
async fn snapshot_save_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let file = tmp.path().join("snap.db");
    let original = seed(&a, 300).await;
    let out = snapshot("save", &file, &a);
    assert!(out.status.success());
    assert!(text(&out).contains("revision 301"), "{}", text(&out));
    let out = snapshot("restore", &file, &b);
    assert!(out.status.success());
    assert_eq!(open_dump(&b).await, original);

    // A damaged file is refused with a clear message, and the target is untouched.
    std::fs::write(&file, b"garbage").unwrap();
    let out = snapshot("restore", &file, &b);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not an rkube snapshot"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("panicked"));
    assert_eq!(open_dump(&b).await, original);
}

#[tokio::test]
async fn migrate_to_etcd_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, c) = (tmp.path().join("a"), tmp.path().join("c"));
    let original = seed(&a, 500).await;
    let etcd = rkube_testkit::Etcd::start().unwrap();
    let out = rkube(&[
        "datastore",
        "migrate",
        "--from",
        a.to_str().unwrap(),
        "--to",
        &etcd.endpoint,
    ]);
    assert!(out.status.success());
    assert!(text(&out).contains("migrated 500 keys"), "{}", text(&out));
    let e = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    assert_eq!(dump(&e).await, original);
    let out = rkube(&[
        "datastore",
        "migrate",
        "--from",
        &etcd.endpoint,
        "--to",
        c.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(open_dump(&c).await, original);

    // Bad input: clear errors, no panics.
    let out = rkube(&[
        "datastore",
        "migrate",
        "--from",
        "mysql://x",
        "--to",
        c.to_str().unwrap(),
    ]);
    assert!(!out.status.success() && text(&out).contains("unsupported datastore endpoint"));
    let out = rkube(&[
        "datastore",
        "migrate",
        "--from",
        a.to_str().unwrap(),
        "--to",
        c.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && text(&out).contains("empty datastore"),
        "{}",
        text(&out)
    );
    let missing = tmp.path().join("nothing-here");
    let out = rkube(&[
        "datastore",
        "migrate",
        "--from",
        missing.to_str().unwrap(),
        "--to",
        &etcd.endpoint,
    ]);
    assert!(!out.status.success() && text(&out).contains("holds no datastore"));
}

#[tokio::test]
async fn server_owns_its_data_dir_and_snapshots_work_online() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let original = seed(&d, 50).await;
    let kubeconfig = tmp.path().join("kubeconfig.yaml");
    let child = Command::new(env!("CARGO_BIN_EXE_rkube"))
        .args([
            "server",
            "--data-dir",
            d.to_str().unwrap(),
            "--bind-address",
            "127.0.0.1",
        ])
        .args([
            "--https-listen-port",
            "0",
            "--write-kubeconfig",
            kubeconfig.to_str().unwrap(),
            // No scheduler or agent: their lease renewals and status updates would write
            // after the snapshot, and the comparison below needs a quiet server.
            "--disable-scheduler",
            "--disable-agent",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(child);
    // Wait until it serves (it holds the datastore lock from then on).
    let stderr = server.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("API at") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the server started");
    assert!(kubeconfig.exists(), "the server wrote its kubeconfig");
    let second = rkube(&[
        "server",
        "--data-dir",
        d.to_str().unwrap(),
        "--https-listen-port",
        "0",
    ]);
    assert!(!second.status.success());
    let msg = text(&second);
    assert!(
        msg.contains("in use by another process") && msg.contains(&server.0.id().to_string()),
        "{msg}"
    );
    let file = tmp.path().join("online.snap");
    let out = snapshot("save", &file, &d);
    assert!(out.status.success());
    let out = snapshot("restore", &file, &d);
    assert!(!out.status.success() && text(&out).contains("in use by another process"));
    drop(server);
    let e = tmp.path().join("e");
    let out = snapshot("restore", &file, &e);
    assert!(out.status.success());
    // The snapshot holds the seeded keys and what the server wrote when it started.
    let restored = open_dump(&e).await;
    assert!(original.iter().all(|kv| restored.contains(kv)));
    assert_eq!(restored, open_dump(&d).await);
}

/// Kills a child process when dropped (also when an assertion fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
