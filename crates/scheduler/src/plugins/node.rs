//! NodeUnschedulable, NodeName and NodePorts.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::Plugin;

/// Keeps pods off cordoned nodes unless they tolerate the unschedulable taint.
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !cordoned {
            return Ok(());
        }
        let taint = k8s_openapi::api::core::v1::Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if super::tolerates(pod, &taint) {
            return Ok(());
        }
        Err(vec!["node(s) were unschedulable".into()])
    }
}

/// `spec.nodeName` set before scheduling pins the pod.
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() && n != node.name => {
                Err(vec!["node(s) didn't match the requested node name".into()])
            }
            _ => Ok(()),
        }
    }
}

/// Host ports must be free on the node.
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        if pod.ports.is_empty() {
            return Ok(());
        }
        let clash = node
            .ports()
            .any(|used| pod.ports.iter().any(|p| p.conflicts(used)));
        if clash {
            return Err(vec![
                "node(s) didn't have free ports for the requested pod ports".into(),
            ]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::plugins::test_util::{node, only, pod};

    #[test]
    fn cordon_name_and_ports() {
        let c = node(json!({"spec": {"unschedulable": true}}));
        assert!(NodeUnschedulable.filter(&pod(json!({})), only(&c)).is_err());
        let tolerant = pod(
            json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert!(NodeUnschedulable.filter(&tolerant, only(&c)).is_ok());

        let c = node(json!({}));
        assert!(NodeName
            .filter(&pod(json!({"spec": {"nodeName": "other"}})), only(&c))
            .is_err());
        assert!(NodeName
            .filter(&pod(json!({"spec": {"nodeName": "n"}})), only(&c))
            .is_ok());

        let mut c = node(json!({}));
        let web = |name: &str, ip: &str| {
            pod(
                json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip}]}]}}),
            )
        };
        c.add_pod(Arc::new(web("a", "10.0.0.1")), "n", false);
        assert!(
            NodePorts.filter(&web("b", "10.0.0.2"), only(&c)).is_ok(),
            "other address"
        );
        assert_eq!(
            NodePorts.filter(&web("b", ""), only(&c)).unwrap_err(),
            vec!["node(s) didn't have free ports for the requested pod ports".to_string()]
        );
    }
}
