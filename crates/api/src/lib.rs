//! API machinery shared by the apiserver and its clients inside rkube: the registry of
//! built-in kinds with their strategies, selectors, patches, names and `Status` errors.

pub mod apply;
pub mod kinds;
pub mod meta;
pub mod names;
pub mod openapi;
pub mod openapi_pb;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod registry;
pub mod selector;
pub mod status;
pub mod strategy;
pub mod table;

pub use registry::{Registry, ResourceInfo};
pub use status::{ApiError, Cause};
