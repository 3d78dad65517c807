//! Starting and stopping one container: the crash-loop back-off, create and start
//! through CRI, the postStart and preStop hooks, and the waiting reason when it fails.

use super::*;

impl Worker {
    /// Restarts an exited container unless its back-off holds it; true if it started.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn restart(
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
    pub(super) async fn start(
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
            Err(e) => {
                let msg = e.to_string();
                return self.failed(pod, c, "CreateContainerConfigError", msg).await;
            }
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
            Err(e) => {
                let msg = e.to_string();
                return self.failed(pod, c, "CreateContainerConfigError", msg).await;
            }
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
    pub(super) async fn failed(
        &mut self,
        pod: &Pod,
        c: &Container,
        reason: &str,
        msg: String,
    ) -> bool {
        let ev = format!("Error: {msg}");
        self.k
            .recorder
            .pod(pod, Some(&c.name), Warning, "Failed", &ev)
            .await;
        self.waiting.insert(c.name.clone(), (reason.into(), msg));
        false
    }

    /// Runs the preStop hook, then stops the container with what is left of `grace`.
    pub(super) async fn stop(&self, pod: &Pod, name: &str, id: &str, pod_ip: &str, grace: i64) {
        let started = Instant::now();
        if let Some(c) = crate::pod::find_container(pod, name) {
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
}
