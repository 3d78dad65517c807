//! Under steady churn the data directory stops growing: 1,000 keys updated 400,000 times
//! with automatic compaction and checkpoints.
//!
//! The store keeps the revisions of the last `retention` (250 ms here, compacted on a
//! 100 ms tick), so what it must hold grows with the machine's write rate, not with the
//! updates: 26,000 revisions (6 MB checkpoints) at the 74,000 updates/s a freshly booted
//! CI machine reached. The run is long enough that this window is a small part of it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rkube_store::{EmbeddedOptions, EmbeddedStore, RangeRequest, Store};

const KEYS: u64 = 1000;
const UPDATES: u64 = 400_000;
const WRITERS: u64 = 32;
const SAMPLES: u64 = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_data_directory_levels_off_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        retention: Duration::from_millis(250),
        checkpoint_bytes: 1 << 20,
        ..Default::default()
    };
    let s = Arc::new(EmbeddedStore::open(dir.path(), opts).unwrap());
    let value = |n: u64| Bytes::from(format!("{n:0>200}"));
    for k in 0..KEYS {
        s.create(format!("/churn/{k:04}").as_bytes(), value(0), None)
            .await
            .unwrap();
    }
    let mut sizes = Vec::new();
    let per_sample = UPDATES / SAMPLES;
    for sample in 0..SAMPLES {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for n in (w..per_sample).step_by(WRITERS as usize) {
                    let k = (sample * per_sample + n) % KEYS;
                    s.update(format!("/churn/{k:04}").as_bytes(), value(n), None, None)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let size = rkube_testkit::dir_size(dir.path());
        eprintln!("after {} updates: {size} bytes", (sample + 1) * per_sample);
        sizes.push(size);
    }
    let rev = s.current_revision().await.unwrap();
    assert_eq!(rev, 1 + KEYS as i64 + UPDATES as i64);
    assert_eq!(
        s.range(RangeRequest::prefix("/churn/").count_only())
            .await
            .unwrap()
            .count,
        KEYS as i64
    );
    // Without compaction and checkpoints the directory would grow in proportion to the
    // updates (the second half would average about twice the first); it must level off.
    // Sizes follow a sawtooth (log grows, checkpoint, old files go), so compare the mean
    // size over each half, after a warm-up quarter.
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len() as f64;
    let (quarter, half) = (SAMPLES as usize / 4, SAMPLES as usize / 2);
    let early = mean(&sizes[quarter..half]);
    let late = mean(&sizes[half..]);
    assert!(
        late < 1.5 * early,
        "the data directory kept growing: {sizes:?} (late mean {late:.0} vs early mean {early:.0})"
    );
    let written = UPDATES * 230;
    assert!(
        late < (written / 4) as f64,
        "the directory ({late:.0} bytes on average) holds most of what was written ({written} bytes)"
    );
}
