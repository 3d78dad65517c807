//! The pod sync (upstream's SyncPod): one pass from the runtime's state toward the pod's
//! spec: admission and limits, volumes, the sandbox, init containers in order, app
//! containers with their restart policy, probes, then the status.

use super::*;
use crate::error::{IoError, SyncError};
use status_manager::Seen;

impl Worker {
    /// One pass toward the spec; returns how long until the next look.
    pub(super) async fn sync(&mut self, pod: &Pod) -> Result<Duration, SyncError> {
        let k = self.k.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let pod_dir = k.config.pod_dir(&self.uid);
        let mut instances = self.instances().await?;
        let sandboxes = k.cri.sandboxes(Some(&self.uid)).await?;
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
            let seen = Seen {
                sandbox_id: &sid,
                terminating: true,
                ..Seen::default()
            };
            self.write_status(pod, &instances, seen).await;
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
            if let Err(e) = volumes::set_up(&ctx, &pod_dir, pod).await {
                k.recorder
                    .pod(pod, None, Warning, "FailedMount", &e.to_string())
                    .await;
                let sid = newest.map(|s| s.id.clone()).unwrap_or_default();
                let seen = Seen {
                    sandbox_id: &sid,
                    sandbox_ready: ready_sandbox.is_some(),
                    ..Seen::default()
                };
                self.write_status(pod, &instances, seen).await;
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
                if k.config.manage_cgroups {
                    k.qos_cgroups.pod_starting(&self.uid, pod);
                    let mut limits = crate::cgroups::pod_resources(pod);
                    limits.pids_limit = k.config.pod_pids_limit;
                    crate::cgroups::apply(&crate::pod::cgroup_parent(pod), &limits);
                }
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
                        self.write_status(pod, &instances, Seen::default()).await;
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
            std::fs::create_dir_all(&pod_dir).map_err(IoError::at("creating", &pod_dir))?;
            std::fs::write(&hosts_file, &hosts).map_err(IoError::at("writing", &hosts_file))?;
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
                Seen {
                    sandbox_id: &sandbox_id,
                    sandbox_ready: true,
                    pod_ip: &pod_ip,
                    terminating: false,
                    init_done,
                    init_failed,
                },
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
}
