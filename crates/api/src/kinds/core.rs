//! core/v1 kinds other than pods.

use base64::Engine;
use serde_json::{json, Value};

use super::util::{arr_at, default_to, obj_mut, str_at};
use crate::meta::ObjectMeta;
use crate::names::{dns1035_label, dns1123_label};
use crate::status::Cause;
use crate::strategy::Strategy;
use crate::table::{age, col, joined, name, or_none, wide, Column, AGE, NAME};

pub struct Namespace;

impl Strategy for Namespace {
    fn default(&self, obj: &mut Value) {
        let n = obj.name().to_string();
        if !n.is_empty() {
            obj_mut(obj.meta_mut_value(), "labels")
                .insert("kubernetes.io/metadata.name".into(), json!(n));
        }
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
    }
    fn validate_name(&self, name: &str) -> Vec<String> {
        dns1123_label(name)
    }
    fn blocks_deletion(&self, obj: &Value) -> bool {
        !arr_at(obj, &["spec", "finalizers"]).is_empty()
    }
    fn prepare_for_deletion(&self, obj: &mut Value) {
        obj_mut(obj, "status").insert("phase".into(), json!("Terminating"));
    }
    fn field(&self, obj: &Value, label: &str) -> Option<String> {
        (label == "status.phase")
            .then(|| str_at(obj, &["status", "phase"]).unwrap_or("").to_string())
    }
    fn field_labels(&self) -> &'static [&'static str] {
        &["status.phase"]
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Status", "string", "The status of the namespace"),
            AGE
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            name(obj),
            json!(str_at(obj, &["status", "phase"]).unwrap_or("")),
            age(obj),
        ]
    }
}

/// `metadata` as a Value, for helpers that take objects.
trait MetaValue {
    fn meta_mut_value(&mut self) -> &mut Value;
}

impl MetaValue for Value {
    fn meta_mut_value(&mut self) -> &mut Value {
        self.meta_mut();
        &mut self["metadata"]
    }
}

pub struct Service;

impl Strategy for Service {
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"loadBalancer": {}}))
    }
    fn validate_name(&self, name: &str) -> Vec<String> {
        dns1035_label(name)
    }
    fn default(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default_to(spec, "type", "ClusterIP");
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if ty == "ExternalName" {
            return;
        }
        default_to(spec, "sessionAffinity", "None");
        default_to(spec, "internalTrafficPolicy", "Cluster");
        if ty == "NodePort" || ty == "LoadBalancer" {
            default_to(spec, "externalTrafficPolicy", "Cluster");
        }
        if ty == "LoadBalancer" {
            default_to(spec, "allocateLoadBalancerNodePorts", true);
        }
        default_to(spec, "ipFamilyPolicy", "SingleStack");
        default_to(spec, "ipFamilies", json!(["IPv4"]));
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                default_to(p, "protocol", "TCP");
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                default_to(p, "targetPort", port);
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut errs = Vec::new();
        let ty = str_at(obj, &["spec", "type"]).unwrap_or("ClusterIP");
        let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
        if !types.contains(&ty) {
            errs.push(Cause::unsupported("spec.type", &json!(ty), &types));
        }
        let ports = arr_at(obj, &["spec", "ports"]);
        if ports.is_empty()
            && ty != "ExternalName"
            && str_at(obj, &["spec", "clusterIP"]) != Some("None")
        {
            errs.push(Cause::required("spec.ports"));
        }
        if ty == "ExternalName" && str_at(obj, &["spec", "externalName"]).is_none_or(str::is_empty)
        {
            errs.push(Cause::required("spec.externalName"));
        }
        let mut seen = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=65535).contains(&port) {
                errs.push(Cause::invalid(
                    format!("spec.ports[{i}].port"),
                    &json!(port),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if ports.len() > 1
                && p.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                errs.push(Cause::required(format!("spec.ports[{i}].name")));
            }
            let key = (
                port,
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_string(),
            );
            if seen.contains(&key) {
                errs.push(Cause::duplicate(
                    format!("spec.ports[{i}]"),
                    &json!({"port": port, "protocol": key.1}),
                ));
            }
            seen.push(key);
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                if ty == "ClusterIP" && np != 0 {
                    errs.push(Cause::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
            }
        }
        errs
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let (a, b) = (
            str_at(new, &["spec", "clusterIP"]),
            str_at(old, &["spec", "clusterIP"]),
        );
        let changing_type = str_at(new, &["spec", "type"]) != str_at(old, &["spec", "type"]);
        if b.is_some_and(|b| !b.is_empty()) && a != b && !(changing_type && a.is_none()) {
            return vec![Cause::immutable("spec.clusterIPs[0]")];
        }
        Vec::new()
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Type", "string", "The type of the service."),
            col("Cluster-IP", "string", "The cluster IP of the service."),
            col("External-IP", "string", "The external IP of the service."),
            col("Port(s)", "string", "The ports of the service."),
            AGE,
            wide(
                "Selector",
                "string",
                "Route service traffic to pods with label keys and values matching this selector."
            ),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let ty = str_at(obj, &["spec", "type"]).unwrap_or("ClusterIP");
        let external = match ty {
            "ExternalName" => or_none(str_at(obj, &["spec", "externalName"])),
            "LoadBalancer" => {
                let ips: Vec<String> = arr_at(obj, &["status", "loadBalancer", "ingress"])
                    .iter()
                    .filter_map(|i| {
                        i.get("ip")
                            .or(i.get("hostname"))
                            .and_then(Value::as_str)
                            .map(String::from)
                    })
                    .collect();
                if ips.is_empty() {
                    json!("<pending>")
                } else {
                    json!(ips.join(","))
                }
            }
            _ => {
                let ips: Vec<String> = arr_at(obj, &["spec", "externalIPs"])
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                joined(ips)
            }
        };
        let ports = arr_at(obj, &["spec", "ports"]).iter().map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        });
        vec![
            name(obj),
            json!(ty),
            or_none(str_at(obj, &["spec", "clusterIP"])),
            external,
            joined(ports),
            age(obj),
            crate::table::map_cell(obj.pointer("/spec/selector")),
        ]
    }
}

pub struct Endpoints;

impl Strategy for Endpoints {
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Endpoints", "string", "Endpoints of the service"),
            AGE
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut eps = Vec::new();
        for s in arr_at(obj, &["subsets"]) {
            for a in arr_at(s, &["addresses"]) {
                let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
                let ports = arr_at(s, &["ports"]);
                if ports.is_empty() {
                    eps.push(ip.to_string());
                }
                for p in ports {
                    eps.push(format!(
                        "{ip}:{}",
                        p.get("port").and_then(Value::as_i64).unwrap_or(0)
                    ));
                }
            }
        }
        let shown = if eps.len() > 3 {
            format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
        } else {
            eps.join(",")
        };
        vec![name(obj), or_none(Some(&shown)), age(obj)]
    }
}

/// Upstream's limit on the data of a Secret or a ConfigMap (`MaxSecretSize`, 1 MiB).
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// The decoded size of a map of base64 values (Secret `data`, ConfigMap `binaryData`).
fn base64_total(map: Option<&Value>) -> usize {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(_, v)| {
            v.as_str().map_or(0, |s| {
                let pad = s.bytes().rev().take_while(|b| *b == b'=').count().min(2);
                (s.len() / 4 * 3).saturating_sub(pad)
            })
        })
        .sum()
}

pub struct ConfigMap;

impl Strategy for ConfigMap {
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let text: usize = obj
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(_, v)| v.as_str().map_or(0, str::len))
            .sum();
        if text + base64_total(obj.get("binaryData")) > MAX_SECRET_SIZE {
            // Upstream names no field: the limit is on the whole object's data.
            return vec![Cause::too_long("[]", MAX_SECRET_SIZE)];
        }
        Vec::new()
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Data", "string", "Data contains the configuration data."),
            AGE
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let n = obj
            .get("data")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
            + obj
                .get("binaryData")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
        vec![name(obj), json!(n), age(obj)]
    }
}

pub struct Secret;

impl Strategy for Secret {
    fn default(&self, obj: &mut Value) {
        let Some(m) = obj.as_object_mut() else { return };
        default_to(m, "type", "Opaque");
        // stringData is write-only: merged into data, base64-encoded.
        if let Some(Value::Object(sd)) = m.remove("stringData") {
            let data = obj_mut(obj, "data");
            for (k, v) in sd {
                let s = v.as_str().unwrap_or("").to_string();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut errs = Vec::new();
        if base64_total(obj.get("data")) > MAX_SECRET_SIZE {
            errs.push(Cause::too_long("data", MAX_SECRET_SIZE));
        }
        errs
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut errs = Vec::new();
        if new.get("type") != old.get("type") {
            errs.push(Cause::immutable("type"));
        }
        if old.get("immutable") == Some(&json!(true))
            && (new.get("data") != old.get("data") || new.get("immutable") != old.get("immutable"))
        {
            errs.push(Cause::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        errs
    }
    fn field(&self, obj: &Value, label: &str) -> Option<String> {
        (label == "type").then(|| str_at(obj, &["type"]).unwrap_or("").to_string())
    }
    fn field_labels(&self) -> &'static [&'static str] {
        &["type"]
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Type", "string", "The type of the secret"),
            col("Data", "string", "The number of keys in the secret"),
            AGE,
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let n = obj
            .get("data")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        vec![
            name(obj),
            json!(str_at(obj, &["type"]).unwrap_or("")),
            json!(n),
            age(obj),
        ]
    }
}

pub struct ServiceAccount;

impl Strategy for ServiceAccount {
    fn columns(&self) -> &'static [Column] {
        crate::columns![NAME, col("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), AGE]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![name(obj), json!(arr_at(obj, &["secrets"]).len()), age(obj)]
    }
}

pub struct Node;

impl Strategy for Node {
    fn keeps_status_on_create(&self) -> bool {
        true
    }
    fn field(&self, obj: &Value, label: &str) -> Option<String> {
        (label == "spec.unschedulable").then(|| {
            obj.pointer("/spec/unschedulable")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()
        })
    }
    fn field_labels(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Status", "string", "The status of the node"),
            col("Roles", "string", "The roles of the node"),
            AGE,
            col("Version", "string", "Kubelet Version reported by the node."),
            wide("Internal-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available."),
            wide("External-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available."),
            wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let ready = arr_at(obj, &["status", "conditions"])
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            .and_then(|c| c.get("status").and_then(Value::as_str));
        let mut status = match ready {
            Some("True") => "Ready".to_string(),
            _ => "NotReady".to_string(),
        };
        if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let roles = obj
            .labels()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
            .chain(
                obj.labels()
                    .and_then(|l| l.get("kubernetes.io/role"))
                    .and_then(Value::as_str)
                    .map(String::from),
            );
        let addr = |ty: &str| {
            arr_at(obj, &["status", "addresses"])
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some(ty))
                .and_then(|a| a.get("address").and_then(Value::as_str))
                .map(String::from)
        };
        let info = |k: &str| or_none(str_at(obj, &["status", "nodeInfo", k]).or(Some("<unknown>")));
        vec![
            name(obj),
            json!(status),
            joined(roles),
            age(obj),
            json!(str_at(obj, &["status", "nodeInfo", "kubeletVersion"]).unwrap_or("")),
            or_none(addr("InternalIP").as_deref()),
            or_none(addr("ExternalIP").as_deref()),
            info("osImage"),
            info("kernelVersion"),
            info("containerRuntimeVersion"),
        ]
    }
}

/// Events expire an hour after their last write, as upstream's `--event-ttl` default.
pub const EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// core/v1 Events.
pub struct Event;

/// events.k8s.io/v1 Events: the same objects, so the same TTL.
pub struct EventsV1;

impl Strategy for EventsV1 {
    fn ttl(&self) -> Option<std::time::Duration> {
        Some(EVENT_TTL)
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

impl Strategy for Event {
    fn ttl(&self) -> Option<std::time::Duration> {
        Some(EVENT_TTL)
    }
    fn field(&self, obj: &Value, label: &str) -> Option<String> {
        if !EVENT_FIELDS.contains(&label) {
            return None;
        }
        let v = if label == "source" {
            str_at(obj, &["source", "component"]).or(str_at(obj, &["reportingComponent"]))
        } else {
            let path: Vec<&str> = label.split('.').collect();
            str_at(obj, &path)
        };
        Some(v.unwrap_or("").to_string())
    }
    fn field_labels(&self) -> &'static [&'static str] {
        EVENT_FIELDS
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            col("Last Seen", "string", "Time when last this event was observed"),
            col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future."),
            col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            col("Object", "string", "The object that this event is about"),
            wide("Subobject", "string", "FieldPath of the involved object"),
            wide("Source", "string", "The component reporting this event. Should be a short machine understandable string."),
            col("Message", "string", "A human-readable description of the status of this operation."),
            wide("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
            wide("Count", "string", "The number of times this event has occurred."),
            Column { priority: 1, ..NAME },
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let since = |t: Option<&str>| match t.and_then(crate::meta::parse_time) {
            Some(t) => json!(crate::table::human_duration(
                jiff::Timestamp::now().duration_since(t).as_secs()
            )),
            None => json!("<unknown>"),
        };
        let last = str_at(obj, &["lastTimestamp"])
            .or(str_at(obj, &["eventTime"]))
            .or(str_at(obj, &["metadata", "creationTimestamp"]));
        let kind = str_at(obj, &["involvedObject", "kind"])
            .unwrap_or("")
            .to_lowercase();
        let oname = str_at(obj, &["involvedObject", "name"]).unwrap_or("");
        let source = match (
            str_at(obj, &["source", "component"]),
            str_at(obj, &["source", "host"]),
        ) {
            (Some(c), Some(h)) => format!("{c}, {h}"),
            (Some(c), None) => c.to_string(),
            _ => str_at(obj, &["reportingComponent"])
                .unwrap_or("")
                .to_string(),
        };
        vec![
            since(last),
            json!(str_at(obj, &["type"]).unwrap_or("")),
            json!(str_at(obj, &["reason"]).unwrap_or("")),
            json!(format!("{kind}/{oname}")),
            json!(str_at(obj, &["involvedObject", "fieldPath"]).unwrap_or("")),
            json!(source),
            json!(str_at(obj, &["message"]).unwrap_or("").trim()),
            since(str_at(obj, &["firstTimestamp"]).or(last)),
            json!(obj.get("count").and_then(Value::as_i64).unwrap_or(1)),
            name(obj),
        ]
    }
}

fn access_modes(obj: &Value, path: &[&str]) -> Value {
    let modes = arr_at(obj, path).iter().filter_map(Value::as_str).map(|m| {
        match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        }
        .to_string()
    });
    json!(modes.collect::<Vec<_>>().join(","))
}

pub struct PersistentVolume;

impl Strategy for PersistentVolume {
    fn default(&self, obj: &mut Value) {
        let spec = obj_mut(obj, "spec");
        default_to(spec, "persistentVolumeReclaimPolicy", "Retain");
        default_to(spec, "volumeMode", "Filesystem");
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Capacity", "string", "capacity is the description of the persistent volume's resources and capacity."),
            col("Access Modes", "string", "accessModes contains all ways the volume can be mounted."),
            col("Reclaim Policy", "string", "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim."),
            col("Status", "string", "phase indicates if a volume is available, bound to a claim, or released by a claim."),
            col("Claim", "string", "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim."),
            col("StorageClass", "string", "storageClassName is the name of StorageClass to which this persistent volume belongs."),
            col("VolumeAttributesClass", "string", "Name of VolumeAttributesClass to which this persistent volume belongs."),
            col("Reason", "string", "reason is a brief CamelCase string that describes any failure."),
            AGE,
            wide("VolumeMode", "string", "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state."),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        let claim = match (
            str_at(obj, &["spec", "claimRef", "namespace"]),
            str_at(obj, &["spec", "claimRef", "name"]),
        ) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => String::new(),
        };
        vec![
            name(obj),
            json!(str_at(obj, &["spec", "capacity", "storage"]).unwrap_or("")),
            access_modes(obj, &["spec", "accessModes"]),
            json!(str_at(obj, &["spec", "persistentVolumeReclaimPolicy"]).unwrap_or("")),
            json!(str_at(obj, &["status", "phase"]).unwrap_or("")),
            json!(claim),
            json!(str_at(obj, &["spec", "storageClassName"]).unwrap_or("")),
            or_none(str_at(obj, &["spec", "volumeAttributesClassName"])),
            json!(str_at(obj, &["status", "reason"]).unwrap_or("")),
            age(obj),
            json!(str_at(obj, &["spec", "volumeMode"]).unwrap_or("")),
        ]
    }
}

pub struct PersistentVolumeClaim;

impl Strategy for PersistentVolumeClaim {
    fn default(&self, obj: &mut Value) {
        default_to(obj_mut(obj, "spec"), "volumeMode", "Filesystem");
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }
    fn columns(&self) -> &'static [Column] {
        crate::columns![
            NAME,
            col("Status", "string", "phase represents the current phase of PersistentVolumeClaim."),
            col("Volume", "string", "volumeName is the binding reference to the PersistentVolume backing this claim."),
            col("Capacity", "string", "capacity represents the actual resources of the underlying volume."),
            col("Access Modes", "string", "accessModes contains the desired access modes the volume should have."),
            col("StorageClass", "string", "storageClassName is the name of the StorageClass required by the claim."),
            col("VolumeAttributesClass", "string", "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim."),
            AGE,
            wide("VolumeMode", "string", "volumeMode defines what type of volume is required by the claim."),
        ]
    }
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            name(obj),
            json!(str_at(obj, &["status", "phase"]).unwrap_or("")),
            json!(str_at(obj, &["spec", "volumeName"]).unwrap_or("")),
            json!(str_at(obj, &["status", "capacity", "storage"]).unwrap_or("")),
            access_modes(obj, &["status", "accessModes"]),
            json!(str_at(obj, &["spec", "storageClassName"]).unwrap_or("")),
            or_none(str_at(obj, &["spec", "volumeAttributesClassName"])),
            age(obj),
            json!(str_at(obj, &["spec", "volumeMode"]).unwrap_or("")),
        ]
    }
}
