//! Server-side apply: field ownership in `metadata.managedFields` (FieldsV1), the merge
//! of an applied configuration into the live object, conflicts between managers, and
//! ownership moving on ordinary updates.
//!
//! Lists follow the built-in merge keys (`patch::builtin_list_strategy`): keyed lists are
//! maps of their items (`k:{"name":"x"}`), primitive sets are sets (`v:"x"`), every other
//! list is atomic and owned as a whole.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::patch::{builtin_list_strategy, ListStrategy};

/// One field: path elements as FieldsV1 writes them (`f:spec`, `k:{"name":"a"}`, `v:"x"`).
pub type FieldPath = Vec<String>;
/// The fields a manager owns.
pub type FieldSet = BTreeSet<FieldPath>;

/// Marks a list item (or map) owned as a node of its own in FieldsV1.
const SELF: &str = ".";
/// The manager upstream credits with the fields of an object applied for the first time.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// Fields the server sets, which nobody owns.
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Manager {
    /// The field manager (`kubectl`, `kube-controller-manager`).
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The group-version the fields are in.
    pub api_version: String,
    /// When the manager last changed them (RFC 3339).
    pub time: String,
    /// "" or `status`: the part of the object written.
    pub subresource: String,
    /// The fields it owns.
    pub fields: FieldSet,
}

impl Manager {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

/// A conflict: a field the applier changes that another manager owns.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    /// The field manager that owns the field.
    pub manager: String,
    /// The group-version it applied in.
    pub api_version: String,
    /// `.spec.replicas`, as upstream prints it.
    pub field: String,
}

/// The fields of an object: every leaf, keyed list item and set element; `status` only
/// for the status subresource.
pub fn fields_of(obj: &Value, status: bool) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    for (k, v) in m {
        let own = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" => status,
            _ => !status,
        };
        if !own {
            continue;
        }
        if k == "metadata" {
            let Some(meta) = v.as_object() else { continue };
            for (mk, mv) in meta {
                if !UNOWNED_META.contains(&mk.as_str()) {
                    let mut path = vec![format!("f:{k}"), format!("f:{mk}")];
                    walk(mv, &mut path, &mut vec![k.as_str(), mk.as_str()], &mut out);
                }
            }
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        walk(v, &mut path, &mut vec![k.as_str()], &mut out);
    }
    out
}

fn walk<'a>(v: &'a Value, path: &mut FieldPath, names: &mut Vec<&'a str>, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                names.push(k);
                walk(child, path, names, out);
                names.pop();
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match builtin_list_strategy(names) {
            Some(ListStrategy::MergeByKey(key)) if items.iter().all(|i| i.get(key).is_some()) => {
                for item in items {
                    path.push(item_key(key, &item[key]));
                    let mut node = path.clone();
                    node.push(SELF.into());
                    out.insert(node);
                    walk(item, path, names, out);
                    path.pop();
                }
            }
            Some(ListStrategy::MergePrimitives) => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

fn item_key(key: &str, value: &Value) -> String {
    format!("k:{}", json!({ key: value }))
}

/// The value at a field path, if the object has it.
fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        if el == SELF {
            return Some(cur);
        }
        cur = step(cur, el)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    match el.strip_prefix("f:") {
        Some(f) => cur.get(f),
        None => cur.as_array()?.iter().find(|i| item_matches(i, el)),
    }
}

/// Whether a list item is the one a `k:` or `v:` path element names.
fn item_matches(item: &Value, el: &str) -> bool {
    if let Some(k) = el.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
        return !want.is_empty() && want.iter().all(|(wk, wv)| item.get(wk) == Some(wv));
    }
    el.strip_prefix("v:")
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .is_some_and(|v| *item == v)
}

/// Removes the field at `path` (a leaf, a keyed item or a set element).
fn remove_path(obj: &mut Value, path: &[String]) {
    let (last, parents) = match path.split_last() {
        Some((l, p)) if l == SELF => match p.split_last() {
            Some((l, p)) => (l, p),
            None => return,
        },
        Some(x) => x,
        None => return,
    };
    let mut cur = obj;
    for el in parents {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            let Some(items) = cur.as_array_mut() else {
                return;
            };
            let found = items.iter().position(|i| item_matches(i, el));
            found.and_then(move |i| items.get_mut(i))
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(items) = cur.as_array_mut() {
        items.retain(|i| !item_matches(i, last));
    }
}

/// Merges an applied configuration into the live object: maps field by field, keyed
/// lists item by item, sets by union; atomic lists and scalars are replaced.
fn merge(live: &mut Value, applied: &Value, names: &mut Vec<String>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                names.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) => merge(lv, av, names),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            match builtin_list_strategy(&refs) {
                Some(ListStrategy::MergeByKey(key)) => {
                    for ai in a {
                        match l.iter_mut().find(|li| li.get(key) == ai.get(key)) {
                            Some(li) => merge(li, ai, names),
                            None => l.push(ai.clone()),
                        }
                    }
                }
                Some(ListStrategy::MergePrimitives) => {
                    for ai in a {
                        if !l.contains(ai) {
                            l.push(ai.clone());
                        }
                    }
                }
                None => *l = a.clone(),
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// The `managedFields` of an object.
pub fn managers(obj: &Value) -> Vec<Manager> {
    let Some(list) = obj
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Manager {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: s("subresource"),
                fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
            }
        })
        .collect()
}

/// Writes `managedFields` into the object (removed when there are none).
pub fn set_managers(obj: &mut Value, managers: &[Manager]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({"manager": m.manager, "operation": m.operation,
                "apiVersion": m.api_version, "time": m.time, "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields)});
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// A field set in the FieldsV1 form: nested objects, `{}` for leaves, `".": {}` for a
/// node that is itself a member and has members below it.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            let next = cur.entry(el.clone()).or_insert_with(|| json!({}));
            cur = match next.as_object_mut() {
                Some(m) => m,
                None => break,
            };
        }
    }
    // A node listed with members below it keeps its own membership as ".".
    Value::Object(root)
}

/// Reads a FieldsV1 tree.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in m {
            path.push(k.clone());
            go(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// `.spec.replicas`, `.spec.containers[name="a"].image`, as upstream prints field paths.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// What an apply asks for.
pub struct ApplyRequest<'a> {
    /// The applying field manager.
    pub manager: &'a str,
    /// The group-version of the applied configuration.
    pub api_version: &'a str,
    /// Take fields other managers own instead of answering with a conflict.
    pub force: bool,
    /// `status` for the status subresource, else empty.
    pub subresource: &'a str,
    /// The time recorded in managedFields (RFC 3339).
    pub now: &'a str,
}

/// Applies `applied` over `live` (None: the object does not exist yet) for one manager;
/// returns the merged object with its managedFields, or the conflicts.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    req: &ApplyRequest<'_>,
) -> Result<Value, Vec<Conflict>> {
    let status = req.subresource == "status";
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let mut managers = managers(&result);
    if managers.is_empty() {
        if let Some(l) = live {
            let fields = fields_of(l, status);
            if !fields.is_empty() {
                managers.push(Manager {
                    manager: BEFORE_FIRST_APPLY.into(),
                    operation: "Update".into(),
                    api_version: req.api_version.into(),
                    time: req.now.into(),
                    subresource: req.subresource.into(),
                    fields,
                });
            }
        }
    }
    let mine = |m: &Manager| m.is(req.manager, "Apply", req.subresource);
    let wanted = fields_of(applied, status);
    let mut conflicts = Vec::new();
    for path in &wanted {
        if path.last().is_some_and(|l| l == SELF) {
            continue;
        }
        let (Some(new), Some(old)) = (get_path(applied, path), get_path(&result, path)) else {
            continue;
        };
        if new == old {
            continue;
        }
        for m in managers
            .iter()
            .filter(|m| !mine(m) && m.fields.contains(path))
        {
            conflicts.push((m.manager.clone(), m.api_version.clone(), path.clone()));
        }
    }
    if !conflicts.is_empty() && !req.force {
        return Err(conflicts
            .into_iter()
            .map(|(manager, api_version, path)| Conflict {
                manager,
                api_version,
                field: path_string(&path),
            })
            .collect());
    }
    for (manager, _, path) in &conflicts {
        for m in managers
            .iter_mut()
            .filter(|m| &m.manager == manager && !mine(m))
        {
            m.fields.remove(path);
        }
    }
    // Fields this manager applied before and no longer does are removed, unless another
    // manager still owns them.
    let previous = managers
        .iter()
        .find(|m| mine(m))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    for path in previous.difference(&wanted) {
        let shared = managers.iter().any(|m| !mine(m) && m.fields.contains(path));
        if !shared {
            remove_path(&mut result, path);
        }
    }
    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        if status {
            m.retain(|k, _| matches!(k.as_str(), "status" | "apiVersion" | "kind" | "metadata"));
        } else {
            m.remove("status");
        }
    }
    merge(&mut result, &body, &mut Vec::new());
    managers.retain(|m| !mine(m));
    managers.push(Manager {
        manager: req.manager.into(),
        operation: "Apply".into(),
        api_version: req.api_version.into(),
        time: req.now.into(),
        subresource: req.subresource.into(),
        fields: wanted,
    });
    set_managers(&mut result, &managers);
    Ok(result)
}

/// Records an ordinary update in `new`'s managedFields when the object tracks them:
/// fields the update sets or changes move to `manager`; removed fields leave every set.
pub fn track_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
    subresource: &str,
) {
    let mut managers = managers(old);
    if managers.is_empty() {
        return;
    }
    let status = subresource == "status";
    let before = fields_of(old, status);
    let after = fields_of(new, status);
    let changed: FieldSet = after
        .iter()
        .filter(|p| {
            p.last().is_some_and(|l| l != SELF) && get_path(old, p) != get_path(new, p)
                || !before.contains(*p)
        })
        .cloned()
        .collect();
    for m in managers.iter_mut() {
        m.fields
            .retain(|p| !changed.contains(p) && (after.contains(p) || !before.contains(p)));
    }
    if !changed.is_empty() {
        match managers
            .iter_mut()
            .find(|m| m.is(manager, "Update", subresource))
        {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.into();
                m.api_version = api_version.into();
            }
            None => managers.push(Manager {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now.into(),
                subresource: subresource.into(),
                fields: changed,
            }),
        }
    }
    set_managers(new, &managers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest {
            manager,
            api_version: "apps/v1",
            force,
            subresource: "",
            now: "2026-11-22T00:00:00Z",
        }
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn fields_use_merge_keys_and_round_trip_fields_v1() {
        let f = fields_of(&deploy(2, "nginx"), false);
        let s: Vec<String> = f.iter().map(|p| path_string(p)).collect();
        assert!(s.contains(&".spec.replicas".to_string()), "{s:?}");
        assert!(s.contains(&".spec.template.spec.containers[name=\"web\"].image".to_string()));
        assert!(s.contains(&".metadata.labels.app".to_string()));
        assert!(!s.iter().any(|p| p.contains("metadata.name")));
        assert_eq!(from_fields_v1(&to_fields_v1(&f)), f);
        let v1 = to_fields_v1(&f);
        assert!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["."]
                .is_object()
        );
    }

    #[test]
    fn apply_creates_merges_and_conflicts() {
        let created = apply(None, &deploy(2, "nginx:1"), &req("a", false)).unwrap();
        assert_eq!(created["spec"]["replicas"], 2);
        assert_eq!(managers(&created)[0].manager, "a");
        // The same manager changes its own fields freely.
        let again = apply(Some(&created), &deploy(3, "nginx:2"), &req("a", false)).unwrap();
        assert_eq!(again["spec"]["replicas"], 3);
        // Another manager setting the same value shares the field; a different value
        // conflicts, unless forced.
        let shared = apply(
            Some(&again),
            &json!({"spec": {"replicas": 3}}),
            &req("b", false),
        )
        .unwrap();
        assert_eq!(managers(&shared).len(), 2);
        let err = apply(
            Some(&shared),
            &json!({"spec": {"replicas": 5}}),
            &req("b", false),
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "a".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        let forced = apply(
            Some(&shared),
            &json!({"spec": {"replicas": 5}}),
            &req("b", true),
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        let a = managers(&forced)
            .into_iter()
            .find(|m| m.manager == "a")
            .unwrap();
        assert!(!a.fields.iter().any(|p| path_string(p) == ".spec.replicas"));
        // Dropping a field from the configuration removes it unless someone else owns it.
        let mut less = deploy(0, "nginx:2");
        less["spec"].as_object_mut().unwrap().remove("replicas");
        less["metadata"].as_object_mut().unwrap().remove("labels");
        let after = apply(Some(&forced), &less, &req("a", false)).unwrap();
        assert_eq!(after["spec"]["replicas"], 5, "b still owns replicas");
        assert!(after["metadata"]
            .get("labels")
            .is_none_or(|l| l.get("app").is_none()));
    }

    #[test]
    fn updates_take_ownership() {
        let created = apply(None, &deploy(2, "nginx"), &req("a", false)).unwrap();
        let mut edited = created.clone();
        edited["spec"]["replicas"] = json!(7);
        track_update(&created, &mut edited, "kubectl-edit", "apps/v1", "t", "");
        let ms = managers(&edited);
        let edit = ms.iter().find(|m| m.manager == "kubectl-edit").unwrap();
        assert_eq!(
            edit.fields
                .iter()
                .map(|p| path_string(p))
                .collect::<Vec<_>>(),
            [".spec.replicas"]
        );
        // Re-applying the old value now conflicts with the editor.
        let err = apply(Some(&edited), &deploy(2, "nginx"), &req("a", false)).unwrap_err();
        assert_eq!(err[0].manager, "kubectl-edit");
    }

    #[test]
    fn status_applies_own_status_only() {
        let live = apply(None, &deploy(2, "nginx"), &req("a", false)).unwrap();
        let r = ApplyRequest {
            subresource: "status",
            ..req("ctl", false)
        };
        let cfg = json!({"spec": {"replicas": 9}, "status": {"readyReplicas": 2}});
        let out = apply(Some(&live), &cfg, &r).unwrap();
        assert_eq!(out["status"]["readyReplicas"], 2);
        assert_eq!(
            out["spec"]["replicas"], 2,
            "spec is not the status subresource's"
        );
        let ctl = managers(&out)
            .into_iter()
            .find(|m| m.manager == "ctl")
            .unwrap();
        assert_eq!(ctl.subresource, "status");
        let paths: Vec<String> = ctl.fields.iter().map(|p| path_string(p)).collect();
        assert_eq!(paths, [".status.readyReplicas"]);
    }

    #[test]
    fn objects_without_managed_fields_credit_before_first_apply() {
        let live = deploy(2, "nginx");
        let err = apply(
            Some(&live),
            &json!({"spec": {"replicas": 4}}),
            &req("a", false),
        )
        .unwrap_err();
        assert_eq!(err[0].manager, "before-first-apply");
        let ok = apply(
            Some(&live),
            &json!({"spec": {"replicas": 2}}),
            &req("a", false),
        )
        .unwrap();
        assert_eq!(managers(&ok).len(), 2);
    }
}
