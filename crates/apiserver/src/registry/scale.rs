//! The `scale` subresource of the workload kinds: an autoscaling/v1 Scale read from and
//! written to `spec.replicas`.

use rkube_api::meta::ObjectMeta;
use rkube_api::{ApiError, Cause};
use serde_json::{json, Value};

use super::{Hooks, SubRequest, Subresource};
use crate::body;
use crate::respond::{json as json_resp, Resp};
use crate::rest::Ctx;
use crate::serve::RequestBody;
use crate::storage;

/// Kinds with a `spec.replicas` and a label selector.
pub struct Scalable;

impl Hooks for Scalable {
    fn subresource(&self, name: &str) -> Option<&'static dyn Subresource> {
        (name == "scale").then_some(&Scale as &dyn Subresource)
    }
}

struct Scale;

#[async_trait::async_trait]
impl Subresource for Scale {
    async fn serve(&self, ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError> {
        match ctx.ri.verb {
            "get" => {
                let (obj, _) =
                    storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
                Ok(json_resp(200, &scale_of(&obj)))
            }
            "update" | "patch" => scale_write(ctx, req.body).await,
            verb => Err(ApiError::method_not_supported(
                &format!("{}/scale", ctx.info.plural),
                verb,
            )),
        }
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
                        .map_err(crate::rest::patch_error)?
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
        let prepared = crate::rest::prepare_update(ctx.info, new, &old, crate::rest::Part::Main)?;
        match crate::rest::commit_update(ctx, &old, old_rev, prepared, ctx.dry_run()?).await {
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
