//! Events about pods, as `kubectl describe pod` shows them; a repeat of the same event
//! bumps its count instead of adding another object (as upstream's recorder aggregates).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

/// (namespace, pod uid, reason, field path + message).
type EventKey = (String, String, String, String);

/// Writes events for one node's kubelet, off the callers' path: recording queues the
/// event and one task writes them in order (as upstream's broadcaster does).
pub struct Recorder {
    tx: mpsc::Sender<Op>,
    node: String,
}

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

enum Op {
    Record(Box<Event>, EventKey),
    Forget(String),
}

impl Recorder {
    /// A recorder whose writer task runs until the recorder is dropped.
    pub fn new(client: kube::Client, node: String) -> Recorder {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(client, rx));
        Recorder { tx, node }
    }

    /// Records an event about `pod`, optionally about one of its containers (`fieldPath`
    /// `spec.containers{name}`).
    pub async fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let field_path = container.map(|c| {
            let init = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|i| i.iter().any(|x| x.name == c));
            if init {
                format!("spec.initContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        });
        let key = (
            ns.clone(),
            uid.clone(),
            reason.to_string(),
            format!("{field_path:?}{message}"),
        );
        let now = jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns),
                uid: Some(uid),
                resource_version: pod.metadata.resource_version.clone(),
                field_path,
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(format!("{kind:?}")),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        if self.tx.try_send(Op::Record(Box::new(ev), key)).is_err() {
            tracing::debug!("event queue full; an event was dropped");
        }
    }

    /// Forgets the aggregation state of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        let _ = self.tx.try_send(Op::Forget(uid.to_string()));
    }
}

/// Writes queued events; a repeat of an event bumps its count.
async fn writer(client: kube::Client, mut rx: mpsc::Receiver<Op>) {
    let mut seen: HashMap<EventKey, (String, i32)> = HashMap::new();
    while let Some(op) = rx.recv().await {
        let (ev, key) = match op {
            Op::Record(ev, key) => (ev, key),
            Op::Forget(uid) => {
                seen.retain(|k, _| k.1 != uid);
                continue;
            }
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &key.0);
        if let Some((ev_name, count)) = seen.get(&key).cloned() {
            let now = ev
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(jiff::Timestamp::now);
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now.to_string()});
            if api
                .patch(&ev_name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .is_ok()
            {
                seen.insert(key, (ev_name, count + 1));
                continue;
            }
        }
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                if seen.len() > 4096 {
                    seen.clear();
                }
                seen.insert(key, (ev.metadata.name.clone().unwrap_or_default(), 1));
            }
            Err(e) => tracing::debug!(error = %e, "recording an event"),
        }
    }
}
