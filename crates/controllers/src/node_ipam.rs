//! The node IPAM controller: gives every Node a `podCIDR` (one /24 of the cluster CIDR by
//! default), never one another existing node holds.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;

/// The cluster CIDR cut into per-node ranges.
#[derive(Clone, Copy, Debug)]
pub struct Ranges {
    /// The cluster CIDR's network address.
    pub base: Ipv4Addr,
    /// The cluster CIDR's prefix length.
    pub prefix: u8,
    /// Each node's prefix length (24).
    pub node_prefix: u8,
}

impl Ranges {
    /// How many node ranges the cluster CIDR holds.
    pub fn count(&self) -> u32 {
        1u32 << (self.node_prefix.saturating_sub(self.prefix)).min(31)
    }

    /// The `i`th node range as text.
    pub fn nth(&self, i: u32) -> String {
        let step = 1u32 << (32 - self.node_prefix as u32);
        format!(
            "{}/{}",
            Ipv4Addr::from(u32::from(self.base) + i * step),
            self.node_prefix
        )
    }

    /// The index of a node range, if it is one of ours.
    pub fn index(&self, cidr: &str) -> Option<u32> {
        let (ip, len) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        if len.parse::<u8>().ok()? != self.node_prefix {
            return None;
        }
        let off = u32::from(ip).checked_sub(u32::from(self.base))?;
        let i = off >> (32 - self.node_prefix as u32);
        (i < self.count()).then_some(i)
    }
}

/// Runs until dropped.
pub async fn run(client: kube::Client, ranges: Ranges) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    // node name → range index
    let mut held: HashMap<String, u32> = HashMap::new();
    // Nodes told there is no range left (said once per node, not on every update).
    let mut starved: std::collections::HashSet<String> = Default::default();
    let mut pending: Vec<Node> = Vec::new();
    let mut initializing = true;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => {
                held.clear();
                initializing = true;
            }
            Ok(watcher::Event::InitApply(n)) => pending.push(n),
            Ok(watcher::Event::InitDone) => {
                initializing = false;
                // Record every existing range before handing out new ones.
                for n in &pending {
                    note(&ranges, &mut held, n);
                }
                for n in std::mem::take(&mut pending) {
                    allocate(&api, &ranges, &mut held, &mut starved, &n).await;
                }
            }
            Ok(watcher::Event::Apply(n)) => {
                if initializing {
                    pending.push(n);
                } else {
                    note(&ranges, &mut held, &n);
                    allocate(&api, &ranges, &mut held, &mut starved, &n).await;
                }
            }
            Ok(watcher::Event::Delete(n)) => {
                if let Some(name) = &n.metadata.name {
                    held.remove(name);
                    starved.remove(name);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "node IPAM: watching nodes");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

fn note(ranges: &Ranges, held: &mut HashMap<String, u32>, n: &Node) {
    let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
    if let (Some(name), Some(i)) = (&n.metadata.name, cidr.and_then(|c| ranges.index(c))) {
        held.insert(name.clone(), i);
    }
}

async fn allocate(
    api: &Api<Node>,
    ranges: &Ranges,
    held: &mut HashMap<String, u32>,
    starved: &mut std::collections::HashSet<String>,
    n: &Node,
) {
    let Some(name) = n.metadata.name.clone() else {
        return;
    };
    if n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some() || held.contains_key(&name) {
        return;
    }
    let used: BTreeSet<u32> = held.values().copied().collect();
    let Some(i) = (0..ranges.count()).find(|i| !used.contains(i)) else {
        if starved.insert(name.clone()) {
            tracing::warn!(node = %name, "node IPAM: the cluster CIDR has no free range left for this node (a larger --cluster-cidr gives room for more nodes)");
        }
        return;
    };
    let cidr = ranges.nth(i);
    let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %name, %cidr, "node IPAM: assigned the pod CIDR");
            held.insert(name, i);
        }
        Err(e) => tracing::warn!(node = %name, error = %e, "node IPAM: assigning the pod CIDR"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cut_the_cluster_cidr() {
        let r = Ranges {
            base: "10.42.0.0".parse().unwrap(),
            prefix: 16,
            node_prefix: 24,
        };
        assert_eq!(r.count(), 256);
        assert_eq!(r.nth(0), "10.42.0.0/24");
        assert_eq!(r.nth(7), "10.42.7.0/24");
        assert_eq!(r.index("10.42.7.0/24"), Some(7));
        assert_eq!(r.index("10.43.0.0/24"), None);
        assert_eq!(r.index("10.42.7.0/25"), None);
        assert_eq!(r.index("junk"), None);
    }
}
