//! NamespaceLifecycle: nothing is written into a namespace that does not exist, nothing
//! new into one being terminated, and the system namespaces are never deleted.

use std::sync::Arc;

use rkube_api::meta::ObjectMeta;
use rkube_api::ApiError;
use serde_json::json;

use super::{forbidden, Attributes, Operation, Plugin};
use crate::{storage, State};

/// Namespaces that may not be deleted (upstream's immortal namespaces).
pub const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public"];

pub struct NamespaceLifecycle;

#[async_trait::async_trait]
impl Plugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    async fn admit(&self, state: &Arc<State>, a: &mut Attributes<'_>) -> Result<(), ApiError> {
        if a.is("", "namespaces") {
            if a.operation == Operation::Delete && IMMORTAL.contains(&a.name) {
                return Err(forbidden(a, "this namespace may not be deleted"));
            }
            return Ok(());
        }
        // Cluster-scoped resources, and deletions, are always allowed.
        if a.namespace.is_empty() || a.operation == Operation::Delete {
            return Ok(());
        }
        let ns_info = state
            .registry
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
        let (ns, _) = storage::get(&state.store, ns_info, "", a.namespace).await?;
        if a.operation == Operation::Create && ns.is_deleting() {
            let mut e = forbidden(
                a,
                &format!(
                    "unable to create new content in namespace {} because it is being terminated",
                    a.namespace
                ),
            );
            e.details["causes"] = json!([{
                "reason": "NamespaceTerminating",
                "message": format!("namespace {} is being terminated", a.namespace),
                "field": "metadata.namespace",
            }]);
            return Err(e);
        }
        Ok(())
    }
}
