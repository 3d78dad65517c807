//! Events about pods, as `kubectl describe pod` shows them; a repeat of the same event
//! bumps its count instead of adding another object (as upstream's recorder aggregates).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// (namespace, pod uid, reason, field path + message).
type EventKey = (String, String, String, String);

/// Writes events for one node's kubelet.
pub struct Recorder {
    client: kube::Client,
    node: String,
    /// (namespace, uid, reason, message) → (event name, count).
    seen: Mutex<HashMap<EventKey, (String, i32)>>,
}

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

impl Recorder {
    pub fn new(client: kube::Client, node: String) -> Recorder {
        Recorder {
            client,
            node,
            seen: Mutex::new(HashMap::new()),
        }
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
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let repeat = self.seen.lock().expect("events lock").get(&key).cloned();
        if let Some((ev_name, count)) = repeat {
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": now.to_string(),
            });
            if api
                .patch(&ev_name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .is_ok()
            {
                self.seen
                    .lock()
                    .expect("events lock")
                    .insert(key, (ev_name, count + 1));
                return;
            }
        }
        let ev_name = format!("{name}.{:x}", now.as_nanosecond());
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(ev_name.clone()),
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
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                let mut seen = self.seen.lock().expect("events lock");
                if seen.len() > 4096 {
                    seen.clear();
                }
                seen.insert(key, (ev_name, 1));
            }
            Err(e) => tracing::debug!(error = %e, "recording an event"),
        }
    }

    /// Forgets the aggregation state of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.seen
            .lock()
            .expect("events lock")
            .retain(|k, _| k.1 != uid);
    }
}
