//! Workload kinds: apps/v1 controllers, ReplicationControllers, Jobs and CronJobs.

use serde_json::{json, Value};

use super::pod::{default_pod_spec, validate_pod_spec};
use super::util::{arr_at, default_to, i64_at, int_cell, obj_mut, str_at};
use crate::meta::ObjectMeta;
use crate::selector::LabelSelector;
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{age, col, joined, name, or_none, wide, Column, AGE, NAME};

/// Pod template defaults at `spec.template`.
fn default_template(obj: &mut Value, path: &[&str]) {
    let mut t = &mut *obj;
    for p in path {
        match t.get_mut(*p) {
            Some(next) => t = next,
            None => return,
        }
    }
    if let Some(spec) = t.get_mut("spec") {
        default_pod_spec(spec);
    }
}

/// The template checks every controller shares: a pod spec, and a selector that selects
/// the template's labels.
fn validate_template(obj: &Value, selector_required: bool) -> Vec<Cause> {
    let mut errs = Vec::new();
    match obj.pointer("/spec/template/spec") {
        Some(spec) => errs.extend(validate_pod_spec(spec, "spec.template.spec")),
        None => errs.push(Cause::required("spec.template.spec.containers")),
    }
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    match obj.pointer("/spec/selector") {
        Some(sel) if sel.is_object() => match LabelSelector::from_object(sel) {
            Ok(s) if s.is_empty() => errs.push(Cause::invalid(
                "spec.selector",
                sel,
                "empty selector is invalid for deployment",
            )),
            Ok(s) if !s.matches(labels) => errs.push(Cause::invalid(
                "spec.template.metadata.labels",
                &json!(labels),
                "`selector` does not match template `labels`",
            )),
            Ok(_) => {}
            Err(e) => errs.push(Cause::invalid("spec.selector", sel, e)),
        },
        _ if selector_required => errs.push(Cause::required("spec.selector")),
        _ => {}
    }
    if let Some(r) = i64_at(obj, &["spec", "replicas"]) {
        if r < 0 {
            errs.push(Cause::invalid(
                "spec.replicas",
                &json!(r),
                "must be greater than or equal to 0",
            ));
        }
    }
    errs
}

fn selector_immutable(new: &Value, old: &Value) -> Vec<Cause> {
    if new.pointer("/spec/selector") != old.pointer("/spec/selector") {
        vec![Cause::immutable("spec.selector")]
    } else {
        Vec::new()
    }
}

/// CONTAINERS, IMAGES cells of a pod template at `path`.
fn template_cells(obj: &Value, path: &str) -> [Value; 2] {
    let cs = obj
        .pointer(path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let names = cs
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from));
    let images = cs
        .iter()
        .filter_map(|c| c.get("image").and_then(Value::as_str).map(String::from));
    [joined(names), joined(images)]
}

/// The SELECTOR cell of a `metav1.LabelSelector`.
fn selector_cell(sel: Option<&Value>) -> Value {
    match sel {
        Some(sel) => or_none(Some(&crate::selector::selector_string(sel))),
        None => json!("<none>"),
    }
}

const CONTAINERS: Column = wide(
    "Containers",
    "string",
    "Names of each container in the template.",
);
const IMAGES: Column = wide(
    "Images",
    "string",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = wide("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.");

pub struct Deployment;

impl Strategy for Deployment {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({}))
    }
    fn default(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default_to(spec, "replicas", 1);
        default_to(spec, "revisionHistoryLimit", 10);
        default_to(spec, "progressDeadlineSeconds", 600);
        let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
        if let Some(s) = strategy.as_object_mut() {
            default_to(s, "type", "RollingUpdate");
            if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    default_to(ru, "maxUnavailable", "25%");
                    default_to(ru, "maxSurge", "25%");
                }
            }
        }
        default_template(obj, &["spec", "template"]);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_template(obj, true)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        selector_immutable(new, old)
    }
    fn tracks_generation(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            col("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i] = template_cells(obj, "/spec/template/spec/containers");
        vec![
            name(obj),
            json!(format!(
                "{}/{}",
                i64_at(obj, &["status", "readyReplicas"]).unwrap_or(0),
                i64_at(obj, &["spec", "replicas"]).unwrap_or(0)
            )),
            int_cell(obj, &["status", "updatedReplicas"]),
            int_cell(obj, &["status", "availableReplicas"]),
            age(obj),
            c,
            i,
            selector_cell(obj.pointer("/spec/selector")),
        ]
    }
}

/// ReplicaSets and the shared table of replica controllers.
pub struct ReplicaSet;

const REPLICA_COLUMNS: &[Column] = &[
    NAME,
    col("Desired", "integer", "Number of desired pods."),
    col("Current", "integer", "Number of actually running pods."),
    col("Ready", "integer", "Number of ready pods."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

fn replica_cells(obj: &Value, selector: Value) -> Vec<Value> {
    let [c, i] = template_cells(obj, "/spec/template/spec/containers");
    vec![
        name(obj),
        int_cell(obj, &["spec", "replicas"]),
        int_cell(obj, &["status", "replicas"]),
        int_cell(obj, &["status", "readyReplicas"]),
        age(obj),
        c,
        i,
        selector,
    ]
}

impl Strategy for ReplicaSet {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0}))
    }
    fn default(&self, obj: &mut Value) {
        default_to(obj_mut(obj, "spec"), "replicas", 1);
        default_template(obj, &["spec", "template"]);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_template(obj, true)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        selector_immutable(new, old)
    }
    fn tracks_generation(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        REPLICA_COLUMNS
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        replica_cells(obj, selector_cell(obj.pointer("/spec/selector")))
    }
}

pub struct ReplicationController;

impl Strategy for ReplicationController {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0}))
    }
    fn default(&self, obj: &mut Value) {
        let labels = obj.pointer("/spec/template/metadata/labels").cloned();
        let spec = obj_mut(obj, "spec");
        default_to(spec, "replicas", 1);
        if let Some(l) = labels {
            default_to(spec, "selector", l);
        }
        default_template(obj, &["spec", "template"]);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut errs = Vec::new();
        if let Some(spec) = obj.pointer("/spec/template/spec") {
            errs.extend(validate_pod_spec(spec, "spec.template.spec"));
        }
        let sel = obj.pointer("/spec/selector").and_then(Value::as_object);
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object);
        if let (Some(sel), Some(_)) = (sel, labels) {
            let s = LabelSelector::from_object(&json!({"matchLabels": sel})).unwrap_or_default();
            if !s.matches(labels) {
                errs.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &json!(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        errs
    }
    fn tracks_generation(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        REPLICA_COLUMNS
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        replica_cells(obj, crate::table::map_cell(obj.pointer("/spec/selector")))
    }
}

pub struct StatefulSet;

impl Strategy for StatefulSet {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0, "availableReplicas": 0}))
    }
    fn default(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default_to(spec, "replicas", 1);
        default_to(spec, "podManagementPolicy", "OrderedReady");
        default_to(spec, "revisionHistoryLimit", 10);
        default_to(
            spec,
            "updateStrategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
        );
        default_to(
            spec,
            "persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
        default_template(obj, &["spec", "template"]);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_template(obj, true)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        // Only replicas, ordinals, template, updateStrategy, persistentVolumeClaimRetentionPolicy
        // and minReadySeconds may change.
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or_default();
            if let Some(m) = s.as_object_mut() {
                for k in [
                    "replicas",
                    "ordinals",
                    "template",
                    "updateStrategy",
                    "persistentVolumeClaimRetentionPolicy",
                    "minReadySeconds",
                    "revisionHistoryLimit",
                ] {
                    m.remove(k);
                }
            }
            s
        };
        if strip(new) != strip(old) {
            return vec![Cause::forbidden("spec", "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden")];
        }
        Vec::new()
    }
    fn tracks_generation(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i] = template_cells(obj, "/spec/template/spec/containers");
        vec![
            name(obj),
            json!(format!(
                "{}/{}",
                i64_at(obj, &["status", "readyReplicas"]).unwrap_or(0),
                i64_at(obj, &["spec", "replicas"]).unwrap_or(0)
            )),
            age(obj),
            c,
            i,
        ]
    }
}

pub struct DaemonSet;

impl Strategy for DaemonSet {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        }))
    }
    fn default(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default_to(spec, "revisionHistoryLimit", 10);
        default_to(
            spec,
            "updateStrategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
        );
        default_template(obj, &["spec", "template"]);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_template(obj, true)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        selector_immutable(new, old)
    }
    fn tracks_generation(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
            col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            col("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
            col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
            col("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i] = template_cells(obj, "/spec/template/spec/containers");
        vec![
            name(obj),
            int_cell(obj, &["status", "desiredNumberScheduled"]),
            int_cell(obj, &["status", "currentNumberScheduled"]),
            int_cell(obj, &["status", "numberReady"]),
            int_cell(obj, &["status", "updatedNumberScheduled"]),
            int_cell(obj, &["status", "numberAvailable"]),
            crate::table::map_cell(obj.pointer("/spec/template/spec/nodeSelector")),
            age(obj),
            c,
            i,
            selector_cell(obj.pointer("/spec/selector")),
        ]
    }
}

pub struct Job;

impl Strategy for Job {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({}))
    }
    fn default(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
            spec.insert("completions".into(), json!(1));
        }
        default_to(spec, "parallelism", 1);
        default_to(spec, "backoffLimit", 6);
        default_to(spec, "completionMode", "NonIndexed");
        default_to(spec, "suspend", false);
        default_to(spec, "manualSelector", Value::Null);
        spec.remove("manualSelector");
        default_to(spec, "podReplacementPolicy", "TerminatingOrFailed");
        default_template(obj, &["spec", "template"]);
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        // The controller-uid selector and template labels upstream generates.
        let uid = obj.uid().to_string();
        let job_name = obj.name().to_string();
        if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
            return;
        }
        let labels = json!({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": job_name,
            "controller-uid": uid,
            "job-name": job_name,
        });
        obj_mut(obj, "spec").insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        if let Some(t) = obj.pointer_mut("/spec/template") {
            let l = obj_mut(obj_mut_value(t, "metadata"), "labels");
            for (k, v) in labels.as_object().into_iter().flatten() {
                l.insert(k.clone(), v.clone());
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut errs = validate_template(obj, false);
        match str_at(obj, &["spec", "template", "spec", "restartPolicy"]) {
            Some("OnFailure" | "Never") => {}
            other => errs.push(Cause::unsupported(
                "spec.template.spec.restartPolicy",
                &json!(other.unwrap_or("")),
                &["OnFailure", "Never"],
            )),
        }
        errs
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut errs = selector_immutable(new, old);
        if new.pointer("/spec/completions") != old.pointer("/spec/completions") {
            errs.push(Cause::immutable("spec.completions"));
        }
        errs
    }
    fn tracks_generation(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Status", "string", "Status of the job."),
            col("Completions", "string", "The completion status of the job"),
            col("Duration", "string", "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i] = template_cells(obj, "/spec/template/spec/containers");
        let cond = |t: &str| {
            arr_at(obj, &["status", "conditions"]).iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(t)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        };
        let status = if cond("Failed") {
            "Failed"
        } else if cond("Complete") {
            "Complete"
        } else if cond("Suspended") {
            "Suspended"
        } else if cond("FailureTarget") {
            "FailureTarget"
        } else if cond("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        let completions = match i64_at(obj, &["spec", "completions"]) {
            Some(n) => format!("{}/{n}", i64_at(obj, &["status", "succeeded"]).unwrap_or(0)),
            None => format!(
                "{}/1 of {}",
                i64_at(obj, &["status", "succeeded"]).unwrap_or(0),
                i64_at(obj, &["spec", "parallelism"]).unwrap_or(1)
            ),
        };
        let start = str_at(obj, &["status", "startTime"]).and_then(crate::meta::parse_time);
        let end = str_at(obj, &["status", "completionTime"])
            .and_then(crate::meta::parse_time)
            .unwrap_or_else(jiff::Timestamp::now);
        let duration = start
            .map(|s| crate::table::human_duration(end.duration_since(s).as_secs()))
            .unwrap_or_default();
        vec![
            name(obj),
            json!(status),
            json!(completions),
            json!(duration),
            age(obj),
            c,
            i,
            selector_cell(obj.pointer("/spec/selector")),
        ]
    }
}

fn obj_mut_value<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    obj_mut(v, key);
    &mut v[key]
}

pub struct CronJob;

impl Strategy for CronJob {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({}))
    }
    fn default(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default_to(spec, "concurrencyPolicy", "Allow");
        default_to(spec, "suspend", false);
        default_to(spec, "successfulJobsHistoryLimit", 3);
        default_to(spec, "failedJobsHistoryLimit", 1);
        default_template(obj, &["spec", "jobTemplate", "spec", "template"]);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut errs = Vec::new();
        if str_at(obj, &["spec", "schedule"]).is_none_or(str::is_empty) {
            errs.push(Cause::required("spec.schedule"));
        }
        match obj.pointer("/spec/jobTemplate/spec/template/spec") {
            Some(spec) => errs.extend(validate_pod_spec(
                spec,
                "spec.jobTemplate.spec.template.spec",
            )),
            None => errs.push(Cause::required(
                "spec.jobTemplate.spec.template.spec.containers",
            )),
        }
        errs
    }
    fn tracks_generation(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Schedule", "string", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            col("Timezone", "string", "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
            col("Suspend", "boolean", "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."),
            col("Active", "integer", "A list of pointers to currently running jobs."),
            col("Last Schedule", "string", "Information when was the last time the job was successfully scheduled."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let [c, i] = template_cells(obj, "/spec/jobTemplate/spec/template/spec/containers");
        let last =
            match str_at(obj, &["status", "lastScheduleTime"]).and_then(crate::meta::parse_time) {
                Some(t) => {
                    crate::table::human_duration(jiff::Timestamp::now().duration_since(t).as_secs())
                }
                None => "<none>".into(),
            };
        vec![
            name(obj),
            json!(str_at(obj, &["spec", "schedule"]).unwrap_or("")),
            or_none(str_at(obj, &["spec", "timeZone"])),
            json!(obj
                .pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            json!(arr_at(obj, &["status", "active"]).len()),
            json!(last),
            age(obj),
            c,
            i,
            selector_cell(obj.pointer("/spec/jobTemplate/spec/selector")),
        ]
    }
}
