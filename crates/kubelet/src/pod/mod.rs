//! Pods on this node: the manager that watches them, one worker per pod that drives the
//! runtime to the pod's spec, and the status it reports.

pub mod admission;
pub mod config;
pub mod limits;
pub mod manager;
pub mod netprobe;
pub mod probe;
pub mod status;
pub mod worker;

use k8s_openapi::api::core::v1::{Container, Pod};
use rkube_api::quantity;

/// A container of the pod by name (app containers, then init containers).
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// The pod's quality-of-service class, as upstream computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// Every container's requests equal its limits.
    Guaranteed,
    /// Some requests or limits, not Guaranteed.
    Burstable,
    /// No requests or limits at all.
    BestEffort,
}

impl Qos {
    /// The class as the status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// Guaranteed when every container limits and requests cpu and memory equally; BestEffort
/// when nothing asks for either; Burstable otherwise.
pub fn qos(pod: &Pod) -> Qos {
    let Some(spec) = &pod.spec else {
        return Qos::BestEffort;
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.as_ref();
        for res in ["cpu", "memory"] {
            let get = |m: Option<
                &std::collections::BTreeMap<
                    String,
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                >,
            >| {
                m.and_then(|m| m.get(res))
                    .and_then(|q| quantity::parse_milli(&q.0))
                    .filter(|v| *v > 0)
            };
            let limit = get(r.and_then(|r| r.limits.as_ref()));
            // A missing request defaults to the limit.
            let request = get(r.and_then(|r| r.requests.as_ref())).or(limit);
            if limit.is_some() || request.is_some() {
                any = true;
            }
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        Qos::BestEffort
    } else if guaranteed {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

/// The pod's cgroup parent (cgroupfs driver): `/kubepods[/burstable|/besteffort]/podUID`.
pub fn cgroup_parent(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    match qos(pod) {
        Qos::Guaranteed => format!("/kubepods/pod{uid}"),
        Qos::Burstable => format!("/kubepods/burstable/pod{uid}"),
        Qos::BestEffort => format!("/kubepods/besteffort/pod{uid}"),
    }
}

/// Removes the pod's cgroup directories (runc removes the containers' own).
pub fn remove_cgroups(parent: &str) {
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = h.path().join(parent.trim_start_matches('/'));
        if dir.is_dir() {
            // Leftover child directories first (a sandbox's pause cgroup, if any).
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// "name_namespace(uid)", as upstream names a pod in messages.
pub fn describe(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]},
        }))
        .unwrap()
    }

    #[test]
    fn qos_classes() {
        assert_eq!(qos(&pod(serde_json::json!({}))), Qos::BestEffort);
        assert_eq!(
            qos(&pod(
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})
            )),
            Qos::Guaranteed
        );
        assert_eq!(
            qos(&pod(serde_json::json!({"requests": {"cpu": "1"}}))),
            Qos::Burstable
        );
        assert_eq!(
            qos(&pod(
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}})
            )),
            Qos::Burstable
        );
        assert_eq!(
            cgroup_parent(&pod(serde_json::json!({}))),
            "/kubepods/besteffort/podu1"
        );
    }
}
