//! `rkube-bench scheduler`: upstream scheduler_perf's shapes through the real API: fake
//! nodes, pods already placed (`init`), then the measured pods created as fast as the API
//! takes them, timed from the first measured pod created to the last one bound, with a
//! `rkube scheduler` process of its own so its CPU and memory are measured apart from the
//! API server's.
//!
//! - `basic` (SchedulingBasic): plain pods.
//! - `topology-spreading` (TopologySpreading): nodes in three zones, pods spread by host
//!   and zone with `maxSkew: 5`, DoNotSchedule.
//! - `anti-affinity` (SchedulingPodAntiAffinity): pods that must not share a host with
//!   another of their kind, 1,000 of them placed first.
//! - `preemption` (PreemptionBasic): nodes full of low-priority pods; each measured pod
//!   has a high priority and fits only by preempting.
//!
//! With `--backlog` (not for preemption), the scheduler is then paused while as many pods
//! again are created, and timed alone from its resume to the last of them bound: its
//! throughput without the creates competing for the two cores (still through
//! `pods/binding` and watches).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use serde_json::Value;

use crate::api::{rss_of, start_server};

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the name.
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Runs `n` creates with `concurrency` in flight.
async fn create_all<F, Fut>(n: usize, concurrency: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut s = futures::stream::iter(0..n)
        .map(f)
        .buffer_unordered(concurrency);
    while let Some(r) = s.next().await {
        r?;
    }
    Ok(())
}

/// A scheduler_perf workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Basic,
    TopologySpreading,
    AntiAffinity,
    Preemption,
}

impl Shape {
    /// Upstream's name, and its CI floor in pods/s where the issue quotes one.
    fn upstream(self) -> (&'static str, Option<f64>) {
        match self {
            Shape::Basic => ("SchedulingBasic", Some(680.0)),
            Shape::TopologySpreading => ("TopologySpreading", Some(85.0)),
            Shape::AntiAffinity => ("SchedulingPodAntiAffinity", None),
            Shape::Preemption => ("PreemptionBasic", Some(18.0)),
        }
    }

    /// Node labels: a hostname, and for spreading one of three zones.
    fn node_labels(self, i: usize) -> Value {
        let mut l = json!({"kubernetes.io/hostname": format!("node-{i}")});
        if self == Shape::TopologySpreading {
            l["topology.kubernetes.io/zone"] = json!(format!("zone-{}", i % 3));
        }
        l
    }

    /// Pods placed before the measurement (created, then all bound).
    fn init_pods(self, nodes: usize) -> usize {
        match self {
            Shape::Basic | Shape::TopologySpreading => 0,
            Shape::AntiAffinity => 1000.min(nodes / 2),
            // Four 900m pods fill a 4-CPU node.
            Shape::Preemption => 4 * nodes,
        }
    }

    fn init_pod(self, name: &str) -> anyhow::Result<Pod> {
        let spec = match self {
            Shape::Preemption => json!({"priorityClassName": "bench-low",
                "terminationGracePeriodSeconds": 0, "containers": [container("900m")]}),
            Shape::AntiAffinity => anti_affinity_spec(),
            _ => json!({"containers": [container("100m")]}),
        };
        pod_of(name, self.labels(), spec)
    }

    fn measured_pod(self, name: &str) -> anyhow::Result<Pod> {
        let spec = match self {
            Shape::Basic => json!({"containers": [container("100m")]}),
            Shape::TopologySpreading => {
                let sel = json!({"matchLabels": {"color": "blue"}});
                json!({"containers": [container("100m")], "topologySpreadConstraints": [
                    {"maxSkew": 5, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": sel},
                    {"maxSkew": 5, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": sel}]})
            }
            Shape::AntiAffinity => anti_affinity_spec(),
            Shape::Preemption => {
                json!({"priorityClassName": "bench-high", "containers": [container("3")]})
            }
        };
        pod_of(name, self.labels(), spec)
    }

    fn labels(self) -> Value {
        match self {
            Shape::TopologySpreading => json!({"color": "blue"}),
            Shape::AntiAffinity => json!({"color": "green"}),
            _ => json!({}),
        }
    }
}

fn container(cpu: &str) -> Value {
    json!({"name": "pause", "image": "registry.k8s.io/pause:3.10",
        "resources": {"requests": {"cpu": cpu, "memory": "500Mi"}}})
}

fn anti_affinity_spec() -> Value {
    json!({"containers": [container("100m")], "affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"color": "green"}},
            "topologyKey": "kubernetes.io/hostname"}]}}})
}

fn pod_of(name: &str, labels: Value, spec: Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": spec,
    }))?)
}

pub async fn scheduler(
    dir: PathBuf,
    shape: Shape,
    nodes: Option<usize>,
    pods: Option<usize>,
    backlog: bool,
) -> anyhow::Result<()> {
    let (default_nodes, default_pods) = match shape {
        Shape::Basic => (5000, 10_000),
        Shape::TopologySpreading => (5000, 5000),
        Shape::AntiAffinity => (5000, 1000),
        Shape::Preemption => (500, 500),
    };
    let (nodes, pods) = (nodes.unwrap_or(default_nodes), pods.unwrap_or(default_pods));
    anyhow::ensure!(
        !(backlog && shape == Shape::Preemption),
        "--backlog does not apply to preemption: its nodes have no room for a second batch of \
         measured pods (no low-priority victims are left for them); use another shape"
    );
    let tmp = tempfile::Builder::new()
        .prefix("rkube-bench-")
        .tempdir_in(&dir)
        .context("bench dir")?;
    let srv = start_server(tmp.path()).await?;
    let client = srv.client.clone();
    let init = shape.init_pods(nodes);
    println!(
        "scheduler benchmark ({}): {nodes} nodes, {init} pods placed first, {pods} measured pods, {} cores",
        shape.upstream().0,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let node_api: Api<Node> = Api::all(client.clone());
    let t = Instant::now();
    create_all(nodes, 64, |i| {
        let api = node_api.clone();
        async move {
            let n: Node = serde_json::from_value(json!({
                "metadata": {"name": format!("node-{i}"), "labels": shape.node_labels(i)},
                "status": {
                    "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                    "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }))?;
            api.create(&PostParams::default(), &n).await?;
            Ok(())
        }
    })
    .await?;
    println!(
        "{nodes} nodes created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if shape == Shape::Preemption {
        let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> =
            Api::all(client.clone());
        for (name, value) in [("bench-low", 1), ("bench-high", 10)] {
            let pc = serde_json::from_value(json!({"metadata": {"name": name}, "value": value}))?;
            classes.create(&PostParams::default(), &pc).await?;
        }
    }

    let mut sched = Command::new(crate::rkube_binary())
        .args(["scheduler", "--kubeconfig"])
        .arg(tmp.path().join("kubeconfig.yaml"))
        .env("RKUBE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting the scheduler")?;
    let sched_pid = sched.id();
    let mut res = measure(&client, shape, init, pods, sched_pid, srv.child.id()).await;
    if backlog && res.is_ok() {
        res = measure_backlog(&client, shape, pods, sched_pid, srv.child.id()).await;
    }
    let _ = sched.kill();
    let _ = sched.wait();
    res
}

/// Creates `n` pods named `PREFIX-i` from `make`, 64 in flight, and waits until a watch
/// has seen them all bound; (creation time, first create → last bound). With `paused`,
/// that process (the scheduler) is stopped during the creates and the time to the last
/// bound runs from its resume, when `at_resume` is called.
async fn create_and_bind(
    client: &kube::Client,
    prefix: &'static str,
    n: usize,
    make: impl Fn(&str) -> anyhow::Result<Pod>,
    paused: Option<(u32, &mut dyn FnMut())>,
) -> anyhow::Result<(Duration, Duration)> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let watch_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let counter = tokio::spawn(async move {
        let mut seen: HashSet<String> = HashSet::new();
        let mut w = watcher(watch_api, watcher::Config::default()).boxed();
        let mut done_tx = Some(done_tx);
        let mut ready_tx = Some(ready_tx);
        while let Some(ev) = w.next().await {
            let p = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                _ => continue,
            };
            let name = p.metadata.name.clone().unwrap_or_default();
            let ours = name
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('-'));
            if ours && p.spec.and_then(|s| s.node_name).is_some() {
                seen.insert(name);
                if seen.len() == n {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
        }
    });
    let _ = ready_rx.await;
    let api = Arc::new(Api::<Pod>::namespaced(client.clone(), "default"));
    let make = &make;
    if let Some((pid, _)) = &paused {
        signal(*pid, libc::SIGSTOP)?;
    }
    let mut t0 = Instant::now();
    let created = create_all(n, 64, |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &make(&format!("{prefix}-{i}"))?)
                .await?;
            Ok(())
        }
    })
    .await;
    let created_in = t0.elapsed();
    if let Some((pid, at_resume)) = paused {
        at_resume();
        t0 = Instant::now();
        signal(pid, libc::SIGCONT)?;
    }
    created?;
    let done = tokio::time::timeout(Duration::from_secs(900), done_rx)
        .await
        .with_context(|| format!("not every {prefix} pod was bound within 15 min"))??;
    counter.abort();
    Ok((created_in, done.duration_since(t0)))
}

async fn measure(
    client: &kube::Client,
    shape: Shape,
    init: usize,
    pods: usize,
    sched_pid: u32,
    server_pid: u32,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The scheduler is ready once it binds a first pod (its node cache is then full:
    // the watch lists every node before it reports).
    let warm = pod_of(
        "warm-up",
        json!({}),
        json!({"containers": [container("10m")]}),
    )?;
    api.create(&PostParams::default(), &warm).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = api.get("warm-up").await?;
        if p.spec.and_then(|s| s.node_name).is_some() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the scheduler bound nothing in 2 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if init > 0 {
        let (_, took) = create_and_bind(client, "init", init, |n| shape.init_pod(n), None).await?;
        println!("{init} pods placed first in {:.1} s", took.as_secs_f64());
    }
    let (cpu_s0, cpu_a0) = (cpu_seconds(sched_pid), cpu_seconds(server_pid));
    let (created, took) =
        create_and_bind(client, "pod", pods, |n| shape.measured_pod(n), None).await?;
    let peak = (rss_of(sched_pid), rss_of(server_pid));
    if shape == Shape::Preemption {
        let left = api
            .list(&kube::api::ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("init-"))
            })
            .count();
        println!(
            "{} low-priority pods preempted ({:.1} per measured pod)",
            init - left,
            (init - left) as f64 / pods as f64
        );
    }
    let (cpu_s, cpu_a) = (
        cpu_seconds(sched_pid) - cpu_s0,
        cpu_seconds(server_pid) - cpu_a0,
    );
    println!(
        "{pods} pods created in {:.2} s ({:.0}/s)",
        created.as_secs_f64(),
        pods as f64 / created.as_secs_f64()
    );
    let rate = pods as f64 / took.as_secs_f64();
    println!(
        "first pod created → last pod bound: {:.2} s = {rate:.0} pods/s",
        took.as_secs_f64(),
    );
    if let (name, Some(floor)) = shape.upstream() {
        println!(
            "upstream's CI floor for {name}: {floor:.0} pods/s; this run: {:.1}x (target 10x)",
            rate / floor
        );
    }
    println!(
        "scheduler: {cpu_s:.1} CPU s ({:.0}% of a core), RSS {:.0} MiB; apiserver: {cpu_a:.1} CPU s ({:.0}%), RSS {:.0} MiB",
        100.0 * cpu_s / took.as_secs_f64(),
        peak.0 as f64 / 1024.0,
        100.0 * cpu_a / took.as_secs_f64(),
        peak.1 as f64 / 1024.0
    );
    Ok(())
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill has no memory preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context("signalling the scheduler");
    }
    Ok(())
}

/// The scheduler alone: `pods` more pods created while it is paused, timed from its
/// resume to the last of them bound.
async fn measure_backlog(
    client: &kube::Client,
    shape: Shape,
    pods: usize,
    sched_pid: u32,
    server_pid: u32,
) -> anyhow::Result<()> {
    let mut at_resume = (0.0, 0.0);
    let (created, took) = create_and_bind(
        client,
        "queued",
        pods,
        |n| shape.measured_pod(n),
        Some((sched_pid, &mut || {
            at_resume = (cpu_seconds(sched_pid), cpu_seconds(server_pid))
        })),
    )
    .await?;
    let cpu_s = cpu_seconds(sched_pid) - at_resume.0;
    let cpu_a = cpu_seconds(server_pid) - at_resume.1;
    let took_s = took.as_secs_f64();
    println!(
        "scheduler alone: {pods} pods created while it was paused ({:.2} s); resumed → last bound: {took_s:.2} s = {:.0} pods/s",
        created.as_secs_f64(),
        pods as f64 / took_s,
    );
    println!(
        "  scheduler {cpu_s:.1} CPU s ({:.0}% of a core), apiserver {cpu_a:.1} CPU s ({:.0}%)",
        100.0 * cpu_s / took_s,
        100.0 * cpu_a / took_s,
    );
    Ok(())
}
