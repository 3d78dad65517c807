//! What exists from the start: the default namespaces and the `kubernetes` Service with
//! its endpoints; and the background loops (etcd-style compaction, store health).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rkube_api::meta::{new_uid, now_rfc3339};
use rkube_api::ApiError;
use rkube_store::StoreError;
use serde_json::{json, Value};

use crate::{storage, State};

pub const DEFAULT_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The address other components and pods use to reach this apiserver.
pub fn advertise_address(bind: IpAddr) -> IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    crate::pki::host_addresses()
        .into_iter()
        .find(|a| a.is_ipv4() && !a.is_loopback())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn meta(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": new_uid(), "creationTimestamp": now_rfc3339()});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

/// Creates `obj` unless it exists; with `reconcile`, rewrites it when its `compare`
/// part differs.
async fn ensure(
    state: &Arc<State>,
    resource: (&str, &str, &str),
    obj: Value,
    reconcile: Option<&str>,
) -> Result<(), ApiError> {
    let info = state
        .registry
        .get(resource.0, resource.1, resource.2)
        .expect("registered");
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let key = storage::key(info, &ns, &name);
    match state
        .store
        .create(key.as_bytes(), storage::encode(&obj), None)
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists { current }) => {
            let Some(field) = reconcile else {
                return Ok(());
            };
            let mut existing: Value = serde_json::from_slice(&current.value)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if existing.get(field) == obj.get(field) {
                return Ok(());
            }
            existing[field] = obj[field].clone();
            state
                .store
                .update(
                    key.as_bytes(),
                    storage::encode(&existing),
                    Some(current.mod_revision),
                    None,
                )
                .await
                .map(|_| ())
                .map_err(|e| storage::store_error(e, info, &name))
        }
        Err(e) => Err(storage::store_error(e, info, &name)),
    }
}

/// Creates the default namespaces and the `kubernetes` Service, Endpoints and
/// EndpointSlice pointing at this apiserver.
pub async fn run(state: &Arc<State>, advertise: IpAddr, port: u16) -> Result<(), ApiError> {
    for ns in DEFAULT_NAMESPACES {
        let mut m = meta(ns, None);
        m["labels"] = json!({"kubernetes.io/metadata.name": ns});
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": m,
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        ensure(state, ("", "v1", "namespaces"), obj, None).await?;
    }
    for class in crate::admission::priority::system_classes() {
        ensure(
            state,
            ("scheduling.k8s.io", "v1", "priorityclasses"),
            class,
            None,
        )
        .await?;
    }
    let ip = state.service_cidr.nth(0);
    crate::registry::reserve_cluster_ip(state, ip, "default", "kubernetes").await?;
    let mut m = meta("kubernetes", Some("default"));
    m["labels"] = json!({"component": "apiserver", "provider": "kubernetes"});
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": m, "spec": {
        "type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
        "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster"}, "status": {"loadBalancer": {}}});
    ensure(state, ("", "v1", "services"), svc, Some("spec")).await?;
    let mut m = meta("kubernetes", Some("default"));
    m["labels"] = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": m, "subsets": [{
        "addresses": [{"ip": advertise.to_string()}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    ensure(state, ("", "v1", "endpoints"), eps, Some("subsets")).await?;
    let mut m = meta("kubernetes", Some("default"));
    m["labels"] = json!({"kubernetes.io/service-name": "kubernetes"});
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": m,
        "addressType": "IPv4",
        "endpoints": [{"addresses": [advertise.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
    ensure(
        state,
        ("discovery.k8s.io", "v1", "endpointslices"),
        slice,
        Some("endpoints"),
    )
    .await?;
    Ok(())
}

/// Compacts the store's history every `interval`, keeping one interval of history, as
/// the upstream apiserver does for etcd.
pub async fn compaction_loop(state: Arc<State>, interval: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Ok(current) = state.store.current_revision().await else {
            continue;
        };
        if let Some(rev) = previous {
            if let Err(e) = state.compact(rev).await {
                if !matches!(e, StoreError::Compacted { .. }) {
                    tracing::warn!("compacting the datastore at revision {rev}: {e}");
                }
            }
        }
        previous = Some(current);
    }
}

/// Marks the store unhealthy for `/readyz` and `/livez` while it cannot answer.
pub async fn store_health_loop(state: Arc<State>) {
    loop {
        let ok = tokio::time::timeout(Duration::from_secs(2), state.store.current_revision()).await;
        state
            .store_failed
            .store(!matches!(ok, Ok(Ok(_))), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
