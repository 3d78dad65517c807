//! CRI `ImageService` over the image store.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use super::{status, Runtime};
use crate::images::reference::Reference;
use crate::images::registry::{self, Auth};
use crate::images::Image;

pub struct Images(pub Arc<Runtime>);

impl Images {
    fn to_cri(&self, img: Image) -> cri::Image {
        let (uid, username) = self
            .0
            .images
            .config(&img.id)
            .ok()
            .and_then(|c| c.config)
            .and_then(|c| c.user)
            .map(|u| split_user(&u))
            .unwrap_or((None, String::new()));
        cri::Image {
            id: img.id.to_string(),
            repo_tags: img.repo_tags,
            repo_digests: img.repo_digests,
            size: img.size,
            uid: uid.map(|value| cri::Int64Value { value }),
            username,
            spec: None,
            pinned: false,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runtime) -> Result<T, crate::Error> + Send + 'static,
    ) -> Result<T, Status> {
        super::blocking(&self.0, f).await
    }
}

/// An image's `User` as CRI wants it: a numeric uid, or a name (`user[:group]`).
fn split_user(u: &str) -> (Option<i64>, String) {
    let user = u.split(':').next().unwrap_or("");
    match user.parse::<i64>() {
        Ok(n) => (Some(n), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// CRI's AuthConfig as registry credentials.
pub fn auth_of(a: Option<&cri::AuthConfig>) -> Result<Auth, Status> {
    let Some(a) = a else {
        return Ok(Auth::Anonymous);
    };
    if !a.registry_token.is_empty() {
        return Ok(Auth::Bearer(a.registry_token.clone()));
    }
    if !a.username.is_empty() {
        return Ok(Auth::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        });
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| Status::invalid_argument("auth is not base64 of user:password"))?;
        let s =
            String::from_utf8(raw).map_err(|_| Status::invalid_argument("auth is not UTF-8"))?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?;
        return Ok(Auth::Basic {
            username: u.into(),
            password: p.into(),
        });
    }
    if !a.identity_token.is_empty() {
        return Err(Status::unimplemented(
            "identity tokens (OAuth2 refresh tokens) are not supported; pass username and password or a registry token",
        ));
    }
    Ok(Auth::Anonymous)
}

fn spec_image(spec: Option<&cri::ImageSpec>) -> Result<String, Status> {
    match spec {
        Some(s) if !s.image.is_empty() => Ok(s.image.clone()),
        _ => Err(Status::invalid_argument("image is required")),
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let (list, wanted) = self
            .blocking(move |rt| {
                let wanted = match &filter {
                    Some(f) => Some(rt.images.status(f)?.map(|i| i.id)),
                    None => None,
                };
                Ok((rt.images.list()?, wanted))
            })
            .await?;
        let images = list
            .into_iter()
            .filter(|i| match &wanted {
                None => true,
                Some(w) => w.as_ref() == Some(&i.id),
            })
            .map(|i| self.to_cri(i))
            .collect();
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let name = spec_image(req.get_ref().image.as_ref())?;
        let img = self.blocking(move |rt| rt.images.status(&name)).await?;
        // A missing image is an empty answer, not an error (the kubelet asks before pulls).
        Ok(Response::new(cri::ImageStatusResponse {
            image: img.map(|i| self.to_cri(i)),
            info: Default::default(),
        }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = spec_image(req.image.as_ref())?;
        let reference = Reference::parse(&name).map_err(status)?;
        let auth = auth_of(req.auth.as_ref())?;
        let img = registry::pull(&self.0.images, &reference, &auth, &|_| {})
            .await
            .map_err(status)?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: img.id.to_string(),
        }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = spec_image(req.get_ref().image.as_ref())?;
        // Removing what is not there succeeds (CRI: idempotent).
        self.blocking(move |rt| rt.images.remove(&name)).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let root = self.0.images.root().to_path_buf();
        let (bytes, inodes) = self.blocking(|rt| Ok(rt.images.usage())).await?;
        let usage = cri::FilesystemUsage {
            timestamp: crate::now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: root.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}
