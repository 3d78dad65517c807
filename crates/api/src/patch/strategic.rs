//! Kubernetes strategic merge patch: lists merged by key or as sets, and the `$patch`,
//! `$retainKeys`, `$setElementOrder` and `$deleteFromPrimitiveList` directives.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use super::PatchError;

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
                let del: HashSet<String> = v
                    .as_array()
                    .map(|d| d.iter().map(identity).collect())
                    .unwrap_or_default();
                items.retain(|x| !del.contains(&identity(x)));
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
            let mut seen: HashSet<String> = out.iter().map(identity).collect();
            for v in patch {
                if seen.insert(identity(v)) {
                    out.push(v.clone());
                }
            }
            out
        }
        Some(ListStrategy::MergeByKey(key)) => {
            // Deleted items leave a hole until the end, and an index from merge key to the
            // items holding it keeps each lookup O(1): a list merge is linear, not
            // quadratic, in the sizes of the list and the patch.
            let mut out: Vec<Option<Value>> = old.iter().cloned().map(Some).collect();
            let mut by_key: HashMap<String, VecDeque<usize>> = HashMap::new();
            for (i, o) in old.iter().enumerate() {
                if let Some(id) = o.get(key) {
                    by_key.entry(identity(id)).or_default().push_back(i);
                }
            }
            for item in patch {
                let Some(id) = item.get(key) else {
                    if item.get(DIRECTIVE).is_some() {
                        return Err(PatchError::Malformed(format!(
                            "map: {item} does not contain declared merge key: {key}"
                        )));
                    }
                    out.push(Some(strip_directives(item)));
                    continue;
                };
                let slots = by_key.entry(identity(id)).or_default();
                let delete = item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
                match (slots.front().copied(), delete) {
                    (Some(i), true) => {
                        slots.pop_front();
                        out[i] = None;
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let merged = merge_value(
                            out[i].as_ref().unwrap_or(&Value::Null),
                            item,
                            path,
                            strategy,
                        )?;
                        out[i] = Some(merged);
                    }
                    (None, false) => {
                        slots.push_back(out.len());
                        out.push(Some(merge_value(&Value::Null, item, path, strategy)?));
                    }
                }
            }
            let out: Vec<Value> = out.into_iter().flatten().collect();
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
    let mut ranks: HashMap<String, usize> = HashMap::new();
    for (rank, o) in order.iter().enumerate() {
        ranks.entry(identity(&id(o))).or_insert(rank);
    }
    let mut indexed: Vec<(usize, usize, Value)> = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let rank = ranks.get(&identity(&id(&v))).copied().unwrap_or(usize::MAX);
            (rank, i, v)
        })
        .collect();
    indexed.sort_by_key(|(rank, i, _)| (*rank, *i));
    indexed.into_iter().map(|(_, _, v)| v).collect()
}

/// A hashable identity of a JSON value: equal values have equal identities (the JSON
/// text, whose object keys serde_json keeps sorted).
fn identity(v: &Value) -> String {
    match v {
        Value::String(s) => format!("s{s}"),
        other => other.to_string(),
    }
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

    #[test]
    fn list_merges_are_linear_and_never_multiply_the_document() {
        // 50,000 containers patched by 50,000 items: quadratic matching would take
        // billions of comparisons; every patch item lands on exactly one list item.
        let n = 50_000;
        let old: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("c{i}"), "image": "a"}))
            .collect();
        let patch: Vec<Value> = (0..n)
            .rev()
            .map(|i| json!({"name": format!("c{i}"), "image": "b"}))
            .collect();
        let order: Vec<Value> = (0..n)
            .rev()
            .map(|i| json!({"name": format!("c{i}")}))
            .collect();
        let out = smp(
            json!({"spec": {"containers": old}}),
            json!({"spec": {"containers": patch, "$setElementOrder/containers": order}}),
        );
        let items = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(items.len(), n);
        assert_eq!(
            items[0],
            json!({"name": format!("c{}", n - 1), "image": "b"})
        );
        assert!(items.iter().all(|c| c["image"] == "b"));
        // Duplicate keys in the patch merge into the same item; deletes remove one each.
        let out = smp(
            json!({"spec": {"containers": [{"name": "a"}, {"name": "a", "x": 1}, {"name": "b"}]}}),
            json!({"spec": {"containers": [
                {"name": "a", "$patch": "delete"},
                {"name": "a", "y": 2},
                {"name": "c"},
                {"name": "c", "z": 3},
            ]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "x": 1, "y": 2}, {"name": "b"}, {"name": "c", "z": 3}])
        );
        // Sets of primitives stay sets.
        let fin: Vec<Value> = (0..n).map(|i| json!(format!("f{i}"))).collect();
        let out = smp(
            json!({"metadata": {"finalizers": fin.clone()}}),
            json!({"metadata": {"finalizers": fin, "$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(
            out["metadata"]["finalizers"].as_array().unwrap().len(),
            n - 1
        );
    }
}
