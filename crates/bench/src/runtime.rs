//! `rkube-bench runtime`: pod and container lifecycle times through CRI against the
//! built-in runtime, beside bare `runc run` of the same bundle. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::api::percentile;

const IMAGE: &str = "bench.local/busybox:1";
const BRIDGE: &str = "rkbench0";
const CGROUP: &str = "/rkube-bench";

fn sandbox(i: usize) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{i}"),
            uid: format!("uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{i}"),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("{CGROUP}/pod-{i}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    }
}

/// Runs a pod sandbox; its ID.
async fn run_pod(
    c: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
) -> anyhow::Result<String> {
    Ok(c.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await?
    .into_inner()
    .pod_sandbox_id)
}

/// Creates container `name` (a long sleep) in a pod; its ID.
async fn create(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: &cri::PodSandboxConfig,
    name: &str,
) -> anyhow::Result<String> {
    Ok(c.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(container(name)),
        sandbox_config: Some(config.clone()),
    })
    .await?
    .into_inner()
    .container_id)
}

/// Sandbox + first container running: (sandbox time, total time, pod ID).
async fn pod_with_container(
    c: &mut RuntimeServiceClient<Channel>,
    i: usize,
) -> anyhow::Result<(Duration, Duration, String)> {
    let t = Instant::now();
    let config = sandbox(i);
    let pod = run_pod(c, &config).await?;
    let sandbox_time = t.elapsed();
    let id = create(c, &pod, &config, "main").await?;
    c.start_container(cri::StartContainerRequest { container_id: id })
        .await?;
    Ok((sandbox_time, t.elapsed(), pod))
}

async fn remove_pod(c: &mut RuntimeServiceClient<Channel>, pod: &str) -> anyhow::Result<()> {
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await?;
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await?;
    Ok(())
}

fn row(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name:<52} {:>9.1} {:>9.1}",
        percentile(&v, 0.5),
        percentile(&v, 0.99)
    );
}

/// Runs runc with the container's stdio on /dev/null (a detached container keeps whatever
/// runc had) and its own errors in `--log`.
fn runc(runc: &Path, root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let log = root.join("runc.log");
    let status = Command::new(runc)
        .arg("--root")
        .arg(root)
        .arg("--log")
        .arg(&log)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        let msg = std::fs::read_to_string(&log).unwrap_or_default();
        bail!(
            "runc {}: {}",
            args.join(" "),
            msg.lines().last().unwrap_or("").trim()
        );
    }
    Ok(())
}

pub async fn runtime(dir: PathBuf, runs: usize) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the runtime benchmark needs root (namespaces, mounts, runc): run it with sudo");
    }
    let tmp = tempfile::Builder::new()
        .prefix("rkube-bench-")
        .tempdir_in(&dir)
        .context("bench dir")?;
    let data = tmp.path().join("data");
    let paths = rkube_runtime::Paths::under(&data);
    let store = rkube_runtime::images::ImageStore::open(&paths.images())?;
    let img =
        rkube_testkit::images::busybox_image("bench", rkube_testkit::images::Compression::Gzip)
            .map_err(|e| {
                anyhow::anyhow!("building the busybox image (apt-get install busybox-static): {e}")
            })?;
    let tar = tmp.path().join("busybox.tar");
    rkube_testkit::images::write_oci_layout(&img, IMAGE, &tar);
    rkube_runtime::images::import::import(&store, &tar, &|_| {})?;
    drop(store);
    // Containers run under the shipped binary's shim, as `rkube runtime` runs them.
    let options = rkube_runtime::cri::Options {
        bridge: BRIDGE.into(),
        shim: crate::rkube_binary(),
        ..Default::default()
    };
    let runc_bin = options.runc.clone();
    let rt = rkube_runtime::cri::Runtime::open(paths.clone(), options)?;
    rt.set_pod_cidr("10.198.0.0/22")?;
    let socket = tmp.path().join("cri.sock");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let (rt, socket) = (rt.clone(), socket.clone());
        async move {
            rkube_runtime::cri::serve(rt, &socket, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let mut c = loop {
        if let Ok(ch) = rkube_runtime::cri::connect(&socket).await {
            break RuntimeServiceClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "runtime benchmark: {runs} runs each, runc {}, {} cores",
        runc_bin.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let res = measure(&mut c, &paths.state, &runc_bin, runs).await;
    // Clean up whatever is left, even after an error.
    let pods = c
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    for p in pods {
        let _ = remove_pod(&mut c, &p.id).await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    let _ = std::fs::remove_dir_all(&paths.state);
    for h in [
        "memory", "cpu", "cpuacct", "pids", "cpuset", "blkio", "devices", "freezer",
    ] {
        let base = Path::new("/sys/fs/cgroup")
            .join(h)
            .join(CGROUP.trim_start_matches('/'));
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
        let _ = std::fs::remove_dir(&base);
    }
    res
}

async fn measure(
    c: &mut RuntimeServiceClient<Channel>,
    root: &Path,
    runc_bin: &Path,
    runs: usize,
) -> anyhow::Result<()> {
    // Warm-up: the first pod creates the bridge.
    let (_, _, pod) = pod_with_container(c, 100_000).await?;
    remove_pod(c, &pod).await?;

    let (mut sandboxes, mut firsts) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (s, t, pod) = pod_with_container(c, i).await?;
        sandboxes.push(s);
        firsts.push(t);
        remove_pod(c, &pod).await?;
    }

    // Container lifecycle in one pod, and bare runc on a copy of the same bundle.
    let config = sandbox(200_000);
    let pod = run_pod(c, &config).await?;
    let mut lifecycle = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let id = create(c, &pod, &config, &format!("c{i}")).await?;
        c.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        c.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await?;
        c.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await?;
        lifecycle.push(t.elapsed());
    }
    // The donor: a created container whose bundle (spec + mounted root) bare runc reuses.
    let donor = create(c, &pod, &config, "donor").await?;
    let donor_dir = root.join("containers").join(&donor).join("bundle");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(donor_dir.join("config.json"))?)?;
    spec["root"]["path"] = serde_json::json!(donor_dir.join("rootfs"));
    let bare_root = root.join("bench-runc");
    std::fs::create_dir_all(&bare_root)?;
    let mut bare = Vec::new();
    for i in 0..runs {
        let bundle = root.join(format!("bench-bundle-{i}"));
        std::fs::create_dir_all(&bundle)?;
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("{CGROUP}/bare-{i}"));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
        let id = format!("bare-{i}");
        let b = bundle.display().to_string();
        let pid_file = bundle.join("pid");
        let p = pid_file.display().to_string();
        let t = Instant::now();
        runc(
            runc_bin,
            &bare_root,
            &["run", "--detach", "--pid-file", &p, "--bundle", &b, &id],
        )?;
        // As StopContainer with no grace: SIGKILL, wait for the process, delete.
        let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
        runc(runc_bin, &bare_root, &["kill", &id, "KILL"])?;
        while Path::new("/proc").join(&pid).join("stat").exists()
            && !std::fs::read_to_string(Path::new("/proc").join(&pid).join("stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        runc(runc_bin, &bare_root, &["delete", "--force", &id])?;
        bare.push(t.elapsed());
        std::fs::remove_dir_all(&bundle)?;
    }
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .ok();

    // 20 pods at once.
    let t = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move { pod_with_container(&mut c, 300_000 + i).await })
        })
        .collect();
    let mut each = Vec::new();
    let mut pods = Vec::new();
    for task in tasks {
        let (_, d, pod) = task.await??;
        each.push(d);
        pods.push(pod);
    }
    let all = t.elapsed();
    for p in pods {
        remove_pod(c, &p).await?;
    }

    println!("{:<52} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    row("pod sandbox (namespaces, CNI bridge + IPAM)", sandboxes);
    row("sandbox + first container running", firsts);
    let mut l = lifecycle.clone();
    l.sort();
    let mut b = bare.clone();
    b.sort();
    row("container create+start+stop+remove (CRI)", lifecycle);
    row("bare runc run -d, kill, wait, delete; same bundle", bare);
    row("20 pods at once: each, sandbox + container running", each);
    println!(
        "20 pods at once: all running after {:.1} ms",
        all.as_secs_f64() * 1000.0
    );
    println!(
        "overhead over bare runc (p50): {:.2}x",
        percentile(&l, 0.5) / percentile(&b, 0.5).max(0.001)
    );
    Ok(())
}
