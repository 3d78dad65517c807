//! Node-pressure eviction, as upstream's eviction manager: `--eviction-hard` thresholds
//! (`memory.available<100Mi,nodefs.available<10%`) decide the MemoryPressure and
//! DiskPressure conditions and what allocatable keeps back. While a signal is below its
//! threshold, one pod is evicted per interval (disk: once unused images are gone and that
//! was not enough), chosen as upstream ranks them: pods using more than they request
//! first, then the lowest priority, then the most usage above the request. Memory counts
//! the pod's working set; disk its containers' writable layers and logs and its emptyDirs.

use crate::error::ParseError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, ListParams};

use crate::pod::limits::Kill;
use crate::stats::{binary_si, ContainerUsage, PodUsage};
use crate::Kubelet;

/// How often the signals are looked at (upstream's housekeeping interval).
const INTERVAL: Duration = Duration::from_secs(10);

/// A threshold: an amount, or a percentage of capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// An amount in bytes.
    Bytes(u64),
    /// A percentage of capacity.
    Percent(f64),
}

impl Threshold {
    /// The threshold in bytes for a capacity.
    pub fn bytes(self, capacity: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            // As upstream: capacity times the fraction, in floating point.
            Threshold::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }
}

/// A soft threshold: pods are evicted once it has been met for its grace period.
#[derive(Clone, Debug, PartialEq)]
pub struct Soft {
    /// The threshold.
    pub threshold: Threshold,
    /// As written, for eviction messages.
    pub text: String,
    /// How long it must be met before pods are evicted.
    pub grace: Duration,
}

/// The eviction thresholds this kubelet acts on: hard ones (upstream's defaults: memory
/// 100Mi, nodefs 10%), and soft ones (none by default).
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// `memory.available` below this evicts pods at once.
    pub memory: Threshold,
    /// As written, for eviction messages.
    pub memory_text: String,
    /// `nodefs.available` below this evicts pods at once.
    pub nodefs: Threshold,
    /// As written.
    pub nodefs_text: String,
    /// The soft `memory.available` threshold.
    pub soft_memory: Option<Soft>,
    /// The soft `nodefs.available` threshold.
    pub soft_nodefs: Option<Soft>,
    /// The longest grace period a soft eviction gives a pod (`--eviction-max-pod-grace-period`).
    pub max_pod_grace: i64,
    /// How long a pressure condition stays after its signal recovers
    /// (`--eviction-pressure-transition-period`, upstream's 5 minutes).
    pub transition_period: Duration,
    /// How far past its threshold a signal that evicted must recover before evictions
    /// stop (`--eviction-minimum-reclaim`; memory, nodefs; none by default).
    pub min_reclaim: [Threshold; 2],
}

/// When the memory and disk pressures were last observed: a condition holds for the
/// transition period after its signal recovers, so it does not flap.
#[derive(Debug, Default)]
pub struct PressureSeen([Option<Instant>; 2]);

impl PressureSeen {
    /// The conditions (memory, disk), given whether each signal is past a threshold now.
    pub fn observe(&mut self, now: [bool; 2], period: Duration) -> [bool; 2] {
        let mut out = [false; 2];
        for (i, met) in now.into_iter().enumerate() {
            if met {
                self.0[i] = Some(Instant::now());
            }
            out[i] = met || self.0[i].is_some_and(|t| t.elapsed() < period);
        }
        out
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory: Threshold::Bytes(100 << 20),
            memory_text: "100Mi".into(),
            nodefs: Threshold::Percent(10.0),
            nodefs_text: "10%".into(),
            soft_memory: None,
            soft_nodefs: None,
            max_pod_grace: 0,
            transition_period: Duration::from_secs(300),
            min_reclaim: [Threshold::Bytes(0); 2],
        }
    }
}

/// `signal<value` (or `signal=value`, by `sep`) items: (signal, threshold, value as
/// written).
fn parse_list(spec: &str, sep: char) -> Result<Vec<(&str, Threshold, &str)>, ParseError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (signal, value) = item
            .split_once(sep)
            .ok_or_else(|| format!("{item:?}: expected SIGNAL{sep}VALUE"))?;
        let threshold = match value.strip_suffix('%') {
            Some(p) => match p.parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Threshold::Percent(p),
                _ => return Err(format!("{item:?}: bad percentage").into()),
            },
            None => match rkube_api::quantity::parse_units(value) {
                Some(b) if b >= 0 => Threshold::Bytes(b as u64),
                _ => return Err(format!("{item:?}: bad quantity").into()),
            },
        };
        match signal {
            "memory.available" | "nodefs.available" => out.push((signal, threshold, value)),
            "imagefs.available" | "nodefs.inodesFree" | "imagefs.inodesFree" | "pid.available" => {
                tracing::warn!(signal, "eviction signal not measured by rkube; ignored")
            }
            other => return Err(format!("unknown eviction signal {other:?}").into()),
        }
    }
    Ok(out)
}

impl Thresholds {
    /// Parses `--eviction-hard` (`signal<value,...`); signals not given keep their
    /// defaults. Signals rkube does not measure (imagefs, inodes, pids) are accepted and
    /// ignored.
    pub fn parse(spec: &str) -> Result<Thresholds, ParseError> {
        let mut t = Thresholds::default();
        for (signal, threshold, value) in parse_list(spec, '<')? {
            match signal {
                "memory.available" => (t.memory, t.memory_text) = (threshold, value.into()),
                _ => (t.nodefs, t.nodefs_text) = (threshold, value.into()),
            }
        }
        Ok(t)
    }

    /// Adds `--eviction-soft` thresholds with their `--eviction-soft-grace-period`s
    /// (`memory.available=1m30s,...`; every soft threshold needs one) and
    /// `--eviction-max-pod-grace-period`.
    pub fn set_soft(
        &mut self,
        spec: &str,
        graces: &str,
        max_pod_grace: i64,
    ) -> Result<(), ParseError> {
        let mut grace = std::collections::HashMap::new();
        for item in graces.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (signal, d) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected SIGNAL=DURATION"))?;
            grace.insert(signal, crate::parse_duration(d)?);
        }
        for (signal, threshold, value) in parse_list(spec, '<')? {
            let grace = grace.remove(signal).ok_or_else(|| {
                format!("grace period must be specified for the soft eviction threshold {signal}")
            })?;
            let soft = Some(Soft {
                threshold,
                text: value.into(),
                grace,
            });
            match signal {
                "memory.available" => self.soft_memory = soft,
                _ => self.soft_nodefs = soft,
            }
        }
        if let Some(signal) = grace.keys().next() {
            return Err(format!(
                "grace period specified for {signal}, which has no soft eviction threshold"
            )
            .into());
        }
        self.max_pod_grace = max_pod_grace;
        Ok(())
    }

    /// Sets `--eviction-minimum-reclaim` (`memory.available=500Mi,nodefs.available=1Gi`,
    /// quantities or percentages of capacity).
    pub fn set_min_reclaim(&mut self, spec: &str) -> Result<(), ParseError> {
        for (signal, amount, _) in parse_list(spec, '=')? {
            let i = usize::from(signal != "memory.available");
            self.min_reclaim[i] = amount;
        }
        Ok(())
    }
}

/// What the eviction loop keeps of one signal between intervals.
#[derive(Debug, Default)]
struct SignalState {
    /// Since when the soft threshold has been met.
    since: Option<Instant>,
    /// Whether the signal was acted on last time (an eviction, or node-level reclaim):
    /// then it counts as met until it recovers past its threshold by the minimum
    /// reclaim, as upstream's "thresholds not yet resolved".
    acting: bool,
}

/// A running pod as the ranking sees it.
pub struct Candidate {
    /// The pod's UID.
    pub uid: String,
    /// What it uses of the starved resource.
    pub usage: u64,
    /// What it requests of it.
    pub request: u64,
    /// Its priority.
    pub priority: i32,
}

/// The pod to evict first: usage above request first, then the lowest priority, then the
/// most usage above request.
pub fn victim(pods: &[Candidate]) -> Option<&Candidate> {
    pods.iter().min_by_key(|p| {
        let over = p.usage > p.request;
        (
            !over,
            p.priority,
            std::cmp::Reverse(p.usage.saturating_sub(p.request)),
        )
    })
}

/// A resource the node ran low on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Starved {
    Memory,
    EphemeralStorage,
}

impl Starved {
    fn name(self) -> &'static str {
        match self {
            Starved::Memory => "memory",
            Starved::EphemeralStorage => "ephemeral-storage",
        }
    }

    /// A container's usage of it.
    fn usage(self, c: &ContainerUsage) -> Option<u64> {
        match self {
            Starved::Memory => c.working_set,
            Starved::EphemeralStorage => c.ephemeral,
        }
    }
}

/// A container's request of `resource` in bytes, and as written ("0" when none).
fn request(c: &Container, resource: &str) -> (u64, String) {
    let q = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(resource));
    match q.and_then(|q| rkube_api::quantity::parse_units(&q.0).map(|b| (b, &q.0))) {
        Some((b, text)) if b > 0 => (b as u64, text.clone()),
        _ => (0, "0".into()),
    }
}

/// The pod's request of `resource` (containers and sidecars, against the largest init).
fn pod_request(pod: &Pod, resource: &str) -> u64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let sum: u64 = spec.containers.iter().map(|c| request(c, resource).0).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| request(c, resource).0)
        .max()
        .unwrap_or(0);
    sum.max(init)
}

/// Upstream's eviction message: the resource, the threshold and what is left, and each
/// container using more than it requests.
fn message(
    starved: Starved,
    threshold: &str,
    available: u64,
    pod: &Pod,
    usage: Option<&PodUsage>,
) -> String {
    let mut m = format!(
        "The node was low on resource: {}. Threshold quantity: {threshold}, available: {}. ",
        starved.name(),
        binary_si(available)
    );
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for c in containers {
        let Some(used) = usage
            .and_then(|u| u.containers.get(&c.name))
            .and_then(|u| starved.usage(u))
        else {
            continue;
        };
        let (requested, written) = request(c, starved.name());
        if used > requested {
            m += &format!(
                "Container {} was using {}, which exceeds its request of {written}. ",
                c.name,
                binary_si(used)
            );
        }
    }
    m
}

/// Whether a signal (available, capacity) evicts now: its hard threshold is met, or its
/// soft one has been for its grace period. A signal acted on last time must recover past
/// a threshold by `min_reclaim` to stop counting as met. The threshold as the message
/// prints it, and whether it is the soft one.
fn due(
    hard: (Threshold, &str),
    soft: Option<&Soft>,
    min_reclaim: Threshold,
    (available, capacity): (u64, u64),
    state: &mut SignalState,
) -> Option<(String, bool)> {
    let printed = |t: Threshold, written: &str| match t {
        Threshold::Bytes(_) => written.to_string(),
        Threshold::Percent(_) => binary_si(t.bytes(capacity)),
    };
    let extra = if state.acting {
        min_reclaim.bytes(capacity)
    } else {
        0
    };
    let met = |t: Threshold| available < t.bytes(capacity).saturating_add(extra);
    let soft_met = soft.filter(|s| met(s.threshold));
    match soft_met {
        Some(_) => state.since = Some(state.since.unwrap_or_else(Instant::now)),
        None => state.since = None,
    }
    let out = if met(hard.0) {
        Some((printed(hard.0, hard.1), false))
    } else {
        soft_met.and_then(|s| {
            let since = state.since;
            since
                .is_some_and(|t| t.elapsed() >= s.grace)
                .then(|| (printed(s.threshold, &s.text), true))
        })
    };
    state.acting = out.is_some();
    out
}

/// Watches the memory and disk signals and marks one pod per interval for eviction while
/// one is below its hard threshold, or its soft one for the grace period (the pod's
/// worker carries it out).
pub async fn run(k: Arc<Kubelet>) {
    // Memory, nodefs.
    let mut signals: [SignalState; 2] = Default::default();
    loop {
        tokio::time::sleep(INTERVAL).await;
        let mut m = crate::node::Machine::read(&k.config.data_dir);
        let eviction = &k.config.eviction;
        let disk_starved = crate::node::disk_pressure(&m, eviction) || signals[1].acting;
        if !crate::node::memory_pressure(&m, eviction) && disk_starved {
            // Node-level reclaim first: unused images.
            // As upstream, pods are spared only if this reclaims the minimum too.
            signals[1].acting = true;
            match crate::image_gc::reclaim(&k).await {
                Ok(freed) if freed > 0 => m = crate::node::Machine::read(&k.config.data_dir),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reclaiming disk space from images"),
            }
        }
        let (memory, disk) = (
            (m.memory_available_ki * 1024, m.memory_ki * 1024),
            (m.storage_available_ki * 1024, m.storage_ki * 1024),
        );
        let [memory_state, disk_state] = &mut signals;
        let memory_due = due(
            (eviction.memory, &eviction.memory_text),
            eviction.soft_memory.as_ref(),
            eviction.min_reclaim[0],
            memory,
            memory_state,
        );
        let disk_due = match disk.1 {
            0 => None,
            _ => due(
                (eviction.nodefs, &eviction.nodefs_text),
                eviction.soft_nodefs.as_ref(),
                eviction.min_reclaim[1],
                disk,
                disk_state,
            ),
        };
        let (starved, (threshold, soft), available) = match (memory_due, disk_due) {
            (Some(t), _) => (Starved::Memory, t, memory.0),
            (None, Some(t)) => (Starved::EphemeralStorage, t, disk.0),
            (None, None) => continue,
        };
        let api: Api<Pod> = Api::all(k.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", k.config.node_name));
        let Ok(list) = api.list(&lp).await else {
            continue;
        };
        let pods: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                matches!(phase, Some("Running") | Some("Pending"))
            })
            .collect();
        {
            // One eviction at a time: wait while a chosen pod's worker has not taken it
            // (a pod that went away meanwhile is forgotten).
            let mut pending = k.evictions.lock().expect("evictions");
            pending.retain(|uid, _| pods.iter().any(|p| p.metadata.uid.as_ref() == Some(uid)));
            if !pending.is_empty() {
                continue;
            }
        }
        let mut usages: HashMap<String, PodUsage> = HashMap::new();
        let mut candidates = Vec::new();
        for p in &pods {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            let usage = match starved {
                Starved::Memory => {
                    crate::cgroups::memory_usage(&crate::pod::cgroup_parent(p)).unwrap_or(0)
                }
                Starved::EphemeralStorage => {
                    let Some(u) = crate::stats::pod_usage(&k, p).await else {
                        continue;
                    };
                    let total = u.ephemeral();
                    usages.insert(uid.clone(), u);
                    total
                }
            };
            candidates.push(Candidate {
                uid,
                usage,
                request: pod_request(p, starved.name()),
                priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            });
        }
        let Some(v) = victim(&candidates) else {
            continue;
        };
        let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.uid.as_ref() == Some(&v.uid))
        else {
            continue;
        };
        let usage = match usages.remove(&v.uid) {
            Some(u) => Some(u),
            None => crate::stats::pod_usage(&k, pod).await,
        };
        let message = message(starved, &threshold, available, pod, usage.as_ref());
        tracing::info!(pod = %v.uid, %message, "evicting a pod");
        // A soft eviction gives the pod its grace period, up to the configured most.
        let grace = soft.then(|| {
            let own = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds);
            own.unwrap_or(30).min(eviction.max_pod_grace).max(0)
        });
        k.evictions.lock().expect("evictions").insert(
            v.uid.clone(),
            Kill {
                reason: "Evicted".into(),
                message,
                eviction: true,
                warning: true,
                grace,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_rank() {
        let t = Thresholds::parse("memory.available<1Gi,nodefs.available<5%,imagefs.available<15%")
            .unwrap();
        assert_eq!(t.memory, Threshold::Bytes(1 << 30));
        assert_eq!(t.memory_text, "1Gi");
        assert_eq!(t.nodefs.bytes(1000), 50);
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        assert!(Thresholds::parse("memory.available=1Gi").is_err());
        assert!(Thresholds::parse("cpu.available<1").is_err());
        assert!(Thresholds::parse("nodefs.available<200%").is_err());

        let c = |uid: &str, usage, request, priority| Candidate {
            uid: uid.into(),
            usage,
            request,
            priority,
        };
        let pods = [
            c("within", 50, 100, 0),
            c("over-important", 300, 100, 1000),
            c("over-a-little", 110, 100, 0),
            c("over-a-lot", 900, 100, 0),
        ];
        assert_eq!(victim(&pods).unwrap().uid, "over-a-lot");
        assert_eq!(victim(&pods[..1]).unwrap().uid, "within");
        assert!(victim(&[]).is_none());
    }

    #[test]
    fn pressure_conditions_outlast_their_signal() {
        let mut seen = PressureSeen::default();
        let period = Duration::from_secs(300);
        assert_eq!(seen.observe([false, false], period), [false, false]);
        assert_eq!(seen.observe([false, true], period), [false, true]);
        // The disk recovered: DiskPressure stays within the transition period...
        assert_eq!(seen.observe([false, false], period), [false, true]);
        // ...and ends at once without one.
        assert_eq!(seen.observe([false, false], Duration::ZERO), [false, false]);
    }

    #[test]
    fn soft_thresholds_wait_for_their_grace_period() {
        let mut t = Thresholds::default();
        t.set_soft(
            "memory.available<1Gi,nodefs.available<20%",
            "memory.available=1m30s,nodefs.available=0s",
            30,
        )
        .unwrap();
        let soft = t.soft_memory.clone().unwrap();
        assert_eq!(
            (soft.text.as_str(), soft.grace),
            ("1Gi", Duration::from_secs(90))
        );
        assert_eq!(t.max_pod_grace, 30);
        let missing = Thresholds::default()
            .set_soft("memory.available<1Gi", "", 0)
            .unwrap_err();
        assert!(
            missing.0.contains("grace period must be specified"),
            "{missing}"
        );
        let stray = Thresholds::default()
            .set_soft("", "memory.available=1m", 0)
            .unwrap_err();
        assert!(stray.0.contains("no soft eviction threshold"), "{stray}");

        let hard = (t.memory, t.memory_text.as_str());
        let gi = 1u64 << 30;
        let none = Threshold::Bytes(0);
        let mut st = SignalState::default();
        // Above both: nothing, and no clock running.
        assert_eq!(
            due(hard, Some(&soft), none, (2 * gi, 8 * gi), &mut st),
            None
        );
        assert!(st.since.is_none());
        // Under the soft threshold: the clock starts, no eviction within the grace period.
        assert_eq!(
            due(hard, Some(&soft), none, (gi / 2, 8 * gi), &mut st),
            None
        );
        assert!(st.since.is_some());
        // Under the hard one: at once.
        assert_eq!(
            due(hard, Some(&soft), none, (1 << 20, 8 * gi), &mut st),
            Some(("100Mi".into(), false))
        );
        // The grace period over: the soft threshold evicts; a percentage prints as bytes.
        let mut long_ago = SignalState {
            since: Some(Instant::now() - Duration::from_secs(91)),
            acting: false,
        };
        assert_eq!(
            due(hard, Some(&soft), none, (gi / 2, 8 * gi), &mut long_ago),
            Some(("1Gi".into(), true))
        );
        let nodefs = t.soft_nodefs.clone().unwrap();
        let mut now = SignalState::default();
        assert_eq!(
            due(
                (t.nodefs, "10%"),
                Some(&nodefs),
                none,
                (gi, 10 * gi),
                &mut now
            ),
            Some(("2Gi".into(), true))
        );
    }

    #[test]
    fn evicting_goes_on_until_the_minimum_is_reclaimed() {
        let mut t = Thresholds::parse("memory.available<1Gi,nodefs.available<10%").unwrap();
        t.set_min_reclaim("memory.available=512Mi,nodefs.available=5%,imagefs.available=2Gi")
            .unwrap();
        assert_eq!(
            t.min_reclaim,
            [Threshold::Bytes(512 << 20), Threshold::Percent(5.0)]
        );
        assert!(t.set_min_reclaim("memory.available<1Gi").is_err());
        assert!(t.set_min_reclaim("memory.available=lots").is_err());

        let mi = 1u64 << 20;
        let hard = (t.memory, "1Gi");
        let mut st = SignalState::default();
        let mut at = |available| {
            due(
                hard,
                None,
                t.min_reclaim[0],
                (available, 8192 * mi),
                &mut st,
            )
        };
        // Just above the threshold, never met: no eviction.
        assert_eq!(at(1100 * mi), None);
        // Met: evict; then just above the threshold is not enough...
        assert_eq!(at(900 * mi), Some(("1Gi".into(), false)));
        assert_eq!(at(1100 * mi), Some(("1Gi".into(), false)));
        // ...until the signal is past threshold + minimum reclaim.
        assert_eq!(at(1600 * mi), None);
        assert_eq!(at(1100 * mi), None);

        // A percentage of capacity: 10% + 5% of 100 GiB.
        let gi = 1u64 << 30;
        let mut disk = SignalState {
            since: None,
            acting: true,
        };
        let nodefs = (t.nodefs, "10%");
        let mut disk_at = |available| {
            due(
                nodefs,
                None,
                t.min_reclaim[1],
                (available, 100 * gi),
                &mut disk,
            )
        };
        assert!(disk_at(14 * gi).is_some());
        assert!(disk_at(16 * gi).is_none());
    }

    #[test]
    fn messages_name_the_containers_over_their_requests() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "hog", "resources": {"requests": {"memory": "10Mi"}}},
                {"name": "calm", "resources": {"requests": {"memory": "10Mi"}}},
                {"name": "none"}]}}))
        .unwrap();
        let c = |ws: u64| ContainerUsage {
            working_set: Some(ws),
            ephemeral: Some(4096),
        };
        let usage = PodUsage {
            containers: [
                ("hog".to_string(), c(30 << 20)),
                ("calm".to_string(), c(1 << 20)),
                ("none".to_string(), c(12 << 10)),
            ]
            .into(),
            empty_dirs: 0,
        };
        assert_eq!(
            message(Starved::Memory, "100Mi", 51200 << 10, &pod, Some(&usage)),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. \
             Container hog was using 30Mi, which exceeds its request of 10Mi. \
             Container none was using 12Ki, which exceeds its request of 0. "
        );
        assert_eq!(
            message(Starved::EphemeralStorage, "1Gi", 1 << 20, &pod, None),
            "The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, available: 1Mi. "
        );
        assert_eq!(pod_request(&pod, "memory"), 20 << 20);
    }
}
