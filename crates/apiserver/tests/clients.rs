//! Client libraries against the server: the official Python client, and kube-rs
//! (CRUD, paging, watch, and a `kube_runtime::watcher` that survives a 410).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;

#[test]
fn python_kubernetes_client() {
    let Some(py) = rkube_testkit::python_client() else {
        eprintln!(
            "SKIPPED: target/pyvenv is missing; `make deps` installs the Python kubernetes client"
        );
        return;
    };
    let srv = TestServer::start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_check.py");
    let out = Command::new(py)
        .arg(script)
        .arg(&srv.kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("python client: ok"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .unwrap()
}

#[test]
fn kube_rs_client_and_watcher() {
    let srv = TestServer::start();
    let kubeconfig = kube::config::Kubeconfig::read_from(&srv.kubeconfig).unwrap();
    srv.rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

        // CRUD.
        let created = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
        assert!(created.metadata.uid.is_some());
        let patched = cms
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"k": "v2"}})),
            )
            .await
            .unwrap();
        assert_eq!(patched.data.unwrap()["k"], "v2");
        // Server-side apply, as kube-rs controllers use it: create, then update.
        let ssa = PatchParams::apply("rkube-test");
        let apply = |v: &str| {
            Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "applied"}, "data": {"k": v}}))
        };
        let first = cms.patch("applied", &ssa, &apply("1")).await.unwrap();
        assert_eq!(first.data.unwrap()["k"], "1");
        let second = cms.patch("applied", &ssa, &apply("2")).await.unwrap();
        assert_eq!(second.data.unwrap()["k"], "2");
        let mf = second.metadata.managed_fields.unwrap();
        assert_eq!(mf[0].manager.as_deref(), Some("rkube-test"));
        assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
        cms.delete("applied", &DeleteParams::default())
            .await
            .unwrap();
        let mut stale = created.clone();
        stale.data = Some([("k".to_string(), "v3".to_string())].into());
        let err = cms
            .replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 409),
            "{err:?}"
        );
        cms.delete("a", &DeleteParams::default()).await.unwrap();
        assert!(cms.get_opt("a").await.unwrap().is_none());

        // Paging.
        for i in 0..12 {
            cms.create(&PostParams::default(), &cm(&format!("p{i:02}")))
                .await
                .unwrap();
        }
        let first = cms.list(&ListParams::default().limit(5)).await.unwrap();
        assert_eq!(first.items.len(), 5);
        assert_eq!(first.metadata.remaining_item_count, Some(7));
        let token = first.metadata.continue_.clone().unwrap();
        let second = cms
            .list(&ListParams::default().limit(5).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(second.items[0].metadata.name.as_deref(), Some("p05"));

        // A watcher that starts from a compacted resourceVersion gets 410 and relists.
        let rv_before = first.metadata.resource_version.clone().unwrap();
        for i in 0..5 {
            cms.patch(
                "p00",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"n": i.to_string()}})),
            )
            .await
            .unwrap();
        }
        let store_rev: i64 = cms
            .get("p00")
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap()
            .parse()
            .unwrap();
        srv.compact(store_rev);
        let stale_watch = cms
            .watch(&kube::api::WatchParams::default(), &rv_before)
            .await
            .unwrap();
        let events: Vec<_> = stale_watch.take(1).collect().await;
        match &events[0] {
            Ok(kube::api::WatchEvent::Error(e)) => assert_eq!(e.code, 410, "{e:?}"),
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
        // A running watcher whose next watch meets a compacted resourceVersion relists.
        let cfg = watcher::Config::default().timeout(2).disable_bookmarks();
        let mut stream = watcher(cms.clone(), cfg).boxed();
        let init = next_init(&mut stream).await;
        assert_eq!(init.len(), 12, "{init:?}");
        // Writes the watcher does not see (another namespace) move the revision on;
        // compaction then leaves its resourceVersion behind.
        let other: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
        other
            .create(&PostParams::default(), &cm("elsewhere"))
            .await
            .unwrap();
        let rev: i64 = other
            .get("elsewhere")
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap()
            .parse()
            .unwrap();
        srv.compact(rev);
        let relisted = next_init(&mut stream).await;
        assert_eq!(
            relisted.len(),
            12,
            "the watcher relisted after 410: {relisted:?}"
        );
        cms.create(&PostParams::default(), &cm("late"))
            .await
            .unwrap();
        eprintln!("watcher relisted; waiting for the late object");
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let watcher::Event::Apply(o) = ev {
                assert_eq!(o.metadata.name.as_deref(), Some("late"));
                break;
            }
        }
    });
}

/// Waits for the next complete initial list of a watcher; returns the names in it.
async fn next_init(
    stream: &mut (impl futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>>
              + Unpin),
) -> Vec<String> {
    let mut names = Vec::new();
    let mut started = false;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("watcher event in time");
        match ev {
            Some(Ok(watcher::Event::Init)) => {
                started = true;
                names.clear();
            }
            Some(Ok(watcher::Event::InitApply(o))) if started => {
                names.push(o.metadata.name.unwrap())
            }
            Some(Ok(watcher::Event::InitDone)) if started => return names,
            Some(Err(_)) | Some(Ok(_)) => {}
            None => panic!("watcher ended"),
        }
    }
}
