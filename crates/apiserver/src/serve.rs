//! The HTTPS listener: TLS with optional client certificates, HTTP/1.1 and HTTP/2.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::auth::User;
use crate::pki::Pki;
use crate::{handler, State};

/// The cluster CA as a root store.
fn ca_roots(pki: &Pki) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| format!("CA certificate: {e}"))?)
            .map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// The cluster CA's verifier of client certificates.
pub type ClientVerifier = Arc<dyn ClientCertVerifier>;

/// Builds the TLS configuration: the serving certificate, and any client certificate
/// (its signature over the handshake is checked, its chain only after): as upstream,
/// a certificate from another CA completes TLS and gets 401, not a failed handshake.
/// Returns the verifier that decides whose certificates name users.
pub fn tls_config(pki: &Pki) -> Result<(rustls::ServerConfig, ClientVerifier), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = ca_roots(pki)?;
    let verifier: ClientVerifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving.key_pem.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AnyClientCert(verifier.clone())))
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((cfg, verifier))
}

/// Takes any client certificate whose key signs the handshake; whether the cluster CA
/// issued it is decided after the handshake (an unknown issuer means no user: 401).
#[derive(Debug)]
struct AnyClientCert(ClientVerifier);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The user a client certificate chain names, if the cluster CA issued it.
fn certificate_user(verifier: &ClientVerifier, chain: &[CertificateDer<'_>]) -> Option<User> {
    let (leaf, intermediates) = chain.split_first()?;
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => User::from_certificate(leaf.as_ref()),
        Err(e) => {
            tracing::debug!("client certificate refused: {e}");
            None
        }
    }
}

/// The TLS client configuration for connections to kubelets: the cluster CA as the only
/// root, the apiserver's kubelet-client certificate, HTTP/1.1 (upgrades).
pub fn kubelet_client_config(pki: &Pki) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = ca_roots(pki)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.kubelet_client.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("kubelet client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(pki.kubelet_client.key_pem.as_bytes())
        .map_err(|e| format!("kubelet client key: {e}"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Accepts connections until the listener is dropped.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    verifier: ClientVerifier,
    state: Arc<State>,
) {
    let conns = Arc::new(Connections::new(state.limits.connection_cap()));
    let mut backoff = Duration::from_millis(5);
    let mut last_warning: Option<Instant> = None;
    let mut warn = |msg: String| {
        // Once per 10 s at most: a full descriptor table must not flood the log.
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!("{msg}");
            last_warning = Some(Instant::now());
        }
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                warn(format!(
                    "accept: {e} ({} client connections open, cap {}); backing off {backoff:?}",
                    conns.open(),
                    conns.cap
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if conns.open() >= conns.cap && !conns.evict_oldest_waiting() {
            warn(format!(
                "{} client connections open (the cap, from the file-descriptor limit); refusing {peer}",
                conns.cap
            ));
            drop(tcp);
            continue;
        }
        let ticket = conns.register();
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let verifier = verifier.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(state.limits.read_header_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake with {peer}: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake with {peer} timed out");
                        return;
                    }
                },
                _ = ticket.evicted.notified() => {
                    tracing::debug!("closing {peer}: connection cap reached before its handshake ended");
                    return;
                }
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| certificate_user(&verifier, chain));
            serve_connection(tls, peer, cert_user, state, ticket).await;
        });
    }
}

/// The open client connections, and those among them that have not started a request:
/// at the cap, a new connection displaces the oldest of those (a client that connects and
/// sends nothing cannot lock others out), and is refused only if there is none.
struct Connections {
    cap: usize,
    open: AtomicUsize,
    next_id: AtomicU64,
    waiting: Mutex<VecDeque<(u64, Arc<Notify>)>>,
}

impl Connections {
    fn new(cap: usize) -> Self {
        Connections {
            cap,
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            waiting: Mutex::new(VecDeque::new()),
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn register(self: &Arc<Self>) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        self.open.fetch_add(1, Ordering::Relaxed);
        self.lock().push_back((id, evicted.clone()));
        Ticket {
            conns: self.clone(),
            id,
            evicted,
        }
    }

    fn evict_oldest_waiting(&self) -> bool {
        match self.lock().pop_front() {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    fn stop_waiting(&self, id: u64) {
        let mut w = self.lock();
        if let Some(i) = w.iter().position(|(x, _)| *x == id) {
            w.remove(i);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Notify>)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open connection's place in [`Connections`]; closing the connection drops it.
struct Ticket {
    conns: Arc<Connections>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.conns.stop_waiting(self.id);
        self.conns.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests in progress on one connection (a response counts until its body is done),
/// and since when it has had none.
struct Activity {
    active: AtomicUsize,
    served: AtomicBool,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes nothing itself: returns once the connection has been idle too long (the
    /// first request's timeout before one has started, the idle timeout after).
    async fn expired(&self, first: Duration, idle: Duration) {
        loop {
            let limit = if self.served.load(Ordering::Relaxed) {
                idle
            } else {
                first
            };
            let idle_for = self.idle_since().elapsed();
            let busy = self.active.load(Ordering::Relaxed) > 0;
            if !busy && idle_for >= limit {
                return;
            }
            let wait = if busy { limit } else { limit - idle_for };
            tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
        }
    }
}

/// Marks a request in progress; dropped with the response body.
struct InProgress(Arc<Activity>);

impl InProgress {
    fn start(a: &Arc<Activity>, ticket: &Ticket) -> Self {
        if !a.served.swap(true, Ordering::Relaxed) {
            ticket.conns.stop_waiting(ticket.id);
        }
        a.active.fetch_add(1, Ordering::Relaxed);
        InProgress(a.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    cert_user: Option<User>,
    state: Arc<State>,
    ticket: Ticket,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        active: AtomicUsize::new(0),
        served: AtomicBool::new(false),
        idle_since: Mutex::new(Instant::now()),
    });
    let ticket = Arc::new(ticket);
    let limits = state.limits.clone();
    let service = {
        let activity = activity.clone();
        let ticket = ticket.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let state = state.clone();
            let cert_user = cert_user.clone();
            let in_progress = InProgress::start(&activity, &ticket);
            async move {
                let (parts, body) = req.into_parts();
                let req =
                    hyper::Request::from_parts(parts, body.map_err(|e| e.to_string()).boxed());
                let resp = handler::handle(state, cert_user, req).await;
                // The request stays in progress until its body is sent (watches, logs).
                let resp = resp.map(|b| {
                    b.map_frame(move |f| {
                        let _ = &in_progress;
                        f
                    })
                    .boxed()
                });
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    // No hyper header timer: it would also run while a keep-alive connection waits for
    // its next request, closing it after 32 s instead of the idle timeout. The watchdog
    // below bounds the first request's headers by `read_header_timeout` and later ones
    // by `idle_timeout`.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(1000);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let why = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection from {peer}: {e}");
            }
            return;
        }
        _ = activity.expired(limits.read_header_timeout, limits.idle_timeout) => "idle",
        _ = ticket.evicted.notified() => "displaced by a new connection at the connection cap",
    };
    tracing::debug!("closing connection from {peer}: {why}");
    // HTTP/2 gets a GOAWAY; a connection that never sent a request is simply dropped.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
}

/// A request body as the handlers see it.
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, String>;
