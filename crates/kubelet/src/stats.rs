//! What a pod uses, as upstream's eviction manager reads it: per running container the
//! memory working set and the local ephemeral storage (its writable layer, from the
//! runtime's CRI stats, plus its log files), and the pod's emptyDir volumes on disk.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;

use crate::Kubelet;

/// One running container's usage in bytes (None: the runtime did not say).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerUsage {
    /// Memory working set.
    pub working_set: Option<u64>,
    /// Writable layer plus logs.
    pub ephemeral: Option<u64>,
}

/// A pod's usage: its running containers by name, and its disk-backed emptyDirs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodUsage {
    /// Running containers by name.
    pub containers: HashMap<String, ContainerUsage>,
    /// Bytes of its disk-backed emptyDirs.
    pub empty_dirs: u64,
}

impl PodUsage {
    /// Everything the pod keeps on the node's disk: containers and emptyDirs.
    pub fn ephemeral(&self) -> u64 {
        let containers: u64 = self.containers.values().filter_map(|c| c.ephemeral).sum();
        containers + self.empty_dirs
    }
}

/// The pod's usage now (None when the runtime cannot be asked).
pub async fn pod_usage(k: &Kubelet, pod: &Pod) -> Option<PodUsage> {
    let uid = pod.metadata.uid.clone()?;
    let filter = cri::ContainerStatsFilter {
        label_selector: [(crate::cri::POD_UID.to_string(), uid.clone())].into(),
        ..Default::default()
    };
    let stats = k.cri.container_stats(filter).await.ok()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let logs = k.config.pod_log_dir(ns, name, &uid);
    let mut usage = PodUsage::default();
    for s in stats {
        let Some(cname) = s.attributes.and_then(|a| a.metadata).map(|m| m.name) else {
            continue;
        };
        let working_set = s.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
        let layer = s.writable_layer.and_then(|w| w.used_bytes).map(|v| v.value);
        let ephemeral = layer.map(|l| l + crate::pod::limits::usage(&logs.join(&cname)));
        usage.containers.insert(
            cname,
            ContainerUsage {
                working_set,
                ephemeral,
            },
        );
    }
    let pod_dir = k.config.pod_dir(&uid);
    usage.empty_dirs = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| {
            v.empty_dir
                .as_ref()
                .is_some_and(|e| e.medium.as_deref() != Some("Memory"))
        })
        .filter_map(|v| crate::volumes::host_path(&pod_dir, v))
        .map(|d| crate::pod::limits::usage(&d))
        .sum();
    Some(usage)
}

/// A byte count as Go's binary-SI quantity prints it: the largest of Ki, Mi, Gi, Ti, Pi,
/// Ei that divides it, else the plain number ("51200Ki", "100Mi", "1536").
pub fn binary_si(bytes: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes == 0 {
        return "0".into();
    }
    let (mut v, mut suffix) = (bytes, "");
    for s in SUFFIXES {
        if v % 1024 != 0 {
            break;
        }
        v /= 1024;
        suffix = s;
    }
    format!("{v}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_as_go_does() {
        assert_eq!(binary_si(0), "0");
        assert_eq!(binary_si(1536), "1536");
        assert_eq!(binary_si(51200 * 1024), "50Mi");
        assert_eq!(binary_si(51201 * 1024), "51201Ki");
        assert_eq!(binary_si(100 << 40), "100Ti");
    }
}
