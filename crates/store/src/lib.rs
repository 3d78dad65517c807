//! The rkube datastore: a [`Store`] trait with etcd v3 semantics and two backends.
//!
//! Every Kubernetes object lives under one key and every `resourceVersion` a client sees is
//! a store revision. The apiserver is the only user of this crate.
//!
//! - [`EmbeddedStore`]: the default, one directory under `--data-dir`; an in-memory MVCC
//!   index over a write-ahead log with group commit, checkpoints and automatic compaction.
//! - [`EtcdStore`]: the same trait on a real etcd v3 cluster, for HA.
//!
//! [`open`] picks the backend from a `--datastore-endpoint` / `--data-dir` pair.

mod error;
mod etcd;
mod open;
mod types;

pub mod embedded;
pub mod migrate;

pub use embedded::{EmbeddedOptions, EmbeddedStore, Usage};
pub use error::{Result, StoreError};
pub use etcd::EtcdStore;
pub use open::{open, Endpoint};
pub use types::*;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// The largest write (key and value) either backend takes: etcd's default
/// `--max-request-bytes` (1.5 MiB) less 4 KiB for the transaction that carries the write.
/// Both backends check it before writing, so an object that fits one fits the other.
pub const MAX_WRITE_BYTES: usize = 3 * 512 * 1024 - 4096;

/// Refuses a write of `key` = `value` over [`MAX_WRITE_BYTES`].
pub fn check_request_size(key: &[u8], value: &[u8]) -> Result<()> {
    let size = key.len() + value.len();
    if size > MAX_WRITE_BYTES {
        return Err(StoreError::TooLarge {
            size,
            limit: MAX_WRITE_BYTES,
        });
    }
    Ok(())
}

/// A key-value store with etcd v3 semantics.
///
/// One global revision counts every committed write; each key carries its create and
/// modification revisions and a version (number of writes since creation). Writes are
/// guarded by compare-and-swap on the modification revision. History is kept until
/// [`Store::compact`], so reads and watches can start at a past revision.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads the keys of `req.span` at `req.revision` (0 = latest), sorted by key.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Writes `key` only if it does not exist; returns the new revision.
    ///
    /// Fails with [`StoreError::AlreadyExists`] carrying the current value otherwise.
    async fn create(&self, key: &[u8], value: Bytes, ttl: Option<Duration>) -> Result<Revision>;

    /// Replaces the value of an existing key; with `expected`, only if the key's
    /// mod_revision equals it. Returns the new revision and the previous value.
    ///
    /// Fails with [`StoreError::NotFound`] or [`StoreError::Conflict`] (carrying the current
    /// value, so the caller can retry without another read).
    async fn update(
        &self,
        key: &[u8],
        value: Bytes,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<(Revision, KeyValue)>;

    /// Deletes an existing key; with `expected`, only if its mod_revision equals it.
    /// Returns the revision of the deletion and the deleted value.
    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)>;

    /// Streams every change in `span` after revision `after` (0 = from now), in revision
    /// order, with previous values, plus progress notifications while nothing matches.
    ///
    /// A watcher is never dropped for being slow; only a start point behind the
    /// compaction point fails, with [`StoreError::Compacted`].
    async fn watch(&self, span: KeySpan, after: Revision) -> Result<WatchStream>;

    /// Forgets history before `revision`; reads and watches older than it fail with
    /// [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The latest committed revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Time left before a key written with a TTL expires (`None`: no TTL or already gone).
    async fn remaining_ttl(&self, kv: &KeyValue) -> Result<Option<Duration>>;

    /// Reads one key at `revision` (0 = latest); returns it and the revision of the read.
    async fn get(&self, key: &[u8], revision: Revision) -> Result<(Option<KeyValue>, Revision)> {
        let resp = self.range(RangeRequest::key(key).at(revision)).await?;
        Ok((resp.kvs.into_iter().next(), resp.revision))
    }
}
