//! A rate-limited work queue with client-go's semantics: a key waits in the queue at most
//! once however often it is added; a key being processed is not handed out again until
//! it is done (an add meanwhile queues it again afterwards); failures are retried after
//! per-key exponential back-off (5 ms doubling to 1000 s) and never faster than an
//! overall 10 per second with bursts of 100 (upstream's DefaultControllerRateLimiter).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Per-key back-off: 5 ms, doubling, at most 1000 s.
const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1000);
/// The overall bucket: 10 retries per second, bursts of 100.
const BUCKET_INTERVAL: Duration = Duration::from_millis(100);
const BUCKET_BURST: u32 = 100;

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting to be processed (in `queue`, or re-added while processing).
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
    /// The bucket's theoretical arrival time (GCRA).
    bucket_tat: Instant,
    shut_down: bool,
}

/// A work queue of keys (usually `namespace/name`).
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                bucket_tat: Instant::now(),
                shut_down: false,
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.shut_down || !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(q) = me.upgrade() {
                q.add(key);
            }
        });
    }

    /// Queues `key` again after its back-off: the longer of its own (one more failure)
    /// and the overall bucket's.
    pub fn add_rate_limited(self: &Arc<Self>, key: K) {
        let delay = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            let exp = BASE_DELAY
                .checked_mul(1u32.checked_shl(*n).unwrap_or(u32::MAX))
                .unwrap_or(MAX_DELAY)
                .min(MAX_DELAY);
            *n = n.saturating_add(1);
            let now = Instant::now();
            let tat = s.bucket_tat.max(now);
            let tolerance = BUCKET_INTERVAL * (BUCKET_BURST - 1);
            let bucket = (tat - now).saturating_sub(tolerance);
            s.bucket_tat = tat + BUCKET_INTERVAL;
            exp.max(bucket)
        };
        self.add_after(key, delay);
    }

    /// Forgets `key`'s failures (after it was processed successfully).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// How often `key` was re-queued after failures since it was last forgotten.
    pub fn requeues(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process, waiting for one; None once the queue is shut down. Call
    /// `done` with it when finished.
    pub async fn get(&self) -> Option<K> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
                if s.shut_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no key is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the queue: adds are ignored, `get` returns None (after what is queued).
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_waits_once_and_is_never_processed_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // Added while processing: not handed out, queued again when done.
        q.add("a");
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
        q.done(&"b");
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.get().await, Some("a"));
        q.done(&"a");
        q.shut_down();
        assert_eq!(q.get().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_until_forgotten() {
        let q = WorkQueue::new();
        for n in 0..4 {
            assert_eq!(q.requeues(&"k"), n);
            let before = Instant::now();
            q.add_rate_limited("k");
            assert_eq!(q.get().await, Some("k"));
            q.done(&"k");
            // 5 ms, 10 ms, 20 ms, 40 ms (the bucket allows a burst of 100 at once).
            assert_eq!(before.elapsed(), BASE_DELAY * (1 << n));
        }
        q.forget(&"k");
        assert_eq!(q.requeues(&"k"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_limits_retries_of_many_keys() {
        let q = WorkQueue::new();
        let start = Instant::now();
        for k in 0..150u32 {
            q.add_rate_limited(k);
        }
        for _ in 0..150 {
            let k = q.get().await.unwrap();
            q.done(&k);
        }
        // 100 at once, then 10 per second: the last of 150 after 5 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_millis(5100),
            "{took:?}"
        );
    }
}
