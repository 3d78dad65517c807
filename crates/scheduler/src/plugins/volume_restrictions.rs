//! VolumeRestrictions: a claim with the `ReadWriteOncePod` access mode serves one pod in
//! the cluster, and the in-tree disks that allow a single writer (GCE PD, AWS EBS, iSCSI,
//! Ceph RBD) are not mounted twice on a node unless every mount is read-only.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Pod, Volume};

use crate::cache::{NodeInfo, PodInfo, Snapshot};
use crate::framework::{reject, CycleState, Plugin};

const NAME: &str = "VolumeRestrictions";

/// Upstream's reasons.
pub const DISK_CONFLICT: &str = "node(s) had no available disk";
pub const RWOP_CONFLICT: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";

struct State {
    /// The pod has single-writer in-tree disks to check on each node.
    disks: bool,
    /// A scheduled pod already uses one of its `ReadWriteOncePod` claims.
    rwop_in_use: bool,
}

/// Whether the volume is a single-writer in-tree disk.
fn is_disk(v: &Volume) -> bool {
    v.gce_persistent_disk.is_some()
        || v.aws_elastic_block_store.is_some()
        || v.iscsi.is_some()
        || v.rbd.is_some()
}

/// Whether two mounts of in-tree disks clash (upstream's rules per kind).
fn conflict(a: &Volume, b: &Volume) -> bool {
    let ro = |x: Option<bool>| x.unwrap_or(false);
    if let (Some(x), Some(y)) = (&a.gce_persistent_disk, &b.gce_persistent_disk) {
        if x.pd_name == y.pd_name && !(ro(x.read_only) && ro(y.read_only)) {
            return true;
        }
    }
    if let (Some(x), Some(y)) = (&a.aws_elastic_block_store, &b.aws_elastic_block_store) {
        if x.volume_id == y.volume_id {
            return true;
        }
    }
    if let (Some(x), Some(y)) = (&a.iscsi, &b.iscsi) {
        if x.iqn == y.iqn && !(ro(x.read_only) && ro(y.read_only)) {
            return true;
        }
    }
    if let (Some(x), Some(y)) = (&a.rbd, &b.rbd) {
        let monitors: HashSet<&String> = x.monitors.iter().collect();
        if y.monitors.iter().any(|m| monitors.contains(m))
            && x.pool == y.pool
            && x.image == y.image
            && !(ro(x.read_only) && ro(y.read_only))
        {
            return true;
        }
    }
    false
}

fn volumes(pod: &Pod) -> &[Volume] {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[])
}

/// VolumeRestrictions: ReadWriteOncePod claims used once, conflicting disk volumes.
pub struct VolumeRestrictions;

impl Plugin for VolumeRestrictions {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Snapshot, state: &mut CycleState) {
        let vols = volumes(&pod.pod);
        let ns = pod.pod.metadata.namespace.as_deref().unwrap_or("");
        let mut rwop = HashSet::new();
        for v in vols {
            let Some(c) = &v.persistent_volume_claim else {
                continue;
            };
            let Some(claim) = cluster
                .volumes
                .claims
                .get(&format!("{ns}/{}", c.claim_name))
            else {
                return reject(
                    state,
                    format!("persistentvolumeclaim {:?} not found", c.claim_name),
                );
            };
            let modes = claim.spec.as_ref().and_then(|s| s.access_modes.as_ref());
            if modes.is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod")) {
                rwop.insert(c.claim_name.as_str());
            }
        }
        let disks = vols.iter().any(is_disk);
        let rwop_in_use = !rwop.is_empty()
            && cluster.each_node().any(|n| {
                n.pods.values().any(|p| {
                    p.key != pod.key
                        && p.pod.metadata.namespace.as_deref() == Some(ns)
                        && volumes(&p.pod).iter().any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|c| rwop.contains(c.claim_name.as_str()))
                        })
                })
            });
        if disks || rwop_in_use {
            state.insert(NAME, Box::new(State { disks, rwop_in_use }));
        }
    }

    fn filter_state(&self) -> Option<&'static str> {
        Some(NAME)
    }

    fn filter_in(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        state: &CycleState,
    ) -> Result<(), Vec<String>> {
        let Some(st) = state.read::<State>(NAME) else {
            return Ok(());
        };
        if st.disks {
            let mine = volumes(&pod.pod).iter().filter(|v| is_disk(v));
            for v in mine {
                let clash = node
                    .pods
                    .values()
                    .any(|p| volumes(&p.pod).iter().any(|e| conflict(v, e)));
                if clash {
                    return Err(vec![DISK_CONFLICT.into()]);
                }
            }
        }
        match st.rwop_in_use {
            true => Err(vec![RWOP_CONFLICT.into()]),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::plugins::test_util::{hosts, pod};

    fn verdict(c: &crate::cache::Cache, p: &PodInfo, node: &str) -> Result<(), Vec<String>> {
        let mut s = CycleState::new();
        VolumeRestrictions.pre_filter(p, &c.snapshot(), &mut s);
        if let Some(m) = crate::framework::rejection(&s) {
            return Err(vec![m.to_string()]);
        }
        VolumeRestrictions.filter_in(p, c.node(node).unwrap(), &s)
    }

    #[test]
    fn single_writer_disks_and_claims() {
        let mut c = hosts(&["n1", "n2"]);
        for (name, mode) in [("solo", "ReadWriteOncePod"), ("shared", "ReadWriteMany")] {
            let claim = json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"accessModes": [mode], "volumeName": "pv"}});
            c.volumes_mut().claims.insert(
                format!("default/{name}"),
                serde_json::from_value(claim).unwrap(),
            );
        }
        let with = |name: &str, vols: serde_json::Value| {
            pod(json!({"metadata": {"name": name}, "spec": {"volumes": vols}}))
        };
        let claim = |c: &str| json!([{"name": "v", "persistentVolumeClaim": {"claimName": c}}]);
        let pd = |ro: bool| json!([{"name": "d", "gcePersistentDisk": {"pdName": "pd1", "readOnly": ro}}]);
        c.add_pod(Arc::new(with("a", claim("solo"))), "n1", false);
        c.add_pod(Arc::new(with("b", claim("shared"))), "n1", false);
        c.add_pod(Arc::new(with("c", pd(true))), "n1", false);
        // A ReadWriteOncePod claim in use anywhere: no node will do.
        let second = with("x", claim("solo"));
        assert_eq!(verdict(&c, &second, "n2"), Err(vec![RWOP_CONFLICT.into()]));
        assert!(verdict(&c, &with("y", claim("shared")), "n1").is_ok());
        // A missing claim is refused outright.
        let lost = verdict(&c, &with("z", claim("nope")), "n2").unwrap_err();
        assert_eq!(
            lost,
            vec!["persistentvolumeclaim \"nope\" not found".to_string()]
        );
        // The same GCE disk: read-only mounts share a node; a writer does not.
        assert!(verdict(&c, &with("r", pd(true)), "n1").is_ok());
        assert_eq!(
            verdict(&c, &with("w", pd(false)), "n1"),
            Err(vec![DISK_CONFLICT.into()])
        );
        assert!(verdict(&c, &with("w", pd(false)), "n2").is_ok());
        let ebs =
            json!([{"name": "e", "awsElasticBlockStore": {"volumeID": "vol-1", "readOnly": true}}]);
        c.add_pod(Arc::new(with("e1", ebs.clone())), "n2", false);
        assert_eq!(
            verdict(&c, &with("e2", ebs), "n2"),
            Err(vec![DISK_CONFLICT.into()])
        );
    }
}
