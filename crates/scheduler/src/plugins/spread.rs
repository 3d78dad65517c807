//! PodTopologySpread: `DoNotSchedule` constraints filter nodes whose domain would exceed
//! `maxSkew`; `ScheduleAnyway` ones score the emptier domains higher.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cache::{NodeInfo, PodInfo, Snapshot};
use crate::framework::{default_normalize, CycleState, Plugin};
use crate::selector;

const NAME: &str = "PodTopologySpread";

/// FNV-1a: PreFilter hashes every node's domain value each cycle, where SipHash's
/// flood resistance buys nothing (the values are node labels) and costs a third of it.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

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

type FastSet<'a> = HashSet<&'a str, std::hash::BuildHasherDefault<Fnv>>;

struct Constraint {
    max_skew: i64,
    key: String,
    hard: bool,
    selector: Option<LabelSelector>,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
}

/// Matching pods per domain, per constraint.
struct State {
    constraints: Vec<Constraint>,
    /// Matching pods per domain; a domain without any is absent (and counts 0).
    counts: Vec<HashMap<String, i64>>,
    /// Per constraint, the smallest domain count (0 below `minDomains` domains): computed
    /// once per cycle, not per node.
    mins: Vec<i64>,
    self_match: Vec<i64>,
}

fn constraints(pod: &PodInfo) -> Vec<Constraint> {
    let labels = pod.pod.metadata.labels.clone().unwrap_or_default();
    pod.pod
        .spec
        .iter()
        .flat_map(|s| s.topology_spread_constraints.iter().flatten())
        .map(|c| {
            let mut sel = c.label_selector.clone();
            // matchLabelKeys: the pod's own values join the selector.
            if let Some(s) = sel.as_mut() {
                for k in c.match_label_keys.iter().flatten() {
                    if let Some(v) = labels.get(k) {
                        s.match_labels
                            .get_or_insert_with(Default::default)
                            .insert(k.clone(), v.clone());
                    }
                }
            }
            Constraint {
                max_skew: c.max_skew as i64,
                key: c.topology_key.clone(),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                selector: sel,
                min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

/// How many pods on the node in the pod's namespace the selector picks.
fn matching(pod: &PodInfo, node: &NodeInfo, sel: &Option<LabelSelector>) -> i64 {
    let Some(sel) = sel else { return 0 };
    let ns = pod.pod.metadata.namespace.as_deref();
    node.pods
        .values()
        .filter(|p| p.pod.metadata.namespace.as_deref() == ns)
        .filter(|p| p.pod.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            selector::matches(
                sel,
                p.pod
                    .metadata
                    .labels
                    .as_ref()
                    .unwrap_or(&Default::default()),
            )
        })
        .count() as i64
}

pub struct PodTopologySpread;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let nodes = cluster.nodes;
        let cs = constraints(pod);
        if cs.is_empty() {
            return;
        }
        // Every eligible domain (borrowed: no copy per node), and the counts of the domains
        // that hold matching pods (few, usually).
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
        let mut domains: Vec<FastSet> = vec![FastSet::default(); cs.len()];
        let any_affinity = cs.iter().any(|c| c.honor_affinity);
        let any_taints = cs.iter().any(|c| c.honor_taints);
        let mut values: Vec<&String> = Vec::with_capacity(cs.len());
        'nodes: for n in nodes {
            values.clear();
            for c in &cs {
                match n.label(&c.key) {
                    Some(v) => values.push(v),
                    None => continue 'nodes,
                }
            }
            let affine = !any_affinity || super::node_affinity::matches(pod, n);
            let tolerated = !any_taints || super::TaintToleration.filter(pod, n).is_ok();
            for (i, c) in cs.iter().enumerate() {
                if (c.honor_affinity && !affine) || (c.honor_taints && !tolerated) {
                    continue;
                }
                domains[i].insert(values[i].as_str());
                let m = if n.pods.is_empty() {
                    0
                } else {
                    matching(pod, n, &c.selector)
                };
                if m > 0 {
                    *counts[i].entry(values[i].clone()).or_insert(0) += m;
                }
            }
        }
        let own = pod.pod.metadata.labels.clone().unwrap_or_default();
        let self_match = cs
            .iter()
            .map(|c| {
                c.selector
                    .as_ref()
                    .is_some_and(|s| selector::matches(s, &own)) as i64
            })
            .collect();
        let mins = cs
            .iter()
            .zip(counts.iter().zip(&domains))
            .map(|(c, (counts, domains))| {
                // Fewer domains than minDomains, or a domain without matching pods: 0.
                if domains.len() < c.min_domains || counts.len() < domains.len() {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        state.insert(
            NAME,
            Box::new(State {
                constraints: cs,
                counts,
                mins,
                self_match,
            }),
        );
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
        for (i, c) in st.constraints.iter().enumerate().filter(|(_, c)| c.hard) {
            let Some(domain) = node.label(&c.key) else {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into(),
                ]);
            };
            let min = st.mins[i];
            let here = st.counts[i].get(domain).copied().unwrap_or(0);
            if here + st.self_match[i] - min > c.max_skew {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints".into()
                ]);
            }
        }
        Ok(())
    }

    fn scores(&self) -> bool {
        true
    }

    /// Matching pods already in the node's domains, for the soft constraints (fewer wins).
    fn score_in(&self, _pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(st) = state.get(NAME).and_then(|s| s.downcast_ref::<State>()) else {
            return 0;
        };
        st.constraints
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.hard)
            .map(|(i, c)| match node.label(&c.key) {
                Some(d) => st.counts[i].get(d).copied().unwrap_or(0),
                None => 1000,
            })
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::cache::Cache;
    use crate::plugins::test_util::pod;

    #[test]
    fn skew_is_kept() {
        let mut c = Cache::default();
        for (n, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("x", "")] {
            let labels = if zone.is_empty() {
                json!({})
            } else {
                json!({"zone": zone})
            };
            c.set_node(
                serde_json::from_value(json!({"metadata": {"name": n, "labels": labels}})).unwrap(),
            );
        }
        let web = |name: &str| {
            pod(
                json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            )
        };
        c.add_pod(Arc::new(web("w1")), "a1", false);
        let p = web("w2");
        let state = {
            let mut s = CycleState::new();
            PodTopologySpread.pre_filter(&p, &c.snapshot(), &mut s);
            s
        };
        let verdict = |n: &str| PodTopologySpread.filter_in(&p, c.node(n).unwrap(), &state);
        // Zone a has 1, zone b 0: another in a would make the skew 2.
        assert_eq!(
            verdict("a2").unwrap_err(),
            vec!["node(s) didn't match pod topology spread constraints".to_string()]
        );
        assert!(verdict("b1").is_ok());
        assert!(verdict("x").unwrap_err()[0].contains("missing required label"));
    }
}
