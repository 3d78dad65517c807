//! The node agent: the built-in container runtime (or another CRI runtime) and the
//! kubelet, as `rkube server` runs them for its own node.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rkube_runtime::Paths;

/// A task that ends with its owner.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the built-in runtime's state under `data_dir` (importing the air-gap images).
pub async fn open_runtime(
    data_dir: &Path,
    runc: &Path,
    options: rkube_runtime::cri::Options,
) -> anyhow::Result<Arc<rkube_runtime::cri::Runtime>> {
    let runc = if runc.components().count() > 1 {
        runc.to_path_buf()
    } else {
        rkube_runtime::cri::which(&runc.to_string_lossy()).ok_or_else(|| {
            anyhow::anyhow!(
                "{} not found on PATH: install it (apt-get install runc) or pass --runc PATH",
                runc.display()
            )
        })?
    };
    let options = rkube_runtime::cri::Options { runc, ..options };
    let paths = Paths::under(data_dir);
    tokio::task::spawn_blocking(move || rkube_runtime::cri::Runtime::open(paths, options))
        .await?
        .context("opening the runtime state")
}

/// The flags that describe this machine as a node (`rkube server` and `rkube agent`).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Name of this node (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's address (default: the host's first non-loopback IPv4 address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Port of the kubelet's HTTPS server (logs, exec, attach, port-forward; 0 = pick).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Use this CRI runtime (unix:///run/containerd/containerd.sock) instead of the
    /// built-in one.
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// The Linux bridge the built-in runtime attaches pods to.
    #[arg(long, default_value = "rkube0")]
    pub pod_bridge: String,
    /// Hard eviction thresholds: `memory.available<100Mi,nodefs.available<10%` (the
    /// defaults). Below one the node reports MemoryPressure or DiskPressure, refuses new
    /// pods and evicts running ones; allocatable keeps the thresholds back.
    #[arg(long, env = "RKUBE_EVICTION_HARD")]
    pub eviction_hard: Option<String>,
    /// Soft eviction thresholds, same form (none by default): the pressure condition at
    /// once, evictions once met for the signal's grace period.
    #[arg(long)]
    pub eviction_soft: Option<String>,
    /// Each soft threshold's grace period: `memory.available=1m30s,nodefs.available=2m`.
    #[arg(long, default_value = "")]
    pub eviction_soft_grace_period: String,
    /// The longest grace period (seconds) a pod gets when a soft threshold evicts it.
    #[arg(long, default_value_t = 0)]
    pub eviction_max_pod_grace_period: i64,
    /// How long a pressure condition stays after its signal recovers.
    #[arg(long, default_value = "5m")]
    pub eviction_pressure_transition_period: String,
    /// How much a signal that evicted must recover past its threshold before evictions
    /// stop: `memory.available=500Mi,nodefs.available=1Gi` (quantities or percentages;
    /// none by default).
    #[arg(long, default_value = "")]
    pub eviction_minimum_reclaim: String,
    /// The most processes one pod may run (its cgroup's pids.max; -1: no limit).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub pod_max_pids: i64,
    /// Resources held back from the node's allocatable for the system
    /// (`cpu=100m,memory=256Mi`).
    #[arg(long)]
    pub system_reserved: Option<String>,
    /// Resources held back from the node's allocatable for Kubernetes' own daemons.
    #[arg(long)]
    pub kube_reserved: Option<String>,
    /// Image filesystem usage (percent) above which unused images are removed.
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// Image filesystem usage (percent) that image garbage collection frees down to.
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
    /// How long an unused image is kept before it may be collected.
    #[arg(long, default_value = "2m")]
    pub minimum_image_ttl_duration: String,
    /// How often image garbage collection looks.
    #[arg(long, default_value = "5m")]
    pub image_gc_period: String,
}

impl NodeArgs {
    /// The node's name: the flag, else the host name.
    pub fn name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(crate::server::hostname)
    }

    /// The node's address: the flag, else the first non-loopback IPv4 of this host.
    pub fn ip(&self) -> IpAddr {
        node_ip(self.node_ip)
    }
}

/// What the node agent needs besides its flags.
pub struct LocalAgent<'a> {
    pub data_dir: &'a Path,
    pub node: &'a NodeArgs,
    pub cluster_dns: String,
    /// The kubeconfig the kubelet uses (node credentials).
    pub kubeconfig: String,
    /// The kubelet's HTTPS server certificate and the CA of its clients.
    pub tls: rkube_kubelet::server::Tls,
}

/// Starts the runtime (unless external) and the kubelet; both stop when the returned
/// tasks are dropped (containers keep running, as they outlive an agent restart).
pub async fn start(a: LocalAgent<'_>) -> anyhow::Result<Vec<AbortOnDrop>> {
    let mut tasks = Vec::new();
    let socket = match &a.node.container_runtime_endpoint {
        Some(e) => rkube_kubelet::cri::socket_path(e),
        None => {
            let options = rkube_runtime::cri::Options {
                bridge: a.node.pod_bridge.clone(),
                ..Default::default()
            };
            let rt = open_runtime(a.data_dir, Path::new("runc"), options).await?;
            let socket = crate::images::default_socket(a.data_dir);
            let s = socket.clone();
            tasks.push(AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = rkube_runtime::cri::serve(rt, &s, std::future::pending()).await {
                    tracing::error!(error = %e, "the container runtime stopped");
                }
            })));
            socket
        }
    };
    let kc = kube::config::Kubeconfig::from_yaml(&a.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let mut cfg =
        rkube_kubelet::Config::new(a.node.name(), a.node.ip(), a.data_dir.join("agent"), socket);
    cfg.port = a.node.kubelet_port;
    cfg.cluster_dns = vec![a.cluster_dns.clone()];
    cfg.tls = Some(a.tls);
    let n = a.node;
    anyhow::ensure!(
        n.image_gc_low_threshold <= n.image_gc_high_threshold && n.image_gc_high_threshold <= 100,
        "--image-gc-low-threshold must not exceed --image-gc-high-threshold (at most 100)"
    );
    let duration = |flag: &str, v: &str| {
        rkube_kubelet::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
    };
    cfg.image_gc = rkube_kubelet::image_gc::Policy {
        high_percent: n.image_gc_high_threshold,
        low_percent: n.image_gc_low_threshold,
        min_age: duration("minimum-image-ttl-duration", &n.minimum_image_ttl_duration)?,
        period: duration("image-gc-period", &n.image_gc_period)?
            .max(std::time::Duration::from_millis(100)),
    };
    cfg.pod_pids_limit = (n.pod_max_pids > 0).then_some(n.pod_max_pids);
    if let Some(e) = &n.eviction_hard {
        cfg.eviction = rkube_kubelet::eviction::Thresholds::parse(e)
            .map_err(|e| anyhow::anyhow!("--eviction-hard: {e}"))?;
    }
    cfg.eviction.transition_period = duration(
        "eviction-pressure-transition-period",
        &n.eviction_pressure_transition_period,
    )?;
    if let Some(soft) = &n.eviction_soft {
        let (graces, max) = (
            &n.eviction_soft_grace_period,
            n.eviction_max_pod_grace_period,
        );
        cfg.eviction
            .set_soft(soft, graces, max)
            .map_err(|e| anyhow::anyhow!("--eviction-soft: {e}"))?;
    }
    cfg.eviction
        .set_min_reclaim(&n.eviction_minimum_reclaim)
        .map_err(|e| anyhow::anyhow!("--eviction-minimum-reclaim: {e}"))?;
    for r in a.node.system_reserved.iter().chain(&a.node.kube_reserved) {
        cfg.reserve(r)
            .map_err(|e| anyhow::anyhow!("--kube-reserved/--system-reserved: {e}"))?;
    }
    let kubelet = rkube_kubelet::Kubelet::new(cfg, client).await?;
    tasks.push(AbortOnDrop(tokio::spawn(kubelet.run())));
    Ok(tasks)
}

/// The node's address: the given one, else the first non-loopback IPv4 of this host.
pub fn node_ip(given: Option<IpAddr>) -> IpAddr {
    given.unwrap_or_else(|| {
        rkube_apiserver::pki::host_addresses()
            .into_iter()
            .find(|a| a.is_ipv4() && !a.is_loopback())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    })
}

/// Where the agent's files live under the data dir.
pub fn agent_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent")
}
