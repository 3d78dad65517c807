//! Subresources: `status` for every kind that has one, and whatever storage the
//! resource's hooks give for the others.

use rkube_api::ApiError;

use super::write::{patch_object, update_object, Part};
use super::Ctx;
use crate::body;
use crate::registry::SubRequest;
use crate::respond::Resp;

pub async fn handle(ctx: &Ctx<'_>, req: SubRequest) -> Result<Resp, ApiError> {
    let sub = ctx.ri.subresource.as_str();
    if let Some(storage) = crate::registry::hooks(ctx.info).subresource(sub) {
        return storage.serve(ctx, req).await;
    }
    match (sub, ctx.ri.verb) {
        ("status", "get") => super::read::get(ctx).await,
        ("status", "update") => {
            let bytes = body::read(req.body).await?;
            let (obj, warnings) = super::write::decode_body(ctx, &bytes)?;
            let out = update_object(ctx, obj, Part::Status).await?;
            Ok(ctx.object_response(200, out, &warnings))
        }
        ("status", "patch") => {
            let (out, warnings) = patch_object(ctx, req.body, Part::Status).await?;
            Ok(ctx.object_response(200, out, &warnings))
        }
        (_, verb) => Err(ApiError::method_not_supported(
            &format!("{}/{sub}", ctx.info.plural),
            verb,
        )),
    }
}
