//! The prober: startup, liveness and readiness probes of running containers on their
//! schedules; what a failed liveness or startup probe kills.

use super::*;

impl Worker {
    /// Runs the probes that are due; returns containers to kill (name, id, why).
    pub(super) async fn probe(
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
}
