//! InterPodAffinity: required pod affinity and anti-affinity of the incoming pod, and the
//! required anti-affinity of the pods already placed, by topology domain (Filter); the
//! preferred terms of both, and the placed pods' required affinity, as scores.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::PodAffinityTerm;

use crate::cache::{LabelKey, NodeInfo, PodInfo, Snapshot};
use crate::framework::{CycleState, Plugin, MAX_SCORE};
use crate::selector;

const NAME: &str = "InterPodAffinity";
/// PreScore's state (the filter's is under NAME).
const SCORE: &str = "InterPodAffinity/score";

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

/// Topology values by topology key (a node is in them if its label for a key is): few
/// keys, so a list.
type Domains = Vec<(LabelKey, Values)>;

/// Topology values, hashed with FNV (looked up for every node).
type Values = HashSet<String, super::FastHash>;

fn add(d: &mut Domains, key: &LabelKey, value: &String) {
    match d.iter_mut().find(|(k, _)| k == key) {
        Some((_, values)) => {
            if !values.contains(value) {
                values.insert(value.clone());
            }
        }
        None => {
            let mut values = Values::default();
            values.insert(value.clone());
            d.push((key.clone(), values));
        }
    }
}

struct State {
    /// Domains where the incoming pod's anti-affinity finds a pod.
    anti: Domains,
    /// Domains where a placed pod's anti-affinity rejects the incoming pod.
    existing: Domains,
    /// Per affinity term: the values holding a matching pod.
    affinity: Vec<(PodAffinityTerm, Values)>,
    /// The incoming pod matches all its own affinity terms (it may start a group alone).
    self_affine: bool,
}

/// The plugin with its args.
pub struct InterPodAffinity {
    /// The score an incoming pod gets where a placed pod's required affinity selects it
    /// (`hardPodAffinityWeight`, default 1; 0 turns it off).
    hard_weight: i64,
    /// `ignorePreferredTermsOfExistingPods`: placed pods' terms score nothing unless the
    /// incoming pod has preferred terms of its own.
    ignore_existing: bool,
}

impl Default for InterPodAffinity {
    fn default() -> Self {
        InterPodAffinity {
            hard_weight: 1,
            ignore_existing: false,
        }
    }
}

impl InterPodAffinity {
    /// From the plugin's `pluginConfig` args.
    pub fn from_args(args: &serde_json::Value) -> Self {
        InterPodAffinity {
            hard_weight: args["hardPodAffinityWeight"].as_i64().unwrap_or(1),
            ignore_existing: args["ignorePreferredTermsOfExistingPods"]
                .as_bool()
                .unwrap_or(false),
        }
    }
}

/// PreScore's sums: topology key → domain → score.
struct Scores(HashMap<String, HashMap<String, i64>>);

impl Scores {
    /// Adds `weight` to the domain of `node` for `term`'s key, if `term` (written by a pod
    /// in `owner_ns`) selects `target`.
    fn add(
        &mut self,
        term: &PodAffinityTerm,
        owner_ns: &str,
        target: &PodInfo,
        node: &NodeInfo,
        weight: i64,
    ) {
        if weight == 0 || !term_selects(term, owner_ns, target) {
            return;
        }
        if let Some(v) = node.label(&term.topology_key) {
            *self
                .0
                .entry(term.topology_key.clone())
                .or_default()
                .entry(v.clone())
                .or_default() += weight;
        }
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let own_ns = pod.pod.metadata.namespace.clone().unwrap_or_default();
        let anti_terms = &pod.required_anti;
        let anti_keys = &pod.required_anti_keys;
        let aff_terms = &pod.required_affinity;
        let aff_keys: Vec<LabelKey> = aff_terms
            .iter()
            .map(|t| LabelKey::new(&t.topology_key))
            .collect();
        let mut st = State {
            anti: Domains::new(),
            existing: Domains::new(),
            affinity: aff_terms
                .iter()
                .map(|t| (t.clone(), Values::default()))
                .collect(),
            self_affine: aff_terms.iter().all(|t| term_selects(t, &own_ns, pod)),
        };
        let own_rules = !anti_terms.is_empty() || !aff_terms.is_empty();
        let others_rules = cluster.anti_affinity_pods > 0;
        if !own_rules && !others_rules {
            return;
        }
        for n in cluster.each_node() {
            if !own_rules && n.anti_affinity_pods == 0 {
                continue;
            }
            for other in n.pods.values() {
                let other_ns = other.pod.metadata.namespace.as_deref().unwrap_or("");
                for (t, k) in other.required_anti.iter().zip(&other.required_anti_keys) {
                    if let Some(v) = n.label_at(k) {
                        if term_selects(t, other_ns, pod) {
                            add(&mut st.existing, k, v);
                        }
                    }
                }
                for (t, k) in anti_terms.iter().zip(anti_keys) {
                    if let Some(v) = n.label_at(k) {
                        if term_selects(t, &own_ns, other) {
                            add(&mut st.anti, k, v);
                        }
                    }
                }
                for ((t, values), k) in st.affinity.iter_mut().zip(&aff_keys) {
                    if let Some(v) = n.label_at(k) {
                        if !values.contains(v) && term_selects(t, &own_ns, other) {
                            values.insert(v.clone());
                        }
                    }
                }
            }
        }
        state.insert(NAME, Box::new(st));
    }

    fn filter_state(&self) -> Option<&'static str> {
        Some(NAME)
    }

    fn score_state(&self) -> Option<&'static str> {
        Some(SCORE)
    }

    fn filter_in(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let Some(st) = state.read::<State>(NAME) else {
            return Ok(());
        };
        // One lookup per topology key, however many pods hold domains.
        let holds = |d: &Domains| {
            d.iter()
                .any(|(k, values)| node.label_at(k).is_some_and(|v| values.contains(v)))
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

    fn scores(&self) -> bool {
        true
    }

    fn pre_score(
        &self,
        pod: &PodInfo,
        _feasible: &[&NodeInfo],
        cluster: &Snapshot,
        state: &mut CycleState,
    ) {
        let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti.is_empty();
        if !own && (self.ignore_existing || cluster.affinity_pods == 0) {
            return;
        }
        let own_ns = pod.pod.metadata.namespace.as_deref().unwrap_or("");
        let mut sc = Scores(HashMap::new());
        for n in cluster.each_node() {
            let unlabelled = n.node.metadata.labels.as_ref().is_none_or(|l| l.is_empty());
            if unlabelled || (!own && n.affinity_pods == 0) {
                continue;
            }
            for other in n.pods.values() {
                if !own && !other.has_affinity() {
                    continue;
                }
                for w in &pod.preferred_affinity {
                    sc.add(&w.pod_affinity_term, own_ns, other, n, w.weight as i64);
                }
                for w in &pod.preferred_anti {
                    sc.add(&w.pod_affinity_term, own_ns, other, n, -(w.weight as i64));
                }
                let other_ns = other.pod.metadata.namespace.as_deref().unwrap_or("");
                for t in &other.required_affinity {
                    sc.add(t, other_ns, pod, n, self.hard_weight);
                }
                for w in &other.preferred_affinity {
                    sc.add(&w.pod_affinity_term, other_ns, pod, n, w.weight as i64);
                }
                for w in &other.preferred_anti {
                    sc.add(&w.pod_affinity_term, other_ns, pod, n, -(w.weight as i64));
                }
            }
        }
        state.insert(SCORE, Box::new(sc));
    }

    /// The sums of the domains the node is in.
    fn score_in(&self, _pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let Some(sc) = state.read::<Scores>(SCORE) else {
            return 0;
        };
        sc.0.iter()
            .filter_map(|(k, values)| values.get(node.label(k)?))
            .sum()
    }

    /// Upstream's min-max scaling: the lowest sum gets 0, the highest MAX_SCORE.
    fn normalize(&self, scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for s in scores.iter_mut() {
            *s = if max > min {
                MAX_SCORE * (*s - min) / (max - min)
            } else {
                0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::cache::Cache;
    use crate::plugins::test_util::{hosts, pod, scores};

    fn cache() -> Cache {
        hosts(&["n1", "n2"])
    }

    fn check(c: &Cache, p: &PodInfo, node: &str) -> Result<(), Vec<String>> {
        let mut s = CycleState::new();
        let plugin = InterPodAffinity::default();
        plugin.pre_filter(p, &c.snapshot(), &mut s);
        plugin.filter_in(p, c.node(node).unwrap(), &s)
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

    #[test]
    fn preferred_terms_score_both_ways() {
        let mut c = cache();
        c.set_node(
            serde_json::from_value(
                json!({"metadata": {"name": "n3", "labels": {"kubernetes.io/hostname": "n3"}}}),
            )
            .unwrap(),
        );
        let labelled = |name: &str, app: &str| {
            pod(json!({"metadata": {"name": name, "labels": {"app": app}}}))
        };
        c.add_pod(Arc::new(labelled("cache", "cache")), "n1", false);
        c.add_pod(Arc::new(labelled("web", "web")), "n2", false);
        let term = |app: &str, w: i32| {
            json!({"weight": w, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": app}}}})
        };
        let p = pod(
            json!({"metadata": {"name": "in", "labels": {"app": "in"}}, "spec": {"affinity": {
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [term("cache", 80)]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [term("web", 50)]}}}}),
        );
        let plugin = InterPodAffinity::default();
        let got = scores(&plugin, &c, &p);
        // Raw sums 80, -50, 0: scaled between the lowest and the highest.
        assert_eq!(
            got,
            vec![("n1".into(), 100), ("n2".into(), 0), ("n3".into(), 38)]
        );
        // A plain pod: no terms anywhere, no scores.
        let plain = labelled("plain", "in");
        assert!(scores(&plugin, &c, &plain).iter().all(|(_, s)| *s == 0));
        // A placed pod whose preferred anti-affinity selects the incoming pod pushes it
        // away; one whose required affinity selects it pulls (hardPodAffinityWeight).
        let placed = pod(json!({"metadata": {"name": "picky"}, "spec": {"affinity": {
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [term("in", 10)]}}}}));
        c.add_pod(Arc::new(placed), "n1", false);
        let host = |n: &str| json!({"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": n}}});
        let friend = pod(
            json!({"metadata": {"name": "friend"}, "spec": {"affinity": {
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [host("in")]}}}}),
        );
        c.add_pod(Arc::new(friend), "n3", false);
        assert_eq!(
            scores(&plugin, &c, &plain),
            vec![("n1".into(), 0), ("n2".into(), 90), ("n3".into(), 100)],
            "raw -10, 0, 1"
        );
        let ignoring =
            InterPodAffinity::from_args(&json!({"ignorePreferredTermsOfExistingPods": true}));
        assert!(scores(&ignoring, &c, &plain).iter().all(|(_, s)| *s == 0));
        let no_hard = InterPodAffinity::from_args(&json!({"hardPodAffinityWeight": 0}));
        assert_eq!(
            scores(&no_hard, &c, &plain),
            vec![("n1".into(), 0), ("n2".into(), 100), ("n3".into(), 100)]
        );
    }
}
