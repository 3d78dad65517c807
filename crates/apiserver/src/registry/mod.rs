//! What is special about a resource beyond its strategy, as upstream's per-resource REST
//! storages (`pkg/registry/...`) add it to the generic store: hooks around writes
//! (allocations and their release) and the storages of its subresources. The generic
//! REST path asks [`hooks`] and names no kind; the wiring of kinds to hooks is here.

mod ipallocator;
mod kubelet_proxy;
mod namespace;
mod pod;
mod portallocator;
mod scale;
mod service;

use std::sync::Arc;

use rkube_api::{ApiError, ResourceInfo};
use serde_json::Value;

use crate::respond::Resp;
use crate::rest::Ctx;
use crate::serve::RequestBody;
use crate::State;

pub use ipallocator::{reserve as reserve_cluster_ip, Cidr};

/// Hooks around the generic store's writes (upstream's BeginCreate / BeginUpdate and
/// their FinishFunc, AfterDelete). Every method defaults to nothing.
#[async_trait::async_trait]
pub trait Hooks: Send + Sync {
    /// Reserves what a new, validated object needs before it is stored.
    async fn begin_create(&self, _state: &Arc<State>, _obj: &mut Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// Reserves what an update needs before it is stored.
    async fn begin_update(
        &self,
        _state: &Arc<State>,
        _new: &mut Value,
        _old: &Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// After a write from `old` to `new` (None: absent, so a create has no `old` and a
    /// delete no `new`) was `committed` or not (failed, or a dry run): releases what the
    /// side that lost holds and the other does not.
    async fn finish(
        &self,
        _state: &Arc<State>,
        _old: Option<&Value>,
        _new: Option<&Value>,
        _committed: bool,
    ) {
    }

    /// The storage of one of the resource's subresources (None: not served here; `status`
    /// is generic).
    fn subresource(&self, _name: &str) -> Option<&'static dyn Subresource> {
        None
    }
}

/// What a subresource storage gets besides the request context: the body, and the
/// connection upgrade for the streaming ones.
pub struct SubRequest {
    pub method: http::Method,
    pub body: RequestBody,
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// The storage of one subresource (upstream's per-subresource REST: binding, eviction,
/// scale, finalize, log, exec...).
#[async_trait::async_trait]
pub trait Subresource: Send + Sync {
    async fn serve(&self, ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError>;
}

/// A resource without hooks.
struct NoHooks;

impl Hooks for NoHooks {}

/// The hooks of a resource.
pub fn hooks(info: &ResourceInfo) -> &'static dyn Hooks {
    match (info.group, info.plural) {
        ("", "pods") => &pod::PodHooks,
        ("", "services") => &service::ServiceHooks,
        ("", "namespaces") => &namespace::NamespaceHooks,
        ("", "nodes") => &kubelet_proxy::NodeHooks,
        ("", "replicationcontrollers")
        | ("apps", "deployments" | "replicasets" | "statefulsets") => &scale::Scalable,
        _ => &NoHooks,
    }
}

/// 503 for a subresource this server does not serve yet (`proxy`).
struct NotYet;

#[async_trait::async_trait]
impl Subresource for NotYet {
    async fn serve(&self, ctx: &Ctx<'_>, _req: SubRequest) -> Result<Resp, ApiError> {
        Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!(
                "{}/{} is not supported by this server yet",
                ctx.info.plural, ctx.ri.subresource
            ),
        ))
    }
}
