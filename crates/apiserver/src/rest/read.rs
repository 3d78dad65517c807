//! GET of one object and LIST with selectors, paging and resourceVersion semantics.

use base64::Engine;
use rkube_api::meta::ObjectMeta;
use rkube_api::selector::{FieldSelector, LabelSelector};
use rkube_api::{ApiError, ResourceInfo};
use serde_json::{json, Map, Value};

use super::{field_value, Ctx};
use crate::respond::{raw, Resp};
use crate::storage;

pub async fn get(ctx: &Ctx<'_>) -> Result<Resp, ApiError> {
    if ctx.output == crate::output::Output::Object {
        let kv = storage::get_kv(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
        return Ok(raw(200, "application/json", storage::client_bytes(&kv)?));
    }
    let (obj, _) = storage::get(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
    Ok(ctx.object_response(200, obj, &[]))
}

/// Label and field selectors of a list or watch, checked against the kind.
#[derive(Clone)]
pub struct Selectors {
    pub label: LabelSelector,
    pub field: FieldSelector,
}

impl Selectors {
    pub fn parse(ctx: &Ctx<'_>) -> Result<Self, ApiError> {
        let label =
            LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or("")).map_err(|e| {
                ApiError::bad_request(format!(
                    "unable to parse label selector {:?}: {e}",
                    ctx.query.get("labelSelector").unwrap_or("")
                ))
            })?;
        let field = FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
        for f in field.fields() {
            let known = matches!(f, "metadata.name" | "metadata.namespace")
                || ctx.info.strategy.field_labels().contains(&f);
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f} (the {} field selectors are: {})",
                    ctx.info.plural,
                    ["metadata.name", "metadata.namespace"]
                        .iter()
                        .chain(ctx.info.strategy.field_labels())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(Selectors { label, field })
    }

    pub fn is_empty(&self) -> bool {
        self.label.is_empty() && self.field.is_empty()
    }

    pub fn matches(&self, info: &ResourceInfo, obj: &Value) -> bool {
        self.label.matches(obj.labels()) && self.field.matches(|f| field_value(info, obj, f))
    }
}

/// The position a `continue` token resumes from.
struct Continue {
    revision: i64,
    start: Vec<u8>,
}

fn encode_continue(revision: i64, start: &[u8]) -> String {
    let token =
        json!({"v": "meta.k8s.io/v1", "rv": revision, "start": String::from_utf8_lossy(start)});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(s: &str, prefix: &str) -> Result<Continue, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
        .map_err(|_| bad("not base64"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad("not JSON"))?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err(bad(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    let revision = v
        .get("rv")
        .and_then(Value::as_i64)
        .filter(|r| *r > 0)
        .ok_or_else(|| bad("no resourceVersion"))?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no start key"))?;
    if !start.starts_with(prefix) {
        return Err(bad("the key does not belong to this list"));
    }
    Ok(Continue {
        revision,
        start: start.as_bytes().to_vec(),
    })
}

/// The result of a list: items, the revision they are consistent at, and paging state.
pub struct ListResult {
    pub items: Vec<Value>,
    /// With `raw`: the items as client JSON bytes, not parsed (no selector to apply).
    pub raw: Vec<Vec<u8>>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

/// Lists objects for a request: selectors, `limit` / `continue`, `resourceVersion`.
pub async fn list_objects(ctx: &Ctx<'_>, sel: &Selectors) -> Result<ListResult, ApiError> {
    list_objects_as(ctx, sel, false).await
}

/// `list_objects`, with `raw`: items stay JSON bytes (only without selectors).
pub async fn list_objects_as(
    ctx: &Ctx<'_>,
    sel: &Selectors,
    raw: bool,
) -> Result<ListResult, ApiError> {
    let raw = raw && sel.is_empty();
    let mut raw_items = Vec::new();
    let limit: usize = match ctx.query.get("limit") {
        None | Some("") => 0,
        Some(s) => s
            .parse::<i64>()
            .map_err(|_| {
                ApiError::bad_request(format!("limit: Invalid value: {s:?}: must be an integer"))
            })?
            .max(0) as usize,
    };
    let prefix = storage::prefix(ctx.info, ctx.ns());
    let (mut revision, mut start) = match ctx.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if ctx
                .query
                .get("resourceVersion")
                .is_some_and(|rv| !rv.is_empty())
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let c = decode_continue(token, &prefix)?;
            (c.revision, Some(c.start))
        }
        None => (exact_revision(ctx)?, None),
    };
    let mut items = Vec::new();
    let chunk = if limit > 0 { limit.max(64) } else { 0 };
    let remaining;
    loop {
        let resp = match storage::range(
            &ctx.state.store,
            ctx.info,
            ctx.ns(),
            start.as_deref(),
            revision,
            chunk,
        )
        .await
        {
            Err(e) if e.code == 410 && ctx.query.get("continue").is_some() => {
                return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
            }
            other => other?,
        };
        revision = resp.revision;
        let more = resp.more;
        let total_rest = resp.count;
        let mut last_key = None;
        let mut taken = 0usize;
        for kv in &resp.kvs {
            taken += 1;
            last_key = Some(kv.key.clone());
            if raw {
                raw_items.push(storage::client_bytes(kv)?);
                if limit > 0 && raw_items.len() == limit {
                    break;
                }
                continue;
            }
            let obj = storage::decode(kv)?;
            if sel.matches(ctx.info, &obj) {
                items.push(obj);
                if limit > 0 && items.len() == limit {
                    break;
                }
            }
        }
        let found = if raw { raw_items.len() } else { items.len() };
        let exhausted_page = taken == resp.kvs.len();
        let has_more = more || !exhausted_page;
        if limit > 0 && found == limit && has_more {
            let mut next = last_key.map(|k| k.to_vec()).unwrap_or_default();
            next.push(0);
            let rem = if sel.is_empty() {
                Some(total_rest as i64 - taken as i64)
            } else {
                None
            };
            return Ok(ListResult {
                items,
                raw: raw_items,
                revision,
                continue_token: Some(encode_continue(revision, &next)),
                remaining: rem.filter(|r| *r > 0),
            });
        }
        if !has_more {
            remaining = None;
            break;
        }
        let mut next = last_key.map(|k| k.to_vec()).unwrap_or_default();
        next.push(0);
        start = Some(next);
    }
    Ok(ListResult {
        items,
        raw: raw_items,
        revision,
        continue_token: None,
        remaining,
    })
}

/// The revision a list must be served at: an exact `resourceVersion` with
/// `resourceVersionMatch=Exact`, else the latest (0).
fn exact_revision(ctx: &Ctx<'_>) -> Result<i64, ApiError> {
    let rv = ctx.query.get("resourceVersion").unwrap_or("");
    let m = ctx.query.get("resourceVersionMatch").unwrap_or("");
    let parsed = || {
        rv.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {rv:?}: must be an integer"
            ))
        })
    };
    match m {
        "" | "NotOlderThan" => {
            if !rv.is_empty() {
                parsed()?;
            } else if m == "NotOlderThan" {
                return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"));
            }
            Ok(0)
        }
        "Exact" => {
            let r = parsed()?;
            if r == 0 {
                return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
            }
            Ok(r)
        }
        other => Err(ApiError::bad_request(format!(
            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

pub async fn list(ctx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let sel = Selectors::parse(ctx)?;
    let fast = ctx.output == crate::output::Output::Object && sel.is_empty();
    let r = list_objects_as(ctx, &sel, fast).await?;
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(r.revision.to_string()));
    if let Some(c) = r.continue_token {
        meta.insert("continue".into(), json!(c));
    }
    if let Some(n) = r.remaining {
        meta.insert("remainingItemCount".into(), json!(n));
    }
    if fast {
        // The items are already client JSON: write the list around them.
        let head = json!({"kind": ctx.info.list_kind, "apiVersion": ctx.info.api_version(), "metadata": meta});
        let mut body = serde_json::to_vec(&head).unwrap_or_default();
        body.pop();
        body.extend_from_slice(b",\"items\":[");
        let total: usize = r.raw.iter().map(Vec::len).sum();
        body.reserve(total + r.raw.len() + 2);
        for (i, item) in r.raw.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"]}");
        return Ok(raw(200, "application/json", body));
    }
    let out = ctx.output.list(ctx.info, r.items, meta);
    Ok(raw(
        200,
        ctx.output.content_type(true),
        serde_json::to_vec(&out).unwrap_or_default(),
    ))
}
