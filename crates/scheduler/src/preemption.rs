//! DefaultPreemption (PostFilter): when a pod fits nowhere, find the node where evicting
//! the fewest, least important lower-priority pods lets it fit, as upstream chooses:
//! fewest PodDisruptionBudget violations, then the lowest highest victim priority, the
//! lowest priority sum, the fewest victims. The scheduler then nominates the node in the
//! pod's `status.nominatedNodeName` and deletes the victims.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{CycleState, PreemptionArgs, Profile};

/// The chosen node and the pods to evict there.
#[derive(Debug)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// The pods to evict, least important first.
    pub victims: Vec<Arc<PodInfo>>,
    /// Less important pods nominated to the node, whose nominations preemption ends
    /// (upstream clears them so they look for room elsewhere).
    pub cleared: Vec<Arc<PodInfo>>,
    /// How many of the evictions violate a PodDisruptionBudget.
    pub pdb_violations: usize,
}

/// A pod's priority (`spec.priority`, 0 when unset).
pub fn priority(p: &PodInfo) -> i32 {
    p.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether the pod may preempt: its policy allows it, and it is not already waiting for
/// lower-priority victims on its nominated node to go. Upstream's reason when not.
pub fn eligible(pod: &PodInfo, cache: &Cache) -> Result<(), &'static str> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.");
    }
    // This scheduler's own nomination is known before the pod's status shows it.
    let nominated = cache.nominated_node(&pod.key).or_else(|| {
        pod.pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
    });
    let Some(node) = nominated.and_then(|n| cache.node(n)) else {
        return Ok(());
    };
    let mine = priority(pod);
    let terminating =
        |p: &PodInfo| p.pod.metadata.deletion_timestamp.is_some() || cache.is_preempting(&p.key);
    let waiting = node
        .pods
        .values()
        .any(|p| terminating(p) && priority(p) < mine);
    if waiting {
        return Err("not eligible due to a terminating pod on the nominated node.");
    }
    Ok(())
}

/// Failures preemption cannot cure (evicting pods changes none of them).
fn unresolvable(reason: &str) -> bool {
    !(reason.starts_with("Insufficient")
        || reason == "Too many pods"
        || reason.contains("free ports")
        || reason.contains("anti-affinity")
        || reason == "node(s) didn't match pod topology spread constraints")
}

/// Upstream's MoreImportantPod order: higher priority first, then the longer running.
fn more_important_first(pods: &mut [Arc<PodInfo>]) {
    let started = |p: &PodInfo| {
        p.pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX)
    };
    pods.sort_by(|a, b| {
        priority(b)
            .cmp(&priority(a))
            .then(started(a).cmp(&started(b)))
    });
}

/// Splits `pods` into those whose eviction would break a budget and the rest.
fn split_by_pdb(
    pods: Vec<Arc<PodInfo>>,
    pdbs: &[PodDisruptionBudget],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = pdbs
        .iter()
        .map(|b| b.status.as_ref().map_or(0, |s| s.disruptions_allowed))
        .collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for p in pods {
        let labels = p.pod.metadata.labels.clone().unwrap_or_default();
        let mut breaks = false;
        for (i, b) in pdbs.iter().enumerate() {
            if b.metadata.namespace != p.pod.metadata.namespace {
                continue;
            }
            let Some(sel) = b.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
            if empty || !crate::selector::matches(sel, &labels) {
                continue;
            }
            let disrupted = b
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .is_some_and(|d| d.contains_key(p.pod.metadata.name.as_deref().unwrap_or("")));
            if disrupted {
                continue;
            }
            allowed[i] -= 1;
            breaks |= allowed[i] < 0;
        }
        if breaks {
            violating.push(p);
        } else {
            fine.push(p);
        }
    }
    (violating, fine)
}

/// Whether the pod's PreFilter state depends on where other pods are (its own affinity,
/// anti-affinity or spread constraints, or others' anti-affinity): then each trial of
/// victims needs it computed anew, as upstream's RemovePod/AddPod extensions update it.
fn state_depends_on_pods(pod: &PodInfo, cache: &Cache) -> bool {
    let spread = pod.pod.spec.as_ref().is_some_and(|s| {
        s.topology_spread_constraints
            .as_ref()
            .is_some_and(|c| !c.is_empty())
    });
    spread
        || !pod.required_anti.is_empty()
        || !pod.required_affinity.is_empty()
        || cache.snapshot().anti_affinity_pods > 0
}

/// The victims on one node, or None if evicting every lower-priority pod is not enough.
fn victims_on(
    profile: &Profile,
    pod: &PodInfo,
    node: &NodeInfo,
    cache: &Cache,
    state: &CycleState,
    pdbs: &[PodDisruptionBudget],
) -> Option<Candidate> {
    let nominated = cache.nominated();
    let recompute = state_depends_on_pods(pod, cache);
    let mine = priority(pod);
    let mut lower: Vec<Arc<PodInfo>> = node
        .pods
        .values()
        .filter(|p| priority(p) < mine)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    let mut trial = node.clone();
    for p in &lower {
        trial.remove(&p.key);
    }
    // Room held for pods nominated here counts, as in a normal filter pass.
    let fits = |trial: &NodeInfo| {
        let fresh;
        let state = match recompute {
            true => {
                let mut snap = cache.snapshot();
                snap.replaced = Some(trial);
                fresh = profile.pre_filter(pod, &snap);
                &fresh
            }
            false => state,
        };
        profile
            .filter_with_nominated(pod, trial, nominated, state)
            .is_ok()
    };
    if !fits(&trial) {
        return None;
    }
    more_important_first(&mut lower);
    let (violating, fine) = split_by_pdb(lower, pdbs);
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    // Reprieve as many as possible, the budget-protected ones first.
    for (p, protected) in violating
        .into_iter()
        .map(|p| (p, true))
        .chain(fine.into_iter().map(|p| (p, false)))
    {
        trial.add(p.clone());
        if !fits(&trial) {
            trial.remove(&p.key);
            pdb_violations += protected as usize;
            victims.push(p);
        }
    }
    Some(Candidate {
        node: node.name.clone(),
        victims,
        cleared: Vec::new(),
        pdb_violations,
    })
}

/// How many candidate nodes to find before choosing (upstream's DefaultPreemptionArgs:
/// by default 10% of the nodes, at least 100).
fn candidates_wanted(nodes: usize, args: PreemptionArgs) -> usize {
    (nodes * args.min_candidate_nodes_percentage / 100)
        .max(args.min_candidate_nodes_absolute)
        .min(nodes)
}

/// The best candidate among the first nodes found with victims (walked from an offset
/// that depends on the pod, as upstream starts at a random one), or upstream's
/// "preemption: …" explanation.
pub fn select(
    profile: &Profile,
    pod: &PodInfo,
    cache: &Cache,
    state: &CycleState,
    pdbs: &[PodDisruptionBudget],
) -> Result<Candidate, String> {
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<(Candidate, (usize, i32, i64, usize))> = None;
    let nodes = cache.all();
    let want = candidates_wanted(nodes.len(), profile.preemption.unwrap_or_default());
    let offset = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pod.key.hash(&mut h);
        h.finish() as usize % nodes.len().max(1)
    };
    let mut found = 0;
    // Refused at PreFilter: nothing evicted anywhere would change that.
    let refused = crate::framework::rejection(state).is_some();
    for i in 0..nodes.len() {
        if found >= want {
            break;
        }
        let n = &nodes[(offset + i) % nodes.len()];
        if refused {
            *reasons
                .entry("Preemption is not helpful for scheduling")
                .or_default() += 1;
            continue;
        }
        if let Err(why) = profile.filter(pod, n, state) {
            if why.iter().any(|r| unresolvable(r)) {
                *reasons
                    .entry("Preemption is not helpful for scheduling")
                    .or_default() += 1;
                continue;
            }
        }
        let Some(c) = victims_on(profile, pod, n, cache, state, pdbs) else {
            *reasons
                .entry("No preemption victims found for incoming pod")
                .or_default() += 1;
            continue;
        };
        let highest = c
            .victims
            .iter()
            .map(|p| priority(p))
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = c
            .victims
            .iter()
            .map(|p| priority(p) as i64 + i32::MAX as i64 + 1)
            .sum();
        found += 1;
        let rank = (c.pdb_violations, highest, sum, c.victims.len());
        if best.as_ref().is_none_or(|(_, r)| rank < *r) {
            best = Some((c, rank));
        }
    }
    if let Some((c, _)) = best {
        return Ok(c);
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::default_profile;
    use serde_json::json;

    fn pod(name: &str, prio: i32, cpu: &str) -> Arc<PodInfo> {
        let v = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"priority": prio, "containers": [{"name": "c",
                "resources": {"requests": {"cpu": cpu}}}]}});
        Arc::new(PodInfo::new(Arc::new(serde_json::from_value(v).unwrap())))
    }

    fn cluster(nodes: &[(&str, &[Arc<PodInfo>])]) -> Cache {
        let mut c = Cache::default();
        for (name, pods) in nodes {
            c.set_node(
                serde_json::from_value(json!({"metadata": {"name": name},
                    "status": {"allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"}}}))
                .unwrap(),
            );
            for p in pods.iter() {
                c.add_pod(p.clone(), name, false);
            }
        }
        c
    }

    fn run(c: &Cache, p: &PodInfo, pdbs: &[PodDisruptionBudget]) -> Result<Candidate, String> {
        let profile = default_profile();
        let state = profile.pre_filter(p, &c.snapshot());
        select(&profile, p, c, &state, pdbs)
    }

    fn names(c: &Candidate) -> Vec<String> {
        let mut v: Vec<String> = c.victims.iter().map(|p| p.key.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_node_with_the_least_important_victims_wins() {
        let c = cluster(&[
            ("a", &[pod("a1", 50, "1"), pod("a2", 50, "1")]),
            ("b", &[pod("b1", 10, "1"), pod("b2", 90, "1")]),
        ]);
        let big = pod("big", 100, "1");
        let got = run(&c, &big, &[]).unwrap();
        assert_eq!(
            (got.node.as_str(), names(&got)),
            ("b", vec!["default/b1".to_string()])
        );
        // Only what is needed goes: one 1-CPU pod frees room for a 1-CPU pod.
        let huge = pod("huge", 100, "2");
        let got = run(&c, &huge, &[]).unwrap();
        assert_eq!(got.node, "a", "victims of priority 50 beat one of 90");
        assert_eq!(names(&got).len(), 2);
    }

    #[test]
    fn equal_or_higher_priorities_are_never_victims() {
        let c = cluster(&[("a", &[pod("a1", 100, "2")])]);
        let err = run(&c, &pod("p", 100, "1"), &[]).unwrap_err();
        assert_eq!(
            err,
            "0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn budgets_steer_the_choice_and_taints_are_not_helped() {
        let c = cluster(&[("a", &[pod("a1", 10, "2")]), ("b", &[pod("b1", 10, "2")])]);
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "keep-a1", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a1"}}, "minAvailable": 1},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1,
                "expectedPods": 1}}))
        .unwrap();
        let got = run(&c, &pod("p", 100, "1"), std::slice::from_ref(&pdb)).unwrap();
        assert_eq!((got.node.as_str(), got.pdb_violations), ("b", 0));
        // With every node protected, the budget is broken where it must be.
        let c = cluster(&[("a", &[pod("a1", 10, "2")])]);
        let got = run(&c, &pod("p", 100, "1"), &[pdb]).unwrap();
        assert_eq!((got.node.as_str(), got.pdb_violations), ("a", 1));
        let mut tainted = cluster(&[]);
        tainted.set_node(
            serde_json::from_value(json!({"metadata": {"name": "t"},
                "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"}}}))
            .unwrap(),
        );
        tainted.add_pod(pod("t1", 1, "2"), "t", false);
        assert_eq!(
            run(&tainted, &pod("p", 100, "1"), &[]).unwrap_err(),
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn nominated_pods_keep_their_room_from_less_important_ones() {
        let c = cluster(&[("a", &[])]);
        let mut c = c;
        let vip = pod("vip", 100, "2");
        c.nominate(&vip.key, Some((vip.clone(), "a")));
        let profile = default_profile();
        let node = c.node("a").unwrap();
        let low = pod("low", 10, "1");
        let state = profile.pre_filter(&low, &c.snapshot());
        assert_eq!(
            profile.filter_with_nominated(&low, node, c.nominated(), &state),
            Err(vec!["Insufficient cpu".to_string()])
        );
        let higher = pod("higher", 200, "1");
        assert_eq!(
            profile.filter_with_nominated(&higher, node, c.nominated(), &state),
            Ok(())
        );
        assert_eq!(
            profile.filter_with_nominated(&vip, node, c.nominated(), &state),
            Ok(()),
            "not against itself"
        );
        c.nominate(&vip.key, None);
        assert!(c.nominated().is_empty());
    }

    #[test]
    fn anti_affinity_victims_are_found_with_the_state_recomputed() {
        // Room enough on both nodes; the incoming pod's anti-affinity rejects the
        // low-priority "noisy" pods. Evicting one on a makes a fit; b's is important.
        let labelled = |name: &str, prio: i32| {
            let v = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "noisy"}},
                "spec": {"priority": prio, "containers": [{"name": "c"}]}});
            Arc::new(PodInfo::new(Arc::new(serde_json::from_value(v).unwrap())))
        };
        let mut c = Cache::default();
        for n in ["a", "b"] {
            c.set_node(
                serde_json::from_value(
                    json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}},
                    "status": {"allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"}}}),
                )
                .unwrap(),
            );
        }
        c.add_pod(labelled("quiet-neighbour", 10), "a", false);
        c.add_pod(labelled("important", 1000), "b", false);
        let v = json!({"metadata": {"name": "picky", "namespace": "default"}, "spec": {"priority": 100,
            "containers": [{"name": "c"}], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "noisy"}}}]}}}});
        let picky = PodInfo::new(Arc::new(serde_json::from_value(v).unwrap()));
        let got = run(&c, &picky, &[]).unwrap();
        assert_eq!(got.node, "a");
        assert_eq!(names(&got), vec!["default/quiet-neighbour"]);
    }
}
