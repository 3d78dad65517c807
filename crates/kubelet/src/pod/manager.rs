//! Watches the pods bound to this node and keeps one worker per pod; sandboxes of pods
//! the API no longer has are removed once the first list is in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::cri::POD_UID;
use crate::{AbortOnDrop, Kubelet};

struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    task: AbortOnDrop,
}

/// Runs until dropped.
pub async fn run(k: Arc<Kubelet>) {
    let api: Api<Pod> = Api::all(k.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", k.config.node_name));
    let mut stream = watcher(api, cfg).boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listed: Option<HashSet<String>> = None;
    while let Some(ev) = stream.next().await {
        // Workers that finished (their pod is gone) leave the map.
        workers.retain(|_, h| !h.task.0.is_finished());
        match ev {
            Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let (Some(set), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                    set.insert(uid);
                }
                apply(&k, &mut workers, pod);
            }
            Ok(watcher::Event::InitDone) => {
                let seen = listed.take().unwrap_or_default();
                // Pods deleted while the watch was down.
                for (uid, h) in &workers {
                    if !seen.contains(uid) {
                        let _ = h.tx.send(None);
                    }
                }
                tokio::spawn(remove_orphans(k.clone(), seen));
            }
            Ok(watcher::Event::Apply(pod)) => apply(&k, &mut workers, pod),
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(h) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    let _ = h.tx.send(None);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching this node's pods");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

fn apply(k: &Arc<Kubelet>, workers: &mut HashMap<String, Handle>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let pod = Arc::new(pod);
    if let Some(h) = workers.get(&uid) {
        if !h.task.0.is_finished() {
            let _ = h.tx.send(Some(pod));
            return;
        }
    }
    let (tx, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(super::worker::run(k.clone(), uid.clone(), rx));
    workers.insert(
        uid,
        Handle {
            tx,
            task: AbortOnDrop(task),
        },
    );
}

/// Removes sandboxes (and their containers) of pods not in `known`.
async fn remove_orphans(k: Arc<Kubelet>, known: HashSet<String>) {
    let Ok(sandboxes) = k.cri.sandboxes(None).await else {
        return;
    };
    let mut orphans: HashMap<String, (String, String)> = HashMap::new();
    for s in sandboxes {
        let Some(uid) = s.labels.get(POD_UID) else {
            continue;
        };
        if !known.contains(uid) {
            let m = s.metadata.clone().unwrap_or_default();
            orphans.insert(uid.clone(), (m.namespace, m.name));
        }
    }
    for (uid, name) in orphans {
        tracing::info!(%uid, pod = %name.1, "removing the sandbox of a pod that no longer exists");
        super::worker::remove_pod(&k, &uid, Some(name)).await;
    }
}
