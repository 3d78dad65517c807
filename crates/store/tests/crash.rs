//! Kill -9 at a random moment, 20 times: every acknowledged write must be there after
//! reopening, and revisions must continue.
//!
//! The test re-runs its own binary as the writer child (selected by an environment
//! variable); the child prints one line per acknowledged write before it is killed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rkube_store::{EmbeddedOptions, EmbeddedStore, RangeRequest, Store};

const CHILD_ENV: &str = "RKUBE_CRASH_CHILD_DIR";
const WRITERS: usize = 32;
const ROUNDS: usize = 20;

fn options() -> EmbeddedOptions {
    // Small checkpoints, so kills also land in the middle of checkpoints.
    EmbeddedOptions {
        checkpoint_bytes: 128 << 10,
        retention: Duration::ZERO,
        ..Default::default()
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut last_rev = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "acknowledged_writes_survive_kill_9",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db)
            .env("RKUBE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ack ") {
                    let (key, rev) = rest.split_once(' ').unwrap();
                    acks.push((key.to_string(), rev.parse::<i64>().unwrap()));
                    if acks.len() == 1 {
                        let _ = tx.send(());
                    }
                }
            }
            acks
        });
        // Kill at a random moment once writing is under way (a loaded CI machine can
        // take longer than any fixed delay to open the store and commit the first write).
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the child acknowledged its first write");
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        let round_max = acks.iter().map(|(_, r)| *r).max().unwrap();
        assert!(
            acks.iter().all(|(_, r)| *r > last_rev),
            "round {round}: revisions continue after a crash"
        );
        acked.extend(acks);

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = EmbeddedStore::open(&db, options())
                .unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
            let all = s.range(RangeRequest::prefix("/crash/")).await.unwrap();
            let present: HashMap<_, _> = all.kvs.iter().map(|kv| (kv.key.clone(), kv)).collect();
            for (key, rev) in &acked {
                let kv = present.get(key.as_bytes()).unwrap_or_else(|| {
                    panic!("round {round}: acknowledged {key} at {rev} is missing")
                });
                assert_eq!(kv.mod_revision, *rev, "round {round}: {key}");
                assert_eq!(&kv.value[..], key.as_bytes());
            }
            let cur = s.current_revision().await.unwrap();
            assert!(
                cur >= round_max,
                "round {round}: revision went back from {round_max} to {cur}"
            );
            last_rev = cur;
            eprintln!(
                "round {round}: {} acknowledged writes so far, all present; revision {cur}",
                acked.len()
            );
        });
    }
}

/// The writer child: 32 concurrent writers, one line on stdout per acknowledged write.
fn child(db: &Path) {
    let round = std::env::var("RKUBE_CRASH_ROUND").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = Arc::new(EmbeddedStore::open(db, options()).unwrap());
        // libtest may have printed "test NAME ... " without a newline: start a fresh line.
        println!();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (s, out, round) = (s.clone(), out.clone(), round.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{round}/{w}/{i}");
                    let value = Bytes::from(key.clone().into_bytes());
                    let rev = s.create(key.as_bytes(), value, None).await.unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ack {key} {rev}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
