//! WATCH: newline-delimited JSON events from a resourceVersion, with initial events,
//! bookmarks, selectors (objects leaving the selection are DELETED) and timeouts.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rkube_api::meta::ObjectMeta;
use rkube_api::{ApiError, ResourceInfo};
use rkube_store::{EventType, KeySpan, StoreError, WatchResponse};
use serde_json::{json, Value};

use crate::output::Output;
use crate::respond::Resp;
use crate::rest::{list_objects, Ctx};
use crate::storage;

/// Starts a watch and streams its events.
pub async fn watch(ctx: &Ctx<'_>) -> Result<Resp, ApiError> {
    let sel = crate::rest::read_selectors(ctx)?;
    let rv = ctx.query.get("resourceVersion").unwrap_or("").to_string();
    let send_initial = ctx.query.flag("sendInitialEvents");
    let bookmarks = ctx.query.flag("allowWatchBookmarks");
    if send_initial && ctx.query.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid("", "ListOptions", "", vec![rkube_api::Cause::forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to \"NotOlderThan\"",
        )]));
    }
    if send_initial && !bookmarks {
        return Err(ApiError::invalid(
            "",
            "ListOptions",
            "",
            vec![rkube_api::Cause::forbidden(
                "allowWatchBookmarks",
                "allowWatchBookmarks must be set to true when sendInitialEvents is set",
            )],
        ));
    }
    let timeout =
        match ctx.query.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: Invalid value: {s:?}"))
            })?),
            // Upstream closes watches after a random 30–60 minutes so clients rebalance.
            None => Duration::from_secs(1800 + fastrand_secs(1800)),
        };
    // Initial state: for an unset or "0" resourceVersion the current objects are sent as
    // ADDED events first, as upstream does; sendInitialEvents does the same and ends
    // with a bookmark.
    let (initial, after) = if rv.is_empty() || rv == "0" || send_initial {
        let listed = list_objects_all(ctx, &sel).await?;
        (listed.0, listed.1)
    } else {
        let n = rv.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {rv:?}: must be an integer"
            ))
        })?;
        (Vec::new(), n)
    };
    let info = ctx.info;
    let prefix = storage::prefix(info, ctx.ns());
    let stream = ctx
        .state
        .store
        .watch(KeySpan::prefix(prefix.as_bytes()), after)
        .await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let state = ctx.state.clone();
    let key = (info.group, info.version, info.plural);
    let output = ctx.output;
    tokio::spawn(async move {
        state.metrics.watch_opened(key.2);
        let _guard = crate::metrics::WatchGuard {
            metrics: &state.metrics,
            resource: key.2,
        };
        let info = state.registry.get(key.0, key.1, key.2).expect("registered");
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                tx.send(Bytes::from(line)).await.is_ok()
            }
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(StoreError::Compacted { compacted, .. }) => {
                let e =
                    ApiError::expired(format!("too old resource version: {after} ({compacted})"));
                send(json!({"type": "ERROR", "object": e.to_status()})).await;
                return;
            }
            Err(e) => {
                let e = storage::store_error(e, info, "");
                send(json!({"type": "ERROR", "object": e.to_status()})).await;
                return;
            }
        };
        for obj in initial {
            if !send(event("ADDED", info, output, obj)).await {
                return;
            }
        }
        if send_initial {
            let mut b = bookmark(info, after);
            b["object"]["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            if !send(b).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let next = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                n = stream.next() => n,
            };
            match next {
                None => return,
                Some(Err(StoreError::Compacted {
                    compacted,
                    requested,
                })) => {
                    let e = ApiError::expired(format!(
                        "too old resource version: {requested} ({compacted})"
                    ));
                    send(json!({"type": "ERROR", "object": e.to_status()})).await;
                    return;
                }
                Some(Err(e)) => {
                    let e = storage::store_error(e, info, "");
                    send(json!({"type": "ERROR", "object": e.to_status()})).await;
                    return;
                }
                Some(Ok(WatchResponse::Progress(rev))) => {
                    if bookmarks && !send(bookmark(info, rev)).await {
                        return;
                    }
                }
                Some(Ok(WatchResponse::Events(events))) => {
                    for ev in events {
                        let Some(e) = translate(info, &sel, output, ev) else {
                            continue;
                        };
                        if !send(e).await {
                            return;
                        }
                    }
                }
            }
        }
    });
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

/// The full current list (no paging) and its revision.
async fn list_objects_all(
    ctx: &Ctx<'_>,
    sel: &crate::rest::Selectors,
) -> Result<(Vec<Value>, i64), ApiError> {
    let mut q = ctx.query.clone();
    q.remove(&[
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
    ]);
    let sub = Ctx {
        state: ctx.state,
        info: ctx.info,
        ri: ctx.ri,
        query: &q,
        headers: ctx.headers,
        output: ctx.output,
    };
    let r = list_objects(&sub, sel).await?;
    Ok((r.items, r.revision))
}

fn event(kind: &str, info: &ResourceInfo, output: Output, obj: Value) -> Value {
    json!({"type": kind, "object": output.object(info, obj)})
}

fn bookmark(info: &ResourceInfo, rev: i64) -> Value {
    json!({"type": "BOOKMARK", "object": {
        "kind": info.kind,
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": rev.to_string()},
    }})
}

/// A store event as the watch event a client of this selection sees.
fn translate(
    info: &ResourceInfo,
    sel: &crate::rest::Selectors,
    output: Output,
    ev: rkube_store::Event,
) -> Option<Value> {
    let prev = ev.prev_kv.as_ref().and_then(|kv| storage::decode(kv).ok());
    let prev_matches = prev.as_ref().is_some_and(|p| sel.matches(info, p));
    match ev.kind {
        EventType::Delete => {
            let mut p = prev?;
            if !prev_matches {
                return None;
            }
            p.set_meta("resourceVersion", ev.kv.mod_revision.to_string());
            Some(event("DELETED", info, output, p))
        }
        EventType::Put => {
            let obj = storage::decode(&ev.kv).ok()?;
            let now_matches = sel.matches(info, &obj);
            match (prev_matches, now_matches) {
                (false, true) => Some(event("ADDED", info, output, obj)),
                (true, true) => Some(event("MODIFIED", info, output, obj)),
                (true, false) => Some(event("DELETED", info, output, obj)),
                (false, false) => None,
            }
        }
    }
}

fn fastrand_secs(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % max.max(1)
}
