//! TaintToleration: NoSchedule and NoExecute taints must be tolerated; PreferNoSchedule
//! ones only cost score.

use k8s_openapi::api::core::v1::Taint;

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{default_normalize, Plugin};

/// Whether one of the pod's tolerations matches the taint.
pub fn tolerates(pod: &PodInfo, taint: &Taint) -> bool {
    let tolerations = pod
        .pod
        .spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten());
    for t in tolerations {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key = t.key.as_deref().unwrap_or("");
        let matches = match t.operator.as_deref().unwrap_or("Equal") {
            "Exists" => key.is_empty() || key == taint.key,
            _ => {
                key == taint.key
                    && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
        };
        if effect_ok && matches {
            return true;
        }
    }
    false
}

fn taints(node: &NodeInfo) -> impl Iterator<Item = &Taint> {
    node.node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
}

/// TaintToleration: NoSchedule taints must be tolerated; PreferNoSchedule ones score.
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let untolerated = taints(node)
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .find(|t| !tolerates(pod, t));
        match untolerated {
            Some(t) => Err(vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            )]),
            None => Ok(()),
        }
    }

    fn scores(&self) -> bool {
        true
    }

    /// The number of PreferNoSchedule taints the pod does not tolerate (fewer is better).
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        taints(node)
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(pod, t))
            .count() as i64
    }

    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugins::test_util::{node, only, pod};

    #[test]
    fn taints_and_tolerations() {
        let c = node(
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            TaintToleration
                .filter(&pod(json!({})), only(&c))
                .unwrap_err(),
            vec!["node(s) had untolerated taint {dedicated: gpu}".to_string()]
        );
        let equal = pod(
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert!(TaintToleration.filter(&equal, only(&c)).is_ok());
        let wrong_value =
            pod(json!({"spec": {"tolerations": [{"key": "dedicated", "value": "cpu"}]}}));
        assert!(TaintToleration.filter(&wrong_value, only(&c)).is_err());
        let all = pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        assert!(TaintToleration.filter(&all, only(&c)).is_ok());
        let other_effect = pod(
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]}}),
        );
        assert!(TaintToleration.filter(&other_effect, only(&c)).is_err());

        let soft = node(json!({"spec": {"taints": [{"key": "a", "effect": "PreferNoSchedule"}]}}));
        assert!(TaintToleration.filter(&pod(json!({})), only(&soft)).is_ok());
        assert_eq!(TaintToleration.score(&pod(json!({})), only(&soft)), 1);
        let mut s = vec![1, 0];
        TaintToleration.normalize(&mut s);
        assert_eq!(s, vec![0, 100]);
    }
}
