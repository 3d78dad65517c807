//! A container runtime in memory, for tests of the kubelet's logic without root: it
//! keeps sandboxes, containers and images as CRI describes them, and lets a test make a
//! container exit or an image fail to pull.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_cri::v1 as cri;
use tonic::Status;

use crate::cri::{RuntimeService, POD_UID};

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, cri::PodSandboxStatus>,
    containers: HashMap<String, (cri::Container, cri::ContainerStatus)>,
    images: HashMap<String, cri::Image>,
    next: u64,
    /// Every call, in order (`run_pod_sandbox`, `start_container c-2`, ...).
    calls: Vec<String>,
}

/// The fake runtime.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_nanosecond() as i64
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Makes the running instance of container `name` exit with `code`.
    pub fn exit(&self, name: &str, code: i32) {
        let mut s = self.lock();
        for (c, st) in s.containers.values_mut() {
            let this = c.metadata.as_ref().is_some_and(|m| m.name == name);
            if this && st.state == cri::ContainerState::ContainerRunning as i32 {
                c.state = cri::ContainerState::ContainerExited as i32;
                st.state = c.state;
                st.exit_code = code;
                st.finished_at = now();
                st.reason = if code == 0 { "Completed" } else { "Error" }.into();
            }
        }
    }

    /// The containers named `name`, as (state, attempt).
    pub fn instances(&self, name: &str) -> Vec<(i32, u32)> {
        let s = self.lock();
        let mut v: Vec<(i32, u32)> = s
            .containers
            .values()
            .filter_map(|(c, st)| {
                let m = c.metadata.as_ref()?;
                (m.name == name).then_some((st.state, m.attempt))
            })
            .collect();
        v.sort_by_key(|x| x.1);
        v
    }

    /// The sandboxes, as (state, labels).
    pub fn sandbox_list(&self) -> Vec<(i32, HashMap<String, String>)> {
        self.lock()
            .sandboxes
            .values()
            .map(|s| (s.state, s.labels.clone()))
            .collect()
    }

    fn id(s: &mut State, prefix: &str) -> String {
        s.next += 1;
        format!("{prefix}-{}", s.next)
    }

    fn stop(st: &mut cri::ContainerStatus, c: &mut cri::Container) {
        if st.state == cri::ContainerState::ContainerRunning as i32 {
            st.exit_code = 137;
            st.reason = "Error".into();
            st.finished_at = now();
        }
        if st.state != cri::ContainerState::ContainerExited as i32 {
            st.state = cri::ContainerState::ContainerExited as i32;
            c.state = st.state;
        }
    }
}

fn has_uid(labels: &HashMap<String, String>, uid: Option<&str>) -> bool {
    uid.is_none_or(|u| labels.get(POD_UID).map(String::as_str) == Some(u))
}

#[async_trait::async_trait]
impl RuntimeService for FakeRuntime {
    async fn version(&self) -> Result<(String, String), Status> {
        Ok(("fake".into(), "0.1.0".into()))
    }

    async fn status(&self) -> Result<cri::StatusResponse, Status> {
        let cond = |t: &str| cri::RuntimeCondition {
            r#type: t.into(),
            status: true,
            ..Default::default()
        };
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![cond("RuntimeReady"), cond("NetworkReady")],
            }),
            ..Default::default()
        })
    }

    async fn update_runtime_config(
        &self,
        _: cri::UpdateRuntimeConfigRequest,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest) -> Result<String, Status> {
        let cfg = req.config.unwrap_or_default();
        let mut s = self.lock();
        let id = Self::id(&mut s, "sandbox");
        let ip = format!("10.88.0.{}", s.next % 250 + 2);
        s.calls.push("run_pod_sandbox".into());
        s.sandboxes.insert(
            id.clone(),
            cri::PodSandboxStatus {
                id: id.clone(),
                metadata: cfg.metadata,
                state: cri::PodSandboxState::SandboxReady as i32,
                created_at: now(),
                network: Some(cri::PodSandboxNetworkStatus {
                    ip,
                    ..Default::default()
                }),
                labels: cfg.labels,
                annotations: cfg.annotations,
                ..Default::default()
            },
        );
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), Status> {
        let mut s = self.lock();
        s.calls.push(format!("stop_sandbox {id}"));
        if let Some(sb) = s.sandboxes.get_mut(id) {
            sb.state = cri::PodSandboxState::SandboxNotready as i32;
        }
        for (c, st) in s.containers.values_mut() {
            if c.pod_sandbox_id == id {
                Self::stop(st, c);
            }
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), Status> {
        let mut s = self.lock();
        s.calls.push(format!("remove_sandbox {id}"));
        s.sandboxes.remove(id);
        s.containers.retain(|_, (c, _)| c.pod_sandbox_id != id);
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, Status> {
        self.lock()
            .sandboxes
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id}")))
    }

    async fn sandboxes(&self, uid: Option<&str>) -> Result<Vec<cri::PodSandbox>, Status> {
        Ok(self
            .lock()
            .sandboxes
            .values()
            .filter(|s| has_uid(&s.labels, uid))
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: s.metadata.clone(),
                state: s.state,
                created_at: s.created_at,
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn create_container(&self, req: cri::CreateContainerRequest) -> Result<String, Status> {
        let cfg = req.config.unwrap_or_default();
        let mut s = self.lock();
        if !s.sandboxes.contains_key(&req.pod_sandbox_id) {
            return Err(Status::not_found(format!(
                "pod sandbox {}",
                req.pod_sandbox_id
            )));
        }
        let id = Self::id(&mut s, "container");
        s.calls.push(format!(
            "create_container {}",
            cfg.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
        ));
        let c = cri::Container {
            id: id.clone(),
            pod_sandbox_id: req.pod_sandbox_id,
            metadata: cfg.metadata.clone(),
            image: cfg.image.clone(),
            image_ref: cfg
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            state: cri::ContainerState::ContainerCreated as i32,
            created_at: now(),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            ..Default::default()
        };
        let st = cri::ContainerStatus {
            id: id.clone(),
            metadata: cfg.metadata,
            state: c.state,
            created_at: c.created_at,
            image: cfg.image,
            image_ref: c.image_ref.clone(),
            labels: cfg.labels,
            annotations: cfg.annotations,
            ..Default::default()
        };
        s.containers.insert(id.clone(), (c, st));
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), Status> {
        let mut s = self.lock();
        s.calls.push(format!("start_container {id}"));
        let (c, st) = s
            .containers
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("container {id}")))?;
        c.state = cri::ContainerState::ContainerRunning as i32;
        st.state = c.state;
        st.started_at = now();
        Ok(())
    }

    async fn stop_container(&self, id: &str, _grace: i64) -> Result<(), Status> {
        let mut s = self.lock();
        s.calls.push(format!("stop_container {id}"));
        if let Some((c, st)) = s.containers.get_mut(id) {
            Self::stop(st, c);
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let mut s = self.lock();
        s.calls.push(format!("remove_container {id}"));
        s.containers.remove(id);
        Ok(())
    }

    async fn containers(&self, uid: Option<&str>) -> Result<Vec<cri::Container>, Status> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|(c, _)| has_uid(&c.labels, uid))
            .map(|(c, _)| c.clone())
            .collect())
    }

    async fn containers_labelled(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>, Status> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|(c, _)| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .map(|(c, _)| c.clone())
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, Status> {
        self.lock()
            .containers
            .get(id)
            .map(|(_, st)| st.clone())
            .ok_or_else(|| Status::not_found(format!("container {id}")))
    }

    async fn container_stats(
        &self,
        _: cri::ContainerStatsFilter,
    ) -> Result<Vec<cri::ContainerStats>, Status> {
        Ok(Vec::new())
    }

    async fn exec_sync(&self, _: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, Status> {
        Ok(cri::ExecSyncResponse::default())
    }

    async fn exec(&self, _: cri::ExecRequest) -> Result<String, Status> {
        Err(Status::unimplemented("the fake runtime does not stream"))
    }

    async fn attach(&self, _: cri::AttachRequest) -> Result<String, Status> {
        Err(Status::unimplemented("the fake runtime does not stream"))
    }

    async fn port_forward(&self, _: cri::PortForwardRequest) -> Result<String, Status> {
        Err(Status::unimplemented("the fake runtime does not stream"))
    }

    async fn image_present(&self, image: &str) -> Result<Option<String>, Status> {
        Ok(self.lock().images.get(image).map(|i| i.id.clone()))
    }

    /// Images whose name contains `missing` are not found.
    async fn pull(&self, image: &str, _auth: Option<cri::AuthConfig>) -> Result<String, Status> {
        let mut s = self.lock();
        s.calls.push(format!("pull {image}"));
        if image.contains("missing") {
            return Err(Status::not_found(format!(
                "failed to resolve reference \"{image}\": not found"
            )));
        }
        let id = format!("sha256:{:064x}", image.len());
        s.images.insert(
            image.into(),
            cri::Image {
                id: id.clone(),
                repo_tags: vec![image.into()],
                size: 1 << 20,
                ..Default::default()
            },
        );
        Ok(id)
    }

    async fn list_images(&self) -> Result<Vec<cri::Image>, Status> {
        Ok(self.lock().images.values().cloned().collect())
    }

    async fn remove_image(&self, id: &str) -> Result<(), Status> {
        self.lock().images.retain(|_, i| i.id != id);
        Ok(())
    }

    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, Status> {
        Ok(cri::ImageFsInfoResponse::default())
    }
}
