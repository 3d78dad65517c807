//! VolumeBinding: a pod's claims must exist and be bound, or be `WaitForFirstConsumer`
//! claims that a free volume (or the class's provisioner) can serve from the node; bound
//! volumes must be reachable from the node (local volumes' node affinity: data locality).
//! NodeVolumeLimits: a node takes no more CSI volumes per driver than its CSINode allows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use crate::cache::{NodeInfo, PodInfo, Snapshot};
use crate::framework::{reject, CycleState, Plugin};
use crate::volumes::{class_of, pod_claims, Volumes};

const BINDING: &str = "VolumeBinding";
const LIMITS: &str = "NodeVolumeLimits";

/// Upstream's reasons.
pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
/// A claim that no volume can satisfy on the node.
pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
/// A claim bound to a volume that does not exist.
pub const PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
/// More volumes than the node's CSI driver attaches.
pub const MAX_VOLUMES: &str = "node(s) exceed max volume count";

enum BindState {
    Rejected(String),
    Claims {
        volumes: Arc<Volumes>,
        bound: Vec<String>,
        to_bind: Vec<PersistentVolumeClaim>,
    },
}

/// How each of the pod's `WaitForFirstConsumer` claims is served on the node: a free
/// volume's name, or `None` for the class's provisioner; `None` overall if one cannot be.
pub fn bindings(
    volumes: &Volumes,
    to_bind: &[PersistentVolumeClaim],
    node: &NodeInfo,
) -> Option<Vec<(PersistentVolumeClaim, Option<String>)>> {
    let mut chosen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for c in to_bind {
        match volumes.find_volume(c, node, &chosen) {
            Some(pv) => {
                let name = pv.metadata.name.as_deref().unwrap_or("");
                chosen.push(name);
                out.push((c.clone(), Some(name.to_string())));
            }
            None if volumes.can_provision(c, node) => out.push((c.clone(), None)),
            None => return None,
        }
    }
    Some(out)
}

/// VolumeBinding's Reserve: how the cycle's `WaitForFirstConsumer` claims (found at
/// PreFilter) are served on the chosen node; none when the plugin did not run.
pub fn reserve(
    state: &CycleState,
    node: &NodeInfo,
) -> Vec<(PersistentVolumeClaim, Option<String>)> {
    match state.read::<BindState>(BINDING) {
        Some(BindState::Claims {
            volumes, to_bind, ..
        }) if !to_bind.is_empty() => bindings(volumes, to_bind, node).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// VolumeBinding: the pod's claims must be bound, or bindable, on the node.
pub struct VolumeBinding;

impl Plugin for VolumeBinding {
    fn name(&self) -> &'static str {
        BINDING
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        if pod_claims(&pod.pod).is_empty() {
            return;
        }
        let st = match cluster.volumes.claims_of(&pod.pod) {
            Err(msg) => {
                reject(state, msg.clone());
                BindState::Rejected(msg)
            }
            Ok(c) => BindState::Claims {
                volumes: cluster.volumes.clone(),
                bound: c.bound,
                to_bind: c.to_bind,
            },
        };
        state.insert(BINDING, Box::new(st));
    }

    fn filter_state(&self) -> Option<&'static str> {
        Some(BINDING)
    }

    fn filter_in(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let Some(st) = state.read::<BindState>(BINDING) else {
            return Ok(());
        };
        let (volumes, bound, to_bind) = match st {
            BindState::Rejected(msg) => return Err(vec![msg.clone()]),
            BindState::Claims {
                volumes,
                bound,
                to_bind,
            } => (volumes, bound, to_bind),
        };
        let mut reasons = Vec::new();
        for name in bound {
            match volumes.volumes.get(name) {
                None => return Err(vec![PV_NOT_EXIST.into()]),
                Some(pv) if !Volumes::reachable(pv, node) => {
                    reasons.push(NODE_CONFLICT.to_string());
                    break;
                }
                Some(_) => {}
            }
        }
        if !to_bind.is_empty() && bindings(volumes, to_bind, node).is_none() {
            reasons.push(BIND_CONFLICT.into());
        }
        match reasons.is_empty() {
            true => Ok(()),
            false => Err(reasons),
        }
    }
}

/// A pod's CSI volumes: driver → unique volume handles. Bound claims count by their
/// volume's handle, unbound ones by their class's provisioner, inline CSI volumes by the
/// pod's own name.
fn csi_volumes(volumes: &Volumes, pod: &Pod) -> HashMap<String, HashSet<String>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(csi) = &v.csi {
            let handle = format!("{ns}/{pod_name}/{}", v.name);
            out.entry(csi.driver.clone()).or_default().insert(handle);
        }
    }
    for pc in pod_claims(pod) {
        let key = format!("{ns}/{}", pc.name);
        let Some(claim) = volumes.claims.get(&key) else {
            continue;
        };
        let pv = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_ref())
            .and_then(|n| volumes.volumes.get(n));
        let (driver, handle) = match pv {
            Some(pv) => match pv.spec.as_ref().and_then(|s| s.csi.as_ref()) {
                Some(csi) => (csi.driver.clone(), csi.volume_handle.clone()),
                None => continue,
            },
            None => match volumes.classes.get(class_of(claim)) {
                Some(sc) => (sc.provisioner.clone(), key),
                None => continue,
            },
        };
        out.entry(driver).or_default().insert(handle);
    }
    out
}

struct LimitState {
    volumes: Arc<Volumes>,
    /// The incoming pod's CSI volumes by driver.
    new: HashMap<String, HashSet<String>>,
}

/// NodeVolumeLimits: the CSI attach limits of the node (CSINode).
pub struct NodeVolumeLimits;

impl Plugin for NodeVolumeLimits {
    fn name(&self) -> &'static str {
        LIMITS
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let new = csi_volumes(cluster.volumes, &pod.pod);
        if !new.is_empty() {
            let volumes = cluster.volumes.clone();
            state.insert(LIMITS, Box::new(LimitState { volumes, new }));
        }
    }

    fn filter_state(&self) -> Option<&'static str> {
        Some(LIMITS)
    }

    fn filter_in(
        &self,
        _pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let Some(st) = state.read::<LimitState>(LIMITS) else {
            return Ok(());
        };
        let Some(csi_node) = st.volumes.csi_nodes.get(&node.name) else {
            return Ok(());
        };
        let limits: HashMap<&str, i32> = csi_node
            .spec
            .drivers
            .iter()
            .filter_map(|d| Some((d.name.as_str(), d.allocatable.as_ref()?.count?)))
            .collect();
        if !st.new.keys().any(|d| limits.contains_key(d.as_str())) {
            return Ok(());
        }
        let mut attached: HashMap<String, HashSet<String>> = HashMap::new();
        for p in node.pods.values() {
            for (driver, handles) in csi_volumes(&st.volumes, &p.pod) {
                attached.entry(driver).or_default().extend(handles);
            }
        }
        for (driver, handles) in &st.new {
            let Some(max) = limits.get(driver.as_str()) else {
                continue;
            };
            let there = attached.get(driver);
            let added = handles
                .iter()
                .filter(|h| there.is_none_or(|t| !t.contains(*h)))
                .count();
            if there.map_or(0, |t| t.len()) + added > *max as usize {
                return Err(vec![MAX_VOLUMES.into()]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cache::Cache;
    use crate::plugins::test_util::{hosts, pod};

    fn cluster() -> Cache {
        let mut c = hosts(&["n1", "n2"]);
        let v = c.volumes_mut();
        let pv = |name: &str, host: &str, claim: serde_json::Value| {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
                "storageClassName": "local", "capacity": {"storage": "1Gi"}, "claimRef": claim,
                "accessModes": ["ReadWriteOnce"], "local": {"path": "/mnt"},
                "csi": {"driver": "csi.example.com", "volumeHandle": name},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}}))
            .unwrap()
        };
        v.volumes.insert(
            "bound".into(),
            pv(
                "bound",
                "n2",
                json!({"namespace": "default", "name": "data"}),
            ),
        );
        v.volumes
            .insert("free".into(), pv("free", "n1", json!(null)));
        let claim = |name: &str, volume: &str| {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"storageClassName": "local", "volumeName": volume, "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap()
        };
        v.claims
            .insert("default/data".into(), claim("data", "bound"));
        v.claims.insert("default/later".into(), claim("later", ""));
        v.claims
            .insert("default/gone".into(), claim("gone", "nope"));
        v.classes.insert(
            "local".into(),
            serde_json::from_value(json!({"metadata": {"name": "local"},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "WaitForFirstConsumer"}))
            .unwrap(),
        );
        c
    }

    fn with_claims(claims: &[&str]) -> PodInfo {
        let vols: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        pod(json!({"spec": {"volumes": vols}}))
    }

    fn verdicts(plugin: &dyn Plugin, c: &Cache, p: &PodInfo) -> Vec<Result<(), Vec<String>>> {
        let mut s = CycleState::new();
        plugin.pre_filter(p, &c.snapshot(), &mut s);
        c.all().iter().map(|n| plugin.filter_in(p, n, &s)).collect()
    }

    #[test]
    fn claims_decide_the_node() {
        let mut c = cluster();
        let err = |m: &str| Err(vec![m.to_string()]);
        // Bound to a local volume on n2: only n2.
        assert_eq!(
            verdicts(&VolumeBinding, &c, &with_claims(&["data"])),
            vec![err(NODE_CONFLICT), Ok(())]
        );
        // WaitForFirstConsumer: where a free volume is (n1).
        assert_eq!(
            verdicts(&VolumeBinding, &c, &with_claims(&["later"])),
            vec![Ok(()), err(BIND_CONFLICT)]
        );
        // Both: no node has both.
        let both = verdicts(&VolumeBinding, &c, &with_claims(&["data", "later"]));
        assert!(both.iter().all(|v| v.is_err()), "{both:?}");
        assert_eq!(
            verdicts(&VolumeBinding, &c, &with_claims(&["gone"])),
            vec![err(PV_NOT_EXIST), err(PV_NOT_EXIST)]
        );
        // Rejected at PreFilter: missing and immediate claims.
        let mut s = CycleState::new();
        VolumeBinding.pre_filter(&with_claims(&["nope"]), &c.snapshot(), &mut s);
        let n1 = &c.all()[0];
        assert_eq!(
            VolumeBinding.filter_in(&with_claims(&["nope"]), n1, &s),
            err("persistentvolumeclaim \"nope\" not found")
        );
        c.volumes_mut().classes.clear();
        assert_eq!(
            verdicts(&VolumeBinding, &c, &with_claims(&["later"]))[0],
            err("pod has unbound immediate PersistentVolumeClaims")
        );
    }

    #[test]
    fn csi_limits_count_unique_volumes() {
        let mut c = cluster();
        c.volumes_mut().csi_nodes.insert(
            "n2".into(),
            serde_json::from_value(json!({"metadata": {"name": "n2"}, "spec": {"drivers": [
                {"name": "csi.example.com", "nodeID": "n2", "allocatable": {"count": 1}}]}}))
            .unwrap(),
        );
        let user = with_claims(&["data"]);
        assert_eq!(verdicts(&NodeVolumeLimits, &c, &user)[1], Ok(()));
        c.add_pod(Arc::new(with_claims(&["data"])), "n2", false);
        // The same volume again is no new attachment; another one would be.
        let again = pod(json!({"metadata": {"name": "again"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}));
        assert_eq!(verdicts(&NodeVolumeLimits, &c, &again)[1], Ok(()));
        let inline = pod(json!({"metadata": {"name": "inline"}, "spec": {"volumes": [
            {"name": "scratch", "csi": {"driver": "csi.example.com"}}]}}));
        assert_eq!(
            verdicts(&NodeVolumeLimits, &c, &inline),
            vec![Ok(()), Err(vec![MAX_VOLUMES.to_string()])]
        );
    }
}
