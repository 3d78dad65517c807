//! The kubelet end to end: `rkube server` with its node agent, driven by real kubectl.
//! Root only (containers); CI runs as root.

mod agent_node;

use agent_node::{root_or_skip, Cluster, IMAGE};

/// The pod's log file for one container instance, read on the node.
fn log_file(c: &Cluster, ns: &str, pod: &str, container: &str, attempt: u32) -> String {
    let uid = c.jsonpath(&format!("pod {pod} -n {ns}"), "{.metadata.uid}");
    let p = c.data().join(format!(
        "agent/logs/pods/{ns}_{pod}_{uid}/{container}/{attempt}.log"
    ));
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn node_turns_ready_and_a_pod_runs_with_init_containers_env_and_volumes() {
    if !root_or_skip("node_turns_ready_and_a_pod_runs_with_init_containers_env_and_volumes") {
        return;
    }
    let c = Cluster::start(1, &["--pod-max-pids", "64"]);
    let node = format!("node/{}", c.name);
    c.kubectl
        .ok(&["wait", "--for=condition=Ready", &node, "--timeout=60s"]);
    assert_eq!(c.jsonpath(&node, "{.spec.podCIDR}"), "10.151.0.0/24");
    assert_eq!(c.jsonpath(&node, "{.status.allocatable.pods}"), "110");
    assert_eq!(
        c.jsonpath(&node, "{.status.nodeInfo.operatingSystem}"),
        "linux"
    );
    let lease = c.jsonpath(
        &format!("lease {} -n kube-node-lease", c.name),
        "{.spec.holderIdentity}",
    );
    assert_eq!(lease, c.name);

    c.apply(
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}}"#,
    );
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web, tier: front}}
spec:
  nodeName: {node}
  initContainers:
  - name: first
    image: {IMAGE}
    command: ["sh", "-c", "echo one > /work/order"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  - name: second
    image: {IMAGE}
    command: ["sh", "-c", "echo two >> /work/order"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: app
    image: {IMAGE}
    command: ["sh", "-c"]
    args:
    - |
      cat /work/order
      echo "pod=$POD_NAME ns=$POD_NS ip=$POD_IP mem=$MEM_LIMIT greet=$GREETING expanded=$(GREETING)-x"
      cat /etc/info/labels; echo
      sleep 2; touch /work/ready
      while true; do echo "cfg=$(cat /etc/cfg/greeting)"; sleep 0.5; done
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: MEM_LIMIT, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}}}
    resources:
      limits: {{memory: 64Mi}}
    readinessProbe:
      exec: {{command: ["test", "-f", "/work/ready"]}}
      periodSeconds: 1
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: cfg, mountPath: /etc/cfg}}
    - {{name: info, mountPath: /etc/info}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: cfg}}}}
  - name: info
    downwardAPI:
      items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]
"#,
        node = c.name
    ));
    // Running but not yet ready: the readiness probe waits for /work/ready.
    c.wait_phase("web", "Running", 60);
    let ready = c.jsonpath(
        "pod web",
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    let log = log_file(&c, "default", "web", "app", 0);
    assert_eq!(ready, "False", "ready before the probe passed; log: {log}");
    c.kubectl
        .ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"]);

    let ip = c.jsonpath("pod web", "{.status.podIP}");
    assert!(ip.starts_with("10.151.0."), "pod IP {ip:?}");
    assert_eq!(c.jsonpath("pod web", "{.status.hostIP}"), "127.0.0.1");
    assert_eq!(c.jsonpath("pod web", "{.status.qosClass}"), "Burstable");
    assert_eq!(
        c.jsonpath(
            "pod web",
            "{.status.initContainerStatuses[*].state.terminated.reason}"
        ),
        "Completed Completed"
    );
    let cid = c.jsonpath("pod web", "{.status.containerStatuses[0].containerID}");
    assert!(cid.starts_with("rkube://"), "{cid}");
    let log = log_file(&c, "default", "web", "app", 0);
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
        .collect();
    assert_eq!(
        &lines[..2],
        &["one", "two"],
        "init containers ran in order: {log}"
    );
    assert_eq!(
        lines[2],
        format!("pod=web ns=default ip={ip} mem=64 greet=hello expanded=hello-x"),
        "{log}"
    );
    assert!(
        lines.contains(&"app=\"web\"") && lines.contains(&"tier=\"front\""),
        "{log}"
    );
    assert!(lines.contains(&"cfg=hello"), "{log}");

    // A configMap edit reaches the running pod.
    c.kubectl.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ]);
    c.wait_for(30, "the configMap update in the pod", || {
        log_file(&c, "default", "web", "app", 0)
            .contains("cfg=bonjour")
            .then_some(())
    });
    let events = c.events("web");
    for want in [
        "Scheduled",
        "Pulled: Container image",
        "Created: Created container: app",
        "Started: Started container app",
    ] {
        if want == "Scheduled" {
            continue; // bound by nodeName, not by the scheduler
        }
        assert!(
            events.contains(want),
            "missing {want:?} in events:\n{events}"
        );
    }
    // kubectl's own view of the node and pod.
    let nodes = c.kubectl.ok(&["get", "nodes"]);
    assert!(
        nodes.contains(&c.name) && nodes.contains("Ready"),
        "{nodes}"
    );
    let pods = c.kubectl.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        pods.contains("1/1") && pods.contains("Running") && pods.contains(&ip),
        "{pods}"
    );

    // An image pulled from a registry on loopback (IfNotPresent: not there, so pulled).
    let reg = rkube_testkit::images::Registry::start(false).unwrap();
    let img = rkube_testkit::images::busybox_image(
        "pulled-marker",
        rkube_testkit::images::Compression::Gzip,
    )
    .unwrap();
    reg.push("busybox", "pulled", &img).unwrap();
    let image = format!("{}/busybox:pulled", reg.host());
    c.apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "pulled"}},
           "spec": {{"containers": [{{"name": "main", "image": "{image}", "command": ["sh", "-c", "cat /hello.txt; sleep 3600"]}}]}}}}"#
    ));
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/pulled",
        "--timeout=60s",
    ]);
    assert_eq!(c.kubectl.ok(&["logs", "pulled"]), "pulled-marker\n");
    let ev = c.events("pulled");
    assert!(
        ev.contains(&format!("Pulling: Pulling image \"{image}\"")),
        "{ev}"
    );
    assert!(
        ev.contains(&format!(
            "Pulled: Successfully pulled image \"{image}\" in "
        )),
        "{ev}"
    );
    // The node reports its images (names and sizes) for the scheduler's ImageLocality.
    let node_name = c.name.clone();
    c.wait_for(30, "the pulled image in the node's status.images", || {
        let names = c.jsonpath(&format!("node {node_name}"), "{.status.images[*].names}");
        let sizes = c.jsonpath(
            &format!("node {node_name}"),
            "{.status.images[*].sizeBytes}",
        );
        (names.contains(&image)
            && sizes
                .split_whitespace()
                .all(|s| s.parse::<u64>().is_ok_and(|n| n > 0)))
        .then_some(())
    });
    // A Guaranteed pod (its OOM score of -997 is clamped where CAP_SYS_RESOURCE is withheld).
    c.apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "exact"}},
           "spec": {{"containers": [{{"name": "main", "image": "{IMAGE}", "command": ["sleep", "3600"],
             "resources": {{"limits": {{"cpu": "100m", "memory": "32Mi"}}}}}}]}}}}"#
    ));
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/exact",
        "--timeout=60s",
    ]);
    assert_eq!(c.jsonpath("pod exact", "{.status.qosClass}"), "Guaranteed");
    // Its pod-level cgroup holds the pod's limits (cgroup v1 here), and the container's
    // own cgroup is inside it.
    let uid = c.jsonpath("pod exact", "{.metadata.uid}");
    let memory = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory/kubepods/pod{uid}"));
    if memory.is_dir() {
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .trim()
                .to_string()
        };
        assert_eq!(
            read(memory.join("memory.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        let cpu = std::path::PathBuf::from(format!("/sys/fs/cgroup/cpu/kubepods/pod{uid}"));
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "10000");
        assert_eq!(read(cpu.join("cpu.shares")), "102");
        let pids = format!("/sys/fs/cgroup/pids/kubepods/pod{uid}/pids.max");
        assert_eq!(read(pids.into()), "64", "--pod-max-pids");
        let nested = std::fs::read_dir(&memory)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count();
        assert!(nested >= 1, "the container's cgroup is in the pod's");
        assert_eq!(
            read(std::path::PathBuf::from(
                "/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares"
            )),
            "2"
        );
        // Node allocatable is enforced on /kubepods: the node's CPU as shares, its memory
        // (nothing reserved here) as the limit. /kubepods is machine-wide: the tests that
        // reserve resources (agent_join) run in another test binary, never alongside.
        let node = c.jsonpath("nodes", "{.items[0].status.capacity}");
        let capacity: serde_json::Value = serde_json::from_str(&node).unwrap();
        let cpus: i64 = capacity["cpu"].as_str().unwrap().parse().unwrap();
        let mem_ki: i64 = capacity["memory"]
            .as_str()
            .unwrap()
            .trim_end_matches("Ki")
            .parse()
            .unwrap();
        let kubepods = |f: &str| read(std::path::PathBuf::from(format!("/sys/fs/cgroup/{f}")));
        assert_eq!(
            kubepods("cpu/kubepods/cpu.shares"),
            (cpus * 1024).to_string()
        );
        assert_eq!(
            kubepods("memory/kubepods/memory.limit_in_bytes"),
            (mem_ki * 1024).to_string()
        );
    } else {
        eprintln!("no cgroup v1 memory hierarchy: the pod cgroup check is skipped");
    }

    // hostNetwork: the pod shares the node's network; its IP is the node's, its server is
    // reachable on the host, and a readiness probe reaches it there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hostnet}}
spec:
  nodeName: {}
  hostNetwork: true
  containers:
  - name: web
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www; echo on-the-host > /www/index.html; exec httpd -f -p 127.0.0.1:{port} -h /www"]
    readinessProbe:
      tcpSocket: {{port: {port}}}
      periodSeconds: 1
"#,
        c.name
    ));
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/hostnet",
        "--timeout=60s",
    ]);
    assert_eq!(c.jsonpath("pod hostnet", "{.status.podIP}"), "127.0.0.1");
    assert_eq!(
        c.jsonpath("pod hostnet", "{.status.podIP}"),
        c.jsonpath("pod hostnet", "{.status.hostIP}")
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut conn, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut conn, &mut reply).unwrap();
    assert!(reply.ends_with("on-the-host\n"), "{reply}");
}

#[test]
fn restarts_probes_oom_and_graceful_deletion() {
    if !root_or_skip("restarts_probes_oom_and_graceful_deletion") {
        return;
    }
    let c = Cluster::start(2, &[]);
    let node = c.name.clone();
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{node}"),
        "--timeout=60s",
    ]);
    let host = c.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let pod = |name: &str, policy: &str, extra: &str, script: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: {IMAGE}
    command: ["sh", "-c", {script:?}]
    volumeMounts: [{{name: host, mountPath: /host}}]
{extra}
  volumes:
  - {{name: host, hostPath: {{path: {host:?}, type: Directory}}}}
"#,
            host = host.display().to_string()
        )
    };

    // Limits the kubelet ends a pod for: its active deadline, and an emptyDir over its
    // sizeLimit (an eviction).
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: deadline}}
spec:
  nodeName: {node}
  activeDeadlineSeconds: 2
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {IMAGE}, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: filler}}
spec:
  nodeName: {node}
  containers:
  - name: main
    image: {IMAGE}
    command: ["sh", "-c", "dd if=/dev/zero of=/scratch/f bs=1024 count=3072; sleep 3600"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - {{name: scratch, emptyDir: {{sizeLimit: 1Mi}}}}
"#
    ));
    c.apply(&pod("crash", "Always", "", "echo crashing; exit 3"));
    c.apply(&pod(
        "live",
        "Always",
        "    livenessProbe:\n      exec: {command: [test, -f, /tmp/alive]}\n      periodSeconds: 1\n      failureThreshold: 2",
        "touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 3600",
    ));
    c.apply(&pod(
        "once",
        "OnFailure",
        "",
        "test -f /host/second && exit 0; touch /host/second; exit 1",
    ));
    c.apply(&pod("never", "Never", "", "echo bad; exit 1"));
    c.apply(&pod(
        "hog",
        "Never",
        "    resources: {limits: {memory: 20Mi}}",
        "echo start; exec dd if=/dev/zero of=/dev/null bs=100M count=1",
    ));
    c.apply(&pod(
        "graceful",
        "Always",
        "    lifecycle: {preStop: {exec: {command: [sh, -c, 'echo prestop >> /host/graceful']}}}",
        "trap 'echo term >> /host/graceful; sleep 1; exit 0' TERM; echo up > /host/up; while true; do sleep 0.2; done",
    ));

    // Crash loop: restarts with back-off, the last exit kept.
    c.wait_for(60, "crash to restart", || {
        let n: u32 = c
            .jsonpath("pod crash", "{.status.containerStatuses[0].restartCount}")
            .parse()
            .ok()?;
        (n >= 1).then_some(())
    });
    c.wait_for(60, "crash to be in CrashLoopBackOff", || {
        (c.jsonpath(
            "pod crash",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "CrashLoopBackOff")
            .then_some(())
    });
    assert_eq!(
        c.jsonpath(
            "pod crash",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "3"
    );
    assert_eq!(
        c.jsonpath(
            "pod crash",
            "{.status.containerStatuses[0].lastState.terminated.reason}"
        ),
        "Error"
    );
    assert_eq!(c.jsonpath("pod crash", "{.status.phase}"), "Running");
    let ev = c.events("crash");
    assert!(
        ev.contains("BackOff: Back-off restarting failed container main in pod crash_default("),
        "{ev}"
    );

    // Liveness: the failing probe restarts the container.
    c.wait_for(60, "live to be restarted by its liveness probe", || {
        let n: u32 = c
            .jsonpath("pod live", "{.status.containerStatuses[0].restartCount}")
            .parse()
            .ok()?;
        (n >= 1).then_some(())
    });
    let ev = c.events("live");
    assert!(ev.contains("Unhealthy: Liveness probe failed"), "{ev}");
    assert!(
        ev.contains("Killing: Container main failed liveness probe, will be restarted"),
        "{ev}"
    );

    // OnFailure restarts until success; Never fails for good.
    c.wait_phase("once", "Succeeded", 60);
    assert_eq!(
        c.jsonpath("pod once", "{.status.containerStatuses[0].restartCount}"),
        "1"
    );
    c.wait_phase("never", "Failed", 60);
    assert_eq!(
        c.jsonpath(
            "pod never",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "1"
    );
    assert_eq!(
        c.jsonpath("pod never", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );

    // The memory hog is OOM-killed.
    c.wait_phase("hog", "Failed", 60);
    assert_eq!(
        c.jsonpath(
            "pod hog",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "OOMKilled"
    );
    assert_eq!(
        c.jsonpath(
            "pod hog",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "137"
    );

    // The deadline: Failed with upstream's reason; the object stays.
    c.wait_phase("deadline", "Failed", 60);
    assert_eq!(
        c.jsonpath("pod deadline", "{.status.reason}: {.status.message}"),
        "DeadlineExceeded: Pod was active on the node longer than the specified deadline"
    );
    let stopped = c.jsonpath(
        "pod deadline",
        "{.status.containerStatuses[0].state.terminated.exitCode}",
    );
    assert!(!stopped.is_empty(), "its container was stopped");
    // The emptyDir over its limit: evicted, with the DisruptionTarget condition and event.
    c.wait_phase("filler", "Failed", 60);
    let evicted = "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ";
    assert_eq!(c.jsonpath("pod filler", "{.status.reason}"), "Evicted");
    assert_eq!(c.jsonpath("pod filler", "{.status.message}"), evicted);
    assert_eq!(
        c.jsonpath(
            "pod filler",
            "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"
        ),
        "TerminationByKubelet"
    );
    let events = c.kubectl.ok(&[
        "get",
        "events",
        "--field-selector=involvedObject.name=filler,reason=Evicted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("exceeds the limit"), "{events}");

    // Graceful deletion: preStop, then SIGTERM, then the object goes, well within the grace.
    c.wait_for(60, "graceful to run", || {
        host.join("up").exists().then_some(())
    });
    let t0 = std::time::Instant::now();
    c.kubectl
        .ok(&["delete", "pod", "graceful", "--timeout=60s"]);
    let took = t0.elapsed();
    let trail = std::fs::read_to_string(host.join("graceful")).unwrap_or_default();
    assert_eq!(trail, "prestop\nterm\n", "preStop ran before SIGTERM");
    assert!(
        took < std::time::Duration::from_secs(20),
        "deletion took {took:?}, longer than the grace period"
    );
    let ev = c.events("graceful");
    assert!(ev.contains("Killing: Stopping container main"), "{ev}");
    let gone = c.kubectl.run(&["get", "pod", "graceful"], None);
    assert!(!gone.status.success());
}

#[test]
fn logs_exec_attach_and_cp_through_kubectl() {
    if !root_or_skip("logs_exec_attach_and_cp_through_kubectl") {
        return;
    }
    let c = Cluster::start(3, &[]);
    let node = c.name.clone();
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{node}"),
        "--timeout=60s",
    ]);
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: talk}}
spec:
  nodeName: {node}
  containers:
  - name: main
    image: {IMAGE}
    command: ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]
  - name: side
    image: {IMAGE}
    command: ["sh", "-c", "echo side-started; sleep 1; exit 1"]
  - name: web
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www; echo hello-pf > /www/index.html; exec httpd -f -p 127.0.0.1:8080 -h /www"]
  - name: chat
    image: {IMAGE}
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "read x; echo got-$x; sleep 3600"]
"#
    ));
    c.kubectl.ok(&[
        "wait",
        "--for=jsonpath={.status.containerStatuses[0].state.running}",
        "pod/talk",
        "--timeout=60s",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // Logs: the API wants a container named when there are two (kubectl picks the first).
    let err = c
        .kubectl
        .fails(&["get", "--raw", "/api/v1/namespaces/default/pods/talk/log"]);
    assert!(
        err.contains(
            "a container name must be specified for pod talk, choose one of: [main side web chat]"
        ),
        "{err}"
    );
    let tail = c.kubectl.ok(&["logs", "talk", "-c", "main", "--tail=2"]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    assert!(lines.iter().all(|l| l.starts_with("line ")), "{tail}");
    let first = c
        .kubectl
        .ok(&["logs", "talk", "-c", "main", "--limit-bytes=7"]);
    assert_eq!(first, "line 0\n");
    let ts = c
        .kubectl
        .ok(&["logs", "talk", "-c", "main", "--timestamps", "--tail=1"]);
    let (stamp, rest) = ts.trim_end().split_once(' ').unwrap();
    assert!(
        stamp.len() >= 20
            && stamp.ends_with('Z')
            && stamp.contains('T')
            && rest.starts_with("line "),
        "{ts}"
    );
    let recent = c.kubectl.ok(&["logs", "talk", "-c", "main", "--since=1s"]);
    let n = recent.lines().count();
    assert!((2..=8).contains(&n), "--since=1s gave {n} lines");
    // Follow: new lines keep coming.
    let mut follow = c
        .kubectl
        .spawn(&["logs", "-f", "talk", "-c", "main", "--tail=1"]);
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut reader, &mut l).unwrap();
        seen.push(l.trim().to_string());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let nums: Vec<u32> = seen
        .iter()
        .map(|l| l.trim_start_matches("line ").parse().unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    // --previous after the side container restarted.
    c.wait_for(60, "side to restart", || {
        let n: u32 = c
            .jsonpath("pod talk", "{.status.containerStatuses[1].restartCount}")
            .parse()
            .ok()?;
        (n >= 1).then_some(())
    });
    let prev = c.kubectl.ok(&["logs", "talk", "-c", "side", "--previous"]);
    assert_eq!(prev, "side-started\n");
    let err = c.kubectl.fails(&["logs", "talk", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod talk"),
        "{err}"
    );

    // exec with stdin; the exit code comes back.
    let out = c.kubectl.run(
        &[
            "exec",
            "-i",
            "talk",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "read x; echo got-$x; echo oops >&2; exit 7",
        ],
        Some("hello\n"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got-hello\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c
        .kubectl
        .ok(&["exec", "talk", "-c", "main", "--", "cat", "/etc/hostname"]);
    assert_eq!(out, "talk\n");
    // The same over SPDY (kubectl's fallback when WebSockets are off).
    let kc = c.dir.path().join("kubeconfig.yaml");
    let mut child = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            kc.to_str().unwrap(),
            "exec",
            "-i",
            "talk",
            "-c",
            "main",
            "--",
        ])
        .args(["sh", "-c", "read x; echo spdy-$x; echo err >&2; exit 5"])
        .env("HOME", c.dir.path())
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "spdy-hi\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    assert_eq!(out.status.code(), Some(5));
    // attach: stdin reaches the container's process, its output comes back.
    let mut child = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            kc.to_str().unwrap(),
            "attach",
            "-i",
            "talk",
            "-c",
            "chat",
        ])
        .env("HOME", c.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"attached\n").unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut got = String::new();
    std::io::BufRead::read_line(&mut reader, &mut got).unwrap();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, "got-attached\n");
    // exec -it under a pseudo-terminal (script(1) gives kubectl one).
    let kc = c.dir.path().join("kubeconfig.yaml");
    let cmd = format!(
        "kubectl --kubeconfig {} exec -it talk -c main -- sh",
        kc.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("HOME", c.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        stdin.write_all(b"tty; echo cols=$(stty size)\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        stdin.write_all(b"exit 3\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "a terminal inside: {text}");
    assert_eq!(out.status.code(), Some(3), "{text}");

    // kubectl cp both ways (tar through exec).
    let local = c.dir.path().join("payload.txt");
    std::fs::write(&local, "payload-123\n").unwrap();
    c.kubectl.ok(&[
        "cp",
        local.to_str().unwrap(),
        "talk:/tmp/payload.txt",
        "-c",
        "main",
    ]);
    let inside = c.kubectl.ok(&[
        "exec",
        "talk",
        "-c",
        "main",
        "--",
        "cat",
        "/tmp/payload.txt",
    ]);
    assert_eq!(inside, "payload-123\n");
    let back = c.dir.path().join("back.txt");
    c.kubectl.ok(&[
        "cp",
        "talk:/tmp/payload.txt",
        back.to_str().unwrap(),
        "-c",
        "main",
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "payload-123\n");

    // port-forward to a server that listens on localhost inside the pod, fetched with curl.
    let mut pf = c.kubectl.spawn(&["port-forward", "pod/talk", ":8080"]);
    let mut reader = std::io::BufReader::new(pf.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no local port in {line:?}"))
        .to_string();
    for _ in 0..3 {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:{port}/"),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello-pf\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = pf.kill();
    let _ = pf.wait();
    // The same over plain SPDY (kubectl's fallback when WebSockets are off).
    let kc = c.dir.path().join("kubeconfig.yaml");
    let mut pf = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            kc.to_str().unwrap(),
            "port-forward",
            "pod/talk",
            ":8080",
        ])
        .env("HOME", c.dir.path())
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(pf.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("0")
        .to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    let _ = pf.kill();
    let _ = pf.wait();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-pf\n",
        "plain SPDY: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_killed_agent_adopts_its_running_pods() {
    if !root_or_skip("a_killed_agent_adopts_its_running_pods") {
        return;
    }
    let mut c = Cluster::start(4, &[]);
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{}", c.name),
        "--timeout=60s",
    ]);
    // No nodeName: the scheduler places them on the one real node.
    for (name, script) in [
        ("keep", "echo started; sleep 3600"),
        ("flaky", "sleep 1; exit 1"),
    ] {
        c.apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
                "spec": {{"containers": [{{"name": "main", "image": "{IMAGE}", "command": ["sh", "-c", "{script}"]}}]}}}}"#
        ));
    }
    c.kubectl
        .ok(&["wait", "--for=condition=Ready", "pod/keep", "--timeout=60s"]);
    assert_eq!(c.jsonpath("pod keep", "{.spec.nodeName}"), c.name);
    let ev = c.events("keep");
    assert!(
        ev.contains(&format!(
            "Scheduled: Successfully assigned default/keep to {}",
            c.name
        )),
        "{ev}"
    );
    c.wait_for(60, "flaky to restart", || {
        let n: u32 = c
            .jsonpath("pod flaky", "{.status.containerStatuses[0].restartCount}")
            .parse()
            .ok()?;
        (n >= 1).then_some(())
    });
    let id = c.jsonpath("pod keep", "{.status.containerStatuses[0].containerID}");
    let flaky_before: u32 = c
        .jsonpath("pod flaky", "{.status.containerStatuses[0].restartCount}")
        .parse()
        .unwrap();

    c.kill9();
    std::thread::sleep(std::time::Duration::from_secs(1));
    c.restart(4);
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{}", c.name),
        "--timeout=60s",
    ]);
    // Give the agent time to look at everything again.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        c.jsonpath("pod keep", "{.status.containerStatuses[0].containerID}"),
        id,
        "the same container"
    );
    assert_eq!(
        c.jsonpath("pod keep", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    assert_eq!(c.jsonpath("pod keep", "{.status.phase}"), "Running");
    assert_eq!(
        c.jsonpath(
            "pod keep",
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ),
        "True"
    );
    let flaky_after: u32 = c
        .jsonpath("pod flaky", "{.status.containerStatuses[0].restartCount}")
        .parse()
        .unwrap();
    assert!(
        flaky_after >= flaky_before,
        "restart count {flaky_before} went back to {flaky_after}"
    );
    // Still one instance of each container, and the logs still there.
    let logs = c.kubectl.ok(&["logs", "keep"]);
    assert_eq!(logs, "started\n");
}

#[test]
fn unused_images_are_garbage_collected() {
    if !root_or_skip("unused_images_are_garbage_collected") {
        return;
    }
    // Thresholds that always apply (the disk is more than 1% full), checked every second;
    // the minimum age keeps the node's image until the first pod uses it.
    let c = Cluster::start(
        7,
        &[
            "--image-gc-high-threshold",
            "1",
            "--image-gc-low-threshold",
            "0",
            "--minimum-image-ttl-duration",
            "20s",
            "--image-gc-period",
            "1s",
        ],
    );
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{}", c.name),
        "--timeout=60s",
    ]);
    let reg = rkube_testkit::images::Registry::start(false).unwrap();
    let img =
        rkube_testkit::images::busybox_image("extra", rkube_testkit::images::Compression::Gzip)
            .unwrap();
    reg.push("busybox", "extra", &img).unwrap();
    let extra = format!("{}/busybox:extra", reg.host());
    c.apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "keeper"}},
           "spec": {{"containers": [{{"name": "main", "image": "{IMAGE}", "command": ["sleep", "3600"]}}]}}}}"#
    ));
    c.apply(&format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "once"}},
           "spec": {{"restartPolicy": "Never", "containers": [{{"name": "main", "image": "{extra}", "command": ["true"]}}]}}}}"#
    ));
    c.kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/keeper",
        "--timeout=60s",
    ]);
    c.wait_phase("once", "Succeeded", 60);
    // Whether `rkube images list` shows a busybox image with this tag.
    let has = |list: &str, tag: &str| {
        list.lines()
            .any(|l| l.contains("busybox") && l.split_whitespace().nth(1) == Some(tag))
    };
    let images = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rkube"))
            .args(["images", "list", "--data-dir", c.data().to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The finished pod's container still refers to its image: kept.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(has(&images(), "extra"), "{}", images());
    c.kubectl.ok(&["delete", "pod", "once", "--timeout=60s"]);
    c.wait_for(
        60,
        "the unused image to be collected, the used one kept",
        || {
            let list = images();
            (!has(&list, "extra") && has(&list, "1")).then_some(())
        },
    );
}

/// Node-pressure eviction and admission: a memory threshold above what the machine has
/// puts the node under MemoryPressure and leaves no allocatable memory. A BestEffort pod
/// and a pod requesting memory are refused on arrival; a pod requesting only CPU is
/// admitted, and the eviction manager evicts it with upstream's message.
#[test]
fn memory_pressure_evicts_pods() {
    if !root_or_skip("memory_pressure_evicts_pods") {
        return;
    }
    let mut c = Cluster::start(
        8,
        &[
            "--eviction-hard",
            "memory.available<100Ti,nodefs.available<1Gi",
        ],
    );
    let node = format!("node/{}", c.name);
    c.wait_node_condition("MemoryPressure", "True", 60);
    assert_eq!(
        c.jsonpath(&node, "{.status.allocatable.memory}"),
        "0Ki",
        "allocatable keeps the threshold back"
    );
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: victim}}
spec:
  nodeName: {name}
  containers:
  - {{name: main, image: {IMAGE}, command: [sleep, "3600"], resources: {{requests: {{cpu: 10m}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: besteffort}}
spec:
  nodeName: {name}
  containers:
  - {{name: main, image: {IMAGE}, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hungry}}
spec:
  nodeName: {name}
  containers:
  - {{name: main, image: {IMAGE}, command: [sleep, "3600"], resources: {{requests: {{memory: 1Mi}}}}}}
"#,
        name = c.name
    ));
    c.wait_for(60, "the refusals", || {
        let done = ["besteffort", "hungry"]
            .iter()
            .all(|p| c.jsonpath(&format!("pod {p}"), "{.status.phase}") == "Failed");
        done.then_some(())
    });
    assert_eq!(
        c.jsonpath("pod besteffort", "{.status.reason}: {.status.message}"),
        "Evicted: Pod was rejected: The node had condition: [MemoryPressure]. "
    );
    assert_eq!(
        c.jsonpath("pod hungry", "{.status.reason}: {.status.message}"),
        "OutOfmemory: Pod was rejected: Node didn't have enough resource: memory, requested: 1048576, used: 0, capacity: 0"
    );
    let events = c.kubectl.ok(&[
        "get",
        "events",
        "--field-selector=involvedObject.name=hungry,reason=OutOfmemory",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.starts_with("Node didn't have enough resource: memory"),
        "{events}"
    );
    c.wait_phase("victim", "Failed", 60);
    assert_eq!(c.jsonpath("pod victim", "{.status.reason}"), "Evicted");
    let msg = c.jsonpath("pod victim", "{.status.message}");
    assert!(
        msg.starts_with(
            "The node was low on resource: memory. Threshold quantity: 100Ti, available: "
        ),
        "{msg}"
    );
    // Its container asked for no memory, so any working set is over the request.
    assert!(msg.contains(". Container main was using "), "{msg}");
    assert!(msg.ends_with(", which exceeds its request of 0. "), "{msg}");
    let disruption =
        "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason} {.status.reason}";
    assert_eq!(
        c.jsonpath("pod victim", disruption),
        "TerminationByKubelet Evicted"
    );
    // A restarted agent keeps saying why the pod ended.
    let before = c.jsonpath("pod victim", "{.status.conditions}");
    c.kill9();
    c.restart(8);
    c.wait_for(60, "the agent's next status writes", || {
        let other = c.jsonpath("pod hungry", "{.status.conditions}");
        let ready = c.jsonpath(&node, "{.status.conditions[?(@.type==\"Ready\")].status}");
        (ready == "True" && !other.is_empty()).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(
        c.jsonpath("pod victim", disruption),
        "TerminationByKubelet Evicted"
    );
    assert_eq!(c.jsonpath("pod victim", "{.status.conditions}"), before);
}

/// Bytes free for unprivileged use on the filesystem holding `dir` (what the kubelet
/// measures as nodefs.available).
fn available_bytes(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn ephemeral_storage_limits_and_disk_pressure_evict_pods() {
    if !root_or_skip("ephemeral_storage_limits_and_disk_pressure_evict_pods") {
        return;
    }
    // The node comes under DiskPressure once 384Mi more of its disk are taken.
    let threshold = available_bytes(&std::env::temp_dir()) - (384 << 20);
    let eviction = format!("memory.available<100Mi,nodefs.available<{threshold}");
    let c = Cluster::start(
        9,
        &[
            "--eviction-hard",
            &eviction,
            // DiskPressure ends as soon as the disk recovers (upstream keeps it 5 min).
            "--eviction-pressure-transition-period",
            "0s",
        ],
    );
    c.wait_node_condition("Ready", "True", 60);
    c.wait_node_condition("DiskPressure", "False", 1);
    // A container over its own ephemeral-storage limit is evicted (the pod's total,
    // 101Mi, is checked first and holds).
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: limited}}
spec:
  nodeName: {name}
  containers:
  - name: fill
    image: {IMAGE}
    command: [sh, -c, "dd if=/dev/zero of=/fill bs=1M count=4 && sleep 3600"]
    resources: {{limits: {{ephemeral-storage: 1Mi}}}}
  - name: roomy
    image: {IMAGE}
    command: [sleep, "3600"]
    resources: {{limits: {{ephemeral-storage: 100Mi}}}}
"#,
        name = c.name
    ));
    c.wait_phase("limited", "Failed", 60);
    assert_eq!(
        c.jsonpath("pod limited", "{.status.reason}: {.status.message}"),
        "Evicted: Container fill exceeded its local ephemeral storage limit \"1Mi\". "
    );
    assert_eq!(
        c.jsonpath(
            "pod limited",
            "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"
        ),
        "TerminationByKubelet"
    );
    // A pod that fills the disk past the threshold: DiskPressure, and it is evicted (no
    // image is old and unused enough to make room instead).
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: writer}}
spec:
  nodeName: {name}
  containers:
  - name: writer
    image: {IMAGE}
    command: [sh, -c, "dd if=/dev/zero of=/fill bs=1M count=768 && sleep 3600"]
"#,
        name = c.name
    ));
    c.wait_phase("writer", "Failed", 90);
    assert_eq!(c.jsonpath("pod writer", "{.status.reason}"), "Evicted");
    let msg = c.jsonpath("pod writer", "{.status.message}");
    let expected = format!(
        "The node was low on resource: ephemeral-storage. Threshold quantity: {threshold}, available: "
    );
    assert!(msg.starts_with(&expected), "{msg}");
    assert!(msg.contains("Container writer was using "), "{msg}");
    assert!(msg.ends_with(", which exceeds its request of 0. "), "{msg}");
    c.wait_node_condition("DiskPressure", "True", 30);
    // Under DiskPressure every new pod is refused.
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: late}}
spec:
  nodeName: {name}
  containers:
  - {{name: main, image: {IMAGE}, command: [sleep, "3600"], resources: {{requests: {{cpu: 10m}}}}}}
"#,
        name = c.name
    ));
    c.wait_phase("late", "Failed", 60);
    assert_eq!(
        c.jsonpath("pod late", "{.status.reason}: {.status.message}"),
        "Evicted: Pod was rejected: The node had condition: [DiskPressure]. "
    );
    // The evicted pod gone, its container's layer goes with it and the pressure ends.
    c.kubectl
        .ok(&["delete", "pod", "writer", "late", "limited"]);
    c.wait_node_condition("DiskPressure", "False", 90);
}

#[test]
fn soft_memory_threshold_evicts_after_its_grace_period() {
    if !root_or_skip("soft_memory_threshold_evicts_after_its_grace_period") {
        return;
    }
    let c = Cluster::start(
        11,
        &[
            "--eviction-hard",
            "memory.available<100Mi,nodefs.available<1Gi",
            "--eviction-soft",
            "memory.available<100Ti",
            "--eviction-soft-grace-period",
            "memory.available=15s",
            "--eviction-max-pod-grace-period",
            "5",
        ],
    );
    let node = format!("node/{}", c.name);
    // The soft threshold sets the condition at once; allocatable keeps only the hard one.
    c.wait_node_condition("MemoryPressure", "True", 60);
    assert_ne!(c.jsonpath(&node, "{.status.allocatable.memory}"), "0Ki");
    // A Burstable pod is admitted, runs, and is evicted once the grace period is over,
    // with up to 5 s to stop: its TERM handler exits 0 instead of being killed.
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: patient}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 30
  containers:
  - name: main
    image: {IMAGE}
    command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]
    resources: {{requests: {{cpu: 10m}}}}
"#,
        name = c.name
    ));
    c.wait_phase("patient", "Running", 60);
    c.wait_phase("patient", "Failed", 90);
    let msg = c.jsonpath("pod patient", "{.status.reason}: {.status.message}");
    assert!(
        msg.starts_with(
            "Evicted: The node was low on resource: memory. Threshold quantity: 100Ti, available: "
        ),
        "{msg}"
    );
    assert_eq!(
        c.jsonpath(
            "pod patient",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "0",
        "stopped with SIGTERM and a grace period, not killed"
    );
}
