//! One worker per pod: drives the runtime toward the pod's spec (sandbox, image pulls,
//! init containers in order, app containers with their restart policy and back-off,
//! probes, hooks), writes the status when it changes, and tears the pod down on deletion.

use crate::error::SyncError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tokio::sync::watch;

mod containers;
mod images;
mod limits;
mod prober;
mod status_manager;
mod sync;
#[cfg(test)]
mod sync_tests;
mod teardown;

pub use teardown::remove_pod;

use super::probe::{self, Kind};
use super::status::{self, Instance};
use super::{config, describe};
use crate::cri::CONTAINER_NAME;
use crate::events::Kind::{Normal, Warning};
use crate::{env, volumes, Kubelet};

/// Upstream's crash-loop back-off: 10 s doubling to 5 minutes, forgotten after a
/// container ran 10 minutes.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a worker looks at its containers when nothing else wakes it.
const RESYNC: Duration = Duration::from_secs(1);
/// configMap and secret volumes are refreshed this often.
const VOLUME_REFRESH: Duration = Duration::from_secs(5);
/// emptyDir usage is measured this often (upstream's eviction housekeeping interval).
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

/// The state one pod's worker keeps between syncs.
struct Worker {
    k: Arc<Kubelet>,
    uid: String,
    crash_backoff: HashMap<String, Backoff>,
    pull_backoff: HashMap<String, Backoff>,
    /// Why a container waits (ErrImagePull, CreateContainerConfigError, …).
    waiting: HashMap<String, (String, String)>,
    probes: HashMap<(String, Kind), probe::State>,
    last_status: Option<Value>,
    condition_times: HashMap<String, (String, String)>,
    start_time: Option<String>,
    volumes_at: Option<Instant>,
    /// Succeeded or Failed: nothing runs again.
    terminal: bool,
    /// Admitted on this node (or found running here).
    admitted: bool,
    /// Why this kubelet ended the pod (deadline, eviction): its status says so.
    killed: Option<crate::pod::limits::Kill>,
    /// When emptyDir usage was last measured.
    usage_at: Option<Instant>,
    runtime_name: String,
    memory_capacity: i64,
    /// The node's address (hostIP, and podIP of host-network pods).
    host_ip: String,
}

/// Runs the worker of pod `uid` until the pod is gone from the API (`None` arrives).
pub async fn run(k: Arc<Kubelet>, uid: String, mut rx: watch::Receiver<Option<Arc<Pod>>>) {
    let runtime_name = k.runtime_name.clone();
    let memory_capacity = k.memory_capacity;
    let mut w = Worker {
        k: k.clone(),
        uid,
        crash_backoff: HashMap::new(),
        pull_backoff: HashMap::new(),
        waiting: HashMap::new(),
        probes: HashMap::new(),
        last_status: None,
        condition_times: HashMap::new(),
        start_time: None,
        volumes_at: None,
        terminal: false,
        killed: None,
        admitted: false,
        usage_at: None,
        runtime_name,
        memory_capacity,
        host_ip: k.config.node_ip.to_string(),
    };
    let mut last: Option<Arc<Pod>> = None;
    loop {
        let current = rx.borrow_and_update().clone();
        let Some(pod) = current else {
            w.remove(last.as_deref()).await;
            return;
        };
        if last.is_none() {
            w.adopt(&pod);
        }
        last = Some(pod.clone());
        let pause = if pod.metadata.deletion_timestamp.is_some() {
            w.terminate(&pod, &mut rx).await
        } else {
            match w.sync(&pod).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(pod = %describe(&pod), error = %e, "pod sync failed");
                    Duration::from_secs(1)
                }
            }
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn now_nanos() -> i64 {
    jiff::Timestamp::now().as_nanosecond() as i64
}

/// The Instant that was `nanos` (a CRI timestamp) ago.
fn instant_of(nanos: i64) -> Instant {
    let ago = Duration::from_nanos((now_nanos() - nanos).max(0) as u64);
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

impl Worker {
    /// Takes over what an earlier kubelet knew: the pod's start time, conditions and
    /// whether it already finished.
    fn adopt(&mut self, pod: &Pod) {
        let st = pod.status.as_ref();
        self.start_time = st
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        for c in st.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
            if let Some(t) = &c.last_transition_time {
                self.condition_times.insert(
                    c.type_.clone(),
                    (
                        c.status.clone(),
                        t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    ),
                );
            }
        }
        let phase = st.and_then(|s| s.phase.as_deref());
        self.terminal = matches!(phase, Some("Succeeded") | Some("Failed"));
    }

    fn env_context<'a>(&'a self, pod_ip: &'a str) -> env::Context<'a> {
        let alloc_cpu = (std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64)
            * 1000;
        env::Context {
            client: &self.k.client,
            services: &self.k.services,
            pod_ip,
            host_ip: &self.host_ip,
            node_name: &self.k.config.node_name,
            node_cpu_milli: alloc_cpu,
            node_memory: self.memory_capacity,
        }
    }

    /// The pod's containers from the runtime, by name, newest first.
    async fn instances(&self) -> Result<HashMap<String, Vec<Instance>>, SyncError> {
        let list = self.k.cri.containers(Some(&self.uid)).await?;
        let mut by_name: HashMap<String, Vec<cri::Container>> = HashMap::new();
        for c in list {
            let name = c.labels.get(CONTAINER_NAME).cloned().unwrap_or_default();
            by_name.entry(name).or_default().push(c);
        }
        let mut out = HashMap::new();
        for (name, mut cs) in by_name {
            cs.sort_by_key(|c| {
                std::cmp::Reverse((
                    c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                    c.created_at,
                ))
            });
            let mut v = Vec::new();
            for (i, c) in cs.into_iter().enumerate() {
                // Upstream keeps one dead instance per container (for --previous); more go.
                if i >= 2 {
                    let _ = self.k.cri.remove_container(&c.id).await;
                    continue;
                }
                let st = match self.k.cri.container_status(&c.id).await {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                let term_msg = if st.state == cri::ContainerState::ContainerExited as i32 {
                    self.termination_message(&name, &st)
                } else {
                    String::new()
                };
                v.push(Instance {
                    id: c.id,
                    sandbox_id: c.pod_sandbox_id,
                    attempt: st.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                    state: st.state,
                    created_at: st.created_at,
                    started_at: st.started_at,
                    finished_at: st.finished_at,
                    exit_code: st.exit_code,
                    reason: st.reason,
                    message: if term_msg.is_empty() {
                        st.message
                    } else {
                        term_msg
                    },
                    image_ref: st.image_ref,
                });
            }
            out.insert(name, v);
        }
        Ok(out)
    }

    /// What the container wrote to its termination message file (at most 4 KiB).
    fn termination_message(&self, name: &str, st: &cri::ContainerStatus) -> String {
        let attempt = st.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
        let f = config::termination_file(&self.k.config.pod_dir(&self.uid), name, attempt);
        let bytes = std::fs::read(f).unwrap_or_default();
        String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned()
    }
}

/// The pod IP the status last reported.
fn reported_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// The running containers: name and ID of each one's newest instance.
fn running_containers(instances: &HashMap<String, Vec<Instance>>) -> Vec<(String, String)> {
    instances
        .iter()
        .filter_map(|(n, v)| {
            v.first()
                .filter(|i| i.running())
                .map(|i| (n.clone(), i.id.clone()))
        })
        .collect()
}

/// The attempt number for the next instance of container `name`.
fn next_attempt(instances: &HashMap<String, Vec<Instance>>, name: &str) -> u32 {
    instances
        .get(name)
        .and_then(|v| v.first())
        .map(|i| i.attempt + 1)
        .unwrap_or(0)
}

/// Go's time.Duration string for whole seconds and minutes ("10s", "1m20s", "5m0s").
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// Go's duration string rounded to milliseconds ("1.234s", "850ms").
fn go_duration_ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_prints_them() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration_ms(Duration::from_millis(850)), "850ms");
        assert_eq!(go_duration_ms(Duration::from_millis(1234)), "1.234s");
        assert_eq!(go_duration_ms(Duration::from_millis(2000)), "2s");
    }
}
