//! The behavioural suite of the `Store` trait, run unchanged on the embedded store and on
//! real etcd.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{collect_until, expect_watch_compacted, Fixture};
use futures::StreamExt;
use rkube_store::{EventType, KeySpan, RangeRequest, StoreError, WatchResponse};

fn b(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

async fn create_get_update_delete(f: &Fixture) {
    let s = &*f.store;
    let r0 = s.current_revision().await.unwrap();
    let r1 = s.create(b"/a", b("one"), None).await.unwrap();
    assert_eq!(r1, r0 + 1);
    let (kv, read_rev) = s.get(b"/a", 0).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(
        (
            kv.value.clone(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (b("one"), r1, r1, 1)
    );
    assert_eq!(read_rev, r1);

    match s.create(b"/a", b("again"), None).await {
        Err(StoreError::AlreadyExists { current }) => assert_eq!(current, kv),
        other => panic!("{}: create over an existing key gave {other:?}", f.name),
    }
    assert_eq!(
        s.current_revision().await.unwrap(),
        r1,
        "a failed write takes no revision"
    );

    let (r2, prev) = s.update(b"/a", b("two"), Some(r1), None).await.unwrap();
    assert_eq!((r2, prev.value), (r1 + 1, b("one")));
    let kv2 = s.get(b"/a", 0).await.unwrap().0.unwrap();
    assert_eq!(
        (kv2.create_revision, kv2.mod_revision, kv2.version),
        (r1, r2, 2)
    );

    assert!(matches!(
        s.update(b"/missing", b("x"), None, None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete(b"/missing", None).await,
        Err(StoreError::NotFound { .. })
    ));

    let (r3, prev) = s.delete(b"/a", Some(r2)).await.unwrap();
    assert_eq!((r3, prev.value), (r2 + 1, b("two")));
    assert_eq!(s.get(b"/a", 0).await.unwrap().0, None);
    // The old value is still readable at its revision.
    assert_eq!(s.get(b"/a", r2).await.unwrap().0.unwrap().value, b("two"));

    // Re-creating starts a new life: version 1, new create revision.
    let r4 = s.create(b"/a", b("new"), None).await.unwrap();
    let kv4 = s.get(b"/a", 0).await.unwrap().0.unwrap();
    assert_eq!((kv4.create_revision, kv4.version), (r4, 1));
}

async fn cas_conflicts(f: &Fixture) {
    let s = &*f.store;
    let r1 = s.create(b"/cas", b("0"), None).await.unwrap();
    let (r2, _) = s.update(b"/cas", b("1"), Some(r1), None).await.unwrap();
    match s.update(b"/cas", b("stale"), Some(r1), None).await {
        Err(StoreError::Conflict { expected, current }) => {
            assert_eq!(
                (expected, current.mod_revision, current.value),
                (r1, r2, b("1"))
            );
        }
        other => panic!("{}: stale update gave {other:?}", f.name),
    }
    assert!(matches!(
        s.delete(b"/cas", Some(r1)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        s.get(b"/cas", 0).await.unwrap().0.unwrap().value,
        b("1"),
        "a conflict changes nothing"
    );

    // 16 tasks increment one counter 10 times each with read-modify-CAS retries.
    let key = b"/counter";
    s.create(key, b("0"), None).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..10 {
                let mut cur = s.get(key, 0).await.unwrap().0.unwrap();
                loop {
                    let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    match s
                        .update(key, b((n + 1).to_string()), Some(cur.mod_revision), None)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { current, .. }) => {
                            conflicts += 1;
                            cur = current;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = s.get(key, 0).await.unwrap().0.unwrap();
    assert_eq!((kv.value, kv.version), (b("160"), 161));
}

async fn range_paging_at_fixed_revision(f: &Fixture) {
    let s = &*f.store;
    for i in 0..25 {
        s.create(format!("/p/{i:02}").as_bytes(), b(format!("v{i}")), None)
            .await
            .unwrap();
    }
    s.create(b"/pother", b("outside the prefix"), None)
        .await
        .unwrap();
    let rev = s.current_revision().await.unwrap();
    // Change the data after the revision we page at.
    for i in 0..5 {
        s.update(format!("/p/{i:02}").as_bytes(), b("changed"), None, None)
            .await
            .unwrap();
        s.delete(format!("/p/{:02}", 20 + i).as_bytes(), None)
            .await
            .unwrap();
    }
    s.create(b"/p/99", b("late"), None).await.unwrap();

    let mut seen = Vec::new();
    let mut req = RangeRequest::prefix("/p/").at(rev).limit(10);
    let mut pages = 0;
    loop {
        let page = s.range(req.clone()).await.unwrap();
        pages += 1;
        assert_eq!(page.revision, rev);
        assert_eq!(
            page.remaining(),
            25 - seen.len() as i64 - page.kvs.len() as i64,
            "count of the rest"
        );
        seen.extend(page.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())));
        if !page.more {
            break;
        }
        let mut next = page.kvs.last().unwrap().key.to_vec();
        next.push(0);
        req = req.start_at(next);
    }
    assert_eq!(pages, 3);
    let expected: Vec<_> = (0..25)
        .map(|i| (b(format!("/p/{i:02}")), b(format!("v{i}"))))
        .collect();
    assert_eq!(
        seen, expected,
        "{}: pages at a fixed revision show that revision",
        f.name
    );

    let latest = s.range(RangeRequest::prefix("/p/")).await.unwrap();
    assert_eq!(latest.count, 21);
    assert_eq!(latest.kvs[0].value, b("changed"));
    assert!(!latest.more);
    let counted = s
        .range(RangeRequest::prefix("/p/").count_only())
        .await
        .unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (21, 0));
    let everything = s.range(RangeRequest::prefix("")).await.unwrap();
    assert_eq!(everything.count, 22);
    let future = s.current_revision().await.unwrap() + 100;
    assert!(matches!(
        s.range(RangeRequest::prefix("/p/").at(future)).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

async fn watch_events_with_previous_values(f: &Fixture) {
    let s = &*f.store;
    let start = s.current_revision().await.unwrap();
    let r1 = s.create(b"/w/a", b("1"), None).await.unwrap();
    s.create(b"/x/outside", b("not watched"), None)
        .await
        .unwrap();
    let (r2, _) = s.update(b"/w/a", b("2"), None, None).await.unwrap();
    let (r3, _) = s.delete(b"/w/a", None).await.unwrap();
    let mut w = s.watch(KeySpan::prefix("/w/"), start).await.unwrap();
    let events = collect_until(&mut w, r3, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 3, "{}: {events:?}", f.name);
    assert_eq!(
        (
            events[0].kind,
            events[0].kv.mod_revision,
            events[0].prev_kv.is_none()
        ),
        (EventType::Put, r1, true)
    );
    assert_eq!(
        (
            events[1].kv.value.clone(),
            events[1].prev_kv.as_ref().unwrap().value.clone()
        ),
        (b("2"), b("1"))
    );
    assert_eq!(
        (events[2].kind, events[2].kv.mod_revision),
        (EventType::Delete, r3)
    );
    assert_eq!(events[2].prev_kv.as_ref().unwrap().mod_revision, r2);

    // A watch from now sees only later changes; a single-key watch only that key.
    let mut key_watch = s.watch(KeySpan::key("/w/b"), 0).await.unwrap();
    s.create(b"/w/bb", b("other key"), None).await.unwrap();
    let r5 = s.create(b"/w/b", b("mine"), None).await.unwrap();
    let events = collect_until(&mut key_watch, r5, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kv.key, b("/w/b"));
}

async fn watch_ordering_10000_writes_100_watchers(f: &Fixture) {
    let s = f.store.clone();
    let start = s.current_revision().await.unwrap();
    const WRITES: i64 = 10_000;
    let mut watchers = Vec::new();
    for i in 0..100 {
        let w = s.watch(KeySpan::prefix("/order/"), start).await.unwrap();
        let slow = i % 10 == 0;
        watchers.push(tokio::spawn(async move {
            let mut w = w;
            let mut revs = Vec::with_capacity(WRITES as usize);
            while (revs.len() as i64) < WRITES {
                match tokio::time::timeout(Duration::from_secs(60), w.next()).await {
                    Ok(Some(Ok(WatchResponse::Events(ev)))) => {
                        revs.extend(ev.iter().map(|e| e.kv.mod_revision));
                        if slow {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    Ok(Some(Ok(WatchResponse::Progress(_)))) => {}
                    other => panic!("watcher {i} stopped after {} events: {other:?}", revs.len()),
                }
            }
            revs
        }));
    }
    // 16 concurrent writers over 100 keys.
    let mut writers = Vec::new();
    for wtr in 0..16 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for n in (wtr..WRITES).step_by(16) {
                let key = format!("/order/{:03}", n % 100);
                if n < 100 {
                    s.create(key.as_bytes(), b(n.to_string()), None)
                        .await
                        .unwrap();
                } else {
                    let mut done = false;
                    while !done {
                        done = s
                            .update(key.as_bytes(), b(n.to_string()), None, None)
                            .await
                            .is_ok();
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let end = s.current_revision().await.unwrap();
    assert_eq!(end - start, WRITES);
    let expected: Vec<i64> = (start + 1..=end).collect();
    for (i, w) in watchers.into_iter().enumerate() {
        let revs = w.await.unwrap();
        assert_eq!(revs.len(), expected.len(), "{}: watcher {i} count", f.name);
        assert!(
            revs == expected,
            "{}: watcher {i} saw events missing or out of order",
            f.name
        );
    }
}

async fn compaction_gives_compacted(f: &Fixture) {
    let s = &*f.store;
    let r1 = s.create(b"/c/k", b("0"), None).await.unwrap();
    for i in 1..10 {
        s.update(b"/c/k", b(i.to_string()), None, None)
            .await
            .unwrap();
    }
    let mid = r1 + 5;
    s.compact(mid).await.unwrap();
    assert!(
        matches!(
            s.get(b"/c/k", r1 + 2).await,
            Err(StoreError::Compacted { .. })
        ),
        "{}",
        f.name
    );
    assert_eq!(s.get(b"/c/k", mid).await.unwrap().0.unwrap().value, b("5"));
    expect_watch_compacted(s, KeySpan::prefix("/c/"), r1).await;
    // Watching from the compaction point itself still works and sees everything after it.
    let mut w = s.watch(KeySpan::prefix("/c/"), mid).await.unwrap();
    let events = collect_until(&mut w, r1 + 9, Duration::from_secs(10)).await;
    assert_eq!(events.first().map(|e| e.kv.mod_revision), Some(mid + 1));
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b("5"));
    assert!(matches!(
        s.compact(r1).await,
        Err(StoreError::Compacted { .. })
    ));
    let future = s.current_revision().await.unwrap() + 10;
    assert!(matches!(
        s.compact(future).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

async fn leases_expire(f: &Fixture) {
    let s = &*f.store;
    let start = s.current_revision().await.unwrap();
    let mut w = s.watch(KeySpan::prefix("/ttl/"), start).await.unwrap();
    let r1 = s
        .create(
            b"/ttl/event",
            b("short-lived"),
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    s.create(b"/ttl/keep", b("no ttl"), None).await.unwrap();
    let kv = s.get(b"/ttl/event", 0).await.unwrap().0.unwrap();
    assert_ne!(kv.lease, 0);
    let left = s.remaining_ttl(&kv).await.unwrap().expect("a TTL");
    assert!(
        left <= Duration::from_secs(2) && left > Duration::ZERO,
        "{left:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s.get(b"/ttl/event", 0).await.unwrap().0.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: key did not expire",
            f.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.get(b"/ttl/keep", 0).await.unwrap().0.is_some());
    let events = collect_until(&mut w, r1 + 2, Duration::from_secs(10)).await;
    let deletion = events
        .iter()
        .find(|e| e.kind == EventType::Delete)
        .expect("a delete event for the expiry");
    assert_eq!(deletion.kv.key, b("/ttl/event"));
    assert_eq!(deletion.prev_kv.as_ref().unwrap().value, b("short-lived"));
}

async fn progress_notifications(f: &Fixture) {
    let s = &*f.store;
    let mut w = s.watch(KeySpan::prefix("/quiet/"), 0).await.unwrap();
    let written = s.create(b"/busy/x", b("elsewhere"), None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(Ok(WatchResponse::Progress(rev)))) if rev >= written => break,
            Ok(Some(Ok(WatchResponse::Progress(_)))) => {}
            other => panic!(
                "{}: expected a progress notification, got {other:?}",
                f.name
            ),
        }
    }
}

async fn concurrent_creates_of_one_key(f: &Fixture) {
    let s = f.store.clone();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create(b"/race", b(i.to_string()), None).await.is_ok() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as u32;
    }
    assert_eq!(winners, 1, "exactly one create wins");
    let kv = s.get(b"/race", 0).await.unwrap().0.unwrap();
    assert_eq!(kv.version, 1);
}

/// Writes over 1.5 MiB (key and value) fail the same way on both backends, and change
/// nothing; a write just under the limit succeeds.
async fn writes_over_the_request_limit(f: &Fixture) {
    let s = &*f.store;
    let key = b"/big";
    let fits = Bytes::from(vec![b'x'; rkube_store::MAX_WRITE_BYTES - key.len()]);
    let over = Bytes::from(vec![b'x'; rkube_store::MAX_WRITE_BYTES - key.len() + 1]);
    let before = s.current_revision().await.unwrap();
    let e = s.create(key, over.clone(), None).await.unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
    assert_eq!(e.to_string(), "etcdserver: request is too large");
    assert_eq!(s.current_revision().await.unwrap(), before);
    let rev = s.create(key, fits, None).await.unwrap();
    let e = s.update(key, over, Some(rev), None).await.unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
    let kv = s.get(key, 0).await.unwrap().0.unwrap();
    assert_eq!(kv.mod_revision, rev);
}

both_backends!(
    writes_over_the_request_limit,
    create_get_update_delete,
    cas_conflicts,
    range_paging_at_fixed_revision,
    watch_events_with_previous_values,
    watch_ordering_10000_writes_100_watchers,
    compaction_gives_compacted,
    leases_expire,
    progress_notifications,
    concurrent_creates_of_one_key,
);

/// etcd's NOSPACE alarm reaches the caller as the same error the embedded store's quota
/// gives (`etcdserver: mvcc: database space exceeded`), so the apiserver answers alike.
#[tokio::test]
async fn etcd_space_quota_is_no_space() {
    let etcd =
        rkube_testkit::Etcd::start_with(&std::env::temp_dir(), &["--quota-backend-bytes=4194304"])
            .unwrap_or_else(|e| panic!("the etcd backend tests need etcd: {e}"));
    let s = rkube_store::EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let value = Bytes::from(vec![b'x'; 512 << 10]);
    let mut refused = None;
    for i in 0..64 {
        if let Err(e) =
            rkube_store::Store::create(&s, format!("/q/{i}").as_bytes(), value.clone(), None).await
        {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("etcd took 32 MiB under a 4 MiB quota");
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
    assert_eq!(e.to_string(), "etcdserver: mvcc: database space exceeded");
}
