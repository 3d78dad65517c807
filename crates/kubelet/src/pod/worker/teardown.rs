//! Tearing a pod down: graceful termination on deletion (preStop hooks, the grace
//! period), then removal of its containers, sandbox, volumes, logs and cgroups.

use super::*;
use status_manager::Seen;

impl Worker {
    /// Graceful deletion: preStop hooks and SIGTERM with the grace period (cut short if the
    /// pod disappears), the final status, then the pod object is removed.
    pub(super) async fn terminate(
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
        let seen = Seen {
            pod_ip: &pod_ip,
            terminating: true,
            init_done: true,
            ..Seen::default()
        };
        self.write_status(pod, &instances, seen).await;
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
    pub(super) async fn remove(&mut self, pod: Option<&Pod>) {
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
    if k.config.manage_cgroups {
        for qos in ["", "burstable/", "besteffort/"] {
            crate::pod::remove_cgroups(&format!("/kubepods/{qos}pod{uid}"));
        }
        k.qos_cgroups.pod_removed(uid);
    }
}
