//! What pods request and nodes offer, in the units the scheduler counts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{parse_milli, parse_units};

/// CPU in millicores, memory and storage in bytes, a pod count, extended resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Pods.
    pub pods: i64,
    /// Extended resources by name.
    pub scalar: BTreeMap<String, i64>,
}

/// What a pod counts for when it asked for nothing (upstream's non-zero defaults, used
/// for scoring only): 100m CPU, 200 MiB memory.
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory counted for a pod that requests none.
pub const DEFAULT_MEMORY: i64 = 200 << 20;

impl Resource {
    fn add_list(&mut self, list: &BTreeMap<String, Quantity>) {
        for (k, q) in list {
            match k.as_str() {
                "cpu" => self.milli_cpu += parse_milli(&q.0).unwrap_or(0),
                "memory" => self.memory += parse_units(&q.0).unwrap_or(0),
                "ephemeral-storage" => self.ephemeral_storage += parse_units(&q.0).unwrap_or(0),
                "pods" => self.pods += parse_units(&q.0).unwrap_or(0),
                _ => *self.scalar.entry(k.clone()).or_default() += parse_units(&q.0).unwrap_or(0),
            }
        }
    }

    /// Adds `o`.
    pub fn add(&mut self, o: &Resource) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Subtracts `o`.
    pub fn sub(&mut self, o: &Resource) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Each field the larger of the two.
    fn max(&mut self, o: &Resource) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// A container's requests (limits stand in for requests it does not set, as the API's
/// defaulting does).
fn container_requests(c: &Container) -> Resource {
    let mut r = Resource::default();
    let Some(res) = &c.resources else {
        return r;
    };
    let mut list = res.limits.clone().unwrap_or_default();
    list.extend(res.requests.clone().unwrap_or_default());
    r.add_list(&list);
    r
}

/// A pod's effective request: its containers (and restartable init containers, which run
/// beside them) or its largest init phase, whichever is more, plus overhead.
pub fn pod_requests(pod: &Pod) -> Resource {
    let mut total = Resource::default();
    let Some(spec) = &pod.spec else {
        return total;
    };
    for c in &spec.containers {
        total.add(&container_requests(c));
    }
    let mut sidecars = Resource::default();
    let mut init_peak = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            init_peak.max(&sidecars);
        } else {
            let mut phase = sidecars.clone();
            phase.add(&r);
            init_peak.max(&phase);
        }
    }
    total.add(&sidecars);
    total.max(&init_peak);
    if let Some(o) = &spec.overhead {
        total.add_list(o);
    }
    total.pods = 1;
    total
}

/// CPU and memory as counted for scoring: a container that asks for nothing counts for the
/// defaults.
pub fn non_zero_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else {
        return (0, 0);
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in &spec.containers {
        let r = container_requests(c);
        cpu += if r.milli_cpu == 0 {
            DEFAULT_MILLI_CPU
        } else {
            r.milli_cpu
        };
        mem += if r.memory == 0 {
            DEFAULT_MEMORY
        } else {
            r.memory
        };
    }
    (cpu, mem)
}

/// What a node offers pods: its allocatable (capacity when not reported).
pub fn allocatable(node: &Node) -> Resource {
    let mut r = Resource::default();
    if let Some(st) = &node.status {
        if let Some(a) = st.allocatable.as_ref().or(st.capacity.as_ref()) {
            r.add_list(a);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn requests_sum_containers_and_take_the_init_peak() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}},
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }}));
        let r = pod_requests(&p);
        assert_eq!((r.milli_cpu, r.memory, r.pods), (1010, 128 << 20, 1));
        let s = pod(json!({"spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}}},
            ],
        }}));
        assert_eq!(
            pod_requests(&s).milli_cpu,
            400,
            "a sidecar runs beside the containers"
        );
        assert_eq!(
            non_zero_requests(&pod(json!({"spec": {"containers": [{"name": "x"}]}}))),
            (100, 200 << 20)
        );
    }
}
