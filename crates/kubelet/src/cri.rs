//! The kubelet's side of CRI: gRPC clients for the runtime and image services on the
//! runtime's unix socket (the built-in runtime, containerd or CRI-O).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// Labels the kubelet puts on sandboxes and containers, as upstream's, so a restarted
/// kubelet (or `crictl`) finds what belongs to which pod.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotations on containers.
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
pub const GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";

/// CRI messages can be large (ListContainers on a busy node).
const MAX_MESSAGE: usize = 16 << 20;

/// Both CRI services over one connection.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub socket: PathBuf,
}

impl Cri {
    /// Connects to the runtime at `socket`, waiting up to `patience` for it to answer.
    pub async fn connect(socket: &Path, patience: Duration) -> Result<Cri, String> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let err = match channel(socket).await {
                Ok(ch) => {
                    let mut runtime = RuntimeServiceClient::new(ch.clone())
                        .max_decoding_message_size(MAX_MESSAGE)
                        .max_encoding_message_size(MAX_MESSAGE);
                    match runtime.version(cri::VersionRequest::default()).await {
                        Ok(_) => {
                            return Ok(Cri {
                                runtime,
                                images: ImageServiceClient::new(ch)
                                    .max_decoding_message_size(MAX_MESSAGE)
                                    .max_encoding_message_size(MAX_MESSAGE),
                                socket: socket.to_path_buf(),
                            })
                        }
                        Err(e) => e.message().to_string(),
                    }
                }
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the container runtime does not answer on {}: {err} (is it running? see --container-runtime-endpoint)",
                    socket.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The runtime's name and version (`containerd`, `1.7.24`).
    pub async fn version(&self) -> Result<(String, String), tonic::Status> {
        let v = self
            .runtime
            .clone()
            .version(cri::VersionRequest::default())
            .await?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    /// Sandboxes carrying the pod UID label (all of them when `uid` is None).
    pub async fn sandboxes(
        &self,
        uid: Option<&str>,
    ) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
        let filter = uid.map(|u| cri::PodSandboxFilter {
            label_selector: HashMap::from([(POD_UID.to_string(), u.to_string())]),
            ..Default::default()
        });
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
            .await?
            .into_inner()
            .items)
    }

    /// Containers carrying the pod UID label (all of them when `uid` is None).
    pub async fn containers(
        &self,
        uid: Option<&str>,
    ) -> Result<Vec<cri::Container>, tonic::Status> {
        let filter = uid.map(|u| cri::ContainerFilter {
            label_selector: HashMap::from([(POD_UID.to_string(), u.to_string())]),
            ..Default::default()
        });
        Ok(self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest { filter })
            .await?
            .into_inner()
            .containers)
    }

    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
        self.runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| tonic::Status::not_found(format!("container {id}")))
    }

    pub async fn sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
        self.runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| tonic::Status::not_found(format!("pod sandbox {id}")))
    }

    /// Stops a container, giving it `grace` seconds after SIGTERM.
    pub async fn stop_container(&self, id: &str, grace: i64) -> Result<(), tonic::Status> {
        self.runtime
            .clone()
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout: grace.max(0),
            })
            .await?;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .clone()
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .clone()
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn remove_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// The image's ID if the runtime has it.
    pub async fn image_present(&self, image: &str) -> Result<Option<String>, tonic::Status> {
        let st = self
            .images
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner();
        Ok(st.image.map(|i| i.id))
    }

    /// Pulls an image; the image reference the runtime resolved it to.
    pub async fn pull(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .images
            .clone()
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await?
            .into_inner()
            .image_ref)
    }
}

/// A gRPC channel over the unix socket.
async fn channel(socket: &Path) -> Result<Channel, String> {
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
        .map_err(|e| e.to_string())
}

/// The runtime's `unix://` endpoint or plain path as a path.
pub fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}
