//! PodTopologySpread: `DoNotSchedule` constraints filter nodes whose domain would exceed
//! `maxSkew`; `ScheduleAnyway` ones score the emptier domains higher. A pod without
//! constraints of its own gets the cluster's default constraints over the pods of its
//! Services and controller.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cache::{LabelKey, NodeInfo, PodInfo, Snapshot};
use crate::framework::{CycleState, Plugin, MAX_SCORE};
use crate::selector;

const NAME: &str = "PodTopologySpread";
/// PreScore's state (the filter's is under NAME).
const SCORE: &str = "PodTopologySpread/score";
const HOSTNAME: &str = "kubernetes.io/hostname";

struct Constraint {
    max_skew: i64,
    key: String,
    /// The key resolved for the node lookups.
    lk: LabelKey,
    /// The key is the host name: every node is its own domain, and its count is the
    /// node's own matching pods (upstream special-cases it the same way).
    host: bool,
    hard: bool,
    selector: Option<LabelSelector>,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
}

/// Matching pods per domain, per constraint (none for host-name constraints: a node's
/// count is its own pods).
struct State {
    constraints: Vec<Constraint>,
    /// Nodes need every constraint's key to count (not so for the system defaults, which
    /// name a zone key that many clusters lack).
    require_all: bool,
    /// Matching pods per domain, by the domain's number (the cache's `Domains` for the
    /// well-known keys, `others` for the rest); ABSENT for a number that is no eligible
    /// domain.
    counts: Vec<Vec<i64>>,
    /// For constraints on other keys: the numbers this cycle gave their values.
    others: Vec<HashMap<String, usize>>,
    /// The cache's tracked count of each constraint's selector, once there is one.
    slots: Vec<Option<usize>>,
    /// Per constraint, the smallest domain count (0 below `minDomains` domains): computed
    /// once per cycle, not per node.
    mins: Vec<i64>,
    self_match: Vec<i64>,
}

/// The constraints of a spec (with the pod's `matchLabelKeys` values in the selectors).
fn constraints(pod: &PodInfo, specs: &[TopologySpreadConstraint]) -> Vec<Constraint> {
    let labels = pod.pod.metadata.labels.clone().unwrap_or_default();
    specs
        .iter()
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
                lk: LabelKey::new(&c.topology_key),
                host: c.topology_key == HOSTNAME,
                hard: c.when_unsatisfiable == "DoNotSchedule",
                selector: sel,
                min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

/// A domain number that no eligible node has.
const ABSENT: i64 = i64::MIN;

/// How many pods on the node in the pod's namespace the selector picks: the cache's
/// tracked count when it keeps one.
fn matching(
    pod: &PodInfo,
    node: &NodeInfo,
    sel: &Option<LabelSelector>,
    slot: Option<usize>,
) -> i64 {
    let Some(sel) = sel else { return 0 };
    if let (Some(i), Some(counts)) = (slot, &node.tracked) {
        return counts[i] as i64;
    }
    if node.pods.is_empty() {
        return 0;
    }
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

/// The plugin with the cluster's default constraints.
pub struct PodTopologySpread {
    defaults: Vec<TopologySpreadConstraint>,
    /// `defaultingType: System` (upstream's built-in defaults).
    system: bool,
}

impl Default for PodTopologySpread {
    /// `defaultingType: System`: spread over hosts (maxSkew 3) and zones (maxSkew 5),
    /// `ScheduleAnyway`.
    fn default() -> Self {
        let soft = |key: &str, max_skew| TopologySpreadConstraint {
            topology_key: key.into(),
            max_skew,
            when_unsatisfiable: "ScheduleAnyway".into(),
            ..Default::default()
        };
        PodTopologySpread {
            defaults: vec![soft(HOSTNAME, 3), soft("topology.kubernetes.io/zone", 5)],
            system: true,
        }
    }
}

impl PodTopologySpread {
    /// From the plugin's `pluginConfig` args: `defaultingType: List` takes
    /// `defaultConstraints` (none: no default spreading).
    pub fn from_args(args: &serde_json::Value) -> Self {
        if args["defaultingType"].as_str() != Some("List") {
            return Self::default();
        }
        PodTopologySpread {
            defaults: serde_json::from_value(args["defaultConstraints"].clone())
                .unwrap_or_default(),
            system: false,
        }
    }

    /// The pod's own constraints, or else the defaults over the selector of its Services
    /// and controller (none when nothing selects it); whether nodes need all their keys.
    fn constraints_of(&self, pod: &PodInfo, cluster: &Snapshot) -> (Vec<Constraint>, bool) {
        let own = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or(&[]);
        if !own.is_empty() || self.defaults.is_empty() {
            return (constraints(pod, own), true);
        }
        let Some(sel) = cluster.owners.default_selector(&pod.pod) else {
            return (Vec::new(), true);
        };
        let mut cs = constraints(pod, &self.defaults);
        for c in cs.iter_mut() {
            c.selector = Some(sel.clone());
        }
        (cs, !self.system)
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let (cs, require_all) = self.constraints_of(pod, cluster);
        if cs.is_empty() {
            return;
        }
        // Per constraint, the matching pods of every eligible domain, by number; host-name
        // constraints only count eligible nodes and look for the smallest count (0 as soon
        // as one node has none).
        let mut counts: Vec<Vec<i64>> = cs
            .iter()
            .map(|c| match c.lk {
                LabelKey::Known(k) if !c.host => vec![ABSENT; cluster.domains.len(k)],
                _ => Vec::new(),
            })
            .collect();
        let mut others: Vec<HashMap<String, usize>> = vec![HashMap::new(); cs.len()];
        let mut domains = vec![0usize; cs.len()];
        let mut hosts = vec![0usize; cs.len()];
        let mut host_min: Vec<Option<i64>> = vec![None; cs.len()];
        let any_affinity =
            cs.iter().any(|c| c.honor_affinity) && super::node_affinity::constrains(pod);
        let any_taints = cs.iter().any(|c| c.honor_taints);
        // Constraints with the same selector share one count per node, and the cache's
        // tracked count of it when there is one.
        let same_as: Vec<usize> = (0..cs.len())
            .map(|i| {
                (0..i)
                    .find(|j| cs[*j].selector == cs[i].selector)
                    .unwrap_or(i)
            })
            .collect();
        let ns = pod.pod.metadata.namespace.as_deref().unwrap_or("");
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(cs.len());
        for i in 0..cs.len() {
            let slot = match same_as[i] == i {
                true => cs[i]
                    .selector
                    .as_ref()
                    .and_then(|s| cluster.tracked.find(ns, s)),
                false => slots[same_as[i]],
            };
            slots.push(slot);
        }
        let mut ids: Vec<Option<usize>> = Vec::with_capacity(cs.len());
        let mut memo: Vec<Option<i64>> = vec![None; cs.len()];
        for n in cluster.each_node() {
            ids.clear();
            for (i, c) in cs.iter().enumerate() {
                ids.push(match &c.lk {
                    LabelKey::Known(k) => n.domain_at(*k).map(|d| d as usize),
                    LabelKey::Other(key) => n.label(key).map(|v| {
                        let next = others[i].len();
                        *others[i].entry(v.clone()).or_insert(next)
                    }),
                });
            }
            if ids.iter().all(|v| v.is_none()) || (require_all && ids.contains(&None)) {
                continue;
            }
            let affine = !any_affinity || super::node_affinity::matches(pod, n);
            let tolerated = !any_taints || super::TaintToleration.filter(pod, n).is_ok();
            memo.iter_mut().for_each(|m| *m = None);
            let mut count = |i: usize| -> i64 {
                let g = same_as[i];
                *memo[g].get_or_insert_with(|| matching(pod, n, &cs[g].selector, slots[g]))
            };
            for (i, c) in cs.iter().enumerate() {
                let Some(d) = ids[i] else { continue };
                if (c.honor_affinity && !affine) || (c.honor_taints && !tolerated) {
                    continue;
                }
                if c.host {
                    hosts[i] += 1;
                    if host_min[i] != Some(0) {
                        let m = count(i);
                        host_min[i] = Some(host_min[i].map_or(m, |x| x.min(m)));
                    }
                    continue;
                }
                if counts[i].len() <= d {
                    counts[i].resize(d + 1, ABSENT);
                }
                let m = count(i);
                let slot = &mut counts[i][d];
                if *slot == ABSENT {
                    *slot = 0;
                    domains[i] += 1;
                }
                *slot += m;
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
            .enumerate()
            .map(|(i, c)| {
                // Fewer domains than minDomains, or a domain without matching pods: 0.
                if c.host {
                    return match hosts[i] < c.min_domains {
                        true => 0,
                        false => host_min[i].unwrap_or(0),
                    };
                }
                match domains[i] < c.min_domains {
                    true => 0,
                    false => counts[i]
                        .iter()
                        .copied()
                        .filter(|c| *c != ABSENT)
                        .min()
                        .unwrap_or(0),
                }
            })
            .collect();
        state.insert(
            NAME,
            Box::new(State {
                constraints: cs,
                require_all,
                counts,
                others,
                slots,
                mins,
                self_match,
            }),
        );
    }

    fn filter_state(&self) -> Option<&'static str> {
        Some(NAME)
    }

    fn score_state(&self) -> Option<&'static str> {
        Some(SCORE)
    }

    fn filter_in(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let Some(st) = state.read::<State>(NAME) else {
            return Ok(());
        };
        for (i, c) in st.constraints.iter().enumerate().filter(|(_, c)| c.hard) {
            if node.label_at(&c.lk).is_none() {
                return Err(vec![
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into(),
                ]);
            }
            let min = st.mins[i];
            let here = st.count(i, pod, node);
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

    /// Upstream's PreScore: nodes lacking a key are left out (unless the system defaults
    /// apply); each soft constraint is weighted by the log of its domain count among the
    /// feasible nodes, so spreading over many hosts weighs more than over few zones.
    fn pre_score(
        &self,
        _pod: &PodInfo,
        feasible: &[&NodeInfo],
        _cluster: &Snapshot,
        state: &mut CycleState,
    ) {
        let Some(st) = state.read::<State>(NAME) else {
            return;
        };
        let soft: Vec<usize> = (0..st.constraints.len())
            .filter(|i| !st.constraints[*i].hard)
            .collect();
        if soft.is_empty() {
            return;
        }
        let mut ignored = HashSet::new();
        let mut domains: Vec<HashSet<&str>> = vec![HashSet::new(); st.constraints.len()];
        let mut hosts = 0usize;
        for n in feasible {
            let keys = || soft.iter().map(|i| n.label_at(&st.constraints[*i].lk));
            if st.require_all && keys().any(|v| v.is_none()) {
                ignored.insert(n.name.clone());
                continue;
            }
            hosts += 1;
            for i in &soft {
                let v = n
                    .label_at(&st.constraints[*i].lk)
                    .map_or("", |v| v.as_str());
                domains[*i].insert(v);
            }
        }
        let weights = st
            .constraints
            .iter()
            .zip(&domains)
            .map(|(c, d)| {
                let size = if c.key == HOSTNAME { hosts } else { d.len() };
                ((size + 2) as f64).ln()
            })
            .collect();
        state.insert(SCORE, Box::new(ScoreState { weights, ignored }));
    }

    /// Matching pods in the node's domains, each times its constraint's weight, plus
    /// `maxSkew - 1` (fewer wins); -1 marks a node left out.
    fn score_in(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        let (Some(st), Some(sc)) = (state.read::<State>(NAME), state.read::<ScoreState>(SCORE))
        else {
            return 0;
        };
        if sc.ignored.contains(&node.name) {
            return IGNORED;
        }
        let score: f64 = st
            .constraints
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.hard)
            .filter_map(|(i, c)| {
                node.label_at(&c.lk)?;
                let count = st.count(i, pod, node);
                Some(count as f64 * sc.weights[i] + (c.max_skew - 1) as f64)
            })
            .sum();
        score.round() as i64
    }

    /// The lowest sum gets MAX_SCORE; nodes left out get 0.
    fn normalize(&self, scores: &mut [i64]) {
        let valid = || scores.iter().copied().filter(|s| *s != IGNORED);
        let (min, max) = (valid().min().unwrap_or(0), valid().max().unwrap_or(0));
        for s in scores.iter_mut() {
            *s = match *s {
                IGNORED => 0,
                _ if max == 0 => MAX_SCORE,
                v => MAX_SCORE * (max + min - v) / max,
            };
        }
    }
}

impl State {
    /// Matching pods in the node's domain for constraint `i` (0 for a node without the
    /// key).
    fn count(&self, i: usize, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let c = &self.constraints[i];
        if c.host {
            return matching(pod, node, &c.selector, self.slots[i]);
        }
        let domain = match &c.lk {
            LabelKey::Known(k) => node.domain_at(*k).map(|d| d as usize),
            LabelKey::Other(key) => node.label(key).and_then(|v| self.others[i].get(v).copied()),
        };
        domain
            .and_then(|d| self.counts[i].get(d))
            .map_or(0, |n| (*n).max(0))
    }
}

/// The raw score of a node that lacks a constraint's key.
const IGNORED: i64 = -1;

/// PreScore's weights per constraint and the feasible nodes left out.
struct ScoreState {
    weights: Vec<f64>,
    ignored: HashSet<String>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::cache::Cache;
    use crate::plugins::test_util::{pod, scores};

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
        // The first cycle counts the pods; the second reads the cache's tracked counts.
        for tracked in [false, true] {
            c.track_wanted();
            let state = {
                let mut s = CycleState::new();
                PodTopologySpread::default().pre_filter(&p, &c.snapshot(), &mut s);
                s
            };
            assert_eq!(
                state.read::<State>(NAME).unwrap().slots[0].is_some(),
                tracked
            );
            let verdict =
                |n: &str| PodTopologySpread::default().filter_in(&p, c.node(n).unwrap(), &state);
            // Zone a has 1, zone b 0: another in a would make the skew 2.
            assert_eq!(
                verdict("a2").unwrap_err(),
                vec!["node(s) didn't match pod topology spread constraints".to_string()]
            );
            assert!(verdict("b1").is_ok());
            assert!(verdict("x").unwrap_err()[0].contains("missing required label"));
        }
    }

    #[test]
    fn soft_and_default_constraints_score() {
        let mut c = Cache::default();
        for (n, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("x", "")] {
            let mut labels = json!({"kubernetes.io/hostname": n});
            if !zone.is_empty() {
                labels["topology.kubernetes.io/zone"] = zone.into();
            }
            c.set_node(
                serde_json::from_value(json!({"metadata": {"name": n, "labels": labels}})).unwrap(),
            );
        }
        let web = |name: &str, spec: serde_json::Value| {
            pod(
                json!({"metadata": {"name": name, "labels": {"app": "web"}, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
                "spec": spec}),
            )
        };
        c.add_pod(Arc::new(web("w1", json!({}))), "a1", false);
        c.add_pod(Arc::new(web("w2", json!({}))), "a1", false);
        // Own soft constraint on zones: zone a has 2, zone b none; x has no zone at all.
        let soft = web(
            "w3",
            json!({"topologySpreadConstraints": [{"maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        );
        let plugin = PodTopologySpread::default();
        // Two zones: weight ln(4); a: round(2 ln 4) = 3, b: 0 → a 0, b 100, x left out.
        assert_eq!(
            scores(&plugin, &c, &soft),
            vec![
                ("a1".into(), 0),
                ("a2".into(), 0),
                ("b1".into(), 100),
                ("x".into(), 0)
            ]
        );
        // No constraints of its own: nothing selects it yet, so no default spreading.
        let plain = web("w4", json!({}));
        assert!(scores(&plugin, &c, &plain).iter().all(|(_, s)| *s == 100));
        // Its ReplicaSet's selector: hosts (maxSkew 3) and zones (maxSkew 5) spread it,
        // and x (no zone) still scores by its host.
        c.owners.set_controller(
            "ReplicaSet",
            "default",
            "web",
            Some(serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap()),
        );
        let got = scores(&plugin, &c, &plain);
        let of = |n: &str| got.iter().find(|(m, _)| m == n).unwrap().1;
        assert!(of("a1") < of("a2"), "{got:?}");
        assert!(of("a2") < of("b1"), "{got:?}");
        assert!(of("x") > of("a1"), "{got:?}");
        // defaultingType List without constraints: no default spreading.
        let listed = PodTopologySpread::from_args(&json!({"defaultingType": "List"}));
        assert!(scores(&listed, &c, &plain).iter().all(|(_, s)| *s == 100));
    }
}
