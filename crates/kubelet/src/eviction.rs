//! Node-pressure eviction, as upstream's eviction manager for memory: `--eviction-hard`
//! thresholds (`memory.available<100Mi,nodefs.available<10%`) decide the MemoryPressure
//! and DiskPressure conditions and what allocatable keeps back; while memory is below its
//! threshold, one pod is evicted per interval, chosen as upstream ranks them: pods using
//! more than they request first, then the lowest priority, then the most usage above the
//! request.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::pod::limits::Kill;
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
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory: Threshold::Bytes(100 << 20),
            memory_text: "100Mi".into(),
            nodefs: Threshold::Percent(10),
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
                "nodefs.available" => t.nodefs = threshold,
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

/// The pod's memory request (containers and sidecars, against the largest init).
fn memory_request(pod: &Pod) -> u64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let req = |c| crate::pod::config::resource(c, "requests", "memory").unwrap_or(0) / 1000;
    let sum: i64 = spec.containers.iter().map(req).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(req)
        .max()
        .unwrap_or(0);
    sum.max(init).max(0) as u64
}

/// Watches the memory signal and marks one pod per interval for eviction while it is
/// below the threshold (the pod's worker carries it out).
pub async fn run(k: Arc<Kubelet>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        let m = crate::node::Machine::read(&k.config.data_dir);
        let threshold = k.config.eviction.memory.bytes(m.memory_ki * 1024);
        let available = m.memory_available_ki * 1024;
        if available >= threshold {
            continue;
        }
        let api: Api<Pod> = Api::all(k.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", k.config.node_name));
        let Ok(list) = api.list(&lp).await else {
            continue;
        };
        let candidates: Vec<Candidate> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                matches!(phase, Some("Running") | Some("Pending"))
            })
            .filter_map(|p| {
                Some(Candidate {
                    uid: p.metadata.uid.clone()?,
                    usage: crate::cgroups::memory_usage(&crate::pod::cgroup_parent(p)).unwrap_or(0),
                    request: memory_request(p),
                    priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
                })
            })
            .collect();
        {
            // One eviction at a time: wait while a chosen pod's worker has not taken it
            // (a pod that went away meanwhile is forgotten).
            let mut pending = k.evictions.lock().expect("evictions");
            pending.retain(|uid, _| candidates.iter().any(|c| &c.uid == uid));
            if !pending.is_empty() {
                continue;
            }
        }
        let Some(v) = victim(&candidates) else {
            continue;
        };
        let message = format!(
            "The node was low on resource: memory. Threshold quantity: {}, available: {}Ki. ",
            k.config.eviction.memory_text, m.memory_available_ki
        );
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
}
