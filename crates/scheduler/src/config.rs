//! `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1): profiles by
//! schedulerName, plugins enabled and disabled per extension point (and `multiPoint`),
//! score weights, plugin args, `percentageOfNodesToScore`.

use serde_json::Value;

use crate::framework::{Entry, PreemptionArgs, Profile};

const PREEMPTION: &str = "DefaultPreemption";
use crate::plugins;

/// A configuration the scheduler cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// What is wrong with it.
    #[error("scheduler config: {0}")]
    Invalid(String),
}

fn names(v: &Value) -> Vec<(String, i64)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["weight"].as_i64().unwrap_or(0),
            ))
        })
        .collect()
}

/// The profiles a configuration describes (the default profile when it names none).
pub fn profiles(config: &Value) -> Result<Vec<Profile>, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(m);
    match (config["apiVersion"].as_str(), config["kind"].as_str()) {
        (Some(v), Some("KubeSchedulerConfiguration")) if v.starts_with("kubescheduler.config.k8s.io/") => {}
        _ => {
            return Err(bad(
                "expected apiVersion kubescheduler.config.k8s.io/v1 and kind KubeSchedulerConfiguration".into(),
            ))
        }
    }
    let global_pct = config["percentageOfNodesToScore"].as_u64().unwrap_or(0) as u32;
    let specs = match config["profiles"].as_array() {
        Some(p) if !p.is_empty() => p.clone(),
        _ => vec![serde_json::json!({"schedulerName": "default-scheduler"})],
    };
    let mut out: Vec<Profile> = Vec::new();
    for spec in &specs {
        let name = spec["schedulerName"]
            .as_str()
            .unwrap_or("default-scheduler")
            .to_string();
        if out.iter().any(|p| p.scheduler_name == name) {
            return Err(bad(format!("two profiles named {name:?}")));
        }
        let args = |plugin: &str| -> Value {
            spec["pluginConfig"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == plugin)
                .map(|c| c["args"].clone())
                .unwrap_or(Value::Null)
        };
        let make = |plugin: &str, weight: i64| -> Result<Option<Entry>, ConfigError> {
            if plugins::BUILT_IN.contains(&plugin) || plugin == PREEMPTION {
                return Ok(None);
            }
            match plugins::by_name(plugin, &args(plugin)) {
                Some((p, w)) => Ok(Some(Entry::new(p, if weight > 0 { weight } else { w }))),
                None if plugins::NOT_YET.contains(&plugin) => {
                    tracing::warn!(
                        plugin,
                        "scheduler plugin not implemented by rkube yet; skipped"
                    );
                    Ok(None)
                }
                None => Err(bad(format!(
                    "unknown plugin {plugin:?} in profile {name:?}"
                ))),
            }
        };
        let mut entries: Vec<Entry> = Vec::new();
        for n in plugins::DEFAULT {
            if let Some(e) = make(n, 0)? {
                entries.push(e);
            }
        }
        let point = |p: &str, what: &str| names(&spec["plugins"][p][what]);
        let all = |list: &[(String, i64)]| list.iter().any(|(n, _)| n == "*");
        // multiPoint: every extension point at once.
        let disabled = point("multiPoint", "disabled");
        entries.retain(|e| !all(&disabled) && !disabled.iter().any(|(n, _)| n == e.plugin.name()));
        for (n, w) in point("multiPoint", "enabled") {
            entries.retain(|e| e.plugin.name() != n);
            if let Some(e) = make(&n, w)? {
                entries.push(e);
            }
        }
        // Per extension point.
        for (point_name, is_score) in [("filter", false), ("preFilter", false), ("score", true)] {
            let disabled = point(point_name, "disabled");
            for e in entries.iter_mut() {
                if all(&disabled) || disabled.iter().any(|(n, _)| n == e.plugin.name()) {
                    if is_score {
                        e.score = false;
                    } else {
                        e.filter = false;
                    }
                }
            }
            for (n, w) in point(point_name, "enabled") {
                match entries.iter_mut().find(|e| e.plugin.name() == n) {
                    Some(e) => {
                        if is_score {
                            e.score = true;
                            if w > 0 {
                                e.weight = w;
                            }
                        } else {
                            e.filter = true;
                        }
                    }
                    None => {
                        if let Some(mut e) = make(&n, w)? {
                            e.filter = !is_score;
                            e.score = is_score;
                            entries.push(e);
                        }
                    }
                }
            }
        }
        // DefaultPreemption, the one PostFilter: on unless disabled there or in multiPoint.
        let named = |list: &[(String, i64)]| list.iter().any(|(n, _)| n == PREEMPTION);
        let off = |p: &str| {
            let d = point(p, "disabled");
            all(&d) || named(&d)
        };
        let on = |p: &str| named(&point(p, "enabled"));
        let preemption =
            (!(off("multiPoint") || off("postFilter")) || on("multiPoint") || on("postFilter"))
                .then(|| PreemptionArgs::from_args(&args(PREEMPTION)));
        let pct = spec["percentageOfNodesToScore"]
            .as_u64()
            .map(|p| p as u32)
            .unwrap_or(global_pct);
        if pct > 100 {
            return Err(bad(format!("percentageOfNodesToScore {pct} is over 100")));
        }
        out.push(Profile {
            scheduler_name: name,
            plugins: entries,
            percentage_of_nodes_to_score: pct,
            preemption,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(profiles: Value) -> Value {
        json!({"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
               "percentageOfNodesToScore": 30, "profiles": profiles})
    }

    #[test]
    fn profiles_plugins_weights_and_args() {
        let ps = profiles(&cfg(json!([
            {"schedulerName": "default-scheduler"},
            {"schedulerName": "packer", "percentageOfNodesToScore": 100,
             "plugins": {"filter": {"disabled": [{"name": "NodePorts"}]},
                         "score": {"disabled": [{"name": "*"}], "enabled": [{"name": "NodeResourcesFit", "weight": 5}]},
                         "multiPoint": {"disabled": [{"name": "InterPodAffinity"}]}},
             "pluginConfig": [{"name": "NodeResourcesFit", "args": {"scoringStrategy": {"type": "MostAllocated"}}}]},
        ])))
        .unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(
            (
                ps[0].scheduler_name.as_str(),
                ps[0].percentage_of_nodes_to_score
            ),
            ("default-scheduler", 30)
        );
        let packer = &ps[1];
        assert_eq!(packer.percentage_of_nodes_to_score, 100);
        let entry = |n: &str| packer.plugins.iter().find(|e| e.plugin.name() == n);
        assert!(entry("InterPodAffinity").is_none());
        assert!(!entry("NodePorts").unwrap().filter);
        let scoring: Vec<(&str, i64)> = packer
            .plugins
            .iter()
            .filter(|e| e.score)
            .map(|e| (e.plugin.name(), e.weight))
            .collect();
        assert_eq!(scoring, vec![("NodeResourcesFit", 5)]);
        // Errors say what is wrong.
        let err = profiles(&cfg(
            json!([{"plugins": {"filter": {"enabled": [{"name": "Nope"}]}}}]),
        ))
        .err()
        .unwrap();
        assert!(err.to_string().contains("unknown plugin \"Nope\""), "{err}");
        assert!(profiles(&json!({"kind": "Other"})).is_err());
        assert!(profiles(&cfg(
            json!([{"schedulerName": "a"}, {"schedulerName": "a"}])
        ))
        .is_err());
        // Not-yet plugins are skipped, not fatal.
        assert!(profiles(&cfg(
            json!([{"plugins": {"filter": {"enabled": [{"name": "EBSLimits"}]}}}])
        ))
        .is_ok());
        // DefaultPreemption: on with its args, off when disabled.
        let ps = profiles(&cfg(json!([
            {"schedulerName": "a", "pluginConfig": [{"name": "DefaultPreemption",
                "args": {"minCandidateNodesPercentage": 50, "minCandidateNodesAbsolute": 5}}]},
            {"schedulerName": "b", "plugins": {"postFilter": {"disabled": [{"name": "DefaultPreemption"}]}}},
            {"schedulerName": "c", "plugins": {"multiPoint": {"disabled": [{"name": "*"}],
                "enabled": [{"name": "DefaultPreemption"}, {"name": "PrioritySort"}]}}},
        ])))
        .unwrap();
        let args = ps[0].preemption.unwrap();
        assert_eq!(
            (
                args.min_candidate_nodes_percentage,
                args.min_candidate_nodes_absolute
            ),
            (50, 5)
        );
        assert_eq!(ps[1].preemption, None);
        assert!(ps[2].preemption.is_some() && ps[2].plugins.is_empty());
    }
}
