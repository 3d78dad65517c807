//! A single-node cluster for kubelet tests: `rkube server` with its agent on a temp data
//! dir (busybox image imported), its own bridge and pod CIDR, and real kubectl. Dropping
//! it stops the server and removes every pod it ran through a runtime on the same state.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rkube_testkit::images::{busybox_image, write_oci_layout, Compression};
use rkube_testkit::Kubectl;

pub const IMAGE: &str = "example.com/test/busybox:1";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub bridge: String,
    pub child: Option<Child>,
    pub kubectl: Kubectl,
    pub kubelet_port: u16,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    extra: Vec<String>,
}

pub fn root_or_skip(test: &str) -> bool {
    if !rkube_testkit::root_or_skip(test, "the node agent runs containers") {
        return false;
    }
    if Kubectl::new(std::path::Path::new("/dev/null")).is_none() {
        eprintln!("SKIPPED {test}: kubectl is not installed");
        return false;
    }
    true
}

/// Deletes test bridges an earlier, killed run left on this test's pod CIDR: with them,
/// the node's runtime reports the network not ready (the subnet is routed elsewhere).
fn clear_stale_bridges(n: u8, own: &str) {
    let cidr = format!("10.{}.0.0/16", 150 + n);
    let Ok(out) = Command::new("ip")
        .args(["-o", "-4", "route", "show", "root", &cidr])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let dev = words.by_ref().skip_while(|w| *w != "dev").nth(1);
        if let Some(dev) = dev.filter(|d| d.starts_with("rkk") && *d != own) {
            eprintln!("deleting {dev}, a test bridge an earlier run left on {cidr}");
            let _ = Command::new("ip").args(["link", "delete", dev]).status();
        }
    }
}

impl Cluster {
    /// A server with its node agent; `n` keeps concurrent tests' bridges and CIDRs apart.
    pub fn start(n: u8, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        import_image(&data, &dir.path().join("busybox.tar"));
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut c = Cluster {
            kubectl: Kubectl::new(&kubeconfig).expect("kubectl"),
            dir,
            name: format!("node-{n}"),
            bridge: format!("rkk{}-{n}", std::process::id() % 10000),
            child: None,
            kubelet_port: rkube_testkit::free_port(),
            log: Default::default(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        clear_stale_bridges(n, &c.bridge);
        c.run_server(n);
        // The agent registers its Node moments after the API is up; `kubectl wait` on a
        // node that does not exist yet fails at once, so tests start once it does.
        let node = format!("node/{}", c.name);
        c.wait_for(60, "the node to register", || {
            c.kubectl
                .run(&["get", &node], None)
                .status
                .success()
                .then_some(())
        });
        c
    }

    /// Tests that do not test eviction run without hard thresholds: with upstream's
    /// defaults a full disk on the test machine (nodefs.available<10%) would make the
    /// node reject their pods.
    fn default_eviction(&self) -> Vec<&'static str> {
        if self.extra.iter().any(|a| a.starts_with("--eviction-hard")) {
            Vec::new()
        } else {
            vec!["--eviction-hard", "memory.available<0,nodefs.available<0"]
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run_server(&mut self, n: u8) {
        let kubeconfig = self.dir.path().join("kubeconfig.yaml");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rkube"))
            .args(["server", "--data-dir", self.data().to_str().unwrap()])
            .args(["--bind-address", "127.0.0.1", "--https-listen-port", "0"])
            .args(["--write-kubeconfig", kubeconfig.to_str().unwrap()])
            .args(["--node-name", &self.name, "--node-ip", "127.0.0.1"])
            .args(["--kubelet-port", &self.kubelet_port.to_string()])
            .args(["--cluster-cidr", &format!("10.{}.0.0/16", 150 + n)])
            .args(["--pod-bridge", &self.bridge])
            .args(self.default_eviction())
            .args(&self.extra)
            .env("RKUBE_LOG", "info,kube=warn,tower=warn,hyper=warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("API at ") {
                    let _ = tx.send(());
                }
                log.lock().unwrap().push(line);
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the server started");
        self.child = Some(child);
    }

    /// Kills the server (and its agent) with SIGKILL; containers keep running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data dir (a new API port).
    pub fn restart(&mut self, n: u8) {
        self.run_server(n);
    }

    /// The server's log so far (shown when a test fails).
    pub fn server_log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Applies a YAML/JSON manifest.
    pub fn apply(&self, manifest: &str) {
        self.kubectl.ok_with(&["apply", "-f", "-"], Some(manifest));
    }

    /// `kubectl get KIND NAME -o jsonpath=PATH`.
    pub fn jsonpath(&self, what: &str, path: &str) -> String {
        let kind_name: Vec<&str> = what.split_whitespace().collect();
        let mut args = vec!["get"];
        args.extend(kind_name);
        let p = format!("jsonpath={path}");
        args.extend(["-o", &p]);
        self.kubectl.ok(&args)
    }

    /// Waits up to `secs` for this node's condition `type_` to have `status`.
    pub fn wait_node_condition(&self, type_: &str, status: &str, secs: u64) {
        let node = format!("node/{}", self.name);
        let path = format!("{{.status.conditions[?(@.type==\"{type_}\")].status}}");
        self.wait_for(secs, &format!("{type_}={status}"), || {
            (self.jsonpath(&node, &path) == status).then_some(())
        });
    }

    /// Waits up to `secs` for the pod's phase to be `phase`.
    pub fn wait_phase(&self, pod: &str, phase: &str, secs: u64) {
        self.wait_for(secs, &format!("pod {pod} {phase}"), || {
            (self.jsonpath(&format!("pod {pod}"), "{.status.phase}") == phase).then_some(())
        });
    }

    /// Polls `f` until it returns Some, or panics after `secs` with the server log.
    pub fn wait_for<T>(&self, secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let tail: Vec<String> = self
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(60)
                    .cloned()
                    .collect();
                let tail: Vec<String> = tail.into_iter().rev().collect();
                let pods = self.kubectl.run(&["get", "pods", "-A", "-o", "yaml"], None);
                panic!(
                    "timed out waiting for {what}\n--- pods ---\n{}\n--- server log (tail) ---\n{}",
                    String::from_utf8_lossy(&pods.stdout),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Events about a pod as "Reason: message" lines.
    pub fn events(&self, pod: &str) -> String {
        let sel = format!("involvedObject.name={pod}");
        self.kubectl.ok(&[
            "get",
            "events",
            "--field-selector",
            &sel,
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill9();
        remove_pods(&self.data(), &self.bridge, None);
    }
}

/// Removes every pod an agent on `data` left running, through a runtime on the same state
/// (run in network namespace `netns` if given), then the pod bridge.
pub fn remove_pods(data: &std::path::Path, bridge: &str, netns: Option<&str>) {
    let socket = data.parent().unwrap().join("cleanup.sock");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.args([
                format!("--net=/var/run/netns/{ns}").as_str(),
                env!("CARGO_BIN_EXE_rkube"),
            ]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_rkube")),
    };
    let mut rt = cmd
        .args(["runtime", "--data-dir", data.to_str().unwrap()])
        .args(["--socket", socket.to_str().unwrap(), "--bridge", bridge])
        .env("RKUBE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rt_handle = tokio::runtime::Runtime::new().unwrap();
    rt_handle.block_on(async {
        use k8s_cri::v1 as cri;
        let mut client = None;
        for _ in 0..100 {
            if let Ok(ch) = rkube_runtime::cri::connect(&socket).await {
                client = Some(cri::runtime_service_client::RuntimeServiceClient::new(ch));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(mut c) = client else { return };
        let pods = c
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for p in pods {
            let uid = p
                .labels
                .get("io.kubernetes.pod.uid")
                .cloned()
                .unwrap_or_default();
            let _ = c
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: p.id,
                })
                .await;
            for h in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                for q in ["", "burstable/", "besteffort/"] {
                    let _ = std::fs::remove_dir(h.path().join(format!("kubepods/{q}pod{uid}")));
                }
            }
        }
    });
    let _ = rt.kill();
    let _ = rt.wait();
    let mut del = Command::new("ip");
    if let Some(ns) = netns {
        del.args(["-n", ns]);
    }
    let _ = del.args(["link", "del", bridge]).output();
    // tmpfs emptyDirs of pods that were not deleted.
    let pods = data.join("agent/pods");
    for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        let ed = pod.path().join("volumes/kubernetes.io~empty-dir");
        for v in std::fs::read_dir(&ed).into_iter().flatten().flatten() {
            let _ = Command::new("umount").arg("-l").arg(v.path()).output();
        }
    }
    // The runtime's volatile state under /run, emptied by the removals above.
    let _ = std::fs::remove_dir_all(rkube_runtime::Paths::under(data).state);
}

/// Imports the test busybox image into an agent data dir.
pub fn import_image(data: &std::path::Path, tar: &std::path::Path) {
    write_oci_layout(
        &busybox_image("kubelet", Compression::Gzip).unwrap(),
        IMAGE,
        tar,
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
}
