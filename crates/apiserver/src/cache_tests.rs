//! Unit tests of the watch cache.
use super::*;
use async_trait::async_trait;
use rkube_api::selector::{FieldSelector, LabelSelector};
use rkube_store::{EmbeddedOptions, EmbeddedStore, RangeResponse, Revision};
use serde_json::json;

/// A store whose watch events arrive late, as under load or from a remote etcd.
struct SlowWatch(Arc<dyn Store>);

#[async_trait]
impl Store for SlowWatch {
    async fn range(&self, req: RangeRequest) -> rkube_store::Result<RangeResponse> {
        self.0.range(req).await
    }
    async fn create(
        &self,
        key: &[u8],
        value: Bytes,
        ttl: Option<Duration>,
    ) -> rkube_store::Result<Revision> {
        self.0.create(key, value, ttl).await
    }
    async fn update(
        &self,
        key: &[u8],
        value: Bytes,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> rkube_store::Result<(Revision, KeyValue)> {
        self.0.update(key, value, expected, ttl).await
    }
    async fn delete(
        &self,
        key: &[u8],
        expected: Option<Revision>,
    ) -> rkube_store::Result<(Revision, KeyValue)> {
        self.0.delete(key, expected).await
    }
    async fn watch(
        &self,
        span: KeySpan,
        after: Revision,
    ) -> rkube_store::Result<rkube_store::WatchStream> {
        let inner = self.0.watch(span, after).await?;
        Ok(Box::pin(inner.then(|item| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            item
        })))
    }
    async fn compact(&self, revision: Revision) -> rkube_store::Result<()> {
        self.0.compact(revision).await
    }
    async fn current_revision(&self) -> rkube_store::Result<Revision> {
        self.0.current_revision().await
    }
    async fn remaining_ttl(&self, kv: &KeyValue) -> rkube_store::Result<Option<Duration>> {
        self.0.remaining_ttl(kv).await
    }
}

fn everything() -> Selectors {
    Selectors {
        label: LabelSelector::parse("").unwrap(),
        field: FieldSelector::parse("").unwrap(),
    }
}

#[tokio::test]
async fn consistent_reads_wait_for_the_cache_to_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap());
    let store: Arc<dyn Store> = Arc::new(SlowWatch(inner.clone()));
    let cache = WatchCache::new(store, &Registry::builtin());
    let _task = cache.start().await.unwrap();
    let prefix = "/registry/configmaps/default/";
    for name in ["a", "b", "c"] {
        let obj =
            json!({"metadata": {"name": name, "namespace": "default", "labels": {"x": name}}});
        let rev = inner
            .create(
                format!("{prefix}{name}").as_bytes(),
                storage::encode(&obj),
                None,
            )
            .await
            .unwrap();
        // Written behind the cache's back and delivered late: a consistent read
        // still sees it.
        let current = inner.current_revision().await.unwrap();
        assert!(current >= rev);
        let listed = cache
            .list(
                "configmaps",
                prefix,
                &everything(),
                Freshness::NotOlderThan(current),
                0,
            )
            .await
            .expect("the cache serves");
        assert!(listed.revision >= rev);
        assert!(listed
            .entries
            .iter()
            .any(|e| e.key.ends_with(name.as_bytes())));
    }
    // Selectors use the extracted labels and fields.
    let sel = Selectors {
        label: LabelSelector::parse("x in (a,c)").unwrap(),
        field: FieldSelector::parse("metadata.name!=c").unwrap(),
    };
    let listed = cache
        .list("configmaps", prefix, &sel, Freshness::Any, 0)
        .await
        .unwrap();
    let names: Vec<_> = listed
        .entries
        .iter()
        .map(|e| e.field("metadata.name").unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    // A limit cuts the list with where to go on and how many are left.
    let page = cache
        .list("configmaps", prefix, &everything(), Freshness::Any, 2)
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.remaining, Some(1));
    assert_eq!(
        page.next.as_deref(),
        Some(&b"/registry/configmaps/default/b\0"[..])
    );
}
