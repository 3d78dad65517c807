//! Service ClusterIPs (upstream's ipallocator): each allocated address is an `IPAddress`
//! object (networking.k8s.io/v1, as upstream 1.33 keeps them), created with
//! create-if-absent, so allocation is atomic even with several servers on one etcd.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rkube_api::meta::{new_uid, now_rfc3339};
use rkube_api::{ApiError, ResourceInfo};
use rkube_store::StoreError;
use serde_json::{json, Value};

use crate::{storage, State};

/// An IPv4 CIDR such as `10.43.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub base: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (like 10.43.0.0/16)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("{s:?}: the prefix length must be 8..30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Cidr {
    /// Usable host addresses (network and broadcast excluded).
    pub fn size(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }
    /// The `n`-th host address (0-based: `nth(0)` is `.1`).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1 + n)
    }
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.base)
    }
}

fn ipaddresses(state: &State) -> Result<&ResourceInfo, ApiError> {
    state
        .registry
        .get("networking.k8s.io", "v1", "ipaddresses")
        .ok_or_else(|| ApiError::internal("ipaddresses are not served"))
}

/// Reserves `ip` for the Service `ns/svc`; false if another Service holds it.
pub async fn reserve(
    state: &Arc<State>,
    ip: Ipv4Addr,
    ns: &str,
    svc: &str,
) -> Result<bool, ApiError> {
    let info = ipaddresses(state)?;
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IPAddress",
        "metadata": {
            "name": ip.to_string(),
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
            "labels": {
                "ipaddress.kubernetes.io/ip-family": "IPv4",
                "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io",
            },
        },
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": ns, "name": svc}},
    });
    let key = storage::key(info, "", &ip.to_string());
    match state
        .store
        .create(key.as_bytes(), storage::encode(&obj), None)
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { current }) => {
            // Ours already (a retried create): the parent is this Service.
            let v: Value = serde_json::from_slice(&current.value).unwrap_or_default();
            Ok(v.pointer("/spec/parentRef/namespace")
                .and_then(Value::as_str)
                == Some(ns)
                && v.pointer("/spec/parentRef/name").and_then(Value::as_str) == Some(svc))
        }
        Err(e) => Err(storage::store_error(e, info, &ip.to_string())),
    }
}

/// Reserves a free address of the service CIDR, starting at a random one; `.1` is the
/// `kubernetes` Service's.
pub async fn allocate_next(state: &Arc<State>, ns: &str, svc: &str) -> Result<Ipv4Addr, ApiError> {
    let cidr = state.service_cidr;
    let start = random_below(cidr.size());
    for i in 0..cidr.size() {
        let n = (start + i) % cidr.size();
        if n == 0 {
            continue;
        }
        let ip = cidr.nth(n);
        if reserve(state, ip, ns, svc).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(format!(
        "failed to allocate a serviceIP: range is full ({cidr})"
    )))
}

/// Frees an address (errors are ignored: a leaked address is found by its parentRef).
pub async fn release(state: &Arc<State>, ip: &str) {
    if let Ok(info) = ipaddresses(state) {
        let _ = state
            .store
            .delete(storage::key(info, "", ip).as_bytes(), None)
            .await;
    }
}

/// A random number below `n`.
pub(super) fn random_below(n: u32) -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.43.0.0/16".parse().unwrap();
        assert_eq!(c.nth(0), Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(c.size(), 65534);
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!("10.43.0.0".parse::<Cidr>().is_err());
    }
}
