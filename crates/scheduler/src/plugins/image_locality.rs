//! ImageLocality (score): nodes that already hold the pod's images score higher, by the
//! images' sizes scaled by how widely they are spread (an image on every node says
//! little), between upstream's 23 MiB and 1,000 MiB-per-container thresholds.

use crate::cache::{NodeInfo, PodInfo, Snapshot};
use crate::framework::{CycleState, Plugin, MAX_SCORE};

const NAME: &str = "ImageLocality";
const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// An image name as nodes report it: a name without a tag or digest means `:latest`.
pub fn normalized(name: &str) -> String {
    let after_slash = name.rsplit('/').next().unwrap_or(name);
    if after_slash.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The pod's images with the share of nodes holding each, and the container count.
struct State {
    images: Vec<(String, f64)>,
    containers: i64,
}

/// ImageLocality: prefers nodes that already have the pod's images.
pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let Some(spec) = pod.pod.spec.as_ref() else {
            return;
        };
        let total = cluster.nodes.len().max(1) as f64;
        let all: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter_map(|c| c.image.as_deref())
            .collect();
        let images: Vec<(String, f64)> = all
            .iter()
            .map(|i| {
                let name = normalized(i);
                let spread = *cluster.image_nodes.get(&name).unwrap_or(&0) as f64 / total;
                (name, spread)
            })
            .collect();
        // No node has any of the images: every node scores 0.
        if images.iter().all(|(_, spread)| *spread == 0.0) {
            return;
        }
        state.insert(
            NAME,
            Box::new(State {
                images,
                containers: all.len() as i64,
            }),
        );
    }

    fn scores(&self) -> bool {
        true
    }

    fn score_state(&self) -> Option<&'static str> {
        Some(NAME)
    }

    fn score_in(&self, _pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(st) = state.read::<State>(NAME) else {
            return 0;
        };
        let sum: i64 = st
            .images
            .iter()
            .filter_map(|(name, spread)| {
                node.images
                    .get(name)
                    .map(|size| (*size as f64 * spread) as i64)
            })
            .sum();
        let max = MAX_CONTAINER_THRESHOLD * st.containers.max(1);
        let clamped = sum.clamp(MIN_THRESHOLD, max);
        MAX_SCORE * (clamped - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::plugins::test_util::pod;
    use serde_json::json;

    #[test]
    fn names_normalize_as_upstream() {
        assert_eq!(normalized("busybox"), "busybox:latest");
        assert_eq!(normalized("registry:5000/app"), "registry:5000/app:latest");
        assert_eq!(normalized("registry:5000/app:v1"), "registry:5000/app:v1");
        assert_eq!(normalized("app@sha256:abc"), "app@sha256:abc");
    }

    #[test]
    fn big_rare_images_score_and_spread_ones_less() {
        let mut c = Cache::default();
        let node = |name: &str, images: serde_json::Value| {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    "images": images}}))
            .unwrap()
        };
        let big = json!([{"names": ["example.com/big:1"], "sizeBytes": 600 * MB}]);
        c.set_node(node("a", big.clone()));
        c.set_node(node("b", json!([])));
        let p = pod(json!({"spec": {"containers": [{"name": "c", "image": "example.com/big:1"}]}}));
        let score = |c: &Cache, n: &str| {
            let mut st = CycleState::new();
            ImageLocality.pre_filter(&p, &c.snapshot(), &mut st);
            ImageLocality.score_in(&p, c.node(n).unwrap(), &st)
        };
        // 600 MiB on half the nodes: 300 MiB scaled, (300 - 23) / (1000 - 23) of 100.
        assert_eq!(score(&c, "a"), 28);
        assert_eq!(score(&c, "b"), 0);
        // On every node the same image is worth more in all (600 MiB), still equal.
        c.set_node(node("b", big));
        assert_eq!(score(&c, "a"), 59);
        assert_eq!(score(&c, "a"), score(&c, "b"));
        c.remove_node("b");
        assert_eq!(c.snapshot().image_nodes.get("example.com/big:1"), Some(&1));
    }
}
