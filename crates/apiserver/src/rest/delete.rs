//! DELETE and DELETECOLLECTION: preconditions, admission, graceful deletion (as the
//! kind's strategy says), finalizers and propagationPolicy.

use rkube_api::meta::ObjectMeta;
use rkube_api::ApiError;
use serde_json::{json, Map, Value};

use super::read::{list_objects, Selectors};
use super::Ctx;
use crate::admission::Operation;
use crate::body;
use crate::respond::{raw, Resp};
use crate::serve::RequestBody;
use crate::storage;

use super::delete_options::DeleteOptions;

/// The options of a DELETE or DELETECOLLECTION: the body (if any) as a `DeleteOptions`,
/// then the query.
fn options(ctx: &Ctx<'_>, bytes: &[u8]) -> Result<DeleteOptions, ApiError> {
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(ctx.decode_object(
            bytes,
            Some("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"),
        )?)
    };
    DeleteOptions::from_request(body.as_ref(), ctx.query, Some(&ctx.group_version()))
}

pub async fn delete(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let opts = options(ctx, &bytes)?;
    let (obj, code) = delete_one(ctx, &ctx.ri.name, &opts).await?;
    // Upstream answers 202 for a pending deletion only when the client set
    // orphanDependents=false (other clients expect 200, even for a graceful delete).
    let code = if code == 202 && opts.orphan_dependents != Some(false) {
        200
    } else {
        code
    };
    Ok(ctx.object_response(code, obj, &[]))
}

/// Deletes (or marks for deletion) one object; returns it and 200 (gone) or 202 (pending).
pub async fn delete_one(
    ctx: &Ctx<'_>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(Value, u16), ApiError> {
    let info = ctx.info;
    let dry_run = opts.is_dry_run();
    let store = &ctx.state.store;
    for _ in 0..10 {
        let (obj, rev) = storage::get(store, info, ctx.ns(), name).await?;
        if let Some(uid) = &opts.precondition_uid {
            if uid != obj.uid() {
                return Err(ApiError::conflict(
                    info.group,
                    info.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        obj.uid()
                    ),
                ));
            }
        }
        if let Some(prv) = &opts.precondition_rv {
            if *prv != rev.to_string() {
                return Err(ApiError::conflict(info.group, info.plural, name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}"
                )));
            }
        }
        let a = ctx.attributes(Operation::Delete, name, None, Some(&obj), dry_run);
        ctx.state.admission.admit(ctx.state, &mut { a }).await?;
        let a = ctx.attributes(Operation::Delete, name, None, Some(&obj), dry_run);
        ctx.state.admission.validate(ctx.state, &a).await?;
        let mut marked = obj.clone();
        let mut finalizers = obj.finalizers();
        match opts.policy() {
            Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                finalizers.push("orphan".into())
            }
            Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                finalizers.push("foregroundDeletion".into())
            }
            _ => {}
        }
        let grace = info.strategy.grace_period(&obj, opts.grace_period);
        let waits_for_finalizers = !finalizers.is_empty() || info.strategy.blocks_deletion(&obj);
        let mark = if obj.is_deleting() {
            let current = obj
                .meta()
                .and_then(|m| m.get("deletionGracePeriodSeconds"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if waits_for_finalizers {
                if !finalizers_changed(&obj, &finalizers) {
                    return Ok((obj, 202));
                }
                true
            } else if grace == 0 {
                false
            } else if grace < current {
                true
            } else {
                return Ok((obj, 202));
            }
        } else {
            grace > 0 || waits_for_finalizers
        };
        if mark {
            let when = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
            marked.set_meta(
                "deletionTimestamp",
                when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
            marked.set_meta("deletionGracePeriodSeconds", grace);
            if !finalizers.is_empty() {
                marked.set_meta("finalizers", json!(finalizers));
            }
            info.strategy.prepare_for_deletion(&mut marked);
            if info.strategy.tracks_generation() && !obj.is_deleting() {
                let g = obj
                    .meta()
                    .and_then(|m| m.get("generation"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                marked.set_meta("generation", g + 1);
            }
            if dry_run {
                return Ok((marked, 202));
            }
            let key = storage::key(info, ctx.ns(), name);
            match store
                .update(
                    key.as_bytes(),
                    storage::encode_for(ctx.info, &marked),
                    Some(rev),
                    info.strategy.ttl(),
                )
                .await
            {
                Ok((new_rev, _)) => {
                    marked.set_meta("resourceVersion", new_rev.to_string());
                    return Ok((marked, 202));
                }
                Err(rkube_store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(storage::store_error(e, info, name)),
            }
        }
        if dry_run {
            return Ok((obj, 200));
        }
        let key = storage::key(info, ctx.ns(), name);
        match store.delete(key.as_bytes(), Some(rev)).await {
            Ok(_) => {
                crate::registry::hooks(info)
                    .finish(ctx.state, Some(&obj), None, true)
                    .await;
                return Ok((obj, 200));
            }
            Err(rkube_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(storage::store_error(e, info, name)),
        }
    }
    Err(ApiError::conflict(
        info.group,
        info.plural,
        name,
        "the object kept changing during deletion; try again",
    ))
}

fn finalizers_changed(obj: &Value, finalizers: &[String]) -> bool {
    obj.finalizers() != finalizers
}

pub async fn delete_collection(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let opts = options(ctx, &bytes)?;
    let sel = Selectors::parse(ctx)?;
    let listed = list_objects(ctx, &sel).await?;
    let mut deleted = Vec::new();
    for obj in listed.objects(ctx.info)? {
        let name = obj.name().to_string();
        let ns = obj.namespace().to_string();
        let ri = crate::request::RequestInfo {
            namespace: ns,
            ..ctx.ri.clone()
        };
        let sub = Ctx {
            state: ctx.state,
            user: ctx.user,
            info: ctx.info,
            ri: &ri,
            query: ctx.query,
            headers: ctx.headers,
            output: ctx.output,
        };
        match delete_one(&sub, &name, &opts).await {
            Ok((o, _)) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(listed.revision.to_string()));
    let out = ctx.output.list(ctx.info, deleted, meta);
    Ok(raw(
        200,
        ctx.output.content_type(true),
        serde_json::to_vec(&out).unwrap_or_default(),
    ))
}
