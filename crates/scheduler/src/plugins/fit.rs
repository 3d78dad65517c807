//! NodeResourcesFit (filter; LeastAllocated score) and NodeResourcesBalancedAllocation.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, MAX_SCORE};

pub struct NodeResourcesFit;

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

    /// LeastAllocated: the free share of CPU and memory after placing the pod, averaged.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let free = |cap: i64, used: i64| {
            if cap <= 0 || used > cap {
                0
            } else {
                (cap - used) * MAX_SCORE / cap
            }
        };
        let cpu = free(node.allocatable.milli_cpu, node.non_zero.0 + pod.non_zero.0);
        let mem = free(node.allocatable.memory, node.non_zero.1 + pod.non_zero.1);
        (cpu + mem) / 2
    }
}

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
        assert!(NodeResourcesFit
            .filter(&asks("a", "1500m", "1Gi"), only(&c))
            .is_ok());
        c.add_pod(Arc::new(asks("a", "1500m", "1Gi")), "n", true);
        assert_eq!(
            NodeResourcesFit
                .filter(&asks("b", "1", "4Gi"), only(&c))
                .unwrap_err(),
            vec![
                "Insufficient cpu".to_string(),
                "Insufficient memory".to_string()
            ]
        );
        c.add_pod(Arc::new(asks("b", "100m", "1Mi")), "n", true);
        assert_eq!(
            NodeResourcesFit
                .filter(&asks("c", "1m", "1Mi"), only(&c))
                .unwrap_err(),
            vec!["Too many pods".to_string()]
        );
        let gpu = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"example.com/gpu": "1"}}}]}}),
        );
        assert_eq!(
            NodeResourcesFit
                .filter(&gpu, only(&node(json!({}))))
                .unwrap_err(),
            vec!["Insufficient example.com/gpu".to_string()]
        );
        // An empty 4-CPU / 8 GiB node: 1 CPU and 2 GiB leave 75% of each free, balanced.
        let empty = node(json!({}));
        let p = asks("x", "1", "2Gi");
        assert_eq!(NodeResourcesFit.score(&p, only(&empty)), 75);
        assert_eq!(BalancedAllocation.score(&p, only(&empty)), 100);
        let lopsided = asks("y", "4", "1Gi");
        assert!(BalancedAllocation.score(&lopsided, only(&empty)) < 60);
    }
}
