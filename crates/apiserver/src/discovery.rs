//! Discovery: `/api`, `/apis`, per group and group-version resource lists, and the
//! aggregated discovery documents (`apidiscovery.k8s.io/v2`) kubectl asks for first.

use rkube_api::{Registry, ResourceInfo};
use serde_json::{json, Value};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs and response kind of a subresource.
fn subresource(info: &ResourceInfo, sub: &str) -> (Vec<&'static str>, Value) {
    let gvk = |g: &str, v: &str, k: &str| json!({"group": g, "version": v, "kind": k});
    let own = gvk(info.group, info.version, info.kind);
    match sub {
        "status" | "finalize" | "ephemeralcontainers" | "resize" | "approval" => {
            (vec!["get", "patch", "update"], own)
        }
        "scale" => (
            vec!["get", "patch", "update"],
            gvk("autoscaling", "v1", "Scale"),
        ),
        "binding" => (vec!["create"], gvk("", "v1", "Binding")),
        "eviction" => (vec!["create"], gvk("policy", "v1", "Eviction")),
        "token" => (
            vec!["create"],
            gvk("authentication.k8s.io", "v1", "TokenRequest"),
        ),
        "log" => (vec!["get"], gvk("", "v1", "Pod")),
        "exec" | "attach" | "portforward" => {
            (vec!["create", "get"], gvk("", "v1", "PodExecOptions"))
        }
        _ => (
            vec!["create", "delete", "get", "patch", "update"],
            gvk("", "v1", "Pod"),
        ),
    }
}

/// `/api`: the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

/// `/apis`: every named group.
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .map(|g| group_json(g.name, &g.versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let g = reg.groups().into_iter().find(|g| g.name == group)?;
    let mut v = group_json(g.name, &g.versions);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// `/api/v1` or `/apis/GROUP/VERSION`: the APIResourceList.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let infos = reg.group_version(group, version);
    if infos.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &infos {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        for sub in r.subresources {
            let (verbs, kind) = subresource(r, sub);
            let mut s = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind["kind"],
                "verbs": verbs,
            });
            if kind["group"] != json!(group) || kind["version"] != json!(version) {
                s["group"] = kind["group"].clone();
                s["version"] = kind["version"].clone();
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// Which aggregated discovery version an `Accept` header asks for, if any.
pub fn aggregated_version(accept: &str) -> Option<&'static str> {
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        let has = |p: &str| params.contains(&p);
        if params[0] == "application/json"
            && has("g=apidiscovery.k8s.io")
            && has("as=APIGroupDiscoveryList")
        {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
        if params[0] == "application/json" && params.len() == 1 {
            return None;
        }
    }
    None
}

/// The aggregated discovery document for the core group (`legacy`) or all named groups.
pub fn aggregated(reg: &Registry, legacy: bool, version: &str) -> Value {
    let groups: Vec<(String, Vec<&str>)> = if legacy {
        vec![(String::new(), vec!["v1"])]
    } else {
        reg.groups()
            .into_iter()
            .map(|g| (g.name.to_string(), g.versions))
            .collect()
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|(name, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = reg
                        .group_version(name, v)
                        .iter()
                        .map(|r| {
                            let subs: Vec<Value> = r
                                .subresources
                                .iter()
                                .map(|s| {
                                    let (verbs, kind) = subresource(r, s);
                                    json!({"subresource": s, "responseKind": kind, "verbs": verbs})
                                })
                                .collect();
                            let mut e = json!({
                                "resource": r.plural,
                                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular(),
                                "verbs": VERBS,
                            });
                            if !r.short_names.is_empty() {
                                e["shortNames"] = json!(r.short_names);
                            }
                            if !r.categories.is_empty() {
                                e["categories"] = json!(r.categories);
                            }
                            if !subs.is_empty() {
                                e["subresources"] = json!(subs);
                            }
                            e
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut meta = json!({"creationTimestamp": null});
            if !name.is_empty() {
                meta["name"] = json!(name);
            }
            json!({"metadata": meta, "versions": vs})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}
