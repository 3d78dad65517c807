//! What the scheduler knows of storage: PersistentVolumeClaims, PersistentVolumes,
//! StorageClasses and CSINodes, the claims a pod uses, and which volume can bind a claim
//! on a node (upstream's volume binder, for VolumeBinding and NodeVolumeLimits).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};

use crate::cache::NodeInfo;
use crate::quantity::parse_units;
use crate::selector;

/// The provisioner of classes whose volumes are all made by hand (local volumes).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// Storage objects by name (claims by `namespace/name`), and the volumes this scheduler
/// has chosen for claims and not yet seen bound (claim key → volume).
#[derive(Default, Debug, Clone)]
pub struct Volumes {
    /// Claims by `namespace/name`.
    pub claims: HashMap<String, PersistentVolumeClaim>,
    /// Volumes by name.
    pub volumes: HashMap<String, PersistentVolume>,
    /// StorageClasses by name.
    pub classes: HashMap<String, StorageClass>,
    /// CSINodes by node name.
    pub csi_nodes: HashMap<String, CSINode>,
    /// Volumes chosen for claims, not yet seen bound.
    pub assumed: HashMap<String, String>,
}

/// A claim a pod uses, by the name it must have.
pub struct PodClaim {
    /// The claim's name.
    pub name: String,
    /// Made for a generic ephemeral volume (the pod must own it).
    pub ephemeral: bool,
}

/// The claims of a pod's volumes: `persistentVolumeClaim` sources, and `<pod>-<volume>`
/// for generic ephemeral volumes.
pub fn pod_claims(pod: &Pod) -> Vec<PodClaim> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(PodClaim {
                    name: c.claim_name.clone(),
                    ephemeral: false,
                })
            } else {
                v.ephemeral.as_ref().map(|_| PodClaim {
                    name: format!("{name}-{}", v.name),
                    ephemeral: true,
                })
            }
        })
        .collect()
}

/// How a pod's claims stand before any node is looked at.
#[derive(Default)]
pub struct ClaimState {
    /// Claims bound to a volume: the volume's name.
    pub bound: Vec<String>,
    /// Unbound claims of `WaitForFirstConsumer` classes, bound once a node is chosen.
    pub to_bind: Vec<PersistentVolumeClaim>,
}

/// A claim's storage class name ("" for none).
pub fn class_of(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn claim_key(c: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        c.metadata.namespace.as_deref().unwrap_or(""),
        c.metadata.name.as_deref().unwrap_or("")
    )
}

impl Volumes {
    /// Sorts the pod's claims into bound and to-bind, or says why the pod cannot be
    /// scheduled anywhere (upstream's messages).
    pub fn claims_of(&self, pod: &Pod) -> Result<ClaimState, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let mut st = ClaimState::default();
        let mut immediate = false;
        for pc in pod_claims(pod) {
            let Some(c) = self.claims.get(&format!("{ns}/{}", pc.name)) else {
                return Err(format!("persistentvolumeclaim \"{}\" not found", pc.name));
            };
            if c.metadata.deletion_timestamp.is_some() {
                return Err(format!(
                    "persistentvolumeclaim \"{}\" is being deleted",
                    pc.name
                ));
            }
            if pc.ephemeral {
                let owned = c.metadata.owner_references.iter().flatten().any(|o| {
                    o.controller == Some(true) && Some(&o.uid) == pod.metadata.uid.as_ref()
                });
                if !owned {
                    return Err(format!(
                        "PVC {ns}/{} was not created for pod {ns}/{} (pod is not owner)",
                        pc.name,
                        pod.metadata.name.as_deref().unwrap_or("")
                    ));
                }
            }
            let volume = c
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty());
            if let Some(v) = volume {
                st.bound.push(v.to_string());
                continue;
            }
            let delayed = self.classes.get(class_of(c)).is_some_and(|sc| {
                sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
            });
            if delayed {
                st.to_bind.push(c.clone());
            } else {
                immediate = true;
            }
        }
        if immediate {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        Ok(st)
    }

    /// Whether the volume may be used from the node (its `nodeAffinity`).
    pub fn reachable(pv: &PersistentVolume, node: &NodeInfo) -> bool {
        let required = pv
            .spec
            .as_ref()
            .and_then(|s| s.node_affinity.as_ref())
            .and_then(|a| a.required.as_ref());
        match required {
            Some(sel) => sel
                .node_selector_terms
                .iter()
                .any(|t| crate::plugins::node_affinity_term(t, node)),
            None => true,
        }
    }

    /// The smallest free volume that satisfies the claim and can be used from the node:
    /// same class, enough capacity, every access mode, the same volume mode, the claim's
    /// selector; a volume already reserved for this claim comes first. `also_taken`: volumes
    /// chosen for the pod's other claims.
    pub fn find_volume(
        &self,
        claim: &PersistentVolumeClaim,
        node: &NodeInfo,
        also_taken: &[&str],
    ) -> Option<&PersistentVolume> {
        let key = claim_key(claim);
        let spec = claim.spec.as_ref()?;
        let want = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| parse_units(&q.0))
            .unwrap_or(0);
        let mode = |m: Option<&String>| m.map_or("Filesystem", |s| s.as_str()).to_string();
        let taken: std::collections::HashSet<&String> = self
            .assumed
            .iter()
            .filter(|(c, _)| **c != key)
            .map(|(_, v)| v)
            .collect();
        let empty = Default::default();
        let mut best: Option<(&PersistentVolume, i64)> = None;
        for pv in self.volumes.values() {
            let Some(ps) = &pv.spec else { continue };
            let name = pv.metadata.name.as_ref();
            let mine = self.assumed.get(&key) == name
                || ps.claim_ref.as_ref().is_some_and(|r| {
                    r.namespace.as_deref() == claim.metadata.namespace.as_deref()
                        && r.name.as_deref() == claim.metadata.name.as_deref()
                });
            let free = ps.claim_ref.is_none()
                && name.is_some_and(|n| !taken.contains(n) && !also_taken.contains(&n.as_str()));
            if !(mine || free) || pv.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let size = ps
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .and_then(|q| parse_units(&q.0))
                .unwrap_or(0);
            let modes_ok = spec
                .access_modes
                .iter()
                .flatten()
                .all(|m| ps.access_modes.iter().flatten().any(|h| h == m));
            let fits = ps.storage_class_name.as_deref().unwrap_or("") == class_of(claim)
                && size >= want
                && modes_ok
                && mode(ps.volume_mode.as_ref()) == mode(spec.volume_mode.as_ref())
                && spec.selector.as_ref().is_none_or(|s| {
                    selector::matches(s, pv.metadata.labels.as_ref().unwrap_or(&empty))
                })
                && Self::reachable(pv, node);
            if !fits {
                continue;
            }
            if mine {
                return Some(pv);
            }
            if best.is_none_or(|(_, s)| size < s) {
                best = Some((pv, size));
            }
        }
        best.map(|(pv, _)| pv)
    }

    /// Whether the claim's class can provision a volume for the node (not a hand-made
    /// class, and the node is in the class's `allowedTopologies`).
    pub fn can_provision(&self, claim: &PersistentVolumeClaim, node: &NodeInfo) -> bool {
        let Some(sc) = self.classes.get(class_of(claim)) else {
            return false;
        };
        if sc.provisioner == NO_PROVISIONER {
            return false;
        }
        let terms = sc.allowed_topologies.as_deref().unwrap_or(&[]);
        terms.is_empty()
            || terms.iter().any(|t| {
                t.match_label_expressions
                    .iter()
                    .flatten()
                    .all(|e| node.label(&e.key).is_some_and(|v| e.values.contains(v)))
            })
    }

    /// Remembers the volume chosen for a claim until the claim is seen bound.
    pub fn assume(&mut self, claim: &PersistentVolumeClaim, volume: &str) {
        self.assumed.insert(claim_key(claim), volume.to_string());
    }

    /// Forgets the volume chosen for a claim (its binding could not be written).
    pub fn unassume(&mut self, claim: &PersistentVolumeClaim) {
        self.assumed.remove(&claim_key(claim));
    }

    /// Records a claim as the watch shows it (`None`: deleted).
    pub fn set_claim(&mut self, key: String, c: Option<PersistentVolumeClaim>) {
        match c {
            Some(c) => {
                let bound = c
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_ref())
                    .is_some_and(|v| !v.is_empty());
                if bound {
                    self.assumed.remove(&key);
                }
                self.claims.insert(key, c);
            }
            None => {
                self.assumed.remove(&key);
                self.claims.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_util::{node, only};
    use serde_json::json;

    fn claim(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "d"}, "spec": {
            "storageClassName": class, "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}}}}),
        )
        .unwrap()
    }

    fn local(name: &str, host: &str, size: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "storageClassName": "local", "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"], "local": {"path": "/mnt"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}}))
        .unwrap()
    }

    #[test]
    fn the_smallest_reachable_free_volume_is_found() {
        let mut v = Volumes::default();
        for pv in [
            local("big", "n", "10Gi"),
            local("small", "n", "2Gi"),
            local("tiny", "n", "512Mi"),
            local("elsewhere", "m", "1Gi"),
        ] {
            v.volumes.insert(pv.metadata.name.clone().unwrap(), pv);
        }
        let c = node(json!({"metadata": {"labels": {"kubernetes.io/hostname": "n"}}}));
        let n = only(&c);
        let name = |pv: Option<&PersistentVolume>| pv.and_then(|p| p.metadata.name.clone());
        let want = claim("data", "local", "1Gi");
        assert_eq!(name(v.find_volume(&want, n, &[])), Some("small".into()));
        v.assume(&claim("other", "local", "1Gi"), "small");
        assert_eq!(
            name(v.find_volume(&want, n, &[])),
            Some("big".into()),
            "small is taken"
        );
        assert_eq!(
            name(v.find_volume(&want, n, &["big"])),
            None,
            "so is big, by another claim"
        );
        assert_eq!(
            name(v.find_volume(&claim("data", "fast", "1Gi"), n, &[])),
            None,
            "no such class"
        );
        assert_eq!(
            name(v.find_volume(&claim("data", "local", "20Gi"), n, &[])),
            None,
            "too big"
        );
        // Provisioning: a hand-made class cannot; a real provisioner within its topology can.
        let sc = |prov: &str, topo: serde_json::Value| -> StorageClass {
            serde_json::from_value(json!({"metadata": {"name": "local"}, "provisioner": prov,
                "volumeBindingMode": "WaitForFirstConsumer", "allowedTopologies": topo}))
            .unwrap()
        };
        v.classes
            .insert("local".into(), sc(NO_PROVISIONER, json!(null)));
        assert!(!v.can_provision(&want, n));
        v.classes.insert(
            "local".into(),
            sc(
                "csi.example.com",
                json!([{"matchLabelExpressions": [
            {"key": "kubernetes.io/hostname", "values": ["m"]}]}]),
            ),
        );
        assert!(!v.can_provision(&want, n));
        v.classes
            .insert("local".into(), sc("csi.example.com", json!(null)));
        assert!(v.can_provision(&want, n));
    }
}
