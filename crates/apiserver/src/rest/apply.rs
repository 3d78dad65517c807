//! Server-side apply (`application/apply-patch+yaml`) and the managedFields bookkeeping
//! of ordinary updates.

use rkube_api::apply::{self as ssa, ApplyRequest, Conflict};
use rkube_api::meta::{now_rfc3339, ObjectMeta};
use rkube_api::{ApiError, Cause};
use serde_json::{json, Value};

use super::write::{
    check_identity, check_type, commit_update, create_object, prepare_against, retry_on_conflict,
    Part,
};
use super::Ctx;
use crate::body;
use crate::serve::RequestBody;
use crate::storage;
use crate::validation::{decode_typed, FieldValidation};

/// The field manager of a request: `fieldManager`, else the User-Agent's program name.
fn manager(ctx: &Ctx<'_>) -> String {
    if let Some(m) = ctx.query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    ctx.headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn subresource(part: Part) -> &'static str {
    match part {
        Part::Main => "",
        Part::Status => "status",
    }
}

/// Credits an ordinary update's changes to its manager, on objects that track fields.
pub(super) fn record_update(ctx: &Ctx<'_>, old: &Value, new: &mut Value, part: Part) {
    ssa::track_update(
        old,
        new,
        &manager(ctx),
        &ctx.info.api_version(),
        &now_rfc3339(),
        subresource(part),
    );
}

/// The 409 upstream sends for apply conflicts.
fn conflict_error(ctx: &Ctx<'_>, conflicts: &[Conflict]) -> ApiError {
    let who = |c: &Conflict| format!("conflict with \"{}\" using {}", c.manager, c.api_version);
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: {}: {}",
            who(&conflicts[0]),
            conflicts[0].field
        )
    } else {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|c| format!("{}: {}", who(c), c.field))
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": who(c), "field": c.field}))
        .collect();
    let mut e = ApiError::conflict(ctx.info.group, ctx.info.plural, &ctx.ri.name, "");
    e.message = message;
    e.details["causes"] = Value::Array(causes);
    e
}

/// PATCH with an apply configuration: creates the object or merges the configuration
/// into it, with field ownership and conflicts.
pub(super) async fn apply(
    ctx: &Ctx<'_>,
    body: RequestBody,
    part: Part,
) -> Result<(Value, Vec<String>), ApiError> {
    let Some(field_manager) = ctx.query.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![Cause::new(
                "FieldValueRequired",
                "fieldManager",
                "Required value: is required for apply patch".into(),
            )],
        ));
    };
    let force = match ctx.query.get("force") {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "force: Invalid value: {other:?}: must be true or false"
            )))
        }
    };
    let bytes = body::read(body).await?;
    let mut applied = body::decode_object(Some("application/yaml"), &bytes, None)?;
    check_type(ctx.info, &mut applied)?;
    let mode = FieldValidation::parse(ctx.query.get("fieldValidation"))?;
    let (mut applied, warnings) = decode_typed(ctx.info, applied, None, mode)?;
    check_identity(ctx, &mut applied)?;
    let api_version = ctx.info.api_version();
    let now = now_rfc3339();
    let req = ApplyRequest {
        manager: field_manager,
        api_version: &api_version,
        force,
        subresource: subresource(part),
        now: &now,
    };
    let pinned = applied.resource_version().to_string();
    for attempt in 0u32.. {
        let live = match storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await {
            Ok(found) => Some(found),
            Err(e) if e.code == 404 && part == Part::Main => None,
            Err(e) => return Err(e),
        };
        let Some((old, old_rev)) = live else {
            let obj = ssa::apply(None, &applied, &req).map_err(|c| conflict_error(ctx, &c))?;
            match create_object(ctx, obj, false).await {
                Err(e) if e.code == 409 && e.reason == "AlreadyExists" && attempt < 5 => continue,
                other => return other.map(|o| (o, warnings)),
            }
        };
        let merged = ssa::apply(Some(&old), &applied, &req).map_err(|c| conflict_error(ctx, &c))?;
        let mut merged = merged;
        merged.set_meta("resourceVersion", json!(pinned));
        let prepared = prepare_against(ctx, merged, &old, old_rev, part).await?;
        let result = commit_update(ctx, &old, old_rev, prepared, ctx.dry_run()?).await;
        if !retry_on_conflict(&result, &pinned, attempt) {
            return result.map(|o| (o, warnings));
        }
    }
    unreachable!("the loop returns")
}
