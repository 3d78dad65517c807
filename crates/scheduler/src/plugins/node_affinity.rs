//! NodeAffinity: `nodeSelector` and required node affinity filter; preferred node affinity
//! scores by the weights of the terms a node matches.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{default_normalize, Plugin};

fn labels(node: &NodeInfo) -> &std::collections::BTreeMap<String, String> {
    static EMPTY: std::sync::OnceLock<std::collections::BTreeMap<String, String>> =
        std::sync::OnceLock::new();
    node.node
        .metadata
        .labels
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

/// One requirement against a value (None: the key is absent).
fn requirement(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// A term matches when all its expressions and fields do (an empty term matches nothing).
pub(crate) fn term(t: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let l = labels(node);
    exprs
        .iter()
        .all(|r| requirement(r, l.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement(r, v)
        })
}

/// Whether the pod has a nodeSelector or required node affinity (else every node matches).
pub fn constrains(pod: &PodInfo) -> bool {
    pod.pod.spec.as_ref().is_some_and(|s| {
        s.node_selector.as_ref().is_some_and(|n| !n.is_empty())
            || s.affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .is_some_and(|n| {
                    n.required_during_scheduling_ignored_during_execution
                        .is_some()
                })
    })
}

/// Whether the node satisfies the pod's nodeSelector and required node affinity.
pub fn matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let Some(spec) = &pod.pod.spec else {
        return true;
    };
    let l = labels(node);
    if let Some(sel) = &spec.node_selector {
        if !sel.iter().all(|(k, v)| l.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(r) => r.node_selector_terms.iter().any(|t| term(t, node)),
        None => true,
    }
}

/// NodeAffinity: `nodeSelector` and node affinity, required and preferred.
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        if matches(pod, node) {
            Ok(())
        } else {
            Err(vec![
                "node(s) didn't match Pod's node affinity/selector".into()
            ])
        }
    }

    fn scores(&self) -> bool {
        true
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|prefs| {
                prefs
                    .iter()
                    .filter(|p| term(&p.preference, node))
                    .map(|p| p.weight as i64)
                    .sum()
            })
            .unwrap_or(0)
    }

    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugins::test_util::{node, only, pod};

    #[test]
    fn selectors_and_affinity() {
        let c = node(json!({"metadata": {"labels": {"disk": "ssd", "zone": "a", "cores": "8"}}}));
        let n = only(&c);
        assert!(NodeAffinity
            .filter(&pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})), n)
            .is_ok());
        assert_eq!(
            NodeAffinity
                .filter(&pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}})), n)
                .unwrap_err(),
            vec!["node(s) didn't match Pod's node affinity/selector".to_string()]
        );
        let req = |exprs: serde_json::Value| {
            pod(json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}}))
        };
        assert!(NodeAffinity
            .filter(
                &req(json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])),
                n
            )
            .is_ok());
        assert!(NodeAffinity
            .filter(
                &req(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])),
                n
            )
            .is_err());
        assert!(NodeAffinity
            .filter(&req(json!([{"key": "gpu", "operator": "DoesNotExist"}])), n)
            .is_ok());
        assert!(NodeAffinity
            .filter(
                &req(json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])),
                n
            )
            .is_ok());
        assert!(NodeAffinity
            .filter(
                &req(json!([{"key": "cores", "operator": "Lt", "values": ["4"]}])),
                n
            )
            .is_err());
        let by_name = pod(
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}]}}}}}),
        );
        assert!(NodeAffinity.filter(&by_name, n).is_ok());
        let pref = pod(
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 30, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}},
            ]}}}}),
        );
        assert_eq!(NodeAffinity.score(&pref, n), 30);
    }
}
