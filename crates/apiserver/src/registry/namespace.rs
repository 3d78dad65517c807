//! Namespaces: `finalize`, the namespace controller's last step, replaces
//! `spec.finalizers`.

use rkube_api::ApiError;
use serde_json::json;

use super::{Hooks, SubRequest, Subresource};
use crate::body;
use crate::respond::Resp;
use crate::rest::Ctx;
use crate::storage;

pub struct NamespaceHooks;

impl Hooks for NamespaceHooks {
    fn subresource(&self, name: &str) -> Option<&'static dyn Subresource> {
        (name == "finalize").then_some(&Finalize as &dyn Subresource)
    }
}

/// `namespaces/NAME/finalize`: replaces spec.finalizers (the namespace controller's step).
struct Finalize;

#[async_trait::async_trait]
impl Subresource for Finalize {
    async fn serve(&self, ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError> {
        if ctx.ri.verb != "update" {
            return Err(ApiError::method_not_supported(
                "namespaces/finalize",
                ctx.ri.verb,
            ));
        }
        let bytes = body::read(req.body).await?;
        let b = ctx.decode_object(&bytes, None)?;
        let (old, old_rev) = storage::get(&ctx.state.store, ctx.info, "", &ctx.ri.name).await?;
        let mut new = old.clone();
        new["spec"]["finalizers"] = b.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
        let obj = crate::rest::commit_update(ctx, &old, old_rev, new, ctx.dry_run()?).await?;
        Ok(ctx.object_response(200, obj, &[]))
    }
}
