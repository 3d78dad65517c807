//! The scheduling queue, as upstream's: an active queue ordered by priority then age, a
//! back-off for pods whose attempt failed (1 s doubling to 10 s), and a set of
//! unschedulable pods that cluster events (a node added or changed, a pod gone) move back.
//! As upstream 1.33 (`SchedulerPopFromBackoffQ`, beta and on), a pod backing off after a
//! rejection is tried before its time when nothing else is active; one backing off after
//! an error (a failed binding) waits it out.

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
    /// Backing off after an error: never popped early.
    ErrorBackoff(Instant),
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
    /// Pods whose preemption is under way: not retried until it is done.
    held: std::collections::HashSet<String>,
}

/// The queue; `pop` waits for work.
#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
}

/// The whole second (since the first use) that `t` falls in: back-off ends in one window
/// are ordered by priority.
fn window(t: Instant) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    t.saturating_duration_since(*BASE.get_or_init(Instant::now))
        .as_secs()
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
        let mut q = self.inner.lock().expect("queue lock");
        q.items.remove(key);
        q.held.remove(key);
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
                        State::Backoff(t) | State::ErrorBackoff(t) => t <= now,
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
                // Nothing active: the first of the rejected pods backing off, by whole
                // seconds of their back-off's end, then priority.
                let early = q
                    .items
                    .iter()
                    .filter_map(|(k, it)| match it.state {
                        State::Backoff(t) => Some((k, t, priority(&it.pod))),
                        _ => None,
                    })
                    .min_by_key(|(_, t, prio)| (window(*t), std::cmp::Reverse(*prio), *t))
                    .map(|(k, _, _)| k.clone());
                if let Some(k) = early {
                    if let Some(it) = q.items.get_mut(&k) {
                        it.state = State::InFlight;
                        it.moved = false;
                        it.attempts += 1;
                        return it.pod.clone();
                    }
                }
                q.items
                    .values()
                    .filter_map(|it| match it.state {
                        State::ErrorBackoff(t) => Some(t),
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
        let held = q.held.contains(key);
        if let Some(it) = q.items.get_mut(key) {
            it.state = if it.moved && !held {
                State::Backoff(Instant::now() + Inner::backoff_for(it.attempts))
            } else {
                State::Unschedulable(Instant::now())
            };
        }
        drop(q);
        self.notify.notify_one();
    }

    /// The attempt failed for another reason (a binding error): retry after the back-off,
    /// never earlier.
    pub fn backoff(&self, pod: Arc<Pod>, key: &str) {
        let mut q = self.inner.lock().expect("queue lock");
        let attempts = q.items.get(key).map(|it| it.attempts).unwrap_or(1);
        q.items.insert(
            key.to_string(),
            Item {
                pod,
                attempts,
                state: State::ErrorBackoff(Instant::now() + Inner::backoff_for(attempts)),
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
        let Inner { items, held, .. } = &mut *q;
        for (k, it) in items.iter_mut() {
            match it.state {
                State::Unschedulable(_) if held.contains(k) => it.moved = true,
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

    /// Keeps the pod from being retried while its preemption's API calls run (upstream's
    /// asynchronous preemption): its victims are still on the node until they are.
    pub fn hold(&self, key: &str) {
        let mut q = self.inner.lock().expect("queue lock");
        q.held.insert(key.to_string());
    }

    /// The preemption is done (its victims gone): the pod goes to the back-off, tried
    /// early when nothing else is active (upstream activates it).
    pub fn release(&self, key: &str) {
        let mut q = self.inner.lock().expect("queue lock");
        q.held.remove(key);
        if let Some(it) = q.items.get_mut(key) {
            if matches!(it.state, State::Unschedulable(_)) {
                it.state = State::Backoff(Instant::now() + Inner::backoff_for(it.attempts));
            }
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
                State::Backoff(_) | State::ErrorBackoff(_) => c.1 += 1,
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

    fn p_of(q: &Queue, key: &str) -> Arc<Pod> {
        q.inner.lock().unwrap().items[key].pod.clone()
    }

    #[tokio::test]
    async fn a_pod_preempting_waits_for_its_preemption() {
        let q = Queue::default();
        q.add(pod("high", 10, "2026-01-01T00:00:00Z"), "d/high");
        q.pop().await;
        q.hold("d/high");
        q.unschedulable("d/high");
        // Victims' deletions come in while the preemption runs: the pod stays put.
        q.move_all();
        assert_eq!(q.counts(), (0, 0, 1));
        // Once it is done, it is retried.
        q.release("d/high");
        assert_eq!(q.counts(), (0, 1, 0));
        assert_eq!(q.pop().await.metadata.name.as_deref(), Some("high"));
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
        // Unschedulable pods wait for an event; a move puts them in back-off first. A new
        // pod goes first; with nothing else active the backing-off pod is tried early.
        q.unschedulable("d/old-low");
        assert_eq!(q.counts(), (0, 0, 1));
        q.move_all();
        assert_eq!(q.counts(), (0, 1, 0));
        q.add(pod("newest", 0, "2026-01-03T00:00:00Z"), "d/newest");
        let t = Instant::now();
        assert_eq!(q.pop().await.metadata.name.as_deref(), Some("newest"));
        assert_eq!(q.pop().await.metadata.name.as_deref(), Some("old-low"));
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        // A failed binding's back-off is waited out.
        q.backoff(p_of(&q, "d/old-low"), "d/old-low");
        let t = Instant::now();
        assert_eq!(q.pop().await.metadata.name.as_deref(), Some("old-low"));
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        q.remove("d/old-low");
        q.remove("d/newest");
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
