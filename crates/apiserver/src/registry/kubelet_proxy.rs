//! pods/log, pods/exec, pods/attach and pods/portforward: the request goes to the kubelet
//! of the pod's node over TLS (the apiserver's kubelet-client certificate); logs stream
//! back, upgraded connections (WebSocket, SPDY) are spliced end to end. Also the nodes'
//! hooks (`nodes/proxy` is not served yet).

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rkube_api::ApiError;
use serde_json::Value;

use super::{Hooks, NotYet, SubRequest, Subresource};
use crate::request::Query;
use crate::respond::Resp;
use crate::rest::Ctx;
use crate::storage;

pub struct NodeHooks;

impl Hooks for NodeHooks {
    fn subresource(&self, name: &str) -> Option<&'static dyn Subresource> {
        (name == "proxy").then_some(&NotYet as &dyn Subresource)
    }
}

/// The pod subresources the pod's kubelet answers.
pub struct KubeletProxy;

#[async_trait::async_trait]
impl Subresource for KubeletProxy {
    async fn serve(&self, ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError> {
        forward(ctx, req).await
    }
}

fn names(spec: Option<&Value>, key: &str) -> Vec<String> {
    spec.and_then(|s| s.get(key))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect()
}

/// Which container the request is for, checked against the pod's spec.
fn container(pod: &Value, name: &str, query: &Query, sub: &str) -> Result<String, ApiError> {
    let spec = pod.get("spec");
    let apps = names(spec, "containers");
    let inits = names(spec, "initContainers");
    let ephemeral = names(spec, "ephemeralContainers");
    match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            if apps.iter().chain(&inits).chain(&ephemeral).any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None if apps.len() == 1 => Ok(apps[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                apps.join(" ")
            );
            if sub == "log" && !inits.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The node's kubelet address: its InternalIP (or first address) and kubelet port.
fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addrs = node.pointer("/status/addresses")?.as_array()?;
    let pick = addrs
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .or_else(|| addrs.first())?;
    let ip = pick.get("address")?.as_str()?.to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250) as u16;
    Some((ip, port))
}

/// Forwards the request to the kubelet and relays its answer.
async fn forward(ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError> {
    let (state, ri, query) = (ctx.state, ctx.ri, ctx.query);
    let (pod, _) = storage::get(&state.store, ctx.info, &ri.namespace, &ri.name).await?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {} does not have a host assigned", ri.name))
        })?;
    let nodes = state
        .registry
        .get("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let (node, _) = storage::get(&state.store, nodes, "", node_name).await?;
    let (ip, port) = kubelet_address(&node).ok_or_else(|| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("node {node_name} reports no address for its kubelet"),
        )
    })?;
    let sub = ri.subresource.as_str();
    let rest: Vec<(String, String)> = kubelet_query(query, sub)?;
    let qs = {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &rest {
            ser.append_pair(k, v);
        }
        ser.finish()
    };
    let (ns, name) = (&ri.namespace, &ri.name);
    let path = match sub {
        "portforward" => format!("/portForward/{ns}/{name}"),
        _ => {
            let c = container(&pod, name, query, sub)?;
            let prefix = match sub {
                "log" => "containerLogs",
                other => other,
            };
            format!("/{prefix}/{ns}/{name}/{c}")
        }
    };
    let uri = if qs.is_empty() {
        path
    } else {
        format!("{path}?{qs}")
    };
    let unavailable = |e: String| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("the kubelet of node {node_name} ({ip}:{port}) cannot be reached: {e}"),
        )
    };
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((ip.as_str(), port)),
    )
    .await
    .map_err(|_| unavailable("timed out".into()))?
    .map_err(|e| unavailable(e.to_string()))?;
    let server_name = rustls::pki_types::ServerName::try_from(ip.clone())
        .map_err(|e| unavailable(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(state.kubelet_tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| unavailable(format!("TLS: {e}")))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    let mut out = Request::builder()
        .method(req.method.clone())
        .uri(uri)
        .header("host", format!("{ip}:{port}"));
    for (h, v) in ctx.headers {
        let n = h.as_str();
        if n.starts_with("sec-websocket")
            || n == "upgrade"
            || n == "connection"
            || n == "x-stream-protocol-version"
            || n == "accept"
        {
            out = out.header(h, v);
        }
    }
    let out = out
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut resp = send
        .send_request(out)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let mut back = http::Response::builder().status(status);
        for (h, v) in resp.headers() {
            back = back.header(h, v);
        }
        let client = req.upgrade;
        let kubelet = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let Some(client) = client else {
                return;
            };
            if let (Ok(c), Ok(k)) = (client.await, kubelet.await) {
                let mut c = TokioIo::new(c);
                let mut k = TokioIo::new(k);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut k).await;
            }
        });
        return back
            .body(crate::respond::full(Bytes::new()))
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&body[..body.len().min(64 << 10)])
            .trim()
            .to_string();
        return Err(match status.as_u16() {
            400 => ApiError::bad_request(msg),
            404 => ApiError::new(404, "NotFound", msg),
            code => ApiError::new(code, "InternalError", msg),
        });
    }
    let mut back = http::Response::builder().status(status);
    if let Some(ct) = resp.headers().get(http::header::CONTENT_TYPE) {
        back = back.header(http::header::CONTENT_TYPE, ct);
    }
    // Stream the body; a broken kubelet connection ends it.
    let frames = http_body_util::BodyStream::new(resp.into_body())
        .take_while(|f| futures::future::ready(f.is_ok()))
        .filter_map(|f| async move {
            f.ok()
                .and_then(|f| f.into_data().ok())
                .map(|d| Ok::<_, std::convert::Infallible>(Frame::data(d)))
        });
    back.body(BodyExt::boxed(StreamBody::new(frames)))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The query the kubelet gets: the request's, without `container` (it is in the path),
/// and for port-forward the API's `ports` (PodPortForwardOptions, repeated or
/// comma-separated) as the kubelet's `port` parameters, as upstream's API server sends.
fn kubelet_query(q: &Query, sub: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in q.pairs() {
        match k.as_str() {
            "container" => {}
            "ports" if sub == "portforward" => {
                for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    if !p.parse::<u16>().is_ok_and(|n| n > 0) {
                        return Err(ApiError::bad_request(format!(
                            "ports: Invalid value: {p:?}: must be a port number between 1 and 65535"
                        )));
                    }
                    out.push(("port".to_string(), p.to_string()));
                }
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    Ok(out)
}
