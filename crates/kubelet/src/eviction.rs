//! Node-pressure eviction, as upstream's eviction manager: `--eviction-hard` thresholds
//! (`memory.available<100Mi,nodefs.available<10%`) decide the MemoryPressure and
//! DiskPressure conditions and what allocatable keeps back. While a signal is below its
//! threshold, one pod is evicted per interval (disk: once unused images are gone and that
//! was not enough), chosen as upstream ranks them: pods using more than they request
//! first, then the lowest priority, then the most usage above the request. Memory counts
//! the pod's working set; disk its containers' writable layers and logs and its emptyDirs.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, ListParams};

use crate::pod::limits::Kill;
use crate::stats::{binary_si, ContainerUsage, PodUsage};
use crate::Kubelet;

/// How often the signals are looked at (upstream's housekeeping interval).
const INTERVAL: Duration = Duration::from_secs(10);

/// A threshold: an amount, or a percentage of capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    Percent(u64),
}

impl Threshold {
    /// The threshold in bytes for a capacity.
    pub fn bytes(self, capacity: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            Threshold::Percent(p) => capacity / 100 * p,
        }
    }
}

/// The hard eviction thresholds this kubelet acts on (upstream's defaults: memory 100Mi,
/// nodefs 10%).
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub memory: Threshold,
    /// As written, for eviction messages.
    pub memory_text: String,
    pub nodefs: Threshold,
    /// As written.
    pub nodefs_text: String,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory: Threshold::Bytes(100 << 20),
            memory_text: "100Mi".into(),
            nodefs: Threshold::Percent(10),
            nodefs_text: "10%".into(),
        }
    }
}

impl Thresholds {
    /// Parses `--eviction-hard` (`signal<value,...`); signals not given keep their
    /// defaults. Signals rkube does not measure (imagefs, inodes, pids) are accepted and
    /// ignored.
    pub fn parse(spec: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (signal, value) = item
                .split_once('<')
                .ok_or_else(|| format!("{item:?}: expected SIGNAL<VALUE"))?;
            let threshold = match value.strip_suffix('%') {
                Some(p) => match p.parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => Threshold::Percent(p as u64),
                    _ => return Err(format!("{item:?}: bad percentage")),
                },
                None => match rkube_api::quantity::parse_units(value) {
                    Some(b) if b >= 0 => Threshold::Bytes(b as u64),
                    _ => return Err(format!("{item:?}: bad quantity")),
                },
            };
            match signal {
                "memory.available" => {
                    t.memory = threshold;
                    t.memory_text = value.to_string();
                }
                "nodefs.available" => {
                    t.nodefs = threshold;
                    t.nodefs_text = value.to_string();
                }
                "imagefs.available" | "nodefs.inodesFree" | "imagefs.inodesFree"
                | "pid.available" => {
                    tracing::warn!(signal, "eviction signal not measured by rkube; ignored")
                }
                other => return Err(format!("unknown eviction signal {other:?}")),
            }
        }
        Ok(t)
    }
}

/// A running pod as the ranking sees it.
pub struct Candidate {
    pub uid: String,
    pub usage: u64,
    pub request: u64,
    pub priority: i32,
}

/// The pod to evict first: usage above request first, then the lowest priority, then the
/// most usage above request.
pub fn victim(pods: &[Candidate]) -> Option<&Candidate> {
    pods.iter().min_by_key(|p| {
        let over = p.usage > p.request;
        (
            !over,
            p.priority,
            std::cmp::Reverse(p.usage.saturating_sub(p.request)),
        )
    })
}

/// A resource the node ran low on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Starved {
    Memory,
    EphemeralStorage,
}

impl Starved {
    fn name(self) -> &'static str {
        match self {
            Starved::Memory => "memory",
            Starved::EphemeralStorage => "ephemeral-storage",
        }
    }

    /// A container's usage of it.
    fn usage(self, c: &ContainerUsage) -> Option<u64> {
        match self {
            Starved::Memory => c.working_set,
            Starved::EphemeralStorage => c.ephemeral,
        }
    }
}

/// A container's request of `resource` in bytes, and as written ("0" when none).
fn request(c: &Container, resource: &str) -> (u64, String) {
    let q = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(resource));
    match q.and_then(|q| rkube_api::quantity::parse_units(&q.0).map(|b| (b, &q.0))) {
        Some((b, text)) if b > 0 => (b as u64, text.clone()),
        _ => (0, "0".into()),
    }
}

/// The pod's request of `resource` (containers and sidecars, against the largest init).
fn pod_request(pod: &Pod, resource: &str) -> u64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let sum: u64 = spec.containers.iter().map(|c| request(c, resource).0).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| request(c, resource).0)
        .max()
        .unwrap_or(0);
    sum.max(init)
}

/// Upstream's eviction message: the resource, the threshold and what is left, and each
/// container using more than it requests.
fn message(
    starved: Starved,
    threshold: &str,
    available: u64,
    pod: &Pod,
    usage: Option<&PodUsage>,
) -> String {
    let mut m = format!(
        "The node was low on resource: {}. Threshold quantity: {threshold}, available: {}. ",
        starved.name(),
        binary_si(available)
    );
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for c in containers {
        let Some(used) = usage
            .and_then(|u| u.containers.get(&c.name))
            .and_then(|u| starved.usage(u))
        else {
            continue;
        };
        let (requested, written) = request(c, starved.name());
        if used > requested {
            m += &format!(
                "Container {} was using {}, which exceeds its request of {written}. ",
                c.name,
                binary_si(used)
            );
        }
    }
    m
}

/// Watches the memory and disk signals and marks one pod per interval for eviction while
/// one is below its threshold (the pod's worker carries it out).
pub async fn run(k: Arc<Kubelet>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        let mut m = crate::node::Machine::read(&k.config.data_dir);
        let eviction = &k.config.eviction;
        if !crate::node::memory_pressure(&m, eviction) && crate::node::disk_pressure(&m, eviction) {
            // Node-level reclaim first: unused images.
            match crate::image_gc::reclaim(&k).await {
                Ok(freed) if freed > 0 => m = crate::node::Machine::read(&k.config.data_dir),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reclaiming disk space from images"),
            }
        }
        let (starved, threshold, available) = if crate::node::memory_pressure(&m, eviction) {
            let t = eviction.memory_text.clone();
            (Starved::Memory, t, m.memory_available_ki * 1024)
        } else if crate::node::disk_pressure(&m, eviction) {
            let t = match eviction.nodefs {
                Threshold::Bytes(_) => eviction.nodefs_text.clone(),
                Threshold::Percent(_) => binary_si(eviction.nodefs.bytes(m.storage_ki * 1024)),
            };
            (Starved::EphemeralStorage, t, m.storage_available_ki * 1024)
        } else {
            continue;
        };
        let api: Api<Pod> = Api::all(k.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", k.config.node_name));
        let Ok(list) = api.list(&lp).await else {
            continue;
        };
        let pods: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                matches!(phase, Some("Running") | Some("Pending"))
            })
            .collect();
        {
            // One eviction at a time: wait while a chosen pod's worker has not taken it
            // (a pod that went away meanwhile is forgotten).
            let mut pending = k.evictions.lock().expect("evictions");
            pending.retain(|uid, _| pods.iter().any(|p| p.metadata.uid.as_ref() == Some(uid)));
            if !pending.is_empty() {
                continue;
            }
        }
        let mut usages: HashMap<String, PodUsage> = HashMap::new();
        let mut candidates = Vec::new();
        for p in &pods {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            let usage = match starved {
                Starved::Memory => {
                    crate::cgroups::memory_usage(&crate::pod::cgroup_parent(p)).unwrap_or(0)
                }
                Starved::EphemeralStorage => {
                    let Some(u) = crate::stats::pod_usage(&k, p).await else {
                        continue;
                    };
                    let total = u.ephemeral();
                    usages.insert(uid.clone(), u);
                    total
                }
            };
            candidates.push(Candidate {
                uid,
                usage,
                request: pod_request(p, starved.name()),
                priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            });
        }
        let Some(v) = victim(&candidates) else {
            continue;
        };
        let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.uid.as_ref() == Some(&v.uid))
        else {
            continue;
        };
        let usage = match usages.remove(&v.uid) {
            Some(u) => Some(u),
            None => crate::stats::pod_usage(&k, pod).await,
        };
        let message = message(starved, &threshold, available, pod, usage.as_ref());
        tracing::info!(pod = %v.uid, %message, "evicting a pod");
        k.evictions.lock().expect("evictions").insert(
            v.uid.clone(),
            Kill {
                reason: "Evicted".into(),
                message,
                eviction: true,
                warning: true,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_rank() {
        let t = Thresholds::parse("memory.available<1Gi,nodefs.available<5%,imagefs.available<15%")
            .unwrap();
        assert_eq!(t.memory, Threshold::Bytes(1 << 30));
        assert_eq!(t.memory_text, "1Gi");
        assert_eq!(t.nodefs.bytes(1000), 50);
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        assert!(Thresholds::parse("memory.available=1Gi").is_err());
        assert!(Thresholds::parse("cpu.available<1").is_err());
        assert!(Thresholds::parse("nodefs.available<200%").is_err());

        let c = |uid: &str, usage, request, priority| Candidate {
            uid: uid.into(),
            usage,
            request,
            priority,
        };
        let pods = [
            c("within", 50, 100, 0),
            c("over-important", 300, 100, 1000),
            c("over-a-little", 110, 100, 0),
            c("over-a-lot", 900, 100, 0),
        ];
        assert_eq!(victim(&pods).unwrap().uid, "over-a-lot");
        assert_eq!(victim(&pods[..1]).unwrap().uid, "within");
        assert!(victim(&[]).is_none());
    }

    #[test]
    fn messages_name_the_containers_over_their_requests() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "hog", "resources": {"requests": {"memory": "10Mi"}}},
                {"name": "calm", "resources": {"requests": {"memory": "10Mi"}}},
                {"name": "none"}]}}))
        .unwrap();
        let c = |ws: u64| ContainerUsage {
            working_set: Some(ws),
            ephemeral: Some(4096),
        };
        let usage = PodUsage {
            containers: [
                ("hog".to_string(), c(30 << 20)),
                ("calm".to_string(), c(1 << 20)),
                ("none".to_string(), c(12 << 10)),
            ]
            .into(),
            empty_dirs: 0,
        };
        assert_eq!(
            message(Starved::Memory, "100Mi", 51200 << 10, &pod, Some(&usage)),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. \
             Container hog was using 30Mi, which exceeds its request of 10Mi. \
             Container none was using 12Ki, which exceeds its request of 0. "
        );
        assert_eq!(
            message(Starved::EphemeralStorage, "1Gi", 1 << 20, &pod, None),
            "The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, available: 1Mi. "
        );
        assert_eq!(pod_request(&pod, "memory"), 20 << 20);
    }
}
