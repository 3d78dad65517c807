//! A node for CRI tests: a data dir with a test-built busybox image imported, an `rkube
//! runtime` process serving CRI on it, and helpers to run pods and read their logs.
//! Shared by the runtime test binaries (each uses a different part).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use rkube_testkit::images::{busybox_image, write_oci_layout, Compression};
use tonic::transport::Channel;

pub const IMAGE: &str = "example.com/test/busybox:1";

pub struct Node {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub bridge: String,
    pub cidr: String,
    pub child: Option<Child>,
    pub rt: tokio::runtime::Runtime,
    pub extra: Vec<String>,
}

impl Node {
    /// A data dir with the busybox image imported, and a runtime serving it. `n` keeps
    /// the bridge and pod CIDR of concurrent tests apart.
    pub fn new(n: u8) -> Node {
        Node::with_args(n, &[])
    }

    /// As `new`, with more `rkube runtime` flags.
    pub fn with_args(n: u8, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let tar = dir.path().join("busybox.tar");
        write_oci_layout(
            &busybox_image("pods", Compression::Gzip).unwrap(),
            IMAGE,
            &tar,
        );
        let out = Command::new(env!("CARGO_BIN_EXE_rkube"))
            .args([
                "images",
                "import",
                tar.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut node = Node {
            socket: dir.path().join("cri.sock"),
            dir,
            bridge: format!("rkt{}-{n}", std::process::id() % 10000),
            cidr: format!("10.199.{}.0/24", n),
            child: None,
            rt: tokio::runtime::Runtime::new().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        node.start();
        let cidr = node.cidr.clone();
        node.rt.block_on(async {
            let mut c = node.client().await;
            c.update_runtime_config(cri::UpdateRuntimeConfigRequest {
                runtime_config: Some(cri::RuntimeConfig {
                    network_config: Some(cri::NetworkConfig { pod_cidr: cidr }),
                }),
            })
            .await
            .unwrap();
        });
        node
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_rkube"))
            .args([
                "runtime",
                "--data-dir",
                self.data().to_str().unwrap(),
                "--socket",
                self.socket.to_str().unwrap(),
                "--bridge",
                &self.bridge,
            ])
            .args(&self.extra)
            .env("RKUBE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    pub async fn client(&self) -> RuntimeServiceClient<Channel> {
        for _ in 0..200 {
            if let Ok(ch) = rkube_runtime::cri::connect(&self.socket).await {
                let mut c = RuntimeServiceClient::new(ch);
                if c.version(cri::VersionRequest::default()).await.is_ok() {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the runtime does not answer on {}", self.socket.display());
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Remove every pod (so the test leaves the host clean even when it fails), then
        // the bridge.
        if self.child.is_some() {
            self.rt.block_on(async {
                let mut c = self.client().await;
                let pods = c
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await
                    .unwrap()
                    .into_inner()
                    .items;
                for p in pods {
                    let _ = c
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
            });
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        // The pod-level cgroups this test named as cgroup parents (the kubelet's job).
        let suffix = format!("-{}", std::process::id());
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for pod in std::fs::read_dir(h.path().join("rkube-test"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if pod.file_name().to_string_lossy().ends_with(&suffix) {
                    let _ = std::fs::remove_dir(pod.path());
                }
            }
        }
        // The runtime's volatile state under /run, emptied by the removals above.
        let _ = std::fs::remove_dir_all(rkube_runtime::Paths::under(&self.data()).state);
    }
}

pub fn sandbox_config(node: &Node, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: node.logs().join(name).display().to_string(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.43.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/rkube-test/{name}-{}", std::process::id()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

/// Creates a container (not started); its ID.
pub async fn create_container(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    c.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(sandbox.clone()),
    })
    .await
    .unwrap()
    .into_inner()
    .container_id
}

pub async fn run_container(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = create_container(c, pod, sandbox, config).await;
    c.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    id
}

pub async fn run_pod(
    c: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
) -> String {
    c.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

pub async fn status(c: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    c.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

pub async fn wait_exit(c: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(c, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} did not exit: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn pod_ip(c: &mut RuntimeServiceClient<Channel>, pod: &str) -> String {
    c.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
    .network
    .unwrap()
    .ip
}

pub fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn retry_http(addr: &str) -> String {
    for _ in 0..100 {
        if let Some(body) = http_get(addr) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing answers on {addr}");
}

pub fn root_or_skip(test: &str) -> bool {
    rkube_testkit::root_or_skip(test, "namespaces, mounts, runc, CNI")
}

/// Lines of a CRI log file as (stream, tag, content).
pub fn log_lines(p: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap_or("");
            assert!(
                ts.ends_with('Z') && ts.contains('T') && ts.contains('.'),
                "timestamp {ts:?}"
            );
            let stream = f.next().unwrap_or("").to_string();
            let tag = f.next().unwrap_or("").to_string();
            (stream, tag, f.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Interfaces on the node's pod bridge (one veth per pod).
pub fn count_veths(bridge: &str) -> usize {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}
