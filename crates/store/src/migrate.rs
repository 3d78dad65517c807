//! Copying a whole datastore into another, in either direction between backends.
//!
//! Keys and values are copied as they are at one revision of the source, with the time
//! left on their TTLs. Revisions are the destination's own (etcd cannot be told which
//! revision to write at), so clients re-list afterwards, as after any etcd restore.

use futures::{StreamExt, TryStreamExt};

use crate::{KeyValue, RangeRequest, Result, Revision, Store, StoreError};

/// What a migration copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateReport {
    /// The source revision that was copied.
    pub source_revision: Revision,
    /// Keys copied.
    pub keys: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
    /// Keys whose TTL ran out during the copy and were left behind.
    pub expired: u64,
}

const PAGE: usize = 1000;
const PARALLEL: usize = 64;

/// Copies every key of `src` into `dst`, which must be empty. `progress(done, total)` is
/// called after every page.
pub async fn migrate(
    src: &dyn Store,
    dst: &dyn Store,
    mut progress: impl FnMut(u64, u64),
) -> Result<MigrateReport> {
    let existing = dst
        .range(RangeRequest::prefix("").count_only())
        .await?
        .count;
    if existing > 0 {
        return Err(StoreError::Invalid(format!(
            "the destination already holds {existing} keys; migrate only into an empty datastore"
        )));
    }
    let rev = src.current_revision().await?;
    let total = src
        .range(RangeRequest::prefix("").at(rev).count_only())
        .await?
        .count as u64;
    let mut report = MigrateReport {
        source_revision: rev,
        keys: 0,
        bytes: 0,
        expired: 0,
    };
    let mut req = RangeRequest::prefix("").at(rev).limit(PAGE);
    loop {
        let page = src.range(req.clone()).await?;
        let copied: Vec<bool> = futures::stream::iter(page.kvs.iter().cloned())
            .map(|kv| copy_one(src, dst, kv))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        for (kv, done) in page.kvs.iter().zip(&copied) {
            if *done {
                report.keys += 1;
                report.bytes += (kv.key.len() + kv.value.len()) as u64;
            } else {
                report.expired += 1;
            }
        }
        progress(report.keys + report.expired, total);
        match page.kvs.last() {
            Some(last) if page.more => {
                let mut next = last.key.to_vec();
                next.push(0);
                req = req.start_at(next);
            }
            _ => break,
        }
    }
    Ok(report)
}

async fn copy_one(src: &dyn Store, dst: &dyn Store, kv: KeyValue) -> Result<bool> {
    let ttl = if kv.lease != 0 {
        match src.remaining_ttl(&kv).await? {
            Some(ttl) => Some(ttl),
            None => return Ok(false),
        }
    } else {
        None
    };
    dst.create(&kv.key, kv.value, ttl).await?;
    Ok(true)
}
