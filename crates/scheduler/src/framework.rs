//! The scheduling framework's filter and score extension points: plugins, their weights,
//! and one scheduling cycle over the cached nodes (`percentageOfNodesToScore` included).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use std::sync::Arc;

use crate::cache::{NodeInfo, PodInfo, Snapshot};

/// The highest score a plugin gives a node (upstream's MaxNodeScore).
pub const MAX_SCORE: i64 = 100;

/// What plugins compute once per scheduling cycle (PreFilter, PreScore) for their Filter
/// and Score, by key: a handful of entries, found by a short scan (each node's Filter and
/// Score look them up, so a hash per lookup would cost more than the scan).
#[derive(Default)]
pub struct CycleState {
    entries: Vec<(&'static str, Box<dyn Any + Send + Sync>)>,
}

impl CycleState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry under `key`.
    pub fn get(&self, key: &str) -> Option<&(dyn Any + Send + Sync)> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The entry under `key`, if it is a `T`.
    pub fn read<T: 'static>(&self, key: &str) -> Option<&T> {
        self.get(key).and_then(|v| v.downcast_ref::<T>())
    }

    /// Whether there is an entry under `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn insert(&mut self, key: &'static str, value: Box<dyn Any + Send + Sync>) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key, value)),
        }
    }
}

/// Where a PreFilter that rejects the pod outright leaves its reason in the cycle state.
const REJECTED: &str = "PreFilter/rejected";

/// Rejects the pod for every node at PreFilter (upstream's UnschedulableAndUnresolvable
/// PreFilter status): the message stands alone in the FailedScheduling event.
pub fn reject(state: &mut CycleState, msg: String) {
    state.insert(REJECTED, Box::new(msg));
}

/// The PreFilter rejection recorded in the cycle's state, if any.
pub fn rejection(state: &CycleState) -> Option<&str> {
    state.read::<String>(REJECTED).map(String::as_str)
}

/// A scheduling plugin: PreFilter, Filter and/or Score.
pub trait Plugin: Send + Sync {
    /// Upstream's plugin name (`NodeResourcesFit`).
    fn name(&self) -> &'static str;

    /// Computes what the plugin's Filter and Score need across all nodes.
    fn pre_filter(&self, _pod: &PodInfo, _cluster: &Snapshot, _state: &mut CycleState) {}

    /// The state key without which this plugin's Filter has nothing to do (its PreFilter
    /// stores it only for the pods it concerns): without it the Filter is skipped for the
    /// cycle, as upstream skips a plugin whose PreFilter says Skip.
    fn filter_state(&self) -> Option<&'static str> {
        None
    }

    /// Likewise for Score, after PreScore.
    fn score_state(&self) -> Option<&'static str> {
        None
    }

    /// Filter with the cycle's state (stateless plugins implement `filter`).
    fn filter_in(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        _state: &CycleState,
    ) -> Result<(), Vec<String>> {
        self.filter(pod, node)
    }

    /// Computes what the plugin's Score needs, once the feasible nodes are known.
    fn pre_score(
        &self,
        _pod: &PodInfo,
        _feasible: &[&NodeInfo],
        _cluster: &Snapshot,
        _state: &mut CycleState,
    ) {
    }

    /// Score with the cycle's state (stateless plugins implement `score`).
    fn score_in(&self, pod: &PodInfo, node: &NodeInfo, _state: &CycleState) -> i64 {
        self.score(pod, node)
    }

    /// Whether the pod may run on the node; the reasons why not.
    fn filter(&self, _pod: &PodInfo, _node: &NodeInfo) -> Result<(), Vec<String>> {
        Ok(())
    }

    /// Whether this plugin scores.
    fn scores(&self) -> bool {
        false
    }

    /// A node's raw score.
    fn score(&self, _pod: &PodInfo, _node: &NodeInfo) -> i64 {
        0
    }

    /// Maps raw scores onto 0..=MAX_SCORE (in place); the default keeps them.
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Scales scores so the best is MAX_SCORE; `reverse` makes the lowest best.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_SCORE * *s / max;
        *s = if reverse { MAX_SCORE - v } else { v };
    }
}

/// A plugin in a profile: whether its Filter and Score run, and the score's weight.
#[derive(Clone)]
pub struct Entry {
    /// The plugin.
    pub plugin: Arc<dyn Plugin>,
    /// Whether its Filter runs.
    pub filter: bool,
    /// Whether its Score runs.
    pub score: bool,
    /// Its score's weight.
    pub weight: i64,
}

impl Entry {
    /// A plugin at every extension point it implements.
    pub fn new(plugin: Arc<dyn Plugin>, weight: i64) -> Entry {
        Entry {
            score: plugin.scores(),
            plugin,
            filter: true,
            weight,
        }
    }
}

/// A profile: the plugins that run and the weight of each scorer.
#[derive(Clone)]
pub struct Profile {
    /// The `schedulerName` pods name to be scheduled by it.
    pub scheduler_name: String,
    /// Its plugins, in order.
    pub plugins: Vec<Entry>,
    /// Percentage of feasible nodes to find before scoring (0: upstream's adaptive default).
    pub percentage_of_nodes_to_score: u32,
    /// DefaultPreemption (PostFilter), unless the profile disables it.
    pub preemption: Option<PreemptionArgs>,
}

/// DefaultPreemption's args: how many candidate nodes to find before choosing one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreemptionArgs {
    /// `minCandidateNodesPercentage` (default 10).
    pub min_candidate_nodes_percentage: usize,
    /// `minCandidateNodesAbsolute` (default 100).
    pub min_candidate_nodes_absolute: usize,
}

impl Default for PreemptionArgs {
    fn default() -> Self {
        PreemptionArgs {
            min_candidate_nodes_percentage: 10,
            min_candidate_nodes_absolute: 100,
        }
    }
}

impl PreemptionArgs {
    /// From the plugin's `pluginConfig` args.
    pub fn from_args(args: &serde_json::Value) -> Self {
        let d = Self::default();
        let get = |k: &str, d: usize| args[k].as_u64().map_or(d, |v| v as usize);
        PreemptionArgs {
            min_candidate_nodes_percentage: get(
                "minCandidateNodesPercentage",
                d.min_candidate_nodes_percentage,
            ),
            min_candidate_nodes_absolute: get(
                "minCandidateNodesAbsolute",
                d.min_candidate_nodes_absolute,
            ),
        }
    }
}

/// Why a pod fits nowhere: node counts per reason.
#[derive(Debug, Default, PartialEq)]
pub struct Diagnosis {
    /// How many nodes were looked at.
    pub nodes: usize,
    /// How many nodes each reason rejected.
    pub reasons: BTreeMap<String, usize>,
    /// A PreFilter's rejection, which stands for every node.
    pub pre_filter: Option<String>,
}

impl Diagnosis {
    /// Upstream's FailedScheduling message: "0/3 nodes are available: 1 Insufficient cpu,
    /// 2 node(s) had untolerated taint {k: v}."
    pub fn message(&self) -> String {
        if self.nodes == 0 {
            return "no nodes available to schedule pods".into();
        }
        if let Some(m) = &self.pre_filter {
            return format!("0/{} nodes are available: {m}.", self.nodes);
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        format!(
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

/// How many feasible nodes to look for among `all` (upstream's adaptive percentage:
/// 50% minus 1% per 125 nodes, at least 5%, and never fewer than 100 nodes).
pub fn nodes_to_find(all: usize, percentage: u32) -> usize {
    const MIN: usize = 100;
    if all < MIN {
        return all;
    }
    let pct = if percentage == 0 {
        (50 - (all / 125) as i64).max(5) as usize
    } else {
        (percentage as usize).min(100)
    };
    (all * pct / 100).max(MIN)
}

impl Profile {
    /// Runs the filters on `nodes` (starting at `start`, wrapping, as upstream rotates),
    /// each with the pods nominated to it that are at least as important as `pod`; the
    /// feasible ones, or the diagnosis.
    pub fn find_feasible<'a>(
        &self,
        pod: &PodInfo,
        nodes: &'a [NodeInfo],
        nominated: &HashMap<String, Vec<Arc<PodInfo>>>,
        start: usize,
        state: &CycleState,
    ) -> Result<Vec<&'a NodeInfo>, Diagnosis> {
        let want = nodes_to_find(nodes.len(), self.percentage_of_nodes_to_score);
        let mut feasible = Vec::new();
        let mut diagnosis = Diagnosis {
            nodes: nodes.len(),
            ..Default::default()
        };
        if let Some(m) = state.read::<String>(REJECTED) {
            diagnosis.pre_filter = Some(m.clone());
            return Err(diagnosis);
        }
        for i in 0..nodes.len() {
            let n = &nodes[(start + i) % nodes.len()];
            match self.filter_with_nominated(pod, n, nominated, state) {
                Ok(()) => {
                    feasible.push(n);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(reasons) => {
                    for r in reasons {
                        *diagnosis.reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        if feasible.is_empty() {
            Err(diagnosis)
        } else {
            Ok(feasible)
        }
    }

    /// The filters on `node` plus the pods nominated to it that are at least as important
    /// as `pod` (upstream's RunFilterPluginsWithNominatedPods, the pass that counts them).
    pub fn filter_with_nominated(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        nominated: &HashMap<String, Vec<Arc<PodInfo>>>,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let mine = crate::preemption::priority(pod);
        let ahead = |p: &&Arc<PodInfo>| p.key != pod.key && crate::preemption::priority(p) >= mine;
        let here = match nominated.is_empty() {
            true => None,
            false => nominated.get(&node.name),
        };
        let Some(here) = here.filter(|h| h.iter().any(|p| ahead(&p))) else {
            return self.filter(pod, node, state);
        };
        let mut with = node.clone();
        for p in here.iter().filter(ahead) {
            with.add(p.clone());
        }
        self.filter(pod, &with, state)
    }

    /// Every plugin's PreFilter: the cycle's state.
    pub fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot) -> CycleState {
        let mut state = CycleState::new();
        for e in self.plugins.iter().filter(|e| e.filter || e.score) {
            e.plugin.pre_filter(pod, cluster, &mut state);
            if state.contains_key(REJECTED) {
                break;
            }
        }
        state
    }

    /// The filters in order; the first that fails decides. Filters whose state PreFilter
    /// did not store are skipped.
    pub fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let skipped = |e: &&Entry| {
            e.plugin
                .filter_state()
                .is_some_and(|k| !state.contains_key(k))
        };
        for e in self
            .plugins
            .iter()
            .filter(|e| e.filter)
            .filter(|e| !skipped(e))
        {
            e.plugin.filter_in(pod, node, state)?;
        }
        Ok(())
    }

    /// Weighted, normalized scores of the feasible nodes (after every scorer's PreScore).
    pub fn score(
        &self,
        pod: &PodInfo,
        nodes: &[&NodeInfo],
        cluster: &Snapshot,
        state: &mut CycleState,
    ) -> Vec<i64> {
        let mut total = vec![0i64; nodes.len()];
        let scorers = || self.plugins.iter().filter(|e| e.score && e.plugin.scores());
        for e in scorers() {
            e.plugin.pre_score(pod, nodes, cluster, state);
        }
        let state = &*state;
        let skipped = |e: &&Entry| {
            e.plugin
                .score_state()
                .is_some_and(|k| !state.contains_key(k))
        };
        for e in scorers().filter(|e| !skipped(e)) {
            let mut s: Vec<i64> = nodes
                .iter()
                .map(|n| e.plugin.score_in(pod, n, state))
                .collect();
            e.plugin.normalize(&mut s);
            for (t, v) in total.iter_mut().zip(s) {
                *t += v * e.weight;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_percentages() {
        let d = Diagnosis {
            nodes: 3,
            reasons: [
                (
                    "node(s) had untolerated taint {dedicated: gpu}".to_string(),
                    2,
                ),
                ("Insufficient cpu".to_string(), 1),
            ]
            .into(),
            pre_filter: None,
        };
        assert_eq!(
            d.message(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}."
        );
        assert_eq!(
            Diagnosis::default().message(),
            "no nodes available to schedule pods"
        );
        let rejected = Diagnosis {
            nodes: 2,
            pre_filter: Some("persistentvolumeclaim \"x\" not found".into()),
            ..Default::default()
        };
        assert_eq!(
            rejected.message(),
            "0/2 nodes are available: persistentvolumeclaim \"x\" not found."
        );
        assert_eq!(nodes_to_find(50, 0), 50);
        assert_eq!(nodes_to_find(5000, 0), 500, "10% of 5,000");
        assert_eq!(nodes_to_find(1000, 0), 420);
        assert_eq!(nodes_to_find(5000, 100), 5000);
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![0, 50, 100]);
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
    }
}
