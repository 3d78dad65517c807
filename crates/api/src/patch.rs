//! Patches: JSON Patch (RFC 6902), JSON Merge Patch (RFC 7386) and Kubernetes strategic
//! merge patch with its directives.

use serde_json::{Map, Value};

/// The patch content types the apiserver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    Apply,
}

impl PatchType {
    pub const ACCEPTED: [&'static str; 4] = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];

    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// A patch that cannot be applied; the apiserver answers 422 (or 400 for a malformed patch).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Failed(String),
    /// A JSON Patch `test` operation did not match.
    #[error("{0}")]
    TestFailed(String),
}

/// Applies an RFC 6902 JSON Patch document.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("json patch must be an array of operations".into()))?;
    let mut doc = doc.clone();
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed(format!("invalid JSON Patch: operation has no 'op': {op}"))
        })?;
        let path = op.get("path").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed(format!("invalid JSON Patch: operation has no 'path': {op}"))
        })?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("missing value for operation {kind:?} at {path}"))
            })
        };
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("missing from for operation {kind:?}"))
            })
        };
        match kind {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc.pointer(&pointer(from()?)?).cloned().ok_or_else(|| {
                    PatchError::Failed(format!(
                        "copy from {} failed: not found",
                        from().unwrap_or("")
                    ))
                })?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                let want = value()?;
                if doc.pointer(&pointer(path)?) != Some(&want) {
                    return Err(PatchError::TestFailed(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => return Err(PatchError::Malformed(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(doc)
}

fn pointer(path: &str) -> Result<String, PatchError> {
    if !path.is_empty() && !path.starts_with('/') {
        return Err(PatchError::Malformed(format!(
            "invalid JSON pointer {path:?}"
        )));
    }
    Ok(path.to_string())
}

fn split_parent(path: &str) -> Result<(String, String), PatchError> {
    let p = pointer(path)?;
    let idx = p
        .rfind('/')
        .ok_or_else(|| PatchError::Failed("cannot operate on the whole document".into()))?;
    let last = p[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((p[..idx].to_string(), last))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split_parent(path)?;
    let target = doc.pointer_mut(&parent).ok_or_else(|| {
        PatchError::Failed(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        ))
    })?;
    match target {
        Value::Object(m) => {
            m.insert(last, v);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| {
                        PatchError::Failed(format!(
                            "add operation does not apply: index out of range: {path:?}"
                        ))
                    })?
            };
            a.insert(i, v);
        }
        _ => {
            return Err(PatchError::Failed(format!(
                "add operation does not apply: doc is missing path: {path:?}"
            )))
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_parent(path)?;
    let missing = || {
        PatchError::Failed(format!(
            "remove operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 7386 JSON Merge Patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Elements are objects merged by this key.
    MergeByKey(&'static str),
    /// A list of scalars, merged as a set (e.g. `finalizers`).
    MergePrimitives,
}

/// Upstream's `patchStrategy:"merge"` / `patchMergeKey` tags for the built-in types, by
/// field path (names only, list positions left out). Lists not named here are replaced.
pub fn builtin_list_strategy(path: &[&str]) -> Option<ListStrategy> {
    let last = *path.last()?;
    let parent = path.len().checked_sub(2).map(|i| path[i]);
    let in_container = path[..path.len() - 1]
        .iter()
        .any(|p| matches!(*p, "containers" | "initContainers" | "ephemeralContainers"));
    use ListStrategy::*;
    Some(match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "imagePullSecrets"
        | "env"
        | "secrets" => MergeByKey("name"),
        "volumes" if !in_container => MergeByKey("name"),
        "volumeMounts" => MergeByKey("mountPath"),
        "volumeDevices" => MergeByKey("devicePath"),
        "ports" if in_container => MergeByKey("containerPort"),
        "ports" if path == ["spec", "ports"] => MergeByKey("port"),
        "hostAliases" => MergeByKey("ip"),
        "conditions" => MergeByKey("type"),
        "addresses" if parent == Some("status") => MergeByKey("type"),
        "ownerReferences" => MergeByKey("uid"),
        "topologySpreadConstraints" => MergeByKey("topologyKey"),
        "finalizers" => MergePrimitives,
        _ => return None,
    })
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch, with list strategies from `strategy` (by field path).
pub fn strategic_merge(
    doc: &Value,
    patch: &Value,
    strategy: &dyn Fn(&[&str]) -> Option<ListStrategy>,
) -> Result<Value, PatchError> {
    let mut path = Vec::new();
    merge_value(doc, patch, &mut path, strategy)
}

fn merge_value<'a>(
    doc: &Value,
    patch: &'a Value,
    path: &mut Vec<&'a str>,
    strategy: &dyn Fn(&[&str]) -> Option<ListStrategy>,
) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Ok(patch.clone());
    };
    match p.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove(DIRECTIVE);
            return Ok(strip_directives(&Value::Object(m)));
        }
        Some("delete") => return Ok(Value::Null),
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "Unknown patch type: {other}"
            )))
        }
        None => {}
    }
    let mut out = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if let Some(retain) = p.get(RETAIN_KEYS) {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError::Malformed("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k == DIRECTIVE
            || k == RETAIN_KEYS
            || k.starts_with(SET_ORDER)
            || k.starts_with(DELETE_PRIMITIVES)
        {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        path.push(k.as_str());
        let merged = match (out.get(k), v) {
            (old, Value::Array(items)) => {
                let old_items = old.and_then(Value::as_array).cloned().unwrap_or_default();
                let order = p.get(&format!("{SET_ORDER}{k}")).and_then(Value::as_array);
                Some(merge_list(&old_items, items, order, path, strategy)?)
            }
            (old, Value::Object(_)) => {
                let m = merge_value(old.unwrap_or(&Value::Null), v, path, strategy)?;
                (!m.is_null()).then_some(m)
            }
            (_, scalar) => Some(scalar.clone()),
        };
        path.pop();
        match merged {
            Some(m) => {
                out.insert(k.clone(), m);
            }
            None => {
                out.remove(k);
            }
        }
    }
    // Directives that only name a list: $deleteFromPrimitiveList and a bare $setElementOrder.
    for (k, v) in p {
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVES) {
            if let Some(Value::Array(items)) = out.get_mut(field) {
                let del = v.as_array().cloned().unwrap_or_default();
                items.retain(|x| !del.contains(x));
            }
        } else if let Some(field) = k.strip_prefix(SET_ORDER) {
            if !p.contains_key(field) {
                if let (Some(Value::Array(items)), Some(order)) =
                    (out.get(field).cloned(), v.as_array())
                {
                    path.push(field);
                    let key = match strategy(path) {
                        Some(ListStrategy::MergeByKey(key)) => Some(key),
                        _ => None,
                    };
                    path.pop();
                    out.insert(field.to_string(), Value::Array(reorder(items, order, key)));
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn merge_list<'a>(
    old: &[Value],
    patch: &'a [Value],
    order: Option<&Vec<Value>>,
    path: &mut Vec<&'a str>,
    strategy: &dyn Fn(&[&str]) -> Option<ListStrategy>,
) -> Result<Value, PatchError> {
    // `{"$patch": "replace"}` inside a list replaces the whole list.
    if patch
        .iter()
        .any(|e| e.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"))
    {
        let rest: Vec<Value> = patch
            .iter()
            .filter(|e| e.get(DIRECTIVE).is_none())
            .map(strip_directives)
            .collect();
        return Ok(Value::Array(rest));
    }
    let merged = match strategy(path) {
        None => patch.iter().map(strip_directives).collect(),
        Some(ListStrategy::MergePrimitives) => {
            let mut out = old.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            out
        }
        Some(ListStrategy::MergeByKey(key)) => {
            let mut out = old.to_vec();
            for item in patch {
                let Some(id) = item.get(key) else {
                    if item.get(DIRECTIVE).is_some() {
                        return Err(PatchError::Malformed(format!(
                            "map: {item} does not contain declared merge key: {key}"
                        )));
                    }
                    out.push(strip_directives(item));
                    continue;
                };
                let pos = out.iter().position(|o| o.get(key) == Some(id));
                let delete = item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => out[i] = merge_value(&out[i], item, path, strategy)?,
                    (None, false) => out.push(merge_value(&Value::Null, item, path, strategy)?),
                }
            }
            match order {
                Some(order) => reorder(out, order, Some(key)),
                None => out,
            }
        }
    };
    Ok(Value::Array(match (order, strategy(path)) {
        (Some(order), Some(ListStrategy::MergePrimitives)) => reorder(merged, order, None),
        _ => merged,
    }))
}

/// Orders `items` as `order` lists them (by merge key, or by value for scalars); items
/// the order does not name keep their relative order after the named ones.
fn reorder(items: Vec<Value>, order: &[Value], key: Option<&str>) -> Vec<Value> {
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
        None => v.clone(),
    };
    let order_ids: Vec<Value> = order.iter().map(&id).collect();
    let mut indexed: Vec<(usize, usize, Value)> = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let rank = order_ids
                .iter()
                .position(|o| *o == id(&v))
                .unwrap_or(usize::MAX);
            (rank, i, v)
        })
        .collect();
    indexed.sort_by_key(|(rank, i, _)| (*rank, *i));
    indexed.into_iter().map(|(_, _, v)| v).collect()
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    k.as_str() != DIRECTIVE
                        && k.as_str() != RETAIN_KEYS
                        && !k.starts_with(SET_ORDER)
                        && !k.starts_with(DELETE_PRIMITIVES)
                })
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_ops() {
        let doc = json!({"a": {"b": [1, 2]}, "c": 1});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/c", "value": 2},
                {"op": "remove", "path": "/a/b/0"},
                {"op": "copy", "from": "/c", "path": "/d"},
                {"op": "test", "path": "/d", "value": 2}
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"b": [2, 3]}, "c": 2, "d": 2}));
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/x"}])).is_err());
        assert!(matches!(
            json_patch(&doc, &json!([{"op": "test", "path": "/c", "value": 9}])),
            Err(PatchError::TestFailed(_))
        ));
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn merge_patch_nulls_delete() {
        let out = merge_patch(
            &json!({"a": 1, "b": {"c": 2, "d": 3}}),
            &json!({"a": null, "b": {"c": 5}}),
        );
        assert_eq!(out, json!({"b": {"c": 5, "d": 3}}));
    }

    fn smp(doc: Value, patch: Value) -> Value {
        strategic_merge(&doc, &patch, &builtin_list_strategy).unwrap()
    }

    #[test]
    fn strategic_merge_lists_by_key() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"}]}});
        let out = smp(
            doc.clone(),
            json!({"spec": {"containers": [{"name": "a", "image": "z"}]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "z");
        assert_eq!(out["spec"]["containers"][0]["env"][0]["value"], "1");
        assert_eq!(out["spec"]["containers"][1]["name"], "b");
        let out = smp(
            doc.clone(),
            json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        let out = smp(
            doc.clone(),
            json!({"spec": {"containers": [{"name": "c", "image": "w"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "w"}])
        );
        let out = smp(
            doc,
            json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "q"}]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["name"], "b");
        assert_eq!(out["spec"]["containers"][1]["image"], "q");
    }

    #[test]
    fn strategic_merge_directives() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
            "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            doc.clone(),
            json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"x": null}}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        let out = smp(
            doc.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let out = smp(
            doc.clone(),
            json!({"metadata": {"labels": {"$patch": "replace", "z": "3"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"z": "3"}));
        let out = smp(doc, json!({"spec": {"strategy": {"$patch": "delete"}}}));
        assert!(out["spec"].get("strategy").is_none());
    }
}
