//! CRI `RuntimeService`: pod sandboxes and containers over the sandbox and container
//! stores, exec (sync, and streaming URLs), stats, resource updates and log reopening.
//! Checkpoints, container events and metric descriptors answer `Unimplemented`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::Runtime;
use crate::container::State;
use crate::sandbox::Sandbox;

pub struct Containers(pub Arc<Runtime>, pub Arc<crate::stream::StreamServer>);

impl Containers {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runtime) -> Result<T, crate::Error> + Send + 'static,
    ) -> Result<T, Status> {
        super::blocking(&self.0, f).await
    }
}

/// Runs `f` on each container of sandbox `id`; the sandbox, or None when it is gone
/// (stopping or removing what is gone succeeds: CRI calls are idempotent).
fn for_sandbox(
    rt: &Runtime,
    id: &str,
    f: impl Fn(&crate::container::Container) -> Result<(), crate::Error>,
) -> Result<Option<Sandbox>, crate::Error> {
    let sb = match rt.sandboxes.get(id) {
        Ok(sb) => sb,
        Err(crate::Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    for c in rt
        .containers
        .list()
        .iter()
        .filter(|c| c.sandbox_id == sb.id)
    {
        f(c)?;
    }
    Ok(Some(sb))
}

fn sandbox_state(sb: &Sandbox) -> cri::PodSandboxState {
    if sb.ready {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

fn container_state(s: State) -> cri::ContainerState {
    match s {
        State::Created => cri::ContainerState::ContainerCreated,
        State::Running => cri::ContainerState::ContainerRunning,
        State::Exited => cri::ContainerState::ContainerExited,
    }
}

/// Whether every `key=value` of the selector is among the labels.
fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The runtime's name in `Version` (what `kubectl get nodes -o wide` shows as
/// CONTAINER-RUNTIME, `rkube://VERSION`).
pub const RUNTIME_NAME: &str = "rkube";

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented by rkube's built-in runtime yet; point the kubelet at containerd with --container-runtime-endpoint meanwhile"
    ))
}

/// Methods that answer `not_yet` until they are built (written in `async_trait`'s
/// expanded form, since that attribute does not see inside macro calls).
macro_rules! not_yet {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _req: Request<cri::$req>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<cri::$resp>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { Err(not_yet(stringify!($req).trim_end_matches("Request"))) })
            }
        )*
    };
}

#[tonic::async_trait]
impl RuntimeService for Containers {
    async fn version(
        &self,
        _req: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn status(
        &self,
        _req: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let cond = |kind: &str, problem: Option<String>, reason: &str| cri::RuntimeCondition {
            r#type: kind.into(),
            status: problem.is_none(),
            reason: if problem.is_some() {
                reason.into()
            } else {
                String::new()
            },
            message: problem.unwrap_or_default(),
        };
        let (runtime, network) = self
            .blocking(|rt| {
                let runtime = crate::host::runtime_problem(&rt.options.runc);
                let network = match rt.network() {
                    None => Some(
                        "no pod CIDR yet: the kubelet sets it with UpdateRuntimeConfig".to_string(),
                    ),
                    Some(n) => n.ready().err().map(|e| e.to_string()),
                };
                Ok((runtime, network))
            })
            .await?;
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![
                    cond("RuntimeReady", runtime, "OCIRuntimeNotReady"),
                    cond("NetworkReady", network, "NetworkPluginNotReady"),
                ],
            }),
            info: Default::default(),
            runtime_handlers: vec![],
            features: None,
        }))
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            self.0.set_pod_cidr(&cidr).map_err(super::status)?;
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let config = req
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let sb = self
            .blocking(move |rt| {
                crate::hostport::check_free(&config, &rt.sandboxes.list())?;
                let pass = rt.start_gate.enter(crate::now_nanos());
                let net = rt.network();
                let sb = rt.sandboxes.run(config, net.as_ref())?;
                if let Err(e) = rt.sync_host_ports() {
                    let _ = rt.sandboxes.remove(&sb.id, net.as_ref());
                    let _ = rt.sync_host_ports();
                    return Err(e);
                }
                // Its first container comes next.
                pass.reserve(sb.created_at, crate::gate::NEXT_STEP_HOLD);
                Ok(sb)
            })
            .await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: sb.id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        self.blocking(move |rt| {
            for_sandbox(rt, &id, |c| rt.containers.stop(&c.id, Duration::ZERO)).and_then(|sb| {
                sb.map_or(Ok(()), |sb| {
                    rt.sandboxes.stop(&sb.id, rt.network().as_ref())?;
                    rt.sync_host_ports()
                })
            })
        })
        .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        self.blocking(move |rt| {
            for_sandbox(rt, &id, |c| rt.containers.remove(&c.id, &rt.images)).and_then(|sb| {
                sb.map_or(Ok(()), |sb| {
                    rt.sandboxes.remove(&sb.id, rt.network().as_ref())?;
                    rt.sync_host_ports()
                })
            })
        })
        .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let sb = self.blocking(move |rt| rt.sandboxes.get(&id)).await?;
        let options = sb
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let status = cri::PodSandboxStatus {
            id: sb.id.clone(),
            metadata: Some(sb.metadata()),
            state: sandbox_state(&sb) as i32,
            created_at: sb.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: sb.ip().map(|i| i.to_string()).unwrap_or_default(),
                additional_ips: sb
                    .attachment
                    .iter()
                    .flat_map(|a| a.ips.iter().skip(1))
                    .map(|i| cri::PodIp { ip: i.to_string() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options }),
            }),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: String::new(),
        };
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info: Default::default(),
            containers_statuses: vec![],
            timestamp: crate::now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let all = self.blocking(|rt| Ok(rt.sandboxes.list())).await?;
        let items = all
            .into_iter()
            .filter(|sb| filter.id.is_empty() || sb.id.starts_with(&filter.id))
            .filter(|sb| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == sandbox_state(sb) as i32)
            })
            .filter(|sb| labels_match(&filter.label_selector, &sb.config.labels))
            .map(|sb| cri::PodSandbox {
                id: sb.id.clone(),
                metadata: Some(sb.metadata()),
                state: sandbox_state(&sb) as i32,
                created_at: sb.created_at,
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
                runtime_handler: String::new(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let c = self
            .blocking(move |rt| {
                let sb = rt.sandboxes.get(&req.pod_sandbox_id)?;
                let pass = rt.start_gate.enter(sb.created_at);
                let c = rt
                    .containers
                    .create(&sb, &rt.sandboxes.dir(&sb.id), config, &rt.images)?;
                // Its start comes next.
                pass.reserve(sb.created_at, crate::gate::NEXT_STEP_HOLD);
                Ok(c)
            })
            .await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: c.id,
        }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        self.blocking(move |rt| {
            let c = rt.containers.get(&id)?;
            let age = rt.sandboxes.get(&c.sandbox_id).map(|s| s.created_at);
            let _pass = rt
                .start_gate
                .enter(age.unwrap_or_else(|_| crate::now_nanos()));
            rt.containers.start(&c.id)
        })
        .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = req.into_inner();
        let timeout = Duration::from_secs(req.timeout.max(0) as u64);
        self.blocking(
            move |rt| match rt.containers.stop(&req.container_id, timeout) {
                Err(crate::Error::NotFound(_)) => Ok(()),
                r => r,
            },
        )
        .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        self.blocking(move |rt| rt.containers.remove(&id, &rt.images))
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let want = filter.state.as_ref().map(|s| s.state);
        // Matched in memory first: only the matches' state is read from disk.
        let all = self
            .blocking(move |rt| {
                Ok(rt
                    .containers
                    .filter(|c| {
                        (filter.id.is_empty() || c.id.starts_with(&filter.id))
                            && (filter.pod_sandbox_id.is_empty()
                                || c.sandbox_id.starts_with(&filter.pod_sandbox_id))
                            && labels_match(&filter.label_selector, &c.config.labels)
                    })
                    .into_iter()
                    .map(|c| {
                        let st = rt.containers.state(&c).0;
                        (c, st)
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let containers = all
            .into_iter()
            .filter(|(_, st)| want.is_none_or(|w| w == container_state(*st) as i32))
            .map(|(c, st)| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(cri::ImageSpec {
                    image: c.image_id.clone(),
                    ..Default::default()
                }),
                image_ref: c.image_ref.clone(),
                state: container_state(st) as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let id = req.into_inner().container_id;
        let (c, (st, started, exit)) = self
            .blocking(move |rt| {
                let c = rt.containers.get(&id)?;
                let s = rt.containers.state(&c);
                Ok((c, s))
            })
            .await?;
        let exit = exit.unwrap_or(crate::shim::Exit {
            exit_code: 0,
            finished_at: 0,
            reason: if st == State::Created {
                "Created".into()
            } else {
                String::new()
            },
            message: String::new(),
        });
        let status = cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: container_state(st) as i32,
            created_at: c.created_at,
            started_at: started,
            finished_at: exit.finished_at,
            exit_code: exit.exit_code,
            image: c.config.image.clone(),
            image_ref: c.image_ref.clone(),
            reason: exit.reason,
            message: exit.message,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.clone(),
            resources: c
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: c.image_id.clone(),
            user: None,
        };
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(status),
            info: Default::default(),
        }))
    }

    type GetContainerEventsStream =
        futures::stream::Empty<Result<cri::ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(not_yet("GetContainerEvents"))
    }

    not_yet! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = req.into_inner();
        let timeout = Duration::from_secs(req.timeout.max(0) as u64);
        let cmd = self
            .blocking(move |rt| rt.containers.exec_command(&req.container_id, &req.cmd))
            .await?;
        let out = cmd.run_sync(timeout).await.map_err(super::status)?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = req.into_inner();
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument(
                "one of stdin, stdout, or stderr must be set",
            ));
        }
        if req.tty && req.stderr {
            return Err(Status::invalid_argument(
                "tty and stderr cannot both be true (a terminal has one output stream)",
            ));
        }
        let (id, cmd) = (req.container_id.clone(), req.cmd.clone());
        self.blocking(move |rt| rt.containers.exec_command(&id, &cmd))
            .await?;
        Ok(Response::new(cri::ExecResponse {
            url: self.1.url(crate::stream::Request::Exec(req)),
        }))
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = req.into_inner();
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument(
                "one of stdin, stdout, or stderr must be set",
            ));
        }
        let id = req.container_id.clone();
        self.blocking(move |rt| {
            let c = rt.containers.get(&id)?;
            match rt.containers.state(&c).0 {
                State::Running => Ok(()),
                _ => Err(crate::Error::Format(format!(
                    "container {} is not running",
                    c.id
                ))),
            }
        })
        .await?;
        Ok(Response::new(cri::AttachResponse {
            url: self.1.url(crate::stream::Request::Attach(req)),
        }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = req.into_inner();
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!("invalid port {p}")));
        }
        let id = req.pod_sandbox_id.clone();
        let sb = self.blocking(move |rt| rt.sandboxes.get(&id)).await?;
        if !sb.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        Ok(Response::new(cri::PortForwardResponse {
            url: self.1.url(crate::stream::Request::PortForward(req)),
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let linux = req
            .linux
            .ok_or_else(|| Status::invalid_argument("linux resources are required"))?;
        self.blocking(move |rt| rt.containers.update_resources(&req.container_id, linux))
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        crate::stream::reopen_log(&self.0, &id)
            .await
            .map_err(super::status)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = req.into_inner().container_id;
        let stats = self
            .blocking(move |rt| {
                let c = rt.containers.get(&id)?;
                Ok(super::stats::container(rt, &c))
            })
            .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = self
            .blocking(move |rt| {
                Ok(rt
                    .containers
                    .list()
                    .iter()
                    .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
                    .filter(|c| {
                        filter.pod_sandbox_id.is_empty()
                            || c.sandbox_id.starts_with(&filter.pod_sandbox_id)
                    })
                    .filter(|c| labels_match(&filter.label_selector, &c.config.labels))
                    .filter(|c| rt.containers.state(c).0 == State::Running)
                    .map(|c| super::stats::container(rt, c))
                    .collect())
            })
            .await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let stats = self
            .blocking(move |rt| {
                let sb = rt.sandboxes.get(&id)?;
                Ok(super::stats::sandbox(rt, &sb))
            })
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = self
            .blocking(move |rt| {
                Ok(rt
                    .sandboxes
                    .list()
                    .iter()
                    .filter(|s| s.ready)
                    .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
                    .filter(|s| labels_match(&filter.label_selector, &s.config.labels))
                    .map(|s| super::stats::sandbox(rt, s))
                    .collect())
            })
            .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }
}
