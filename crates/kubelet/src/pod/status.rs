//! The pod's status from what the runtime reports: phase, conditions, IPs and container
//! statuses, computed as upstream's kubelet does (getPhase, the condition generators).

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

/// One container instance as the runtime reports it.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The container ID.
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// Which restart it is (0 first).
    pub attempt: u32,
    /// The CRI ContainerState.
    pub state: i32,
    /// When it was created (ns since the epoch).
    pub created_at: i64,
    /// When it started (ns, 0: not yet).
    pub started_at: i64,
    /// When it exited (ns, 0: not yet).
    pub finished_at: i64,
    /// Its exit code.
    pub exit_code: i32,
    /// Why it exited (`Completed`, `Error`, `OOMKilled`).
    pub reason: String,
    /// The runtime's message, or the termination message.
    pub message: String,
    /// The image it runs, as the runtime resolved it.
    pub image_ref: String,
}

impl Instance {
    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.state == cri::ContainerState::ContainerRunning as i32
    }
    /// Whether it has exited.
    pub fn exited(&self) -> bool {
        self.state == cri::ContainerState::ContainerExited as i32
    }

    /// upstream's terminated reason: the runtime's (OOMKilled), else Completed or Error.
    pub fn terminated_reason(&self) -> String {
        if !self.reason.is_empty() {
            self.reason.clone()
        } else if self.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        }
    }
}

/// RFC 3339 with seconds, as metav1.Time serializes.
pub fn time(nanos: i64) -> Value {
    match jiff::Timestamp::from_nanosecond(nanos as i128) {
        Ok(t) if nanos > 0 => json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        _ => Value::Null,
    }
}

/// What the status of one pod is built from.
pub struct View<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The runtime's name, for container IDs (`containerd://...`).
    pub runtime_name: &'a str,
    /// Whether the pod's sandbox is up.
    pub sandbox_ready: bool,
    /// The pod's IP.
    pub pod_ip: &'a str,
    /// The node's IP.
    pub host_ip: &'a str,
    /// Container name → instances, newest first.
    pub instances: &'a HashMap<String, Vec<Instance>>,
    /// The sandbox current instances belong to (older sandboxes' are history).
    pub sandbox_id: &'a str,
    /// Explicit waiting reasons (ErrImagePull, CrashLoopBackOff, …) by container name.
    pub waiting: &'a HashMap<String, (String, String)>,
    /// Readiness and startedness by container ID.
    pub ready: &'a HashMap<String, bool>,
    /// Startedness by container ID.
    pub started: &'a HashMap<String, bool>,
    /// Every init container completed.
    pub init_done: bool,
    /// An init container failed for good.
    pub init_failed: bool,
    /// The pod is being deleted and its containers are stopped for good.
    pub terminating: bool,
}

impl View<'_> {
    /// Whether the init containers are done (a pod without any always is).
    fn initialized(&self) -> bool {
        self.init_done
            || self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_none_or(|i| i.is_empty())
    }

    fn current(&self, name: &str) -> Option<&Instance> {
        self.instances
            .get(name)
            .and_then(|v| v.first())
            .filter(|i| i.sandbox_id == self.sandbox_id || self.terminating || !self.sandbox_ready)
    }
}

/// One container's status JSON; whether it is running, and how it stopped if it did.
fn container_status(v: &View<'_>, c: &Container, init: bool) -> (Value, Outcome) {
    let all = v.instances.get(&c.name).map(Vec::as_slice).unwrap_or(&[]);
    let current = v.current(&c.name);
    let newest = all.first();
    let restart_count = newest.map(|i| i.attempt).unwrap_or(0);
    let cid = |i: &Instance| format!("{}://{}", v.runtime_name, i.id);
    let terminated = |i: &Instance| {
        let mut t = json!({
            "exitCode": i.exit_code,
            "reason": i.terminated_reason(),
            "startedAt": time(i.started_at),
            "finishedAt": time(i.finished_at),
            "containerID": cid(i),
        });
        if !i.message.is_empty() {
            t["message"] = json!(i.message);
        }
        json!({"terminated": t})
    };
    let explicit = v.waiting.get(&c.name);
    let (state, last, outcome) = match (current, explicit) {
        (Some(i), _) if i.running() => {
            let last = all.get(1).filter(|p| p.exited()).map(terminated);
            (
                json!({"running": {"startedAt": time(i.started_at)}}),
                last,
                Outcome::Running,
            )
        }
        // A restart is pending (back-off, or its next attempt is being made).
        (Some(i), Some((reason, message))) if i.exited() => (
            json!({"waiting": {"reason": reason, "message": message}}),
            Some(terminated(i)),
            Outcome::Restarting,
        ),
        (Some(i), None) if i.exited() => {
            let last = all.get(1).filter(|p| p.exited()).map(terminated);
            (terminated(i), last, Outcome::Exited(i.exit_code))
        }
        (_, Some((reason, message))) => {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            let last = newest.filter(|p| p.exited()).map(terminated);
            let outcome = if last.is_some() {
                Outcome::Restarting
            } else {
                Outcome::Waiting
            };
            (json!({"waiting": w}), last, outcome)
        }
        _ => {
            let reason = if init || v.initialized() {
                "ContainerCreating"
            } else {
                "PodInitializing"
            };
            let last = newest.filter(|p| p.exited()).map(terminated);
            let outcome = if last.is_some() {
                Outcome::Restarting
            } else {
                Outcome::Waiting
            };
            (json!({"waiting": {"reason": reason}}), last, outcome)
        }
    };
    let running_id = current.filter(|i| i.running()).map(|i| i.id.clone());
    let ready = running_id
        .as_ref()
        .is_some_and(|id| v.ready.get(id).copied().unwrap_or(false));
    let started = running_id
        .as_ref()
        .is_some_and(|id| v.started.get(id).copied().unwrap_or(true));
    let mut s = json!({
        "name": c.name,
        "state": state,
        "lastState": last.unwrap_or_else(|| json!({})),
        "ready": ready && (!init || c.restart_policy.as_deref() == Some("Always")),
        "restartCount": restart_count,
        "image": c.image.clone().unwrap_or_default(),
        "imageID": current.or(newest).map(|i| i.image_ref.clone()).unwrap_or_default(),
        "started": started,
    });
    if let Some(i) = current.or(newest) {
        s["containerID"] = json!(cid(i));
    }
    if init && outcome == Outcome::Exited(0) {
        s["ready"] = json!(false);
    }
    (s, outcome)
}

/// How a container stands, for the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Running,
    Exited(i32),
    /// Stopped, and will run again.
    Restarting,
    /// Never ran yet.
    Waiting,
}

/// The status to write: phase, conditions, IPs and container statuses. `times` keeps
/// each condition's (status, lastTransitionTime); `start_time` is the pod's startTime.
pub fn build(
    v: &View<'_>,
    times: &mut HashMap<String, (String, String)>,
    start_time: &str,
) -> Value {
    let spec = v.pod.spec.clone().unwrap_or_default();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let init_statuses: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(v, c, true).0)
        .collect();
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    let mut unready = Vec::new();
    let mut statuses = Vec::new();
    for c in &spec.containers {
        let (s, outcome) = container_status(v, c, false);
        if s["ready"] != json!(true) {
            unready.push(c.name.clone());
        }
        match outcome {
            Outcome::Running => running += 1,
            Outcome::Waiting => waiting += 1,
            Outcome::Restarting => stopped += 1,
            Outcome::Exited(code) => {
                stopped += 1;
                if code == 0 {
                    succeeded += 1;
                }
            }
        }
        statuses.push(s);
    }
    let phase = if v.init_failed {
        "Failed"
    } else if !v.initialized() || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" && !v.terminating {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" || v.terminating {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    };
    let terminal = phase == "Succeeded" || phase == "Failed";
    let incomplete: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .zip(&init_statuses)
        .filter(|(c, s)| {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            let done = s.pointer("/state/terminated/exitCode") == Some(&json!(0));
            !(done || sidecar && s.pointer("/state/running").is_some())
        })
        .map(|(c, _)| c.name.clone())
        .collect();
    let mut conds: Vec<(&str, bool, Option<String>, Option<String>)> = Vec::new();
    conds.push(("PodReadyToStartContainers", v.sandbox_ready, None, None));
    conds.push(if v.initialized() || terminal && !v.init_failed {
        (
            "Initialized",
            true,
            terminal.then(|| "PodCompleted".into()),
            None,
        )
    } else {
        (
            "Initialized",
            false,
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    });
    let containers_ready = unready.is_empty() && !terminal;
    let not_ready_msg = format!("containers with unready status: [{}]", unready.join(" "));
    for t in ["Ready", "ContainersReady"] {
        conds.push(if containers_ready {
            (t, true, None, None)
        } else if terminal {
            (t, false, Some("PodCompleted".into()), None)
        } else {
            (
                t,
                false,
                Some("ContainersNotReady".into()),
                Some(not_ready_msg.clone()),
            )
        });
    }
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut conditions: Vec<Value> = conds
        .into_iter()
        .map(|(t, ok, reason, message)| {
            let st = if ok { "True" } else { "False" }.to_string();
            let e = times
                .entry(t.to_string())
                .or_insert_with(|| (st.clone(), now.clone()));
            if e.0 != st {
                *e = (st.clone(), now.clone());
            }
            let mut c =
                json!({"type": t, "status": st, "lastProbeTime": null, "lastTransitionTime": e.1});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            c
        })
        .collect();
    // The scheduler's condition, kept as it is.
    let scheduled = v
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_else(|| {
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": start_time})
        });
    conditions.push(scheduled);
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}],
        "startTime": start_time,
        "containerStatuses": statuses,
        "qosClass": super::qos(v.pod).as_str(),
    });
    if !v.pod_ip.is_empty() {
        status["podIP"] = json!(v.pod_ip);
        status["podIPs"] = json!([{"ip": v.pod_ip}]);
    }
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = Value::Array(init_statuses);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "busybox"}]},
        }))
        .unwrap()
    }

    fn inst(id: &str, attempt: u32, state: cri::ContainerState, code: i32) -> Instance {
        Instance {
            id: id.into(),
            sandbox_id: "s1".into(),
            attempt,
            state: state as i32,
            created_at: 1,
            started_at: 1_700_000_000_000_000_000,
            finished_at: 1_700_000_001_000_000_000,
            exit_code: code,
            reason: String::new(),
            message: String::new(),
            image_ref: "sha256:abc".into(),
        }
    }

    fn build_for(
        p: &Pod,
        instances: Vec<Instance>,
        waiting: HashMap<String, (String, String)>,
    ) -> Value {
        let inst = HashMap::from([("a".to_string(), instances)]);
        let ready = HashMap::from([("c2".to_string(), true), ("c1".to_string(), true)]);
        let v = View {
            pod: p,
            runtime_name: "rkube",
            sandbox_ready: true,
            pod_ip: "10.42.0.9",
            host_ip: "10.0.0.1",
            instances: &inst,
            sandbox_id: "s1",
            waiting: &waiting,
            ready: &ready,
            started: &HashMap::new(),
            init_done: false, // none of these pods has init containers
            init_failed: false,
            terminating: false,
        };
        build(&v, &mut HashMap::new(), "2024-01-01T00:00:00Z")
    }

    #[test]
    fn running_after_a_restart_reports_the_last_state() {
        let p = pod("Always");
        let s = build_for(
            &p,
            vec![
                inst("c2", 1, cri::ContainerState::ContainerRunning, 0),
                inst("c1", 0, cri::ContainerState::ContainerExited, 3),
            ],
            HashMap::new(),
        );
        assert_eq!(s["phase"], "Running");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["restartCount"], 1);
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(c["ready"], true);
        assert_eq!(c["containerID"], "rkube://c2");
        assert_eq!(s["podIP"], "10.42.0.9");
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
    }

    #[test]
    fn crash_loop_and_terminal_phases() {
        let p = pod("Always");
        let waiting = HashMap::from([(
            "a".to_string(),
            ("CrashLoopBackOff".to_string(), "back-off 10s".to_string()),
        )]);
        let s = build_for(
            &p,
            vec![inst("c1", 0, cri::ContainerState::ContainerExited, 1)],
            waiting,
        );
        assert_eq!(s["phase"], "Running");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CrashLoopBackOff"
        );
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
            1
        );

        let never = pod("Never");
        let s = build_for(
            &never,
            vec![inst("c1", 0, cri::ContainerState::ContainerExited, 0)],
            HashMap::new(),
        );
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        let s = build_for(
            &never,
            vec![inst("c1", 0, cri::ContainerState::ContainerExited, 2)],
            HashMap::new(),
        );
        assert_eq!(s["phase"], "Failed");
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["reason"], "PodCompleted");

        let s = build_for(&never, vec![], HashMap::new());
        let init = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Initialized")
            .unwrap();
        assert_eq!(init["status"], "True", "no init containers: initialized");
        assert_eq!(s["phase"], "Pending");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
    }
}
