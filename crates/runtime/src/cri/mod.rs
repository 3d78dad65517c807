//! The CRI v1 gRPC services on a unix socket: `ImageService` and `RuntimeService`.

mod image;
mod runtime;
mod stats;

use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;

use crate::images::ImageStore;
use crate::{Error, Paths};

/// CRI messages can be large (ListContainers on a busy node); as the kubelet allows.
const MAX_MESSAGE: usize = 16 << 20;

/// How the runtime runs things.
#[derive(Clone, Debug)]
pub struct Options {
    /// The OCI runtime (runc, or crun).
    pub runc: std::path::PathBuf,
    /// The binary whose `shim` subcommand runs each container (rkube itself).
    pub shim: std::path::PathBuf,
    /// The pod network's bridge.
    pub bridge: String,
    /// Where CNI plugin binaries are looked for (`CNI_PATH`); a plugin found there runs
    /// instead of its built-in implementation. Empty by default.
    pub cni_dirs: Vec<std::path::PathBuf>,
    /// Where the streaming server (exec, attach, port-forward) listens.
    pub stream_address: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runc: which("runc").unwrap_or_else(|| "/usr/sbin/runc".into()),
            shim: std::env::current_exe().unwrap_or_else(|_| "rkube".into()),
            bridge: "rkube0".into(),
            cni_dirs: Vec::new(),
            stream_address: "127.0.0.1:0".into(),
        }
    }
}

/// The first `name` on PATH (or the usual sbin directories).
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// The runtime's shared state.
pub struct Runtime {
    /// Where its files live.
    pub paths: Paths,
    /// How it was configured.
    pub options: Options,
    /// The images.
    pub images: ImageStore,
    /// The pod sandboxes.
    pub sandboxes: crate::sandbox::Sandboxes,
    /// The containers.
    pub containers: crate::container::Containers,
    /// The node's pod CIDR, from the kubelet's `UpdateRuntimeConfig` (kept on disk).
    pod_cidr: std::sync::Mutex<Option<String>>,
    /// CPU rates between stats calls.
    pub cpu_rates: crate::stats::CpuRates,
    /// Held while host-port rules sync; whether their table may exist (true until the
    /// first sync, which clears what an earlier run may have left).
    host_ports: std::sync::Mutex<bool>,
    /// Orders the CPU-heavy start steps of pods: two per core, oldest pod first.
    pub start_gate: crate::gate::Gate,
}

impl Runtime {
    /// Opens the state under `paths` and imports the air-gap image directory.
    pub fn open(paths: Paths, options: Options) -> Result<Arc<Runtime>, Error> {
        let images = ImageStore::open(&paths.images())?;
        paths.create_state()?;
        let sandboxes = crate::sandbox::Sandboxes::open(&paths.root, &paths.state)?;
        let containers = crate::container::Containers::open(
            &paths.root,
            &paths.state,
            options.runc.clone(),
            options.shim.clone(),
        )?;
        crate::images::import::import_dir(&images, &paths.import_dir)?;
        let pod_cidr = std::fs::read_to_string(paths.root.join("pod-cidr"))
            .ok()
            .map(|s| s.trim().to_string());
        Ok(Arc::new(Runtime {
            paths,
            options,
            images,
            sandboxes,
            containers,
            pod_cidr: std::sync::Mutex::new(pod_cidr),
            cpu_rates: Default::default(),
            host_ports: std::sync::Mutex::new(true),
            start_gate: crate::gate::Gate::per_core(),
        }))
    }

    /// The pod CIDR set by the kubelet, if any.
    pub fn pod_cidr(&self) -> Option<String> {
        self.pod_cidr.lock().expect("pod cidr lock").clone()
    }

    /// The pod network, once the pod CIDR is known.
    pub fn network(&self) -> Option<crate::cni::Network> {
        let cidr = self.pod_cidr()?;
        let mut n = crate::cni::Network::default_bridge(
            &self.options.bridge,
            &cidr,
            &self.paths.root.join("cni"),
        );
        n.plugin_dirs = self.options.cni_dirs.clone();
        Some(n)
    }

    /// Rewrites the host-port rules from every ready sandbox.
    pub fn sync_host_ports(&self) -> Result<(), Error> {
        // One sync at a time: the last one sees every saved sandbox.
        let mut present = self.host_ports.lock().expect("host ports lock");
        crate::hostport::sync(&self.sandboxes.list(), &self.options.bridge, &mut present)
    }

    /// Records the pod CIDR (validated: an IPv4 or IPv6 network in CIDR notation).
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<(), Error> {
        let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
        });
        if !ok {
            return Err(Error::Format(format!(
                "pod CIDR {cidr:?} is not an address/prefix"
            )));
        }
        let p = self.paths.root.join("pod-cidr");
        std::fs::write(&p, cidr).map_err(crate::io_err(&p))?;
        *self.pod_cidr.lock().expect("pod cidr lock") = Some(cidr.to_string());
        Ok(())
    }
}

/// Serves CRI on `socket` until `shutdown` resolves.
pub async fn serve(
    rt: Arc<Runtime>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(crate::io_err(dir))?;
    }
    // A socket left by a runtime that was killed.
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).map_err(crate::io_err(socket))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let streams =
        crate::stream::StreamServer::start(rt.clone(), &rt.options.stream_address).await?;
    tracing::info!(socket = %socket.display(), "CRI runtime serving");
    tonic::transport::Server::builder()
        .add_service(
            ImageServiceServer::new(image::Images(rt.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RuntimeServiceServer::new(runtime::Containers(rt, streams))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Io("serving CRI".into(), std::io::Error::other(e)))
}

/// Runs blocking runtime work (files, mounts, runc, CNI) off the async threads.
pub async fn blocking<T: Send + 'static>(
    rt: &Arc<Runtime>,
    f: impl FnOnce(&Runtime) -> Result<T, Error> + Send + 'static,
) -> Result<T, tonic::Status> {
    let rt = rt.clone();
    tokio::task::spawn_blocking(move || f(&rt))
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .map_err(status)
}

/// The gRPC status for a runtime error.
pub fn status(e: Error) -> tonic::Status {
    use tonic::Status;
    match e {
        Error::NotFound(_) => Status::not_found(e.to_string()),
        Error::InvalidReference(_) | Error::Format(_) => Status::invalid_argument(e.to_string()),
        Error::Unauthorized(_) => Status::unauthenticated(e.to_string()),
        Error::DigestMismatch { .. } => Status::data_loss(e.to_string()),
        Error::Network(_) | Error::Registry(_) | Error::Busy(_) => {
            Status::unavailable(e.to_string())
        }
        Error::AlreadyExists(_) => Status::already_exists(e.to_string()),
        Error::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        Error::HostMissing(_) => Status::failed_precondition(e.to_string()),
        Error::Io(..) => Status::internal(e.to_string()),
    }
}

/// A gRPC channel to a CRI socket (the kubelet's side, and tests').
pub async fn connect(socket: &Path) -> Result<tonic::transport::Channel, Error> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://cri.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| {
            Error::Io(
                format!("connecting to CRI at {}", socket.display()),
                std::io::Error::other(e),
            )
        })
}
