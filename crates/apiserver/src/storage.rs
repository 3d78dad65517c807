//! Objects in the store: keys, encoding, resourceVersion = store revision, and store
//! errors as API errors.

use std::sync::Arc;

use bytes::Bytes;
use rkube_api::meta::ObjectMeta;
use rkube_api::{ApiError, ResourceInfo};
use rkube_store::{KeyValue, RangeRequest, Store, StoreError};
use serde_json::Value;

/// The store key of one object.
pub fn key(info: &ResourceInfo, ns: &str, name: &str) -> String {
    if info.namespaced {
        format!("/registry/{}/{ns}/{name}", info.storage_prefix)
    } else {
        format!("/registry/{}/{name}", info.storage_prefix)
    }
}

/// The key prefix of a resource, optionally narrowed to one namespace.
pub fn prefix(info: &ResourceInfo, ns: &str) -> String {
    if info.namespaced && !ns.is_empty() {
        format!("/registry/{}/{ns}/", info.storage_prefix)
    } else {
        format!("/registry/{}/", info.storage_prefix)
    }
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "object {} in storage does not decode: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    v.set_meta("resourceVersion", kv.mod_revision.to_string());
    Ok(v)
}

/// Encodes an object for the store (without resourceVersion, which the store assigns).
pub fn encode(obj: &Value) -> Bytes {
    let mut o = obj.clone();
    o.remove_meta("resourceVersion");
    Bytes::from(serde_json::to_vec(&o).unwrap_or_default())
}

/// Store errors as the apiserver reports them.
pub fn store_error(e: StoreError, info: &ResourceInfo, name: &str) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::not_found(info.group, info.plural, name),
        StoreError::AlreadyExists { .. } => ApiError::already_exists(info.group, info.plural, name),
        StoreError::Conflict { .. } => ApiError::stale(info.group, info.plural, name),
        StoreError::Compacted { compacted, .. } => ApiError::expired(format!(
            "The resourceVersion for the provided list is too old (compacted at {compacted})."
        )),
        StoreError::FutureRevision { requested, current } => ApiError::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        )),
        other => ApiError::internal(other.to_string()),
    }
}

/// Reads one object.
pub async fn get(
    store: &Arc<dyn Store>,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
) -> Result<(Value, i64), ApiError> {
    let k = key(info, ns, name);
    match store.get(k.as_bytes(), 0).await {
        Ok((Some(kv), _)) => Ok((decode(&kv)?, kv.mod_revision)),
        Ok((None, _)) => Err(ApiError::not_found(info.group, info.plural, name)),
        Err(e) => Err(store_error(e, info, name)),
    }
}

/// One page of a range at a fixed revision (0 = latest).
pub async fn range(
    store: &Arc<dyn Store>,
    info: &ResourceInfo,
    ns: &str,
    start: Option<&[u8]>,
    revision: i64,
    limit: usize,
) -> Result<rkube_store::RangeResponse, ApiError> {
    let p = prefix(info, ns);
    let mut req = RangeRequest::prefix(p.as_bytes());
    if let Some(s) = start {
        req = req.start_at(s);
    }
    if revision > 0 {
        req = req.at(revision);
    }
    if limit > 0 {
        req = req.limit(limit);
    }
    store.range(req).await.map_err(|e| store_error(e, info, ""))
}
