//! The CRI streaming server. `Exec`, `Attach` and `PortForward` return a one-time URL here
//! (valid for a minute, as upstream's); the kubelet sends the client's upgrade to it. The
//! server speaks WebSocket with the Kubernetes channel protocols: `v5.channel.k8s.io`
//! (and v4, and plain `channel.k8s.io`) for exec and attach, with TTY and resize, and
//! `v4.channel.k8s.io` port forwarding.

mod channel;
mod portforward;
mod remote;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request as HttpRequest, Response, StatusCode};
use k8s_cri::v1 as cri;

use crate::cri::Runtime;
use crate::Error;

/// How long a URL stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// What a URL was issued for.
#[derive(Clone, Debug)]
pub enum Request {
    /// An exec.
    Exec(cri::ExecRequest),
    /// An attach.
    Attach(cri::AttachRequest),
    /// A port-forward.
    PortForward(cri::PortForwardRequest),
}

impl Request {
    fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

/// The streaming server: its address and the URLs it has handed out.
pub struct StreamServer {
    rt: Arc<Runtime>,
    addr: SocketAddr,
    pending: Mutex<HashMap<String, (Instant, Request)>>,
}

impl StreamServer {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves in the background.
    pub async fn start(rt: Arc<Runtime>, addr: &str) -> Result<Arc<StreamServer>, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Io(format!("binding the streaming server to {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Io("streaming server address".into(), e))?;
        let server = Arc::new(StreamServer {
            rt,
            addr,
            pending: Mutex::new(HashMap::new()),
        });
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of descriptors, say: wait instead of spinning.
                        tracing::warn!(error = %e, "streaming server accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        tracing::info!(%addr, "CRI streaming server listening");
        Ok(server)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new one-time URL for `req`.
    pub fn url(&self, req: Request) -> String {
        let mut b = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let url = format!("http://{}/{}/{token}", self.addr, req.kind());
        let mut pending = self.pending.lock().expect("pending lock");
        pending.retain(|_, (at, _)| at.elapsed() < TOKEN_TTL);
        pending.insert(token, (Instant::now(), req));
        url
    }

    /// Takes the request of a URL (once).
    fn take(&self, kind: &str, token: &str) -> Option<Request> {
        let mut pending = self.pending.lock().expect("pending lock");
        match pending.remove(token) {
            Some((at, r)) if at.elapsed() < TOKEN_TTL && r.kind() == kind => Some(r),
            _ => None,
        }
    }

    fn handle(self: &Arc<Self>, req: HttpRequest<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_start_matches('/').to_string();
        let Some((kind, token)) = path.split_once('/') else {
            return plain(StatusCode::NOT_FOUND, "not found");
        };
        let Some(r) = self.take(kind, token) else {
            return plain(
                StatusCode::NOT_FOUND,
                "unknown or expired stream URL: ask the runtime for a new one",
            );
        };
        let offered = match &r {
            Request::PortForward(_) => channel::PORT_FORWARD_PROTOCOLS,
            _ => channel::REMOTE_COMMAND_PROTOCOLS,
        };
        let (resp, protocol) = match channel::accept(&req, offered) {
            Ok(x) => x,
            Err(msg) => return plain(StatusCode::BAD_REQUEST, &msg),
        };
        let query_ports = portforward::query_ports(req.uri().query().unwrap_or(""));
        let rt = self.rt.clone();
        tokio::spawn(async move {
            let ws = match channel::upgrade(req).await {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::debug!(error = %e, "stream upgrade failed");
                    return;
                }
            };
            match r {
                Request::Exec(e) => remote::exec(rt, ws, protocol, e).await,
                Request::Attach(a) => remote::attach(rt, ws, protocol, a).await,
                Request::PortForward(p) => {
                    let ports = if p.port.is_empty() {
                        query_ports
                    } else {
                        p.port.clone()
                    };
                    portforward::serve(rt, ws, &p.pod_sandbox_id, ports).await
                }
            }
        });
        resp
    }
}

fn plain(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = code;
    r
}

/// Asks a running container's shim to reopen its log file (after the kubelet rotated it);
/// returns once the new file exists.
pub async fn reopen_log(rt: &Arc<Runtime>, container_id: &str) -> Result<(), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = remote::connect_shim(rt, container_id).await?;
    let io = |e| Error::Io("asking the shim to reopen the log".into(), e);
    conn.write_all(&crate::shim::frame::encode(crate::shim::frame::REOPEN, &[]))
        .await
        .map_err(io)?;
    let mut ack = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut ack))
        .await
        .map_err(|_| Error::Timeout("the shim did not reopen the log in 10s".into()))?
        .map_err(io)?;
    Ok(())
}
