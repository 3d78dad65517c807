//! The Node object: registration, status (capacity, allocatable, conditions, addresses,
//! node info) written on change or every minute, and the node Lease renewed every 10 s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::Kubelet;

/// The kubelet version this agent reports (the API it implements).
pub const KUBELET_VERSION: &str = "v1.33.0-rkube";
/// How often the Lease is renewed and the status looked at.
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// A status is written at least this often even when nothing changed.
const STATUS_REPORT: Duration = Duration::from_secs(60);
/// Upstream's nodeStatusMaxImages.
const MAX_IMAGES: usize = 50;

/// `status.images`: the runtime's images, largest first, at most `MAX_IMAGES`, each with
/// its digests and tags as names (the scheduler's ImageLocality reads them).
async fn images(k: &Kubelet) -> Value {
    let Ok(mut images) = k.cri.list_images().await else {
        return Value::Array(Vec::new());
    };
    images.sort_by(|a, b| b.size.cmp(&a.size).then(a.id.cmp(&b.id)));
    images
        .into_iter()
        .take(MAX_IMAGES)
        .map(|i| {
            let names: Vec<String> = i.repo_digests.into_iter().chain(i.repo_tags).collect();
            json!({"names": names, "sizeBytes": i.size})
        })
        .collect()
}

/// What the machine has, in the units Node capacity uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// CPUs.
    pub cpus: u64,
    /// Memory in KiB.
    pub memory_ki: u64,
    /// Memory available in KiB (`memory.available`).
    pub memory_available_ki: u64,
    /// The data directory's filesystem in KiB.
    pub storage_ki: u64,
    /// Of which available in KiB (`nodefs.available`).
    pub storage_available_ki: u64,
    /// The most processes the node runs.
    pub pids_max: u64,
    /// Processes running now.
    pub pids_used: u64,
}

impl Machine {
    /// Reads /proc and statvfs of `data_dir`.
    pub fn read(data_dir: &std::path::Path) -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (storage_ki, storage_available_ki) = statvfs(data_dir)
            .map(|(t, a)| (t / 1024, a / 1024))
            .unwrap_or((0, 0));
        let pids_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768);
        let pids_used = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
            memory_ki: mem("MemTotal:"),
            memory_available_ki: mem("MemAvailable:"),
            storage_ki,
            storage_available_ki,
            pids_max,
            pids_used,
        }
    }
}

/// Total and available bytes of the filesystem holding `path`.
pub(crate) fn statvfs(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// One node condition as computed now.
struct Condition {
    type_: &'static str,
    status: bool,
    reason: String,
    message: String,
}

/// The node's conditions from the pressures and the machine, and the runtime's readiness
/// (None = ready, Some(message) = why not).
fn conditions(
    m: &Machine,
    pressure: crate::pod::admission::Pressure,
    not_ready: Option<String>,
) -> Vec<Condition> {
    let mem_pressure = pressure.memory;
    let disk_pressure = pressure.disk;
    let pid_pressure = m.pids_used * 100 > m.pids_max * 90;
    let pressure = |type_, on: bool, yes: &str, no: &str, msg_yes: &str, msg_no: &str| Condition {
        type_,
        status: on,
        reason: if on { yes } else { no }.into(),
        message: if on { msg_yes } else { msg_no }.into(),
    };
    vec![
        pressure(
            "MemoryPressure",
            mem_pressure,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "kubelet has insufficient memory available",
            "kubelet has sufficient memory available",
        ),
        pressure(
            "DiskPressure",
            disk_pressure,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has disk pressure",
            "kubelet has no disk pressure",
        ),
        pressure(
            "PIDPressure",
            pid_pressure,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "kubelet has insufficient PID available",
            "kubelet has sufficient PID available",
        ),
        match not_ready {
            None => Condition {
                type_: "Ready",
                status: true,
                reason: "KubeletReady".into(),
                message: "kubelet is posting ready status".into(),
            },
            Some(why) => Condition {
                type_: "Ready",
                status: false,
                reason: "KubeletNotReady".into(),
                message: why,
            },
        },
    ]
}

/// Whether the node filesystem's free space is below an eviction threshold.
pub fn disk_pressure(m: &Machine, eviction: &crate::eviction::Thresholds) -> bool {
    let (available, capacity) = (m.storage_available_ki * 1024, m.storage_ki * 1024);
    let soft = eviction.soft_nodefs.as_ref().map(|s| s.threshold);
    capacity > 0 && below(available, capacity, eviction.nodefs, soft)
}

/// Whether `available` is below the hard threshold, or the soft one (met at once for the
/// condition; its grace period only delays evictions).
fn below(
    available: u64,
    capacity: u64,
    hard: crate::eviction::Threshold,
    soft: Option<crate::eviction::Threshold>,
) -> bool {
    let under = |t: crate::eviction::Threshold| available < t.bytes(capacity);
    under(hard) || soft.is_some_and(under)
}

/// Whether the memory available is below an eviction threshold.
pub fn memory_pressure(m: &Machine, eviction: &crate::eviction::Thresholds) -> bool {
    let soft = eviction.soft_memory.as_ref().map(|s| s.threshold);
    below(
        m.memory_available_ki * 1024,
        m.memory_ki * 1024,
        eviction.memory,
        soft,
    )
}

/// The node's allocatable CPU (millicores), memory and ephemeral storage (KiB): capacity
/// less the reservations and the hard eviction thresholds.
pub fn allocatable(c: &crate::Config, m: &Machine) -> (u64, u64, u64) {
    let cpu = (m.cpus * 1000).saturating_sub(c.reserved_cpu_millis);
    let eviction_memory_ki = c.eviction.memory.bytes(m.memory_ki * 1024).div_ceil(1024);
    let memory = m
        .memory_ki
        .saturating_sub(c.reserved_memory_ki + eviction_memory_ki);
    let storage = m
        .storage_ki
        .saturating_sub(c.eviction.nodefs.bytes(m.storage_ki * 1024) / 1024);
    (cpu, memory, storage)
}

/// The node's status fields that do not change by the minute.
fn static_status(k: &Kubelet, m: &Machine, runtime: &(String, String)) -> Value {
    let c = &k.config;
    let capacity = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", m.memory_ki),
        "ephemeral-storage": format!("{}Ki", m.storage_ki),
        "pods": c.max_pods.to_string(),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    let (cpu_alloc, mem_alloc, storage_alloc) = allocatable(c, m);
    let allocatable = json!({
        "cpu": if cpu_alloc.is_multiple_of(1000) { (cpu_alloc / 1000).to_string() } else { format!("{cpu_alloc}m") },
        "memory": format!("{mem_alloc}Ki"),
        "ephemeral-storage": format!("{storage_alloc}Ki"),
        "pods": c.max_pods.to_string(),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "addresses": [
            {"type": "InternalIP", "address": c.node_ip.to_string()},
            {"type": "Hostname", "address": c.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": k.port()}},
        "nodeInfo": {
            "machineID": read("/etc/machine-id"),
            "systemUUID": read("/sys/class/dmi/id/product_uuid"),
            "bootID": read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read("/proc/sys/kernel/osrelease"),
            "osImage": os_image,
            "containerRuntimeVersion": format!("{}://{}", runtime.0, runtime.1),
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch,
        },
    })
}

/// The labels a kubelet puts on its node.
fn node_labels(k: &Kubelet) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut l = BTreeMap::from([
        (
            "kubernetes.io/hostname".to_string(),
            k.config.node_name.clone(),
        ),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
    ]);
    l.extend(k.config.node_labels.clone());
    l
}

/// Keeps the Node object and its Lease true until the task is dropped.
pub async fn run(k: std::sync::Arc<Kubelet>) {
    let nodes: Api<Node> = Api::all(k.client.clone());
    let mut last: Option<(Value, Instant)> = None;
    let mut transitions: BTreeMap<&'static str, (bool, jiff::Timestamp)> = BTreeMap::new();
    let mut registered = false;
    let mut lease_at: Option<Instant> = None;
    loop {
        let machine = Machine::read(&k.config.data_dir);
        let runtime = k.cri.version().await.unwrap_or_default();
        if !registered {
            registered = register(&k, &nodes, &machine, &runtime).await;
        }
        // Hand the pod CIDR to the runtime once the controller has assigned it.
        let node = nodes.get_opt(&k.config.node_name).await.ok().flatten();
        if let Some(cidr) = node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.pod_cidr.clone())
        {
            k.set_pod_cidr(&cidr).await;
        }
        if node.is_none() && registered {
            // Deleted under us: register again, as upstream's kubelet does.
            registered = register(&k, &nodes, &machine, &runtime).await;
        }
        let not_ready = k.runtime_not_ready().await;
        let ready = not_ready.is_none();
        let now = jiff::Timestamp::now();
        let conds = conditions(&machine, k.pressure(&machine), not_ready);
        for c in &conds {
            let e = transitions.entry(c.type_).or_insert((c.status, now));
            if e.0 != c.status {
                *e = (c.status, now);
            }
        }
        let mut status = static_status(&k, &machine, &runtime);
        status["images"] = images(&k).await;
        let summary: Vec<Value> = conds
            .iter()
            .map(|c| json!([c.type_, c.status, c.reason, c.message]))
            .collect();
        status["conditions"] = Value::Array(summary);
        let due = match &last {
            None => true,
            Some((prev, at)) => *prev != status || at.elapsed() >= STATUS_REPORT,
        };
        if due && registered {
            let mut body = status.clone();
            body["conditions"] = conds
                .iter()
                .map(|c| {
                    let since = transitions.get(c.type_).map(|t| t.1).unwrap_or(now);
                    json!({
                        "type": c.type_,
                        "status": if c.status { "True" } else { "False" },
                        "reason": c.reason,
                        "message": c.message,
                        "lastHeartbeatTime": now.to_string(),
                        "lastTransitionTime": since.to_string(),
                    })
                })
                .collect();
            let patch = json!({"status": body});
            match nodes
                .patch_status(
                    &k.config.node_name,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                Ok(_) => last = Some((status, Instant::now())),
                Err(e) => tracing::warn!(error = %e, "updating the node status"),
            }
        }
        if registered && lease_at.is_none_or(|t| t.elapsed() >= LEASE_RENEW) {
            if let Some(uid) = node.as_ref().and_then(|n| n.metadata.uid.clone()) {
                if renew_lease(&k, &uid).await {
                    lease_at = Some(Instant::now());
                }
            }
        }
        // Until Ready, look again every second, so the node turns Ready in seconds.
        let pause = if ready && registered {
            LEASE_RENEW
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = k.node_changed.notified() => {}
        }
    }
}

/// Creates the Node (or takes over an existing one with this name); true when done.
async fn register(
    k: &Kubelet,
    nodes: &Api<Node>,
    machine: &Machine,
    runtime: &(String, String),
) -> bool {
    let mut status = static_status(k, machine, runtime);
    status["conditions"] = json!([]);
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": k.config.node_name, "labels": node_labels(k)},
        "spec": {},
        "status": status,
    });
    let node: Node = match serde_json::from_value(node) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "building the Node object");
            return false;
        }
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {
            tracing::info!(node = %k.config.node_name, "registered the node");
            true
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": node_labels(k)}});
            match nodes
                .patch(
                    &k.config.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "updating the existing node");
                    false
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "registering the node (retrying)");
            false
        }
    }
}

/// Renews (or creates) the node's Lease in kube-node-lease.
async fn renew_lease(k: &Kubelet, node_uid: &str) -> bool {
    let leases: Api<Lease> = Api::namespaced(k.client.clone(), "kube-node-lease");
    let name = &k.config.node_name;
    let now = MicroTime(jiff::Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(name.clone()),
        lease_duration_seconds: Some(40),
        renew_time: Some(now),
        ..Default::default()
    };
    match leases.get_opt(name).await {
        Ok(Some(mut lease)) => {
            let mut s = lease.spec.take().unwrap_or_default();
            s.holder_identity = spec.holder_identity;
            s.lease_duration_seconds = spec.lease_duration_seconds;
            s.renew_time = spec.renew_time;
            lease.spec = Some(s);
            leases
                .replace(name, &PostParams::default(), &lease)
                .await
                .is_ok()
        }
        Ok(None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid: node_uid.into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases.create(&PostParams::default(), &lease).await.is_ok()
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading the node lease");
            false
        }
    }
}
