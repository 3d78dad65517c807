//! Service NodePorts (upstream's portallocator): each allocated port is a key under
//! `/registry/ranges/servicenodeports/` holding its Service, created if absent.

use std::sync::Arc;

use rkube_api::ApiError;
use rkube_store::StoreError;

use crate::State;

pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

fn key(port: i64) -> String {
    format!("/registry/ranges/servicenodeports/{port}")
}

/// Whether `port` is in the node port range.
pub fn in_range(port: i64) -> bool {
    (i64::from(NODE_PORT_MIN)..=i64::from(NODE_PORT_MAX)).contains(&port)
}

/// Reserves `port` for `owner` (`ns/name`); false if another Service holds it.
pub async fn reserve(state: &Arc<State>, port: i64, owner: &str) -> Result<bool, ApiError> {
    match state
        .store
        .create(key(port).as_bytes(), owner.as_bytes().to_vec().into(), None)
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { current }) => {
            Ok(current.value.as_ref() == owner.as_bytes())
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// Reserves a free port of the range, starting at a random one.
pub async fn allocate_next(state: &Arc<State>, owner: &str) -> Result<i64, ApiError> {
    let span = u32::from(NODE_PORT_MAX - NODE_PORT_MIN) + 1;
    let start = super::ipallocator::random_below(span);
    for k in 0..span {
        let candidate = i64::from(NODE_PORT_MIN) + i64::from((start + k) % span);
        if reserve(state, candidate, owner).await? {
            return Ok(candidate);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a nodePort: range is full",
    ))
}

/// Frees a port.
pub async fn release(state: &Arc<State>, port: i64) {
    let _ = state.store.delete(key(port).as_bytes(), None).await;
}
