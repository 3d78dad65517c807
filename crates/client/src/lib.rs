//! What every in-cluster component (scheduler, controllers, proxy, DNS) shares, as
//! client-go gives it to upstream's: leader election on a Lease, shared informers,
//! rate-limited work queues and event recording. All of it goes through the API.

pub mod events;
pub mod informer;
pub mod leader;
pub mod queue;

pub use informer::{Change, Informer, SharedInformerFactory};
pub use leader::LeaseLock;
pub use queue::WorkQueue;
