//! DefaultTolerationSeconds: a pod that does not tolerate the not-ready and unreachable
//! NoExecute taints gets tolerations of them for 300 s, so a brief node outage does not
//! evict it at once.

use std::sync::Arc;

use rkube_api::ApiError;
use serde_json::{json, Value};

use super::{Attributes, Operation, Plugin};
use crate::State;

/// Upstream's `--default-not-ready-toleration-seconds` and `-unreachable-` default.
pub const DEFAULT_SECONDS: i64 = 300;

const TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

pub struct DefaultTolerationSeconds;

/// Whether a toleration covers the NoExecute taint `key` (an empty key or effect matches
/// all, as upstream reads them).
fn tolerates(t: &Value, key: &str) -> bool {
    let k = t.get("key").and_then(Value::as_str).unwrap_or("");
    let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
    (k == key || k.is_empty()) && (effect == "NoExecute" || effect.is_empty())
}

/// Adds the default tolerations a pod spec lacks.
pub fn add_defaults(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    if list.is_null() {
        *list = json!([]);
    }
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in TAINTS {
        if !list.iter().any(|t| tolerates(t, key)) {
            list.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_SECONDS}),
            );
        }
    }
}

#[async_trait::async_trait]
impl Plugin for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    async fn admit(&self, _state: &Arc<State>, a: &mut Attributes<'_>) -> Result<(), ApiError> {
        if !a.is("", "pods") || !matches!(a.operation, Operation::Create | Operation::Update) {
            return Ok(());
        }
        if let Some(spec) = a.object.as_deref_mut().and_then(|o| o.get_mut("spec")) {
            add_defaults(spec);
        }
        Ok(())
    }
}
