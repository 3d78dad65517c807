//! The data model shared by every backend: keys, revisions, ranges and watch events.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

use crate::Result;

/// A store revision: the global count of committed writes (Kubernetes' resourceVersion).
pub type Revision = i64;

/// One key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (`/registry/pods/default/web`).
    pub key: Bytes,
    /// The value (an object's JSON; empty for a deletion).
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after create).
    pub version: i64,
    /// Lease the key is attached to (0: none). See [`crate::Store::remaining_ttl`].
    pub lease: i64,
}

/// A set of keys in etcd's convention: `[start, end)`; an empty `end` means the single key
/// `start`, and `end == "\0"` means every key from `start` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpan {
    /// The first key.
    pub start: Bytes,
    /// The key after the last one (see above).
    pub end: Bytes,
}

impl KeySpan {
    /// Just this key.
    pub fn key(key: impl AsRef<[u8]>) -> Self {
        KeySpan {
            start: Bytes::copy_from_slice(key.as_ref()),
            end: Bytes::new(),
        }
    }

    /// Every key that starts with `prefix` (every key for an empty prefix).
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Self {
        let start = Bytes::copy_from_slice(prefix.as_ref());
        KeySpan {
            end: prefix_end(&start),
            start,
        }
    }

    /// Whether `key` is in the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            return key == &self.start[..];
        }
        key >= &self.start[..] && (self.unbounded() || key < &self.end[..])
    }

    /// Whether the span runs to the end of the key space.
    pub fn unbounded(&self) -> bool {
        &self.end[..] == b"\0"
    }
}

/// The first key after every key that starts with `prefix` (`"\0"`: none, i.e. unbounded).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// A read of a key span.
#[derive(Clone, Debug)]
pub struct RangeRequest {
    /// The keys to read.
    pub span: KeySpan,
    /// At most this many keys (0: no limit).
    pub limit: usize,
    /// Read at this revision (0: latest).
    pub revision: Revision,
    /// Only count, return no keys.
    pub count_only: bool,
}

impl RangeRequest {
    /// Read one key.
    pub fn key(key: impl AsRef<[u8]>) -> Self {
        Self::span(KeySpan::key(key))
    }

    /// Read every key under `prefix`.
    pub fn prefix(prefix: impl AsRef<[u8]>) -> Self {
        Self::span(KeySpan::prefix(prefix))
    }

    /// Read a span.
    pub fn span(span: KeySpan) -> Self {
        RangeRequest {
            span,
            limit: 0,
            revision: 0,
            count_only: false,
        }
    }

    /// Start at `key` (inclusive) instead of the span's start: the continue point of paging.
    pub fn start_at(mut self, key: impl AsRef<[u8]>) -> Self {
        self.span.start = Bytes::copy_from_slice(key.as_ref());
        self
    }

    /// Return at most `limit` keys.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Read at a past revision (0: latest).
    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    /// Count only.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, Default)]
pub struct RangeResponse {
    /// The keys read, in key order.
    pub kvs: Vec<KeyValue>,
    /// More keys follow in the span (the limit cut the answer short).
    pub more: bool,
    /// Number of keys in the whole span (from the request's start key) at the revision.
    pub count: i64,
    /// The revision the read was served at.
    pub revision: Revision,
}

impl RangeResponse {
    /// Keys left after the returned ones (Kubernetes' `remainingItemCount`).
    pub fn remaining(&self) -> i64 {
        self.count - self.kvs.len() as i64
    }
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created or updated.
    Put,
    /// Deleted (or expired).
    Delete,
}

/// One change. For a delete, `kv` holds the key with `mod_revision` = the deletion's
/// revision and an empty value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventType,
    /// The key after the change.
    pub kv: KeyValue,
    /// The value before the change (`None` for a creation).
    pub prev_kv: Option<KeyValue>,
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchResponse {
    /// Changes, in revision order.
    Events(Vec<Event>),
    /// Nothing in the span changed up to this revision.
    Progress(Revision),
}

/// The stream a watch returns; it ends after an error.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_and_contains() {
        assert_eq!(prefix_end(b"/a"), Bytes::from_static(b"/b"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
        assert_eq!(prefix_end(b""), Bytes::from_static(b"\0"));
        let s = KeySpan::prefix("/registry/pods/");
        assert!(s.contains(b"/registry/pods/x"));
        assert!(!s.contains(b"/registry/pods"));
        assert!(!s.contains(b"/registry/podsx"));
        let all = KeySpan::prefix("");
        assert!(all.contains(b"") && all.contains(b"\xff\xff"));
        let one = KeySpan::key("k");
        assert!(one.contains(b"k") && !one.contains(b"k2"));
    }
}
