//! Pod admission on the node, as upstream's kubelet admits a pod before running it: under
//! disk pressure every pod is refused, under memory pressure a BestEffort one (unless it
//! tolerates the memory-pressure taint), system-critical pods never; then the pod's
//! requests must fit in the node's allocatable next to the pods already admitted (whoever
//! bound it: a pod with `spec.nodeName` set by hand never met the scheduler).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;

use super::{qos, Qos};

/// What an admitted pod takes: CPU in millicores, memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory: i64,
}

impl Usage {
    /// The pod's requests as upstream counts them (containers and sidecars against the
    /// largest init container, plus overhead).
    pub fn of(pod: &Pod) -> Usage {
        Usage {
            cpu_milli: crate::cgroups::pod_total(pod, "requests", "cpu").unwrap_or(0),
            memory: crate::cgroups::pod_total(pod, "requests", "memory").unwrap_or(0) / 1000,
        }
    }
}

/// The node's allocatable: CPU in millicores, memory in bytes, and pods.
#[derive(Clone, Copy, Debug)]
pub struct Allocatable {
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Pods.
    pub pods: i64,
}

/// Why a pod was refused: the status reason and message (upstream's wording).
pub type Rejection = (String, String);

/// What a refused pod's status message starts with (its event has the rest only).
pub const REJECTED: &str = "Pod was rejected: ";

/// The node's pressure conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    /// MemoryPressure.
    pub memory: bool,
    /// DiskPressure.
    pub disk: bool,
}

/// Priorities from here up are system-critical (`system-node-critical`,
/// `system-cluster-critical`): such pods are admitted under pressure.
const SYSTEM_CRITICAL: i32 = 2_000_000_000;

impl Pressure {
    /// Upstream's eviction-manager admission: why the pod is refused, if it is.
    fn refuses(self, pod: &Pod) -> Option<String> {
        let critical = pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .is_some_and(|p| p >= SYSTEM_CRITICAL);
        if !(self.memory || self.disk) || critical {
            return None;
        }
        if !self.disk && (qos(pod) != Qos::BestEffort || tolerates_memory_pressure(pod)) {
            return None;
        }
        let names: Vec<&str> = [(self.memory, "MemoryPressure"), (self.disk, "DiskPressure")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        Some(format!(
            "{REJECTED}The node had condition: [{}]. ",
            names.join(" ")
        ))
    }
}

/// Whether the pod tolerates `node.kubernetes.io/memory-pressure:NoSchedule`.
fn tolerates_memory_pressure(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten())
        .any(|t| {
            let key = t.key.as_deref().unwrap_or("");
            let effect = t.effect.as_deref().unwrap_or("");
            let exists = t.operator.as_deref() == Some("Exists");
            (key == "node.kubernetes.io/memory-pressure" || (key.is_empty() && exists))
                && (effect.is_empty() || effect == "NoSchedule")
                && (exists || t.value.as_deref().unwrap_or("").is_empty())
        })
}

/// The pods admitted on this node, by UID.
#[derive(Default)]
pub struct Admitted(Mutex<HashMap<String, Usage>>);

impl Admitted {
    /// Admits the pod (remembering what it takes) or says why not.
    pub fn admit(
        &self,
        uid: &str,
        pod: &Pod,
        node: Allocatable,
        pressure: Pressure,
    ) -> Result<(), Rejection> {
        if let Some(message) = pressure.refuses(pod) {
            return Err(("Evicted".into(), message));
        }
        let mut admitted = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let want = Usage::of(pod);
        let used = admitted.iter().filter(|(u, _)| u.as_str() != uid).fold(
            (Usage::default(), 0i64),
            |(sum, n), (_, u)| {
                let sum = Usage {
                    cpu_milli: sum.cpu_milli + u.cpu_milli,
                    memory: sum.memory + u.memory,
                };
                (sum, n + 1)
            },
        );
        let checks = [
            ("pods", 1, used.1, node.pods),
            ("cpu", want.cpu_milli, used.0.cpu_milli, node.cpu_milli),
            ("memory", want.memory, used.0.memory, node.memory),
        ];
        for (name, requested, in_use, capacity) in checks {
            if requested > 0 && in_use + requested > capacity {
                return Err((
                    format!("OutOf{name}"),
                    format!(
                        "{REJECTED}Node didn't have enough resource: {name}, requested: {requested}, used: {in_use}, capacity: {capacity}"
                    ),
                ));
            }
        }
        admitted.insert(uid.to_string(), want);
        Ok(())
    }

    /// Counts a pod that already runs here (adopted after a restart) without checks.
    pub fn adopt(&self, uid: &str, pod: &Pod) {
        let mut admitted = self.0.lock().unwrap_or_else(|p| p.into_inner());
        admitted.insert(uid.to_string(), Usage::of(pod));
    }

    /// Forgets a pod that finished or went away.
    pub fn release(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(cpu: &str, memory: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}))
        .unwrap()
    }

    #[test]
    fn requests_must_fit_next_to_the_admitted_pods() {
        let node = Allocatable {
            cpu_milli: 1000,
            memory: 1 << 30,
            pods: 2,
        };
        let a = Admitted::default();
        assert!(a
            .admit("a", &pod("600m", "100Mi"), node, Pressure::default())
            .is_ok());
        let (reason, msg) = a
            .admit("b", &pod("500m", "100Mi"), node, Pressure::default())
            .unwrap_err();
        assert_eq!(reason, "OutOfcpu");
        assert_eq!(
            msg,
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 500, used: 600, capacity: 1000"
        );
        assert!(a
            .admit("b", &pod("400m", "100Mi"), node, Pressure::default())
            .is_ok());
        let (reason, _) = a
            .admit("c", &pod("0", "0"), node, Pressure::default())
            .unwrap_err();
        assert_eq!(reason, "OutOfpods");
        a.release("a");
        assert!(a
            .admit("c", &pod("100m", "1Mi"), node, Pressure::default())
            .is_ok());
        let best_effort: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c"}]}})).unwrap();
        let memory = Pressure {
            memory: true,
            disk: false,
        };
        let (reason, msg) = a.admit("d", &best_effort, node, memory).unwrap_err();
        assert_eq!(
            (reason.as_str(), msg.as_str()),
            (
                "Evicted",
                "Pod was rejected: The node had condition: [MemoryPressure]. "
            )
        );
        // Tolerating the memory-pressure taint, it is admitted.
        a.release("b");
        a.release("c");
        let mut tolerant = best_effort.clone();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![serde_json::from_value(
            json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        )
        .unwrap()]);
        assert!(a.admit("d", &tolerant, node, memory).is_ok());
        a.release("d");
        // Disk pressure refuses everything but system-critical pods.
        let both = Pressure {
            memory: true,
            disk: true,
        };
        let (_, msg) = a.admit("e", &pod("1m", "1"), node, both).unwrap_err();
        assert_eq!(
            msg,
            "Pod was rejected: The node had condition: [MemoryPressure DiskPressure]. "
        );
        let mut critical = pod("1m", "1");
        critical.spec.as_mut().unwrap().priority = Some(2_000_001_000);
        assert!(a.admit("e", &critical, node, both).is_ok());
    }
}
