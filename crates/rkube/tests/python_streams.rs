//! The official Python `kubernetes` client's exec and port-forward against a real node
//! (one cluster for the file): stdin in WebSocket text frames, closing stdin over v5,
//! the exit code, and `ports=` through the API. Root and the venv `make test` creates.

mod agent_node;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_node::{root_or_skip, Cluster, IMAGE};

#[test]
fn python_client_exec_and_port_forward() {
    if !root_or_skip("python_client_exec_and_port_forward") {
        return;
    }
    let Some(py) = rkube_testkit::python_client() else {
        eprintln!("SKIPPED python_client_exec_and_port_forward: target/pyvenv is missing; `make test` creates it");
        return;
    };
    let c = Cluster::start(21, &[]);
    let node = c.name.clone();
    c.wait_node_condition("Ready", "True", 60);
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: py}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www; echo hello-pf > /www/index.html; exec httpd -f -p 127.0.0.1:8080 -h /www"]
"#
    ));
    c.kubectl.ok(&[
        "wait",
        "--for=jsonpath={.status.containerStatuses[0].state.running}",
        "pod/py",
        "--timeout=60s",
    ]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/streams_check.py");
    let kubeconfig = c.dir.path().join("kubeconfig.yaml");
    let child = Command::new(py)
        .arg(&script)
        .arg(&kubeconfig)
        .arg("py")
        .env("HOME", c.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The script ends itself after 120 s (SIGALRM); this is the backstop.
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_secs(180))
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    assert!(
        out.status.success(),
        "python client streams failed:\n{}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.server_log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python streams: ok"));
}
