//! Probes (liveness, readiness, startup) and lifecycle hooks: exec through CRI ExecSync;
//! httpGet, tcpSocket and grpc against the pod's IP (`netprobe`), with upstream's result
//! messages.

use crate::error::ProbeFailure;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, ExecAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::netprobe;
use crate::cri::RuntimeService;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Restarts the container when it fails.
    Liveness,
    /// Takes the pod out of Service endpoints when it fails.
    Readiness,
    /// Holds the other probes until it succeeds once.
    Startup,
}

impl Kind {
    /// The name events use (`Liveness`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }

    /// The container's probe of this kind.
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// One probe's running state for one container instance.
#[derive(Clone, Debug)]
pub struct State {
    /// The container instance it probes (a restart starts over).
    pub container_id: String,
    /// Successes in a row.
    pub successes: i32,
    /// Failures in a row.
    pub failures: i32,
    /// The current verdict (None until the thresholds decide).
    pub result: Option<bool>,
    /// When it runs next.
    pub next: Instant,
}

impl State {
    /// A fresh state; the first probe is due after `initialDelaySeconds`.
    pub fn new(container_id: &str, p: &Probe, started: Instant) -> State {
        State {
            container_id: container_id.into(),
            successes: 0,
            failures: 0,
            result: None,
            next: started + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
        }
    }

    /// Records one outcome against the thresholds; returns whether the verdict changed.
    pub fn record(&mut self, p: &Probe, ok: bool) -> bool {
        let before = self.result;
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= p.success_threshold.unwrap_or(1).max(1) {
                self.result = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= p.failure_threshold.unwrap_or(3).max(1) {
                self.result = Some(false);
            }
        }
        self.next =
            Instant::now() + Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        before != self.result
    }
}

/// Where network probes and hooks connect.
pub struct Target<'a> {
    /// The runtime, for exec probes.
    pub cri: &'a dyn RuntimeService,
    /// The container probed.
    pub container_id: &'a str,
    /// Its spec (named ports).
    pub container: &'a Container,
    /// The pod's IP, where network probes connect.
    pub pod_ip: &'a str,
}

/// Runs a probe once: Ok on success, Err(message) on failure.
pub async fn run(t: &Target<'_>, p: &Probe) -> Result<(), ProbeFailure> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &p.exec {
        return exec(t, e, timeout).await;
    }
    if let Some(h) = &p.http_get {
        return netprobe::http_get(t.pod_ip, port(t.container, &h.port)?, h, timeout).await;
    }
    if let Some(s) = &p.tcp_socket {
        let host = s.host.clone().unwrap_or_else(|| t.pod_ip.to_string());
        return netprobe::tcp(&host, port(t.container, &s.port)?, timeout).await;
    }
    if let Some(g) = &p.grpc {
        let port = u16::try_from(g.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port number: {}", g.port))?;
        return netprobe::grpc(t.pod_ip, port, g.service.as_deref().unwrap_or(""), timeout).await;
    }
    Err("the probe has no handler".into())
}

/// Runs a lifecycle hook handler (postStart / preStop) with a deadline.
pub async fn hook(
    t: &Target<'_>,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    if let Some(e) = &h.exec {
        return exec(t, e, timeout).await;
    }
    if let Some(g) = &h.http_get {
        return netprobe::http_get(t.pod_ip, port(t.container, &g.port)?, g, timeout).await;
    }
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    if h.tcp_socket.is_some() {
        // Deprecated and ignored by upstream too.
        return Ok(());
    }
    Err("the hook has no handler".into())
}

async fn exec(t: &Target<'_>, e: &ExecAction, timeout: Duration) -> Result<(), ProbeFailure> {
    let cmd = e.command.clone().unwrap_or_default();
    let req = cri::ExecSyncRequest {
        container_id: t.container_id.into(),
        cmd,
        timeout: timeout.as_secs() as i64,
    };
    let out = t.cri.exec_sync(req).await.map_err(|s| {
        if s.code() == tonic::Code::DeadlineExceeded {
            format!("command timed out after {}s", timeout.as_secs())
        } else {
            s.message().to_string()
        }
    })?;
    if out.exit_code == 0 {
        return Ok(());
    }
    let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
    msg.push_str(&String::from_utf8_lossy(&out.stderr));
    if msg.trim().is_empty() {
        msg = format!(
            "command {:?} exited with {}",
            e.command.clone().unwrap_or_default(),
            out.exit_code
        );
    }
    Err(msg.into())
}

/// A named or numbered port of the container.
fn port(c: &Container, p: &IntOrString) -> Result<u16, ProbeFailure> {
    match p {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(*n as u16),
        IntOrString::Int(n) => Err(format!("invalid port number: {n}").into()),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .map(|cp| cp.container_port as u16)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("couldn't find port: {name} in {}", c.name).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            period_seconds: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let p = probe(1, 3);
        let mut s = State::new("c1", &p, Instant::now());
        assert!(s.record(&p, true));
        assert_eq!(s.result, Some(true));
        assert!(!s.record(&p, false));
        assert!(!s.record(&p, false));
        assert_eq!(s.result, Some(true), "two failures are below the threshold");
        assert!(s.record(&p, false));
        assert_eq!(s.result, Some(false));
        let p2 = probe(2, 1);
        let mut s = State::new("c1", &p2, Instant::now());
        s.record(&p2, true);
        assert_eq!(s.result, None, "one success is below a threshold of two");
        s.record(&p2, true);
        assert_eq!(s.result, Some(true));
    }

    #[test]
    fn named_ports_resolve() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        assert_eq!(port(&c, &IntOrString::String("http".into())), Ok(8080));
        assert_eq!(port(&c, &IntOrString::Int(81)), Ok(81));
        assert!(port(&c, &IntOrString::String("nope".into())).is_err());
    }
}
