//! DenyServiceExternalIPs (off by default): no new `spec.externalIPs` on Services, the
//! mitigation for CVE-2020-8554; addresses a Service already has may stay.

use std::sync::Arc;

use rkube_api::ApiError;
use serde_json::Value;

use super::{forbidden, Attributes, Operation, Plugin};
use crate::State;

pub struct DenyServiceExternalIPs;

fn external_ips(obj: Option<&Value>) -> Vec<&str> {
    obj.and_then(|o| o.pointer("/spec/externalIPs"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[async_trait::async_trait]
impl Plugin for DenyServiceExternalIPs {
    fn name(&self) -> &'static str {
        "DenyServiceExternalIPs"
    }

    async fn validate(&self, _state: &Arc<State>, a: &Attributes<'_>) -> Result<(), ApiError> {
        if !a.is("", "services") || !matches!(a.operation, Operation::Create | Operation::Update) {
            return Ok(());
        }
        let old = external_ips(a.old);
        if external_ips(a.object()).iter().any(|ip| !old.contains(ip)) {
            return Err(forbidden(
                a,
                "Use of external IPs is denied by admission control",
            ));
        }
        Ok(())
    }
}
