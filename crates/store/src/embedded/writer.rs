//! The single writer thread: group commit, lease expiry, automatic compaction and
//! checkpoints. Requests that arrive while a batch is being synced form the next batch,
//! so concurrent writers share one fsync.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::files::{self, AppendError, DirLock, Segment};
use super::mvcc::{Op, Outcome};
use super::{now_ms, Shared};
use crate::{Result, Revision, StoreError};

/// A write request and where to send its answer.
pub(crate) struct WriteReq {
    pub op: Op,
    pub reply: Option<oneshot::Sender<Result<Outcome>>>,
}

const MAX_BATCH: usize = 4096;
const TICK: Duration = Duration::from_millis(100);

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: Receiver<WriteReq>,
    pub segment: Segment,
    pub lock: DirLock,
    /// (time, revision) samples, for compacting to "the revision of `retention` ago".
    pub samples: VecDeque<(Instant, Revision)>,
    /// Compaction scans every key, so it runs at most every tenth of the retention.
    pub last_compaction: Instant,
}

impl Writer {
    pub fn run(mut self) {
        let mut last_tick = Instant::now();
        loop {
            let first = match self.rx.recv_timeout(TICK) {
                Ok(req) => Some(req),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<WriteReq> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
                self.enforce_history_budget();
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.housekeeping();
            }
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wake the watchers so they see the store is closed.
        self.shared.visible.send_modify(|_| {});
        drop(self.lock);
    }

    /// Plans and applies a batch, makes it durable in one frame, then publishes it.
    fn commit(&mut self, batch: Vec<WriteReq>) {
        let poisoned = self
            .shared
            .poisoned
            .lock()
            .map(|p| p.clone())
            .unwrap_or(None);
        if let Some(reason) = poisoned {
            for req in batch {
                reply(req.reply, Err(StoreError::Poisoned(reason.clone())));
            }
            return;
        }
        let mut payload = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        let base;
        {
            let mut st = self.shared.write_state();
            base = st.rev;
            for req in batch {
                let answer = st.plan(&req.op).map(|(rec, outcome)| {
                    rec.encode(&mut payload);
                    st.apply(&rec);
                    outcome
                });
                answers.push((req.reply, answer));
            }
        }
        if !payload.is_empty() {
            if let Err(err) = self.segment.append(&payload) {
                let err = match err {
                    AppendError::Write(e) => e,
                    AppendError::Sync(e) => {
                        let reason = e.to_string();
                        tracing::error!(%reason, "datastore sync failed; refusing further writes");
                        if let Ok(mut p) = self.shared.poisoned.lock() {
                            *p = Some(reason);
                        }
                        e
                    }
                };
                self.shared.write_state().rollback(base);
                let msg = err.to_string();
                for (tx, answer) in answers {
                    let answer = match answer {
                        Ok(_) => Err(StoreError::Io {
                            path: self.segment.path.clone(),
                            source: std::io::Error::other(msg.clone()),
                        }),
                        Err(e) => Err(e),
                    };
                    reply(tx, answer);
                }
                return;
            }
        }
        let rev = {
            let mut st = self.shared.write_state();
            st.visible = st.rev;
            st.rev
        };
        self.shared.visible.send_replace(rev);
        for (tx, answer) in answers {
            reply(tx, answer);
        }
        self.maybe_checkpoint();
    }

    /// Compacts early once retained history passes its budget, down to half of it.
    fn enforce_history_budget(&mut self) {
        let budget = self.shared.options.history_budget;
        if budget == 0 {
            return;
        }
        let target = {
            let st = self.shared.read_state();
            if st.history_bytes <= budget {
                return;
            }
            st.compaction_for(budget / 2)
        };
        if let Some(rev) = target {
            tracing::debug!(revision = rev, "history over its budget; compacting early");
            self.commit(vec![WriteReq {
                op: Op::Compact { rev },
                reply: None,
            }]);
        }
    }

    /// Expires TTL keys and compacts history older than the retention period.
    fn housekeeping(&mut self) {
        let (expired, rev, compacted) = {
            let st = self.shared.read_state();
            (st.expired(now_ms()), st.visible, st.compacted)
        };
        let mut ops: Vec<WriteReq> = expired
            .into_iter()
            .map(|(key, rev)| WriteReq {
                op: Op::Delete {
                    key,
                    expected: Some(rev),
                },
                reply: None,
            })
            .collect();
        let retention = self.shared.options.retention;
        if !retention.is_zero() {
            let now = Instant::now();
            if self.samples.back().is_none_or(|(_, r)| *r != rev) {
                self.samples.push_back((now, rev));
            }
            let mut target = None;
            while let Some(&(at, r)) = self.samples.front() {
                if now.duration_since(at) < retention {
                    break;
                }
                target = Some(r);
                self.samples.pop_front();
            }
            let due = now.duration_since(self.last_compaction) >= retention / 10;
            if let Some(r) = target.filter(|r| *r > compacted && due) {
                self.last_compaction = now;
                ops.push(WriteReq {
                    op: Op::Compact { rev: r },
                    reply: None,
                });
            }
        }
        if !ops.is_empty() {
            self.commit(ops);
        }
    }

    /// Once the log outgrows the last checkpoint, starts a new segment and writes a
    /// checkpoint of the state so far on another thread.
    fn maybe_checkpoint(&mut self) {
        let last_checkpoint = self.shared.snapshot_bytes.load(Ordering::SeqCst);
        let threshold = self.shared.options.checkpoint_bytes.max(last_checkpoint);
        if self.segment.len < threshold || self.shared.checkpointing.load(Ordering::SeqCst) {
            return;
        }
        let cp = self.shared.read_state().checkpoint();
        match Segment::create(&self.shared.dir, cp.rev + 1) {
            Ok(segment) => self.segment = segment,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a new log segment; checkpoint postponed");
                return;
            }
        }
        self.shared.checkpointing.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            match files::write_checkpoint(&shared.dir, &cp) {
                Ok(size) => shared.snapshot_bytes.store(size, Ordering::SeqCst),
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint failed; the log is kept and replayed instead")
                }
            }
            shared.checkpointing.store(false, Ordering::SeqCst);
        });
    }
}

fn reply(tx: Option<oneshot::Sender<Result<Outcome>>>, answer: Result<Outcome>) {
    if let Some(tx) = tx {
        let _ = tx.send(answer);
    }
}
