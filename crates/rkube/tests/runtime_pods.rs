//! The built-in runtime running real pods through a CRI gRPC client: `rkube runtime`
//! processes, runc, the CNI bridge plugins, busybox images built by the test. Root only.

mod cri_node;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cri_node::*;
use k8s_cri::v1 as cri;

#[test]
fn pods_share_a_network_namespace_and_reach_each_other() {
    if !root_or_skip("pods_share_a_network_namespace_and_reach_each_other") {
        return;
    }
    let node = Node::new(11);
    node.rt.block_on(async {
        let mut c = node.client().await;
        let web_cfg = sandbox_config(&node, "web");
        let web = run_pod(&mut c, &web_cfg).await;
        let ip = pod_ip(&mut c, &web).await;
        assert!(ip.starts_with("10.199.11."), "pod IP {ip:?}");
        let server = run_container(&mut c, &web, &web_cfg, container_config(
            "server",
            "echo hello-from-$(hostname) > /var/www/index.html; exec httpd -f -p 8080 -h /var/www",
        )).await;
        // A second container in the same pod reaches the first on localhost.
        let client = run_container(&mut c, &web, &web_cfg, container_config(
            "client",
            "for i in $(seq 1 100); do wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1",
        )).await;
        let st = wait_exit(&mut c, &client).await;
        assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"), "{st:?}");
        let lines = log_lines(&node.logs().join("web/client/0.log"));
        assert!(lines.contains(&("stdout".into(), "F".into(), "hello-from-web".into())), "{lines:?}");
        // The pod IP is reachable from the host.
        let body = retry_http(&format!("{ip}:8080"));
        assert!(body.contains("hello-from-web"), "{body}");
        // resolv.conf from the DNS config.
        let dns = run_container(&mut c, &web, &web_cfg, container_config("dns", "cat /etc/resolv.conf")).await;
        wait_exit(&mut c, &dns).await;
        let text: Vec<String> = log_lines(&node.logs().join("web/dns/0.log")).into_iter().map(|l| l.2).collect();
        assert!(text.contains(&"nameserver 10.43.0.10".to_string()), "{text:?}");
        assert!(text.contains(&"search default.svc.cluster.local".to_string()), "{text:?}");

        // A second pod reaches the first by IP across the bridge.
        let db_cfg = sandbox_config(&node, "db");
        let db = run_pod(&mut c, &db_cfg).await;
        let db_ip = pod_ip(&mut c, &db).await;
        assert_ne!(db_ip, ip);
        let fetch = run_container(&mut c, &db, &db_cfg, container_config(
            "fetch",
            &format!("wget -q -O - http://{ip}:8080/ && hostname"),
        )).await;
        let st = wait_exit(&mut c, &fetch).await;
        assert_eq!(st.exit_code, 0, "{st:?}");
        let text: Vec<String> = log_lines(&node.logs().join("db/fetch/0.log")).into_iter().map(|l| l.2).collect();
        assert_eq!(text, vec!["hello-from-web".to_string(), "db".to_string()]);

        // Lists and filters.
        let all = c.list_containers(cri::ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
        assert_eq!(all.len(), 4);
        let running = c.list_containers(cri::ListContainersRequest { filter: Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
            ..Default::default()
        }) }).await.unwrap().into_inner().containers;
        assert_eq!(running.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![server.clone()]);
        let pods = c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([("app".to_string(), "db".to_string())]),
            ..Default::default()
        }) }).await.unwrap().into_inner().items;
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].id, db);
        // The same pod twice is refused.
        let err = c.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(db_cfg.clone()), runtime_handler: String::new() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
    });
}

#[test]
fn exit_codes_logs_limits_oom_and_stop() {
    if !root_or_skip("exit_codes_logs_limits_oom_and_stop") {
        return;
    }
    let node = Node::new(12);
    node.rt.block_on(async {
        let mut c = node.client().await;
        let cfg = sandbox_config(&node, "jobs");
        let pod = run_pod(&mut c, &cfg).await;
        // Exit code and reason; both streams; a line longer than 16 KiB split as P + F.
        let fail = run_container(
            &mut c,
            &pod,
            &cfg,
            container_config(
                "fail",
                "echo out; echo err >&2; printf '%020000d\\n' 0; exit 3",
            ),
        )
        .await;
        let st = wait_exit(&mut c, &fail).await;
        assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"), "{st:?}");
        assert!(
            st.finished_at >= st.started_at && st.started_at >= st.created_at,
            "{st:?}"
        );
        let lines = log_lines(&node.logs().join("jobs/fail/0.log"));
        assert!(
            lines.contains(&("stdout".into(), "F".into(), "out".into())),
            "{lines:?}"
        );
        assert!(
            lines.contains(&("stderr".into(), "F".into(), "err".into())),
            "{lines:?}"
        );
        let long: Vec<_> = lines.iter().filter(|l| l.2.starts_with("000")).collect();
        assert_eq!(long.len(), 2, "{long:?}");
        assert_eq!((long[0].1.as_str(), long[0].2.len()), ("P", 16384));
        assert_eq!((long[1].1.as_str(), long[1].2.len()), ("F", 20000 - 16384));

        // Limits land in the container's cgroup.
        let mut limited = container_config("limited", "sleep 30");
        limited.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        });
        let limited = run_container(&mut c, &pod, &cfg, limited).await;
        let cgroup = format!("rkube-test/jobs-{}/{limited}", std::process::id());
        let read = |p: &str| {
            std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(p))
                .map(|s| s.trim().to_string())
        };
        if Path::new("/sys/fs/cgroup/memory").is_dir() {
            assert_eq!(
                read(&format!("memory/{cgroup}/memory.limit_in_bytes")).unwrap(),
                (64u64 << 20).to_string()
            );
            assert_eq!(
                read(&format!("cpu/{cgroup}/cpu.cfs_quota_us")).unwrap(),
                "50000"
            );
            assert_eq!(read(&format!("cpu/{cgroup}/cpu.shares")).unwrap(), "512");
        } else {
            assert_eq!(
                read(&format!("{cgroup}/memory.max")).unwrap(),
                (64u64 << 20).to_string()
            );
            assert_eq!(read(&format!("{cgroup}/cpu.max")).unwrap(), "50000 100000");
        }

        // A memory hog is OOM-killed.
        let mut hog = container_config("hog", "exec dd if=/dev/zero of=/dev/null bs=256M count=1");
        hog.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                memory_swap_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let hog = run_container(&mut c, &pod, &cfg, hog).await;
        let st = wait_exit(&mut c, &hog).await;
        assert_eq!(
            (st.reason.as_str(), st.exit_code),
            ("OOMKilled", 137),
            "{st:?}"
        );

        // StopContainer: SIGTERM ignored (a shell as PID 1), then SIGKILL after the timeout.
        let stubborn = run_container(
            &mut c,
            &pod,
            &cfg,
            container_config("stubborn", "trap '' TERM; while true; do sleep 1; done"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        c.stop_container(cri::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
        let took = t.elapsed();
        let st = status(&mut c, &stubborn).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(st.exit_code, 137, "{st:?}");
        assert!(
            took >= Duration::from_secs(2),
            "SIGKILL came after {took:?}"
        );
        // A container that handles SIGTERM stops at once with its own code.
        let polite = run_container(
            &mut c,
            &pod,
            &cfg,
            container_config(
                "polite",
                "trap 'exit 42' TERM; while true; do sleep 0.1; done",
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.stop_container(cri::StopContainerRequest {
            container_id: polite.clone(),
            timeout: 30,
        })
        .await
        .unwrap();
        assert_eq!(status(&mut c, &polite).await.exit_code, 42);
        let _ = limited;

        // Created, never started (runc runs only at StartContainer): stopping it ends it
        // as a killed one, and removal leaves nothing.
        let idle = create_container(&mut c, &pod, &cfg, container_config("idle", "sleep 30")).await;
        assert_eq!(
            status(&mut c, &idle).await.state,
            cri::ContainerState::ContainerCreated as i32
        );
        c.stop_container(cri::StopContainerRequest {
            container_id: idle.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
        let st = status(&mut c, &idle).await;
        assert_eq!(
            (st.state, st.exit_code),
            (cri::ContainerState::ContainerExited as i32, 137),
            "{st:?}"
        );
        c.remove_container(cri::RemoveContainerRequest {
            container_id: idle.clone(),
        })
        .await
        .unwrap();
        assert!(!node
            .data()
            .join("agent/runtime/containers")
            .join(&idle)
            .exists());
        // Limits changed between create and start are in force once it runs.
        let late = create_container(&mut c, &pod, &cfg, container_config("late", "sleep 30")).await;
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: late.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 80 << 20,
                ..Default::default()
            }),
            windows: None,
            annotations: Default::default(),
        })
        .await
        .unwrap();
        c.start_container(cri::StartContainerRequest {
            container_id: late.clone(),
        })
        .await
        .unwrap();
        let st = status(&mut c, &late).await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        let cg = format!("rkube-test/jobs-{}/{late}", std::process::id());
        let limit = if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
            format!("/sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes")
        } else {
            format!("/sys/fs/cgroup/{cg}/memory.max")
        };
        assert_eq!(
            std::fs::read_to_string(&limit).unwrap().trim(),
            (80u64 << 20).to_string()
        );
        // A command that cannot run fails StartContainer; the container is then exited
        // with 128 and StartError, as containerd reports it.
        let mut missing = container_config("missing", "");
        missing.command = vec!["/no/such/binary".into()];
        let bad = create_container(&mut c, &pod, &cfg, missing).await;
        let err = c
            .start_container(cri::StartContainerRequest {
                container_id: bad.clone(),
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("no/such/binary"), "{err:?}");
        let st = status(&mut c, &bad).await;
        assert_eq!(
            (st.state, st.exit_code, st.reason.as_str()),
            (
                cri::ContainerState::ContainerExited as i32,
                128,
                "StartError"
            ),
            "{st:?}"
        );
    });
}

/// Kill -9 the runtime: containers keep running and logging; the restarted runtime
/// reports the same sandboxes and containers, and the real exit code of one that ended
/// meanwhile. Then removal leaves nothing on the host.
#[test]
fn runtime_restart_and_clean_removal() {
    if !root_or_skip("runtime_restart_and_clean_removal") {
        return;
    }
    let mut node = Node::new(13);
    let veths_before = count_veths(&node.bridge);
    let cfg = sandbox_config(&node, "steady");
    let (pod, ticker, short, ip) = node.rt.block_on(async {
        let mut c = node.client().await;
        let pod = run_pod(&mut c, &cfg).await;
        let ticker = run_container(
            &mut c,
            &pod,
            &cfg,
            container_config(
                "ticker",
                "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
            ),
        )
        .await;
        let short = run_container(
            &mut c,
            &pod,
            &cfg,
            container_config("short", "sleep 1; exit 7"),
        )
        .await;
        let ip = pod_ip(&mut c, &pod).await;
        (pod, ticker, short, ip)
    });
    assert_eq!(count_veths(&node.bridge), veths_before + 1);
    let log = node.logs().join("steady/ticker/0.log");
    std::thread::sleep(Duration::from_millis(500));
    node.kill9();
    let before = log_lines(&log).len();
    std::thread::sleep(Duration::from_secs(2));
    let after = log_lines(&log).len();
    assert!(
        after > before + 5,
        "the container kept logging without the runtime ({before} → {after})"
    );
    node.start();
    node.rt.block_on(async {
        let mut c = node.client().await;
        let pods = c
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert_eq!(
            pods.iter()
                .map(|p| (p.id.clone(), p.state))
                .collect::<Vec<_>>(),
            vec![(pod.clone(), cri::PodSandboxState::SandboxReady as i32)]
        );
        assert_eq!(pod_ip(&mut c, &pod).await, ip);
        assert_eq!(
            status(&mut c, &ticker).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
        let st = status(&mut c, &short).await;
        assert_eq!(
            (st.state, st.exit_code),
            (cri::ContainerState::ContainerExited as i32, 7),
            "{st:?}"
        );
        // Stop and remove the pod: no mounts, namespaces, veths, cgroups or IPs remain.
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        assert_eq!(
            status(&mut c, &ticker).await.state,
            cri::ContainerState::ContainerExited as i32
        );
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        assert!(c
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty());
        // Idempotent.
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    });
    let data = node.data().display().to_string();
    let state = rkube_runtime::Paths::under(&node.data())
        .state
        .display()
        .to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&data) || l.contains(&state))
        .collect();
    assert!(left.is_empty(), "mounts left: {}", left.join("\n"));
    assert_eq!(count_veths(&node.bridge), veths_before);
    let cg = format!(
        "/sys/fs/cgroup/memory/rkube-test/steady-{}/{}",
        std::process::id(),
        ticker
    );
    assert!(!Path::new(&cg).exists(), "{cg} left");
    let ips = node.data().join("agent/runtime/cni/networks/rkube");
    let held: Vec<_> = std::fs::read_dir(&ips)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        held.iter().all(|n| !n.to_string_lossy().starts_with("10.")),
        "IPs still allocated: {held:?}"
    );
    assert!(!node
        .data()
        .join("agent/runtime/sandboxes")
        .join(&pod)
        .exists());
}

/// With `--cni-bin-dir`, Debian's bridge and host-local binaries replace the built-in
/// plugins the other tests use: pods get addresses, reach each other and the host, and
/// removal releases everything.
#[test]
fn plugin_binaries_network() {
    if !root_or_skip("plugin_binaries_network") {
        return;
    }
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "Debian's containernetworking-plugins are missing: run make deps"
    );
    let node = Node::with_args(15, &["--cni-bin-dir", "/usr/lib/cni"]);
    node.rt.block_on(async {
        let mut c = node.client().await;
        let st = c.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
        let net = st.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
        assert!(net.status, "{net:?}");
        let a_cfg = sandbox_config(&node, "plugins-a");
        let a = run_pod(&mut c, &a_cfg).await;
        let a_ip = pod_ip(&mut c, &a).await;
        assert_eq!(a_ip, "10.199.15.2");
        run_container(&mut c, &a, &a_cfg, container_config(
            "web",
            "echo plugins > /var/www/index.html; exec httpd -f -p 8080 -h /var/www",
        )).await;
        let b_cfg = sandbox_config(&node, "plugins-b");
        let b = run_pod(&mut c, &b_cfg).await;
        assert_eq!(pod_ip(&mut c, &b).await, "10.199.15.3");
        let fetch = run_container(&mut c, &b, &b_cfg, container_config(
            "fetch",
            &format!("for i in $(seq 1 50); do wget -q -O - http://{a_ip}:8080/ && ip route && exit 0; sleep 0.1; done; exit 1"),
        )).await;
        let st = wait_exit(&mut c, &fetch).await;
        assert_eq!(st.exit_code, 0, "{st:?}");
        let text: Vec<String> = log_lines(&node.logs().join("plugins-b/fetch/0.log")).into_iter().map(|l| l.2).collect();
        assert_eq!(text.first().map(String::as_str), Some("plugins"), "{text:?}");
        assert!(text.iter().any(|l| l.starts_with("default via 10.199.15.1")), "{text:?}");
        assert!(retry_http(&format!("{a_ip}:8080")).contains("plugins"));
        assert_eq!(count_veths(&node.bridge), 2);
        for pod in [a, b] {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
        }
    });
    assert_eq!(count_veths(&node.bridge), 0);
    let held: Vec<String> = std::fs::read_dir(node.data().join("agent/runtime/cni/networks/rkube"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(held.is_empty(), "IPs still allocated: {held:?}");
}
