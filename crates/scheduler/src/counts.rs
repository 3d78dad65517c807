//! Counts the cache keeps current as pods and nodes come and go, so that a scheduling cycle
//! reads them instead of walking every node's pods:
//! - `Domains`: the values of the well-known topology keys, numbered, so a cycle can count
//!   per domain in a vector instead of a map keyed by strings;
//! - `Tracked`: label selectors (with their namespace) whose matching pods are counted on
//!   every node. Topology spreading asks for its selector; from the next cycle on, a node's
//!   count is one read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cache::{PodInfo, TOPOLOGY_KEYS};
use crate::selector;

/// Numbers for the values of each of TOPOLOGY_KEYS (never reused: values are few).
#[derive(Debug, Default)]
pub struct Domains {
    ids: [HashMap<String, u32>; TOPOLOGY_KEYS.len()],
}

impl Domains {
    /// The number of `value` for the key at `key` (TOPOLOGY_KEYS' position).
    pub fn id(&mut self, key: usize, value: &str) -> u32 {
        let ids = &mut self.ids[key];
        match ids.get(value) {
            Some(id) => *id,
            None => {
                let id = ids.len() as u32;
                ids.insert(value.to_string(), id);
                id
            }
        }
    }

    /// How many values the key at `key` has had: every id is below it.
    pub fn len(&self, key: usize) -> usize {
        self.ids[key].len()
    }
}

/// At most this many selectors are tracked; the least recently used one makes room.
const MAX_TRACKED: usize = 64;
/// At most this many selectors wait for a slot per cycle.
const MAX_WANTED: usize = 8;

#[derive(Debug)]
struct Slot {
    namespace: String,
    selector: LabelSelector,
    /// The cycle that last read it.
    used: AtomicU64,
}

/// Selectors whose matching pods every node counts (`NodeInfo::tracked`, by slot).
#[derive(Debug, Default)]
pub struct Tracked {
    slots: Vec<Option<Slot>>,
    /// Asked for during a cycle, given slots before the next (`Cache::track_wanted`).
    wanted: Mutex<Vec<(String, LabelSelector)>>,
    cycle: u64,
}

impl Tracked {
    /// The slot counting the pods that `selector` picks in `namespace`. None yet: it is
    /// asked for, and counted from the next cycle on.
    pub fn find(&self, namespace: &str, selector: &LabelSelector) -> Option<usize> {
        let found = self.slots.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.namespace == namespace && s.selector == *selector)
        });
        if let Some(i) = found {
            if let Some(s) = &self.slots[i] {
                s.used.store(self.cycle, Ordering::Relaxed);
            }
            return found;
        }
        let mut wanted = self.wanted.lock().expect("tracked lock");
        if wanted.len() < MAX_WANTED && !wanted.iter().any(|(n, s)| n == namespace && s == selector)
        {
            wanted.push((namespace.to_string(), selector.clone()));
        }
        None
    }

    /// How many slots there are (each node's counts have this length).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Whether slot `i` counts the pod.
    fn picks(&self, i: usize, p: &PodInfo) -> bool {
        let Some(s) = &self.slots[i] else {
            return false;
        };
        let meta = &p.pod.metadata;
        meta.deletion_timestamp.is_none()
            && meta.namespace.as_deref().unwrap_or("") == s.namespace
            && selector::matches(&s.selector, meta.labels.as_ref().unwrap_or(&EMPTY))
    }

    /// Adds `delta` to the node counts of every slot that counts the pod.
    pub fn count(&self, p: &PodInfo, counts: &mut [i32], delta: i32) {
        for (i, c) in counts.iter_mut().enumerate() {
            if self.picks(i, p) {
                *c += delta;
            }
        }
    }

    /// Starts a cycle: the selectors asked for get slots (a free one, a new one, or the
    /// least recently used one's). Returns the slots to recount on every node.
    pub fn start_cycle(&mut self) -> Vec<usize> {
        self.cycle += 1;
        let wanted = std::mem::take(&mut *self.wanted.lock().expect("tracked lock"));
        let mut fresh = Vec::new();
        for (namespace, selector) in wanted {
            let free = self.slots.iter().position(|s| s.is_none());
            let i = match free {
                Some(i) => i,
                None if self.slots.len() < MAX_TRACKED => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
                None => self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.as_ref().map_or(0, |s| s.used.load(Ordering::Relaxed)))
                    .map_or(0, |(i, _)| i),
            };
            let used = AtomicU64::new(self.cycle);
            self.slots[i] = Some(Slot {
                namespace,
                selector,
                used,
            });
            fresh.push(i);
        }
        fresh
    }

    /// Recounts slot `i` on a node from its pods.
    pub fn recount<'a>(
        &self,
        i: usize,
        pods: impl Iterator<Item = &'a std::sync::Arc<PodInfo>>,
    ) -> i32 {
        pods.filter(|p| self.picks(i, p)).count() as i32
    }
}

static EMPTY: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::cache::{Cache, PodInfo};
    use crate::plugins::test_util::{hosts, pod};

    #[test]
    fn tracked_selectors_follow_pods() {
        let mut c = hosts(&["n1", "n2"]);
        let sel = serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
        let web = |name: &str, ns: &str| {
            let p = json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c"}]}});
            Arc::new(PodInfo::new(Arc::new(serde_json::from_value(p).unwrap())))
        };
        c.add_pod(web("w1", "default"), "n1", false);
        c.add_pod(web("other-ns", "prod"), "n1", false);
        // Asked for in one cycle, counted from the next.
        assert_eq!(c.snapshot().tracked.find("default", &sel), None);
        c.track_wanted();
        let slot = c.snapshot().tracked.find("default", &sel).unwrap();
        let count = |c: &Cache, n: &str| c.node(n).unwrap().tracked.as_ref().unwrap()[slot];
        assert_eq!((count(&c, "n1"), count(&c, "n2")), (1, 0));
        // Pods that come, go, move or start terminating change the counts.
        c.add_pod(web("w2", "default"), "n2", true);
        c.add_pod(web("w3", "default"), "n2", false);
        assert_eq!(count(&c, "n2"), 2);
        c.remove_pod("default/w2");
        c.add_pod(web("w1", "default"), "n2", false);
        assert_eq!((count(&c, "n1"), count(&c, "n2")), (0, 2));
        let leaving = pod(json!({"metadata": {"name": "w3", "labels": {"app": "web"},
            "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        c.add_pod(Arc::new(leaving), "n2", false);
        assert_eq!(count(&c, "n2"), 1);
        // A node that appears later starts with its pods counted.
        c.add_pod(web("w4", "default"), "n3", false);
        c.set_node(serde_json::from_value(json!({"metadata": {"name": "n3"}})).unwrap());
        assert_eq!(count(&c, "n3"), 1);
        // A copy changed outside the cache drops its counts rather than keep wrong ones.
        let mut trial = c.node("n3").unwrap().clone();
        trial.remove("default/w4");
        assert!(trial.tracked.is_none());
    }
}
