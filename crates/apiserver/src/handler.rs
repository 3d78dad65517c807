//! Top-level routing: authentication, non-resource endpoints (version, health, metrics,
//! discovery) and the generic resource path, with request metrics.

use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request};
use rkube_api::ApiError;
use serde_json::json;

use crate::auth::User;
use crate::request::{self, Query};
use crate::respond::{error, json, raw, text, Resp};
use crate::serve::RequestBody;
use crate::{discovery, limits, rest, State};

/// Serves one HTTP request.
pub async fn handle(state: Arc<State>, cert_user: Option<User>, req: Request<RequestBody>) -> Resp {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let info = request::parse(&method, &path, &query);
    let (verb, resource) = match &info {
        Some(i) if !i.resource.is_empty() => {
            let r = if i.subresource.is_empty() {
                i.resource.clone()
            } else {
                format!("{}/{}", i.resource, i.subresource)
            };
            (i.verb.to_ascii_uppercase(), r)
        }
        _ => (method.as_str().to_string(), String::new()),
    };
    let resp = if let Some(j) = state
        .join
        .as_ref()
        .filter(|_| path.starts_with("/cacerts") || path.starts_with("/v1-rkube/"))
    {
        join_endpoint(j, &method, &path, req).await
    } else if cert_user.is_none() {
        error(&ApiError::unauthorized())
    } else if let Some(e) = impersonation(&req) {
        error(&e)
    } else {
        let long_running = limits::is_long_running(info.as_ref());
        let limited = !long_running && !limits::is_exempt(cert_user.as_ref());
        let permit = if limited {
            state.inflight.try_acquire(limits::is_mutating(&method))
        } else {
            None
        };
        if limited && permit.is_none() {
            too_many_requests()
        } else {
            let serve = async {
                match &info {
                    Some(i) if !i.resource.is_empty() => {
                        let user = cert_user.as_ref().ok_or_else(ApiError::unauthorized)?;
                        rest::handle(&state, user, i, &query, req).await
                    }
                    _ => non_resource(&state, &method, &path, &query, &req),
                }
            };
            let r = if long_running {
                serve.await
            } else {
                match tokio::time::timeout(state.limits.request_timeout, serve).await {
                    Ok(r) => r,
                    Err(_) => Err(request_timed_out()),
                }
            };
            drop(permit);
            r.unwrap_or_else(|e| error(&e))
        }
    };
    let mut resp = if method == Method::HEAD {
        let (parts, _) = resp.into_parts();
        Resp::from_parts(parts, crate::respond::full(bytes::Bytes::new()))
    } else {
        resp
    };
    // Upstream's filters: every answer carries an audit ID and is not to be cached.
    let h = resp.headers_mut();
    if let Ok(id) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("audit-id", id);
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(http::HeaderValue::from_static("no-cache, private"));
    state
        .metrics
        .request(&verb, &resource, resp.status().as_u16(), start.elapsed());
    tracing::debug!(%method, %path, code = resp.status().as_u16(), "request");
    resp
}

/// Impersonation headers (`kubectl --as`) are refused until impersonation is
/// authorized: ignoring them would run the request as the caller, not as asked.
fn impersonation(req: &Request<RequestBody>) -> Option<ApiError> {
    let mut names = req
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-"));
    let first = names.next()?;
    let user = req
        .headers()
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The resources upstream's impersonation filter authorizes.
    let (resource, name) = match first.as_str() {
        _ if !user.is_empty() => ("users", user),
        "impersonate-group" => ("groups", ""),
        "impersonate-uid" => ("uids", ""),
        _ => ("userextras", ""),
    };
    Some(ApiError::forbidden(
        "",
        resource,
        name,
        "impersonation is not supported by this server yet",
    ))
}

/// The answer when a pool of in-flight requests is full: upstream's plain-text 429 with
/// Retry-After, which client-go and kubectl retry.
fn too_many_requests() -> Resp {
    let mut r = text(429, "Too many requests, please try again later.\n");
    r.headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
}

/// A request that ran past the request timeout (504, as upstream's finisher answers).
fn request_timed_out() -> ApiError {
    let mut e = ApiError::timeout(
        "Timeout: request did not complete within requested timeout - context deadline exceeded",
    );
    e.details = json!({"retryAfterSeconds": 0});
    e
}

/// The join endpoints (no client certificate needed).
async fn join_endpoint(
    j: &crate::join::Join,
    method: &Method,
    path: &str,
    req: Request<RequestBody>,
) -> Resp {
    match (method.as_str(), path) {
        ("GET", "/cacerts") => crate::join::cacerts(&j.pki),
        ("POST", "/v1-rkube/node-credentials") => {
            let (parts, body) = req.into_parts();
            match crate::body::read(body).await {
                Ok(bytes) => crate::join::node_credentials(j, &parts.headers, &bytes),
                Err(e) => error(&e),
            }
        }
        _ => error(&ApiError::path_not_found()),
    }
}

fn non_resource(
    state: &Arc<State>,
    method: &Method,
    path: &str,
    query: &Query,
    req: &Request<RequestBody>,
) -> Result<Resp, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::path_not_found());
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = path.trim_end_matches('/');
    match path {
        "/version" => Ok(json(200, &version())),
        "/healthz" | "/livez" | "/readyz" => Ok(health(state, path, query.has("verbose"))),
        p if p.starts_with("/healthz/")
            || p.starts_with("/livez/")
            || p.starts_with("/readyz/") =>
        {
            let check = p.rsplit('/').next().unwrap_or("");
            if checks(state, p.starts_with("/readyz"))
                .iter()
                .any(|(n, _)| *n == check)
            {
                Ok(text(200, "ok"))
            } else {
                Err(ApiError::path_not_found())
            }
        }
        "/openapi/v3" => Ok(raw(
            200,
            "application/json",
            state.openapi.v3_index(&state.registry),
        )),
        p if p.starts_with("/openapi/v3/") => {
            let doc = state
                .openapi
                .v3_document(&state.registry, &p["/openapi/v3/".len()..])?;
            Ok(raw(200, "application/json", doc))
        }
        "/openapi/v2" | "/swagger-2.0.0.pb-v1" => {
            const PB: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
            let first = accept.split(',').next().unwrap_or("").trim();
            if first.starts_with("application/com.github.proto-openapi.spec.v2")
                || path == "/swagger-2.0.0.pb-v1"
            {
                Ok(raw(200, PB, state.openapi.v2_protobuf(&state.registry)))
            } else {
                Ok(raw(
                    200,
                    "application/json",
                    state.openapi.v2(&state.registry),
                ))
            }
        }
        "/metrics" => Ok(raw(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        )),
        "/api" => match discovery::aggregated_version(accept) {
            Some(v) => Ok(aggregated(
                discovery::aggregated(&state.registry, true, v),
                v,
            )),
            None => Ok(json(200, &discovery::api_versions(&state.server_address))),
        },
        "/apis" => match discovery::aggregated_version(accept) {
            Some(v) => Ok(aggregated(
                discovery::aggregated(&state.registry, false, v),
                v,
            )),
            None => Ok(json(200, &discovery::api_group_list(&state.registry))),
        },
        "" => Ok(json(
            200,
            &json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/metrics", "/readyz", "/version"]}),
        )),
        _ => {
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let doc = match parts.as_slice() {
                ["api", v] => discovery::resource_list(&state.registry, "", v),
                ["apis", g] => discovery::api_group(&state.registry, g),
                ["apis", g, v] => discovery::resource_list(&state.registry, g, v),
                _ => None,
            };
            doc.map(|d| json(200, &d))
                .ok_or_else(ApiError::path_not_found)
        }
    }
}

fn aggregated(doc: serde_json::Value, version: &str) -> Resp {
    raw(
        200,
        &format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
        serde_json::to_vec(&doc).unwrap_or_default(),
    )
}

/// `/version`: Kubernetes 1.33, as the wrapper kubectl picks its client by.
pub fn version() -> serde_json::Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0+rkube",
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-11-22T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("linux/{}", if cfg!(target_arch = "x86_64") { "amd64" } else if cfg!(target_arch = "aarch64") { "arm64" } else { std::env::consts::ARCH }),
    })
}

fn checks(state: &Arc<State>, ready: bool) -> Vec<(&'static str, bool)> {
    let mut c = vec![
        ("ping", true),
        ("log", true),
        ("etcd", !state.store_failed()),
        ("poststarthook/bootstrap-controller", state.bootstrapped()),
    ];
    if ready {
        c.push(("informer-sync", true));
    }
    c
}

fn health(state: &Arc<State>, path: &str, verbose: bool) -> Resp {
    let checks = checks(state, path == "/readyz");
    let ok = checks.iter().all(|(_, ok)| *ok);
    let name = &path[1..];
    if !verbose {
        return if ok {
            text(200, "ok")
        } else {
            text(
                500,
                format!("[-]{name} failed: reason withheld\n{name} check failed"),
            )
        };
    }
    let mut out = String::new();
    for (n, good) in &checks {
        out.push_str(&format!(
            "[{}]{n} {}\n",
            if *good { "+" } else { "-" },
            if *good {
                "ok"
            } else {
                "failed: reason withheld"
            }
        ));
    }
    out.push_str(&format!(
        "{name} check {}\n",
        if ok { "passed" } else { "failed" }
    ));
    text(if ok { 200 } else { 500 }, out)
}
