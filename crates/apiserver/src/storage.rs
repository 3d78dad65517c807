//! Objects in the store: keys, encoding, resourceVersion = store revision, and store
//! errors as API errors.

use std::sync::Arc;

use bytes::Bytes;
use rkube_api::meta::ObjectMeta;
use rkube_api::registry::Conversion;
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
    decode_at(&kv.value, kv.mod_revision).map_err(|e| {
        ApiError::internal(format!(
            "object {} in storage: {}",
            String::from_utf8_lossy(&kv.key),
            e.message
        ))
    })
}

/// Decodes stored object bytes as `info`'s version serves them.
pub fn decode_for(info: &ResourceInfo, value: &[u8], revision: i64) -> Result<Value, ApiError> {
    Ok(info.from_storage(decode_at(value, revision)?))
}

/// Encodes an object of `info`'s version for the store, converted to the stored version.
pub fn encode_for(info: &ResourceInfo, obj: &Value) -> Bytes {
    match info.conversion {
        None => encode(obj),
        Some(c) => encode(&(c.to_storage)(obj.clone())),
    }
}

/// Appends the client JSON of a stored object in the served version: spliced without
/// parsing when no conversion is needed.
pub fn write_served_json(
    conversion: Option<&Conversion>,
    out: &mut Vec<u8>,
    value: &[u8],
    revision: i64,
) -> Result<(), ApiError> {
    let Some(c) = conversion else {
        return write_client_json(out, value, revision);
    };
    let obj = (c.from_storage)(decode_at(value, revision)?);
    serde_json::to_writer(out, &obj).map_err(|e| ApiError::internal(e.to_string()))
}

/// Decodes stored object bytes with resourceVersion `revision`.
pub fn decode_at(value: &[u8], revision: i64) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::internal(format!("a stored object does not decode: {e}")))?;
    v.set_meta("resourceVersion", revision.to_string());
    Ok(v)
}

/// Encodes an object for the store: JSON with `metadata` first and no resourceVersion
/// (the store assigns it), so a read can splice the revision in without parsing.
pub fn encode(obj: &Value) -> Bytes {
    let Some(map) = obj.as_object() else {
        return Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
    };
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    let mut first = true;
    let mut field = |out: &mut Vec<u8>, k: &str, v: &Value| {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut *out, k).unwrap_or_default();
        out.push(b':');
        serde_json::to_writer(&mut *out, v).unwrap_or_default();
    };
    if let Some(meta) = map.get("metadata") {
        let mut m = meta.clone();
        if let Some(o) = m.as_object_mut() {
            o.remove("resourceVersion");
        }
        field(&mut out, "metadata", &m);
    }
    for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "metadata") {
        field(&mut out, k, v);
    }
    out.push(b'}');
    Bytes::from(out)
}

const META_PREFIX: &[u8] = b"{\"metadata\":{";

/// Appends the client JSON of a stored object: `metadata.resourceVersion` set to
/// `revision`, spliced in without parsing for objects written by `encode`, else decoded
/// and encoded again.
pub fn write_client_json(out: &mut Vec<u8>, value: &[u8], revision: i64) -> Result<(), ApiError> {
    if let Some(rest) = value.strip_prefix(META_PREFIX) {
        out.reserve(value.len() + 40);
        out.extend_from_slice(META_PREFIX);
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(revision.to_string().as_bytes());
        out.push(b'"');
        if rest.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        return Ok(());
    }
    let mut v: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::internal(format!("an object in storage does not decode: {e}")))?;
    v.set_meta("resourceVersion", revision.to_string());
    serde_json::to_writer(out, &v).map_err(|e| ApiError::internal(e.to_string()))
}

/// The client form of a stored object as JSON bytes, in `info`'s version.
pub fn client_bytes(info: &ResourceInfo, kv: &KeyValue) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    write_served_json(info.conversion, &mut out, &kv.value, kv.mod_revision)?;
    Ok(out)
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
        // etcd's NOSPACE alarm: upstream passes the message through as a 500.
        e @ StoreError::NoSpace { .. } => ApiError::new(500, "InternalError", e.to_string()),
        e @ StoreError::TooLarge { .. } => {
            ApiError::new(413, "RequestEntityTooLarge", e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// The store's latest revision, as a consistent read needs it.
pub async fn current_revision(
    store: &Arc<dyn Store>,
    info: &ResourceInfo,
) -> Result<i64, ApiError> {
    store
        .current_revision()
        .await
        .map_err(|e| store_error(e, info, ""))
}

/// Reads one object's stored form.
pub async fn get_kv(
    store: &Arc<dyn Store>,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
) -> Result<KeyValue, ApiError> {
    let k = key(info, ns, name);
    match store.get(k.as_bytes(), 0).await {
        Ok((Some(kv), _)) => Ok(kv),
        Ok((None, _)) => Err(ApiError::not_found(info.group, info.plural, name)),
        Err(e) => Err(store_error(e, info, name)),
    }
}

/// Reads one object.
pub async fn get(
    store: &Arc<dyn Store>,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
) -> Result<(Value, i64), ApiError> {
    let kv = get_kv(store, info, ns, name).await?;
    Ok((info.from_storage(decode(&kv)?), kv.mod_revision))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Any served resource without a version conversion: splicing is the same for all.
    fn info() -> ResourceInfo {
        rkube_api::Registry::builtin()
            .all()
            .iter()
            .find(|i| i.conversion.is_none())
            .map(|i| ResourceInfo { ..*i })
            .unwrap()
    }

    #[test]
    fn spliced_resource_versions_equal_decoded_ones() {
        let obj = json!({"apiVersion": "v1", "kind": "Widget", "data": {"metadata": "{\"metadata\":{"},
                         "metadata": {"name": "c", "resourceVersion": "7", "labels": {"a": "b"}}});
        let kv = KeyValue {
            key: Bytes::from_static(b"/k"),
            value: encode(&obj),
            create_revision: 3,
            mod_revision: 9,
            version: 1,
            lease: 0,
        };
        assert!(kv.value.starts_with(META_PREFIX));
        let spliced: Value = serde_json::from_slice(&client_bytes(&info(), &kv).unwrap()).unwrap();
        assert_eq!(spliced, decode(&kv).unwrap());
        assert_eq!(spliced["metadata"]["resourceVersion"], "9");
        let empty = KeyValue {
            value: Bytes::from_static(b"{\"metadata\":{}}"),
            ..kv.clone()
        };
        let v: Value = serde_json::from_slice(&client_bytes(&info(), &empty).unwrap()).unwrap();
        assert_eq!(v, json!({"metadata": {"resourceVersion": "9"}}));
        let other = KeyValue {
            value: Bytes::from_static(b"{\"kind\":\"X\",\"metadata\":{\"name\":\"n\"}}"),
            ..kv
        };
        let v: Value = serde_json::from_slice(&client_bytes(&info(), &other).unwrap()).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "9");
    }
}
