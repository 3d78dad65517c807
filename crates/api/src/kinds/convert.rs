//! Conversions between a served version and the version a resource is stored in, so
//! every version of a resource sees the same objects: autoscaling/v1 HPAs are stored as
//! autoscaling/v2, events.k8s.io/v1 Events as core/v1 Events (as upstream stores them).
//! What the served version cannot express is kept in annotations, so a round trip
//! through it loses nothing.

use serde_json::{json, Map, Value};

use crate::registry::Conversion;

/// autoscaling/v1 HorizontalPodAutoscaler, stored as autoscaling/v2.
pub static HPA_V1: Conversion = Conversion {
    to_storage: hpa_v1_to_v2,
    from_storage: hpa_v2_to_v1,
};

/// events.k8s.io/v1 Event, stored as a core/v1 Event.
pub static EVENTS_V1: Conversion = Conversion {
    to_storage: event_to_core,
    from_storage: event_from_core,
};

const HPA_METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const HPA_BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const HPA_CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const HPA_CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

fn obj_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("just made an object")
}

/// Moves `from` to `to` within one object when present.
fn rename(m: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(v) = m.remove(from) {
        m.insert(to.to_string(), v);
    }
}

/// Takes a JSON annotation out of the metadata.
fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    let anns = obj
        .get_mut("metadata")?
        .get_mut("annotations")?
        .as_object_mut()?;
    let v = anns.remove(key)?;
    if anns.is_empty() {
        obj["metadata"]
            .as_object_mut()
            .map(|m| m.remove("annotations"));
    }
    serde_json::from_str(v.as_str()?).ok()
}

fn put_annotation(obj: &mut Value, key: &str, v: &Value) {
    let meta = obj_mut(&mut obj["metadata"]);
    let anns = obj_mut(meta.entry("annotations").or_insert_with(|| json!({})));
    anns.insert(key.to_string(), Value::String(v.to_string()));
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

fn hpa_v1_to_v2(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v2");
    let saved_metrics = take_annotation(&mut obj, HPA_METRICS);
    let behavior = take_annotation(&mut obj, HPA_BEHAVIOR);
    let conditions = take_annotation(&mut obj, HPA_CONDITIONS);
    let current = take_annotation(&mut obj, HPA_CURRENT_METRICS);
    let spec = obj_mut(&mut obj["spec"]);
    let mut metrics: Vec<Value> = match saved_metrics {
        Some(Value::Array(m)) => m,
        _ => Vec::new(),
    };
    if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage") {
        metrics.insert(
            0,
            json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": cpu}}}),
        );
    }
    if !metrics.is_empty() {
        spec.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(b) = behavior {
        spec.insert("behavior".into(), b);
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let mut current_metrics: Vec<Value> = match current {
            Some(Value::Array(m)) => m,
            _ => Vec::new(),
        };
        if let Some(cpu) = status.remove("currentCPUUtilizationPercentage") {
            current_metrics.insert(
                0,
                json!({"type": "Resource", "resource": {"name": "cpu",
                    "current": {"averageUtilization": cpu}}}),
            );
        }
        if !current_metrics.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current_metrics));
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
    }
    obj
}

fn hpa_v2_to_v1(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v1");
    let spec = obj_mut(&mut obj["spec"]);
    let metrics = match spec.remove("metrics") {
        Some(Value::Array(m)) => m,
        _ => Vec::new(),
    };
    let behavior = spec.remove("behavior");
    let cpu = metrics.iter().position(is_cpu_utilization);
    if let Some(i) = cpu {
        if let Some(u) = metrics[i]["resource"]["target"].get("averageUtilization") {
            spec.insert("targetCPUUtilizationPercentage".into(), u.clone());
        }
    }
    let others: Vec<Value> = metrics
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != cpu)
        .map(|(_, m)| m.clone())
        .collect();
    let (mut conditions, mut current_others) = (None, Vec::new());
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        conditions = status.remove("conditions");
        if let Some(Value::Array(current)) = status.remove("currentMetrics") {
            for m in current {
                let cpu_now = m["type"] == "Resource"
                    && m["resource"]["name"] == "cpu"
                    && m["resource"]["current"].get("averageUtilization").is_some();
                if cpu_now && !status.contains_key("currentCPUUtilizationPercentage") {
                    status.insert(
                        "currentCPUUtilizationPercentage".into(),
                        m["resource"]["current"]["averageUtilization"].clone(),
                    );
                } else {
                    current_others.push(m);
                }
            }
        }
    }
    if !others.is_empty() {
        put_annotation(&mut obj, HPA_METRICS, &Value::Array(others));
    }
    if let Some(b) = behavior {
        put_annotation(&mut obj, HPA_BEHAVIOR, &b);
    }
    if let Some(c) = conditions {
        put_annotation(&mut obj, HPA_CONDITIONS, &c);
    }
    if !current_others.is_empty() {
        put_annotation(&mut obj, HPA_CURRENT_METRICS, &Value::Array(current_others));
    }
    obj
}

/// events.k8s.io/v1 field names and their core/v1 names.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn event_to_core(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("v1");
    let m = obj_mut(&mut obj);
    for (new, old) in EVENT_FIELDS {
        rename(m, new, old);
    }
    obj
}

fn event_from_core(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("events.k8s.io/v1");
    let m = obj_mut(&mut obj);
    for (new, old) in EVENT_FIELDS {
        rename(m, old, new);
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_round_trips_through_v1_without_loss() {
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 2,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 30}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]}});
        let v1 = hpa_v2_to_v1(v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 30);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(v1["metadata"]["annotations"][HPA_METRICS].is_string());
        assert_eq!(hpa_v1_to_v2(v1), v2);
    }

    #[test]
    fn hpa_v1_without_metrics_stays_without() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "metadata": {"name": "a"},
            "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "a"}}});
        let v2 = hpa_v1_to_v2(v1.clone());
        assert!(v2["spec"].get("metrics").is_none());
        assert_eq!(hpa_v2_to_v1(v2), v1);
    }

    #[test]
    fn events_map_to_core_fields_and_back() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled",
            "type": "Normal", "reportingController": "kubelet", "reportingInstance": "n1",
            "action": "Pull", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = event_to_core(ev.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert!(core.get("regarding").is_none());
        assert_eq!(event_from_core(core), ev);
    }
}
