//! The embedded backend: one directory, one process, etcd v3 semantics.
//!
//! The whole key space and its retained history live in memory ([`mvcc`]), like the
//! apiserver's watch cache; durability comes from a write-ahead log fsynced once per batch
//! of concurrent writes (group commit) and periodic checkpoints that let old log segments
//! go ([`files`]). See `docs/datastore.md` for why this beat a general-purpose engine.

mod files;
mod mvcc;
mod record;
mod watch;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use self::files::Segment;
use self::mvcc::{Mvcc, Op, Outcome};
use self::writer::{WriteReq, Writer};
use crate::{
    KeySpan, KeyValue, RangeRequest, RangeResponse, Result, Revision, Store, StoreError,
    WatchStream,
};

/// Tuning of an embedded store; the defaults suit a server.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// History older than this is compacted automatically (zero: never; the apiserver's
    /// own compaction interval is 5 minutes).
    pub retention: Duration,
    /// The log is checkpointed once it passes this size (or the last checkpoint's size,
    /// whichever is larger), which keeps the directory within a few times the live data.
    pub checkpoint_bytes: u64,
    /// A quiet watcher is told the current revision this often.
    pub progress_interval: Duration,
    /// Memory that superseded versions may hold: past it, history is compacted early
    /// (down to half of it), so a write burst cannot grow memory for the whole retention
    /// period; watchers and reads behind the new compaction point get Compacted (410).
    pub history_budget: u64,
    /// The space quota on the current keys and values (etcd's `--quota-backend-bytes`,
    /// 2 GiB by default); writes past it fail with NoSpace. Zero: no quota.
    pub quota_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            retention: Duration::from_secs(300),
            checkpoint_bytes: 64 << 20,
            progress_interval: Duration::from_secs(5),
            history_budget: 128 << 20,
            quota_bytes: 2 << 30,
        }
    }
}

/// What the store's handle, its writer thread and its watchers share.
pub(crate) struct Shared {
    dir: PathBuf,
    options: EmbeddedOptions,
    state: RwLock<Mvcc>,
    /// The last durable revision, for watchers to wait on.
    visible: tokio::sync::watch::Sender<Revision>,
    /// Set after a failed fsync: writes are refused from then on.
    poisoned: Mutex<Option<String>>,
    checkpointing: AtomicBool,
    snapshot_bytes: AtomicU64,
    closed: AtomicBool,
}

impl Shared {
    fn read_state(&self) -> RwLockReadGuard<'_, Mvcc> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, Mvcc> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The embedded datastore. Dropping it (or [`EmbeddedStore::close`]) stops the writer and
/// releases the directory.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<WriteReq>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, replaying its log.
    ///
    /// Fails with [`StoreError::Locked`] if another process has it open and with
    /// [`StoreError::Corrupt`] if a file is damaged or foreign.
    pub fn open(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<EmbeddedStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let lock = files::lock_dir(&dir)?;
        for tmp in files::list(&dir)?.tmps {
            std::fs::remove_file(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        }
        let loaded = files::load(&dir)?;
        let mut state = loaded.state;
        state.quota = options.quota_bytes;
        let segment = match loaded.tail {
            Some((path, valid)) if valid >= files::WAL_HEADER_LEN => Segment::reopen(&path, valid)?,
            Some((path, _)) => {
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                Segment::create(&dir, state.rev + 1)?
            }
            None => Segment::create(&dir, state.rev + 1)?,
        };
        tracing::info!(dir = %dir.display(), revision = state.rev, keys = state.keys.len(), "datastore opened");
        let (visible, _) = tokio::sync::watch::channel(state.rev);
        let shared = Arc::new(Shared {
            dir,
            options,
            state: RwLock::new(state),
            visible,
            poisoned: Mutex::new(None),
            checkpointing: AtomicBool::new(false),
            snapshot_bytes: AtomicU64::new(loaded.snapshot_bytes),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            rx,
            segment,
            lock,
            samples: VecDeque::new(),
            last_compaction: std::time::Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("rkube-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::io("writer thread", e))?;
        Ok(EmbeddedStore {
            shared,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the writer (after the writes already queued) and releases the directory.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Writes a consistent snapshot of the store in `dir` to `out`, whether or not a
    /// server has the directory open. Returns the revision it holds.
    pub fn save_snapshot(dir: impl AsRef<Path>, out: impl AsRef<Path>) -> Result<Revision> {
        let (dir, out) = (dir.as_ref(), out.as_ref());
        let listing = files::list(dir)?;
        if listing.snaps.is_empty() && listing.wals.is_empty() {
            return Err(StoreError::Invalid(format!(
                "{} holds no datastore",
                dir.display()
            )));
        }
        let state = files::load(dir)?.state;
        let tmp = out.with_extension("partial");
        files::write_snapshot(&tmp, &state.checkpoint())?;
        std::fs::rename(&tmp, out).map_err(|e| StoreError::io(out, e))?;
        Ok(state.rev)
    }

    /// Replaces the store in `dir` with the snapshot `file`; the server must be stopped.
    /// The previous contents are moved to a sibling directory, whose path is returned.
    pub fn restore_snapshot(
        file: impl AsRef<Path>,
        dir: impl AsRef<Path>,
    ) -> Result<(Revision, Option<PathBuf>)> {
        let (file, dir) = (file.as_ref(), dir.as_ref());
        let state = files::read_snapshot_file(file)?;
        let mut moved = None;
        if dir.exists() {
            let _lock = files::lock_dir(dir)?;
            let listing = files::list(dir)?;
            if !listing.snaps.is_empty() || !listing.wals.is_empty() {
                let aside =
                    PathBuf::from(format!("{}.pre-restore-{}", dir.display(), now_ms() / 1000));
                std::fs::rename(dir, &aside).map_err(|e| StoreError::io(&aside, e))?;
                moved = Some(aside);
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let _lock = files::lock_dir(dir)?;
        let path = files::checkpoint_path(dir, state.rev);
        let tmp = path.with_extension("snap.tmp");
        files::write_snapshot(&tmp, &state.checkpoint())?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        files::sync_dir(dir)?;
        Ok((state.rev, moved))
    }

    async fn write(&self, op: Op) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        {
            let tx = self.tx.lock().map_err(|_| StoreError::Closed)?;
            let tx = tx.as_ref().ok_or(StoreError::Closed)?;
            tx.send(WriteReq {
                op,
                reply: Some(reply),
            })
            .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| now_ms() + (t.as_millis() as u64).max(1))
}

fn unexpected(o: Outcome) -> StoreError {
    StoreError::Invalid(format!("unexpected write outcome {o:?}"))
}

/// What an embedded store holds in memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Keys and values of the current versions (what the space quota counts).
    pub live: u64,
    /// Superseded versions still retained (what the history budget counts).
    pub history: u64,
}

impl EmbeddedStore {
    /// The store's memory use, for metrics and benchmarks.
    pub fn usage(&self) -> Usage {
        let st = self.shared.read_state();
        Usage {
            live: st.live_bytes,
            history: st.history_bytes,
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.shared.read_state().range(&req)
    }

    async fn create(&self, key: &[u8], value: Bytes, ttl: Option<Duration>) -> Result<Revision> {
        crate::check_request_size(key, &value)?;
        let key = Bytes::copy_from_slice(key);
        match self
            .write(Op::Create {
                key,
                value,
                expires: expiry(ttl),
            })
            .await?
        {
            Outcome::Created(rev) => Ok(rev),
            o => Err(unexpected(o)),
        }
    }

    async fn update(
        &self,
        key: &[u8],
        value: Bytes,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<(Revision, KeyValue)> {
        crate::check_request_size(key, &value)?;
        let key = Bytes::copy_from_slice(key);
        match self
            .write(Op::Update {
                key,
                value,
                expected,
                expires: expiry(ttl),
            })
            .await?
        {
            Outcome::Updated(rev, prev) => Ok((rev, prev)),
            o => Err(unexpected(o)),
        }
    }

    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let key = Bytes::copy_from_slice(key);
        match self.write(Op::Delete { key, expected }).await? {
            Outcome::Deleted(rev, prev) => Ok((rev, prev)),
            o => Err(unexpected(o)),
        }
    }

    async fn watch(&self, span: KeySpan, after: Revision) -> Result<WatchStream> {
        watch::start(self.shared.clone(), span, after)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.write(Op::Compact { rev: revision }).await.map(|_| ())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.read_state().visible)
    }

    async fn remaining_ttl(&self, kv: &KeyValue) -> Result<Option<Duration>> {
        let left = (kv.lease as u64).saturating_sub(now_ms());
        Ok((kv.lease > 0 && left > 0).then(|| Duration::from_millis(left)))
    }
}
