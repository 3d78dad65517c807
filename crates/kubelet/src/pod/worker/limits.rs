//! Admission on this node, the limits a running pod may hit (activeDeadlineSeconds,
//! ephemeral storage), and ending a pod for them.

use super::*;
use status_manager::Seen;

impl Worker {
    /// Admits the pod on the node (a pod already running here is counted as it is), or
    /// the refusal to end it with.
    pub(super) fn admit(
        &mut self,
        pod: &Pod,
        running_here: bool,
    ) -> Result<(), crate::pod::limits::Kill> {
        let k = &self.k;
        if running_here {
            k.admitted.adopt(&self.uid, pod);
        } else {
            let m = crate::node::Machine::read(&k.config.data_dir);
            let (cpu, memory_ki, _) = crate::node::allocatable(&k.config, &m);
            let node = crate::pod::admission::Allocatable {
                cpu_milli: cpu as i64,
                memory: memory_ki as i64 * 1024,
                pods: k.config.max_pods as i64,
            };
            let pressure = k.pressure(&m);
            k.admitted
                .admit(&self.uid, pod, node, pressure)
                .map_err(|(reason, message)| crate::pod::limits::Kill {
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
    pub(super) async fn limit_reached(
        &mut self,
        pod: &Pod,
        pod_dir: &std::path::Path,
    ) -> Option<crate::pod::limits::Kill> {
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
        if let Some(k) = crate::pod::limits::deadline(pod, self.start_time.as_deref(), now) {
            return Some(k);
        }
        if self
            .usage_at
            .is_some_and(|t| t.elapsed() < EVICTION_INTERVAL)
        {
            return None;
        }
        self.usage_at = Some(Instant::now());
        if let Some(k) = crate::pod::limits::empty_dir(pod, pod_dir) {
            return Some(k);
        }
        if !crate::pod::limits::limits_ephemeral_storage(pod) {
            return None;
        }
        let usage = crate::stats::pod_usage(&self.k, pod).await?;
        crate::pod::limits::ephemeral_storage(pod, &usage)
    }

    /// Ends the pod for `why`: an event, its containers stopped (with the eviction's grace
    /// period, at once by default; else the pod's own), the sandbox
    /// stopped, and the pod Failed with the reason and message. The object stays.
    pub(super) async fn kill(
        &mut self,
        pod: &Pod,
        why: crate::pod::limits::Kill,
        sandbox_id: &str,
    ) {
        let k = self.k.clone();
        let kind = if why.warning { Warning } else { Normal };
        // A refusal's event says why without the status's "Pod was rejected: ", as upstream.
        let event = why.message.strip_prefix(crate::pod::admission::REJECTED);
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
        let seen = Seen {
            sandbox_id,
            pod_ip: &pod_ip,
            init_done: true,
            ..Seen::default()
        };
        self.write_status(pod, &instances, seen).await;
    }
}

/// Why a kubelet (this one, before a restart) evicted the pod, from its status: Failed,
/// with the `DisruptionTarget` condition the kubelet writes (whose time is kept).
pub(super) fn killed_before(
    pod: &Pod,
    times: &mut std::collections::HashMap<String, (String, String)>,
) -> Option<crate::pod::limits::Kill> {
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
    Some(crate::pod::limits::Kill {
        reason: st.reason.clone().unwrap_or_else(|| "Evicted".into()),
        message: st.message.clone().unwrap_or_default(),
        eviction: true,
        warning: true,
        grace: None,
    })
}
