//! `rkube bench scheduler`: upstream scheduler_perf's SchedulingBasic shape through the
//! real API: fake nodes, then pods created as fast as the API takes them, timed from the
//! first pod created to the last pod bound, with a `rkube scheduler` process of its own so
//! its CPU and memory are measured apart from the API server's.

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

use crate::bench_api::{rss_of, start_server};

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

pub async fn scheduler(dir: PathBuf, nodes: usize, pods: usize) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("rkube-bench-")
        .tempdir_in(&dir)
        .context("bench dir")?;
    let srv = start_server(tmp.path()).await?;
    let client = srv.client.clone();
    println!(
        "scheduler benchmark (SchedulingBasic): {nodes} nodes, {pods} pods, {} cores",
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
                "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
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

    let mut sched = Command::new(std::env::current_exe()?)
        .args(["scheduler", "--kubeconfig"])
        .arg(tmp.path().join("kubeconfig.yaml"))
        .env("RKUBE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting the scheduler")?;
    let sched_pid = sched.id();
    let res = measure(&client, pods, sched_pid, srv.child.id()).await;
    let _ = sched.kill();
    let _ = sched.wait();
    res
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{
            "name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
        }]},
    }))?)
}

async fn measure(
    client: &kube::Client,
    pods: usize,
    sched_pid: u32,
    server_pid: u32,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The scheduler is ready once it binds a first pod (its node cache is then full:
    // the watch lists every node before it reports).
    api.create(&PostParams::default(), &pod("warm-up")?).await?;
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
    // Count bindings as the watch reports them.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let watch_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let counter = tokio::spawn(async move {
        let mut seen: HashSet<String> = HashSet::new();
        let mut w = watcher(watch_api, watcher::Config::default()).boxed();
        let mut done_tx = Some(done_tx);
        while let Some(ev) = w.next().await {
            let p = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                _ => continue,
            };
            let name = p.metadata.name.clone().unwrap_or_default();
            if name.starts_with("pod-") && p.spec.and_then(|s| s.node_name).is_some() {
                seen.insert(name);
                if seen.len() == pods {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
        }
    });
    let (cpu_s0, cpu_a0) = (cpu_seconds(sched_pid), cpu_seconds(server_pid));
    let api = Arc::new(api);
    let t0 = Instant::now();
    create_all(pods, 64, |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &pod(&format!("pod-{i}"))?)
                .await?;
            Ok(())
        }
    })
    .await?;
    let created = t0.elapsed();
    let mut peak = (0u64, 0u64);
    let done = tokio::time::timeout(Duration::from_secs(600), done_rx)
        .await
        .context("not every pod was bound within 10 min")??;
    peak.0 = peak.0.max(rss_of(sched_pid));
    peak.1 = peak.1.max(rss_of(server_pid));
    counter.abort();
    let took = done.duration_since(t0);
    let (cpu_s, cpu_a) = (
        cpu_seconds(sched_pid) - cpu_s0,
        cpu_seconds(server_pid) - cpu_a0,
    );
    println!(
        "{pods} pods created in {:.2} s ({:.0}/s)",
        created.as_secs_f64(),
        pods as f64 / created.as_secs_f64()
    );
    println!(
        "first pod created → last pod bound: {:.2} s = {:.0} pods/s",
        took.as_secs_f64(),
        pods as f64 / took.as_secs_f64()
    );
    println!(
        "scheduler: {cpu_s:.1} CPU s ({:.0}% of a core), RSS {:.0} MiB; apiserver: {cpu_a:.1} CPU s ({:.0}%), RSS {:.0} MiB",
        100.0 * cpu_s / took.as_secs_f64(),
        peak.0 as f64 / 1024.0,
        100.0 * cpu_a / took.as_secs_f64(),
        peak.1 as f64 / 1024.0
    );
    Ok(())
}
