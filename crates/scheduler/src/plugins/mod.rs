//! The default plugins, with upstream's behaviour and weights.

mod fit;
mod image_locality;
mod node;
mod node_affinity;
mod pod_affinity;
mod spread;
mod taints;
pub mod volume_binding;
mod volume_restrictions;
mod volume_zone;

use std::sync::Arc;

pub use fit::{BalancedAllocation, NodeResourcesFit};
pub use image_locality::ImageLocality;
pub use node::{NodeName, NodePorts, NodeUnschedulable};
pub(crate) use node_affinity::term as node_affinity_term;
pub use node_affinity::NodeAffinity;
pub use pod_affinity::InterPodAffinity;
pub use spread::PodTopologySpread;
pub use taints::{tolerates, TaintToleration};
pub use volume_binding::{bindings, NodeVolumeLimits, VolumeBinding};
pub use volume_restrictions::VolumeRestrictions;
pub use volume_zone::VolumeZone;

use crate::framework::{Entry, Plugin, Profile};

/// FNV-1a for the sets of topology values that PreFilter and Filter look up for every
/// node each cycle: SipHash's flood resistance buys nothing there (the values are node
/// labels) and costs a third of the lookup.
#[derive(Default, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Hash maps and sets keyed by topology values.
pub type FastHash = std::hash::BuildHasherDefault<Fnv>;

/// The plugins this scheduler has, by upstream name, with their default score weights
/// (`args`: the plugin's `pluginConfig` args).
pub fn by_name(name: &str, args: &serde_json::Value) -> Option<(Arc<dyn Plugin>, i64)> {
    let p: (Arc<dyn Plugin>, i64) = match name {
        "NodeUnschedulable" => (Arc::new(NodeUnschedulable), 0),
        "NodeName" => (Arc::new(NodeName), 0),
        "TaintToleration" => (Arc::new(TaintToleration), 3),
        "NodeAffinity" => (Arc::new(NodeAffinity), 2),
        "NodePorts" => (Arc::new(NodePorts), 0),
        "NodeResourcesFit" => (Arc::new(NodeResourcesFit::from_args(args)), 1),
        "PodTopologySpread" => (Arc::new(PodTopologySpread::from_args(args)), 2),
        "InterPodAffinity" => (Arc::new(InterPodAffinity::from_args(args)), 2),
        "NodeResourcesBalancedAllocation" => (Arc::new(BalancedAllocation), 1),
        "ImageLocality" => (Arc::new(ImageLocality), 1),
        "VolumeBinding" => (Arc::new(VolumeBinding), 0),
        "NodeVolumeLimits" => (Arc::new(NodeVolumeLimits), 0),
        "VolumeRestrictions" => (Arc::new(VolumeRestrictions), 0),
        "VolumeZone" => (Arc::new(VolumeZone), 0),
        _ => return None,
    };
    Some(p)
}

/// Upstream plugins the scheduler itself always runs (the queue's order, scheduling gates,
/// the binding): a config may name them.
pub const BUILT_IN: &[&str] = &["PrioritySort", "SchedulingGates", "DefaultBinder"];

/// Upstream plugins this scheduler does not have yet (a config may name them; they are
/// skipped with a warning).
pub const NOT_YET: &[&str] = &[
    "EBSLimits",
    "GCEPDLimits",
    "AzureDiskLimits",
    "CinderLimits",
    "DynamicResources",
];

/// The default plugin set, in upstream's order.
pub const DEFAULT: &[&str] = &[
    "NodeUnschedulable",
    "NodeName",
    "TaintToleration",
    "NodeAffinity",
    "NodePorts",
    "NodeResourcesFit",
    "VolumeRestrictions",
    "NodeVolumeLimits",
    "VolumeBinding",
    "VolumeZone",
    "PodTopologySpread",
    "InterPodAffinity",
    "NodeResourcesBalancedAllocation",
    "ImageLocality",
];

/// The default profile (`default-scheduler`): filters in upstream's order, scorers with
/// upstream's default weights.
pub fn default_profile() -> Profile {
    let null = serde_json::Value::Null;
    Profile {
        scheduler_name: "default-scheduler".into(),
        plugins: DEFAULT
            .iter()
            .filter_map(|n| by_name(n, &null))
            .map(|(p, w)| Entry::new(p, w))
            .collect(),
        percentage_of_nodes_to_score: 0,
        preemption: Some(Default::default()),
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Arc;

    use serde_json::Value;

    use crate::cache::{Cache, NodeInfo, PodInfo};
    use crate::framework::{CycleState, Plugin};

    pub fn pod(v: Value) -> PodInfo {
        let mut v = v;
        v["metadata"]["namespace"] = "default".into();
        if v["metadata"]["name"].is_null() {
            v["metadata"]["name"] = "p".into();
        }
        if v["spec"]["containers"].is_null() {
            v["spec"]["containers"] = serde_json::json!([{"name": "c"}]);
        }
        PodInfo::new(Arc::new(serde_json::from_value(v).unwrap()))
    }

    /// A cache with one node made of `v` (allocatable cpu 4, memory 8Gi, 110 pods unless
    /// given).
    pub fn node(v: Value) -> Cache {
        let mut v = v;
        if v["status"]["allocatable"].is_null() {
            v["status"]["allocatable"] =
                serde_json::json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
        }
        if v["metadata"]["name"].is_null() {
            v["metadata"]["name"] = "n".into();
        }
        let mut c = Cache::default();
        c.set_node(serde_json::from_value(v).unwrap());
        c
    }

    /// A cache of nodes named `names`, each labelled with its host name.
    pub fn hosts(names: &[&str]) -> Cache {
        let mut c = Cache::default();
        for n in names {
            let node = serde_json::json!({"metadata": {"name": n,
                "labels": {"kubernetes.io/hostname": n}}});
            c.set_node(serde_json::from_value(node).unwrap());
        }
        c
    }

    pub fn only(c: &Cache) -> &NodeInfo {
        c.all().first().unwrap()
    }

    /// Every node's normalized score for `p` (PreFilter, PreScore, Score, NormalizeScore).
    pub fn scores(plugin: &dyn Plugin, c: &Cache, p: &PodInfo) -> Vec<(String, i64)> {
        let mut s = CycleState::new();
        let snap = c.snapshot();
        let nodes: Vec<&NodeInfo> = c.all().iter().collect();
        plugin.pre_filter(p, &snap, &mut s);
        plugin.pre_score(p, &nodes, &snap, &mut s);
        let mut raw: Vec<i64> = nodes.iter().map(|n| plugin.score_in(p, n, &s)).collect();
        plugin.normalize(&mut raw);
        nodes.iter().map(|n| n.name.clone()).zip(raw).collect()
    }
}
