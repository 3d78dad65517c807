//! The generic REST path: every resource of the registry through the same verbs, with
//! the kind's strategy for what differs.

mod apply;
mod delete;
pub(crate) mod delete_options;
mod read;
mod sub;
mod write;

use std::sync::Arc;

use http::{header, HeaderMap, Request};
use rkube_api::meta::ObjectMeta;
use rkube_api::{ApiError, ResourceInfo};
use serde_json::Value;

use crate::output::Output;
use crate::request::{Query, RequestInfo};
use crate::respond::Resp;
use crate::serve::RequestBody;
use crate::State;

pub use delete::delete_one;
pub use delete_options::DeleteOptions;
pub use read::{list_objects, parse_resource_version, Selectors};
pub use write::{commit_update, patch_error, prepare_update, Part};

use crate::auth::User;

/// Parses the label and field selectors of a request.
pub fn read_selectors(ctx: &Ctx<'_>) -> Result<Selectors, ApiError> {
    Selectors::parse(ctx)
}

/// Context of one resource request.
pub struct Ctx<'a> {
    pub state: &'a Arc<State>,
    /// Who asks (for admission).
    pub user: &'a User,
    pub info: &'a ResourceInfo,
    pub ri: &'a RequestInfo,
    pub query: &'a Query,
    pub headers: &'a HeaderMap,
    pub output: Output,
}

impl Ctx<'_> {
    /// `dryRun=All`: validate and answer without writing.
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        let vals = self.query.all("dryRun");
        for v in &vals {
            if *v != "All" {
                return Err(ApiError::bad_request(format!(
                    "dryRun: Unsupported value: {v:?}: supported values: \"All\""
                )));
            }
        }
        Ok(!vals.is_empty())
    }

    /// The request's group-version, as `apiVersion` spells it (`v1`, `apps/v1`).
    pub fn group_version(&self) -> String {
        if self.ri.group.is_empty() {
            self.ri.version.clone()
        } else {
            format!("{}/{}", self.ri.group, self.ri.version)
        }
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    /// Decodes a request body: JSON, YAML, or protobuf holding `message` (the resource's
    /// own kind when None).
    pub fn decode_object(&self, bytes: &[u8], message: Option<&str>) -> Result<Value, ApiError> {
        let proto = |b: &[u8]| {
            self.state
                .openapi
                .decode_protobuf(&self.state.registry, self.info, message, b)
        };
        crate::body::decode_object(self.content_type(), bytes, Some(&proto))
    }

    /// One object in the requested shape, with field-validation warnings as headers.
    pub fn object_response(&self, code: u16, obj: Value, warnings: &[String]) -> Resp {
        let out = self.output.object(self.info, obj);
        let mut r = crate::respond::raw(
            code,
            self.output.content_type(false),
            serde_json::to_vec(&out).unwrap_or_default(),
        );
        for w in warnings {
            crate::respond::add_warning(&mut r, w);
        }
        r
    }

    /// The admission attributes of this request for the object `name`.
    pub fn attributes<'b>(
        &'b self,
        operation: crate::admission::Operation,
        name: &'b str,
        object: Option<&'b mut Value>,
        old: Option<&'b Value>,
        dry_run: bool,
    ) -> crate::admission::Attributes<'b> {
        crate::admission::Attributes {
            user: self.user,
            operation,
            info: self.info,
            subresource: &self.ri.subresource,
            namespace: self.ns(),
            name,
            object,
            old,
            dry_run,
        }
    }

    /// The namespace the object belongs to ("" for cluster-scoped kinds).
    pub fn ns(&self) -> &str {
        if self.info.namespaced {
            &self.ri.namespace
        } else {
            ""
        }
    }
}

/// Serves one resource request.
pub async fn handle(
    state: &Arc<State>,
    user: &User,
    ri: &RequestInfo,
    query: &Query,
    req: Request<RequestBody>,
) -> Result<Resp, ApiError> {
    let info = state
        .registry
        .get(&ri.group, &ri.version, &ri.resource)
        .ok_or_else(ApiError::path_not_found)?;
    if !ri.subresource.is_empty() && !info.has_subresource(&ri.subresource) {
        return Err(ApiError::path_not_found());
    }
    if info.namespaced && ri.namespace.is_empty() && !matches!(ri.verb, "list" | "watch") {
        return Err(ApiError::path_not_found());
    }
    // (A namespace's own path has no namespace scope: request parsing clears it.)
    if !info.namespaced && !ri.namespace.is_empty() {
        return Err(ApiError::path_not_found());
    }
    let (mut parts, body) = req.into_parts();
    let ctx = Ctx {
        state,
        user,
        info,
        ri,
        query,
        headers: &parts.headers,
        output: Output::negotiate(&parts.headers, query),
    };
    if !ri.subresource.is_empty() {
        let req = crate::registry::SubRequest {
            method: parts.method.clone(),
            upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
            body,
        };
        return sub::handle(&ctx, req).await;
    }
    match ri.verb {
        "get" => read::get(&ctx).await,
        "list" => read::list(&ctx).await,
        "watch" => crate::watch::watch(&ctx).await,
        "create" if ri.name.is_empty() => write::create(&ctx, body).await,
        "update" => write::update(&ctx, body).await,
        "patch" => write::patch(&ctx, body).await,
        "delete" => delete::delete(&ctx, body).await,
        "deletecollection" => delete::delete_collection(&ctx, body).await,
        _ => Err(ApiError::method_not_supported(info.plural, ri.verb)),
    }
}

/// The fields every kind supports in field selectors, then the kind's own.
pub fn field_value(info: &ResourceInfo, obj: &Value, label: &str) -> Option<String> {
    match label {
        "metadata.name" => Some(obj.name().to_string()),
        "metadata.namespace" => Some(obj.namespace().to_string()),
        _ => info.strategy.field(obj, label),
    }
}
