//! The kubelet: registers its node, keeps the node's status and Lease true, and runs the
//! pods bound to it through CRI (pod workers), reporting their status and events.

pub mod cgroups;
pub mod cri;
#[cfg(test)]
mod cri_fake;
pub mod env;
pub mod error;
pub mod events;
pub mod eviction;
pub mod image_gc;
pub mod logs;
pub mod node;
pub mod pod;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod stats;
pub mod volumes;

use crate::error::ParseError;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1 as cri_api;

/// How a kubelet runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Node's name.
    pub node_name: String,
    /// The address other nodes and the apiserver reach this node at (InternalIP).
    pub node_ip: IpAddr,
    /// The agent's directory (`DATA_DIR/agent`): pods' volumes and logs live under it.
    pub data_dir: PathBuf,
    /// The CRI runtime's unix socket.
    pub cri_socket: PathBuf,
    /// The port of the kubelet's HTTPS server (reported in the node status).
    pub port: u16,
    /// The most pods the node runs (`--max-pods`).
    pub max_pods: u32,
    /// The most processes a pod may have (`--pod-max-pids`; None: no limit).
    pub pod_pids_limit: Option<i64>,
    /// Held back from allocatable (system-reserved + kube-reserved).
    pub reserved_cpu_millis: u64,
    /// Memory held back, in KiB.
    pub reserved_memory_ki: u64,
    /// The cluster DNS Service IPs and domain, written into pods' resolv.conf.
    pub cluster_dns: Vec<String>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Extra labels for the Node (node roles).
    pub node_labels: BTreeMap<String, String>,
    /// The HTTPS server's certificate and the CA of its clients; None serves nothing.
    pub tls: Option<server::Tls>,
    /// When unused images are removed.
    pub image_gc: image_gc::Policy,
    /// Hard eviction thresholds (`--eviction-hard`).
    pub eviction: eviction::Thresholds,
    /// Whether the kubelet manages the kubepods cgroups (on a real node it must; tests of
    /// its logic against a fake runtime leave the host's cgroups alone).
    pub manage_cgroups: bool,
}

impl Config {
    /// Defaults for a node named `node_name` at `node_ip` with state under `data_dir`.
    pub fn new(
        node_name: String,
        node_ip: IpAddr,
        data_dir: PathBuf,
        cri_socket: PathBuf,
    ) -> Config {
        Config {
            node_name,
            node_ip,
            data_dir,
            cri_socket,
            port: 10250,
            max_pods: 110,
            pod_pids_limit: None,
            reserved_cpu_millis: 0,
            reserved_memory_ki: 0,
            cluster_dns: vec!["10.43.0.10".into()],
            cluster_domain: "cluster.local".into(),
            node_labels: BTreeMap::new(),
            tls: None,
            image_gc: image_gc::Policy::default(),
            eviction: eviction::Thresholds::default(),
            manage_cgroups: true,
        }
    }

    /// Adds a `cpu=100m,memory=256Mi` reservation (the kubelet's --kube-reserved and
    /// --system-reserved syntax) to what allocatable holds back.
    pub fn reserve(&mut self, spec: &str) -> Result<(), ParseError> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, q) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: expected NAME=QUANTITY (cpu=100m,memory=256Mi)")
            })?;
            let bad = || format!("{part:?}: {q:?} is not a quantity");
            match name {
                "cpu" => {
                    let m = rkube_api::quantity::parse_milli(q)
                        .filter(|v| *v >= 0)
                        .ok_or_else(bad)?;
                    self.reserved_cpu_millis += m as u64;
                }
                "memory" => {
                    let b = rkube_api::quantity::parse_units(q)
                        .filter(|v| *v >= 0)
                        .ok_or_else(bad)?;
                    self.reserved_memory_ki += (b as u64).div_ceil(1024);
                }
                other => {
                    return Err(format!("{other:?}: only cpu and memory can be reserved").into())
                }
            }
        }
        Ok(())
    }

    /// Where pod `uid`'s volumes and other files live.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }

    /// Where a pod's container logs go (`/var/log/pods/NS_NAME_UID` upstream).
    pub fn pod_log_dir(&self, ns: &str, name: &str, uid: &str) -> PathBuf {
        self.data_dir
            .join("logs/pods")
            .join(format!("{ns}_{name}_{uid}"))
    }
}

/// Why the kubelet could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The container runtime did not answer.
    #[error(transparent)]
    Runtime(#[from] cri::ConnectError),
    /// The data directory cannot be written.
    #[error("creating {}: {source}", path.display())]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kubelet's port is taken.
    #[error("the kubelet cannot listen on {addr}: {source} (choose another --kubelet-port)")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The running kubelet's shared state.
pub struct Kubelet {
    /// How it runs.
    pub config: Config,
    /// The API client, with the node's credentials.
    pub client: kube::Client,
    /// The container runtime.
    pub cri: Arc<dyn cri::RuntimeService>,
    /// Writes events about pods and the node.
    pub recorder: events::Recorder,
    /// The pod CIDR last handed to the runtime.
    pod_cidr: Mutex<Option<String>>,
    /// Wakes the node status loop early (runtime state changed).
    pub node_changed: tokio::sync::Notify,
    /// The runtime's name (container IDs are `NAME://ID`).
    pub runtime_name: String,
    /// The machine's memory in bytes (OOM scores, resourceFieldRef defaults).
    pub memory_capacity: i64,
    /// Every Service (for pods' Service link variables), kept by a watch.
    pub services: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
    _services_watch: AbortOnDrop,
    /// The HTTPS server's socket until `run` takes it, and its port.
    listener: Mutex<Option<tokio::net::TcpListener>>,
    port: u16,
    /// The QoS-level cgroups' shares, from the pods started here.
    pub qos_cgroups: cgroups::QosCgroups,
    /// The pods admitted on this node (what their requests take).
    pub admitted: pod::admission::Admitted,
    /// Pods the eviction manager chose, by UID, for their workers to end.
    pub evictions: Mutex<std::collections::HashMap<String, pod::limits::Kill>>,
    /// When image garbage collection first saw each image, and last saw it used.
    pub images_seen: tokio::sync::Mutex<image_gc::Seen>,
    /// When the memory and disk pressures were last observed.
    pressure_seen: Mutex<eviction::PressureSeen>,
}

impl Kubelet {
    /// The node's pressure conditions: a signal past a hard or soft threshold now, or
    /// within the transition period since it last was. Node status and pod admission
    /// both read them.
    pub fn pressure(&self, m: &node::Machine) -> pod::admission::Pressure {
        let e = &self.config.eviction;
        let now = [node::memory_pressure(m, e), node::disk_pressure(m, e)];
        let [memory, disk] = self
            .pressure_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(now, e.transition_period);
        pod::admission::Pressure { memory, disk }
    }

    /// Connects to the runtime (waiting up to 30 s for it) and prepares the state.
    pub async fn new(config: Config, client: kube::Client) -> Result<Arc<Kubelet>, StartError> {
        let cri = cri::Cri::connect(&config.cri_socket, Duration::from_secs(30)).await?;
        Self::with_runtime(config, client, Arc::new(cri)).await
    }

    /// Prepares the state for this runtime (the real one, or a fake in tests).
    pub async fn with_runtime(
        config: Config,
        client: kube::Client,
        cri: Arc<dyn cri::RuntimeService>,
    ) -> Result<Arc<Kubelet>, StartError> {
        let pods = config.data_dir.join("pods");
        std::fs::create_dir_all(&pods).map_err(|source| StartError::Io { path: pods, source })?;
        let (listener, port) = match &config.tls {
            Some(_) => {
                let addr = std::net::SocketAddr::from(([0, 0, 0, 0], config.port));
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?;
                let port = l.local_addr().map(|a| a.port()).unwrap_or(config.port);
                (Some(l), port)
            }
            None => (None, config.port),
        };
        let (services, writer) = kube::runtime::reflector::store();
        let api: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::all(client.clone());
        let watch =
            kube::runtime::reflector(writer, kube::runtime::watcher(api, Default::default()));
        let services_watch = AbortOnDrop(tokio::spawn(async move {
            use futures::StreamExt;
            let mut s = std::pin::pin!(watch);
            while let Some(ev) = s.next().await {
                if let Err(e) = ev {
                    tracing::debug!(error = %e, "watching services");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
        let runtime_name = cri
            .version()
            .await
            .map(|v| v.0)
            .unwrap_or_else(|_| "cri".into());
        let machine = node::Machine::read(&config.data_dir);
        let memory_capacity = machine.memory_ki as i64 * 1024;
        if config.manage_cgroups {
            cgroups::enforce_node_allocatable(
                (machine.cpus * 1000).saturating_sub(config.reserved_cpu_millis) as i64,
                (machine.memory_ki.saturating_sub(config.reserved_memory_ki) * 1024) as i64,
            );
        }
        Ok(Arc::new(Kubelet {
            runtime_name,
            memory_capacity,
            services,
            _services_watch: services_watch,
            listener: Mutex::new(listener),
            port,
            qos_cgroups: Default::default(),
            evictions: Mutex::default(),
            images_seen: Default::default(),
            pressure_seen: Default::default(),
            admitted: Default::default(),
            recorder: events::Recorder::new(client.clone(), config.node_name.clone()),
            config,
            client,
            cri,
            pod_cidr: Mutex::new(None),
            node_changed: tokio::sync::Notify::new(),
        }))
    }

    /// Whether the runtime is rkube's built-in one, whose streaming server speaks the
    /// WebSocket protocols only (SPDY clients are translated for it; other runtimes'
    /// streaming servers get SPDY relayed as is).
    pub fn builtin_runtime(&self) -> bool {
        self.runtime_name == "rkube"
    }

    /// The kubelet port reported to the apiserver.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs node status, lease and pod workers until dropped.
    pub async fn run(self: Arc<Self>) {
        let node = tokio::spawn(node::run(self.clone()));
        let pods = tokio::spawn(pod::manager::run(self.clone()));
        let listener = self.listener.lock().expect("listener lock").take();
        let server = match (listener, self.config.tls.clone()) {
            (Some(l), Some(tls)) => Some(AbortOnDrop(tokio::spawn(server::serve(
                self.clone(),
                l,
                tls,
            )))),
            _ => None,
        };
        let gc = AbortOnDrop(tokio::spawn(image_gc::run(self.clone())));
        let evict = AbortOnDrop(tokio::spawn(eviction::run(self.clone())));
        let _guard = (AbortOnDrop(node), AbortOnDrop(pods), server, gc, evict);
        std::future::pending::<()>().await;
    }

    /// Hands the node's pod CIDR to the runtime (once per change).
    async fn set_pod_cidr(&self, cidr: &str) {
        if self.pod_cidr.lock().expect("cidr lock").as_deref() == Some(cidr) {
            return;
        }
        let req = cri_api::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri_api::RuntimeConfig {
                network_config: Some(cri_api::NetworkConfig {
                    pod_cidr: cidr.into(),
                }),
            }),
        };
        match self.cri.update_runtime_config(req).await {
            Ok(_) => {
                tracing::info!(%cidr, "pod CIDR handed to the runtime");
                *self.pod_cidr.lock().expect("cidr lock") = Some(cidr.into());
            }
            Err(e) => tracing::warn!(error = %e.message(), "setting the runtime's pod CIDR"),
        }
    }

    /// None when the runtime and its network are ready, else upstream's message why not.
    async fn runtime_not_ready(&self) -> Option<String> {
        let status = match self.cri.status().await {
            Ok(s) => s.status.unwrap_or_default(),
            Err(e) => {
                return Some(format!(
                    "container runtime is down: {} ({})",
                    e.message(),
                    self.config.cri_socket.display()
                ))
            }
        };
        let cond = |t: &str| status.conditions.iter().find(|c| c.r#type == t).cloned();
        for (t, what) in [
            (
                "RuntimeReady",
                "container runtime status check may not have completed yet",
            ),
            ("NetworkReady", "container runtime network not ready"),
        ] {
            match cond(t) {
                Some(c) if c.status => {}
                Some(c) => {
                    let prefix = if t == "NetworkReady" {
                        "container runtime network not ready"
                    } else {
                        "container runtime not ready"
                    };
                    return Some(format!(
                        "{prefix}: {t}=false reason:{} message:{}",
                        c.reason, c.message
                    ));
                }
                None => return Some(what.into()),
            }
        }
        None
    }
}

/// A Go-style duration (`90s`, `2m`, `1h30m`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let bad = || ParseError(format!("{s:?} is not a duration (like 30s, 2m, 1h30m)"));
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(n * secs);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A task that ends with its owner.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn reservations_add_up() {
        let mut c = Config::new(
            "n".into(),
            "127.0.0.1".parse().unwrap(),
            "/x".into(),
            "/s".into(),
        );
        c.reserve("cpu=100m,memory=256Mi").unwrap();
        c.reserve("cpu=1").unwrap();
        assert_eq!(
            (c.reserved_cpu_millis, c.reserved_memory_ki),
            (1100, 256 * 1024)
        );
        assert!(c.reserve("gpu=1").is_err());
        assert!(c.reserve("cpu").is_err());
        assert!(c.reserve("memory=lots").is_err());
    }
}
