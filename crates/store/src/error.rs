//! Errors of the datastore, shaped for the apiserver to map onto `metav1.Status`.

use std::path::PathBuf;

use crate::{KeyValue, Revision};

/// A `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key (the apiserver answers 409 AlreadyExists).
    #[error("key {} already exists", lossy(&.current.key))]
    AlreadyExists {
        /// What the key holds.
        current: KeyValue,
    },
    /// `update` / `delete` found no such key (404).
    #[error("key {key} not found")]
    NotFound {
        /// The key, as text.
        key: String,
    },
    /// The key's mod_revision is not the expected one (409 Conflict).
    #[error("key {} was modified: expected revision {expected}, found {}", lossy(&.current.key), .current.mod_revision)]
    Conflict {
        /// The revision the caller read.
        expected: Revision,
        /// What the key holds now.
        current: KeyValue,
    },
    /// The requested revision is older than the compaction point (410 Gone).
    #[error("required revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still kept.
        compacted: Revision,
    },
    /// The requested revision has not happened yet.
    #[error("required revision {requested} is a future revision (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's revision.
        current: Revision,
    },
    /// Another process has the data directory open.
    #[error("datastore {} is in use by another process{}; stop it first", .path.display(), .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The process holding it, if known.
        pid: Option<u32>,
    },
    /// A file of the data directory is damaged or is not an rkube datastore file.
    #[error("datastore file {} is damaged: {detail}; restore a snapshot (`rkube datastore snapshot restore`) or move the directory aside", .path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading or writing the data directory failed; the store is unchanged.
    #[error("datastore I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A previous durability failure stopped all writes (reads still work).
    #[error("datastore is read-only after a failed sync: {0}; restart the server once the disk is healthy")]
    Poisoned(String),
    /// The etcd cluster failed or could not be reached.
    #[error("etcd: {0}")]
    Etcd(String),
    /// A write larger than [`crate::MAX_WRITE_BYTES`], refused as etcd refuses it
    /// (the apiserver answers 413).
    #[error("etcdserver: request is too large")]
    TooLarge {
        /// The write's size in bytes.
        size: usize,
        /// The largest write accepted.
        limit: usize,
    },
    /// The live data would pass the space quota: etcd's NOSPACE answer. Deletes and
    /// shrinking updates still work, and writes resume once usage is under the quota.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace {
        /// The quota in bytes.
        quota: u64,
        /// The live data in bytes.
        used: u64,
    },
    /// The request itself is invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store has been shut down.
    #[error("datastore is closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// Keys are UTF-8 in practice (`/registry/...`); show them readably either way.
pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
