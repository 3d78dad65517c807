//! Behaviour only the embedded backend has: durability across reopen, the directory lock,
//! clear errors for damaged files, checkpoints, snapshots and a full disk.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use rkube_store::{EmbeddedOptions, EmbeddedStore, RangeRequest, Store, StoreError};

fn b(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

async fn fill(s: &EmbeddedStore, n: usize, value_len: usize) {
    for i in 0..n {
        let key = format!("/k/{:05}", i % 500);
        let v = b("x".repeat(value_len) + &i.to_string());
        if s.create(key.as_bytes(), v.clone(), None).await.is_err() {
            s.update(key.as_bytes(), v, None, None).await.unwrap();
        }
    }
}

#[tokio::test]
async fn data_and_revisions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (rev, before) = {
        let s = EmbeddedStore::open(&path, common::quick_options()).unwrap();
        fill(&s, 300, 10).await;
        s.delete(b"/k/00007", None).await.unwrap();
        s.compact(50).await.unwrap();
        let rev = s.current_revision().await.unwrap();
        (rev, s.range(RangeRequest::prefix("")).await.unwrap().kvs)
    };
    let s = EmbeddedStore::open(&path, common::quick_options()).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), rev);
    assert_eq!(s.range(RangeRequest::prefix("")).await.unwrap().kvs, before);
    assert!(
        matches!(
            s.get(b"/k/00001", 40).await,
            Err(StoreError::Compacted { .. })
        ),
        "compaction is durable"
    );
    assert!(
        s.get(b"/k/00001", 60).await.is_ok(),
        "history after the compaction point is kept"
    );
    assert_eq!(
        s.create(b"/next", b("v"), None).await.unwrap(),
        rev + 1,
        "revisions continue"
    );
}

#[tokio::test]
async fn a_second_process_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    match EmbeddedStore::open(dir.path(), EmbeddedOptions::default()) {
        Err(e @ StoreError::Locked { pid: Some(_), .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("in use by another process") && msg.contains("pid"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second open of the same directory must fail"),
    }
}

#[tokio::test]
async fn checkpoints_bound_the_log_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        checkpoint_bytes: 64 << 10,
        ..common::quick_options()
    };
    let before = {
        let s = EmbeddedStore::open(dir.path(), opts.clone()).unwrap();
        fill(&s, 3000, 200).await;
        // Let the checkpoint thread finish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.range(RangeRequest::prefix("")).await.unwrap()
    };
    let snaps = files(dir.path(), "snap-");
    let wals = files(dir.path(), "wal-");
    assert_eq!(snaps.len(), 1, "old checkpoints are removed: {snaps:?}");
    assert!(wals.len() <= 2, "old log segments are removed: {wals:?}");
    let s = EmbeddedStore::open(dir.path(), opts).unwrap();
    let after = s.range(RangeRequest::prefix("")).await.unwrap();
    assert_eq!((after.revision, after.kvs), (before.revision, before.kvs));
}

/// Appends `bytes` at the end of the newest log segment.
fn append_to_log(dir: &Path, bytes: &[u8]) {
    let wal = files(dir, "wal-").pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(wal).unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test]
async fn a_torn_last_write_is_cut_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rev = {
        let s = EmbeddedStore::open(dir.path(), common::quick_options()).unwrap();
        fill(&s, 20, 5).await;
        s.current_revision().await.unwrap()
    };
    // A frame header that promises more bytes than were written, as a crash mid-write leaves.
    append_to_log(dir.path(), &[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]);
    let s = EmbeddedStore::open(dir.path(), common::quick_options()).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), rev);
    assert_eq!(s.create(b"/after", b("v"), None).await.unwrap(), rev + 1);
    drop(s);
    let s = EmbeddedStore::open(dir.path(), common::quick_options()).unwrap();
    assert_eq!(s.get(b"/after", 0).await.unwrap().0.unwrap().value, b("v"));
}

#[tokio::test]
async fn damaged_or_foreign_files_give_a_clear_error() {
    // A flipped byte in the middle of the log, with valid frames after it.
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path(), common::quick_options()).unwrap();
        fill(&s, 50, 20).await;
    }
    let wal = files(dir.path(), "wal-").pop().unwrap();
    let mut f = OpenOptions::new().write(true).open(&wal).unwrap();
    f.seek(SeekFrom::Start(100)).unwrap();
    f.write_all(&[0xAB]).unwrap();
    drop(f);
    match EmbeddedStore::open(dir.path(), common::quick_options()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("damaged") && msg.contains("restore"), "{msg}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a damaged log must not open silently"),
    }

    // A foreign file where a checkpoint should be.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(format!("snap-{:020}.snap", 5)),
        b"SQLite format 3\0 not ours",
    )
    .unwrap();
    assert!(matches!(
        EmbeddedStore::open(dir.path(), common::quick_options()),
        Err(StoreError::Corrupt { detail, .. }) if detail.contains("not an rkube snapshot")
    ));

    // A checkpoint with one flipped byte.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("snap");
    {
        let s = EmbeddedStore::open(dir.path().join("db"), common::quick_options()).unwrap();
        fill(&s, 50, 20).await;
        EmbeddedStore::save_snapshot(dir.path().join("db"), &out).unwrap();
    }
    let mut data = std::fs::read(&out).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x10;
    std::fs::write(&out, data).unwrap();
    assert!(matches!(
        EmbeddedStore::restore_snapshot(&out, dir.path().join("db2")),
        Err(StoreError::Corrupt { detail, .. }) if detail.contains("checksum")
    ));
}

#[tokio::test]
async fn online_snapshot_save_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let snap = dir.path().join("backup.snap");
    let s = EmbeddedStore::open(
        &db,
        EmbeddedOptions {
            checkpoint_bytes: 32 << 10,
            ..common::quick_options()
        },
    )
    .unwrap();
    fill(&s, 1000, 100).await;
    let at_save = s.range(RangeRequest::prefix("")).await.unwrap();
    // Saved while the store is open and being written.
    let saved_rev = EmbeddedStore::save_snapshot(&db, &snap).unwrap();
    assert_eq!(saved_rev, at_save.revision);
    fill(&s, 200, 7).await;
    // Restore refuses while the store is in use.
    assert!(matches!(
        EmbeddedStore::restore_snapshot(&snap, &db),
        Err(StoreError::Locked { .. })
    ));
    drop(s);
    let (rev, moved) = EmbeddedStore::restore_snapshot(&snap, &db).unwrap();
    assert_eq!(rev, saved_rev);
    let moved = moved.expect("the previous store is kept");
    assert!(moved.exists());
    let s = EmbeddedStore::open(&db, common::quick_options()).unwrap();
    let restored = s.range(RangeRequest::prefix("")).await.unwrap();
    assert_eq!(
        (restored.revision, restored.kvs),
        (at_save.revision, at_save.kvs)
    );
    assert_eq!(
        s.create(b"/new", b("v"), None).await.unwrap(),
        saved_rev + 1
    );
}

/// Runs `cmd` and says whether it succeeded.
fn sh(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn a_full_disk_fails_the_write_and_keeps_the_store_consistent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED a_full_disk_fails_the_write_and_keeps_the_store_consistent: needs root to mount a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    assert!(
        sh(&format!(
            "mount -t tmpfs -o size=1m tmpfs {}",
            mnt.display()
        )),
        "mount tmpfs"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            sh(&format!("umount -l {}", self.0.display()));
        }
    }
    let _unmount = Unmount(mnt.clone());
    let db = mnt.join("db");
    let s = EmbeddedStore::open(&db, common::quick_options()).unwrap();
    s.create(b"/before", b("kept"), None).await.unwrap();
    // Fill the disk, leaving a little room.
    let filler = mnt.join("filler");
    sh(&format!(
        "dd if=/dev/zero of={} bs=4k count=1000 2>/dev/null",
        filler.display()
    ));
    let rev_before = s.current_revision().await.unwrap();
    let big = b("y".repeat(64 << 10));
    let mut failures = 0;
    for i in 0..40 {
        match s
            .create(format!("/big/{i}").as_bytes(), big.clone(), None)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Io { .. }) => failures += 1,
            Err(e) => panic!("expected an I/O error, got {e}"),
        }
    }
    assert!(failures > 0, "the disk never filled up");
    let written = s
        .range(RangeRequest::prefix("/big/").count_only())
        .await
        .unwrap()
        .count;
    assert_eq!(
        s.current_revision().await.unwrap(),
        rev_before + written,
        "failed writes take no revision"
    );
    // Space comes back: writes work again, and everything reloads.
    std::fs::remove_file(&filler).unwrap();
    let rev = s.create(b"/after", b("ok"), None).await.unwrap();
    assert_eq!(rev, rev_before + written + 1);
    let before = s.range(RangeRequest::prefix("")).await.unwrap();
    drop(s);
    let s = EmbeddedStore::open(&db, common::quick_options()).unwrap();
    let after = s.range(RangeRequest::prefix("")).await.unwrap();
    assert_eq!((after.revision, after.kvs), (before.revision, before.kvs));
}

#[tokio::test]
async fn a_write_burst_keeps_history_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 4 << 20;
    let opts = EmbeddedOptions {
        history_budget: budget,
        // Long retention: without the budget, all of the burst would be kept.
        retention: std::time::Duration::from_secs(300),
        ..common::quick_options()
    };
    let s = EmbeddedStore::open(dir.path(), opts).unwrap();
    let first = s.create(b"/cm", b("start"), None).await.unwrap();
    let value = Bytes::from(vec![b'x'; 256 << 10]);
    let mut peak = 0;
    for _ in 0..100 {
        s.update(b"/cm", value.clone(), None, None).await.unwrap();
        peak = peak.max(s.usage().history);
    }
    // 25 MiB went through; history never held much more than the budget (one write
    // may land before the early compaction that follows it).
    assert!(
        peak <= budget + (256 << 10) + 1024,
        "history peaked at {peak} bytes, budget {budget}"
    );
    assert_eq!(s.usage().live, (3 + (256 << 10) + 64) as u64);
    // Watchers and reads from before the early compaction point get Compacted (410).
    let e = s
        .range(RangeRequest::key(b"/cm").at(first))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Compacted { .. }), "{e}");
    // The latest value is intact.
    let kv = s.get(b"/cm", 0).await.unwrap().0.unwrap();
    assert_eq!(kv.value, value);
    assert_eq!(kv.version, 101);
}

#[tokio::test]
async fn the_space_quota_refuses_growth_but_not_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        quota_bytes: 1 << 20,
        ..common::quick_options()
    };
    let s = EmbeddedStore::open(dir.path(), opts).unwrap();
    let big = Bytes::from(vec![b'x'; 400 << 10]);
    s.create(b"/a", big.clone(), None).await.unwrap();
    s.create(b"/b", big.clone(), None).await.unwrap();
    let e = s.create(b"/c", big.clone(), None).await.unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
    assert_eq!(e.to_string(), "etcdserver: mvcc: database space exceeded");
    assert!(s.get(b"/c", 0).await.unwrap().0.is_none());
    s.delete(b"/a", None).await.unwrap();
    s.create(b"/c", big, None).await.unwrap();
}
