//! CRI configurations from a pod: the sandbox (metadata, DNS, ports, namespaces, cgroup
//! parent) and each container (command, env, mounts, resources, security).

use crate::error::{ConfigError, IoError};
use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use rkube_api::quantity;

use crate::cri::{
    CONTAINER_NAME, GRACE_PERIOD, POD_NAME, POD_NAMESPACE, POD_UID, RESTART_COUNT,
    TERMINATION_MESSAGE_PATH,
};
use crate::{env, volumes, Config};

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    HashMap::from([
        (
            POD_NAME.into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            POD_NAMESPACE.into(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        ),
        (POD_UID.into(), pod.metadata.uid.clone().unwrap_or_default()),
    ])
}

/// Whether the pod uses the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The sandbox configuration of `pod` (attempt `attempt`).
pub fn sandbox(cfg: &Config, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    let m = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = m.namespace.clone().unwrap_or_default();
    let name = m.name.clone().unwrap_or_default();
    let uid = m.uid.clone().unwrap_or_default();
    let host_net = spec.host_network.unwrap_or(false);
    let hostname = if host_net {
        cfg.node_name.clone()
    } else {
        let h = spec.hostname.clone().unwrap_or_else(|| name.clone());
        h.chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_string()
    };
    let mut labels: HashMap<String, String> =
        m.labels.clone().unwrap_or_default().into_iter().collect();
    labels.extend(pod_labels(pod));
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let node = cri::NamespaceMode::Node as i32;
    let pod_mode = cri::NamespaceMode::Pod as i32;
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name,
            uid: uid.clone(),
            namespace: ns.clone(),
            attempt,
        }),
        hostname,
        log_directory: cfg
            .pod_log_dir(&ns, m.name.as_deref().unwrap_or(""), &uid)
            .display()
            .to_string(),
        dns_config: Some(dns(cfg, pod)),
        port_mappings: ports,
        labels,
        annotations: m
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: super::cgroup_parent(pod),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: if host_net { node } else { pod_mode },
                    pid: if spec.host_pid.unwrap_or(false) {
                        node
                    } else if spec.share_process_namespace.unwrap_or(false) {
                        pod_mode
                    } else {
                        cri::NamespaceMode::Container as i32
                    },
                    ipc: if spec.host_ipc.unwrap_or(false) {
                        node
                    } else {
                        pod_mode
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sysctls: spec
                .security_context
                .as_ref()
                .and_then(|s| s.sysctls.clone())
                .into_iter()
                .flatten()
                .map(|s| (s.name, s.value))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// resolv.conf for the pod's `dnsPolicy` and `dnsConfig`.
fn dns(cfg: &Config, pod: &Pod) -> cri::DnsConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let policy = spec
        .dns_policy
        .clone()
        .unwrap_or_else(|| "ClusterFirst".into());
    let host_net = spec.host_network.unwrap_or(false);
    let mut out = cri::DnsConfig::default();
    let cluster = policy == "ClusterFirstWithHostNet" || (policy == "ClusterFirst" && !host_net);
    if cluster {
        let d = &cfg.cluster_domain;
        out.servers = cfg.cluster_dns.clone();
        out.searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
        out.options = vec!["ndots:5".into()];
    } else if policy != "None" {
        // Default (and ClusterFirst with host network): the node's resolver.
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for l in host.lines() {
            let mut w = l.split_whitespace();
            match w.next() {
                Some("nameserver") => out.servers.extend(w.next().map(String::from)),
                Some("search") | Some("domain") => out.searches.extend(w.map(String::from)),
                Some("options") => out.options.extend(w.map(String::from)),
                _ => {}
            }
        }
    }
    if let Some(c) = &spec.dns_config {
        out.servers
            .extend(c.nameservers.clone().unwrap_or_default());
        out.searches.extend(c.searches.clone().unwrap_or_default());
        for o in c.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            out.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            out.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    out
}

/// Milli-units of a container's resource (`requests` or `limits`), if set.
pub(crate) fn resource(c: &Container, which: &str, name: &str) -> Option<i64> {
    let r = c.resources.as_ref()?;
    let m = if which == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    };
    m?.get(name).and_then(|q| quantity::parse_milli(&q.0))
}

/// CPU shares, quota and memory limit, and the OOM score for the pod's QoS class.
pub fn linux_resources(
    pod: &Pod,
    c: &Container,
    memory_capacity: i64,
) -> cri::LinuxContainerResources {
    let cpu_limit = resource(c, "limits", "cpu");
    let cpu_request = resource(c, "requests", "cpu").or(cpu_limit);
    let mem_limit = resource(c, "limits", "memory").map(|m| m / 1000);
    let mem_request = resource(c, "requests", "memory")
        .or(resource(c, "limits", "memory"))
        .map(|m| m / 1000);
    let shares = cpu_request.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2);
    let oom = match super::qos(pod) {
        super::Qos::Guaranteed => -997,
        super::Qos::BestEffort => 1000,
        super::Qos::Burstable => {
            let req = mem_request.unwrap_or(0);
            let adj = if memory_capacity > 0 {
                1000 - 1000 * req / memory_capacity
            } else {
                999
            };
            adj.clamp(2, 999)
        }
    };
    cri::LinuxContainerResources {
        cpu_shares: shares,
        cpu_period: if cpu_limit.is_some() { 100_000 } else { 0 },
        cpu_quota: cpu_limit.map(|m| (m * 100).max(1000)).unwrap_or(0),
        memory_limit_in_bytes: mem_limit.unwrap_or(0),
        oom_score_adj: oom,
        ..Default::default()
    }
}

/// Inputs for one container's configuration beyond the pod.
pub struct ContainerInput<'a> {
    /// Which instance of the container this is (0 first).
    pub attempt: u32,
    /// Its resolved environment.
    pub env: &'a env::Env,
    /// The pod's directory (volumes, etc-hosts, termination logs).
    pub pod_dir: &'a Path,
    /// The node's memory, the limit of containers without one.
    pub memory_capacity: i64,
    /// The image as the runtime knows it.
    pub image: String,
}

/// The container configuration, or the CreateContainerConfigError message.
pub fn container(
    pod: &Pod,
    c: &Container,
    input: &ContainerInput<'_>,
) -> Result<cri::ContainerConfig, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let vol = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == vm.name)
            .ok_or_else(|| {
                format!(
                    "cannot find volume {:?} to mount into container {:?}",
                    vm.name, c.name
                )
            })?;
        let base = volumes::host_path(input.pod_dir, vol)
            .ok_or_else(|| format!("volume {:?} has an unsupported type", vm.name))?;
        let sub = vm
            .sub_path_expr
            .as_ref()
            .map(|e| env::expand(e, input.env))
            .or_else(|| vm.sub_path.clone())
            .filter(|s| !s.is_empty());
        let host = match sub {
            Some(s) => volumes::sub_path(&base, &s)?,
            None => base,
        };
        mounts.push(cri::Mount {
            container_path: vm.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: vm.read_only.unwrap_or(false),
            propagation: match vm.mount_propagation.as_deref() {
                Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer as i32,
                Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional as i32,
                _ => cri::MountPropagation::PropagationPrivate as i32,
            },
            ..Default::default()
        });
    }
    let mounted = |mounts: &Vec<cri::Mount>, p: &str| mounts.iter().any(|m| m.container_path == p);
    // /etc/hosts managed by the kubelet (not for host-network pods).
    if !host_network(pod) && !mounted(&mounts, "/etc/hosts") {
        mounts.push(cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: input.pod_dir.join("etc-hosts").display().to_string(),
            ..Default::default()
        });
    }
    let term_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    let term_file = termination_file(input.pod_dir, &c.name, input.attempt);
    if !term_path.is_empty() && !mounted(&mounts, &term_path) {
        if let Some(parent) = term_file.parent() {
            std::fs::create_dir_all(parent).map_err(IoError::at("creating", parent))?;
        }
        std::fs::write(&term_file, b"").map_err(IoError::at("creating", &term_file))?;
        mounts.push(cri::Mount {
            container_path: term_path.clone(),
            host_path: term_file.display().to_string(),
            ..Default::default()
        });
    }
    let mut labels = pod_labels(pod);
    labels.insert(CONTAINER_NAME.into(), c.name.clone());
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let annotations = HashMap::from([
        (RESTART_COUNT.to_string(), input.attempt.to_string()),
        (TERMINATION_MESSAGE_PATH.to_string(), term_path),
        (GRACE_PERIOD.to_string(), grace.to_string()),
    ]);
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = spec.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let security = cri::LinuxContainerSecurityContext {
        privileged: sc.privileged.unwrap_or(false),
        capabilities: Some(cri::Capability {
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            ..Default::default()
        }),
        run_as_user: sc
            .run_as_user
            .or(psc.run_as_user)
            .map(|v| cri::Int64Value { value: v }),
        run_as_group: sc
            .run_as_group
            .or(psc.run_as_group)
            .map(|v| cri::Int64Value { value: v }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        supplemental_groups: psc.supplemental_groups.unwrap_or_default(),
        ..Default::default()
    };
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|s| env::expand(s, input.env))
            .collect()
    };
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: input.attempt,
        }),
        image: Some(cri::ImageSpec {
            image: input.image.clone(),
            ..Default::default()
        }),
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: input
            .env
            .0
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", c.name, input.attempt),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(pod, c, input.memory_capacity)),
            security_context: Some(security),
        }),
        ..Default::default()
    })
}

/// The host file behind a container instance's termination message path.
pub fn termination_file(pod_dir: &Path, container: &str, attempt: u32) -> std::path::PathBuf {
    pod_dir
        .join("containers")
        .join(container)
        .join(attempt.to_string())
}

/// The pod's /etc/hosts: localhost entries, the pod's own address, and hostAliases.
pub fn etc_hosts(pod: &Pod, pod_ip: &str, hostname: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !pod_ip.is_empty() {
        let spec = pod.spec.as_ref();
        let fqdn = spec.and_then(|s| s.subdomain.as_ref()).map(|sub| {
            format!(
                "{hostname}.{sub}.{}.svc.cluster.local\t",
                pod.metadata.namespace.as_deref().unwrap_or("default")
            )
        });
        s.push_str(&format!(
            "{pod_ip}\t{}{hostname}\n",
            fqdn.unwrap_or_default()
        ));
    }
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default();
    if !aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            s.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn resources_follow_upstream_conversions() {
        let p = pod(
            serde_json::json!({"containers": [{"name": "c", "resources": {
            "limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m", "memory": "64Mi"}}}]}),
        );
        let r = linux_resources(&p, &p.spec.as_ref().unwrap().containers[0], 1 << 30);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 50_000));
        assert_eq!(r.memory_limit_in_bytes, 128 << 20);
        assert_eq!(r.oom_score_adj, 1000 - 1000 * (64 << 20) / (1 << 30));
        let best = pod(serde_json::json!({"containers": [{"name": "c"}]}));
        let r = linux_resources(&best, &best.spec.as_ref().unwrap().containers[0], 1 << 30);
        assert_eq!(
            (
                r.cpu_shares,
                r.cpu_quota,
                r.memory_limit_in_bytes,
                r.oom_score_adj
            ),
            (2, 0, 0, 1000)
        );
    }

    #[test]
    fn cluster_dns_and_dns_config() {
        let cfg = Config::new(
            "n1".into(),
            "10.0.0.1".parse().unwrap(),
            "/tmp/x".into(),
            "/tmp/s".into(),
        );
        let p = pod(
            serde_json::json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "2"}], "searches": ["x.test"]}}),
        );
        let d = dns(&cfg, &p);
        assert_eq!(d.servers, vec!["10.43.0.10"]);
        assert_eq!(
            d.searches,
            vec![
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "x.test"
            ]
        );
        assert_eq!(d.options, vec!["ndots:2"]);
        let none = pod(
            serde_json::json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"]}}),
        );
        assert_eq!(dns(&cfg, &none).servers, vec!["1.2.3.4"]);
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let p = pod(
            serde_json::json!({"containers": [], "hostAliases": [{"ip": "10.1.1.1", "hostnames": ["a", "b"]}]}),
        );
        let h = etc_hosts(&p, "10.42.0.5", "web");
        assert!(h.contains("10.42.0.5\tweb\n"), "{h}");
        assert!(h.contains("10.1.1.1\ta\tb\n"), "{h}");
    }
}
