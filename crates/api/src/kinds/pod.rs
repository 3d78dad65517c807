//! Pods: defaults, validation, field selectors and the `kubectl get pods` columns.

use serde_json::{json, Value};

use super::util::{arr_at, default_to, i64_at, str_at};
use crate::names::{dns1123_label, dns1123_subdomain};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{age, col, name, wide, Column, NAME};

pub struct Pod;

const COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    crate::table::AGE,
    wide("IP", "string", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
    wide("Node", "string", "NodeName is a request to schedule this pod onto a specific node."),
    wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node."),
    wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness."),
];

/// The image pull policy upstream defaults to: Always for `:latest` or no tag.
fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(c: &mut Value) {
    let image = str_at(c, &["image"]).unwrap_or("").to_string();
    let m = c.as_object_mut().expect("container object");
    default_to(m, "imagePullPolicy", default_pull_policy(&image));
    default_to(m, "terminationMessagePath", "/dev/termination-log");
    default_to(m, "terminationMessagePolicy", "File");
    default_to(m, "resources", json!({}));
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default_to(p, "protocol", "TCP");
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe).and_then(Value::as_object_mut) {
            default_to(p, "timeoutSeconds", 1);
            default_to(p, "periodSeconds", 10);
            default_to(p, "successThreshold", 1);
            default_to(p, "failureThreshold", 3);
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                default_to(h, "path", "/");
                default_to(h, "scheme", "HTTP");
            }
        }
    }
}

/// Fills upstream's PodSpec defaults (also used for pod templates in workloads).
pub(crate) fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    default_to(s, "restartPolicy", "Always");
    default_to(s, "terminationGracePeriodSeconds", 30);
    default_to(s, "dnsPolicy", "ClusterFirst");
    default_to(s, "securityContext", json!({}));
    default_to(s, "schedulerName", "default-scheduler");
    default_to(s, "enableServiceLinks", true);
    for key in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = s.get_mut(key) {
            cs.iter_mut()
                .filter(|c| c.is_object())
                .for_each(default_container);
        }
    }
    if let Some(Value::Array(vols)) = s.get_mut("volumes") {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            let has_source = v.keys().any(|k| k != "name");
            if !has_source {
                v.insert("emptyDir".into(), json!({}));
            }
            for src in ["configMap", "secret", "downwardAPI", "projected"] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    default_to(s, "defaultMode", 0o644);
                }
            }
        }
    }
}

/// Validates a PodSpec at `path` (`spec`, or `spec.template.spec`).
pub(crate) fn validate_pod_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    let containers = arr_at(spec, &["containers"]);
    if containers.is_empty() {
        errs.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = Vec::new();
    for (key, list) in [
        ("initContainers", arr_at(spec, &["initContainers"])),
        ("containers", containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            let at = format!("{path}.{key}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => errs.push(Cause::required(format!("{at}.name"))),
                Some(n) => {
                    for e in dns1123_label(n) {
                        errs.push(Cause::invalid(format!("{at}.name"), &json!(n), e));
                    }
                    if names.contains(&n) {
                        errs.push(Cause::duplicate(format!("{at}.name"), &json!(n)));
                    }
                    names.push(n);
                }
            }
            if str_at(c, &["image"]).is_none_or(|s| s.trim().is_empty()) {
                errs.push(Cause::required(format!("{at}.image")));
            }
            for (j, p) in arr_at(c, &["ports"]).iter().enumerate() {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    errs.push(Cause::invalid(
                        format!("{at}.ports[{j}].containerPort"),
                        &json!(port),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            if let Some(policy) = c.get("imagePullPolicy") {
                if !matches!(policy.as_str(), Some("Always" | "IfNotPresent" | "Never")) {
                    errs.push(Cause::unsupported(
                        format!("{at}.imagePullPolicy"),
                        policy,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
        }
    }
    if let Some(p) = spec.get("restartPolicy") {
        if !matches!(p.as_str(), Some("Always" | "OnFailure" | "Never")) {
            errs.push(Cause::unsupported(
                format!("{path}.restartPolicy"),
                p,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(p) = spec.get("dnsPolicy") {
        if !matches!(
            p.as_str(),
            Some("ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None")
        ) {
            errs.push(Cause::unsupported(
                format!("{path}.dnsPolicy"),
                p,
                &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
            ));
        }
    }
    let mut vol_names = Vec::new();
    for (i, v) in arr_at(spec, &["volumes"]).iter().enumerate() {
        match v.get("name").and_then(Value::as_str) {
            None | Some("") => errs.push(Cause::required(format!("{path}.volumes[{i}].name"))),
            Some(n) => {
                for e in dns1123_label(n) {
                    errs.push(Cause::invalid(
                        format!("{path}.volumes[{i}].name"),
                        &json!(n),
                        e,
                    ));
                }
                if vol_names.contains(&n) {
                    errs.push(Cause::duplicate(
                        format!("{path}.volumes[{i}].name"),
                        &json!(n),
                    ));
                }
                vol_names.push(n);
            }
        }
    }
    for key in ["containers", "initContainers"] {
        for (i, c) in arr_at(spec, &[key]).iter().enumerate() {
            for (j, m) in arr_at(c, &["volumeMounts"]).iter().enumerate() {
                let n = m.get("name").and_then(Value::as_str).unwrap_or("");
                if !vol_names.contains(&n) {
                    errs.push(Cause::new(
                        "FieldValueNotFound",
                        format!("{path}.{key}[{i}].volumeMounts[{j}].name"),
                        format!("Not found: {n:?}"),
                    ));
                }
            }
        }
    }
    if let Some(node) = str_at(spec, &["nodeName"]) {
        for e in dns1123_subdomain(node) {
            errs.push(Cause::invalid(format!("{path}.nodeName"), &json!(node), e));
        }
    }
    errs
}

/// The QoS class upstream derives from requests and limits.
pub fn pod_qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = arr_at(spec, &["containers"])
        .iter()
        .chain(arr_at(spec, &["initContainers"]))
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r));
            let li = lim.and_then(|m| m.get(r));
            if rq.is_some() || li.is_some() {
                any = true;
            }
            match (rq, li) {
                (_, None) => guaranteed = false,
                (Some(a), Some(b)) if a != b => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

impl Strategy for Pod {
    fn default(&self, obj: &mut Value) {
        let spec = obj.get_mut("spec");
        if let Some(spec) = spec {
            default_pod_spec(spec);
            let s = spec.as_object_mut().expect("spec object");
            // The ServiceAccount admission plugin's default (until that plugin exists).
            default_to(s, "serviceAccountName", "default");
            let sa = s.get("serviceAccountName").cloned().unwrap_or_default();
            default_to(s, "serviceAccount", sa);
            default_to(s, "priority", 0);
            default_to(s, "preemptionPolicy", "PreemptLowerPriority");
        }
    }

    /// Pods bound to a node wait for its kubelet (`terminationGracePeriodSeconds` unless
    /// the request says otherwise); unscheduled or finished pods go at once.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> i64 {
        let scheduled = str_at(obj, &["spec", "nodeName"]).is_some_and(|n| !n.is_empty());
        let finished = matches!(
            str_at(obj, &["status", "phase"]),
            Some("Succeeded" | "Failed")
        );
        if !scheduled || finished {
            return 0;
        }
        let g = requested
            .or_else(|| i64_at(obj, &["spec", "terminationGracePeriodSeconds"]))
            .unwrap_or(30);
        // Upstream turns a negative period into 1 second.
        if g < 0 {
            1
        } else {
            g
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        let qos = obj.get("spec").map(pod_qos_class).unwrap_or("BestEffort");
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        match obj.get("spec") {
            Some(spec) => validate_pod_spec(spec, "spec"),
            None => vec![Cause::required("spec")],
        }
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        // Only container images, activeDeadlineSeconds, tolerations (additions) and
        // terminationGracePeriodSeconds may change.
        let mut a = new.get("spec").cloned().unwrap_or_default();
        let mut b = old.get("spec").cloned().unwrap_or_default();
        for s in [&mut a, &mut b] {
            if let Some(m) = s.as_object_mut() {
                for key in [
                    "activeDeadlineSeconds",
                    "tolerations",
                    "terminationGracePeriodSeconds",
                    "schedulingGates",
                ] {
                    m.remove(key);
                }
                for key in ["containers", "initContainers"] {
                    if let Some(Value::Array(cs)) = m.get_mut(key) {
                        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                            c.remove("image");
                        }
                    }
                }
            }
        }
        if a != b {
            return vec![Cause::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            )];
        }
        Vec::new()
    }

    fn field(&self, obj: &Value, label: &str) -> Option<String> {
        let s = |p: &[&str]| str_at(obj, p).map(String::from);
        match label {
            "spec.nodeName" => s(&["spec", "nodeName"]),
            "spec.restartPolicy" => s(&["spec", "restartPolicy"]),
            "spec.schedulerName" => s(&["spec", "schedulerName"]),
            "spec.serviceAccountName" => s(&["spec", "serviceAccountName"]),
            "spec.hostNetwork" => Some(
                obj.pointer("/spec/hostNetwork")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            "status.phase" => s(&["status", "phase"]),
            "status.podIP" | "status.podIPs" => s(&["status", "podIP"]),
            "status.nominatedNodeName" => s(&["status", "nominatedNodeName"]),
            _ => None,
        }
    }

    fn field_labels(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ]
    }

    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let statuses = arr_at(obj, &["status", "containerStatuses"]);
        let total = arr_at(obj, &["spec", "containers"]).len();
        let ready = statuses
            .iter()
            .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
            .count();
        let restarts: i64 = statuses
            .iter()
            .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
            .sum();
        let gates = arr_at(obj, &["spec", "readinessGates"]);
        vec![
            name(obj),
            json!(format!("{ready}/{total}")),
            json!(pod_status_reason(obj)),
            json!(restarts.to_string()),
            age(obj),
            crate::table::or_none(str_at(obj, &["status", "podIP"])),
            crate::table::or_none(str_at(obj, &["spec", "nodeName"])),
            crate::table::or_none(str_at(obj, &["status", "nominatedNodeName"])),
            if gates.is_empty() {
                json!("<none>")
            } else {
                json!(format!("0/{}", gates.len()))
            },
        ]
    }
}

/// The STATUS column: the phase, or the reason of the most telling container state.
fn pod_status_reason(obj: &Value) -> String {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return "Terminating".into();
    }
    let mut reason = str_at(obj, &["status", "reason"])
        .or_else(|| str_at(obj, &["status", "phase"]))
        .unwrap_or("Pending")
        .to_string();
    let inits = arr_at(obj, &["status", "initContainerStatuses"]);
    let init_total = arr_at(obj, &["spec", "initContainers"]).len();
    for (i, s) in inits.iter().enumerate() {
        if let Some(t) = s.pointer("/state/terminated") {
            if t.get("exitCode").and_then(Value::as_i64) == Some(0) {
                continue;
            }
            return match t.get("reason").and_then(Value::as_str) {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!(
                    "Init:ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                ),
            };
        }
        if let Some(r) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
            if r != "PodInitializing" {
                return format!("Init:{r}");
            }
        }
        return format!("Init:{i}/{init_total}");
    }
    for s in arr_at(obj, &["status", "containerStatuses"]).iter().rev() {
        if let Some(r) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(t) = s.pointer("/state/terminated") {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) if !r.is_empty() => r.to_string(),
                _ => format!(
                    "ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                ),
            };
        }
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        Pod.default(&mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert!(Pod.validate(&p).is_empty());
        let bad = json!({"spec": {"containers": [{"name": "Bad_Name"}]}});
        let errs = Pod.validate(&bad);
        assert!(errs.iter().any(|e| e.field == "spec.containers[0].name"));
        assert!(errs.iter().any(|e| e.field == "spec.containers[0].image"));
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
    }

    #[test]
    fn qos() {
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(pod_qos_class(&g), "Guaranteed");
        let b = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(pod_qos_class(&b), "Burstable");
        assert_eq!(pod_qos_class(&json!({"containers": [{}]})), "BestEffort");
    }
}
