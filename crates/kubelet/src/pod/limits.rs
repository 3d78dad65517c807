//! Limits the kubelet ends a running pod for, leaving the pod object in place as Failed:
//! `activeDeadlineSeconds` (reason `DeadlineExceeded`), and local ephemeral storage past
//! its limits (reason `Evicted`, as upstream's eviction manager checks them in order: a
//! disk-backed emptyDir over its `sizeLimit`, the pod over its containers' summed
//! `ephemeral-storage` limits, a container over its own).

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use crate::stats::{binary_si, PodUsage};
use crate::volumes;

/// Why the kubelet ends a pod: the status reason and message, and whether it is an
/// eviction (the pod then also gets the `DisruptionTarget` condition).
#[derive(Clone, Debug, PartialEq)]
pub struct Kill {
    /// The status reason (`Evicted`, `DeadlineExceeded`).
    pub reason: String,
    /// The status message.
    pub message: String,
    /// An eviction: the pod also gets the `DisruptionTarget` condition.
    pub eviction: bool,
    /// The event is a warning (evictions, refusals), not a normal one (deadlines).
    pub warning: bool,
    /// The containers' grace period (None: none for an eviction, else the pod's own).
    pub grace: Option<i64>,
}

/// Whether the pod has been active longer than its `activeDeadlineSeconds`, counted from
/// its start time (RFC 3339).
pub fn deadline(pod: &Pod, start_time: Option<&str>, now: jiff::Timestamp) -> Option<Kill> {
    let limit = pod.spec.as_ref()?.active_deadline_seconds?;
    let started: jiff::Timestamp = start_time?.parse().ok()?;
    let active = now.duration_since(started).as_secs();
    (active >= limit).then(|| Kill {
        reason: "DeadlineExceeded".into(),
        message: "Pod was active on the node longer than the specified deadline".into(),
        eviction: false,
        warning: false,
        grace: None,
    })
}

/// The first disk-backed emptyDir whose usage is over its `sizeLimit`, with upstream's
/// eviction message.
pub fn empty_dir(pod: &Pod, pod_dir: &Path) -> Option<Kill> {
    for v in pod.spec.as_ref()?.volumes.iter().flatten() {
        let Some(e) = &v.empty_dir else { continue };
        if e.medium.as_deref() == Some("Memory") {
            continue; // tmpfs: the mount's size caps it.
        }
        let Some(limit) = &e.size_limit else { continue };
        let Some(bytes) = rkube_api::quantity::parse_units(&limit.0) else {
            continue;
        };
        let Some(dir) = volumes::host_path(pod_dir, v) else {
            continue;
        };
        if usage(&dir) > bytes as u64 {
            return Some(Kill {
                reason: "Evicted".into(),
                message: format!(
                    "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                    v.name, limit.0
                ),
                eviction: true,
                warning: true,
                grace: None,
            });
        }
    }
    None
}

/// Whether any container of the pod limits its ephemeral storage (only then are its
/// containers measured).
pub fn limits_ephemeral_storage(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .any(|c| storage_limit(c).is_some())
}

/// A container's `ephemeral-storage` limit: bytes, and the quantity as written.
fn storage_limit(c: &k8s_openapi::api::core::v1::Container) -> Option<(u64, &str)> {
    let q = c
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("ephemeral-storage")?;
    let bytes = rkube_api::quantity::parse_units(&q.0).filter(|b| *b > 0)?;
    Some((bytes as u64, q.0.as_str()))
}

/// The pod over its containers' summed `ephemeral-storage` limits (containers, logs and
/// emptyDirs counted), or else the first container over its own (writable layer and
/// logs), with upstream's eviction messages.
pub fn ephemeral_storage(pod: &Pod, usage: &PodUsage) -> Option<Kill> {
    let containers = &pod.spec.as_ref()?.containers;
    let limits: Vec<(&str, u64, &str)> = containers
        .iter()
        .filter_map(|c| storage_limit(c).map(|(b, q)| (c.name.as_str(), b, q)))
        .collect();
    if limits.is_empty() {
        return None;
    }
    let evicted = |message: String| Kill {
        reason: "Evicted".into(),
        message,
        eviction: true,
        warning: true,
        grace: None,
    };
    let total: u64 = limits.iter().map(|l| l.1).sum();
    if usage.ephemeral() > total {
        let written = match limits.as_slice() {
            [(_, _, q)] => q.to_string(),
            _ => binary_si(total),
        };
        return Some(evicted(format!(
            "Pod ephemeral local storage usage exceeds the total limit of containers {written}. "
        )));
    }
    limits.iter().find_map(|(name, bytes, q)| {
        let used = usage.containers.get(*name)?.ephemeral?;
        (used > *bytes).then(|| {
            evicted(format!(
                "Container {name} exceeded its local ephemeral storage limit {q:?}. "
            ))
        })
    })
}

/// Disk space used under `dir` (allocated blocks, as `du`), not following symlinks.
pub fn usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deadlines_and_empty_dir_limits() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "activeDeadlineSeconds": 30, "containers": [{"name": "c"}],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "64Ki"}},
                        {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Ki"}}]}}))
        .unwrap();
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        assert_eq!(deadline(&pod, Some("2026-01-01T00:00:45Z"), now), None);
        let k = deadline(&pod, Some("2026-01-01T00:00:30Z"), now).unwrap();
        assert_eq!((k.reason.as_str(), k.eviction), ("DeadlineExceeded", false));
        assert_eq!(deadline(&pod, None, now), None, "not started");

        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("volumes/kubernetes.io~empty-dir/scratch");
        std::fs::create_dir_all(scratch.join("sub")).unwrap();
        std::fs::write(scratch.join("sub/small"), vec![1u8; 16 << 10]).unwrap();
        assert_eq!(empty_dir(&pod, dir.path()), None);
        std::fs::write(scratch.join("big"), vec![1u8; 128 << 10]).unwrap();
        let k = empty_dir(&pod, dir.path()).unwrap();
        assert_eq!(
            k.message,
            "Usage of EmptyDir volume \"scratch\" exceeds the limit \"64Ki\". "
        );
        assert!(k.eviction);
    }

    #[test]
    fn ephemeral_storage_limits() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [
                {"name": "a", "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
                {"name": "b", "resources": {"limits": {"ephemeral-storage": "3Mi"}}},
                {"name": "c"}]}}))
        .unwrap();
        assert!(limits_ephemeral_storage(&pod));
        let usage = |a: u64, b: u64, dirs: u64| PodUsage {
            containers: [
                ("a".to_string(), a),
                ("b".to_string(), b),
                ("c".to_string(), 0),
            ]
            .into_iter()
            .map(|(n, e)| {
                let u = crate::stats::ContainerUsage {
                    working_set: None,
                    ephemeral: Some(e),
                };
                (n, u)
            })
            .collect(),
            empty_dirs: dirs,
        };
        assert_eq!(ephemeral_storage(&pod, &usage(1 << 20, 1 << 20, 0)), None);
        let k = ephemeral_storage(&pod, &usage(2 << 20, 0, 0)).unwrap();
        assert_eq!(
            k.message,
            "Container a exceeded its local ephemeral storage limit \"1Mi\". "
        );
        assert!(k.eviction);
        // The pod's total counts its emptyDirs too.
        let k = ephemeral_storage(&pod, &usage(0, 1 << 20, 4 << 20)).unwrap();
        assert_eq!(
            k.message,
            "Pod ephemeral local storage usage exceeds the total limit of containers 4Mi. "
        );
        let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}]}}))
        .unwrap();
        assert!(!limits_ephemeral_storage(&plain));
        assert_eq!(ephemeral_storage(&plain, &usage(9 << 30, 0, 0)), None);
    }
}
