//! One worker per pod: drives the runtime toward the pod's spec (sandbox, image pulls,
//! init containers in order, app containers with their restart policy and back-off,
//! probes, hooks), writes the status when it changes, and tears the pod down on deletion.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tokio::sync::watch;

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
    killed: Option<super::limits::Kill>,
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
    async fn instances(&self) -> Result<HashMap<String, Vec<Instance>>, String> {
        let list = self
            .k
            .cri
            .containers(Some(&self.uid))
            .await
            .map_err(|e| e.message().to_string())?;
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

    /// One pass toward the spec; returns how long until the next look.
    async fn sync(&mut self, pod: &Pod) -> Result<Duration, String> {
        let k = self.k.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let pod_dir = k.config.pod_dir(&self.uid);
        let mut instances = self.instances().await?;
        let sandboxes = k
            .cri
            .sandboxes(Some(&self.uid))
            .await
            .map_err(|e| e.message().to_string())?;
        let newest = sandboxes.iter().max_by_key(|s| {
            (
                s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                s.created_at,
            )
        });
        let ready_sandbox = newest.filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
        if self.terminal {
            if let Some(s) = ready_sandbox {
                let _ = k.cri.stop_sandbox(&s.id).await;
            }
            let sid = newest.map(|s| s.id.clone()).unwrap_or_default();
            self.write_status(pod, &instances, &sid, false, "", true, false, false)
                .await;
            return Ok(Duration::from_secs(60));
        }
        if !self.admitted {
            if let Err(why) = self.admit(pod, newest.is_some() || !instances.is_empty()) {
                self.kill(pod, why, "").await;
                return Ok(Duration::from_secs(60));
            }
        }
        if let Some(why) = self.limit_reached(pod, &pod_dir).await {
            let sid = newest.map(|s| s.id.clone()).unwrap_or_default();
            self.kill(pod, why, &sid).await;
            return Ok(Duration::from_secs(60));
        }
        if self
            .volumes_at
            .is_none_or(|t| t.elapsed() >= VOLUME_REFRESH)
        {
            let ip = String::new();
            let ctx = self.env_context(&ip);
            if let Err(msg) = volumes::set_up(&ctx, &pod_dir, pod).await {
                k.recorder
                    .pod(pod, None, Warning, "FailedMount", &msg)
                    .await;
                let sid = newest.map(|s| s.id.clone()).unwrap_or_default();
                self.write_status(
                    pod,
                    &instances,
                    &sid,
                    ready_sandbox.is_some(),
                    "",
                    false,
                    false,
                    false,
                )
                .await;
                return Ok(Duration::from_secs(2));
            }
            self.volumes_at = Some(Instant::now());
        }
        // The sandbox: the newest ready one, else a new attempt.
        let attempt = match ready_sandbox {
            Some(s) => s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
            None => newest
                .map(|s| s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0) + 1)
                .unwrap_or(0),
        };
        let sandbox_cfg = config::sandbox(&k.config, pod, attempt);
        let sandbox_id = match ready_sandbox {
            Some(s) => s.id.clone(),
            None => {
                if let Some(old) = newest {
                    k.recorder
                        .pod(
                            pod,
                            None,
                            Normal,
                            "SandboxChanged",
                            "Pod sandbox changed, it will be killed and re-created.",
                        )
                        .await;
                    let _ = k.cri.stop_sandbox(&old.id).await;
                }
                // The pod's cgroup, with its limits, before anything runs in it.
                k.qos_cgroups.pod_starting(&self.uid, pod);
                let mut limits = crate::cgroups::pod_resources(pod);
                limits.pids_limit = k.config.pod_pids_limit;
                crate::cgroups::apply(&super::cgroup_parent(pod), &limits);
                let req = cri::RunPodSandboxRequest {
                    config: Some(sandbox_cfg.clone()),
                    runtime_handler: String::new(),
                };
                match k.cri.run_pod_sandbox(req).await {
                    Ok(id) => id,
                    Err(e) => {
                        let msg = format!("Failed to create pod sandbox: {}", e.message());
                        k.recorder
                            .pod(pod, None, Warning, "FailedCreatePodSandBox", &msg)
                            .await;
                        self.write_status(pod, &instances, "", false, "", false, false, false)
                            .await;
                        return Ok(Duration::from_secs(5));
                    }
                }
            }
        };
        let pod_ip = if config::host_network(pod) {
            self.host_ip.clone()
        } else {
            k.cri
                .sandbox_status(&sandbox_id)
                .await
                .ok()
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .unwrap_or_default()
        };
        let hosts = config::etc_hosts(pod, &pod_ip, &sandbox_cfg.hostname);
        let hosts_file = pod_dir.join("etc-hosts");
        if std::fs::read_to_string(&hosts_file).ok().as_deref() != Some(hosts.as_str()) {
            std::fs::create_dir_all(&pod_dir).map_err(|e| e.to_string())?;
            std::fs::write(&hosts_file, &hosts).map_err(|e| e.to_string())?;
        }
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let current = |instances: &HashMap<String, Vec<Instance>>, name: &str| {
            instances
                .get(name)
                .and_then(|v| v.first())
                .filter(|i| i.sandbox_id == sandbox_id)
                .cloned()
        };
        // Init containers, one at a time, in order.
        let mut init_done = true;
        let mut init_failed = false;
        let mut changed = false;
        for c in spec.init_containers.iter().flatten() {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            match current(&instances, &c.name) {
                Some(i) if i.running() => {
                    if sidecar {
                        continue;
                    }
                    init_done = false;
                    break;
                }
                Some(i) if i.exited() && i.exit_code == 0 && !sidecar => {
                    self.waiting.remove(&c.name);
                    continue;
                }
                Some(i) if i.exited() && !sidecar && policy == "Never" => {
                    init_failed = true;
                    init_done = false;
                    break;
                }
                Some(i) if i.exited() => {
                    changed |= self
                        .restart(pod, c, &i, &sandbox_id, &sandbox_cfg, &pod_ip, &instances)
                        .await;
                    init_done = false;
                    break;
                }
                other => {
                    if let Some(i) = other {
                        // Created but never started (an agent crash in between): redo.
                        let _ = k.cri.remove_container(&i.id).await;
                    }
                    let next = next_attempt(&instances, &c.name);
                    let started = self
                        .start(pod, c, next, &sandbox_id, &sandbox_cfg, &pod_ip)
                        .await;
                    changed |= started;
                    if !(sidecar && started) {
                        init_done = false;
                        break;
                    }
                }
            }
        }
        if init_done && !init_failed {
            for c in &spec.containers {
                match current(&instances, &c.name) {
                    Some(i) if i.running() => {}
                    Some(i) if i.exited() => {
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => i.exit_code != 0,
                            _ => true,
                        };
                        if restart {
                            changed |= self
                                .restart(pod, c, &i, &sandbox_id, &sandbox_cfg, &pod_ip, &instances)
                                .await;
                        } else {
                            self.waiting.remove(&c.name);
                        }
                    }
                    other => {
                        if let Some(i) = other {
                            let _ = k.cri.remove_container(&i.id).await;
                        }
                        let next = next_attempt(&instances, &c.name);
                        changed |= self
                            .start(pod, c, next, &sandbox_id, &sandbox_cfg, &pod_ip)
                            .await;
                    }
                }
            }
        }
        if changed {
            instances = self.instances().await?;
        }
        // Probes of running containers; a failed liveness or startup probe kills.
        let kill = self.probe(pod, &instances, &sandbox_id, &pod_ip).await;
        for (c, id, why) in &kill {
            k.recorder.pod(pod, Some(c), Normal, "Killing", why).await;
            let grace = spec.termination_grace_period_seconds.unwrap_or(30);
            self.stop(pod, c, id, &pod_ip, grace).await;
        }
        if !kill.is_empty() {
            instances = self.instances().await?;
        }
        let phase = self
            .write_status(
                pod,
                &instances,
                &sandbox_id,
                true,
                &pod_ip,
                false,
                init_done,
                init_failed,
            )
            .await;
        if matches!(phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            self.terminal = true;
            k.admitted.release(&self.uid);
            // Sidecars stop with the pod; the sandbox goes (its IP is free again).
            for list in instances.values() {
                if let Some(i) = list.first().filter(|i| i.running()) {
                    let _ = k
                        .cri
                        .stop_container(&i.id, spec.termination_grace_period_seconds.unwrap_or(30))
                        .await;
                }
            }
            let _ = k.cri.stop_sandbox(&sandbox_id).await;
            return Ok(Duration::from_secs(60));
        }
        // Wake for the earliest back-off expiry or probe, else the regular resync.
        let now = Instant::now();
        let mut pause = RESYNC;
        for b in self
            .crash_backoff
            .values()
            .chain(self.pull_backoff.values())
        {
            if b.until > now {
                pause = pause.min(b.until - now + Duration::from_millis(10));
            }
        }
        for p in self.probes.values() {
            pause = pause.min(
                p.next
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(50)),
            );
        }
        Ok(pause)
    }

    /// Restarts an exited container unless its back-off holds it; true if it started.
    #[allow(clippy::too_many_arguments)]
    async fn restart(
        &mut self,
        pod: &Pod,
        c: &Container,
        last: &Instance,
        sandbox_id: &str,
        sandbox_cfg: &cri::PodSandboxConfig,
        pod_ip: &str,
        instances: &HashMap<String, Vec<Instance>>,
    ) -> bool {
        let now = Instant::now();
        if let Some(b) = self.crash_backoff.get(&c.name).copied() {
            if now < b.until {
                let msg = format!(
                    "back-off {} restarting failed container={} pod={}",
                    go_duration(b.delay),
                    c.name,
                    describe(pod)
                );
                self.waiting
                    .insert(c.name.clone(), ("CrashLoopBackOff".into(), msg));
                let ev = format!(
                    "Back-off restarting failed container {} in pod {}",
                    c.name,
                    describe(pod)
                );
                self.k
                    .recorder
                    .pod(pod, Some(&c.name), Warning, "BackOff", &ev)
                    .await;
                return false;
            }
        }
        let ran = Duration::from_nanos((last.finished_at - last.started_at).max(0) as u64);
        let delay = match self.crash_backoff.get(&c.name) {
            Some(b) if ran < BACKOFF_RESET => (b.delay * 2).min(BACKOFF_MAX),
            _ => BACKOFF_START,
        };
        self.crash_backoff.insert(
            c.name.clone(),
            Backoff {
                until: now + delay,
                delay,
            },
        );
        let next = next_attempt(instances, &c.name);
        self.start(pod, c, next, sandbox_id, sandbox_cfg, pod_ip)
            .await
    }

    /// Pulls the image if the policy asks, creates and starts the container and runs its
    /// postStart hook; on failure the container's waiting reason says why. True if started.
    async fn start(
        &mut self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        sandbox_id: &str,
        sandbox_cfg: &cri::PodSandboxConfig,
        pod_ip: &str,
    ) -> bool {
        let k = self.k.clone();
        // Service link variables need the Services (upstream waits for its informer too).
        let _ = tokio::time::timeout(Duration::from_secs(5), k.services.wait_until_ready()).await;
        let Some(image) = self.ensure_image(pod, c).await else {
            return false;
        };
        let ctx = self.env_context(pod_ip);
        let env = match env::resolve(&ctx, pod, c).await {
            Ok(e) => e,
            Err(msg) => return self.failed(pod, c, "CreateContainerConfigError", msg).await,
        };
        let pod_dir = k.config.pod_dir(&self.uid);
        let input = config::ContainerInput {
            attempt,
            env: &env,
            pod_dir: &pod_dir,
            memory_capacity: self.memory_capacity,
            image,
        };
        let cfg = match config::container(pod, c, &input) {
            Ok(cfg) => cfg,
            Err(msg) => return self.failed(pod, c, "CreateContainerConfigError", msg).await,
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(cfg),
            sandbox_config: Some(sandbox_cfg.clone()),
        };
        let id = match k.cri.create_container(req).await {
            Ok(id) => id,
            Err(e) => {
                let msg = e.message().to_string();
                return self.failed(pod, c, "CreateContainerError", msg).await;
            }
        };
        k.recorder
            .pod(
                pod,
                Some(&c.name),
                Normal,
                "Created",
                &format!("Created container: {}", c.name),
            )
            .await;
        let started = k.cri.start_container(&id).await;
        if let Err(e) = started {
            let msg = e.message().to_string();
            return self.failed(pod, c, "RunContainerError", msg).await;
        }
        k.recorder
            .pod(
                pod,
                Some(&c.name),
                Normal,
                "Started",
                &format!("Started container {}", c.name),
            )
            .await;
        self.waiting.remove(&c.name);
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let t = probe::Target {
                cri: &*k.cri,
                container_id: &id,
                container: c,
                pod_ip,
            };
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            if let Err(msg) = probe::hook(&t, h, Duration::from_secs(grace.max(1) as u64)).await {
                let m = format!("PostStartHook failed: {msg}");
                k.recorder
                    .pod(pod, Some(&c.name), Warning, "FailedPostStartHook", &m)
                    .await;
                let _ = k.cri.stop_container(&id, grace).await;
                return false;
            }
        }
        true
    }

    /// Records why a container could not start: a Failed event and its waiting reason.
    async fn failed(&mut self, pod: &Pod, c: &Container, reason: &str, msg: String) -> bool {
        let ev = format!("Error: {msg}");
        self.k
            .recorder
            .pod(pod, Some(&c.name), Warning, "Failed", &ev)
            .await;
        self.waiting.insert(c.name.clone(), (reason.into(), msg));
        false
    }

    /// The image reference to create the container from, once present per the pull
    /// policy; None (with the waiting reason set) when it is not.
    async fn ensure_image(&mut self, pod: &Pod, c: &Container) -> Option<String> {
        let k = self.k.clone();
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let present = k.cri.image_present(&image).await.ok().flatten();
        let pull = match policy.as_str() {
            "Always" => true,
            "Never" => {
                if present.is_none() {
                    let msg = format!(
                        "Container image {image:?} is not present with pull policy of Never"
                    );
                    k.recorder
                        .pod(pod, Some(&c.name), Warning, "ErrImageNeverPull", &msg)
                        .await;
                    self.waiting
                        .insert(c.name.clone(), ("ErrImageNeverPull".into(), msg));
                    return None;
                }
                false
            }
            _ => present.is_none(),
        };
        if !pull {
            let msg = format!("Container image {image:?} already present on machine");
            k.recorder
                .pod(pod, Some(&c.name), Normal, "Pulled", &msg)
                .await;
            return Some(image);
        }
        let now = Instant::now();
        if let Some(b) = self.pull_backoff.get(&c.name).copied() {
            if now < b.until {
                let msg = format!("Back-off pulling image {image:?}");
                k.recorder
                    .pod(pod, Some(&c.name), Normal, "BackOff", &msg)
                    .await;
                self.waiting
                    .insert(c.name.clone(), ("ImagePullBackOff".into(), msg));
                return None;
            }
        }
        k.recorder
            .pod(
                pod,
                Some(&c.name),
                Normal,
                "Pulling",
                &format!("Pulling image {image:?}"),
            )
            .await;
        let auth = self.pull_auth(pod, &image).await;
        let t0 = Instant::now();
        match k.cri.pull(&image, auth).await {
            Ok(_) => {
                self.pull_backoff.remove(&c.name);
                let took = go_duration_ms(t0.elapsed());
                let msg = format!(
                    "Successfully pulled image {image:?} in {took} ({took} including waiting)"
                );
                k.recorder
                    .pod(pod, Some(&c.name), Normal, "Pulled", &msg)
                    .await;
                Some(image)
            }
            Err(e) => {
                let delay = match self.pull_backoff.get(&c.name) {
                    Some(b) => (b.delay * 2).min(BACKOFF_MAX),
                    None => BACKOFF_START,
                };
                self.pull_backoff.insert(
                    c.name.clone(),
                    Backoff {
                        until: now + delay,
                        delay,
                    },
                );
                let msg = format!("Failed to pull image {image:?}: {}", e.message());
                k.recorder
                    .pod(pod, Some(&c.name), Warning, "Failed", &msg)
                    .await;
                k.recorder
                    .pod(pod, Some(&c.name), Warning, "Failed", "Error: ErrImagePull")
                    .await;
                self.waiting
                    .insert(c.name.clone(), ("ErrImagePull".into(), msg));
                None
            }
        }
    }

    /// Credentials for `image` from the pod's imagePullSecrets (docker config JSON).
    async fn pull_auth(&self, pod: &Pod, image: &str) -> Option<cri::AuthConfig> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let names: Vec<String> = pod
            .spec
            .as_ref()?
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        let host = registry_host(image);
        let api: Api<Secret> = Api::namespaced(self.k.client.clone(), ns);
        for name in names {
            let Ok(Some(s)) = api.get_opt(&name).await else {
                continue;
            };
            let data = s.data.unwrap_or_default();
            let (auths, nested) = if let Some(b) = data.get(".dockerconfigjson") {
                (serde_json::from_slice::<Value>(&b.0).ok(), true)
            } else if let Some(b) = data.get(".dockercfg") {
                (serde_json::from_slice::<Value>(&b.0).ok(), false)
            } else {
                continue;
            };
            let Some(auths) = auths else { continue };
            let map = if nested {
                auths.get("auths").cloned()
            } else {
                Some(auths)
            };
            for (key, entry) in map
                .and_then(|m| m.as_object().cloned())
                .into_iter()
                .flatten()
            {
                if registry_key_host(&key) != host {
                    continue;
                }
                let s = |f: &str| {
                    entry
                        .get(f)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                return Some(cri::AuthConfig {
                    username: s("username"),
                    password: s("password"),
                    auth: s("auth"),
                    server_address: host.clone(),
                    identity_token: s("identitytoken"),
                    registry_token: s("registrytoken"),
                });
            }
        }
        None
    }

    /// Runs the probes that are due; returns containers to kill (name, id, why).
    async fn probe(
        &mut self,
        pod: &Pod,
        instances: &HashMap<String, Vec<Instance>>,
        sandbox_id: &str,
        pod_ip: &str,
    ) -> Vec<(String, String, String)> {
        let k = self.k.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut due = Vec::new();
        let now = Instant::now();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let Some(i) = instances.get(&c.name).and_then(|v| v.first()) else {
                continue;
            };
            if !i.running() || i.sandbox_id != sandbox_id {
                continue;
            }
            let started = self
                .probes
                .get(&(c.name.clone(), Kind::Startup))
                .filter(|s| s.container_id == i.id)
                .map(|s| s.result == Some(true))
                .unwrap_or(c.startup_probe.is_none());
            for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
                let Some(p) = kind.of(c) else { continue };
                if kind != Kind::Startup && !started {
                    continue;
                }
                if kind == Kind::Startup && started && c.startup_probe.is_some() {
                    continue;
                }
                let key = (c.name.clone(), kind);
                let st = self
                    .probes
                    .entry(key.clone())
                    .or_insert_with(|| probe::State::new(&i.id, p, instant_of(i.started_at)));
                if st.container_id != i.id {
                    *st = probe::State::new(&i.id, p, instant_of(i.started_at));
                }
                if st.next <= now {
                    due.push((c.clone(), i.id.clone(), kind, p.clone()));
                }
            }
        }
        let runs = due.iter().map(|(c, id, _, p)| {
            let cri = k.cri.clone();
            async move {
                let t = probe::Target {
                    cri: &*cri,
                    container_id: id,
                    container: c,
                    pod_ip,
                };
                probe::run(&t, p).await
            }
        });
        let results = futures::future::join_all(runs).await;
        let mut kill = Vec::new();
        for ((c, id, kind, p), r) in due.into_iter().zip(results) {
            let Some(st) = self.probes.get_mut(&(c.name.clone(), kind)) else {
                continue;
            };
            let ok = r.is_ok();
            st.record(&p, ok);
            if let Err(msg) = &r {
                let text = format!("{} probe failed: {msg}", kind.name());
                k.recorder
                    .pod(pod, Some(&c.name), Warning, "Unhealthy", &text)
                    .await;
            }
            if !ok && st.result == Some(false) && matches!(kind, Kind::Liveness | Kind::Startup) {
                let why = format!(
                    "Container {} failed {} probe, will be restarted",
                    c.name,
                    kind.name().to_lowercase()
                );
                self.probes.remove(&(c.name.clone(), kind));
                kill.push((c.name.clone(), id, why));
            }
        }
        kill
    }

    /// Runs the preStop hook, then stops the container with what is left of `grace`.
    async fn stop(&self, pod: &Pod, name: &str, id: &str, pod_ip: &str, grace: i64) {
        let started = Instant::now();
        if let Some(c) = super::find_container(pod, name) {
            if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                let t = probe::Target {
                    cri: &*self.k.cri,
                    container_id: id,
                    container: c,
                    pod_ip,
                };
                let limit = Duration::from_secs(grace.max(0) as u64);
                if let Err(msg) = probe::hook(&t, h, limit).await {
                    let m = format!("PreStopHook failed: {msg}");
                    self.k
                        .recorder
                        .pod(pod, Some(name), Warning, "FailedPreStopHook", &m)
                        .await;
                }
            }
        }
        let left = grace - started.elapsed().as_secs() as i64;
        // Upstream gives at least 2 seconds after a hook ran long.
        let left = if grace > 0 { left.max(2) } else { 0 };
        if let Err(e) = self.k.cri.stop_container(id, left).await {
            tracing::debug!(container = %id, error = %e.message(), "stopping a container");
        }
    }

    /// Builds and writes the status if it changed; returns the phase.
    #[allow(clippy::too_many_arguments)]
    async fn write_status(
        &mut self,
        pod: &Pod,
        instances: &HashMap<String, Vec<Instance>>,
        sandbox_id: &str,
        sandbox_ready: bool,
        pod_ip: &str,
        terminating: bool,
        init_done: bool,
        init_failed: bool,
    ) -> Option<String> {
        let mut ready = HashMap::new();
        let mut started = HashMap::new();
        for c in pod.spec.iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        }) {
            let Some(i) = instances.get(&c.name).and_then(|v| v.first()) else {
                continue;
            };
            let result = |kind| {
                self.probes
                    .get(&(c.name.clone(), kind))
                    .filter(|s: &&probe::State| s.container_id == i.id)
                    .and_then(|s| s.result)
            };
            let is_started = c.startup_probe.is_none() || result(Kind::Startup) == Some(true);
            let is_ready = is_started
                && (c.readiness_probe.is_none() || result(Kind::Readiness) == Some(true));
            started.insert(i.id.clone(), is_started);
            ready.insert(i.id.clone(), is_ready);
        }
        let start = self
            .start_time
            .get_or_insert_with(|| {
                jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            })
            .clone();
        // A terminal pod keeps its last phase; its init containers are done.
        let view = status::View {
            pod,
            runtime_name: &self.runtime_name,
            sandbox_ready: sandbox_ready && !self.terminal,
            pod_ip,
            host_ip: &self.host_ip,
            instances,
            sandbox_id,
            waiting: &self.waiting,
            ready: &ready,
            started: &started,
            init_done: init_done || self.terminal || terminating,
            init_failed,
            terminating,
        };
        let mut st = status::build(&view, &mut self.condition_times, &start);
        if self.terminal {
            // Never leave a finished pod's phase.
            if let Some(p) = pod.status.as_ref().and_then(|s| s.phase.clone()) {
                if p == "Succeeded" || p == "Failed" {
                    st["phase"] = json!(p);
                }
            }
            if st.get("podIP").is_none() {
                if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
                    st["podIP"] = json!(ip);
                    st["podIPs"] = json!([{"ip": ip}]);
                }
            }
        }
        if self.killed.is_none() {
            // Ended by this kubelet before a restart: keep saying so.
            self.killed = killed_before(pod, &mut self.condition_times);
        }
        if let Some(why) = &self.killed {
            st["phase"] = json!("Failed");
            st["reason"] = json!(why.reason);
            st["message"] = json!(why.message);
            if why.eviction {
                let since = self
                    .condition_times
                    .entry("DisruptionTarget".into())
                    .or_insert_with(|| {
                        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
                        ("True".into(), now.to_string())
                    })
                    .1
                    .clone();
                if let Some(conds) = st["conditions"].as_array_mut() {
                    conds.push(json!({"type": "DisruptionTarget", "status": "True",
                        "reason": "TerminationByKubelet", "message": why.message,
                        "lastTransitionTime": since}));
                }
            }
        }
        let phase = st["phase"].as_str().map(String::from);
        if self.last_status.as_ref() == Some(&st) {
            return phase;
        }
        let api: Api<Pod> = Api::namespaced(
            self.k.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": st})),
            )
            .await
        {
            Ok(_) => self.last_status = Some(st),
            Err(e) => tracing::debug!(pod = %describe(pod), error = %e, "writing the pod status"),
        }
        phase
    }

    /// Admits the pod on the node (a pod already running here is counted as it is), or
    /// the refusal to end it with.
    fn admit(&mut self, pod: &Pod, running_here: bool) -> Result<(), super::limits::Kill> {
        let k = &self.k;
        if running_here {
            k.admitted.adopt(&self.uid, pod);
        } else {
            let m = crate::node::Machine::read(&k.config.data_dir);
            let (cpu, memory_ki, _) = crate::node::allocatable(&k.config, &m);
            let node = super::admission::Allocatable {
                cpu_milli: cpu as i64,
                memory: memory_ki as i64 * 1024,
                pods: k.config.max_pods as i64,
            };
            let pressure = k.pressure(&m);
            k.admitted
                .admit(&self.uid, pod, node, pressure)
                .map_err(|(reason, message)| super::limits::Kill {
                    reason,
                    message,
                    eviction: false,
                    warning: true,
                    grace: None,
                })?;
        }
        self.admitted = true;
        Ok(())
    }

    /// An eviction the eviction manager chose, an exceeded `activeDeadlineSeconds`, or
    /// (measured every EVICTION_INTERVAL) local ephemeral storage over its limits.
    async fn limit_reached(
        &mut self,
        pod: &Pod,
        pod_dir: &std::path::Path,
    ) -> Option<super::limits::Kill> {
        let chosen = self
            .k
            .evictions
            .lock()
            .expect("evictions")
            .remove(&self.uid);
        if chosen.is_some() {
            return chosen;
        }
        let now = jiff::Timestamp::now();
        if let Some(k) = super::limits::deadline(pod, self.start_time.as_deref(), now) {
            return Some(k);
        }
        if self
            .usage_at
            .is_some_and(|t| t.elapsed() < EVICTION_INTERVAL)
        {
            return None;
        }
        self.usage_at = Some(Instant::now());
        if let Some(k) = super::limits::empty_dir(pod, pod_dir) {
            return Some(k);
        }
        if !super::limits::limits_ephemeral_storage(pod) {
            return None;
        }
        let usage = crate::stats::pod_usage(&self.k, pod).await?;
        super::limits::ephemeral_storage(pod, &usage)
    }

    /// Ends the pod for `why`: an event, its containers stopped (with the eviction's grace
    /// period, at once by default; else the pod's own), the sandbox
    /// stopped, and the pod Failed with the reason and message. The object stays.
    async fn kill(&mut self, pod: &Pod, why: super::limits::Kill, sandbox_id: &str) {
        let k = self.k.clone();
        let kind = if why.warning { Warning } else { Normal };
        // A refusal's event says why without the status's "Pod was rejected: ", as upstream.
        let event = why.message.strip_prefix(super::admission::REJECTED);
        k.recorder
            .pod(pod, None, kind, &why.reason, event.unwrap_or(&why.message))
            .await;
        k.admitted.release(&self.uid);
        let grace = match (why.grace, why.eviction) {
            (Some(g), _) => g,
            (None, true) => 0,
            (None, false) => pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30),
        };
        let pod_ip = reported_ip(pod);
        let instances = self.instances().await.unwrap_or_default();
        let running = running_containers(&instances);
        let stops = running
            .iter()
            .map(|(n, id)| self.stop(pod, n, id, &pod_ip, grace));
        futures::future::join_all(stops).await;
        for s in k.cri.sandboxes(Some(&self.uid)).await.unwrap_or_default() {
            let _ = k.cri.stop_sandbox(&s.id).await;
        }
        self.terminal = true;
        self.killed = Some(why);
        let instances = self.instances().await.unwrap_or_default();
        self.write_status(
            pod, &instances, sandbox_id, false, &pod_ip, false, true, false,
        )
        .await;
    }

    /// Graceful deletion: preStop hooks and SIGTERM with the grace period (cut short if the
    /// pod disappears), the final status, then the pod object is removed.
    async fn terminate(
        &mut self,
        pod: &Pod,
        rx: &mut watch::Receiver<Option<Arc<Pod>>>,
    ) -> Duration {
        let k = self.k.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30);
        let instances = self.instances().await.unwrap_or_default();
        let pod_ip = reported_ip(pod);
        let running = running_containers(&instances);
        for (name, _) in &running {
            k.recorder
                .pod(
                    pod,
                    Some(name),
                    Normal,
                    "Killing",
                    &format!("Stopping container {name}"),
                )
                .await;
        }
        {
            let stops = running
                .iter()
                .map(|(n, id)| self.stop(pod, n, id, &pod_ip, grace));
            let all = futures::future::join_all(stops);
            tokio::pin!(all);
            loop {
                tokio::select! {
                    _ = &mut all => break,
                    r = rx.changed() => {
                        // Gone from the API (force delete): no more grace.
                        if r.is_err() || rx.borrow().is_none() {
                            for (_, id) in &running {
                                let _ = k.cri.stop_container(id, 0).await;
                            }
                            break;
                        }
                    }
                }
            }
        }
        for s in k.cri.sandboxes(Some(&self.uid)).await.unwrap_or_default() {
            let _ = k.cri.stop_sandbox(&s.id).await;
        }
        let instances = self.instances().await.unwrap_or_default();
        self.terminal = false;
        self.write_status(pod, &instances, "", false, &pod_ip, true, true, false)
            .await;
        let api: Api<Pod> = Api::namespaced(
            k.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %describe(pod), error = %e, "deleting the pod object");
                return Duration::from_secs(1);
            }
        }
        Duration::from_secs(5)
    }

    /// The pod is gone from the API: stop and remove everything it had on this node.
    async fn remove(&mut self, pod: Option<&Pod>) {
        remove_pod(
            &self.k,
            &self.uid,
            pod.map(|p| {
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                )
            }),
        )
        .await;
        self.k.recorder.forget(&self.uid);
        self.k.admitted.release(&self.uid);
    }
}

/// Stops and removes a pod's containers and sandboxes, its directory, logs and cgroups.
pub async fn remove_pod(k: &Kubelet, uid: &str, name: Option<(String, String)>) {
    for c in k.cri.containers(Some(uid)).await.unwrap_or_default() {
        if c.state == cri::ContainerState::ContainerRunning as i32 {
            let _ = k.cri.stop_container(&c.id, 0).await;
        }
        let _ = k.cri.remove_container(&c.id).await;
    }
    for s in k.cri.sandboxes(Some(uid)).await.unwrap_or_default() {
        let _ = k.cri.stop_sandbox(&s.id).await;
        let _ = k.cri.remove_sandbox(&s.id).await;
    }
    volumes::tear_down(&k.config.pod_dir(uid));
    if let Some((ns, n)) = name {
        let _ = std::fs::remove_dir_all(k.config.pod_log_dir(&ns, &n, uid));
    }
    for qos in ["", "burstable/", "besteffort/"] {
        super::remove_cgroups(&format!("/kubepods/{qos}pod{uid}"));
    }
    k.qos_cgroups.pod_removed(uid);
}

/// The attempt number for the next instance of container `name`.
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

/// The registry host an image reference pulls from (docker.io for bare names).
fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".into(),
    }
}

/// The host of a docker config key ("https://index.docker.io/v1/" → docker.io).
fn registry_key_host(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

/// Why a kubelet (this one, before a restart) evicted the pod, from its status: Failed,
/// with the `DisruptionTarget` condition the kubelet writes (whose time is kept).
fn killed_before(
    pod: &Pod,
    times: &mut std::collections::HashMap<String, (String, String)>,
) -> Option<super::limits::Kill> {
    let st = pod.status.as_ref()?;
    if st.phase.as_deref() != Some("Failed") {
        return None;
    }
    let c = st.conditions.iter().flatten().find(|c| {
        c.type_ == "DisruptionTarget"
            && c.status == "True"
            && c.reason.as_deref() == Some("TerminationByKubelet")
    })?;
    if let Some(t) = &c.last_transition_time {
        let since = t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        times.insert("DisruptionTarget".into(), ("True".into(), since));
    }
    Some(super::limits::Kill {
        reason: st.reason.clone().unwrap_or_else(|| "Evicted".into()),
        message: st.message.clone().unwrap_or_default(),
        eviction: true,
        warning: true,
        grace: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/x"), "localhost");
        assert_eq!(
            registry_key_host("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(registry_key_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

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
