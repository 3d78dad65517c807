//! GET of one object and LIST with selectors, paging and resourceVersion semantics.

use base64::Engine;
use rkube_api::meta::ObjectMeta;
use rkube_api::registry::Conversion;
use rkube_api::selector::{FieldSelector, LabelSelector};
use rkube_api::{ApiError, ResourceInfo};
use serde_json::{json, Map, Value};

use bytes::Bytes;

use super::{field_value, Ctx};
use crate::cache::Freshness;
use crate::respond::{raw, Resp};
use crate::storage;

pub async fn get(ctx: &Ctx<'_>) -> Result<Resp, ApiError> {
    // GET reads the latest state; a resourceVersion must still be well-formed and not
    // in the future (upstream's NotOlderThan semantics for GET).
    if let Some(rv) = ctx.query.get("resourceVersion").filter(|rv| !rv.is_empty()) {
        let n = parse_resource_version(rv)?;
        let current = storage::current_revision(&ctx.state.store, ctx.info).await?;
        if n > current {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {n}, current: {current}"
            )));
        }
    }
    if ctx.output == crate::output::Output::Object {
        let kv = storage::get_kv(&ctx.state.store, ctx.info, ctx.ns(), &ctx.ri.name).await?;
        return Ok(raw(
            200,
            "application/json",
            storage::client_bytes(ctx.info, &kv)?,
        ));
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
    /// Each item's stored bytes and resourceVersion.
    pub items: Vec<(Bytes, i64)>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

impl ListResult {
    /// The items as client objects of `info`'s version.
    pub fn objects(&self, info: &ResourceInfo) -> Result<Vec<Value>, ApiError> {
        self.items
            .iter()
            .map(|(value, rev)| storage::decode_for(info, value, *rev))
            .collect()
    }
}

fn parse_limit(ctx: &Ctx<'_>) -> Result<usize, ApiError> {
    Ok(match ctx.query.get("limit") {
        None | Some("") => 0,
        Some(s) => s
            .parse::<i64>()
            .map_err(|_| {
                ApiError::bad_request(format!("limit: Invalid value: {s:?}: must be an integer"))
            })?
            .max(0) as usize,
    })
}

/// Lists objects for a request: selectors, `limit` / `continue`, `resourceVersion`.
/// Served from the watch cache, except continued pages and exact revisions, which the
/// store serves at the revision of the list.
pub async fn list_objects(ctx: &Ctx<'_>, sel: &Selectors) -> Result<ListResult, ApiError> {
    let limit = parse_limit(ctx)?;
    let prefix = storage::prefix(ctx.info, ctx.ns());
    if let Some(token) = ctx.query.get("continue").filter(|c| !c.is_empty()) {
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
        return list_from_store(ctx, sel, limit, c.revision, Some(c.start)).await;
    }
    let freshness = match requested_revision(ctx)? {
        Requested::Exact(rev) => return list_from_store(ctx, sel, limit, rev, None).await,
        Requested::Any => Freshness::Any,
        Requested::NotOlderThan(rev) => Freshness::NotOlderThan(rev),
        Requested::Latest => {
            Freshness::NotOlderThan(storage::current_revision(&ctx.state.store, ctx.info).await?)
        }
    };
    let cached = ctx
        .state
        .cache
        .list(ctx.info.storage_prefix, &prefix, sel, freshness, limit)
        .await;
    let Some(listed) = cached else {
        // The cache is loading or behind: the store answers, unless the revision asked
        // for does not exist yet.
        if let Freshness::NotOlderThan(min) = freshness {
            let current = storage::current_revision(&ctx.state.store, ctx.info).await?;
            if current < min {
                return Err(ApiError::timeout(format!(
                    "Too large resource version: {min}, current: {current}"
                )));
            }
        }
        return list_from_store(ctx, sel, limit, 0, None).await;
    };
    Ok(ListResult {
        items: listed
            .entries
            .iter()
            .map(|e| (e.value.clone(), e.revision))
            .collect(),
        revision: listed.revision,
        continue_token: listed
            .next
            .map(|next| encode_continue(listed.revision, &next)),
        remaining: listed.remaining.filter(|r| *r > 0),
    })
}

/// A list read from the store at `revision` (0: latest), from `start`.
async fn list_from_store(
    ctx: &Ctx<'_>,
    sel: &Selectors,
    limit: usize,
    mut revision: i64,
    mut start: Option<Vec<u8>>,
) -> Result<ListResult, ApiError> {
    let continued = start.is_some();
    let mut items = Vec::new();
    let chunk = if limit > 0 { limit.max(64) } else { 0 };
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
            Err(e) if e.code == 410 && continued => {
                return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
            }
            other => other?,
        };
        revision = resp.revision;
        let mut last_key = None;
        let mut taken = 0usize;
        for kv in &resp.kvs {
            taken += 1;
            last_key = Some(kv.key.clone());
            if !sel.is_empty()
                && !sel.matches(
                    ctx.info,
                    &storage::decode_for(ctx.info, &kv.value, kv.mod_revision)?,
                )
            {
                continue;
            }
            items.push((kv.value.clone(), kv.mod_revision));
            if limit > 0 && items.len() == limit {
                break;
            }
        }
        let has_more = resp.more || taken < resp.kvs.len();
        let mut next = last_key.map(|k| k.to_vec()).unwrap_or_default();
        next.push(0);
        if limit > 0 && items.len() == limit && has_more {
            let remaining = if sel.is_empty() {
                Some(resp.count as i64 - taken as i64)
            } else {
                None
            };
            return Ok(ListResult {
                items,
                revision,
                continue_token: Some(encode_continue(revision, &next)),
                remaining: remaining.filter(|r| *r > 0),
            });
        }
        if !has_more {
            break;
        }
        start = Some(next);
    }
    Ok(ListResult {
        items,
        revision,
        continue_token: None,
        remaining: None,
    })
}

/// The revision a read asks for.
enum Requested {
    /// No resourceVersion: the latest, consistent with every acknowledged write.
    Latest,
    /// "0": any recent state.
    Any,
    NotOlderThan(i64),
    /// `resourceVersionMatch=Exact`.
    Exact(i64),
}

/// Parses a `resourceVersion` as upstream does (an unsigned 64-bit integer; anything else
/// is 400). Revisions past the store's range are clamped, so they read as future
/// revisions ("Too large resource version", 504).
pub fn parse_resource_version(rv: &str) -> Result<i64, ApiError> {
    let n: u64 = rv.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: {rv:?}: must be an integer"
        ))
    })?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The revision a list asks for, from `resourceVersion` and `resourceVersionMatch`.
fn requested_revision(ctx: &Ctx<'_>) -> Result<Requested, ApiError> {
    let rv = ctx.query.get("resourceVersion").unwrap_or("");
    let m = ctx.query.get("resourceVersionMatch").unwrap_or("");
    let parsed = || parse_resource_version(rv);
    match m {
        "" | "NotOlderThan" => {
            if rv.is_empty() {
                if m == "NotOlderThan" {
                    return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"));
                }
                return Ok(Requested::Latest);
            }
            Ok(match parsed()? {
                0 => Requested::Any,
                n => Requested::NotOlderThan(n),
            })
        }
        "Exact" => {
            let r = parsed()?;
            if r == 0 {
                return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""));
            }
            Ok(Requested::Exact(r))
        }
        other => Err(ApiError::bad_request(format!(
            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

pub async fn list(ctx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let sel = Selectors::parse(ctx)?;
    let r = list_objects(ctx, &sel).await?;
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(r.revision.to_string()));
    if let Some(c) = &r.continue_token {
        meta.insert("continue".into(), json!(c));
    }
    if let Some(n) = r.remaining {
        meta.insert("remainingItemCount".into(), json!(n));
    }
    if ctx.output == crate::output::Output::Object {
        let head = json!({"kind": ctx.info.list_kind, "apiVersion": ctx.info.api_version(), "metadata": meta});
        return Ok(stream_list(head, r.items, ctx.info.conversion));
    }
    let out = ctx.output.list(ctx.info, r.objects(ctx.info)?, meta);
    Ok(raw(
        200,
        ctx.output.content_type(true),
        serde_json::to_vec(&out).unwrap_or_default(),
    ))
}

/// Bytes per chunk of a streamed list.
const LIST_CHUNK: usize = 256 * 1024;

/// A JSON list streamed in chunks: the items are spliced in as stored, never parsed, and
/// the client receives the first items while the rest are still being written, without
/// the whole list ever held in one buffer.
fn stream_list(
    head: Value,
    items: Vec<(Bytes, i64)>,
    conversion: Option<&'static Conversion>,
) -> Resp {
    let mut first = serde_json::to_vec(&head).unwrap_or_default();
    first.pop();
    first.extend_from_slice(b",\"items\":[");
    let chunks = futures::stream::unfold(
        (Some(first), items.into_iter(), false, false),
        move |(start, mut items, mut any, done)| async move {
            if done {
                return None;
            }
            let mut buf = start.unwrap_or_default();
            buf.reserve(LIST_CHUNK + 4096);
            let mut end = true;
            for (value, rev) in items.by_ref() {
                let mark = buf.len();
                if any {
                    buf.push(b',');
                }
                if let Err(e) = storage::write_served_json(conversion, &mut buf, &value, rev) {
                    // Already answering 200: leave the object out rather than break the list.
                    tracing::warn!("list: {}", e.message);
                    buf.truncate(mark);
                    continue;
                }
                any = true;
                if buf.len() >= LIST_CHUNK {
                    end = false;
                    break;
                }
            }
            if end {
                buf.extend_from_slice(b"]}");
            }
            Some((Bytes::from(buf), (None, items, any, end)))
        },
    );
    crate::respond::stream("application/json", chunks)
}
