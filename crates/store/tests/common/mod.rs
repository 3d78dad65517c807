//! Backends for the shared suite: every test runs on a fresh embedded store and on a
//! fresh real etcd.

#![allow(dead_code)]

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rkube_store::{
    EmbeddedOptions, EmbeddedStore, EtcdStore, KeySpan, Revision, Store, StoreError, WatchResponse,
    WatchStream,
};

pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub name: &'static str,
    _guard: Box<dyn Any + Send>,
}

pub fn quick_options() -> EmbeddedOptions {
    EmbeddedOptions {
        retention: Duration::ZERO,
        progress_interval: Duration::from_millis(300),
        ..Default::default()
    }
}

pub async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("db"), quick_options()).unwrap();
    Fixture {
        store: Arc::new(store),
        name: "embedded",
        _guard: Box::new(dir),
    }
}

pub async fn etcd() -> Fixture {
    let etcd = rkube_testkit::Etcd::start()
        .unwrap_or_else(|e| panic!("the etcd backend tests need etcd: {e}"));
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap()
        .with_progress_interval(Duration::from_millis(300));
    Fixture {
        store: Arc::new(store),
        name: "etcd",
        _guard: Box::new(etcd),
    }
}

/// Starts a watch and expects it to fail as compacted, at once or as its first message.
pub async fn expect_watch_compacted(store: &dyn Store, span: KeySpan, after: Revision) {
    match store.watch(span, after).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => {}
            other => panic!("expected a Compacted error from the watch, got {other:?}"),
        },
    }
}

/// Collects watch events until one at `until` arrives (or the timeout passes).
pub async fn collect_until(
    w: &mut WatchStream,
    until: Revision,
    timeout: Duration,
) -> Vec<rkube_store::Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out
        .last()
        .is_none_or(|e: &rkube_store::Event| e.kv.mod_revision < until)
    {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(Ok(WatchResponse::Events(ev)))) => out.extend(ev),
            Ok(Some(Ok(WatchResponse::Progress(_)))) => {}
            Ok(Some(Err(e))) => panic!("watch failed: {e}"),
            Ok(None) => panic!("watch ended"),
            Err(_) => break,
        }
    }
    out
}

/// Runs each listed async test function against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = $crate::common::embedded().await;
                    super::$name(&f).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = $crate::common::etcd().await;
                    super::$name(&f).await;
                }
            )*
        }
    };
}
