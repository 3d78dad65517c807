//! The shared client plumbing against a real API server: informers share one watch per
//! type and see every change, leader election lets one of two holders lead, and events
//! repeat into a series.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rkube_apiserver::{ApiServer, Config};
use rkube_client::events::{object_ref, Occurrence, Recorder};
use rkube_client::{Change, LeaseLock, SharedInformerFactory};
use rkube_store::{EmbeddedOptions, EmbeddedStore};

async fn server(dir: &tempfile::TempDir) -> (ApiServer, Client) {
    let store =
        Arc::new(EmbeddedStore::open(dir.path().join("db"), EmbeddedOptions::default()).unwrap());
    let mut config = Config::new(dir.path().join("server"));
    config.bind_address = "127.0.0.1".parse().unwrap();
    config.port = 0;
    let server = ApiServer::start(config, store).await.unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&server.admin_kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    (server, Client::try_from(config).unwrap())
}

async fn next_change(
    rx: &mut tokio::sync::broadcast::Receiver<Change<ConfigMap>>,
) -> Change<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a change within 30 s")
        .expect("no lag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informers_leases_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = server(&dir).await;

    // One informer per type, however often it is asked for.
    let factory = SharedInformerFactory::new(client.clone());
    let a = factory.informer::<ConfigMap>();
    let b = factory.informer::<ConfigMap>();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(factory.len(), 1);
    a.synced().await;
    let mut rx = b.subscribe();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("watched".into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    match next_change(&mut rx).await {
        Change::Applied(o) => assert_eq!(o.metadata.name.as_deref(), Some("watched")),
        other => panic!("expected the create, got {other:?}"),
    }
    assert!(a
        .store()
        .state()
        .iter()
        .any(|c| c.metadata.name.as_deref() == Some("watched")));
    cms.delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    match next_change(&mut rx).await {
        Change::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("watched")),
        other => panic!("expected the delete, got {other:?}"),
    }
    assert!(!a
        .store()
        .state()
        .iter()
        .any(|c| c.metadata.name.as_deref() == Some("watched")));

    // Two candidates for one lease: the first holds it, the second waits.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let one = LeaseLock::for_component("test-component", "one".into());
    let two = LeaseLock::for_component("test-component", "two".into());
    assert!(one.try_hold(&leases).await.unwrap());
    assert!(!two.try_hold(&leases).await.unwrap());
    assert!(one.try_hold(&leases).await.unwrap(), "the holder renews");
    let lease = leases.get("test-component").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("one"));
    assert_eq!(spec.lease_duration_seconds, Some(15));

    // Events: the second occurrence joins a series on the first.
    let recorder = Recorder::new(client.clone());
    let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    for _ in 0..2 {
        recorder.record(
            object_ref(&cm),
            None,
            Occurrence {
                type_: "Warning",
                reason: "Testing",
                action: "Checking",
                note: "twice",
                reporter: "test-controller",
            },
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut found = None;
    for _ in 0..100 {
        let list = events.list(&Default::default()).await.unwrap();
        found = list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Testing"));
        if found.as_ref().and_then(|e| e.series.as_ref()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ev = found.expect("the event was written");
    assert_eq!(ev.series.map(|s| s.count), Some(2));
    let regarding = ev.regarding.unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("ConfigMap"));
    assert_eq!(regarding.name.as_deref(), Some("watched"));
}
