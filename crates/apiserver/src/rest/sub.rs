//! Subresources: status, scale, pods/binding, pods/eviction, namespaces/finalize, and the
//! streaming ones that need a kubelet.

use rkube_api::meta::{now_rfc3339, ObjectMeta};
use rkube_api::selector::LabelSelector;
use rkube_api::{status::success_status, ApiError, Cause};
use serde_json::{json, Value};

use super::write::{commit_update, patch_object, prepare_update, update_object, Part};
use super::Ctx;
use crate::body;
use crate::respond::{json as json_resp, Resp};
use crate::serve::RequestBody;
use crate::storage;

pub async fn handle(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let sub = ctx.ri.subresource.as_str();
    let verb = ctx.ri.verb;
    match (sub, verb) {
        ("status", "get") => super::read::get(ctx).await,
        ("status", "update") => {
            let bytes = body::read(body).await?;
            let (obj, warnings) = super::write::decode_body(ctx, &bytes)?;
            let out = update_object(ctx, obj, Part::Status).await?;
            Ok(ctx.object_response(200, out, &warnings))
        }
        ("status", "patch") => {
            let (out, warnings) = patch_object(ctx, body, Part::Status).await?;
            Ok(ctx.object_response(200, out, &warnings))
        }
        ("finalize", "update") if ctx.info.kind == "Namespace" => finalize(ctx, body).await,
        ("scale", "get") => {
            let (obj, _) = storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
            Ok(json_resp(200, &scale_of(&obj)))
        }
        ("scale", "update" | "patch") => scale_write(ctx, body).await,
        ("binding", "create") => binding(ctx, body).await,
        ("eviction", "create") => eviction(ctx, body).await,
        ("proxy", _) => Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!(
                "{}/{sub} is not supported by this server yet",
                ctx.info.plural
            ),
        )),
        _ => Err(ApiError::method_not_supported(
            &format!("{}/{sub}", ctx.info.plural),
            verb,
        )),
    }
}

/// The autoscaling/v1 Scale of a scalable object.
fn scale_of(obj: &Value) -> Value {
    let selector = match obj.pointer("/spec/selector") {
        Some(sel) if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() => {
            rkube_api::selector::selector_string(sel)
        }
        // ReplicationControllers select with a plain map.
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj.name(),
            "namespace": obj.namespace(),
            "uid": obj.uid(),
            "resourceVersion": obj.resource_version(),
            "creationTimestamp": obj.meta_str("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

async fn scale_write(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    for _ in 0..5 {
        let (old, old_rev) =
            storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
        let current = scale_of(&old);
        let wanted = if ctx.ri.verb == "patch" {
            let ct = ctx.content_type().unwrap_or("");
            let doc = body::parse_json(&bytes)?;
            match rkube_api::patch::PatchType::from_content_type(ct) {
                Some(rkube_api::patch::PatchType::Json) => {
                    rkube_api::patch::json_patch(&current, &doc)
                        .map_err(super::write::patch_error)?
                }
                Some(
                    rkube_api::patch::PatchType::Merge
                    | rkube_api::patch::PatchType::StrategicMerge,
                ) => rkube_api::patch::merge_patch(&current, &doc),
                _ => {
                    return Err(ApiError::unsupported_media_type(
                        ct,
                        &rkube_api::patch::PatchType::ACCEPTED[..3],
                    ))
                }
            }
        } else {
            ctx.decode_object(&bytes, Some("io.k8s.api.autoscaling.v1.Scale"))?
        };
        let rv = wanted.resource_version();
        if ctx.ri.verb == "update" && !rv.is_empty() && rv != old_rev.to_string() {
            return Err(ApiError::stale(
                ctx.info.group,
                ctx.info.plural,
                &ctx.ri.name,
            ));
        }
        let replicas = wanted
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                &ctx.ri.name,
                vec![Cause::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        let prepared = prepare_update(ctx.info, new, &old, Part::Main)?;
        match commit_update(ctx, &old, old_rev, prepared, ctx.dry_run()?).await {
            Ok(obj) => return Ok(json_resp(200, &scale_of(&obj))),
            Err(e) if e.code == 409 && ctx.ri.verb == "patch" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::stale(
        ctx.info.group,
        ctx.info.plural,
        &ctx.ri.name,
    ))
}

/// `pods/binding`: assigns a node to a pod that has none.
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
async fn eviction(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let ev = ctx.decode_object(&bytes, Some("io.k8s.api.policy.v1.Eviction"))?;
    // The eviction's own DeleteOptions (kubectl drain --dry-run=server sends dryRun there).
    // Nested in the Eviction it is a plain struct: its kind and apiVersion mean nothing.
    let opts = super::delete_options::DeleteOptions::from_request(
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
            .expect("pdbs are registered");
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
    super::delete::delete_one(ctx, &ctx.ri.name, &opts).await?;
    Ok(json_resp(201, &success_status(Value::Null)))
}

/// `namespaces/NAME/finalize`: replaces spec.finalizers (the namespace controller's step).
async fn finalize(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let b = ctx.decode_object(&bytes, None)?;
    let (old, old_rev) = storage::get(&ctx.state.store, ctx.info, "", &ctx.ri.name).await?;
    let mut new = old.clone();
    new["spec"]["finalizers"] = b.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
    let obj = commit_update(ctx, &old, old_rev, new, ctx.dry_run()?).await?;
    Ok(ctx.object_response(200, obj, &[]))
}
