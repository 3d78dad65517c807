//! Pods: `binding` (the scheduler's assignment), `eviction` (a deletion that honours
//! PodDisruptionBudgets), the streaming subresources the kubelet serves, and `proxy`.

use rkube_api::meta::{now_rfc3339, ObjectMeta};
use rkube_api::selector::LabelSelector;
use rkube_api::{status::success_status, ApiError, Cause};
use serde_json::{json, Value};

use super::kubelet_proxy::KubeletProxy;
use super::{Hooks, NotYet, SubRequest, Subresource};
use crate::body;
use crate::respond::{json as json_resp, Resp};
use crate::rest::Ctx;
use crate::serve::RequestBody;
use crate::storage;

pub struct PodHooks;

impl Hooks for PodHooks {
    fn subresource(&self, name: &str) -> Option<&'static dyn Subresource> {
        match name {
            "binding" => Some(&Binding),
            "eviction" => Some(&Eviction),
            "log" | "exec" | "attach" | "portforward" => Some(&KubeletProxy),
            "proxy" => Some(&NotYet),
            _ => None,
        }
    }
}

/// `pods/binding`: assigns a node to a pod that has none.
struct Binding;

#[async_trait::async_trait]
impl Subresource for Binding {
    async fn serve(&self, ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError> {
        binding(ctx, req.body).await
    }
}

async fn binding(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let b = ctx.decode_object(&bytes, Some("io.k8s.api.core.v1.Binding"))?;
    let node = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &ctx.ri.name,
            vec![Cause::required("target.name")],
        ));
    }
    if !b.name().is_empty() && b.name() != ctx.ri.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            b.name(),
            ctx.ri.name
        )));
    }
    for _ in 0..5 {
        let (old, old_rev) =
            storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
        if old.is_deleting() {
            return Err(ApiError::conflict(
                "",
                "pods",
                &ctx.ri.name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(uid) = b.meta_str("uid").filter(|u| !u.is_empty()) {
            if uid != old.uid() {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    &ctx.ri.name,
                    "the UID of the binding does not match the pod",
                ));
            }
        }
        if let Some(existing) = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                "",
                "pods",
                &ctx.ri.name,
                &format!(
                    "pod {} is already assigned to node {existing:?}",
                    ctx.ri.name
                ),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        if let Some(ann) = b
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
        {
            let target = new
                .meta_mut()
                .entry("annotations")
                .or_insert_with(|| json!({}));
            if let Some(t) = target.as_object_mut() {
                for (k, v) in ann {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        let conds = new["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"))
            .collect();
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
        new["status"]["conditions"] = json!(conds);
        if ctx.dry_run()? {
            return Ok(json_resp(201, &success_status(Value::Null)));
        }
        let key = storage::key(ctx.info, ctx.ns(), &ctx.ri.name);
        match ctx
            .state
            .store
            .update(
                key.as_bytes(),
                storage::encode_for(ctx.info, &new),
                Some(old_rev),
                None,
            )
            .await
        {
            Ok(_) => return Ok(json_resp(201, &success_status(Value::Null))),
            Err(rkube_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(storage::store_error(e, ctx.info, &ctx.ri.name)),
        }
    }
    Err(ApiError::stale("", "pods", &ctx.ri.name))
}

/// `pods/eviction`: deletes the pod unless a PodDisruptionBudget forbids it.
struct Eviction;

#[async_trait::async_trait]
impl Subresource for Eviction {
    async fn serve(&self, ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError> {
        eviction(ctx, req.body).await
    }
}

async fn eviction(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let ev = ctx.decode_object(&bytes, Some("io.k8s.api.policy.v1.Eviction"))?;
    // The eviction's own DeleteOptions (kubectl drain --dry-run=server sends dryRun there).
    // Nested in the Eviction it is a plain struct: its kind and apiVersion mean nothing.
    let opts = crate::rest::DeleteOptions::from_request(
        ev.get("deleteOptions").filter(|d| !d.is_null()),
        ctx.query,
        None,
    )?;
    let (pod, _) = storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !finished && !pod.is_deleting() {
        let pdb_info = ctx
            .state
            .registry
            .get("policy", "v1", "poddisruptionbudgets")
            .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))?;
        let pdbs = storage::range(&ctx.state.store, pdb_info, ctx.ns(), None, 0, 0).await?;
        for kv in &pdbs.kvs {
            let pdb = storage::decode(kv)?;
            let Some(sel) = pdb.pointer("/spec/selector") else {
                continue;
            };
            let Ok(sel) = LabelSelector::from_object(sel) else {
                continue;
            };
            if sel.is_empty() || !sel.matches(pod.labels()) {
                continue;
            }
            let allowed = pdb
                .pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if allowed <= 0 {
                return Err(ApiError {
                    code: 429,
                    reason: "TooManyRequests",
                    message: "Cannot evict pod as it would violate the pod's disruption budget."
                        .into(),
                    details: json!({"causes": [{"reason": "DisruptionBudget", "message": format!(
                        "The disruption budget {} needs {} healthy pods and has {} currently",
                        pdb.name(),
                        pdb.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0),
                        pdb.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0)
                    )}]}),
                });
            }
        }
    }
    crate::rest::delete_one(ctx, &ctx.ri.name, &opts).await?;
    Ok(json_resp(201, &success_status(Value::Null)))
}
