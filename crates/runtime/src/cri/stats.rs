//! CRI stats messages for containers and pod sandboxes, from [`crate::stats`].

use k8s_cri::v1 as cri;

use super::Runtime;
use crate::container::Container;
use crate::sandbox::Sandbox;
use crate::stats::{attributes, cgroup_usage, cri_usage, disk_usage, interfaces, Usage};

/// One container's figures.
pub fn container(rt: &Runtime, c: &Container) -> cri::ContainerStats {
    let now = crate::now_nanos();
    let usage = cgroup_usage(&c.cgroup).unwrap_or_default();
    let rate = rt.cpu_rates.rate(&c.id, now, usage.cpu_ns);
    let (cpu, memory) = cri_usage(&usage, now, rate);
    let (bytes, inodes) = disk_usage(&rt.containers.dir(&c.id).join("upper"));
    cri::ContainerStats {
        attributes: Some(attributes(c)),
        cpu: Some(cpu),
        memory: Some(memory),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: rt.paths.root.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        }),
        swap: None,
    }
}

/// A pod's figures: its cgroup parent when the kubelet gave one, else the sum of its
/// running containers; network counters from its namespace.
pub fn sandbox(rt: &Runtime, sb: &Sandbox) -> cri::PodSandboxStats {
    let now = crate::now_nanos();
    let containers: Vec<Container> = rt
        .containers
        .list()
        .into_iter()
        .filter(|c| c.sandbox_id == sb.id)
        .filter(|c| rt.containers.state(c).0 == crate::container::State::Running)
        .collect();
    let parent = sb
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .filter(|p| !p.is_empty());
    let usage = parent.and_then(|p| cgroup_usage(&p)).unwrap_or_else(|| {
        let mut sum = Usage::default();
        for c in &containers {
            sum += cgroup_usage(&c.cgroup).unwrap_or_default();
        }
        sum
    });
    let rate = rt.cpu_rates.rate(&sb.id, now, usage.cpu_ns);
    let (cpu, memory) = cri_usage(&usage, now, rate);
    let ifaces = if sb.host_network {
        Vec::new()
    } else {
        interfaces(sb.netns.clone())
    };
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: Some(sb.metadata()),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network: Some(cri::NetworkUsage {
                timestamp: now,
                default_interface: ifaces.iter().find(|i| i.name == "eth0").cloned(),
                interfaces: ifaces,
            }),
            process: Some(cri::ProcessUsage {
                timestamp: now,
                process_count: Some(cri::UInt64Value {
                    value: usage.processes,
                }),
            }),
            containers: containers.iter().map(|c| container(rt, c)).collect(),
        }),
        windows: None,
    }
}
