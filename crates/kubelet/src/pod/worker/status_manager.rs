//! The status manager: the pod status from the runtime's containers (phase, conditions,
//! container statuses), written to the API only when it changed.

use super::*;
use limits::killed_before;

/// What a sync found besides the containers, for the status.
#[derive(Clone, Copy, Default)]
pub(super) struct Seen<'a> {
    /// The newest sandbox ("" if none).
    pub sandbox_id: &'a str,
    pub sandbox_ready: bool,
    pub pod_ip: &'a str,
    /// The pod is being deleted.
    pub terminating: bool,
    /// Every init container has completed.
    pub init_done: bool,
    /// An init container failed and will not be retried.
    pub init_failed: bool,
}

impl Worker {
    /// Builds and writes the status if it changed; returns the phase.
    pub(super) async fn write_status(
        &mut self,
        pod: &Pod,
        instances: &HashMap<String, Vec<Instance>>,
        seen: Seen<'_>,
    ) -> Option<String> {
        let Seen {
            sandbox_id,
            sandbox_ready,
            pod_ip,
            terminating,
            init_done,
            init_failed,
        } = seen;
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
}
