//! The kubelet's HTTPS server (port 10250): container logs, and exec, attach and
//! port-forward relayed to the runtime's streaming server. Only clients with a certificate
//! from the cluster CA (the apiserver) get in.

use crate::error::TlsError;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1 as cri;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::cri::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE};
use crate::{logs, Kubelet};

type Body = BoxBody<Bytes, std::io::Error>;

/// The serving certificate and the CA client certificates must chain to.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The kubelet's serving certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
    /// The CA that client certificates must chain to.
    pub client_ca_pem: String,
}

fn tls_config(tls: &Tls) -> Result<rustls::ServerConfig, TlsError> {
    let pem = |what| move |source| TlsError::Pem { what, source };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(tls.client_ca_pem.as_bytes()) {
        roots.add(c.map_err(pem("client CA"))?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(pem("serving certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(pem("serving key"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // Upgrades (exec, attach, port-forward) need HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves on `listener` until dropped.
pub async fn serve(k: Arc<Kubelet>, listener: TcpListener, tls: Tls) {
    let cfg = match tls_config(&tls) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "kubelet server TLS setup");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let k = k.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                tracing::debug!(%peer, "kubelet server: TLS handshake failed");
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let k = k.clone();
                async move { Ok::<_, Infallible>(route(k, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(msg.into()))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("static response")
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_pairs(req.uri().query().unwrap_or(""))
}

/// `a=1&b=x%20y` as pairs (repeated keys kept in order).
pub fn form_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn route(k: Arc<Kubelet>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["containerLogs", ns, pod, container] => {
            container_logs(&k, ns, pod, container, &query(&req)).await
        }
        ["exec", ns, pod, container] => stream(&k, "exec", ns, pod, Some(container), req).await,
        ["attach", ns, pod, container] => stream(&k, "attach", ns, pod, Some(container), req).await,
        ["portForward", ns, pod] => stream(&k, "portforward", ns, pod, None, req).await,
        _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
    }
}

/// The newest (or, with `previous`, the one before) instance of a container.
async fn find(
    k: &Kubelet,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<cri::Container, Response<Body>> {
    let labels = HashMap::from([
        (POD_NAMESPACE.to_string(), ns.to_string()),
        (POD_NAME.to_string(), pod.to_string()),
        (CONTAINER_NAME.to_string(), container.to_string()),
    ]);
    let mut list = k
        .cri
        .containers_labelled(labels)
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()))?;
    list.sort_by_key(|c| {
        std::cmp::Reverse((
            c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
            c.created_at,
        ))
    });
    let pick = if previous {
        list.into_iter().nth(1)
    } else {
        list.into_iter().next()
    };
    pick.ok_or_else(|| {
        let msg = if previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating")
        };
        text(StatusCode::BAD_REQUEST, msg)
    })
}

async fn container_logs(
    k: &Arc<Kubelet>,
    ns: &str,
    pod: &str,
    container: &str,
    q: &[(String, String)],
) -> Response<Body> {
    let opts = match logs::Options::from_query(q) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let previous = q
        .iter()
        .any(|(k, v)| k == "previous" && (v == "true" || v == "1"));
    let c = match find(k, ns, pod, container, previous).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let st = match k.cri.container_status(&c.id).await {
        Ok(s) => s,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()),
    };
    let path = std::path::PathBuf::from(&st.log_path);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let id = c.id.clone();
    let kk = k.clone();
    tokio::spawn(logs::stream(path, opts, tx, move || {
        let kk = kk.clone();
        let id = id.clone();
        async move {
            kk.cri
                .container_status(&id)
                .await
                .is_ok_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
        }
    }));
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b))),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(body))
        .expect("log response")
}

/// exec, attach and port-forward: ask the runtime for a streaming URL and relay the
/// (upgraded) connection to it.
async fn stream(
    k: &Arc<Kubelet>,
    what: &str,
    ns: &str,
    pod: &str,
    container: Option<&&str>,
    req: Request<Incoming>,
) -> Response<Body> {
    let q = query(&req);
    let flag = |name: &str| {
        q.iter()
            .any(|(k, v)| k == name && (v == "true" || v == "1"))
    };
    let rt = &k.cri;
    let url = match (what, container) {
        ("exec", Some(c)) | ("attach", Some(c)) => {
            let cont = match find(k, ns, pod, c, false).await {
                Ok(x) => x,
                Err(r) => return r,
            };
            if cont.state != cri::ContainerState::ContainerRunning as i32 {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("container {c} is not running"),
                );
            }
            let r = if what == "exec" {
                let cmd: Vec<String> = q
                    .iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v.clone())
                    .collect();
                if cmd.is_empty() {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "you must specify at least 1 command",
                    );
                }
                rt.exec(cri::ExecRequest {
                    container_id: cont.id,
                    cmd,
                    tty: flag("tty"),
                    stdin: flag("stdin"),
                    stdout: flag("stdout"),
                    stderr: flag("stderr"),
                })
                .await
            } else {
                rt.attach(cri::AttachRequest {
                    container_id: cont.id,
                    tty: flag("tty"),
                    stdin: flag("stdin"),
                    stdout: flag("stdout"),
                    stderr: flag("stderr"),
                })
                .await
            };
            r
        }
        _ => {
            let sandboxes = k.cri.sandboxes(None).await.unwrap_or_default();
            let Some(s) = sandboxes
                .into_iter()
                .filter(|s| {
                    s.labels.get(POD_NAMESPACE).map(String::as_str) == Some(ns)
                        && s.labels.get(POD_NAME).map(String::as_str) == Some(pod)
                        && s.state == cri::PodSandboxState::SandboxReady as i32
                })
                .max_by_key(|s| s.created_at)
            else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("pod {ns}/{pod} has no running sandbox on this node"),
                );
            };
            if !k.builtin_runtime() {
                // Another runtime's streaming server speaks SPDY itself: a plain SPDY
                // upgrade is relayed; WebSocket tunnels are refused so the client falls
                // back to SPDY.
                if spdy_tunnel(&req) == Some(Tunnel::WebSocket) {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "port-forward over WebSocket is not available with this container runtime; use SPDY",
                    );
                }
            } else if let Some(tunnel) = spdy_tunnel(&req) {
                let k = k.clone();
                return spdy_session(req, tunnel, "portforward.k8s.io", move |i, o| {
                    crate::portforward::session(k, s.id, i, o)
                });
            }
            // `port` (repeated) as upstream's kubelet reads it, and `ports` as the API's
            // PodPortForwardOptions spell it (repeated or comma-separated).
            let ports: Vec<i32> = q
                .iter()
                .filter(|(k, _)| k == "port" || k == "ports")
                .flat_map(|(_, v)| v.split(','))
                .filter_map(|v| v.trim().parse().ok())
                .collect();
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: s.id,
                port: ports,
            })
            .await
        }
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()),
    };
    // exec and attach over SPDY: the kubelet carries the streams to the runtime's
    // WebSocket; WebSocket clients are relayed as they are.
    if what != "portforward" && k.builtin_runtime() && spdy_tunnel(&req) == Some(Tunnel::Raw) {
        let offered: Vec<String> = req
            .headers()
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let Some(protocol) = crate::remotecommand::PROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
        else {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "no supported stream protocol among {offered:?}; supported: {:?}",
                    crate::remotecommand::PROTOCOLS
                ),
            );
        };
        let expect = crate::remotecommand::Expect {
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        };
        let proto = protocol.to_string();
        return spdy_session(req, Tunnel::Raw, protocol, move |i, o| {
            crate::remotecommand::session(url, proto, expect, i, o)
        });
    }
    relay(req, &url).await
}

/// How a SPDY port-forward session arrives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tunnel {
    /// `Upgrade: SPDY/3.1`: SPDY frames on the upgraded connection.
    Raw,
    /// WebSocket with `SPDY/3.1+portforward.k8s.io`: SPDY bytes in binary messages.
    WebSocket,
}

const SPDY_OVER_WEBSOCKET: &str = "SPDY/3.1+portforward.k8s.io";

fn spdy_tunnel(req: &Request<Incoming>) -> Option<Tunnel> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let upgrade = h("upgrade");
    if upgrade.eq_ignore_ascii_case("websocket") {
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SPDY_OVER_WEBSOCKET);
        return offered.then_some(Tunnel::WebSocket);
    }
    upgrade
        .to_ascii_uppercase()
        .starts_with("SPDY/3.1")
        .then_some(Tunnel::Raw)
}

/// Answers the upgrade and runs the port-forward session on the upgraded connection.
fn spdy_session<F, Fut>(
    mut req: Request<Incoming>,
    tunnel: Tunnel,
    protocol: &str,
    session: F,
) -> Response<Body>
where
    F: FnOnce(
            tokio::sync::mpsc::Receiver<Bytes>,
            tokio::sync::mpsc::Sender<crate::portforward::Out>,
        ) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    match tunnel {
        Tunnel::Raw => {
            resp = resp
                .header("connection", "Upgrade")
                .header("upgrade", "SPDY/3.1")
                .header("x-stream-protocol-version", protocol);
        }
        Tunnel::WebSocket => {
            let Some(key) = req.headers().get("sec-websocket-key") else {
                return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
            };
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            resp = resp
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .header("sec-websocket-protocol", SPDY_OVER_WEBSOCKET);
        }
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let io = TokioIo::new(io);
        let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(256);
        let session = tokio::spawn(session(in_rx, out_tx));
        match tunnel {
            Tunnel::Raw => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut r, w) = tokio::io::split(io);
                let w = Arc::new(tokio::sync::Mutex::new(w));
                let writer = tokio::spawn(crate::portforward::writer(out_rx, move |b| {
                    let w = w.clone();
                    async move { w.lock().await.write_all(&b).await.is_ok() }
                }));
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if in_tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                drop(in_tx);
                let _ = session.await;
                writer.abort();
            }
            Tunnel::WebSocket => {
                use futures::SinkExt;
                use tokio_tungstenite::tungstenite::{protocol::Role, Message};
                let ws =
                    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None)
                        .await;
                let (sink, mut source) = ws.split();
                let sink = Arc::new(tokio::sync::Mutex::new(sink));
                let s2 = sink.clone();
                let writer = tokio::spawn(crate::portforward::writer(out_rx, move |b| {
                    let s = s2.clone();
                    async move { s.lock().await.send(Message::Binary(b)).await.is_ok() }
                }));
                while let Some(Ok(m)) = source.next().await {
                    match m {
                        Message::Binary(b) if in_tx.send(b.clone()).await.is_err() => break,
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                drop(in_tx);
                let _ = session.await;
                writer.abort();
                let _ = sink.lock().await.close().await;
            }
        }
    });
    resp.body(
        http_body_util::Empty::new()
            .map_err(|e: Infallible| match e {})
            .boxed(),
    )
    .expect("101")
}

/// Forwards an upgrade request to `url` (plain HTTP) and splices the two connections
/// once the runtime switches protocols; other answers are passed back as they are.
async fn relay(mut req: Request<Incoming>, url: &str) -> Response<Body> {
    let Some(rest) = url.strip_prefix("http://") else {
        return text(
            StatusCode::BAD_GATEWAY,
            format!("unsupported streaming URL {url}"),
        );
    };
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let tcp = match tokio::net::TcpStream::connect(authority).await {
        Ok(s) => s,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("connecting to the runtime's streaming server: {e}"),
            )
        }
    };
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    tokio::spawn(conn.with_upgrades());
    let mut out = Request::builder()
        .method(req.method())
        .uri(path)
        .header("host", authority);
    for (name, value) in req.headers() {
        let n = name.as_str();
        if n.starts_with("sec-websocket")
            || n == "upgrade"
            || n == "connection"
            || n == "x-stream-protocol-version"
        {
            out = out.header(name, value);
        }
    }
    let Ok(out) = out.body(http_body_util::Empty::<Bytes>::new()) else {
        return text(StatusCode::BAD_REQUEST, "bad request headers");
    };
    let mut resp = match send.send_request(out).await {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let status = resp.status();
    let mut back = Response::builder().status(status);
    for (name, value) in resp.headers() {
        back = back.header(name, value);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let client = hyper::upgrade::on(&mut req);
        let runtime = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(r)) = (client.await, runtime.await) {
                let mut c = TokioIo::new(c);
                let mut r = TokioIo::new(r);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut r).await;
            }
        });
        return back
            .body(
                http_body_util::Empty::new()
                    .map_err(|e: Infallible| match e {})
                    .boxed(),
            )
            .expect("101");
    }
    let body = resp.into_body().map_err(std::io::Error::other).boxed();
    back.body(body)
        .unwrap_or_else(|_| text(StatusCode::BAD_GATEWAY, "bad response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = form_pairs("command=sh&command=-c&command=echo%20hi%21&tty=true&x=%zz&y=50%");
        assert_eq!(q[0], ("command".into(), "sh".into()));
        assert_eq!(q[2], ("command".into(), "echo hi!".into()));
        assert_eq!(q[3], ("tty".into(), "true".into()));
        assert_eq!(q[4], ("x".into(), "%zz".into()));
        assert_eq!(q[5], ("y".into(), "50%".into()));
    }
}
