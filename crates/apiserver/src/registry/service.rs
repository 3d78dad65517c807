//! Services: ClusterIPs and NodePorts are allocated before a write and released when a
//! write that held them fails, or when the Service no longer holds them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rkube_api::meta::ObjectMeta;
use rkube_api::{ApiError, Cause};
use serde_json::{json, Value};

use super::{ipallocator, portallocator, Hooks};
use crate::State;

pub struct ServiceHooks;

#[async_trait::async_trait]
impl Hooks for ServiceHooks {
    async fn begin_create(&self, state: &Arc<State>, obj: &mut Value) -> Result<(), ApiError> {
        allocate(state, obj, None).await
    }

    async fn begin_update(
        &self,
        state: &Arc<State>,
        new: &mut Value,
        old: &Value,
    ) -> Result<(), ApiError> {
        allocate(state, new, Some(old)).await
    }

    async fn finish(
        &self,
        state: &Arc<State>,
        old: Option<&Value>,
        new: Option<&Value>,
        committed: bool,
    ) {
        // What the losing side holds and the winning side does not is released.
        let (gone, kept) = if committed { (old, new) } else { (new, old) };
        let Some(gone) = gone else {
            return;
        };
        let kept = kept.map(Held::of).unwrap_or_default();
        let gone = Held::of(gone);
        for ip in gone.ips.difference(&kept.ips) {
            ipallocator::release(state, ip).await;
        }
        for port in gone.ports.difference(&kept.ports) {
            portallocator::release(state, *port).await;
        }
    }
}

/// The addresses and ports a Service object holds.
#[derive(Default)]
struct Held {
    ips: BTreeSet<String>,
    ports: BTreeSet<i64>,
}

impl Held {
    fn of(svc: &Value) -> Held {
        let ips = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(String::from)
            .into_iter()
            .collect();
        let ports = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        Held { ips, ports }
    }
}

/// Allocates what a Service needs (ClusterIP, NodePorts) on create (`old` = None) or
/// update, keeping what `old` had. Nothing is released here: `finish` does that once the
/// write's outcome is known. On error, `obj` names only what was reserved for it.
async fn allocate(
    state: &Arc<State>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let ns = obj.namespace().to_string();
    let name = obj.name().to_string();
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
        .filter(|ip| !ip.is_empty())
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
    } else if requested.is_empty() && old_ip.is_some() {
        let ip = old_ip.clone().unwrap_or_default();
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
    } else if old_ip.as_deref() == Some(requested.as_str()) {
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
        if !ipallocator::reserve(state, ip, &ns, &name).await? {
            // Not ours: the failed write must not release it.
            obj["spec"]["clusterIP"] = json!("");
            return Err(invalid(
                "spec.clusterIPs",
                json!([requested]),
                format!("failed to allocate IP {requested}: provided IP is already allocated"),
            ));
        }
        obj["spec"]["clusterIPs"] = json!([requested]);
    } else {
        let ip = ipallocator::allocate_next(state, &ns, &name)
            .await?
            .to_string();
        obj["spec"]["clusterIP"] = json!(ip);
        obj["spec"]["clusterIPs"] = json!([ip]);
    }

    // NodePorts.
    let owner = format!("{ns}/{name}");
    let wants_ports = ty == "NodePort"
        || (ty == "LoadBalancer"
            && obj.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)));
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
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
            if !portallocator::in_range(requested) {
                return Err(invalid(
                    &format!("spec.ports[{i}].nodePort"),
                    json!(requested),
                    format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    portallocator::NODE_PORT_MIN, portallocator::NODE_PORT_MAX
                ),
                ));
            }
            if !portallocator::reserve(state, requested, &owner).await? {
                if let Some(m) = p.as_object_mut() {
                    // Not ours: the failed write must not release it.
                    m.remove("nodePort");
                }
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
            portallocator::allocate_next(state, &owner).await?
        };
        if p.is_object() {
            p["nodePort"] = json!(port);
        }
    }
    Ok(())
}
