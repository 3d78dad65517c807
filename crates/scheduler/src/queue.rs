//! The scheduling queue, as upstream's: an active queue ordered by priority then age, a
//! back-off for pods whose attempt failed (1 s doubling to 10 s), and a set of
//! unschedulable pods that cluster events (a node added or changed, a pod gone) move back.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even without events.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Active(u64),
    Backoff(Instant),
    Unschedulable(Instant),
    /// Popped and being scheduled.
    InFlight,
}

struct Item {
    pod: Arc<Pod>,
    attempts: u32,
    state: State,
    /// Set when an event arrived while the pod was in flight: retry at once on failure.
    moved: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    priority: i32,
    created: i64,
    seq: u64,
    key: String,
}

impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then(o.created.cmp(&self.created))
            .then(o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Default)]
struct Inner {
    items: HashMap<String, Item>,
    active: BinaryHeap<Entry>,
    seq: u64,
}

/// The queue; `pop` waits for work.
#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn created(pod: &Pod) -> i64 {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0)
}

impl Inner {
    fn activate(&mut self, key: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(it) = self.items.get_mut(key) {
            it.state = State::Active(seq);
            self.active.push(Entry {
                priority: priority(&it.pod),
                created: created(&it.pod),
                seq,
                key: key.to_string(),
            });
        }
    }

    fn backoff_for(attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(10);
        (INITIAL_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
    }
}

impl Queue {
    /// Adds a pending pod, or updates the one queued (an update may make an unschedulable
    /// pod fit, so it is retried).
    pub fn add(&self, pod: Arc<Pod>, key: &str) {
        let mut q = self.inner.lock().expect("queue lock");
        let retry = match q.items.get_mut(key) {
            Some(it) => {
                // Only a change to what scheduling reads retries an unschedulable pod (not
                // our own status condition, say).
                let relevant = it.pod.spec != pod.spec
                    || it.pod.metadata.labels != pod.metadata.labels
                    || it.pod.metadata.annotations != pod.metadata.annotations;
                it.pod = pod;
                match it.state {
                    State::Unschedulable(_) => relevant,
                    State::InFlight => {
                        it.moved |= relevant;
                        false
                    }
                    _ => false,
                }
            }
            None => {
                q.items.insert(
                    key.to_string(),
                    Item {
                        pod,
                        attempts: 0,
                        state: State::InFlight,
                        moved: false,
                    },
                );
                true
            }
        };
        if retry {
            q.activate(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Forgets a pod (scheduled, bound elsewhere, or deleted).
    pub fn remove(&self, key: &str) {
        self.inner.lock().expect("queue lock").items.remove(key);
    }

    /// The next pod to schedule: the highest priority, then the oldest.
    pub async fn pop(&self) -> Arc<Pod> {
        loop {
            let notified = self.notify.notified();
            let next_backoff = {
                let mut q = self.inner.lock().expect("queue lock");
                let now = Instant::now();
                let due: Vec<String> = q
                    .items
                    .iter()
                    .filter(|(_, it)| match it.state {
                        State::Backoff(t) => t <= now,
                        State::Unschedulable(t) => now.duration_since(t) >= MAX_UNSCHEDULABLE,
                        _ => false,
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in due {
                    q.activate(&k);
                }
                while let Some(e) = q.active.pop() {
                    let Some(it) = q.items.get_mut(&e.key) else {
                        continue;
                    };
                    if it.state == State::Active(e.seq) {
                        it.state = State::InFlight;
                        it.moved = false;
                        it.attempts += 1;
                        return it.pod.clone();
                    }
                }
                q.items
                    .values()
                    .filter_map(|it| match it.state {
                        State::Backoff(t) => Some(t),
                        _ => None,
                    })
                    .min()
            };
            match next_backoff {
                Some(t) => {
                    let _ = tokio::time::timeout_at(t.into(), notified).await;
                }
                None => {
                    let _ = tokio::time::timeout(MAX_UNSCHEDULABLE, notified).await;
                }
            }
        }
    }

    /// The attempt found no node: wait for a cluster event (or back off, if one came
    /// while it was in flight).
    pub fn unschedulable(&self, key: &str) {
        let mut q = self.inner.lock().expect("queue lock");
        if let Some(it) = q.items.get_mut(key) {
            it.state = if it.moved {
                State::Backoff(Instant::now() + Inner::backoff_for(it.attempts))
            } else {
                State::Unschedulable(Instant::now())
            };
        }
        drop(q);
        self.notify.notify_one();
    }

    /// The attempt failed for another reason (a binding error): retry after the back-off.
    pub fn backoff(&self, pod: Arc<Pod>, key: &str) {
        let mut q = self.inner.lock().expect("queue lock");
        let attempts = q.items.get(key).map(|it| it.attempts).unwrap_or(1);
        q.items.insert(
            key.to_string(),
            Item {
                pod,
                attempts,
                state: State::Backoff(Instant::now() + Inner::backoff_for(attempts)),
                moved: false,
            },
        );
        drop(q);
        self.notify.notify_one();
    }

    /// A cluster event that may make unschedulable pods fit: they go to the back-off, or
    /// straight back to the active queue when their back-off has passed.
    pub fn move_all(&self) {
        let mut q = self.inner.lock().expect("queue lock");
        let mut wake = Vec::new();
        for (k, it) in q.items.iter_mut() {
            match it.state {
                State::Unschedulable(since) => {
                    let until = since + Inner::backoff_for(it.attempts);
                    if until <= Instant::now() {
                        wake.push(k.clone());
                    } else {
                        it.state = State::Backoff(until);
                    }
                }
                State::InFlight => it.moved = true,
                _ => {}
            }
        }
        for k in wake {
            q.activate(&k);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Pods waiting (for tests and metrics): (active, backoff, unschedulable).
    pub fn counts(&self) -> (usize, usize, usize) {
        let q = self.inner.lock().expect("queue lock");
        let mut c = (0, 0, 0);
        for it in q.items.values() {
            match it.state {
                State::Active(_) => c.0 += 1,
                State::Backoff(_) => c.1 += 1,
                State::Unschedulable(_) => c.2 += 1,
                State::InFlight => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, prio: i32, created: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "creationTimestamp": created},
                "spec": {"containers": [], "priority": prio},
            }))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn priority_then_age_then_backoff() {
        let q = Queue::default();
        q.add(pod("old-low", 0, "2026-01-01T00:00:00Z"), "d/old-low");
        q.add(pod("new-high", 10, "2026-01-02T00:00:00Z"), "d/new-high");
        q.add(pod("new-low", 0, "2026-01-02T00:00:00Z"), "d/new-low");
        let names: Vec<String> = [q.pop().await, q.pop().await, q.pop().await]
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["new-high", "old-low", "new-low"]);
        // Unschedulable pods wait for an event; a move puts them in back-off first.
        q.unschedulable("d/old-low");
        assert_eq!(q.counts(), (0, 0, 1));
        q.move_all();
        assert_eq!(q.counts(), (0, 1, 0));
        let t = Instant::now();
        let p = q.pop().await;
        assert_eq!(p.metadata.name.as_deref(), Some("old-low"));
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        q.remove("d/old-low");
        assert_eq!(q.counts(), (0, 0, 0));
        // A status-only update leaves an unschedulable pod waiting; a spec change retries it.
        q.add(pod("p", 0, "2026-01-01T00:00:00Z"), "d/p");
        let p = q.pop().await;
        q.unschedulable("d/p");
        let mut with_status = (*p).clone();
        with_status.status = Some(Default::default());
        q.add(Arc::new(with_status.clone()), "d/p");
        assert_eq!(q.counts(), (0, 0, 1));
        with_status.spec.as_mut().unwrap().priority = Some(5);
        q.add(Arc::new(with_status), "d/p");
        assert_eq!(q.counts(), (1, 0, 0));
    }
}
