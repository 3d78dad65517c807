//! A `Store` wrapper that records datastore latency per operation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rkube_store::{
    KeySpan, KeyValue, RangeRequest, RangeResponse, Result, Revision, Store, WatchStream,
};

use crate::metrics::Metrics;

pub struct MeteredStore {
    pub inner: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

impl MeteredStore {
    fn record(&self, op: &'static str, start: Instant) {
        self.metrics.store_op(op, start.elapsed());
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let t = Instant::now();
        let r = self.inner.range(req).await;
        self.record("range", t);
        r
    }
    async fn create(&self, key: &[u8], value: Bytes, ttl: Option<Duration>) -> Result<Revision> {
        let t = Instant::now();
        let r = self.inner.create(key, value, ttl).await;
        self.record("create", t);
        r
    }
    async fn update(
        &self,
        key: &[u8],
        value: Bytes,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<(Revision, KeyValue)> {
        let t = Instant::now();
        let r = self.inner.update(key, value, expected, ttl).await;
        self.record("update", t);
        r
    }
    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let t = Instant::now();
        let r = self.inner.delete(key, expected).await;
        self.record("delete", t);
        r
    }
    async fn watch(&self, span: KeySpan, after: Revision) -> Result<WatchStream> {
        self.inner.watch(span, after).await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.compact(revision).await;
        self.record("compact", t);
        r
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }
    async fn remaining_ttl(&self, kv: &KeyValue) -> Result<Option<Duration>> {
        self.inner.remaining_ttl(kv).await
    }
}
