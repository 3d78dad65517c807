//! The selectors of the Services and workload controllers a pod belongs to: what
//! PodTopologySpread's default constraints spread (upstream's `DefaultSelector`).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Services' selectors by namespace, and ReplicationControllers', ReplicaSets' and
/// StatefulSets' selectors by `Kind/namespace/name`.
#[derive(Default, Debug)]
pub struct Owners {
    services: HashMap<String, HashMap<String, BTreeMap<String, String>>>,
    controllers: HashMap<String, LabelSelector>,
}

/// The kinds whose selector counts when they are a pod's controller.
pub const CONTROLLER_KINDS: &[&str] = &["ReplicationController", "ReplicaSet", "StatefulSet"];

fn controller_key(kind: &str, ns: &str, name: &str) -> String {
    format!("{kind}/{ns}/{name}")
}

impl Owners {
    /// Records a Service's selector (`None`: the service is gone or selects nothing).
    pub fn set_service(&mut self, ns: &str, name: &str, sel: Option<BTreeMap<String, String>>) {
        match sel {
            Some(s) => {
                self.services
                    .entry(ns.to_string())
                    .or_default()
                    .insert(name.to_string(), s);
            }
            None => {
                if let Some(m) = self.services.get_mut(ns) {
                    m.remove(name);
                    if m.is_empty() {
                        self.services.remove(ns);
                    }
                }
            }
        }
    }

    /// Records a controller's selector (`None`: gone).
    pub fn set_controller(&mut self, kind: &str, ns: &str, name: &str, sel: Option<LabelSelector>) {
        let k = controller_key(kind, ns, name);
        match sel {
            Some(s) => self.controllers.insert(k, s),
            None => self.controllers.remove(&k),
        };
    }

    /// The labels of every Service selecting the pod, merged, plus the selector of the
    /// pod's controller (a ReplicationController, ReplicaSet or StatefulSet); `None` when
    /// that selects nothing, so the pod gets no default spreading.
    pub fn default_selector(&self, pod: &Pod) -> Option<LabelSelector> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let mut sel = LabelSelector::default();
        let mut merged = BTreeMap::new();
        for s in self.services.get(ns).into_iter().flat_map(|m| m.values()) {
            if s.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                merged.extend(s.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        if let Some(o) = owner.filter(|o| CONTROLLER_KINDS.contains(&o.kind.as_str())) {
            if let Some(c) = self.controllers.get(&controller_key(&o.kind, ns, &o.name)) {
                merged.extend(
                    c.match_labels
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                sel.match_expressions = c.match_expressions.clone().filter(|e| !e.is_empty());
            }
        }
        if !merged.is_empty() {
            sel.match_labels = Some(merged);
        }
        (sel.match_labels.is_some() || sel.match_expressions.is_some()).then_some(sel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_and_the_controller_make_the_selector() {
        let mut o = Owners::default();
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d",
            "labels": {"app": "web", "tier": "fe", "pod-template-hash": "h"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-h", "uid": "u", "controller": true}]}}))
        .unwrap();
        assert_eq!(o.default_selector(&pod), None, "nothing selects it yet");
        o.set_service(
            "d",
            "web",
            Some([("app".to_string(), "web".to_string())].into()),
        );
        o.set_service(
            "d",
            "db",
            Some([("app".to_string(), "db".to_string())].into()),
        );
        o.set_service(
            "other",
            "web2",
            Some([("tier".to_string(), "fe".to_string())].into()),
        );
        let sel = o.default_selector(&pod).unwrap();
        assert_eq!(
            sel.match_labels,
            Some([("app".to_string(), "web".to_string())].into())
        );
        o.set_controller(
            "ReplicaSet",
            "d",
            "web-h",
            Some(
                serde_json::from_value(json!({"matchLabels": {"pod-template-hash": "h"},
                "matchExpressions": [{"key": "tier", "operator": "Exists"}]}))
                .unwrap(),
            ),
        );
        let sel = o.default_selector(&pod).unwrap();
        assert_eq!(sel.match_labels.unwrap().len(), 2);
        assert_eq!(sel.match_expressions.unwrap()[0].key, "tier");
        o.set_service("d", "web", None);
        o.set_controller("ReplicaSet", "d", "web-h", None);
        assert_eq!(o.default_selector(&pod), None);
    }
}
