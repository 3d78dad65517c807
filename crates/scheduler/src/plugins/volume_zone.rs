//! VolumeZone: a pod whose bound volumes carry zone or region labels goes only to nodes in
//! one of those zones and regions (a label value may list several, joined by `__`).

use std::collections::HashSet;

use crate::cache::{NodeInfo, PodInfo, Snapshot};
use crate::framework::{CycleState, Plugin};
use crate::volumes::pod_claims;

const NAME: &str = "VolumeZone";

/// Upstream's reason.
pub const ZONE_CONFLICT: &str = "node(s) had no available volume zone";

/// The topology labels, GA and beta; a beta label on a volume also matches the GA one on
/// a node.
const KEYS: [(&str, &str); 4] = [
    ("topology.kubernetes.io/zone", "topology.kubernetes.io/zone"),
    (
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/region",
    ),
    (
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/zone",
    ),
    (
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/region",
    ),
];

/// The volumes' topology: per label, the values allowed.
struct State(Vec<(&'static str, &'static str, HashSet<String>)>);

/// VolumeZone: the node must be in the zones of the pod's bound volumes.
pub struct VolumeZone;

impl Plugin for VolumeZone {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Claims that are missing, unbound or bound to a missing volume are VolumeBinding's
    /// to judge; here only bound volumes' labels count.
    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let ns = pod.pod.metadata.namespace.as_deref().unwrap_or("");
        let mut wanted = Vec::new();
        for c in pod_claims(&pod.pod) {
            let claim = cluster.volumes.claims.get(&format!("{ns}/{}", c.name));
            let pv_name = claim
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.volume_name.as_deref())
                .filter(|n| !n.is_empty());
            let Some(labels) = pv_name
                .and_then(|n| cluster.volumes.volumes.get(n))
                .and_then(|pv| pv.metadata.labels.as_ref())
            else {
                continue;
            };
            for (key, ga) in KEYS {
                if let Some(v) = labels.get(key) {
                    let values = v.split("__").map(str::to_string).collect();
                    wanted.push((key, ga, values));
                }
            }
        }
        if !wanted.is_empty() {
            state.insert(NAME, Box::new(State(wanted)));
        }
    }

    fn filter_state(&self) -> Option<&'static str> {
        Some(NAME)
    }

    fn filter_in(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let Some(State(wanted)) = state.read::<State>(NAME) else {
            return Ok(());
        };
        // A node without any topology label is not judged (upstream's rule).
        if !KEYS.iter().any(|(k, _)| node.label(k).is_some()) {
            return Ok(());
        }
        for (key, ga, values) in wanted {
            let v = node.label(key).or_else(|| node.label(ga));
            if !v.is_some_and(|v| values.contains(v)) {
                return Err(vec![ZONE_CONFLICT.into()]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cache::Cache;
    use crate::plugins::test_util::pod;

    #[test]
    fn bound_volumes_keep_pods_in_their_zones() {
        let mut c = Cache::default();
        for (n, labels) in [
            (
                "a",
                json!({"topology.kubernetes.io/zone": "z1", "topology.kubernetes.io/region": "r"}),
            ),
            (
                "b",
                json!({"topology.kubernetes.io/zone": "z2", "topology.kubernetes.io/region": "r"}),
            ),
            (
                "c",
                json!({"topology.kubernetes.io/zone": "z3", "topology.kubernetes.io/region": "r"}),
            ),
            ("bare", json!({})),
        ] {
            c.set_node(
                serde_json::from_value(json!({"metadata": {"name": n, "labels": labels}})).unwrap(),
            );
        }
        let v = c.volumes_mut();
        v.volumes.insert(
            "pv".into(),
            serde_json::from_value(json!({"metadata": {"name": "pv", "labels": {
                "failure-domain.beta.kubernetes.io/zone": "z1__z2",
                "topology.kubernetes.io/region": "r"}}}))
            .unwrap(),
        );
        for (claim, volume) in [("data", "pv"), ("pending", "")] {
            v.claims.insert(
                format!("default/{claim}"),
                serde_json::from_value(json!({"metadata": {"name": claim, "namespace": "default"},
                    "spec": {"volumeName": volume}}))
                .unwrap(),
            );
        }
        let with = |claim: &str| {
            pod(
                json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}),
            )
        };
        let verdicts = |p: &PodInfo| -> Vec<bool> {
            let mut s = CycleState::new();
            VolumeZone.pre_filter(p, &c.snapshot(), &mut s);
            ["a", "b", "c", "bare"]
                .iter()
                .map(|n| VolumeZone.filter_in(p, c.node(n).unwrap(), &s).is_ok())
                .collect()
        };
        // The beta zone label lists z1 and z2; it matches the nodes' GA label.
        assert_eq!(verdicts(&with("data")), [true, true, false, true]);
        let mut s = CycleState::new();
        let p = with("data");
        VolumeZone.pre_filter(&p, &c.snapshot(), &mut s);
        assert_eq!(
            VolumeZone.filter_in(&p, c.node("c").unwrap(), &s),
            Err(vec![ZONE_CONFLICT.to_string()])
        );
        // Unbound claims are not judged here.
        assert_eq!(verdicts(&with("pending")), [true; 4]);
    }
}
