//! NodeResourcesFit (filter; LeastAllocated score) and NodeResourcesBalancedAllocation.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, MAX_SCORE};

/// How NodeResourcesFit scores (its `scoringStrategy` arg).
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Emptier nodes first (the default: spreads pods).
    LeastAllocated,
    /// Fuller nodes first (bin packing).
    MostAllocated,
    /// A piecewise-linear score of utilization: (utilization %, node score) points.
    RequestedToCapacityRatio(Vec<(i64, i64)>),
}

/// NodeResourcesFit: requests must fit in what the node has left; scored by a strategy
/// over CPU and memory with weights.
#[derive(Clone, Debug)]
pub struct NodeResourcesFit {
    /// How the score prefers nodes (LeastAllocated, MostAllocated, ...).
    pub strategy: Strategy,
    /// Weights of cpu and memory in the score.
    pub weights: (i64, i64),
}

impl Default for NodeResourcesFit {
    fn default() -> Self {
        NodeResourcesFit {
            strategy: Strategy::LeastAllocated,
            weights: (1, 1),
        }
    }
}

impl NodeResourcesFit {
    /// From the plugin's `pluginConfig` args (`scoringStrategy`).
    pub fn from_args(args: &serde_json::Value) -> NodeResourcesFit {
        let st = &args["scoringStrategy"];
        let mut fit = NodeResourcesFit::default();
        for r in st["resources"].as_array().into_iter().flatten() {
            let w = r["weight"].as_i64().unwrap_or(1);
            match r["name"].as_str() {
                Some("cpu") => fit.weights.0 = w,
                Some("memory") => fit.weights.1 = w,
                _ => {}
            }
        }
        fit.strategy = match st["type"].as_str() {
            Some("MostAllocated") => Strategy::MostAllocated,
            Some("RequestedToCapacityRatio") => Strategy::RequestedToCapacityRatio(
                st["requestedToCapacityRatio"]["shape"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        // Shape scores are 0-10; scaled to node scores before
                        // interpolating, as upstream does.
                        (
                            p["utilization"].as_i64().unwrap_or(0),
                            p["score"].as_i64().unwrap_or(0) * MAX_SCORE / 10,
                        )
                    })
                    .collect(),
            ),
            _ => Strategy::LeastAllocated,
        };
        fit
    }

    /// One resource's score (0-100) for `used` of `cap`.
    fn resource_score(&self, cap: i64, used: i64) -> i64 {
        if cap <= 0 {
            return 0;
        }
        let used = used.min(cap);
        match &self.strategy {
            Strategy::LeastAllocated => (cap - used) * MAX_SCORE / cap,
            Strategy::MostAllocated => used * MAX_SCORE / cap,
            Strategy::RequestedToCapacityRatio(shape) => piecewise(shape, used * 100 / cap),
        }
    }
}

/// The shape's score at utilization `u`, interpolating between points.
fn piecewise(shape: &[(i64, i64)], u: i64) -> i64 {
    let Some(first) = shape.first() else { return 0 };
    if u <= first.0 {
        return first.1;
    }
    for w in shape.windows(2) {
        let ((u0, s0), (u1, s1)) = (w[0], w[1]);
        if u <= u1 {
            return s0 + (s1 - s0) * (u - u0) / (u1 - u0).max(1);
        }
    }
    shape.last().map(|p| p.1).unwrap_or(0)
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let (a, used, want) = (&node.allocatable, &node.requested, &pod.requests);
        let mut why = Vec::new();
        if used.pods + 1 > a.pods {
            why.push("Too many pods".to_string());
        }
        if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > a.milli_cpu {
            why.push("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > a.memory {
            why.push("Insufficient memory".into());
        }
        if want.ephemeral_storage > 0
            && used.ephemeral_storage + want.ephemeral_storage > a.ephemeral_storage
        {
            why.push("Insufficient ephemeral-storage".into());
        }
        for (k, v) in &want.scalar {
            let have = a.scalar.get(k).copied().unwrap_or(0);
            if *v > 0 && used.scalar.get(k).copied().unwrap_or(0) + v > have {
                why.push(format!("Insufficient {k}"));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    fn scores(&self) -> bool {
        true
    }

    /// The strategy's score of CPU and memory after placing the pod, weighted.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let cpu = self.resource_score(node.allocatable.milli_cpu, node.non_zero.0 + pod.non_zero.0);
        let mem = self.resource_score(node.allocatable.memory, node.non_zero.1 + pod.non_zero.1);
        let (wc, wm) = self.weights;
        (cpu * wc + mem * wm) / (wc + wm).max(1)
    }
}

/// NodeResourcesBalancedAllocation: prefers nodes whose CPU and memory use stay even.
pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn scores(&self) -> bool {
        true
    }

    /// Nodes whose CPU and memory would be used in equal shares score highest.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let share = |cap: i64, used: i64| {
            if cap <= 0 {
                1.0
            } else {
                (used as f64 / cap as f64).min(1.0)
            }
        };
        let cpu = share(node.allocatable.milli_cpu, node.non_zero.0 + pod.non_zero.0);
        let mem = share(node.allocatable.memory, node.non_zero.1 + pod.non_zero.1);
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::plugins::test_util::{node, only, pod};

    fn asks(name: &str, cpu: &str, mem: &str) -> PodInfo {
        pod(
            json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}),
        )
    }

    #[test]
    fn fit_and_scores() {
        let mut c =
            node(json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "2"}}}));
        assert!(NodeResourcesFit::default()
            .filter(&asks("a", "1500m", "1Gi"), only(&c))
            .is_ok());
        c.add_pod(Arc::new(asks("a", "1500m", "1Gi")), "n", true);
        assert_eq!(
            NodeResourcesFit::default()
                .filter(&asks("b", "1", "4Gi"), only(&c))
                .unwrap_err(),
            vec![
                "Insufficient cpu".to_string(),
                "Insufficient memory".to_string()
            ]
        );
        c.add_pod(Arc::new(asks("b", "100m", "1Mi")), "n", true);
        assert_eq!(
            NodeResourcesFit::default()
                .filter(&asks("c", "1m", "1Mi"), only(&c))
                .unwrap_err(),
            vec!["Too many pods".to_string()]
        );
        let gpu = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"example.com/gpu": "1"}}}]}}),
        );
        assert_eq!(
            NodeResourcesFit::default()
                .filter(&gpu, only(&node(json!({}))))
                .unwrap_err(),
            vec!["Insufficient example.com/gpu".to_string()]
        );
        // An empty 4-CPU / 8 GiB node: 1 CPU and 2 GiB leave 75% of each free, balanced.
        let empty = node(json!({}));
        let p = asks("x", "1", "2Gi");
        assert_eq!(NodeResourcesFit::default().score(&p, only(&empty)), 75);
        assert_eq!(BalancedAllocation.score(&p, only(&empty)), 100);
        let packer =
            NodeResourcesFit::from_args(&json!({"scoringStrategy": {"type": "MostAllocated"}}));
        assert_eq!(packer.score(&p, only(&empty)), 25);
        let ratio = NodeResourcesFit::from_args(
            &json!({"scoringStrategy": {"type": "RequestedToCapacityRatio",
            "requestedToCapacityRatio": {"shape": [{"utilization": 0, "score": 0}, {"utilization": 100, "score": 10}]}}}),
        );
        assert_eq!(ratio.score(&p, only(&empty)), 25, "the MostAllocated line");
        assert_eq!(piecewise(&[(0, 10), (50, 0)], 25), 5);
        assert_eq!(piecewise(&[(0, 10), (50, 0)], 80), 0);
        let lopsided = asks("y", "4", "1Gi");
        assert!(BalancedAllocation.score(&lopsided, only(&empty)) < 60);
    }
}
