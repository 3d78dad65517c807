//! Pod-level and QoS-level cgroups (cgroupfs driver), as upstream's pod and QoS container
//! managers keep them. A pod's cgroup (`/kubepods[/burstable|/besteffort]/podUID`, made
//! before its sandbox) holds its containers' CPU requests as shares and, when every
//! container declares them, the sum of their CPU and memory limits, so a pod as a whole
//! cannot exceed them. `besteffort` gets the minimum shares; `burstable` the sum of its
//! pods' requests. The runtime nests each container's own cgroup inside the pod's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::pod::config::resource as milli;
use crate::pod::{qos, Qos};

/// Upstream's MinShares and the CFS period it uses.
const MIN_SHARES: i64 = 2;
const PERIOD_US: i64 = 100_000;

/// What a pod's cgroup is given.
#[derive(Clone, Debug, PartialEq)]
pub struct PodResources {
    /// `cpu.shares` (cgroup v1; converted to `cpu.weight` on v2).
    pub cpu_shares: i64,
    /// Microseconds per `PERIOD_US`.
    pub cpu_quota: Option<i64>,
    /// The memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// `pids.max` (the kubelet's `--pod-max-pids`).
    pub pids_limit: Option<i64>,
}

/// The pod's total of `name` as upstream computes it: app containers and sidecars added
/// up, against the largest init container, plus the pod overhead. None when a container
/// does not declare it (for limits: then the pod is not limited).
pub(crate) fn pod_total(pod: &Pod, which: &str, name: &str) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    let value = |c: &Container| {
        let v = milli(c, which, name);
        // A request defaults to the limit.
        if which == "requests" {
            v.or_else(|| milli(c, "limits", name))
        } else {
            v
        }
    };
    let mut sum = Some(0i64);
    let mut init_max = Some(0i64);
    for c in &spec.containers {
        sum = sum.zip(value(c)).map(|(a, b)| a + b);
    }
    for c in spec.init_containers.iter().flatten() {
        let v = value(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sum = sum.zip(v).map(|(a, b)| a + b);
        } else {
            init_max = init_max.zip(v).map(|(a, b)| a.max(b));
        }
    }
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get(name))
        .and_then(|q| rkube_api::quantity::parse_milli(&q.0))
        .unwrap_or(0);
    if which == "requests" {
        // Undeclared requests count as zero.
        let s = sum.unwrap_or_else(|| spec.containers.iter().filter_map(value).sum());
        return Some(s.max(init_max.unwrap_or(0)) + overhead);
    }
    Some(sum?.max(init_max?) + overhead)
}

/// The pod cgroup's values (upstream's ResourceConfigForPod).
pub fn pod_resources(pod: &Pod) -> PodResources {
    if qos(pod) == Qos::BestEffort {
        return PodResources {
            cpu_shares: MIN_SHARES,
            cpu_quota: None,
            memory_limit: None,
            pids_limit: None,
        };
    }
    let cpu_request = pod_total(pod, "requests", "cpu").unwrap_or(0);
    PodResources {
        cpu_shares: shares(cpu_request),
        cpu_quota: pod_total(pod, "limits", "cpu").map(|m| (m * PERIOD_US / 1000).max(1000)),
        memory_limit: pod_total(pod, "limits", "memory").map(|m| m / 1000),
        pids_limit: None,
    }
}

/// CPU shares for millicores (upstream's MilliCPUToShares).
fn shares(milli: i64) -> i64 {
    (milli * 1024 / 1000).max(MIN_SHARES)
}

/// The cgroup filesystem's layout.
#[derive(Clone, Debug)]
enum Layout {
    /// v1: one hierarchy per controller.
    V1 {
        cpu: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
    },
    /// v2: one tree.
    V2(PathBuf),
}

fn layout() -> Option<Layout> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return Some(Layout::V2(root.to_path_buf()));
    }
    let cpu = root.join("cpu");
    let memory = root.join("memory");
    let pids = root.join("pids");
    (cpu.is_dir() && memory.is_dir()).then_some(Layout::V1 { cpu, memory, pids })
}

fn write(dir: &Path, file: &str, value: &str) {
    if let Err(e) = std::fs::write(dir.join(file), value) {
        tracing::debug!(dir = %dir.display(), file, value, error = %e, "writing a cgroup file");
    }
}

/// Creates `dir` (and its parents), enabling the controllers on the way down (v2).
fn make(dir: &Path, v2_root: Option<&Path>) -> bool {
    if let Some(root) = v2_root {
        let mut at = root.to_path_buf();
        let rel = dir.strip_prefix(root).unwrap_or(dir);
        for part in rel.components() {
            write(&at, "cgroup.subtree_control", "+cpu +memory +pids");
            at.push(part);
            let _ = std::fs::create_dir(&at);
        }
    }
    std::fs::create_dir_all(dir).is_ok()
}

/// Creates or updates the cgroup `parent` (e.g. `/kubepods/burstable/podUID`) with `r`.
pub fn apply(parent: &str, r: &PodResources) {
    let rel = parent.trim_start_matches('/');
    match layout() {
        Some(Layout::V1 { cpu, memory, pids }) => {
            let c = cpu.join(rel);
            if make(&c, None) {
                write(&c, "cpu.shares", &r.cpu_shares.to_string());
                write(&c, "cpu.cfs_period_us", &PERIOD_US.to_string());
                let quota = r.cpu_quota.unwrap_or(-1);
                write(&c, "cpu.cfs_quota_us", &quota.to_string());
            }
            let m = memory.join(rel);
            if make(&m, None) {
                let limit = r.memory_limit.map_or("-1".to_string(), |b| b.to_string());
                write(&m, "memory.limit_in_bytes", &limit);
            }
            let p = pids.join(rel);
            if pids.is_dir() && make(&p, None) {
                let max = r.pids_limit.map_or("max".to_string(), |n| n.to_string());
                write(&p, "pids.max", &max);
            }
        }
        Some(Layout::V2(root)) => {
            let d = root.join(rel);
            if make(&d, Some(&root)) {
                // The mapping upstream uses from shares to weight.
                let weight = 1 + ((r.cpu_shares - 2) * 9999) / 262_142;
                write(&d, "cpu.weight", &weight.clamp(1, 10_000).to_string());
                let quota = r.cpu_quota.map_or("max".to_string(), |q| q.to_string());
                write(&d, "cpu.max", &format!("{quota} {PERIOD_US}"));
                let limit = r.memory_limit.map_or("max".to_string(), |b| b.to_string());
                write(&d, "memory.max", &limit);
                let max = r.pids_limit.map_or("max".to_string(), |n| n.to_string());
                write(&d, "pids.max", &max);
            }
        }
        None => {}
    }
}

/// The memory a cgroup uses, as upstream's working set: usage less inactive file pages.
pub fn memory_usage(parent: &str) -> Option<u64> {
    let rel = parent.trim_start_matches('/');
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let stat = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (usage, inactive) = match layout()? {
        Layout::V1 { memory, .. } => {
            let d = memory.join(rel);
            let usage: u64 = read(d.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
            let s = read(d.join("memory.stat")).unwrap_or_default();
            (usage, stat(&s, "total_inactive_file "))
        }
        Layout::V2(root) => {
            let d = root.join(rel);
            let usage: u64 = read(d.join("memory.current"))?.trim().parse().ok()?;
            let s = read(d.join("memory.stat")).unwrap_or_default();
            (usage, stat(&s, "inactive_file "))
        }
    };
    Some(usage.saturating_sub(inactive))
}

/// Node allocatable enforcement (upstream's default `--enforce-node-allocatable=pods`):
/// `/kubepods` gets the shares of the node's CPU less the reservations, and its memory less
/// the reservations as a limit, so the pods together cannot starve the system and the
/// agent. (Upstream does not take the eviction threshold off this limit; neither does this.)
pub fn enforce_node_allocatable(cpu_milli: i64, memory_bytes: i64) {
    apply(
        "/kubepods",
        &PodResources {
            cpu_shares: shares(cpu_milli),
            cpu_quota: None,
            memory_limit: Some(memory_bytes),
            pids_limit: None,
        },
    );
}

/// The QoS-level cgroups: `besteffort` at the minimum shares, `burstable` at the sum of
/// its pods' CPU requests.
#[derive(Default)]
pub struct QosCgroups {
    burstable: Mutex<HashMap<String, i64>>,
}

impl QosCgroups {
    /// Counts a pod about to start (before its pod cgroup is made), and writes the QoS
    /// level's shares.
    pub fn pod_starting(&self, uid: &str, pod: &Pod) {
        let mut b = self.burstable.lock().unwrap_or_else(|p| p.into_inner());
        if qos(pod) == Qos::Burstable {
            b.insert(
                uid.to_string(),
                pod_total(pod, "requests", "cpu").unwrap_or(0),
            );
        } else {
            b.remove(uid);
        }
        self.write(&b);
    }

    /// Forgets a removed pod.
    pub fn pod_removed(&self, uid: &str) {
        let mut b = self.burstable.lock().unwrap_or_else(|p| p.into_inner());
        if b.remove(uid).is_some() {
            self.write(&b);
        }
    }

    fn write(&self, burstable: &HashMap<String, i64>) {
        let none = |shares| PodResources {
            cpu_shares: shares,
            cpu_quota: None,
            memory_limit: None,
            pids_limit: None,
        };
        apply("/kubepods/besteffort", &none(MIN_SHARES));
        apply(
            "/kubepods/burstable",
            &none(shares(burstable.values().sum())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"uid": "u"}, "spec": v})).unwrap()
    }

    #[test]
    fn pod_cgroup_values_follow_upstream() {
        let guaranteed = pod(serde_json::json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "250m", "memory": "32Mi"}}}]}));
        assert_eq!(
            pod_resources(&guaranteed),
            PodResources {
                cpu_shares: 768,
                cpu_quota: Some(75_000),
                memory_limit: Some(96 << 20),
                pids_limit: None
            }
        );
        // One container without a memory limit: the pod has none; shares from requests.
        let burstable = pod(serde_json::json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}},
                {"name": "b"}]}));
        assert_eq!(
            pod_resources(&burstable),
            PodResources {
                cpu_shares: 2048,
                cpu_quota: None,
                memory_limit: None,
                pids_limit: None
            },
            "the init container's 2 CPUs outweigh the app containers' 100m"
        );
        assert_eq!(
            pod_resources(&pod(serde_json::json!({"containers": [{"name": "a"}]}))).cpu_shares,
            2
        );
    }
}
