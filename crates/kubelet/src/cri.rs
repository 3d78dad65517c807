//! The kubelet's side of CRI: gRPC clients for the runtime and image services on the
//! runtime's unix socket (the built-in runtime, containerd or CRI-O).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::Status;

/// Labels the kubelet puts on sandboxes and containers, as upstream's, so a restarted
/// kubelet (or `crictl`) finds what belongs to which pod.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// The pod's namespace label.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// The pod's UID label.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// The container's name label.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotations on containers.
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Where the container writes its termination message.
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
/// The pod's grace period, for a kubelet that stops containers after a restart.
pub const GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";

/// CRI messages can be large (ListContainers on a busy node).
const MAX_MESSAGE: usize = 16 << 20;

/// The CRI calls the kubelet makes (k8s.io/cri-api v1's RuntimeService and
/// ImageService), behind a trait so the kubelet's logic can run against a fake runtime
/// in tests. [`Cri`] is the real one, over gRPC.
#[async_trait::async_trait]
pub trait RuntimeService: Send + Sync {
    /// The runtime's name and version (`containerd`, `1.7.24`).
    async fn version(&self) -> Result<(String, String), Status>;
    /// Whether the runtime and its network are ready (upstream's runtime Status).
    async fn status(&self) -> Result<cri::StatusResponse, Status>;
    /// Hands the runtime configuration (the pod CIDR) over.
    async fn update_runtime_config(
        &self,
        req: cri::UpdateRuntimeConfigRequest,
    ) -> Result<(), Status>;
    /// Creates and starts a pod sandbox; its ID.
    async fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest) -> Result<String, Status>;
    /// Stops a sandbox (its containers and network).
    async fn stop_sandbox(&self, id: &str) -> Result<(), Status>;
    /// Removes a stopped sandbox.
    async fn remove_sandbox(&self, id: &str) -> Result<(), Status>;
    /// A sandbox's state and network.
    async fn sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, Status>;
    /// Sandboxes carrying the pod UID label (all of them when `uid` is None).
    async fn sandboxes(&self, uid: Option<&str>) -> Result<Vec<cri::PodSandbox>, Status>;
    /// Creates a container in a sandbox; its ID.
    async fn create_container(&self, req: cri::CreateContainerRequest) -> Result<String, Status>;
    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<(), Status>;
    /// Stops a container, giving it `grace` seconds after SIGTERM.
    async fn stop_container(&self, id: &str, grace: i64) -> Result<(), Status>;
    /// Removes a container.
    async fn remove_container(&self, id: &str) -> Result<(), Status>;
    /// Containers carrying the pod UID label (all of them when `uid` is None).
    async fn containers(&self, uid: Option<&str>) -> Result<Vec<cri::Container>, Status>;
    /// Containers carrying all these labels.
    async fn containers_labelled(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>, Status>;
    /// A container's state, exit code and times.
    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, Status>;
    /// CPU, memory and disk use of the containers a filter selects.
    async fn container_stats(
        &self,
        filter: cri::ContainerStatsFilter,
    ) -> Result<Vec<cri::ContainerStats>, Status>;
    /// Runs a command in a container and waits for it (exec probes).
    async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, Status>;
    /// The streaming URL of an exec.
    async fn exec(&self, req: cri::ExecRequest) -> Result<String, Status>;
    /// The streaming URL of an attach.
    async fn attach(&self, req: cri::AttachRequest) -> Result<String, Status>;
    /// The streaming URL of a port-forward.
    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String, Status>;
    /// The image's ID if the runtime has it.
    async fn image_present(&self, image: &str) -> Result<Option<String>, Status>;
    /// Pulls an image; the image reference the runtime resolved it to.
    async fn pull(&self, image: &str, auth: Option<cri::AuthConfig>) -> Result<String, Status>;
    /// Every image the runtime holds.
    async fn list_images(&self) -> Result<Vec<cri::Image>, Status>;
    /// Removes an image.
    async fn remove_image(&self, id: &str) -> Result<(), Status>;
    /// The image filesystem's use.
    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, Status>;
}

/// Both CRI services over one connection.
#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the runtime at `socket`, waiting up to `patience` for it to answer.
    pub async fn connect(socket: &Path, patience: Duration) -> Result<Cri, ConnectError> {
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
                            })
                        }
                        Err(e) => e.message().to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ConnectError {
                    socket: socket.to_path_buf(),
                    reason: err,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The runtime did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("the container runtime does not answer on {}: {reason} (is it running? see --container-runtime-endpoint)", socket.display())]
pub struct ConnectError {
    /// Where it was asked.
    pub socket: PathBuf,
    /// The last failure.
    pub reason: String,
}

fn uid_labels(uid: Option<&str>) -> Option<HashMap<String, String>> {
    uid.map(|u| HashMap::from([(POD_UID.to_string(), u.to_string())]))
}

#[async_trait::async_trait]
impl RuntimeService for Cri {
    async fn version(&self) -> Result<(String, String), Status> {
        let v = self
            .runtime
            .clone()
            .version(cri::VersionRequest::default())
            .await?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    async fn status(&self) -> Result<cri::StatusResponse, Status> {
        Ok(self
            .runtime
            .clone()
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner())
    }

    async fn update_runtime_config(
        &self,
        req: cri::UpdateRuntimeConfigRequest,
    ) -> Result<(), Status> {
        self.runtime.clone().update_runtime_config(req).await?;
        Ok(())
    }

    async fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest) -> Result<String, Status> {
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(req)
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), Status> {
        self.runtime
            .clone()
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), Status> {
        self.runtime
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, Status> {
        self.runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id}")))
    }

    async fn sandboxes(&self, uid: Option<&str>) -> Result<Vec<cri::PodSandbox>, Status> {
        let filter = uid_labels(uid).map(|label_selector| cri::PodSandboxFilter {
            label_selector,
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

    async fn create_container(&self, req: cri::CreateContainerRequest) -> Result<String, Status> {
        Ok(self
            .runtime
            .clone()
            .create_container(req)
            .await?
            .into_inner()
            .container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), Status> {
        self.runtime
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: i64) -> Result<(), Status> {
        self.runtime
            .clone()
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout: grace.max(0),
            })
            .await?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), Status> {
        self.runtime
            .clone()
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    async fn containers(&self, uid: Option<&str>) -> Result<Vec<cri::Container>, Status> {
        let filter = uid_labels(uid).map(|label_selector| cri::ContainerFilter {
            label_selector,
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

    async fn containers_labelled(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>, Status> {
        let filter = cri::ContainerFilter {
            label_selector: labels,
            ..Default::default()
        };
        Ok(self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner()
            .containers)
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, Status> {
        self.runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| Status::not_found(format!("container {id}")))
    }

    async fn container_stats(
        &self,
        filter: cri::ContainerStatsFilter,
    ) -> Result<Vec<cri::ContainerStats>, Status> {
        Ok(self
            .runtime
            .clone()
            .list_container_stats(cri::ListContainerStatsRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner()
            .stats)
    }

    async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, Status> {
        Ok(self.runtime.clone().exec_sync(req).await?.into_inner())
    }

    async fn exec(&self, req: cri::ExecRequest) -> Result<String, Status> {
        Ok(self.runtime.clone().exec(req).await?.into_inner().url)
    }

    async fn attach(&self, req: cri::AttachRequest) -> Result<String, Status> {
        Ok(self.runtime.clone().attach(req).await?.into_inner().url)
    }

    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String, Status> {
        Ok(self
            .runtime
            .clone()
            .port_forward(req)
            .await?
            .into_inner()
            .url)
    }

    async fn image_present(&self, image: &str) -> Result<Option<String>, Status> {
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

    async fn pull(&self, image: &str, auth: Option<cri::AuthConfig>) -> Result<String, Status> {
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

    async fn list_images(&self) -> Result<Vec<cri::Image>, Status> {
        Ok(self
            .images
            .clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images)
    }

    async fn remove_image(&self, id: &str) -> Result<(), Status> {
        self.images
            .clone()
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: id.into(),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(())
    }

    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, Status> {
        Ok(self
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await?
            .into_inner())
    }
}

/// A gRPC channel over the unix socket.
async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
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
}

/// The runtime's `unix://` endpoint or plain path as a path.
pub fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}
