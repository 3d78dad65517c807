//! The scheduler inside `rkube server`, through the real API with fake nodes (Node objects
//! with capacity, no kubelet): where pods land, why they stay Pending, and that they bind
//! as soon as a node fits.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

struct Server {
    child: Child,
    client: Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(data: &Path) -> Server {
    start_with(data, &[]).await
}

async fn start_with(data: &Path, extra: &[&str]) -> Server {
    let kubeconfig = data.join("kubeconfig.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rkube"))
        .args(["server", "--data-dir", data.to_str().unwrap()])
        .args(["--bind-address", "127.0.0.1", "--https-listen-port", "0"])
        .args([
            "--write-kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--disable-agent",
        ])
        .args(extra)
        .env("RKUBE_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("API at ") {
                let _ = tx.send(());
            }
            // The server's log shows with a failing test's output.
            eprintln!("server: {line}");
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the server started");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Server {
        child,
        client: Client::try_from(config).unwrap(),
    }
}

/// A fake node: capacity, labels and taints, Ready.
async fn node(c: &Client, name: &str, cpu: &str, labels: Value, taints: Value) {
    let api: Api<Node> = Api::all(c.clone());
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }))
    .unwrap();
    api.create(&PostParams::default(), &n).await.unwrap();
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

async fn pod(c: &Client, name: &str, spec: Value) {
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut spec = spec;
    if spec["containers"].is_null() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &p).await.unwrap();
}

fn requests(cpu: &str) -> Value {
    json!([{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}])
}

/// Waits for the pod to be bound; its node.
async fn bound(c: &Client, name: &str) -> String {
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = api.get(name).await.unwrap();
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not scheduled: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the pod's PodScheduled=False condition; its message.
async fn unschedulable(c: &Client, name: &str) -> String {
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = api.get(name).await.unwrap();
        assert!(
            p.spec.as_ref().unwrap().node_name.is_none(),
            "{name} was bound"
        );
        let cond = p
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "PodScheduled")
            .cloned();
        if let Some(cond) = cond {
            assert_eq!(
                (cond.status.as_str(), cond.reason.as_deref()),
                ("False", Some("Unschedulable"))
            );
            return cond.message.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "{name} got no PodScheduled condition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pod's events with this reason, as they are now.
async fn pod_events(c: &Client, pod: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(c.clone(), "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// The messages of the pod's events with this reason, once there is one (events are
/// written after the binding or the condition, so they may trail them).
async fn events(c: &Client, pod: &str, reason: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = pod_events(c, pod, reason).await;
        if !found.is_empty() || Instant::now() > deadline {
            return found
                .into_iter()
                .map(|e| e.message.unwrap_or_default())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The count of the pod's one FailedScheduling event once it is a series (waits up to
/// 20 s); panics if there is more than one such event.
async fn failed_series(c: &Client, pod: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = pod_events(c, pod, "FailedScheduling").await;
        assert!(found.len() <= 1, "{} FailedScheduling events", found.len());
        let count = found
            .first()
            .and_then(|e| e.series.as_ref())
            .map_or(1, |s| s.count.unwrap_or(0));
        if count >= 2 || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pods_land_where_they_fit_and_wait_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let c = &s.client;
    // No nodes yet.
    pod(c, "early", json!({})).await;
    assert_eq!(
        unschedulable(c, "early").await,
        "no nodes available to schedule pods"
    );

    node(c, "n1", "2", json!({"disk": "ssd", "zone": "a"}), json!([])).await;
    node(
        c,
        "n2",
        "4",
        json!({"zone": "b"}),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    node(c, "n3", "1", json!({"zone": "c"}), json!([])).await;
    // The early pod is retried once nodes come.
    assert!(["n1", "n3"].contains(&bound(c, "early").await.as_str()));

    pod(c, "ssd", json!({"nodeSelector": {"disk": "ssd"}})).await;
    assert_eq!(bound(c, "ssd").await, "n1");
    pod(c, "gpu", json!({
        "nodeSelector": {"zone": "b"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    })).await;
    assert_eq!(bound(c, "gpu").await, "n2");
    pod(c, "affine", json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]}]}}}})).await;
    assert_eq!(bound(c, "affine").await, "n3");
    let ok = events(c, "affine", "Scheduled").await;
    assert_eq!(
        ok,
        vec!["Successfully assigned default/affine to n3".to_string()]
    );

    // Taints and selectors: the reasons per node, as upstream words them.
    pod(c, "intolerant", json!({"nodeSelector": {"zone": "b"}})).await;
    assert_eq!(
        unschedulable(c, "intolerant").await,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    let failed = events(c, "intolerant", "FailedScheduling").await;
    assert!(
        failed.iter().any(|m| m.contains("untolerated taint")),
        "{failed:?}"
    );

    // Host ports: the second pod wanting 8080 on n1 does not fit there.
    let web = json!([{"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 8080}]}]);
    pod(
        c,
        "web1",
        json!({"nodeSelector": {"zone": "a"}, "containers": web}),
    )
    .await;
    assert_eq!(bound(c, "web1").await, "n1");
    pod(
        c,
        "web2",
        json!({"nodeSelector": {"zone": "a"}, "containers": web}),
    )
    .await;
    let msg = unschedulable(c, "web2").await;
    assert!(
        msg.contains("1 node(s) didn't have free ports for the requested pod ports"),
        "{msg}"
    );

    // Too big for every node: Pending, then bound as soon as a big enough node joins.
    pod(c, "big", json!({"containers": requests("16")})).await;
    let msg = unschedulable(c, "big").await;
    assert!(msg.starts_with("0/3 nodes are available: "), "{msg}");
    assert!(msg.contains("2 Insufficient cpu"), "{msg}");
    // A node too small for it makes the scheduler try again: the repeated
    // FailedScheduling joins a series on the first event (events.k8s.io/v1, as upstream).
    node(c, "n5", "1", json!({"zone": "e"}), json!([])).await;
    let series = failed_series(c, "big").await;
    assert!(series >= 2, "series count {series}");
    node(c, "n4", "32", json!({"zone": "d"}), json!([])).await;
    assert_eq!(bound(c, "big").await, "n4");

    // Resources are counted from the moment a pod is assumed: two 700m pods do not both go
    // to the 1-CPU node.
    pod(
        c,
        "half-a",
        json!({"nodeSelector": {"zone": "c"}, "containers": requests("700m")}),
    )
    .await;
    pod(
        c,
        "half-b",
        json!({"nodeSelector": {"zone": "c"}, "containers": requests("700m")}),
    )
    .await;
    let a = bound(c, "half-a").await;
    assert_eq!(a, "n3");
    let msg = unschedulable(c, "half-b").await;
    assert!(msg.contains("Insufficient cpu"), "{msg}");
    // Deleting the first frees the room (at once: there is no kubelet to finish a
    // graceful deletion).
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.delete(
        "half-a",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    assert_eq!(bound(c, "half-b").await, "n3");

    // Another scheduler's pods and gated pods are left alone; lifting the gate schedules.
    pod(c, "other", json!({"schedulerName": "someone-else"})).await;
    pod(
        c,
        "gated",
        json!({"schedulingGates": [{"name": "example.com/wait"}]}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["other", "gated"] {
        let p = pods.get(name).await.unwrap();
        assert!(p.spec.unwrap().node_name.is_none(), "{name}");
        assert!(
            p.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .is_empty(),
            "{name}"
        );
    }
    pods.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"schedulingGates": null}})),
    )
    .await
    .unwrap();
    bound(c, "gated").await;
}

#[tokio::test]
async fn anti_affinity_spreads_replicas_and_topology_spread_keeps_skew() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let c = &s.client;
    for (n, zone) in [("z1a", "z1"), ("z1b", "z1"), ("z2a", "z2")] {
        node(
            c,
            n,
            "8",
            json!({"zone": zone, "kubernetes.io/hostname": n}),
            json!([]),
        )
        .await;
    }
    let replica = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]}}});
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let labelled = |name: &str, app: &str, spec: &Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "affinity": spec["affinity"],
                     "topologySpreadConstraints": spec["topologySpreadConstraints"]}}))
        .unwrap()
    };
    let mut hosts = Vec::new();
    for i in 0..3 {
        let name = format!("db-{i}");
        api.create(&PostParams::default(), &labelled(&name, "db", &replica))
            .await
            .unwrap();
        hosts.push(bound(c, &name).await);
    }
    hosts.sort();
    assert_eq!(hosts, ["z1a", "z1b", "z2a"], "one replica per node");
    api.create(&PostParams::default(), &labelled("db-3", "db", &replica))
        .await
        .unwrap();
    assert_eq!(
        unschedulable(c, "db-3").await,
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );

    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]});
    let mut zones: std::collections::BTreeMap<&str, i32> = Default::default();
    for i in 0..6 {
        let name = format!("spread-{i}");
        api.create(&PostParams::default(), &labelled(&name, "spread", &spread))
            .await
            .unwrap();
        let n = bound(c, &name).await;
        *zones
            .entry(if n.starts_with("z1") { "z1" } else { "z2" })
            .or_insert(0) += 1;
        let (a, b) = (
            zones.get("z1").copied().unwrap_or(0),
            zones.get("z2").copied().unwrap_or(0),
        );
        assert!((a - b).abs() <= 1, "skew after {name}: {zones:?}");
    }
    assert_eq!(zones, [("z1", 3), ("z2", 3)].into());
}

#[tokio::test]
async fn profiles_from_a_scheduler_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scheduler.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  plugins:
    score:
      disabled: [{name: \"*\"}]
      enabled: [{name: NodeResourcesFit, weight: 1}]
    postFilter:
      disabled: [{name: DefaultPreemption}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy: {type: MostAllocated}
",
    )
    .unwrap();
    let s = start_with(dir.path(), &["--scheduler-config", cfg.to_str().unwrap()]).await;
    let c = &s.client;
    for n in ["p1", "p2", "p3"] {
        node(c, n, "4", json!({}), json!([])).await;
    }
    // Bin packing: every packer pod on one node.
    let mut packed = Vec::new();
    for i in 0..3 {
        let name = format!("packed-{i}");
        pod(
            c,
            &name,
            json!({"schedulerName": "packer", "containers": requests("500m")}),
        )
        .await;
        packed.push(bound(c, &name).await);
    }
    packed.dedup();
    assert_eq!(packed.len(), 1, "{packed:?}");
    // The default profile spreads: the next pods avoid the fuller node.
    for i in 0..2 {
        let name = format!("spread-{i}");
        pod(c, &name, json!({"containers": requests("500m")})).await;
        let n = bound(c, &name).await;
        assert_ne!(n, packed[0], "{name} went to the fullest node");
    }
    let ev = events(c, "packed-0", "Scheduled").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    // The packer profile has no DefaultPreemption: no preemption part in its message.
    pod(
        c,
        "too-big",
        json!({"schedulerName": "packer", "containers": requests("5")}),
    )
    .await;
    assert_eq!(
        unschedulable(c, "too-big").await,
        "0/3 nodes are available: 3 Insufficient cpu."
    );
}

/// Preferred pod affinity gathers and preferred anti-affinity avoids; a ReplicaSet's pods
/// without constraints of their own are spread over the hosts by the default constraints.
/// Each profile scores with that one plugin, so nothing else decides.
#[tokio::test]
async fn preferred_affinity_and_default_spreading_score() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scheduler.yaml");
    let only = |name: &str, plugin: &str| {
        format!(
            "- schedulerName: {name}
  plugins:
    score:
      disabled: [{{name: \"*\"}}]
      enabled: [{{name: {plugin}}}]
"
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
{}{}",
            only("affine", "InterPodAffinity"),
            only("spreader", "PodTopologySpread")
        ),
    )
    .unwrap();
    let s = start_with(dir.path(), &["--scheduler-config", cfg.to_str().unwrap()]).await;
    let c = &s.client;
    for n in ["h1", "h2", "h3"] {
        node(c, n, "8", json!({"kubernetes.io/hostname": n}), json!([])).await;
    }
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let create = |name: &str, meta: Value, spec: Value| {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
        let mut meta = meta;
        meta["name"] = name.into();
        let p: Pod = serde_json::from_value(json!({"metadata": meta, "spec": spec})).unwrap();
        let api = api.clone();
        async move { api.create(&PostParams::default(), &p).await.unwrap() }
    };
    create(
        "cache",
        json!({"labels": {"app": "cache"}}),
        json!({"nodeName": "h2"}),
    )
    .await;
    let term = json!([{"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {"app": "cache"}}}}]);
    for i in 0..3 {
        let name = format!("near-{i}");
        let spec = json!({"schedulerName": "affine",
            "affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": term}}});
        create(&name, json!({}), spec).await;
        assert_eq!(bound(c, &name).await, "h2", "{name} goes next to the cache");
    }
    for i in 0..3 {
        let name = format!("far-{i}");
        let spec = json!({"schedulerName": "affine",
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": term}}});
        create(&name, json!({}), spec).await;
        assert_ne!(
            bound(c, &name).await,
            "h2",
            "{name} stays away from the cache"
        );
    }

    // A ReplicaSet object (no controller runs here): its selector is what spreads its pods.
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    let rs = Api::<ReplicaSet>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
        "uid": rs.metadata.uid, "controller": true}]);
    let mut per_host: std::collections::BTreeMap<String, i32> = Default::default();
    for i in 0..6 {
        let name = format!("web-{i}");
        let meta = json!({"labels": {"app": "web"}, "ownerReferences": owner});
        create(&name, meta, json!({"schedulerName": "spreader"})).await;
        *per_host.entry(bound(c, &name).await).or_default() += 1;
    }
    assert_eq!(
        per_host,
        [("h1".into(), 2), ("h2".into(), 2), ("h3".into(), 2)].into(),
        "the default constraints spread the ReplicaSet's pods over the hosts"
    );
}

/// Data locality: a pod follows its claim's local volume to that volume's node; a
/// `WaitForFirstConsumer` claim binds to a free volume where the pod can run, and waits
/// (with upstream's reasons) until one exists; a missing claim is refused outright.
#[tokio::test]
async fn pods_follow_their_local_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let c = &s.client;
    for (n, zone) in [("h1", "z1"), ("h2", "z2")] {
        let labels = json!({"kubernetes.io/hostname": n, "topology.kubernetes.io/zone": zone});
        node(c, n, "8", labels, json!([])).await;
    }
    let sc: StorageClass = serde_json::from_value(json!({"metadata": {"name": "local"},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}))
    .unwrap();
    Api::<StorageClass>::all(c.clone())
        .create(&PostParams::default(), &sc)
        .await
        .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    let pv = |name: &str, host: &str, claim: Value| -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "storageClassName": "local", "capacity": {"storage": "1Gi"}, "claimRef": claim,
            "accessModes": ["ReadWriteOnce"], "local": {"path": "/mnt/disk"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}}))
        .unwrap()
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let pvc = |name: &str, volume: &str| -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "storageClassName": "local", "volumeName": volume, "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap()
    };
    let uses = |claim: &str| json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]});
    let pp = PostParams::default();
    pvs.create(
        &pp,
        &pv(
            "pv-h1",
            "h1",
            json!({"namespace": "default", "name": "fixed"}),
        ),
    )
    .await
    .unwrap();
    pvcs.create(&pp, &pvc("fixed", "pv-h1")).await.unwrap();
    pvs.create(&pp, &pv("pv-h2", "h2", Value::Null))
        .await
        .unwrap();
    pvcs.create(&pp, &pvc("wait", "")).await.unwrap();
    pvcs.create(&pp, &pvc("wait2", "")).await.unwrap();

    pod(c, "bound-claim", uses("fixed")).await;
    assert_eq!(bound(c, "bound-claim").await, "h1", "the volume is on h1");
    pod(c, "late-binding", uses("wait")).await;
    assert_eq!(
        bound(c, "late-binding").await,
        "h2",
        "the only free volume is on h2"
    );
    let chosen = pvs.get("pv-h2").await.unwrap();
    let claim_ref = chosen.spec.unwrap().claim_ref.unwrap();
    assert_eq!(
        (claim_ref.namespace.as_deref(), claim_ref.name.as_deref()),
        (Some("default"), Some("wait"))
    );
    assert_eq!(
        chosen.metadata.annotations.unwrap()["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );

    pod(c, "no-room", uses("wait2")).await;
    assert_eq!(
        unschedulable(c, "no-room").await,
        "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    );
    pod(c, "no-claim", uses("missing")).await;
    assert_eq!(
        unschedulable(c, "no-claim").await,
        "0/2 nodes are available: persistentvolumeclaim \"missing\" not found. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    );
    // A new volume on h1 wakes the waiting pod.
    pvs.create(&pp, &pv("pv2-h1", "h1", Value::Null))
        .await
        .unwrap();
    assert_eq!(bound(c, "no-room").await, "h1");

    // VolumeZone: a network volume labelled with zone z2 (beta key) keeps its pod there.
    // VolumeRestrictions: a ReadWriteOncePod claim serves one pod.
    for (name, labels, mode) in [
        (
            "pv-zoned",
            json!({"failure-domain.beta.kubernetes.io/zone": "z2"}),
            "ReadWriteOnce",
        ),
        ("pv-solo", json!({}), "ReadWriteOncePod"),
    ] {
        let claim = name.trim_start_matches("pv-");
        let v: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": [mode],
                "nfs": {"server": "127.0.0.1", "path": "/export"},
                "claimRef": {"namespace": "default", "name": claim}}}))
        .unwrap();
        pvs.create(&pp, &v).await.unwrap();
        let k: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": claim},
            "spec": {"storageClassName": "", "volumeName": name, "accessModes": [mode],
                "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap();
        pvcs.create(&pp, &k).await.unwrap();
    }
    for i in 0..3 {
        let name = format!("zoned-{i}");
        pod(c, &name, uses("zoned")).await;
        assert_eq!(bound(c, &name).await, "h2", "the volume's zone");
    }
    pod(c, "solo-1", uses("solo")).await;
    bound(c, "solo-1").await;
    pod(c, "solo-2", uses("solo")).await;
    assert_eq!(
        unschedulable(c, "solo-2").await,
        "0/2 nodes are available: 2 node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    );
}

/// Two `rkube scheduler` processes share one Lease: one schedules; when it dies, the other
/// takes the lease and schedules.
#[tokio::test]
async fn leader_election_fails_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(dir.path(), &["--disable-scheduler"]).await;
    let c = &s.client;
    node(c, "only", "4", json!({}), json!([])).await;
    let scheduler = || {
        Command::new(env!("CARGO_BIN_EXE_rkube"))
            .args(["scheduler", "--kubeconfig"])
            .arg(dir.path().join("kubeconfig.yaml"))
            .args([
                "--leader-elect-lease-duration",
                "2",
                "--leader-elect-retry-period",
                "200",
            ])
            .env("RKUBE_LOG", "warn")
            .spawn()
            .unwrap()
    };
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let holder = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = leases.get_opt("kube-scheduler").await.unwrap() {
                let spec = l.spec.unwrap_or_default();
                if let Some(h) = spec.holder_identity {
                    return (h, spec.lease_transitions.unwrap_or(0));
                }
            }
            assert!(Instant::now() < deadline, "nobody took the lease");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut first = scheduler();
    let (leader, _) = holder().await;
    let mut second = scheduler();
    pod(c, "before", json!({})).await;
    assert_eq!(bound(c, "before").await, "only");
    assert_eq!(
        holder().await.0,
        leader,
        "the first keeps the lease while it lives"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    pod(c, "after", json!({})).await;
    assert_eq!(bound(c, "after").await, "only");
    let (now, transitions) = holder().await;
    assert_ne!(now, leader);
    assert!(transitions >= 1, "{transitions}");
    let _ = second.kill();
    let _ = second.wait();
}

/// PriorityClasses resolve at admission; a high-priority pod that fits nowhere preempts
/// the lower-priority pods on the node where that breaks no PodDisruptionBudget, is
/// nominated there and binds once they are gone.
#[tokio::test]
async fn a_high_priority_pod_preempts() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let c = &srv.client;
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(c.clone());
    let critical = classes.get("system-cluster-critical").await.unwrap();
    assert_eq!(critical.value, 2_000_000_000);
    for (name, value, policy) in [
        ("low", 10, "PreemptLowerPriority"),
        ("high", 1000, "PreemptLowerPriority"),
        ("polite", 1000, "Never"),
    ] {
        let pc = serde_json::from_value(json!({"metadata": {"name": name}, "value": value,
            "preemptionPolicy": policy}))
        .unwrap();
        classes.create(&PostParams::default(), &pc).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    // Admission: an unknown class, or a priority that disagrees with the class, is refused.
    let bad = |spec: Value| -> Pod {
        let mut spec = spec;
        spec["containers"] = requests("1");
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": spec})).unwrap()
    };
    let err = pods
        .create(
            &PostParams::default(),
            &bad(json!({"priorityClassName": "nope"})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err}")
    };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "pods \"bad\" is forbidden: no PriorityClass with name nope was found"
    );
    let err = pods
        .create(
            &PostParams::default(),
            &bad(json!({"priorityClassName": "high", "priority": 5})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err}")
    };
    assert_eq!(s.code, 403);
    assert!(s.message.contains("the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000"), "{}", s.message);

    // Two full nodes: n1's pods are protected by a budget that allows no disruption.
    node(c, "n1", "2", json!({}), json!([])).await;
    node(c, "n2", "2", json!({}), json!([])).await;
    for (name, node, app) in [
        ("l1", "n1", "protected"),
        ("l2", "n1", "protected"),
        ("l3", "n2", "plain"),
        ("l4", "n2", "plain"),
    ] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "priorityClassName": "low", "terminationGracePeriodSeconds": 0,
                "containers": requests("1")}})).unwrap();
        let p = pods.create(&PostParams::default(), &p).await.unwrap();
        assert_eq!(p.spec.unwrap().priority, Some(10), "the class's value");
    }
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(c.clone(), "default");
    let pdb = serde_json::from_value(json!({"metadata": {"name": "keep"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "protected"}}}}))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    // What the disruption controller (not in rkube yet) would report for it.
    let status = json!({"status": {"disruptionsAllowed": 0, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2}});
    pdbs.patch_status("keep", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();

    // Lower or equal priority, or a class that never preempts: they wait, and say why.
    pod(
        c,
        "meek",
        json!({"priorityClassName": "low", "containers": requests("1")}),
    )
    .await;
    assert_eq!(
        unschedulable(c, "meek").await,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    pod(
        c,
        "waits",
        json!({"priorityClassName": "polite", "containers": requests("2")}),
    )
    .await;
    assert_eq!(
        unschedulable(c, "waits").await,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
    );
    pods.delete("waits", &Default::default()).await.unwrap();

    pod(
        c,
        "vip",
        json!({"priorityClassName": "high", "containers": requests("2")}),
    )
    .await;
    assert_eq!(
        bound(c, "vip").await,
        "n2",
        "the node whose victims break no budget"
    );
    let vip = pods.get("vip").await.unwrap();
    let status = vip.status.unwrap();
    assert_eq!(status.nominated_node_name.as_deref(), Some("n2"));
    let left: Vec<String> = pods
        .list(&ListParams::default().labels("app"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["l1", "l2"], "only n2's pods were evicted");
    let uid = vip.metadata.uid.unwrap();
    assert_eq!(
        events(c, "l3", "Preempted").await,
        [format!("Preempted by pod {uid} on node n2")]
    );
    // As upstream: the preemptor is the event's related object.
    let preempted = pod_events(c, "l3", "Preempted").await;
    let related = preempted[0]
        .related
        .as_ref()
        .and_then(|r| r.name.as_deref());
    assert_eq!(related, Some("vip"));
    // The lower-priority pod still waits: the freed room went to the preemptor.
    assert!(pods
        .get("meek")
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .is_none());
}
