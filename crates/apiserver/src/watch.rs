//! WATCH: newline-delimited JSON events from a resourceVersion, with initial events,
//! bookmarks, selectors (objects leaving the selection are DELETED) and timeouts.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rkube_api::{ApiError, ResourceInfo};
use rkube_store::{KeySpan, StoreError, WatchResponse};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::cache::{Change, Freshness, Item, Subscription};
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
    let parse_rv = || crate::rest::parse_resource_version(&rv);
    let initial = if rv.is_empty() {
        let current = storage::current_revision(&ctx.state.store, ctx.info).await?;
        Some(Freshness::NotOlderThan(current))
    } else if rv == "0" {
        Some(Freshness::Any)
    } else if send_initial {
        Some(Freshness::NotOlderThan(parse_rv()?))
    } else {
        None
    };
    let after = match initial {
        Some(_) => 0,
        None => parse_rv()?,
    };
    let info = ctx.info;
    let ns_prefix = storage::prefix(info, ctx.ns());
    // The watch cache serves watches that start after the compaction point; older ones
    // go to the store, which answers 410.
    let cached = if initial.is_some() || after >= ctx.state.compacted_revision() {
        ctx.state
            .cache
            .watch(
                info.storage_prefix,
                after,
                initial.map(|f| (ns_prefix.as_str(), &sel, f)),
            )
            .await
    } else {
        None
    };
    let (source, initial, after) = match cached {
        Some((sub, entries, after)) => {
            let items = entries
                .iter()
                .map(|e| (e.value.clone(), e.revision))
                .collect();
            (Ok(Source::Cache(sub)), items, after)
        }
        None => {
            let (items, after) = if initial.is_some() {
                list_objects_all(ctx, &sel).await?
            } else {
                (Vec::new(), after)
            };
            let w = ctx
                .state
                .store
                .watch(KeySpan::prefix(ns_prefix.as_bytes()), after)
                .await
                .map(|w| Source::Store(w, VecDeque::new()));
            (w, items, after)
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
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
        let send_line = |line: Bytes| {
            let tx = tx.clone();
            async move { tx.send(line).await.is_ok() }
        };
        let send = |v: Value| send_line(encode_line(&v));
        let mut source = match source {
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
        for (value, rev) in initial {
            let Some(line) = object_line("ADDED", info, output, &value, rev) else {
                continue;
            };
            if !send_line(line).await {
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
        let mut reached = 0u64;
        loop {
            let next = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                n = source.next(info, after) => n,
            };
            match next {
                Next::End => return,
                Next::Error(e) => {
                    send(json!({"type": "ERROR", "object": e.to_status()})).await;
                    return;
                }
                Next::Progress(rev) => {
                    if bookmarks && !send(bookmark(info, rev)).await {
                        return;
                    }
                }
                Next::Event(ev) => {
                    reached = reached.max(ev.offset);
                    if !ev.key.starts_with(ns_prefix.as_bytes()) {
                        continue;
                    }
                    let Some(line) = translate(info, &sel, output, &ev) else {
                        continue;
                    };
                    // While the client does not read, the backlog grows: past its
                    // budget the watch ends (the client watches again, as upstream's
                    // clients do when an unresponsive watcher is closed).
                    let sent = loop {
                        tokio::select! {
                            _ = &mut deadline => break false,
                            permit = tx.reserve() => match permit {
                                Ok(p) => {
                                    p.send(line);
                                    break true;
                                }
                                Err(_) => break false,
                            },
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                                if source.backlog(reached) > WATCHER_BACKLOG {
                                    break false;
                                }
                            }
                        }
                    };
                    if !sent {
                        return;
                    }
                }
            }
        }
    });
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        next_frame(&mut rx)
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

/// Most bytes of queued event lines sent as one frame.
const FRAME: usize = 64 * 1024;

/// The next frame of a watch body: every line already queued, up to `FRAME` bytes, so
/// a burst of events goes out in one write (and TLS record) instead of one per event.
async fn next_frame(rx: &mut tokio::sync::mpsc::Receiver<Bytes>) -> Option<Bytes> {
    let first = rx.recv().await?;
    let Ok(second) = rx.try_recv() else {
        return Some(first);
    };
    let mut buf = Vec::with_capacity((first.len() + second.len()) * 2);
    buf.extend_from_slice(&first);
    buf.extend_from_slice(&second);
    while buf.len() < FRAME {
        match rx.try_recv() {
            Ok(line) => buf.extend_from_slice(&line),
            Err(_) => break,
        }
    }
    Some(Bytes::from(buf))
}

/// The full current list (no paging) and its revision.
async fn list_objects_all(
    ctx: &Ctx<'_>,
    sel: &crate::rest::Selectors,
) -> Result<(Vec<(Bytes, i64)>, i64), ApiError> {
    let mut q = ctx.query.clone();
    q.remove(&[
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
    ]);
    let sub = Ctx {
        state: ctx.state,
        user: ctx.user,
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

/// A change as the watch event line a client of this selection sees: objects entering
/// the selection are ADDED, leaving it DELETED. Plain-object lines are encoded once per
/// change and shared by all watchers.
fn translate(
    info: &ResourceInfo,
    sel: &crate::rest::Selectors,
    output: Output,
    ch: &Change,
) -> Option<Bytes> {
    let prev_matches = ch.previous.as_ref().is_some_and(|p| p.matches(sel));
    let (index, entry, rev) = if ch.deleted {
        // A deleted object carries the deletion's resourceVersion.
        (
            2,
            ch.previous.as_ref().filter(|_| prev_matches)?,
            ch.revision,
        )
    } else {
        let obj = ch.object.as_ref()?;
        let index = match (prev_matches, obj.matches(sel)) {
            (false, true) => 0,
            (true, true) => 1,
            (true, false) => 2,
            (false, false) => return None,
        };
        (index, obj, obj.revision)
    };
    let kind = ["ADDED", "MODIFIED", "DELETED"][index];
    let make = || object_line(kind, info, output, &entry.value, rev).unwrap_or_default();
    // A DELETED for an object leaving the selection carries the new object, so only
    // plain deletions share the cached DELETED line.
    let shareable =
        output == Output::Object && info.conversion.is_none() && (index != 2 || ch.deleted);
    let line = if shareable {
        ch.line(index, make)
    } else {
        make()
    };
    (!line.is_empty()).then_some(line)
}

/// The event line of a stored object in the requested output, spliced without parsing
/// for plain objects.
fn object_line(
    kind: &str,
    info: &ResourceInfo,
    output: Output,
    value: &[u8],
    rev: i64,
) -> Option<Bytes> {
    if output == Output::Object && info.conversion.is_none() {
        let mut line = Vec::with_capacity(value.len() + 64);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        storage::write_client_json(&mut line, value, rev).ok()?;
        line.extend_from_slice(b"}\n");
        return Some(Bytes::from(line));
    }
    let obj = storage::decode_for(info, value, rev).ok()?;
    Some(encode_line(&event(kind, info, output, obj)))
}

fn encode_line(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Bytes of changes a watcher may have waiting for it (in the cache's broadcast, which
/// keeps every change until each watcher has taken it) before it is closed: a client
/// that stops reading cannot make the server hold the whole stream of changes.
const WATCHER_BACKLOG: u64 = 32 << 20;

/// Where a watch's changes come from: the watch cache, or its own store watch.
enum Source {
    Cache(Subscription),
    Store(rkube_store::WatchStream, VecDeque<Arc<Change>>),
}

enum Next {
    Event(Arc<Change>),
    Progress(i64),
    Error(ApiError),
    End,
}

impl Source {
    /// Bytes of changes queued for this watcher after the one at `reached`.
    fn backlog(&self, reached: u64) -> u64 {
        match self {
            Source::Cache(sub) => sub
                .sent
                .load(Ordering::Relaxed)
                .saturating_sub(reached.max(sub.subscribed_at)),
            _ => 0,
        }
    }

    async fn next(&mut self, info: &ResourceInfo, after: i64) -> Next {
        match self {
            Source::Cache(sub) => {
                if let Some(ev) = sub.backlog.pop_front() {
                    return Next::Event(ev);
                }
                loop {
                    match sub.rx.recv().await {
                        Ok(Item::Change(ev)) if ev.revision > after => {
                            let behind = sub.sent.load(Ordering::Relaxed).saturating_sub(ev.offset);
                            if behind > WATCHER_BACKLOG {
                                return Next::Error(ApiError::expired(format!(
                                    "the watch fell {behind} bytes of changes behind; start a new watch from the last resourceVersion seen"
                                )));
                            }
                            return Next::Event(ev);
                        }
                        Ok(Item::Change(_)) => continue,
                        Ok(Item::Progress(rev)) => return Next::Progress(rev),
                        Err(RecvError::Lagged(n)) => {
                            return Next::Error(ApiError::expired(format!(
                                "the watch fell {n} events behind; start a new watch from the last resourceVersion seen"
                            )))
                        }
                        Err(RecvError::Closed) => return Next::End,
                    }
                }
            }
            Source::Store(stream, pending) => loop {
                if let Some(ev) = pending.pop_front() {
                    return Next::Event(ev);
                }
                match stream.next().await {
                    None => return Next::End,
                    Some(Err(StoreError::Compacted {
                        compacted,
                        requested,
                    })) => {
                        return Next::Error(ApiError::expired(format!(
                            "too old resource version: {requested} ({compacted})"
                        )))
                    }
                    Some(Err(e)) => return Next::Error(ApiError::internal(e.to_string())),
                    Some(Ok(WatchResponse::Progress(rev))) => return Next::Progress(rev),
                    // Decoded here for this watcher alone.
                    Some(Ok(WatchResponse::Events(events))) => pending.extend(
                        events
                            .iter()
                            .filter_map(|ev| Change::from_event(info.strategy, ev, None))
                            .map(Arc::new),
                    ),
                }
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_lines_go_out_together_in_order() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        tx.send(Bytes::from_static(b"a\n")).await.unwrap();
        assert_eq!(next_frame(&mut rx).await.unwrap(), "a\n");
        let line = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..100 {
            tx.send(line.clone()).await.unwrap();
        }
        tx.send(Bytes::from_static(b"end")).await.unwrap();
        let mut frames = Vec::new();
        drop(tx);
        while let Some(f) = next_frame(&mut rx).await {
            frames.push(f);
        }
        // 100,003 bytes: one frame up to 64 KiB plus a line, then the rest.
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].len(), 66_000);
        assert_eq!(frames.concat().len(), 100_003);
        assert!(frames[1].ends_with(b"xend"));
    }
}
