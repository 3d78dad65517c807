//! The default plugins, with upstream's behaviour and weights.

mod fit;
mod node;
mod node_affinity;
mod pod_affinity;
mod spread;
mod taints;

use std::sync::Arc;

pub use fit::{BalancedAllocation, NodeResourcesFit};
pub use node::{NodeName, NodePorts, NodeUnschedulable};
pub use node_affinity::NodeAffinity;
pub use pod_affinity::InterPodAffinity;
pub use spread::PodTopologySpread;
pub use taints::{tolerates, TaintToleration};

use crate::framework::{Plugin, Profile};

/// The default profile (`default-scheduler`): filters in upstream's order, scorers with
/// upstream's default weights.
pub fn default_profile() -> Profile {
    let plugins: Vec<(Arc<dyn Plugin>, i64)> = vec![
        (Arc::new(NodeUnschedulable), 0),
        (Arc::new(NodeName), 0),
        (Arc::new(TaintToleration), 3),
        (Arc::new(NodeAffinity), 2),
        (Arc::new(NodePorts), 0),
        (Arc::new(NodeResourcesFit), 1),
        (Arc::new(PodTopologySpread), 2),
        (Arc::new(InterPodAffinity), 2),
        (Arc::new(BalancedAllocation), 1),
    ];
    Profile {
        scheduler_name: "default-scheduler".into(),
        plugins,
        percentage_of_nodes_to_score: 0,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Arc;

    use serde_json::Value;

    use crate::cache::{Cache, NodeInfo, PodInfo};

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

    pub fn only(c: &Cache) -> &NodeInfo {
        c.all().first().unwrap()
    }
}
