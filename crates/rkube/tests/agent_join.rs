//! A second node: `rkube agent` in a network namespace of its own joins a server (in
//! another namespace, the two linked by a veth pair the test creates) with the join token;
//! wrong tokens are refused with messages that say what is wrong. Root only.

mod agent_node;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_node::{import_image, remove_pods, root_or_skip, IMAGE};
use rkube_testkit::Kubectl;

struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `rkube ARGS` in `ns`; returns it once a stderr line contains `ready`.
fn spawn_in(
    ns: &str,
    args: &[&str],
    ready: &str,
) -> (KillOnDrop, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let mut child = Command::new("nsenter")
        .args([
            format!("--net=/var/run/netns/{ns}").as_str(),
            env!("CARGO_BIN_EXE_rkube"),
        ])
        .args(args)
        .env("RKUBE_LOG", "info,kube=warn,tower=warn,hyper=warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let l2 = log.clone();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(&ready) {
                let _ = tx.send(());
            }
            l2.lock().unwrap().push(line);
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!(
            "{args:?} did not start:\n{}",
            log.lock().unwrap().join("\n")
        );
    }
    (KillOnDrop(child), log)
}

/// `rkube agent` that is expected to fail: its stderr.
fn agent_fails(ns: &str, url: &str, token: &str, data: &std::path::Path) -> String {
    let out = Command::new("nsenter")
        .args([
            format!("--net=/var/run/netns/{ns}").as_str(),
            env!("CARGO_BIN_EXE_rkube"),
            "agent",
        ])
        .args([
            "--server",
            url,
            "--token",
            token,
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(["--node-name", "intruder", "--node-ip", "10.0.0.99"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the agent joined with a bad token");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_node_joins_with_the_token_and_runs_pods() {
    if !root_or_skip("a_second_node_joins_with_the_token_and_runs_pods") {
        return;
    }
    let tag = std::process::id() % 10000;
    let srv_ns = Netns::new(format!("rks{tag}"));
    let agt_ns = Netns::new(format!("rka{tag}"));
    let (vs, va) = (format!("rkvs{tag}"), format!("rkva{tag}"));
    run(&[
        "ip", "link", "add", &vs, "netns", &srv_ns.0, "type", "veth", "peer", "name", &va, "netns",
        &agt_ns.0,
    ]);
    run(&[
        "ip",
        "-n",
        &srv_ns.0,
        "addr",
        "add",
        "10.253.7.1/24",
        "dev",
        &vs,
    ]);
    run(&[
        "ip",
        "-n",
        &agt_ns.0,
        "addr",
        "add",
        "10.253.7.2/24",
        "dev",
        &va,
    ]);
    run(&["ip", "-n", &srv_ns.0, "link", "set", &vs, "up"]);
    run(&["ip", "-n", &agt_ns.0, "link", "set", &va, "up"]);

    let tmp = tempfile::tempdir().unwrap();
    let srv_data = tmp.path().join("server");
    let kubeconfig = tmp.path().join("kubeconfig.yaml");
    let (_server, server_log) = spawn_in(
        &srv_ns.0,
        &[
            "server",
            "--data-dir",
            srv_data.to_str().unwrap(),
            "--https-listen-port",
            "0",
            "--write-kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--disable-agent",
            "--cluster-cidr",
            "10.160.0.0/16",
        ],
        "API at",
    );
    let port = std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server: https://127.0.0.1:")
                .map(String::from)
        })
        .expect("server port");
    let url = format!("https://10.253.7.1:{port}");
    // kubectl runs in the server's namespace.
    let wrapper = tmp.path().join("kubectl-in-ns");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec nsenter --net=/var/run/netns/{} kubectl \"$@\"\n",
            srv_ns.0
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let kubectl = Kubectl::with_binary(wrapper, &kubeconfig);

    let out = Command::new(env!("CARGO_BIN_EXE_rkube"))
        .args(["token", "--data-dir", srv_data.to_str().unwrap()])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        token.starts_with("K10") && token.contains("::server:"),
        "{token:?}"
    );

    // A wrong secret, and a token for another CA, are refused before anything runs.
    let agt_data = tmp.path().join("agent");
    let (hash_part, _) = token.split_once("::").unwrap();
    let err = agent_fails(
        &agt_ns.0,
        &url,
        &format!("{hash_part}::server:wrong"),
        &agt_data,
    );
    assert!(
        err.contains("refused") && err.contains("invalid join token"),
        "{err}"
    );
    let other = format!("K10{}::server:x", "0".repeat(64));
    let err = agent_fails(&agt_ns.0, &url, &other, &agt_data);
    assert!(err.contains("does not match the token"), "{err}");
    let nodes = kubectl.ok(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains("intruder"), "{nodes}");

    // The right token joins.
    import_image(&agt_data, &tmp.path().join("busybox.tar"));
    let bridge = format!("rkjb{tag}");
    // Declared before the agent so that it runs after the agent is killed.
    let cleanup = Cleanup {
        data: agt_data.clone(),
        bridge: bridge.clone(),
        ns: agt_ns.0.clone(),
    };
    let agent = spawn_in(
        &agt_ns.0,
        &[
            "agent",
            "--server",
            &url,
            "--token",
            &token,
            "--data-dir",
            agt_data.to_str().unwrap(),
            "--node-name",
            "worker-1",
            "--node-ip",
            "10.253.7.2",
            "--pod-bridge",
            &bridge,
            "--system-reserved",
            "cpu=500m,memory=256Mi",
            // A full disk on the test machine must not make the node reject the pod.
            "--eviction-hard",
            "memory.available<0,nodefs.available<0",
        ],
        "joined",
    );
    let t0 = Instant::now();
    kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/worker-1",
        "--timeout=60s",
    ]);
    eprintln!("worker-1 Ready {:?} after the agent started", t0.elapsed());
    assert_eq!(
        kubectl.ok(&["get", "node", "worker-1", "-o", "jsonpath={.spec.podCIDR}"]),
        "10.160.0.0/24"
    );
    // Allocatable holds back the reservation.
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(
        kubectl.ok(&[
            "get",
            "node",
            "worker-1",
            "-o",
            "jsonpath={.status.allocatable.cpu}"
        ]),
        format!("{}m", cores * 1000 - 500)
    );
    assert_eq!(
        kubectl.ok(&[
            "get",
            "node",
            "worker-1",
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}"
        ]),
        "10.253.7.2"
    );
    // A pod lands on the only node, and its logs come back through the API server.
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "hello"}},
               "spec": {{"containers": [{{"name": "main", "image": "{IMAGE}", "command": ["sh", "-c", "echo hello from $(hostname); sleep 3600"]}}]}}}}"#
        )),
    );
    let waited = kubectl.run(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/hello",
            "--timeout=60s",
        ],
        None,
    );
    if !waited.status.success() {
        let pod = kubectl.run(&["get", "pod", "hello", "-o", "yaml"], None);
        panic!(
            "pod hello not Ready:\n{}\n--- agent log ---\n{}",
            String::from_utf8_lossy(&pod.stdout),
            agent.1.lock().unwrap().join("\n")
        );
    }
    assert_eq!(
        kubectl.ok(&["get", "pod", "hello", "-o", "jsonpath={.spec.nodeName}"]),
        "worker-1"
    );
    let logs = kubectl.ok(&["logs", "hello"]);
    assert_eq!(
        logs,
        "hello from hello\n",
        "server log:\n{}",
        server_log.lock().unwrap().join("\n")
    );
    let out = kubectl.ok(&["exec", "hello", "--", "cat", "/etc/hostname"]);
    assert_eq!(out, "hello\n");
    drop(agent);
    drop(cleanup);
}

struct Cleanup {
    data: std::path::PathBuf,
    bridge: String,
    ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_pods(&self.data, &self.bridge, Some(&self.ns));
    }
}
