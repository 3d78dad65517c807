//! OpenAPI v3 and v2 documents generated from the k8s-openapi types, with the
//! extensions clients read: `x-kubernetes-group-version-kind`, the patch strategy and
//! merge keys, and the `fieldValidation` parameter (kubectl checks for it to validate on
//! the server).

use std::collections::{BTreeMap, BTreeSet};

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::patch::{builtin_list_strategy, ListStrategy};
use crate::registry::{Registry, ResourceInfo};

const REF_V3: &str = "#/components/schemas/";

/// All schemas of the registry's kinds (OpenAPI 3 form), keyed by upstream's names
/// (`io.k8s.api.core.v1.Pod`), with the root name of each resource.
pub struct Schemas {
    /// Every schema, by its OpenAPI name (`io.k8s.api.core.v1.Pod`).
    pub definitions: Map<String, Value>,
    /// (group, version, plural) -> definition name.
    pub roots: BTreeMap<(String, String, String), String>,
}

impl Schemas {
    /// The schemas of every kind in the registry.
    pub fn generate(reg: &Registry) -> Self {
        let mut g = SchemaSettings::openapi3().into_generator();
        let mut roots = BTreeMap::new();
        for r in reg.all() {
            let s = (r.schema)(&mut g);
            let name = s
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_V3))
                .unwrap_or(r.kind)
                .to_string();
            roots.insert(
                (
                    r.group.to_string(),
                    r.version.to_string(),
                    r.plural.to_string(),
                ),
                name,
            );
        }
        g.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
        g.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
        let mut definitions = g.take_definitions(true);
        for r in reg.all() {
            let name = &roots[&(
                r.group.to_string(),
                r.version.to_string(),
                r.plural.to_string(),
            )];
            if let Some(def) = definitions.get_mut(name).and_then(Value::as_object_mut) {
                let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
                let list = def
                    .entry("x-kubernetes-group-version-kind")
                    .or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    if !a.contains(&gvk) {
                        a.push(gvk);
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        for name in roots.values() {
            annotate_patch_strategies(&mut definitions, name, &mut Vec::new(), &mut seen);
        }
        Schemas { definitions, roots }
    }

    /// The definitions reachable from `names` through `$ref`s.
    fn reachable(&self, names: impl IntoIterator<Item = String>) -> Map<String, Value> {
        let mut out = Map::new();
        let mut todo: Vec<String> = names.into_iter().collect();
        while let Some(n) = todo.pop() {
            if out.contains_key(&n) {
                continue;
            }
            let Some(def) = self.definitions.get(&n) else {
                continue;
            };
            collect_refs(def, &mut todo);
            out.insert(n, def.clone());
        }
        out
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_V3))
            {
                out.push(r.to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The definition a property schema refers to (directly or through `allOf`).
fn ref_of(prop: &Value) -> Option<String> {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        return r.strip_prefix(REF_V3).map(String::from);
    }
    prop.get("allOf")?.as_array()?.iter().find_map(ref_of)
}

/// Marks list properties with upstream's patch strategy and merge key, following field
/// paths from a root kind (the same table the server's strategic merge uses).
fn annotate_patch_strategies(
    defs: &mut Map<String, Value>,
    name: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) {
    if !seen.insert(name.to_string()) || path.len() > 12 {
        return;
    }
    let Some(props) = defs
        .get(name)
        .and_then(|d| d.get("properties"))
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    for (field, prop) in props {
        path.push(field.clone());
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        if prop.get("type").and_then(Value::as_str) == Some("array") {
            if let Some(strategy) = builtin_list_strategy(&p) {
                if let Some(target) = defs
                    .get_mut(name)
                    .and_then(|d| d.pointer_mut(&format!("/properties/{field}")))
                {
                    target["x-kubernetes-patch-strategy"] = json!("merge");
                    if let ListStrategy::MergeByKey(k) = strategy {
                        target["x-kubernetes-patch-merge-key"] = json!(k);
                    }
                }
            }
            if let Some(next) = prop.get("items").and_then(ref_of) {
                annotate_patch_strategies(defs, &next, path, seen);
            }
        } else if let Some(next) = ref_of(&prop) {
            annotate_patch_strategies(defs, &next, path, seen);
        }
        path.pop();
    }
}

fn param(name: &str, loc: &str, desc: &str) -> Value {
    json!({"name": name, "in": loc, "description": desc, "schema": {"type": "string", "uniqueItems": true}})
}

fn op(
    action: &str,
    r: &ResourceInfo,
    summary: String,
    extra: Vec<Value>,
    body_ref: Option<&str>,
    response_ref: &str,
    content: &[&str],
) -> Value {
    let mut o = json!({
        "tags": [r.api_version().replace('/', "_")],
        "description": summary,
        "operationId": format!("{action}{}", r.kind),
        "parameters": extra,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("{REF_V3}{response_ref}")}}}},
                      "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    });
    if let Some(b) = body_ref {
        let c: Map<String, Value> = content
            .iter()
            .map(|ct| {
                (
                    ct.to_string(),
                    json!({"schema": {"$ref": format!("{REF_V3}{b}")}}),
                )
            })
            .collect();
        o["requestBody"] = json!({"content": c, "required": true});
    }
    o
}

fn write_params() -> Vec<Value> {
    vec![
        param("dryRun", "query", "When present, indicates that modifications should not be persisted."),
        param("fieldManager", "query", "fieldManager is a name associated with the actor or entity that is making these changes."),
        param("fieldValidation", "query", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict."),
    ]
}

/// The OpenAPI v3 document of one group version.
pub fn v3_group_version(
    reg: &Registry,
    schemas: &Schemas,
    group: &str,
    version: &str,
) -> Option<Value> {
    let infos = reg.group_version(group, version);
    if infos.is_empty() {
        return None;
    }
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = Map::new();
    let mut names = vec![
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_string(),
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_string(),
    ];
    for r in infos {
        let def = schemas.roots[&(
            r.group.to_string(),
            r.version.to_string(),
            r.plural.to_string(),
        )]
            .clone();
        names.push(def.clone());
        let scope = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let mut common =
            vec![json!({"name": "pretty", "in": "query", "schema": {"type": "string"}})];
        if r.namespaced {
            common.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        let list_params: Vec<Value> = [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "watch",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "sendInitialEvents",
        ]
        .iter()
        .map(|n| param(n, "query", n))
        .collect();
        let json_ct = ["application/json", "application/yaml"];
        let patch_ct = [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ];
        paths.insert(scope.clone(), json!({
            "get": op("list", r, format!("list or watch objects of kind {}", r.kind), list_params, None, &def, &[]),
            "post": op("post", r, format!("create a {}", r.kind), write_params(), Some(&def), &def, &json_ct),
            "delete": op("deletecollection", r, format!("delete collection of {}", r.kind), vec![], None, "io.k8s.apimachinery.pkg.apis.meta.v1.Status", &[]),
            "parameters": common,
        }));
        let mut item_params = vec![
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}),
        ];
        item_params.extend(
            paths[&scope]["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        paths.insert(format!("{scope}/{{name}}"), json!({
            "get": op("get", r, format!("read the specified {}", r.kind), vec![], None, &def, &[]),
            "put": op("put", r, format!("replace the specified {}", r.kind), write_params(), Some(&def), &def, &json_ct),
            "patch": op("patch", r, format!("partially update the specified {}", r.kind), write_params(), Some("io.k8s.apimachinery.pkg.apis.meta.v1.Patch"), &def, &patch_ct),
            "delete": op("delete", r, format!("delete a {}", r.kind), vec![], Some("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"), "io.k8s.apimachinery.pkg.apis.meta.v1.Status", &["application/json"]),
            "parameters": item_params,
        }));
    }
    let mut components = schemas.reachable(names);
    components.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": components},
    }))
}

/// The OpenAPI v2 (Swagger) document of every group version.
pub fn v2(reg: &Registry, schemas: &Schemas) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    let mut gvs: Vec<(&str, &str)> = reg.all().iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    for (g, v) in gvs {
        if let Some(doc) = v3_group_version(reg, schemas, g, v) {
            for (p, item) in doc["paths"].as_object().into_iter().flatten() {
                paths.insert(p.clone(), v3_to_v2(item));
            }
            for (n, d) in doc["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten()
            {
                definitions.insert(n.clone(), v3_to_v2(d));
            }
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "definitions": definitions})
}

/// Rewrites v3 references and request bodies into v2 form.
fn v3_to_v2(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                match k.as_str() {
                    "$ref" => {
                        out.insert(
                            k.clone(),
                            json!(x.as_str().unwrap_or("").replace(REF_V3, "#/definitions/")),
                        );
                    }
                    "requestBody" => {
                        let schema = x
                            .pointer("/content")
                            .and_then(Value::as_object)
                            .and_then(|c| c.values().next())
                            .and_then(|c| c.get("schema"))
                            .cloned();
                        let params = out.entry("parameters").or_insert_with(|| json!([]));
                        if let (Some(s), Some(a)) = (schema, params.as_array_mut()) {
                            a.push(json!({"name": "body", "in": "body", "required": true, "schema": v3_to_v2(&s)}));
                        }
                    }
                    "parameters" => {
                        let mut list: Vec<Value> = x
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|p| {
                                let mut p = v3_to_v2(p);
                                if let Some(t) =
                                    p.get("schema").and_then(|s| s.get("type")).cloned()
                                {
                                    p["type"] = t;
                                    if let Some(o) = p.as_object_mut() {
                                        o.remove("schema");
                                    }
                                }
                                p
                            })
                            .collect();
                        if let Some(existing) = out.get("parameters").and_then(Value::as_array) {
                            list.extend(existing.iter().cloned());
                        }
                        out.insert(k.clone(), json!(list));
                    }
                    "responses" => {
                        let r: Map<String, Value> = x
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(code, resp)| {
                                let schema = resp.pointer("/content/application~1json/schema").map(v3_to_v2);
                                let mut o = json!({"description": resp.get("description").cloned().unwrap_or(json!(""))});
                                if let Some(s) = schema {
                                    o["schema"] = s;
                                }
                                (code.clone(), o)
                            })
                            .collect();
                        out.insert(k.clone(), Value::Object(r));
                    }
                    "nullable" => {}
                    _ => {
                        out.insert(k.clone(), v3_to_v2(x));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(v3_to_v2).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_what_kubectl_reads() {
        let reg = Registry::builtin();
        let s = Schemas::generate(&reg);
        let doc = v3_group_version(&reg, &s, "apps", "v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert_eq!(
            schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert!(
            !schemas.contains_key("io.k8s.api.batch.v1.Job"),
            "only what the group version references"
        );
        let v2 = v2(&reg, &s);
        assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
        let r = v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"].to_string();
        assert!(
            r.contains("#/definitions/io.k8s.api.core.v1.PodSpec"),
            "{r}"
        );
    }
}
