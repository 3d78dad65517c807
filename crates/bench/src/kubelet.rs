//! `rkube-bench kubelet` (root): pod startup latency on one node, as upstream's density
//! test measures it (pod created → Running seen through a watch), for pods created at
//! once, and the memory of the node agent holding them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::api::{percentile, rss_of, start_server_with};

const IMAGE: &str = "bench.local/busybox:1";

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "kubelet"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"]}],
        },
    }))?)
}

/// The machine's busy CPU time so far, all processes (user, system, interrupts), in ms.
fn busy_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq: idle and iowait are not busy.
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy * 1000.0 / hz
}

/// CPU time (user and system) of process `pid` so far, in ms; its children not counted.
fn process_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks * 1000.0 / hz
}

/// A batch's outcome: each pod's create → Running latency (sorted), and the machine's
/// busy CPU time from the first create to the last pod Running.
struct Batch {
    latencies: Vec<Duration>,
    cpu_ms: f64,
    /// The server process's own CPU time in that window (not runc's, nor the shims').
    server_cpu_ms: f64,
}

/// Runs the pods `names` at once.
async fn start_batch(api: &Api<Pod>, server: u32, names: &[String]) -> anyhow::Result<Batch> {
    let cfg = watcher::Config::default().labels("bench=kubelet");
    let mut events = watcher(api.clone(), cfg).boxed();
    // The watch is established once its initial list is through.
    while let Some(ev) = events.next().await {
        if matches!(ev, Ok(watcher::Event::InitDone)) {
            break;
        }
    }
    let mut created: HashMap<String, Instant> = HashMap::new();
    let cpu0 = busy_cpu_ms();
    let server0 = process_cpu_ms(server);
    let creates = names.iter().map(|n| {
        let api = api.clone();
        async move {
            let t = Instant::now();
            api.create(&PostParams::default(), &pod(n)?).await?;
            anyhow::Ok((n.clone(), t))
        }
    });
    for r in futures::future::join_all(creates).await {
        let (n, t) = r?;
        created.insert(n, t);
    }
    let mut latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while latencies.len() < names.len() {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("pods did not all reach Running within 2 minutes")?;
        let Some(Ok(watcher::Event::Apply(p))) = ev else {
            continue;
        };
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let name = p.metadata.name.clone().unwrap_or_default();
        if running {
            if let Some(t) = created.remove(&name) {
                latencies.push(t.elapsed());
            }
        }
    }
    let cpu_ms = busy_cpu_ms() - cpu0;
    let server_cpu_ms = process_cpu_ms(server) - server0;
    latencies.sort();
    Ok(Batch {
        latencies,
        cpu_ms,
        server_cpu_ms,
    })
}

/// The summed RSS (KiB) of the container shims this data dir's runtime started.
fn shims_rss(data: &std::path::Path) -> (usize, u64) {
    let needle = data.display().to_string();
    let mut n = 0;
    let mut kib = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("\0shim\0") && cmd.contains(&needle) {
            n += 1;
            kib += rss_of(pid);
        }
    }
    (n, kib)
}

/// Deletes the benchmark's pods and waits until the agent has removed them.
async fn delete_all(api: &Api<Pod>) -> anyhow::Result<()> {
    let lp = ListParams::default().labels("bench=kubelet");
    let _ = api.delete_collection(&DeleteParams::default(), &lp).await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if api.list(&lp).await?.items.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the benchmark's pods were not removed within a minute")
}

pub async fn kubelet(dir: PathBuf, pods: usize, rounds: usize) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the kubelet benchmark runs containers: run it as root");
    }
    let tmp = tempfile::Builder::new()
        .prefix("rkube-bench-")
        .tempdir_in(&dir)
        .context("bench dir")?;
    let data = tmp.path().join("data");
    let tar = tmp.path().join("busybox.tar");
    let img =
        rkube_testkit::images::busybox_image("bench", rkube_testkit::images::Compression::Gzip)
            .map_err(anyhow::Error::msg)?;
    rkube_testkit::images::write_oci_layout(&img, IMAGE, &tar);
    let out = Command::new(crate::rkube_binary())
        .args([
            "images",
            "import",
            &tar.display().to_string(),
            "--data-dir",
            &data.display().to_string(),
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "importing the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The control plane alone, for the agent's share of the memory.
    let base = {
        let d = tempfile::Builder::new()
            .prefix("rkube-bench-cp-")
            .tempdir_in(&dir)?;
        let srv = start_server_with(d.path(), &["--disable-agent"]).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss_of(srv.child.id())
    };

    let bridge = format!("rkb{}", std::process::id() % 100000);
    let srv = start_server_with(
        tmp.path(),
        &[
            "--node-name",
            "bench-node",
            "--node-ip",
            "127.0.0.1",
            "--kubelet-port",
            "0",
            "--cluster-cidr",
            "10.231.0.0/16",
            "--pod-bridge",
            &bridge,
            // A development machine's disk is often fuller than upstream's 10% default
            // allows: under DiskPressure the pods would be refused, not timed.
            "--eviction-hard",
            "memory.available<100Mi,nodefs.available<1Gi",
        ],
    )
    .await?;
    let nodes: Api<Node> = Api::all(srv.client.clone());
    let t0 = Instant::now();
    loop {
        let ready = nodes.get_opt("bench-node").await?.is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "the node did not turn Ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node_ready = t0.elapsed();
    let api: Api<Pod> = Api::namespaced(srv.client.clone(), "default");
    println!(
        "kubelet benchmark: {pods} pods at once on one node (busybox, sleep), {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "  node Ready after server start       {:>8.0} ms",
        node_ready.as_secs_f64() * 1000.0
    );
    // A first pod sets up the pod network; the batch measures the steady state.
    let warm = start_batch(&api, srv.child.id(), &["warmup".to_string()]).await?;
    println!(
        "  first pod on the node, create→Running {:>6.0} ms",
        warm.latencies[0].as_secs_f64() * 1000.0
    );
    let names: Vec<String> = (0..pods).map(|i| format!("bench-{i}")).collect();
    let batch = start_batch(&api, srv.child.id(), &names).await?;
    let mut cpu = vec![batch.cpu_ms];
    let mut server_cpu = vec![batch.server_cpu_ms];
    let lat = batch.latencies;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_agent = rss_of(srv.child.id());
    let (nshims, shim_kib) = shims_rss(&data);
    let show = |label: &str, lat: &[Duration]| {
        println!(
            "  {label:<38}p50 {:>6.0} ms   p99 {:>6.0} ms   max {:>6.0} ms",
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            percentile(lat, 1.0)
        )
    };
    show("pod startup, round 1 (create→Running)", &lat);
    // More rounds on the same node (the last round's pods deleted first): this machine
    // is shared, and one round's figures vary.
    let mut all = lat.clone();
    let mut medians = vec![percentile(&lat, 0.5)];
    for round in 2..=rounds {
        delete_all(&api).await?;
        let names: Vec<String> = (0..pods).map(|i| format!("bench-{round}-{i}")).collect();
        let batch = start_batch(&api, srv.child.id(), &names).await?;
        cpu.push(batch.cpu_ms);
        server_cpu.push(batch.server_cpu_ms);
        let lat = batch.latencies;
        show(&format!("pod startup, round {round}"), &lat);
        medians.push(percentile(&lat, 0.5));
        all.extend(lat);
    }
    all.sort();
    if rounds > 1 {
        show(&format!("pod startup, all {} pods", all.len()), &all);
        medians.sort_by(f64::total_cmp);
        println!(
            "  median of the rounds' p50s                {:>6.0} ms",
            medians[medians.len() / 2]
        );
    }
    let per_pod = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] / pods as f64
    };
    println!(
        "  CPU per pod, whole machine (median round)  {:>5.1} ms",
        per_pod(cpu)
    );
    println!(
        "  CPU per pod, server process alone          {:>5.1} ms",
        per_pod(server_cpu)
    );
    println!(
        "  server RSS, control plane only        {:>8.1} MiB",
        base as f64 / 1024.0
    );
    println!(
        "  server RSS with agent + {} pods      {:>8.1} MiB",
        pods + 1,
        with_agent as f64 / 1024.0
    );
    println!(
        "  agent share (difference)              {:>8.1} MiB",
        (with_agent as f64 - base as f64) / 1024.0
    );
    println!(
        "  container shims: {nshims}, RSS total      {:>8.1} MiB",
        shim_kib as f64 / 1024.0
    );

    // Clean up: the agent removes the pods, then the server and the bridge go.
    let _ = delete_all(&api).await;
    drop(srv);
    let _ = Command::new("ip").args(["link", "del", &bridge]).output();
    unmount_under(tmp.path());
    let state = rkube_runtime::Paths::under(&data).state;
    unmount_under(&state);
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}

/// Detaches every mount under `dir` (containers' roots the agent had not yet removed when
/// the server stopped), deepest first, so the benchmark's directory can go.
fn unmount_under(dir: &std::path::Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| std::path::Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid C string; a failure leaves the mount, as before.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
