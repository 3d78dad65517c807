//! An apiserver on a free port over an embedded store in a temp dir, with its own
//! tokio runtime, for tests that drive it with real clients.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rkube_apiserver::{ApiServer, Config};
use rkube_store::{EmbeddedOptions, EmbeddedStore, Store};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

pub struct TestServer {
    pub server: Option<ApiServer>,
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, |_| {})
    }

    /// A server whose config `configure` adjusts (limits, timeouts).
    pub fn start_with(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn Store> = rt.block_on(async {
            Arc::new(
                EmbeddedStore::open(dir.path().join("server/db"), EmbeddedOptions::default())
                    .unwrap(),
            )
        });
        let server = rt.block_on(async {
            let store = store.clone();
            let mut config = Config::new(dir.path().join("server"));
            config.bind_address = "127.0.0.1".parse().unwrap();
            config.port = 0;
            configure(&mut config);
            ApiServer::start(config, store).await.unwrap()
        });
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        std::fs::write(&kubeconfig, server.admin_kubeconfig()).unwrap();
        TestServer {
            server: Some(server),
            store,
            dir,
            kubeconfig,
            rt,
        }
    }

    /// Compacts the history up to `revision` (what the compaction loop does).
    pub fn compact(&self, revision: i64) {
        let server = self.server.as_ref().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(server.compact(revision))
                    .unwrap()
            });
        });
    }

    pub fn url(&self) -> String {
        self.server.as_ref().unwrap().url()
    }

    /// PEM files of the CA and the admin client certificate, for raw HTTPS clients.
    pub fn pems(&self) -> (String, String, String) {
        let pki = &self.server.as_ref().unwrap().pki;
        (
            pki.ca.cert_pem.clone(),
            pki.admin.cert_pem.clone(),
            pki.admin.key_pem.clone(),
        )
    }

    /// A blocking HTTPS client with this server's admin certificate.
    pub fn client(&self) -> reqwest::blocking::Client {
        admin_client(self.pems())
    }

    /// The real kubectl for this server, or None (the caller skips loudly).
    pub fn kubectl(&self) -> Option<rkube_testkit::Kubectl> {
        rkube_testkit::Kubectl::new(&self.kubeconfig)
    }
}

/// A blocking HTTPS client trusting `ca` and presenting the admin certificate.
pub fn admin_client((ca, cert, key): (String, String, String)) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// Skips a test loudly when kubectl is missing.
#[macro_export]
macro_rules! kubectl_or_skip {
    ($srv:expr) => {
        match $srv.kubectl() {
            Some(k) => k,
            None => {
                eprintln!("SKIPPED: kubectl is not installed");
                return;
            }
        }
    };
}

/// A TLS client trusting the cluster CA, presenting `identity` (cert and key PEM) if any.
pub fn tls_config(srv: &TestServer, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let (ca, _, _) = srv.pems();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            b.with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn connect_tls(srv: &TestServer, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let mut tcp = TcpStream::connect(srv.server.as_ref().unwrap().addr).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

/// A raw HTTPS client with the admin certificate: answers as (code, JSON or text).
pub struct RawClient {
    pub http: reqwest::blocking::Client,
    pub base: String,
}

impl RawClient {
    pub fn new(srv: &TestServer) -> Self {
        RawClient {
            http: srv.client(),
            base: srv.url(),
        }
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        ct: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("Content-Type", ct)
            .body(body)
            .send()
            .unwrap();
        let code = r.status().as_u16();
        let text = r.text().unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.send("POST", path, "application/json", body.as_bytes().to_vec())
    }

    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.send(
            method,
            path,
            "application/json",
            serde_json::to_vec(body).unwrap(),
        )
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send("GET", path, "application/json", Vec::new())
    }
}

/// Asserts a Status with this code and reason whose message contains `words`.
pub fn assert_status(got: (u16, serde_json::Value), code: u16, reason: &str, words: &str) {
    let (c, v) = got;
    assert_eq!(c, code, "{v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(words),
        "message {msg:?} should mention {words:?}"
    );
}

/// This process's resident set in bytes (a `TestServer` runs in it), from /proc.
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}
