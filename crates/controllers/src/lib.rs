//! The controller manager: each module is one controller reconciling actual state to
//! desired state through the API.

pub mod node_ipam;
