//! The pod worker's sync against the in-memory runtime (no root, no containers) and a
//! real API server: what it asks the runtime for and what status it writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use crate::cri::{POD_NAME, POD_UID};
use crate::cri_fake::FakeRuntime;
use crate::{Config, Kubelet};

struct Env {
    _dir: tempfile::TempDir,
    _server: rkube_apiserver::ApiServer,
    pods: Api<Pod>,
    k: Arc<Kubelet>,
    fake: Arc<FakeRuntime>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        rkube_store::EmbeddedStore::open(dir.path().join("db"), Default::default()).unwrap(),
    );
    let mut config = rkube_apiserver::Config::new(dir.path().join("server"));
    config.bind_address = "127.0.0.1".parse().unwrap();
    config.port = 0;
    let server = rkube_apiserver::ApiServer::start(config, store)
        .await
        .unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&server.admin_kubeconfig()).unwrap();
    let kc = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(kc).unwrap();
    let mut config = Config::new(
        "node-a".into(),
        "127.0.0.1".parse().unwrap(),
        dir.path().join("agent"),
        dir.path().join("no-runtime.sock"),
    );
    config.manage_cgroups = false;
    // No node pressure from the host this runs on (a full disk would reject the pods).
    config.eviction =
        crate::eviction::Thresholds::parse("memory.available<0,nodefs.available<0").unwrap();
    let fake = Arc::new(FakeRuntime::default());
    let k = Kubelet::with_runtime(config, client.clone(), fake.clone())
        .await
        .unwrap();
    Env {
        _dir: dir,
        _server: server,
        pods: Api::namespaced(client, "default"),
        k,
        fake,
    }
}

/// Creates a pod bound to this node and starts its worker; the sender feeds it updates.
async fn start(
    e: &Env,
    name: &str,
    policy: &str,
    image: &str,
) -> (Pod, watch::Sender<Option<Arc<Pod>>>) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": "node-a", "restartPolicy": policy,
            "containers": [{"name": "app", "image": image}]}
    }))
    .unwrap();
    let pod = e.pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let (tx, rx) = watch::channel(Some(Arc::new(pod.clone())));
    tokio::spawn(super::run(e.k.clone(), uid, rx));
    (pod, tx)
}

/// Waits (up to 30 s) until the pod's status in the API satisfies `f`.
async fn until(
    e: &Env,
    name: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..300 {
        if let Ok(p) = e.pods.get(name).await {
            let st = serde_json::to_value(&p.status).unwrap();
            if f(&st) {
                return st;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = e.pods.get(name).await.ok().and_then(|p| p.status);
    panic!(
        "pod {name} never reached {what}: {}",
        serde_json::to_string(&p).unwrap()
    );
}

fn app(st: &serde_json::Value) -> &serde_json::Value {
    &st["containerStatuses"][0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_and_succeeds() {
    let e = env().await;
    let (pod, _tx) = start(&e, "once", "Never", "busybox").await;
    let st = until(&e, "once", "Running and Ready", |s| {
        s["phase"] == "Running" && app(s)["ready"] == true
    })
    .await;
    assert!(
        st["podIP"].as_str().unwrap().starts_with("10.88.0."),
        "{st}"
    );
    assert_eq!(app(&st)["restartCount"], 0);
    let calls = e.fake.calls();
    assert_eq!(calls[0], "run_pod_sandbox", "{calls:?}");
    assert_eq!(calls[1], "pull busybox", "{calls:?}");
    assert_eq!(calls[2], "create_container app", "{calls:?}");
    assert!(calls[3].starts_with("start_container "), "{calls:?}");
    let sandboxes = e.fake.sandbox_list();
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(sandboxes[0].1.get(POD_UID), pod.metadata.uid.as_ref());
    assert_eq!(
        sandboxes[0].1.get(POD_NAME).map(String::as_str),
        Some("once")
    );

    e.fake.exit("app", 0);
    let st = until(&e, "once", "Succeeded", |s| s["phase"] == "Succeeded").await;
    assert_eq!(app(&st)["state"]["terminated"]["reason"], "Completed");
    assert_eq!(app(&st)["state"]["terminated"]["exitCode"], 0);
    // Nothing runs again; the sandbox is stopped.
    let calls = e.fake.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("stop_sandbox ")),
        "{calls:?}"
    );
    assert_eq!(e.fake.instances("app").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_container_restarts_then_backs_off() {
    let e = env().await;
    let (_pod, _tx) = start(&e, "crashy", "Always", "busybox").await;
    until(&e, "crashy", "Running", |s| {
        app(s)["state"]["running"].is_object()
    })
    .await;
    e.fake.exit("app", 1);
    // The first restart is immediate.
    let st = until(&e, "crashy", "one restart", |s| {
        app(s)["restartCount"] == 1 && app(s)["state"]["running"].is_object()
    })
    .await;
    assert_eq!(app(&st)["lastState"]["terminated"]["exitCode"], 1);
    // The next waits its back-off: CrashLoopBackOff.
    e.fake.exit("app", 1);
    let st = until(&e, "crashy", "CrashLoopBackOff", |s| {
        app(s)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let msg = app(&st)["state"]["waiting"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("back-off 10s restarting failed container=app pod=crashy_default("),
        "{msg}"
    );
    assert_eq!(
        e.fake.instances("app").len(),
        2,
        "one dead instance is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_waits() {
    let e = env().await;
    let (_pod, _tx) = start(&e, "nopull", "Always", "registry.local/missing:1").await;
    let st = until(&e, "nopull", "ErrImagePull", |s| {
        matches!(
            app(s)["state"]["waiting"]["reason"].as_str(),
            Some("ErrImagePull" | "ImagePullBackOff")
        )
    })
    .await;
    assert_eq!(st["phase"], "Pending");
    assert!(
        e.fake.instances("app").is_empty(),
        "no container without its image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_is_stopped_and_removed() {
    let e = env().await;
    let (_pod, tx) = start(&e, "doomed", "Always", "busybox").await;
    until(&e, "doomed", "Running", |s| {
        app(s)["state"]["running"].is_object()
    })
    .await;
    // A graceful delete marks it; the worker stops it and removes it for good.
    e.pods
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let marked = e.pods.get("doomed").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    tx.send(Some(Arc::new(marked))).unwrap();
    for _ in 0..300 {
        if e.pods.get_opt("doomed").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        e.pods.get_opt("doomed").await.unwrap().is_none(),
        "the pod is gone from the API"
    );
    let calls = e.fake.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("stop_container ")),
        "{calls:?}"
    );
    // The pod's end (None) tears down the sandbox.
    tx.send(None).unwrap();
    for _ in 0..100 {
        if e.fake.sandbox_list().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(e.fake.sandbox_list().is_empty(), "{:?}", e.fake.calls());
}
