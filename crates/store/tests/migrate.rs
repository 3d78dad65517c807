//! Migration copies every key, in both directions: embedded → etcd → embedded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use rkube_store::{migrate::migrate, EmbeddedStore, EtcdStore, RangeRequest, Store, StoreError};

async fn contents(s: &dyn Store) -> Vec<(Bytes, Bytes)> {
    let all = s.range(RangeRequest::prefix("")).await.unwrap();
    all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_to_etcd_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = EmbeddedStore::open(dir.path().join("a"), common::quick_options()).unwrap();
    for i in 0..2500 {
        let key = format!("/registry/configmaps/ns{}/cm{i}", i % 7);
        src.create(key.as_bytes(), Bytes::from(format!("{{\"n\":{i}}}")), None)
            .await
            .unwrap();
    }
    src.delete(b"/registry/configmaps/ns0/cm0", None)
        .await
        .unwrap();
    src.create(
        b"/registry/events/default/e1",
        Bytes::from_static(b"event"),
        Some(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let original = contents(&src).await;

    let etcd = rkube_testkit::Etcd::start().unwrap();
    let mid = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let mut calls = 0;
    let report = migrate(&src, &mid, |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .await
    .unwrap();
    assert_eq!(report.keys as usize, original.len());
    assert!(calls >= 3, "progress is reported per page");
    assert_eq!(contents(&mid).await, original);
    let event = mid
        .get(b"/registry/events/default/e1", 0)
        .await
        .unwrap()
        .0
        .unwrap();
    let ttl = mid
        .remaining_ttl(&event)
        .await
        .unwrap()
        .expect("the TTL travels with the key");
    assert!(
        ttl > Duration::from_secs(3500) && ttl <= Duration::from_secs(3600 + 60),
        "{ttl:?}"
    );

    // Refuses a destination that already has data.
    assert!(
        matches!(migrate(&src, &mid, |_, _| {}).await, Err(StoreError::Invalid(m)) if m.contains("empty"))
    );

    let back = EmbeddedStore::open(dir.path().join("b"), common::quick_options()).unwrap();
    migrate(&mid, &back, |_, _| {}).await.unwrap();
    assert_eq!(contents(&back).await, original);
    let event = back
        .get(b"/registry/events/default/e1", 0)
        .await
        .unwrap()
        .0
        .unwrap();
    assert!(
        back.remaining_ttl(&event).await.unwrap().is_some(),
        "the TTL comes back too"
    );
}
