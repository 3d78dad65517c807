//! Service ClusterIPs and NodePorts. Each allocated ClusterIP is an `IPAddress` object
//! (networking.k8s.io/v1, as upstream 1.33 keeps them) and each NodePort a reserved
//! key, both created with create-if-absent: allocation is atomic even with several
//! servers on one etcd.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rkube_api::meta::{new_uid, now_rfc3339, ObjectMeta};
use rkube_api::{ApiError, Cause, ResourceInfo};
use rkube_store::StoreError;
use serde_json::{json, Value};

use crate::{storage, State};

/// An IPv4 CIDR such as `10.43.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
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
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.base)
    }
}

pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

fn ipaddresses(state: &State) -> &ResourceInfo {
    state
        .registry
        .get("networking.k8s.io", "v1", "ipaddresses")
        .expect("ipaddresses are registered")
}

fn node_port_key(port: i64) -> String {
    format!("/registry/ranges/servicenodeports/{port}")
}

/// Reserves a ClusterIP for a Service; false if it is taken.
pub async fn reserve_ip(
    state: &Arc<State>,
    ip: Ipv4Addr,
    ns: &str,
    svc: &str,
) -> Result<bool, ApiError> {
    let info = ipaddresses(state);
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

async fn reserve_port(state: &Arc<State>, port: i64, owner: &str) -> Result<bool, ApiError> {
    match state
        .store
        .create(
            node_port_key(port).as_bytes(),
            owner.as_bytes().to_vec().into(),
            None,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { current }) => {
            Ok(current.value.as_ref() == owner.as_bytes())
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// Allocates what a Service needs (ClusterIP, NodePorts) on create (`old` = None) or
/// update; keeps what `old` had. Other kinds pass through.
pub async fn allocate(
    state: &Arc<State>,
    info: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if info.kind != "Service" || !info.group.is_empty() {
        return Ok(());
    }
    let ns = obj.namespace().to_string();
    let name = obj.name().to_string();
    let owner = format!("{ns}/{name}");
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let invalid = |field: &str, v: Value, msg: String| {
        ApiError::invalid("", "Service", &name, vec![Cause::invalid(field, &v, msg)])
    };

    // ClusterIP.
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(String::from);
    let requested = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ty == "ExternalName" {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    } else if requested == "None" {
        obj["spec"]["clusterIPs"] = json!(["None"]);
    } else if requested.is_empty() && old_ip.as_deref().is_some_and(|i| !i.is_empty()) {
        let ip = old_ip.clone().unwrap_or_default();
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
    } else if old_ip.as_deref() == Some(requested.as_str()) && !requested.is_empty() {
        obj["spec"]["clusterIPs"] = json!([requested]);
    } else if !requested.is_empty() {
        let ip: Ipv4Addr = requested.parse().map_err(|_| {
            invalid(
                "spec.clusterIPs[0]",
                json!(requested),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
            )
        })?;
        if !state.service_cidr.contains(ip) {
            return Err(invalid("spec.clusterIPs", json!([requested]), format!(
                "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}",
                state.service_cidr
            )));
        }
        if !reserve_ip(state, ip, &ns, &name).await? {
            return Err(invalid(
                "spec.clusterIPs",
                json!([requested]),
                format!("failed to allocate IP {requested}: provided IP is already allocated"),
            ));
        }
        obj["spec"]["clusterIPs"] = json!([requested]);
    } else {
        let cidr = state.service_cidr;
        let start = fastrand_u32(cidr.size());
        let mut found = None;
        for i in 0..cidr.size() {
            // .1 is the kubernetes Service's.
            let n = (start + i) % cidr.size();
            if n == 0 {
                continue;
            }
            let ip = cidr.nth(n);
            if reserve_ip(state, ip, &ns, &name).await? {
                found = Some(ip);
                break;
            }
        }
        let ip = found.ok_or_else(|| {
            ApiError::internal(format!(
                "failed to allocate a serviceIP: range is full ({cidr})"
            ))
        })?;
        obj["spec"]["clusterIP"] = json!(ip.to_string());
        obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
    }

    // NodePorts.
    let wants_ports = ty == "NodePort"
        || (ty == "LoadBalancer"
            && obj.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)));
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ports: Vec<Value> = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, p) in ports.iter_mut().enumerate() {
        if !wants_ports {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
            continue;
        }
        let requested = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        let previous = old_ports
            .iter()
            .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
            .and_then(|o| o.get("nodePort"))
            .and_then(Value::as_i64);
        let port = if requested != 0 {
            if !(i64::from(NODE_PORT_MIN)..=i64::from(NODE_PORT_MAX)).contains(&requested) {
                return Err(invalid(&format!("spec.ports[{i}].nodePort"), json!(requested), format!(
                    "provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}"
                )));
            }
            if !reserve_port(state, requested, &owner).await? {
                return Err(invalid(
                    &format!("spec.ports[{i}].nodePort"),
                    json!(requested),
                    "provided port is already allocated".into(),
                ));
            }
            requested
        } else if let Some(prev) = previous {
            prev
        } else {
            let span = u32::from(NODE_PORT_MAX - NODE_PORT_MIN) + 1;
            let start = fastrand_u32(span);
            let mut found = None;
            for k in 0..span {
                let candidate = i64::from(NODE_PORT_MIN) + i64::from((start + k) % span);
                if reserve_port(state, candidate, &owner).await? {
                    found = Some(candidate);
                    break;
                }
            }
            found
                .ok_or_else(|| ApiError::internal("failed to allocate a nodePort: range is full"))?
        };
        p["nodePort"] = json!(port);
    }
    if obj.pointer("/spec/ports").is_some() {
        obj["spec"]["ports"] = json!(ports);
    }
    // NodePorts the update no longer uses are released.
    for op in &old_ports {
        if let Some(np) = op.get("nodePort").and_then(Value::as_i64) {
            if !ports
                .iter()
                .any(|p| p.get("nodePort").and_then(Value::as_i64) == Some(np))
            {
                let _ = state.store.delete(node_port_key(np).as_bytes(), None).await;
            }
        }
    }
    if let (Some(old_ip), Some(new_ip)) = (
        old_ip,
        obj.pointer("/spec/clusterIP").and_then(Value::as_str),
    ) {
        if old_ip != new_ip && old_ip != "None" && !old_ip.is_empty() {
            release_ip(state, &old_ip).await;
        }
    }
    Ok(())
}

async fn release_ip(state: &Arc<State>, ip: &str) {
    let info = ipaddresses(state);
    let _ = state
        .store
        .delete(storage::key(info, "", ip).as_bytes(), None)
        .await;
}

/// Releases what a deleted (or never stored) Service held.
pub async fn release(state: &Arc<State>, info: &ResourceInfo, obj: &Value) {
    if info.kind != "Service" || !info.group.is_empty() {
        return;
    }
    if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if ip != "None" && !ip.is_empty() {
            release_ip(state, ip).await;
        }
    }
    for p in obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            let _ = state.store.delete(node_port_key(np).as_bytes(), None).await;
        }
    }
}

fn fastrand_u32(n: u32) -> u32 {
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
