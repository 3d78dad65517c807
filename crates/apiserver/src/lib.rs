//! The Kubernetes REST API over HTTPS on an rkube-store: authentication by client
//! certificate, the generic resource path with per-kind strategies, watch, discovery,
//! health and metrics.

pub mod admission;
mod auth;
mod body;
mod bootstrap;
mod cache;
#[cfg(test)]
mod decode_fuzz;
mod discovery;
mod handler;
pub mod join;
mod limits;
mod metered;
mod metrics;
mod openapi;
mod output;
pub mod pki;
mod registry;
mod request;
mod respond;
mod rest;
mod selectable;
mod serve;
mod storage;
mod validation;
mod watch;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use admission::{AdmissionConfig, AdmissionConfigError};
pub use limits::Limits;
pub use registry::Cidr;
use rkube_api::Registry;
use rkube_store::Store;

/// How to run the apiserver.
pub struct Config {
    /// `DATA_DIR/server`: certificates go to `tls/` under it.
    pub server_dir: PathBuf,
    /// The address to listen on (`--bind-address`).
    pub bind_address: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// More names and addresses for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// Where ClusterIPs come from (`--service-cidr`).
    pub service_cidr: Cidr,
    /// How often to compact the store's history (upstream: 5 minutes).
    pub compaction_interval: Duration,
    /// The secret agents join with (None: no joining).
    pub join_secret: Option<String>,
    /// Request and connection limits (upstream's defaults).
    pub limits: Limits,
    /// Which admission plugins run (upstream's default set unless changed).
    pub admission: AdmissionConfig,
}

impl Config {
    /// Upstream's defaults, with certificates under `server_dir`.
    pub fn new(server_dir: PathBuf) -> Self {
        Config {
            server_dir,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 6443,
            tls_sans: Vec::new(),
            service_cidr: "10.43.0.0/16".parse().expect("valid default CIDR"),
            compaction_interval: Duration::from_secs(300),
            join_secret: None,
            limits: Limits::default(),
            admission: AdmissionConfig::default(),
        }
    }
}

/// Shared state of the running apiserver.
pub struct State {
    /// Every served resource.
    pub registry: Registry,
    /// The datastore (metered).
    pub store: Arc<dyn Store>,
    /// What `/metrics` reports.
    pub metrics: Arc<metrics::Metrics>,
    /// Where ClusterIPs come from.
    pub service_cidr: Cidr,
    /// host:port clients use (discovery's serverAddressByClientCIDRs).
    pub server_address: String,
    /// The OpenAPI documents, built on first use.
    pub openapi: openapi::OpenApi,
    /// Every resource's objects and recent changes, for LIST and WATCH.
    pub cache: Arc<cache::WatchCache>,
    /// TLS for connections to kubelets (pods/log, exec, attach, portforward).
    pub kubelet_tls: Arc<rustls::ClientConfig>,
    /// The join endpoints' state (None: joining is off).
    pub join: Option<join::Join>,
    /// Request and connection limits.
    pub limits: Limits,
    /// The enabled admission plugins, in order.
    pub admission: admission::Chain,
    inflight: limits::InFlight,
    /// The revision history was last compacted at: watches from before it get 410.
    compacted: std::sync::atomic::AtomicI64,
    store_failed: AtomicBool,
    bootstrapped: AtomicBool,
}

impl State {
    /// The state of a server at `server_address`, with its watch cache loaded (the task
    /// keeps it current).
    async fn build(
        config: &Config,
        store: Arc<dyn Store>,
        pki: &Arc<pki::Pki>,
        admission: admission::Chain,
        server_address: SocketAddr,
    ) -> Result<(Arc<State>, tokio::task::JoinHandle<()>), StartError> {
        let kubelet_tls = Arc::new(serve::kubelet_client_config(pki).map_err(StartError::Tls)?);
        let metrics = Arc::new(metrics::Metrics::default());
        let store: Arc<dyn Store> = Arc::new(metered::MeteredStore {
            inner: store,
            metrics: metrics.clone(),
        });
        let registry = Registry::builtin();
        let cache = cache::WatchCache::new(store.clone(), &registry);
        let cache_task = cache
            .start()
            .await
            .map_err(|e| StartError::Bootstrap(format!("loading the watch cache: {e}")))?;
        let state = Arc::new(State {
            registry,
            store,
            metrics,
            service_cidr: config.service_cidr,
            server_address: server_address.to_string(),
            openapi: openapi::OpenApi::default(),
            cache,
            kubelet_tls,
            join: config.join_secret.clone().map(|secret| join::Join {
                pki: pki.clone(),
                secret,
            }),
            admission,
            inflight: limits::InFlight::new(&config.limits),
            limits: config.limits.clone(),
            compacted: std::sync::atomic::AtomicI64::new(0),
            store_failed: AtomicBool::new(false),
            bootstrapped: AtomicBool::new(false),
        });
        Ok((state, cache_task))
    }

    /// Compacts the store's history before `revision` (etcd's compaction); watches that
    /// start before it get 410 Expired.
    pub async fn compact(&self, revision: i64) -> Result<(), rkube_store::StoreError> {
        self.store.compact(revision).await?;
        self.compacted.fetch_max(revision, Ordering::Relaxed);
        Ok(())
    }

    /// The revision the history was last compacted at.
    pub fn compacted_revision(&self) -> i64 {
        self.compacted.load(Ordering::Relaxed)
    }

    fn store_failed(&self) -> bool {
        self.store_failed.load(Ordering::Relaxed)
    }
    fn bootstrapped(&self) -> bool {
        self.bootstrapped.load(Ordering::Relaxed)
    }
}

/// Errors starting the apiserver.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The certificates could not be made or read.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The TLS configuration could not be built from them.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The port is taken.
    #[error("cannot listen on {addr}: {source}; pick another port with --https-listen-port")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admission flags name plugins that cannot run.
    #[error(transparent)]
    Admission(#[from] AdmissionConfigError),
    /// The default objects could not be written.
    #[error("bootstrapping the cluster objects: {0}")]
    Bootstrap(String),
}

/// A running apiserver; stops when dropped.
pub struct ApiServer {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Its certificates.
    pub pki: Arc<pki::Pki>,
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Creates or loads the PKI, binds, bootstraps the default objects and serves.
    pub async fn start(config: Config, store: Arc<dyn Store>) -> Result<ApiServer, StartError> {
        let admission = admission::Chain::new(&config.admission)?;
        tracing::info!(plugins = ?admission.names(), "admission chain");
        let service_ip = IpAddr::V4(config.service_cidr.nth(0));
        let sans = pki::default_sans(Some(service_ip), &config.tls_sans);
        let pki = Arc::new(pki::Pki::load_or_create(
            &config.server_dir.join("tls"),
            &sans,
        )?);
        let (tls, client_verifier) = serve::tls_config(&pki).map_err(StartError::Tls)?;
        let addr = SocketAddr::new(config.bind_address, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        let advertise = bootstrap::advertise_address(config.bind_address);
        let (state, cache_task) = State::build(
            &config,
            store,
            &pki,
            admission,
            SocketAddr::new(advertise, addr.port()),
        )
        .await?;
        bootstrap::run(&state, advertise, addr.port())
            .await
            .map_err(|e| StartError::Bootstrap(e.to_string()))?;
        state.bootstrapped.store(true, Ordering::Relaxed);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let tasks = vec![
            cache_task,
            tokio::spawn(serve::accept_loop(
                listener,
                acceptor,
                client_verifier,
                state.clone(),
            )),
            tokio::spawn(bootstrap::compaction_loop(
                state.clone(),
                config.compaction_interval,
            )),
            tokio::spawn(bootstrap::store_health_loop(state.clone())),
        ];
        Ok(ApiServer {
            addr,
            pki,
            state,
            tasks,
        })
    }

    /// `https://127.0.0.1:PORT` (or the bind address when it is specific).
    pub fn url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.addr.ip()
        };
        format!("https://{}", SocketAddr::new(host, self.addr.port()))
    }

    /// A kubeconfig with admin credentials for this server.
    pub fn admin_kubeconfig(&self) -> String {
        self.pki.admin_kubeconfig(&self.url())
    }

    /// Compacts the history before `revision`, as the compaction loop does.
    pub async fn compact(&self, revision: i64) -> Result<(), rkube_store::StoreError> {
        self.state.compact(revision).await
    }

    /// The metrics text, as `/metrics` serves it.
    pub fn metrics(&self) -> String {
        self.state.metrics.render()
    }
}

/// A bootstrapped state on an embedded store in a temporary directory, for unit tests
/// of what needs one (admission plugins, hooks).
#[cfg(test)]
pub(crate) async fn test_state(admission: &AdmissionConfig) -> (Arc<State>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(
        rkube_store::EmbeddedStore::open(dir.path().join("db"), Default::default()).expect("store"),
    );
    let pki = Arc::new(
        pki::Pki::load_or_create(&dir.path().join("tls"), &pki::default_sans(None, &[]))
            .expect("pki"),
    );
    let config = Config::new(dir.path().to_path_buf());
    let chain = admission::Chain::new(admission).expect("admission config");
    let addr = SocketAddr::from(([127, 0, 0, 1], 6443));
    let (state, _cache) = State::build(&config, store, &pki, chain, addr)
        .await
        .expect("state");
    bootstrap::run(&state, addr.ip(), addr.port())
        .await
        .expect("bootstrap");
    (state, dir)
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
