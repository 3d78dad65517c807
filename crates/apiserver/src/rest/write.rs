//! CREATE, UPDATE (PUT) and PATCH through admission, the kind's strategy and hooks.

use rkube_api::meta::{generate_name, new_uid, now_rfc3339, ObjectMeta};
use rkube_api::patch::{self, PatchError, PatchType};
use rkube_api::{ApiError, ResourceInfo};
use rkube_store::StoreError;
use serde_json::Value;

use super::Ctx;
use crate::admission::Operation;
use crate::body;
use crate::registry;
use crate::respond::Resp;
use crate::serve::RequestBody;
use crate::storage;
use crate::validation::{decode_typed, validate_meta, FieldValidation};

/// Checks apiVersion/kind of a body against the endpoint, filling them when absent.
pub(super) fn check_type(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = info.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = Value::String(want_av.clone()),
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = Value::String(info.kind.into()),
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "{k} in version \"{}\" cannot be handled as a {}: the kind in the data ({k}) does not match the expected kind ({})",
                info.version, info.kind, info.kind
            )))
        }
    }
    Ok(())
}

/// Decodes and field-validates a request body into an object of this kind.
pub(super) fn decode_body(ctx: &Ctx<'_>, bytes: &[u8]) -> Result<(Value, Vec<String>), ApiError> {
    let mode = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let mut obj = ctx.decode_object(bytes, None)?;
    check_type(ctx.info, &mut obj)?;
    let is_json = body::media_type(ctx.content_type()).ends_with("json");
    decode_typed(ctx.info, obj, is_json.then_some(bytes), mode)
}

fn invalid(info: &ResourceInfo, obj: &Value, causes: Vec<rkube_api::Cause>) -> ApiError {
    ApiError::invalid(info.group, info.kind, obj.name(), causes)
}

pub async fn create(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let (mut obj, warnings) = decode_body(ctx, &bytes)?;
    if obj
        .meta_str("resourceVersion")
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let ns = ctx.ns().to_string();
    match (obj.namespace(), ctx.info.namespaced) {
        ("", true) => obj.set_meta("namespace", ns.clone()),
        (n, true) if n != ns => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (_, false) => {
            obj.remove_meta("namespace");
        }
        _ => {}
    }
    let generated =
        obj.name().is_empty() && obj.meta_str("generateName").is_some_and(|g| !g.is_empty());
    if generated {
        let g = obj.meta_str("generateName").unwrap_or("").to_string();
        obj.set_meta("name", generate_name(&g));
    }
    let obj = create_object(ctx, obj, generated).await?;
    Ok(ctx.object_response(201, obj, &warnings))
}

/// Creates a decoded object: admission, strategy, hooks, store.
pub(super) async fn create_object(
    ctx: &Ctx<'_>,
    mut obj: Value,
    generated: bool,
) -> Result<Value, ApiError> {
    let dry_run = ctx.dry_run()?;
    let name = obj.name().to_string();
    let admission = &ctx.state.admission;
    let mut a = ctx.attributes(Operation::Create, &name, Some(&mut obj), None, dry_run);
    admission.admit(ctx.state, &mut a).await?;
    let mut obj = prepare_create(ctx, obj)?;
    let a = ctx.attributes(Operation::Create, &name, Some(&mut obj), None, dry_run);
    admission.validate(ctx.state, &a).await?;
    let hooks = registry::hooks(ctx.info);
    if let Err(e) = hooks.begin_create(ctx.state, &mut obj).await {
        hooks.finish(ctx.state, None, Some(&obj), false).await;
        return Err(e);
    }
    if dry_run {
        hooks.finish(ctx.state, None, Some(&obj), false).await;
        return Ok(obj);
    }
    let key = storage::key(ctx.info, ctx.ns(), obj.name());
    let created = ctx
        .state
        .store
        .create(
            key.as_bytes(),
            storage::encode_for(ctx.info, &obj),
            ctx.info.strategy.ttl(),
        )
        .await;
    hooks
        .finish(ctx.state, None, Some(&obj), created.is_ok())
        .await;
    match created {
        Ok(rev) => {
            obj.set_meta("resourceVersion", rev.to_string());
            Ok(obj)
        }
        Err(StoreError::AlreadyExists { .. }) if generated => Err(ApiError::already_exists(
            ctx.info.group,
            ctx.info.plural,
            obj.name(),
        )
        .with_message_suffix(", the server was not able to generate a unique name for the object")),
        Err(e) => Err(storage::store_error(e, ctx.info, obj.name())),
    }
}

/// Server-set metadata, defaults, status reset and validation of a new object.
fn prepare_create(ctx: &Ctx<'_>, mut obj: Value) -> Result<Value, ApiError> {
    let info = ctx.info;
    let m = obj.meta_mut();
    for f in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        m.remove(f);
    }
    m.insert("uid".into(), Value::String(new_uid()));
    m.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    if info.strategy.tracks_generation() {
        m.insert("generation".into(), Value::from(1));
    } else {
        m.remove("generation");
    }
    info.strategy.default(&mut obj);
    if info.has_status() && !info.strategy.keeps_status_on_create() {
        if let Some(o) = obj.as_object_mut() {
            match info.strategy.initial_status() {
                Some(status) => o.insert("status".into(), status),
                None => o.remove("status"),
            };
        }
    }
    info.strategy.prepare_for_create(&mut obj);
    let mut causes = validate_meta(info, &obj);
    causes.extend(info.strategy.validate(&obj));
    if !causes.is_empty() {
        return Err(invalid(info, &obj, causes));
    }
    Ok(obj)
}

/// Which part of an object an update may change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: status changes are ignored where a status subresource exists.
    Main,
    /// The status subresource: only status changes.
    Status,
}

/// Applies an update of `old` to `new` for the main resource or the status
/// subresource: server-owned fields kept, defaults, generation, validation.
pub fn prepare_update(
    info: &ResourceInfo,
    mut new: Value,
    old: &Value,
    part: Part,
) -> Result<Value, ApiError> {
    if part == Part::Status {
        let status = new.get("status").cloned();
        let mut merged = old.clone();
        match status {
            Some(s) => merged["status"] = s,
            None => {
                if let Some(o) = merged.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        // Labels and annotations may change with status, as upstream allows.
        for f in ["labels", "annotations"] {
            match new.meta().and_then(|m| m.get(f)).cloned() {
                Some(v) => merged.set_meta(f, v),
                None => {
                    merged.remove_meta(f);
                }
            }
        }
        new = merged;
    } else if info.has_status() {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    // Server-owned metadata comes from the stored object.
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "selfLink",
    ] {
        match old.meta().and_then(|m| m.get(f)).cloned() {
            Some(v) => new.set_meta(f, v),
            None => {
                new.remove_meta(f);
            }
        }
    }
    // An update that leaves managedFields out keeps them, as upstream does.
    if new.meta().is_some_and(|m| !m.contains_key("managedFields")) {
        if let Some(mf) = old.meta().and_then(|m| m.get("managedFields")).cloned() {
            new.set_meta("managedFields", mf);
        }
    }
    info.strategy.default(&mut new);
    if old.is_deleting() {
        let old_f = old.finalizers();
        if new.finalizers().iter().any(|f| !old_f.contains(f)) {
            return Err(invalid(
                info,
                &new,
                vec![rkube_api::Cause::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                )],
            ));
        }
    }
    if info.strategy.tracks_generation() && spec_of(&new) != spec_of(old) {
        let g = old
            .meta()
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        new.set_meta("generation", g + 1);
    }
    let mut causes = validate_meta(info, &new);
    causes.extend(info.strategy.validate(&new));
    causes.extend(info.strategy.validate_update(&new, old));
    if !causes.is_empty() {
        return Err(invalid(info, &new, causes));
    }
    Ok(new)
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(v: &Value) -> Vec<(&String, &Value)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes an updated object with compare-and-swap on `old_rev`. A no-op update is not
/// written; an object whose deletion waited only for finalizers is deleted. The hooks
/// learn the outcome.
pub async fn commit_update(
    ctx: &Ctx<'_>,
    old: &Value,
    old_rev: i64,
    mut new: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let hooks = registry::hooks(ctx.info);
    let name = new.name().to_string();
    let key = storage::key(ctx.info, ctx.ns(), &name);
    let mut compare_new = new.clone();
    compare_new.remove_meta("resourceVersion");
    let mut compare_old = old.clone();
    compare_old.remove_meta("resourceVersion");
    if compare_new == compare_old {
        new.set_meta("resourceVersion", old_rev.to_string());
        return Ok(new);
    }
    if dry_run {
        hooks.finish(ctx.state, Some(old), Some(&new), false).await;
        return Ok(new);
    }
    let store = &ctx.state.store;
    if new.is_deleting() && new.finalizers().is_empty() && !ctx.info.strategy.blocks_deletion(&new)
    {
        let deleted = store.delete(key.as_bytes(), Some(old_rev)).await;
        hooks
            .finish(ctx.state, Some(old), Some(&new), deleted.is_ok())
            .await;
        let (rev, _) = deleted.map_err(|e| storage::store_error(e, ctx.info, &name))?;
        hooks.finish(ctx.state, Some(&new), None, true).await;
        new.set_meta("resourceVersion", rev.to_string());
        return Ok(new);
    }
    let updated = store
        .update(
            key.as_bytes(),
            storage::encode_for(ctx.info, &new),
            Some(old_rev),
            ctx.info.strategy.ttl(),
        )
        .await;
    hooks
        .finish(ctx.state, Some(old), Some(&new), updated.is_ok())
        .await;
    let (rev, _) = updated.map_err(|e| storage::store_error(e, ctx.info, &name))?;
    new.set_meta("resourceVersion", rev.to_string());
    Ok(new)
}

pub async fn update(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let bytes = body::read(body).await?;
    let (new, warnings) = decode_body(ctx, &bytes)?;
    let obj = update_object(ctx, new, Part::Main).await?;
    Ok(ctx.object_response(200, obj, &warnings))
}

/// PUT semantics for a decoded object: name checks, resourceVersion precondition,
/// strategy, commit.
pub(super) async fn update_object(
    ctx: &Ctx<'_>,
    mut new: Value,
    part: Part,
) -> Result<Value, ApiError> {
    check_identity(ctx, &mut new)?;
    let (old, old_rev) = storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
    let mut prepared = prepare_against(ctx, new, &old, old_rev, part).await?;
    super::apply::record_update(ctx, &old, &mut prepared, part);
    commit_update(ctx, &old, old_rev, prepared, ctx.dry_run()?).await
}

/// The update of `old` (at `old_rev`) to `new`: the resourceVersion precondition,
/// admission, the strategy, and the hooks' reservations (which `commit_update` settles).
pub(super) async fn prepare_against(
    ctx: &Ctx<'_>,
    new: Value,
    old: &Value,
    old_rev: i64,
    part: Part,
) -> Result<Value, ApiError> {
    let rv = new.resource_version();
    if !rv.is_empty() && rv != old_rev.to_string() {
        return Err(ApiError::stale(
            ctx.info.group,
            ctx.info.plural,
            &ctx.ri.name,
        ));
    }
    let dry_run = ctx.dry_run()?;
    let admission = &ctx.state.admission;
    let mut new = new;
    let name = ctx.ri.name.as_str();
    let mut a = ctx.attributes(Operation::Update, name, Some(&mut new), Some(old), dry_run);
    admission.admit(ctx.state, &mut a).await?;
    let mut prepared = prepare_update(ctx.info, new, old, part)?;
    let a = ctx.attributes(
        Operation::Update,
        name,
        Some(&mut prepared),
        Some(old),
        dry_run,
    );
    admission.validate(ctx.state, &a).await?;
    if part == Part::Main {
        let hooks = registry::hooks(ctx.info);
        if let Err(e) = hooks.begin_update(ctx.state, &mut prepared, old).await {
            hooks
                .finish(ctx.state, Some(old), Some(&prepared), false)
                .await;
            return Err(e);
        }
    }
    Ok(prepared)
}

/// The object's name and namespace must agree with the URL.
pub(super) fn check_identity(ctx: &Ctx<'_>, obj: &mut Value) -> Result<(), ApiError> {
    if obj.name().is_empty() {
        obj.set_meta("name", ctx.ri.name.clone());
    }
    if obj.name() != ctx.ri.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            obj.name(),
            ctx.ri.name
        )));
    }
    if ctx.info.namespaced {
        match obj.namespace() {
            "" => obj.set_meta("namespace", ctx.ns().to_string()),
            n if n != ctx.ns() => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

pub async fn patch(ctx: &Ctx<'_>, body: RequestBody) -> Result<Resp, ApiError> {
    let (obj, warnings) = patch_object(ctx, body, Part::Main).await?;
    Ok(ctx.object_response(200, obj, &warnings))
}

/// Applies a patch to the stored object and commits it, retrying on conflicts unless the
/// patch itself pins a resourceVersion.
pub(super) async fn patch_object(
    ctx: &Ctx<'_>,
    body: RequestBody,
    part: Part,
) -> Result<(Value, Vec<String>), ApiError> {
    let ct = ctx.content_type().unwrap_or("");
    let ptype = PatchType::from_content_type(ct).ok_or_else(|| {
        ApiError::unsupported_media_type(body::media_type(Some(ct)).as_str(), &PatchType::ACCEPTED)
    })?;
    if ptype == PatchType::Apply {
        return super::apply::apply(ctx, body, part).await;
    }
    if ctx.query.get("force").is_some() {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![rkube_api::Cause::forbidden(
                "force",
                "may not be specified for non-apply patch",
            )],
        ));
    }
    let bytes = body::read(body).await?;
    let patch_doc = body::parse_json(&bytes)?;
    let mode = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    for attempt in 0u32.. {
        let (old, old_rev) =
            storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
        let patched = apply_patch(ptype, &old, &patch_doc)?;
        let mut patched = patched;
        check_type(ctx.info, &mut patched)?;
        let (mut new, warnings) = decode_typed(ctx.info, patched, None, mode)?;
        check_identity(ctx, &mut new)?;
        // Only a resourceVersion the patch itself sets pins it (the patched object always
        // carries the stored one).
        let pinned = if pins_resource_version(ptype, &patch_doc) {
            new.resource_version().to_string()
        } else {
            String::new()
        };
        let mut prepared = prepare_against(ctx, new, &old, old_rev, part).await?;
        super::apply::record_update(ctx, &old, &mut prepared, part);
        let result = commit_update(ctx, &old, old_rev, prepared, ctx.dry_run()?).await;
        if !retry_on_conflict(&result, &pinned, attempt) {
            return result.map(|o| (o, warnings));
        }
    }
    unreachable!("the loop returns")
}

/// Whether a read-modify-write lost a race it may simply run again: a write conflict,
/// not pinned to a resourceVersion by the client, within a few attempts.
pub(super) fn retry_on_conflict<T>(
    result: &Result<T, ApiError>,
    pinned: &str,
    attempt: u32,
) -> bool {
    matches!(result, Err(e) if e.code == 409 && e.reason == "Conflict")
        && pinned.is_empty()
        && attempt < 5
}

/// Whether a patch document sets metadata.resourceVersion (an optimistic-lock precondition).
fn pins_resource_version(ptype: PatchType, doc: &Value) -> bool {
    match ptype {
        PatchType::Json => doc.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
                    && op.get("op").and_then(Value::as_str) != Some("test")
            })
        }),
        _ => doc
            .pointer("/metadata/resourceVersion")
            .is_some_and(|v| !v.is_null()),
    }
}

fn apply_patch(ptype: PatchType, old: &Value, doc: &Value) -> Result<Value, ApiError> {
    let r = match ptype {
        PatchType::Json => patch::json_patch(old, doc),
        PatchType::Merge => {
            if !doc.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            Ok(patch::merge_patch(old, doc))
        }
        PatchType::StrategicMerge => {
            if !doc.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge(old, doc, &patch::builtin_list_strategy)
        }
        PatchType::Apply => unreachable!("refused above"),
    };
    r.map_err(patch_error)
}

/// The Status of a patch that cannot be applied, as upstream answers it.
pub fn patch_error(e: PatchError) -> ApiError {
    match e {
        PatchError::Malformed(m) => ApiError::bad_request(m),
        PatchError::Failed(m) => ApiError::new(422, "Invalid", m),
        PatchError::TestFailed(m) => ApiError::new(422, "Invalid", m),
        e @ PatchError::TooManyOperations(_) => ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_patch_that_sets_the_resource_version_pins_it() {
        let merge = serde_json::json!({"status": {"phase": "Running"}});
        assert!(!pins_resource_version(PatchType::Merge, &merge));
        let pinned = serde_json::json!({"metadata": {"resourceVersion": "12"}});
        assert!(pins_resource_version(PatchType::StrategicMerge, &pinned));
        let cleared = serde_json::json!({"metadata": {"resourceVersion": null}});
        assert!(!pins_resource_version(PatchType::Merge, &cleared));
        let json = serde_json::json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": "3"}]);
        assert!(pins_resource_version(PatchType::Json, &json));
        let other = serde_json::json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]);
        assert!(!pins_resource_version(PatchType::Json, &other));
    }
}
