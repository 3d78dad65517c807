//! InterPodAffinity: required pod affinity and anti-affinity of the incoming pod, and the
//! required anti-affinity of the pods already placed, by topology domain.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::PodAffinityTerm;

use crate::cache::{NodeInfo, PodInfo, Snapshot};
use crate::framework::{CycleState, Plugin};
use crate::selector;

const NAME: &str = "InterPodAffinity";

/// Whether `term`, written by a pod in namespace `owner_ns`, selects `target`.
fn term_selects(term: &PodAffinityTerm, owner_ns: &str, target: &PodInfo) -> bool {
    let ns = target.pod.metadata.namespace.as_deref().unwrap_or("");
    let listed = term.namespaces.as_deref().unwrap_or(&[]);
    // An empty namespaceSelector means every namespace; a non-empty one needs namespace
    // labels, which this scheduler does not watch: only the listed namespaces count then.
    let all = term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    let ns_ok = all
        || listed.iter().any(|n| n == ns)
        || (listed.is_empty() && term.namespace_selector.is_none() && ns == owner_ns);
    let empty = BTreeMap::new();
    ns_ok
        && term.label_selector.as_ref().is_some_and(|s| {
            selector::matches(s, target.pod.metadata.labels.as_ref().unwrap_or(&empty))
        })
}

/// The pod's required affinity terms (its anti-affinity terms are in `PodInfo`).
fn required_affinity(pod: &PodInfo) -> Vec<PodAffinityTerm> {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default()
}

/// Topology values by topology key (a node is in them if its label for a key is).
type Domains = HashMap<String, HashSet<String>>;

fn add(d: &mut Domains, key: &str, value: &str) {
    if let Some(values) = d.get_mut(key) {
        values.insert(value.to_string());
    } else {
        d.insert(key.to_string(), HashSet::from([value.to_string()]));
    }
}

struct State {
    /// Domains where the incoming pod's anti-affinity finds a pod.
    anti: Domains,
    /// Domains where a placed pod's anti-affinity rejects the incoming pod.
    existing: Domains,
    /// Per affinity term: the values holding a matching pod.
    affinity: Vec<(PodAffinityTerm, HashSet<String>)>,
    /// The incoming pod matches all its own affinity terms (it may start a group alone).
    self_affine: bool,
}

pub struct InterPodAffinity;

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let nodes = cluster.nodes;
        let own_ns = pod.pod.metadata.namespace.clone().unwrap_or_default();
        let anti_terms = &pod.required_anti;
        let aff_terms = required_affinity(pod);
        let mut st = State {
            anti: Domains::new(),
            existing: Domains::new(),
            affinity: aff_terms
                .iter()
                .map(|t| (t.clone(), HashSet::new()))
                .collect(),
            self_affine: aff_terms.iter().all(|t| term_selects(t, &own_ns, pod)),
        };
        let own_rules = !anti_terms.is_empty() || !aff_terms.is_empty();
        let others_rules = cluster.anti_affinity_pods > 0;
        if !own_rules && !others_rules {
            return;
        }
        for n in nodes {
            if !own_rules && n.anti_affinity_pods == 0 {
                continue;
            }
            for other in n.pods.values() {
                let other_ns = other.pod.metadata.namespace.as_deref().unwrap_or("");
                for t in &other.required_anti {
                    if let Some(v) = n.label(&t.topology_key) {
                        if term_selects(t, other_ns, pod) {
                            add(&mut st.existing, &t.topology_key, v);
                        }
                    }
                }
                for t in anti_terms {
                    if let Some(v) = n.label(&t.topology_key) {
                        if term_selects(t, &own_ns, other) {
                            add(&mut st.anti, &t.topology_key, v);
                        }
                    }
                }
                for (t, values) in st.affinity.iter_mut() {
                    if let Some(v) = n.label(&t.topology_key) {
                        if term_selects(t, &own_ns, other) {
                            values.insert(v.clone());
                        }
                    }
                }
            }
        }
        state.insert(NAME, Box::new(st));
    }

    fn filter_in(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let Some(st) = state.get(NAME).and_then(|s| s.downcast_ref::<State>()) else {
            return Ok(());
        };
        // One lookup per topology key, however many pods hold domains.
        let holds = |d: &Domains| {
            d.iter()
                .any(|(k, values)| node.label(k).is_some_and(|v| values.contains(v)))
        };
        if holds(&st.existing) {
            return Err(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".into(),
            ]);
        }
        if holds(&st.anti) {
            return Err(vec!["node(s) didn't match pod anti-affinity rules".into()]);
        }
        let nobody_matches = st.affinity.iter().all(|(_, v)| v.is_empty());
        for (t, values) in &st.affinity {
            let ok = match node.label(&t.topology_key) {
                Some(v) => values.contains(v) || (nobody_matches && st.self_affine),
                None => false,
            };
            if !ok {
                return Err(vec!["node(s) didn't match pod affinity rules".into()]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::cache::Cache;
    use crate::plugins::test_util::pod;

    fn cache() -> Cache {
        let mut c = Cache::default();
        for n in ["n1", "n2"] {
            c.set_node(
                serde_json::from_value(
                    json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}}),
                )
                .unwrap(),
            );
        }
        c
    }

    fn check(c: &Cache, p: &PodInfo, node: &str) -> Result<(), Vec<String>> {
        let mut s = CycleState::new();
        InterPodAffinity.pre_filter(p, &c.snapshot(), &mut s);
        InterPodAffinity.filter_in(p, c.node(node).unwrap(), &s)
    }

    #[test]
    fn anti_affinity_spreads_and_affinity_gathers() {
        let replica = |name: &str| {
            pod(
                json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}]}}}}),
            )
        };
        let mut c = cache();
        c.add_pod(Arc::new(replica("r1")), "n1", false);
        assert_eq!(
            check(&c, &replica("r2"), "n1").unwrap_err(),
            vec!["node(s) didn't satisfy existing pods anti-affinity rules".to_string()]
        );
        assert!(check(&c, &replica("r2"), "n2").is_ok());
        // A plain pod with the label is kept off n1 by r1's rule; one without it is not.
        assert!(check(
            &c,
            &pod(json!({"metadata": {"labels": {"app": "web"}}})),
            "n1"
        )
        .is_err());
        assert!(check(
            &c,
            &pod(json!({"metadata": {"labels": {"app": "db"}}})),
            "n1"
        )
        .is_ok());
        // Affinity: next to a cache pod, or anywhere for the first of a self-affine group.
        let near = |name: &str| {
            pod(
                json!({"metadata": {"name": name, "labels": {"app": "cache"}}, "spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "cache"}}}]}}}}),
            )
        };
        let c2 = cache();
        assert!(
            check(&c2, &near("first"), "n2").is_ok(),
            "the first of a group goes anywhere"
        );
        let mut c3 = cache();
        c3.add_pod(Arc::new(near("first")), "n2", false);
        assert_eq!(
            check(&c3, &near("second"), "n1").unwrap_err(),
            vec!["node(s) didn't match pod affinity rules".to_string()]
        );
        assert!(check(&c3, &near("second"), "n2").is_ok());
    }
}
