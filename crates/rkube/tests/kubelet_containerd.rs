//! The kubelet against another CRI runtime: Debian's containerd, started by the test with
//! its own root, state, socket and CNI configuration, images pulled from a loopback
//! registry. Root only.

mod agent_node;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_node::{root_or_skip, Cluster};
use rkube_testkit::images::{busybox_image, pause_image, Compression, Registry};

struct Containerd {
    child: Child,
    socket: std::path::PathBuf,
    dir: std::path::PathBuf,
    bridge: String,
}

impl Containerd {
    fn start(dir: &std::path::Path, registry: &str, bridge: &str) -> Containerd {
        let root = dir.join("root");
        let state = dir.join("state");
        let socket = dir.join("containerd.sock");
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        let template = dir.join("cni-template.json");
        std::fs::write(
            &template,
            format!(
                r#"{{"cniVersion": "0.4.0", "name": "ctd-test", "plugins": [{{"type": "bridge", "bridge": "{bridge}",
  "isGateway": true, "ipMasq": true, "ipam": {{"type": "host-local", "dataDir": "{ipam}",
  "ranges": [[{{"subnet": "{{{{.PodCIDR}}}}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}}}]}}"#,
                ipam = dir.join("ipam").display()
            ),
        )
        .unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{registry}/pause:1"
  # This machine withholds CAP_SYS_RESOURCE: no OOM scores below containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    conf_template = "{template}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
                root = root.display(),
                state = state.display(),
                socket = socket.display(),
                cni = cni.display(),
                template = template.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let c = Containerd {
            child,
            socket,
            dir: dir.to_path_buf(),
            bridge: bridge.to_string(),
        };
        let t0 = Instant::now();
        let rt = tokio::runtime::Runtime::new().unwrap();
        loop {
            let ok = rt.block_on(async {
                match rkube_runtime::cri::connect(&c.socket).await {
                    Ok(ch) => k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(ch)
                        .version(k8s_cri::v1::VersionRequest::default())
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            });
            if ok {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods first (containerd tears down their network), then containerd and mounts.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            use k8s_cri::v1 as cri;
            let Ok(ch) = rkube_runtime::cri::connect(&self.socket).await else {
                return;
            };
            let mut c = cri::runtime_service_client::RuntimeServiceClient::new(ch);
            let pods = c
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
                .map(|r| r.into_inner().items)
                .unwrap_or_default();
            for p in pods {
                let _ = c
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    })
                    .await;
                let _ = c
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: p.id,
                    })
                    .await;
            }
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Leftover mounts under containerd's directories (shm, rootfs), deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[test]
fn the_kubelet_drives_containerd() {
    if !root_or_skip("the_kubelet_drives_containerd") {
        return;
    }
    if Command::new("containerd")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("containerd is not installed: `make deps` installs it (apt-get install containerd)");
    }
    let registry = Registry::start(false).unwrap();
    registry
        .push(
            "busybox",
            "1",
            &busybox_image("ctd", Compression::Gzip).unwrap(),
        )
        .unwrap();
    registry
        .push("pause", "1", &pause_image().unwrap())
        .unwrap();
    let host = registry.host();
    let tmp = tempfile::tempdir().unwrap();
    let bridge = format!("rkc{}", std::process::id() % 10000);
    let ctd = Containerd::start(tmp.path(), &host, &bridge);
    let endpoint = format!("unix://{}", ctd.socket.display());
    let c = Cluster::start(6, &["--container-runtime-endpoint", &endpoint]);
    let node = format!("node/{}", c.name);
    let waited = c.kubectl.run(
        &["wait", "--for=condition=Ready", &node, "--timeout=60s"],
        None,
    );
    assert!(
        waited.status.success(),
        "node not Ready: {}\n{}\ncontainerd log:\n{}",
        c.jsonpath(&node, "{.status.conditions}"),
        c.server_log(),
        ctd.log()
    );
    let runtime = c.jsonpath(&node, "{.status.nodeInfo.containerRuntimeVersion}");
    assert!(runtime.starts_with("containerd://"), "{runtime}");
    c.apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "ctd"}},
           "spec": {{"containers": [{{"name": "main", "image": "{host}/busybox:1",
             "command": ["sh", "-c", "echo hello from containerd; sleep 3600"]}}]}}}}"#
    ));
    let waited = c.kubectl.run(
        &["wait", "--for=condition=Ready", "pod/ctd", "--timeout=90s"],
        None,
    );
    if !waited.status.success() {
        if let Ok(secs) = std::env::var("RKUBE_DEBUG_HOLD") {
            eprintln!("HOLD socket={} registry={host}", ctd.socket.display());
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(120)));
        }
        panic!(
            "pod not Ready:\n{}\nevents:\n{}\ncontainerd log:\n{}",
            c.kubectl.ok(&["get", "pod", "ctd", "-o", "yaml"]),
            c.events("ctd"),
            ctd.log()
        );
    }
    let id = c.jsonpath("pod ctd", "{.status.containerStatuses[0].containerID}");
    assert!(id.starts_with("containerd://"), "{id}");
    let ev = c.events("ctd");
    assert!(
        ev.contains(&format!("Pulling: Pulling image \"{host}/busybox:1\"")),
        "{ev}"
    );
    assert!(ev.contains("Pulled: Successfully pulled image"), "{ev}");
    assert_eq!(c.kubectl.ok(&["logs", "ctd"]), "hello from containerd\n");
    assert_eq!(
        c.kubectl.ok(&["exec", "ctd", "--", "cat", "/etc/hostname"]),
        "ctd\n"
    );
    c.kubectl
        .ok(&["delete", "pod", "ctd", "--grace-period=1", "--timeout=60s"]);
    drop(c);
    drop(ctd);
}
