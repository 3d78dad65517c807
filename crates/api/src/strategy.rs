//! The per-kind strategy: what differs between kinds on the one generic REST path
//! (defaults, validation, status handling, graceful deletion, TTL, field selectors,
//! table columns).

use std::time::Duration;

use serde_json::Value;

use crate::status::Cause;
use crate::table::Column;

/// Per-kind behaviour. Every method has the generic default, so a kind only says what is
/// special about it.
pub trait Strategy: Send + Sync {
    /// Fills defaults (on create and on every update, as upstream's defaulting runs on decode).
    fn default(&self, _obj: &mut Value) {}

    /// Problems with an object name under this kind's naming rule (DNS-1123 subdomain
    /// unless the kind says otherwise).
    fn validate_name(&self, name: &str) -> Vec<String> {
        crate::names::dns1123_subdomain(name)
    }

    /// Whether a create keeps the status the client sent (Nodes report their own);
    /// otherwise kinds with a status subresource start with an empty status.
    fn keeps_status_on_create(&self) -> bool {
        false
    }

    /// The status a new object starts with where the kind resets it on create: upstream's
    /// zero status as Go encodes it (fields without `omitempty` show, e.g. a Service's
    /// `{"loadBalancer": {}}`), so clients that read it find an object, not null.
    fn initial_status(&self) -> Option<Value> {
        None
    }

    /// Whether deletion must wait for something besides `metadata.finalizers`
    /// (namespaces: their `spec.finalizers`).
    fn blocks_deletion(&self, _obj: &Value) -> bool {
        false
    }

    /// How long an object lives after its last write (upstream's TTLFunc: Events expire
    /// after `--event-ttl`). None: until deleted.
    fn ttl(&self) -> Option<Duration> {
        None
    }

    /// The grace period in seconds a deletion waits (upstream's CheckGracefulDelete):
    /// `requested` is the DeleteOptions' `gracePeriodSeconds`. 0 deletes at once, which
    /// is what kinds without graceful deletion do.
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> i64 {
        0
    }

    /// Marks an object whose deletion is pending (namespaces: phase Terminating).
    fn prepare_for_deletion(&self, _obj: &mut Value) {}

    /// Prepares a new object on create: e.g. resets or initialises status.
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// Kind-specific validation of an object about to be written.
    fn validate(&self, _obj: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// Kind-specific checks of an update against the stored object (immutable fields).
    fn validate_update(&self, _new: &Value, _old: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// Whether `metadata.generation` counts spec changes for this kind.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// The value of a kind-specific field selector label (`spec.nodeName` for pods).
    /// `metadata.name` and `metadata.namespace` are handled for every kind. It may read
    /// only scalars at most two levels deep: the watch cache passes an object holding
    /// just those (see the apiserver's `selectable`).
    fn field(&self, _obj: &Value, _label: &str) -> Option<String> {
        None
    }

    /// The field selector labels this kind supports beyond the metadata ones.
    fn field_labels(&self) -> &'static [&'static str] {
        &[]
    }

    /// The Table columns (upstream's printer columns for the kind).
    fn columns(&self) -> &'static [Column] {
        crate::table::DEFAULT_COLUMNS
    }

    /// The cells of one row, matching `columns()`.
    fn cells(&self, obj: &Value) -> Vec<Value> {
        crate::table::default_cells(obj)
    }
}

/// The strategy of kinds with nothing special.
pub struct Generic;

impl Strategy for Generic {}

/// A kind with a spec whose changes bump `metadata.generation`, otherwise generic.
pub struct WithGeneration;

impl Strategy for WithGeneration {
    fn tracks_generation(&self) -> bool {
        true
    }
}

/// RBAC kinds: names only need to be valid path segments (`system:controller:x`).
pub struct PathSegmentNames;

impl Strategy for PathSegmentNames {
    fn validate_name(&self, name: &str) -> Vec<String> {
        crate::names::path_segment(name)
    }
}
