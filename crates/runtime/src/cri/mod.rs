//! The CRI v1 gRPC services on a unix socket: `ImageService` and `RuntimeService`.

mod image;
mod runtime;

use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;

use crate::images::ImageStore;
use crate::{Error, Paths};

/// CRI messages can be large (ListContainers on a busy node); as the kubelet allows.
const MAX_MESSAGE: usize = 16 << 20;

/// The runtime's shared state.
pub struct Runtime {
    pub paths: Paths,
    pub images: ImageStore,
    /// The node's pod CIDR, from the kubelet's `UpdateRuntimeConfig` (kept on disk).
    pod_cidr: std::sync::Mutex<Option<String>>,
}

impl Runtime {
    /// Opens the state under `paths` and imports the air-gap image directory.
    pub fn open(paths: Paths) -> Result<Arc<Runtime>, Error> {
        let images = ImageStore::open(&paths.images())?;
        crate::images::import::import_dir(&images, &paths.import_dir)?;
        let pod_cidr = std::fs::read_to_string(paths.root.join("pod-cidr"))
            .ok()
            .map(|s| s.trim().to_string());
        Ok(Arc::new(Runtime {
            paths,
            images,
            pod_cidr: std::sync::Mutex::new(pod_cidr),
        }))
    }

    /// The pod CIDR set by the kubelet, if any.
    pub fn pod_cidr(&self) -> Option<String> {
        self.pod_cidr.lock().expect("pod cidr lock").clone()
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
    tracing::info!(socket = %socket.display(), "CRI runtime serving");
    tonic::transport::Server::builder()
        .add_service(
            ImageServiceServer::new(image::Images(rt.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RuntimeServiceServer::new(runtime::Containers(rt))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Io("serving CRI".into(), std::io::Error::other(e)))
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
