//! Network probes and hook handlers against a pod: tcpSocket (a connect), httpGet over
//! HTTP or HTTPS (the certificate is not verified, as upstream's prober does not), and
//! grpc (the standard `grpc.health.v1.Health/Check`), each with upstream's messages.

use crate::error::ProbeFailure;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::HTTPGetAction;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Connects to `host:port`.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<(), ProbeFailure> {
    let addr = join(host, port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", io_reason(&e)).into()),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout").into()),
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A GET whose status 200–399 is success; `pod_ip` unless the action names a host.
pub async fn http_get(
    pod_ip: &str,
    port: u16,
    h: &HTTPGetAction,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    let host = h
        .host
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
    let mut path = h.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let addr = join(&host, port);
    let url = format!("{scheme}://{addr}{path}");
    if scheme != "http" && scheme != "https" {
        return Err(format!("Get {url:?}: unsupported protocol scheme {scheme:?}").into());
    }
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_ua = false;
    let mut has_accept = false;
    for hd in h.http_headers.iter().flatten() {
        has_ua |= hd.name.eq_ignore_ascii_case("user-agent");
        has_accept |= hd.name.eq_ignore_ascii_case("accept");
        req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
    }
    if !has_ua {
        req.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has_accept {
        req.push_str("Accept: */*\r\n");
    }
    req.push_str("\r\n");
    let work = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("Get {url:?}: dial tcp {addr}: connect: {}", io_reason(&e)))?;
        let code = if scheme == "https" {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(insecure_tls())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            exchange(tls, &req, &url).await?
        } else {
            exchange(tcp, &req, &url).await?
        };
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}").into())
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        ).into()),
    }
}

/// Sends `req` and reads the status code of the reply.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
    url: &str,
) -> Result<u16, ProbeFailure> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < buf.len() {
        let n = s
            .read(&mut buf[got..])
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf[..got])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get {url:?}: malformed HTTP response").into())
}

/// A TLS client that accepts any server certificate: probes check that the endpoint
/// answers, not who it is (upstream's prober sets InsecureSkipVerify too).
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus` names.
fn serving_status(n: i32) -> String {
    match n {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

/// The standard health check of `service` ("" for the server as a whole) over plaintext
/// HTTP/2; success is SERVING.
pub async fn grpc(
    host: &str,
    port: u16,
    service: &str,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    let addr = join(host, port);
    let secs = timeout.as_secs();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("error: health rpc probe failed: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| format!("timeout: failed to connect service {addr:?} within {secs}s"))?
        .map_err(|e| {
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            format!("timeout: failed to connect service {addr:?} within {secs}s: {why}")
        })?;
    let mut client = tonic::client::Grpc::new(channel);
    let call = async {
        client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client
            .unary(
                tonic::Request::new(HealthCheckRequest {
                    service: service.to_string(),
                }),
                http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
                tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
            )
            .await
    };
    let reply = match tokio::time::timeout(timeout, call).await {
        Err(_) => return Err(format!("timeout: health rpc did not complete within {secs}s").into()),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            return Err(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health)"
                    .into(),
            )
        }
        Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => {
            return Err(format!("timeout: health rpc did not complete within {secs}s").into())
        }
        Ok(Err(s)) => return Err(format!("error: health rpc probe failed: {}", s.message()).into()),
        Ok(Ok(r)) => r.into_inner(),
    };
    if reply.status == 1 {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with {:?})",
            serving_status(reply.status)
        )
        .into())
    }
}

/// Go's wording for common connect errors.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use tonic::{Response, Status};

    const SECOND: Duration = Duration::from_secs(1);

    /// Serves one HTTP reply with `code` on each connection, over TLS if `tls`.
    async fn http_server(code: u16, tls: bool) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let acceptor = tls.then(|| {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                .unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                    let mut buf = [0u8; 512];
                    if let Some(a) = acceptor {
                        let Ok(mut s) = a.accept(s).await else { return };
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(reply.as_bytes()).await;
                        let _ = s.shutdown().await;
                    } else {
                        let mut s = s;
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
        port
    }

    fn get(scheme: &str) -> HTTPGetAction {
        HTTPGetAction {
            scheme: Some(scheme.into()),
            path: Some("healthz".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn http_and_https_gets_judge_by_status() {
        let ok = http_server(200, true).await;
        assert_eq!(
            http_get("127.0.0.1", ok, &get("HTTPS"), SECOND).await,
            Ok(())
        );
        let bad = http_server(503, true).await;
        assert_eq!(
            http_get("127.0.0.1", bad, &get("HTTPS"), SECOND).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        // HTTPS against a plain server fails the handshake; plain HTTP works.
        let plain = http_server(204, false).await;
        assert!(http_get("127.0.0.1", plain, &get("HTTPS"), SECOND)
            .await
            .is_err());
        assert_eq!(
            http_get("127.0.0.1", plain, &get("HTTP"), SECOND).await,
            Ok(())
        );
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = http_get("127.0.0.1", port, &get("HTTP"), SECOND)
            .await
            .unwrap_err();
        assert!(err.0.ends_with("connect: connection refused"), "{err}");
        assert_eq!(
            tcp("127.0.0.1", port, SECOND).await,
            Err(format!("dial tcp 127.0.0.1:{port}: connect: connection refused").into())
        );
    }

    #[derive(Clone)]
    struct Check(i32);

    impl tonic::server::UnaryService<HealthCheckRequest> for Check {
        type Response = HealthCheckResponse;
        type Future = futures::future::Ready<Result<Response<HealthCheckResponse>, Status>>;
        fn call(&mut self, req: tonic::Request<HealthCheckRequest>) -> Self::Future {
            futures::future::ready(if req.get_ref().service == "unknown" {
                Err(Status::not_found("unknown service"))
            } else {
                Ok(Response::new(HealthCheckResponse { status: self.0 }))
            })
        }
    }

    /// A health server answering `status`, registered as `NAME`.
    #[derive(Clone)]
    struct Health<const NAMED: bool>(i32);

    impl<const NAMED: bool> tonic::server::NamedService for Health<NAMED> {
        const NAME: &'static str = if NAMED {
            "grpc.health.v1.Health"
        } else {
            "example.Other"
        };
    }

    impl<const NAMED: bool> tower::Service<http::Request<tonic::body::Body>> for Health<NAMED> {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let status = self.0;
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                    HealthCheckResponse,
                    HealthCheckRequest,
                >::default());
                Ok(grpc.unary(Check(status), req).await)
            })
        }
    }

    async fn grpc_server<const NAMED: bool>(status: i32) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Health::<NAMED>(status))
                .serve_with_incoming(incoming),
        );
        port
    }

    #[tokio::test]
    async fn grpc_health_checks() {
        let serving = grpc_server::<true>(1).await;
        assert_eq!(grpc("127.0.0.1", serving, "", SECOND).await, Ok(()));
        assert_eq!(
            grpc("127.0.0.1", serving, "unknown", SECOND).await,
            Err("error: health rpc probe failed: unknown service".into())
        );
        let down = grpc_server::<true>(2).await;
        assert_eq!(
            grpc("127.0.0.1", down, "", SECOND).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let other = grpc_server::<false>(1).await;
        assert_eq!(
            grpc("127.0.0.1", other, "", SECOND).await,
            Err("error: this server does not implement the grpc health protocol (grpc.health.v1.Health)".into())
        );
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = grpc("127.0.0.1", port, "", SECOND).await.unwrap_err();
        assert!(
            err.0.starts_with(&format!(
                "timeout: failed to connect service \"127.0.0.1:{port}\" within 1s"
            )),
            "{err}"
        );
    }
}
