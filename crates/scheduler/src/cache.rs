//! The scheduler's cache: nodes with the pods on them, counting a pod from the moment it is
//! assumed (before its binding is confirmed), so the next pod sees its resources taken.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm};

use crate::counts::{Domains, Tracked};
use crate::resources::{allocatable, non_zero_requests, pod_requests, Resource};

/// A host port a pod uses: protocol, host IP ("" or 0.0.0.0 for all), port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The host address ("" or `0.0.0.0`: all).
    pub ip: String,
    /// The host port.
    pub port: i32,
}

impl HostPort {
    /// Whether two uses of a port clash (the same port and protocol on a shared address).
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == o.port
            && self.protocol == o.protocol
            && (any(&self.ip) || any(&o.ip) || self.ip == o.ip)
    }
}

/// A pod with what the plugins need computed once.
#[derive(Debug)]
pub struct PodInfo {
    /// The pod.
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    /// What its containers request, as upstream adds them up.
    pub requests: Resource,
    /// CPU and memory with the scoring defaults for what it does not request.
    pub non_zero: (i64, i64),
    /// The host ports it uses.
    pub ports: Vec<HostPort>,
    /// The pod's required anti-affinity terms (other pods must respect them).
    pub required_anti: Vec<PodAffinityTerm>,
    /// Their topology keys, resolved.
    pub required_anti_keys: Vec<LabelKey>,
    /// The pod's required affinity terms.
    pub required_affinity: Vec<PodAffinityTerm>,
    /// The pod's preferred affinity and anti-affinity terms, with their weights.
    pub preferred_affinity: Vec<WeightedPodAffinityTerm>,
    /// The preferred anti-affinity terms, with their weights.
    pub preferred_anti: Vec<WeightedPodAffinityTerm>,
}

impl PodInfo {
    /// Computes what the plugins need of `pod`.
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: p.host_ip.clone().unwrap_or_default(),
                port: p.host_port.unwrap_or(0),
            })
            .collect();
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required_anti: Vec<PodAffinityTerm> = anti
            .and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        PodInfo {
            required_anti_keys: required_anti
                .iter()
                .map(|t| LabelKey::new(&t.topology_key))
                .collect(),
            required_anti,
            required_affinity: pa
                .and_then(|p| {
                    p.required_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            preferred_affinity: pa
                .and_then(|p| {
                    p.preferred_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            preferred_anti: anti
                .and_then(|p| {
                    p.preferred_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            key: key(&pod),
            requests: pod_requests(&pod),
            non_zero: non_zero_requests(&pod),
            ports,
            pod,
        }
    }

    /// Whether the pod has terms that score other pods' nodes: required affinity or
    /// preferred terms (upstream counts all pods with affinity; required anti-affinity
    /// alone scores nothing, so those are left out here).
    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty())
    }
}

/// `namespace/name`.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Label keys whose values every NodeInfo keeps at hand: the topology keys that spreading
/// and affinity look up on every node in a cycle (a map search per node costs more).
pub const TOPOLOGY_KEYS: [&str; 3] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];

/// A node label key, resolved once per cycle.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelKey {
    /// One of TOPOLOGY_KEYS, by position.
    Known(usize),
    /// Any other key.
    Other(String),
}

impl LabelKey {
    /// The resolved form of `key`.
    pub fn new(key: &str) -> LabelKey {
        match TOPOLOGY_KEYS.iter().position(|k| *k == key) {
            Some(i) => LabelKey::Known(i),
            None => LabelKey::Other(key.to_string()),
        }
    }
}

fn topology_of(node: &Node) -> [Option<String>; 3] {
    let labels = node.metadata.labels.as_ref();
    TOPOLOGY_KEYS.map(|k| labels.and_then(|l| l.get(k)).cloned())
}

fn domain_ids(topology: &[Option<String>; 3], domains: &mut Domains) -> [Option<u32>; 3] {
    let mut ids = [None; 3];
    for (i, v) in topology.iter().enumerate() {
        ids[i] = v.as_deref().map(|v| domains.id(i, v));
    }
    ids
}

/// A node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The Node object.
    pub node: Arc<Node>,
    /// Its name.
    pub name: String,
    /// What the node offers pods.
    pub allocatable: Resource,
    /// What the pods on it request.
    pub requested: Resource,
    /// CPU and memory with the scoring defaults for pods that ask for nothing.
    pub non_zero: (i64, i64),
    /// Its pods by `namespace/name`.
    pub pods: HashMap<String, Arc<PodInfo>>,
    /// How many of those pods carry required anti-affinity terms.
    pub anti_affinity_pods: usize,
    /// How many of those pods have terms that score (`PodInfo::has_affinity`).
    pub affinity_pods: usize,
    /// The images the node reports (`status.images`): every name → size in bytes.
    pub images: HashMap<String, i64>,
    /// The node's values of TOPOLOGY_KEYS.
    topology: [Option<String>; 3],
    /// Their numbers (`Domains`).
    domains: [Option<u32>; 3],
    /// Matching pods per tracked selector (`Tracked`, by slot), kept by the cache. None on a
    /// copy changed outside the cache (preemption's trial node): count its pods instead.
    pub tracked: Option<Vec<i32>>,
}

/// A node's images by name (tags and digests alike) with their sizes.
fn node_images(node: &Node) -> HashMap<String, i64> {
    node.status
        .iter()
        .flat_map(|s| s.images.iter().flatten())
        .flat_map(|i| {
            let size = i.size_bytes.unwrap_or(0);
            i.names.iter().flatten().map(move |n| (n.clone(), size))
        })
        .collect()
}

impl NodeInfo {
    fn new(node: Arc<Node>, domains: &mut Domains, slots: usize) -> NodeInfo {
        let topology = topology_of(&node);
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            allocatable: allocatable(&node),
            images: node_images(&node),
            domains: domain_ids(&topology, domains),
            topology,
            tracked: Some(vec![0; slots]),
            node,
            requested: Resource::default(),
            non_zero: (0, 0),
            pods: HashMap::new(),
            anti_affinity_pods: 0,
            affinity_pods: 0,
        }
    }

    /// Adds a pod to a copy of a cached node (its tracked counts are dropped).
    pub(crate) fn add(&mut self, p: Arc<PodInfo>) {
        self.tracked = None;
        self.insert(p);
    }

    /// Removes a pod from a copy of a cached node (its tracked counts are dropped).
    pub(crate) fn remove(&mut self, key: &str) {
        self.tracked = None;
        self.delete(key);
    }

    /// Adds a pod, counting it in the tracked selectors' counts.
    fn insert_tracked(&mut self, p: Arc<PodInfo>, tracked: &Tracked) {
        if let Some(c) = self.tracked.as_mut() {
            tracked.count(&p, c, 1);
        }
        if let Some(old) = self.insert(p) {
            if let Some(c) = self.tracked.as_mut() {
                tracked.count(&old, c, -1);
            }
        }
    }

    /// Removes a pod, taking it out of the tracked selectors' counts.
    fn delete_tracked(&mut self, key: &str, tracked: &Tracked) -> Option<Arc<PodInfo>> {
        let old = self.delete(key)?;
        if let Some(c) = self.tracked.as_mut() {
            tracked.count(&old, c, -1);
        }
        Some(old)
    }

    /// Adds a pod; returns the one it replaced.
    fn insert(&mut self, p: Arc<PodInfo>) -> Option<Arc<PodInfo>> {
        let old = self.pods.insert(p.key.clone(), p.clone());
        if let Some(old) = &old {
            self.take_away(old);
        }
        self.requested.add(&p.requests);
        self.non_zero.0 += p.non_zero.0;
        self.non_zero.1 += p.non_zero.1;
        self.anti_affinity_pods += !p.required_anti.is_empty() as usize;
        self.affinity_pods += p.has_affinity() as usize;
        old
    }

    fn delete(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(key)?;
        self.take_away(&old);
        Some(old)
    }

    fn take_away(&mut self, p: &PodInfo) {
        self.requested.sub(&p.requests);
        self.non_zero.0 -= p.non_zero.0;
        self.non_zero.1 -= p.non_zero.1;
        self.anti_affinity_pods -= !p.required_anti.is_empty() as usize;
        self.affinity_pods -= p.has_affinity() as usize;
    }

    /// The node's label `key`.
    pub fn label(&self, key: &str) -> Option<&String> {
        self.node.metadata.labels.as_ref().and_then(|l| l.get(key))
    }

    /// The number of the node's value for the TOPOLOGY_KEYS key at `key` (`Domains`).
    pub fn domain_at(&self, key: usize) -> Option<u32> {
        self.domains[key]
    }

    /// The node's label for a resolved key.
    pub fn label_at(&self, key: &LabelKey) -> Option<&String> {
        match key {
            LabelKey::Known(i) => self.topology[*i].as_ref(),
            LabelKey::Other(k) => self.label(k),
        }
    }

    /// Host ports in use on the node.
    pub fn ports(&self) -> impl Iterator<Item = &HostPort> {
        self.pods.values().flat_map(|p| p.ports.iter())
    }
}

/// Nodes (in a vector, so a filter pass walks them without lookups), and where each
/// placed pod is.
#[derive(Default, Debug)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    /// Node name → position in `nodes`.
    index: HashMap<String, usize>,
    /// Pod key → (node, assumed and not yet confirmed).
    placed: HashMap<String, (String, bool)>,
    /// Pods on nodes the cache does not know yet.
    orphans: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Placed pods with required anti-affinity terms, cluster-wide.
    anti_affinity_pods: usize,
    /// Placed pods with terms that score (`PodInfo::has_affinity`), cluster-wide.
    affinity_pods: usize,
    /// The selectors of Services and workload controllers (default spreading).
    pub owners: crate::owners::Owners,
    /// Claims, volumes, classes, CSINodes (shared with the cycle's plugin state; a change
    /// copies them only while a cycle still holds them).
    volumes: Arc<crate::volumes::Volumes>,
    /// Pods that preemption nominated to a node and that are not bound yet: node → pods.
    /// Pods of lower or equal priority must leave them the room.
    nominated: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Pod key → the node it is nominated to.
    nominated_to: HashMap<String, String>,
    /// Image name → how many nodes have it (ImageLocality's spread).
    image_nodes: HashMap<String, usize>,
    /// The numbered values of the topology keys.
    domains: Domains,
    /// Selectors whose matching pods each node counts.
    tracked: Tracked,
    /// Victims this scheduler is evicting, until their deletion is seen → their
    /// preemptor. They count as terminating: the preemptor waits for them instead of
    /// preempting again.
    preempting: HashMap<String, String>,
}

/// What a scheduling cycle's PreFilter sees of the cluster.
pub struct Snapshot<'a> {
    /// Every schedulable node.
    pub nodes: &'a [NodeInfo],
    /// A node that stands in for the one of the same name (preemption's trial node, with
    /// its victims gone).
    pub replaced: Option<&'a NodeInfo>,
    /// Placed pods with required anti-affinity terms (none: nothing to check for them).
    pub anti_affinity_pods: usize,
    /// Placed pods with terms that score (`PodInfo::has_affinity`).
    pub affinity_pods: usize,
    /// The selectors of Services and workload controllers.
    pub owners: &'a crate::owners::Owners,
    /// Claims, volumes, classes, CSINodes.
    pub volumes: &'a Arc<crate::volumes::Volumes>,
    /// Image name → how many nodes have it.
    pub image_nodes: &'a HashMap<String, usize>,
    /// The numbered values of the topology keys.
    pub domains: &'a Domains,
    /// Selectors whose matching pods each node counts (`NodeInfo::tracked`).
    pub tracked: &'a Tracked,
}

impl<'a> Snapshot<'a> {
    /// Every node, with the replacement standing in for its namesake.
    pub fn each_node(&self) -> impl Iterator<Item = &'a NodeInfo> + 'a {
        let r = self.replaced;
        self.nodes.iter().map(move |n| match r {
            Some(t) if t.name == n.name => t,
            _ => n,
        })
    }
}

impl Cache {
    /// The nodes and cluster-wide counts, for a scheduling cycle.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            nodes: &self.nodes,
            replaced: None,
            anti_affinity_pods: self.anti_affinity_pods,
            affinity_pods: self.affinity_pods,
            owners: &self.owners,
            volumes: &self.volumes,
            image_nodes: &self.image_nodes,
            domains: &self.domains,
            tracked: &self.tracked,
        }
    }

    /// Starts a scheduling cycle: selectors the last cycles asked for are counted from now
    /// on, on every node.
    pub fn track_wanted(&mut self) {
        let fresh = self.tracked.start_cycle();
        if fresh.is_empty() {
            return;
        }
        let slots = self.tracked.slots();
        for n in &mut self.nodes {
            let mut counts = n.tracked.take().unwrap_or_default();
            counts.resize(slots, 0);
            for i in &fresh {
                counts[*i] = self.tracked.recount(*i, n.pods.values());
            }
            n.tracked = Some(counts);
        }
    }

    /// The storage objects, to change.
    pub fn volumes_mut(&mut self) -> &mut crate::volumes::Volumes {
        Arc::make_mut(&mut self.volumes)
    }

    /// Every node, in a stable order (until a node is removed).
    pub fn all(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Adds or updates a node; whether anything that decides placement changed (a new
    /// node, its labels, taints, cordon or allocatable), so heartbeats need not wake the
    /// unschedulable pods.
    pub fn set_node(&mut self, node: Node) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        let node = Arc::new(node);
        let images = node_images(&node);
        let (changed, old_images) = match self.index.get(&name).copied() {
            Some(i) => {
                let n = &mut self.nodes[i];
                let alloc = allocatable(&node);
                let changed = alloc != n.allocatable
                    || node.metadata.labels != n.node.metadata.labels
                    || node.spec != n.node.spec;
                n.allocatable = alloc;
                n.topology = topology_of(&node);
                n.domains = domain_ids(&n.topology, &mut self.domains);
                n.node = node;
                if n.images == images {
                    return changed;
                }
                (changed, std::mem::replace(&mut n.images, images.clone()))
            }
            None => {
                let mut n = NodeInfo::new(node, &mut self.domains, self.tracked.slots());
                for p in self.orphans.remove(&name).unwrap_or_default() {
                    n.insert_tracked(p, &self.tracked);
                }
                self.index.insert(name, self.nodes.len());
                self.nodes.push(n);
                (true, HashMap::new())
            }
        };
        self.count_images(&old_images, false);
        self.count_images(&images, true);
        changed
    }

    /// Adds or takes away one node's images from the image index.
    fn count_images(&mut self, images: &HashMap<String, i64>, add: bool) {
        for name in images.keys() {
            if add {
                *self.image_nodes.entry(name.clone()).or_default() += 1;
            } else if let Some(c) = self.image_nodes.get_mut(name) {
                *c -= 1;
                if *c == 0 {
                    self.image_nodes.remove(name);
                }
            }
        }
    }

    /// Forgets a node and its pods.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let n = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        self.count_images(&n.images, false);
        self.orphans
            .insert(name.to_string(), n.pods.into_values().collect());
    }

    /// Counts a pod on `node` (assumed: by this scheduler, before the binding is seen).
    pub fn add_pod(&mut self, p: Arc<PodInfo>, node: &str, assumed: bool) {
        self.remove_pod(&p.key);
        self.placed
            .insert(p.key.clone(), (node.to_string(), assumed));
        self.anti_affinity_pods += !p.required_anti.is_empty() as usize;
        self.affinity_pods += p.has_affinity() as usize;
        match self.index.get(node) {
            Some(i) => self.nodes[*i].insert_tracked(p, &self.tracked),
            None => self.orphans.entry(node.to_string()).or_default().push(p),
        }
    }

    /// Forgets a pod (deleted, or its binding failed).
    pub fn remove_pod(&mut self, key: &str) {
        if let Some((node, _)) = self.placed.remove(key) {
            let mut gone = None;
            if let Some(i) = self.index.get(&node) {
                gone = self.nodes[*i].delete_tracked(key, &self.tracked);
            }
            if let Some(o) = self.orphans.get_mut(&node) {
                if let Some(i) = o.iter().position(|p| p.key == key) {
                    gone = Some(o.remove(i));
                }
            }
            if let Some(p) = gone {
                self.anti_affinity_pods -= !p.required_anti.is_empty() as usize;
                self.affinity_pods -= p.has_affinity() as usize;
            }
        }
    }

    /// Whether this pod is assumed or bound here.
    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    /// Records the pod `key`'s nomination (`Some((pod, node))`), or forgets it.
    pub fn nominate(&mut self, key: &str, nomination: Option<(Arc<PodInfo>, &str)>) {
        if let Some(old) = self.nominated_to.remove(key) {
            if let Some(pods) = self.nominated.get_mut(&old) {
                pods.retain(|p| p.key != key);
                if pods.is_empty() {
                    self.nominated.remove(&old);
                }
            }
        }
        if let Some((p, node)) = nomination {
            self.nominated_to.insert(key.to_string(), node.to_string());
            self.nominated.entry(node.to_string()).or_default().push(p);
        }
    }

    /// The node the pod `key` is nominated to.
    pub fn nominated_node(&self, key: &str) -> Option<&str> {
        self.nominated_to.get(key).map(String::as_str)
    }

    /// Marks pods as being evicted by preemption for the pod `preemptor`.
    pub fn preempting<'k>(&mut self, victims: impl IntoIterator<Item = &'k str>, preemptor: &str) {
        for v in victims {
            self.preempting.insert(v.to_string(), preemptor.to_string());
        }
    }

    /// The pod `key` is no longer being evicted (gone, or its eviction failed): its
    /// preemptor, when it was that preemptor's last victim.
    pub fn preempted(&mut self, key: &str) -> Option<String> {
        let preemptor = self.preempting.remove(key)?;
        let waits = self.preempting.values().any(|p| *p == preemptor);
        (!waits).then_some(preemptor)
    }

    /// Whether victims of the pod `preemptor` are still on their node.
    pub fn awaits_victims(&self, preemptor: &str) -> bool {
        self.preempting.values().any(|p| p == preemptor)
    }

    /// Whether the pod `key` is being evicted by preemption.
    pub fn is_preempting(&self, key: &str) -> bool {
        self.preempting.contains_key(key)
    }

    /// The pods nominated to each node.
    pub fn nominated(&self) -> &HashMap<String, Vec<Arc<PodInfo>>> {
        &self.nominated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assumed_pods_count_and_leave_cleanly() {
        let mut c = Cache::default();
        c.set_node(serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}}})).unwrap());
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}})).unwrap();
        let p = Arc::new(PodInfo::new(Arc::new(pod)));
        c.add_pod(p.clone(), "n1", true);
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 500);
        // Confirmed by the watch: counted once.
        c.add_pod(p, "n1", false);
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 500);
        c.remove_pod("d/p");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
        assert!(!c.is_placed("d/p"));
        // A heartbeat (status conditions only) changes nothing that matters; a label does.
        let mut beat: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}})).unwrap();
        assert!(!c.set_node(beat.clone()));
        beat.metadata.labels = Some([("zone".to_string(), "a".to_string())].into());
        assert!(c.set_node(beat));
        // Removing a node keeps the others findable.
        for n in ["n2", "n3"] {
            c.set_node(serde_json::from_value(json!({"metadata": {"name": n}})).unwrap());
        }
        c.remove_node("n1");
        assert_eq!(c.node("n3").unwrap().name, "n3");
        assert_eq!(c.all().len(), 2);
    }

    #[test]
    fn a_preemptor_waits_for_its_last_victim() {
        let mut c = Cache::default();
        c.preempting(["d/v1", "d/v2"], "d/high");
        assert!(c.is_preempting("d/v1") && c.awaits_victims("d/high"));
        assert_eq!(c.preempted("d/v1"), None, "v2 is still there");
        assert_eq!(c.preempted("d/other"), None);
        assert_eq!(c.preempted("d/v2").as_deref(), Some("d/high"));
        assert!(!c.awaits_victims("d/high") && !c.is_preempting("d/v2"));
    }
}
