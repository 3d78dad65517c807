//! Priority: a new pod's `priorityClassName` (or the cluster's global default class)
//! becomes its `spec.priority` and `spec.preemptionPolicy`, as upstream resolves them;
//! an update keeps them; only one PriorityClass may be the global default. The two
//! built-in classes exist from the start.

use std::sync::Arc;

use rkube_api::meta::ObjectMeta;
use rkube_api::ApiError;
use serde_json::{json, Value};

use super::{forbidden, Attributes, Operation, Plugin};
use crate::{storage, State};

/// The Priority plugin.
pub struct Priority;

#[async_trait::async_trait]
impl Plugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    async fn admit(&self, state: &Arc<State>, a: &mut Attributes<'_>) -> Result<(), ApiError> {
        if !a.is("", "pods") {
            return Ok(());
        }
        let old = a.old;
        let Some(pod) = a.object.as_deref_mut() else {
            return Ok(());
        };
        match a.operation {
            Operation::Create => admit_pod(state, pod).await,
            Operation::Update => {
                // Set on create; an update that leaves them out keeps them.
                for field in ["priority", "preemptionPolicy"] {
                    let kept = old.and_then(|o| o.get("spec")).and_then(|s| s.get(field));
                    if let (Some(v), Some(spec)) = (kept, pod.get_mut("spec")) {
                        if spec.get(field).is_none_or(Value::is_null) && spec.is_object() {
                            spec[field] = v.clone();
                        }
                    }
                }
                Ok(())
            }
            Operation::Delete => Ok(()),
        }
    }

    async fn validate(&self, state: &Arc<State>, a: &Attributes<'_>) -> Result<(), ApiError> {
        if !a.is("scheduling.k8s.io", "priorityclasses")
            || !matches!(a.operation, Operation::Create | Operation::Update)
        {
            return Ok(());
        }
        let Some(class) = a.object() else {
            return Ok(());
        };
        if class["globalDefault"].as_bool() != Some(true) {
            return Ok(());
        }
        if let Some(current) = global_default(state, a.info).await? {
            if a.operation == Operation::Create || current.name() != class.name() {
                return Err(forbidden(
                    a,
                    &format!(
                        "PriorityClass {} is already marked as default. Only one default can exist",
                        current.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Upstream's built-in classes: name, value, description.
pub const SYSTEM_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The PriorityClass objects of `SYSTEM_CLASSES`.
pub fn system_classes() -> Vec<Value> {
    SYSTEM_CLASSES
        .iter()
        .map(|(name, value, description)| {
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": name, "uid": rkube_api::meta::new_uid(),
                    "creationTimestamp": rkube_api::meta::now_rfc3339()},
                "value": value, "globalDefault": false, "description": description,
                "preemptionPolicy": "PreemptLowerPriority"})
        })
        .collect()
}

/// Sets a new pod's priority from its class; 403 for an unknown class or a priority
/// that disagrees with it.
async fn admit_pod(state: &Arc<State>, pod: &mut Value) -> Result<(), ApiError> {
    let Some(info) = state
        .registry
        .get("scheduling.k8s.io", "v1", "priorityclasses")
    else {
        return Ok(());
    };
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let forbidden = |why: String| ApiError::forbidden("", "pods", &name, &why);
    let spec = &pod["spec"];
    let class_name = spec["priorityClassName"].as_str().unwrap_or("").to_string();
    let class = if class_name.is_empty() {
        global_default(state, info).await?
    } else {
        match storage::get(&state.store, info, "", &class_name).await {
            Ok((c, _)) => Some(c),
            Err(e) if e.code == 404 => {
                return Err(forbidden(format!(
                    "no PriorityClass with name {class_name} was found"
                )))
            }
            Err(e) => return Err(e),
        }
    };
    let (value, policy, class_name) = match &class {
        Some(c) => (
            c["value"].as_i64().unwrap_or(0),
            c["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
            c.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ),
        None => (0, "PreemptLowerPriority".to_string(), String::new()),
    };
    if let Some(given) = spec["priority"].as_i64() {
        if given != value {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
    }
    if let Some(given) = spec["preemptionPolicy"].as_str() {
        if class.is_some() && given != policy {
            return Err(forbidden(format!(
                "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
            )));
        }
    }
    let spec = &mut pod["spec"];
    if !spec.is_object() {
        return Ok(());
    }
    spec["priority"] = json!(value);
    if spec["preemptionPolicy"].is_null() {
        spec["preemptionPolicy"] = json!(policy);
    }
    if !class_name.is_empty() {
        spec["priorityClassName"] = json!(class_name);
    }
    Ok(())
}

/// The class marked `globalDefault` (the lowest valued one if several are).
async fn global_default(
    state: &Arc<State>,
    info: &rkube_api::ResourceInfo,
) -> Result<Option<Value>, ApiError> {
    let resp = storage::range(&state.store, info, "", None, 0, 0).await?;
    let mut best: Option<Value> = None;
    for kv in &resp.kvs {
        let c = storage::decode(kv)?;
        if c["globalDefault"].as_bool() != Some(true) {
            continue;
        }
        let lower = best
            .as_ref()
            .is_none_or(|b| c["value"].as_i64() < b["value"].as_i64());
        if lower {
            best = Some(c);
        }
    }
    Ok(best)
}
