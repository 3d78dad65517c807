//! AlwaysPullImages (off by default): every container of a new or updated pod pulls its
//! image, so a pod cannot use an image another tenant pulled with credentials it lacks.

use std::sync::Arc;

use rkube_api::ApiError;
use serde_json::{json, Value};

use super::{Attributes, Operation, Plugin};
use crate::State;

pub struct AlwaysPullImages;

#[async_trait::async_trait]
impl Plugin for AlwaysPullImages {
    fn name(&self) -> &'static str {
        "AlwaysPullImages"
    }

    async fn admit(&self, _state: &Arc<State>, a: &mut Attributes<'_>) -> Result<(), ApiError> {
        if !a.is("", "pods") || !matches!(a.operation, Operation::Create | Operation::Update) {
            return Ok(());
        }
        let Some(spec) = a.object.as_deref_mut().and_then(|o| o.get_mut("spec")) else {
            return Ok(());
        };
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if c.is_object() {
                    c["imagePullPolicy"] = json!("Always");
                }
            }
        }
        Ok(())
    }
}
