//! Upstream's limits on requests and connections: `--max-requests-inflight` and
//! `--max-mutating-requests-inflight` (429 with Retry-After when full), the request
//! timeout (60 s; watches and streams exempt), and the connection timeouts of Go's HTTP
//! server as kube-apiserver sets them (32 s each to finish TLS and to send the first
//! request's headers, 90 s idle between requests).

use std::time::Duration;

use http::Method;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::User;
use crate::request::RequestInfo;

/// The limits of one apiserver (defaults as upstream's).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Read-only requests in flight at once (`--max-requests-inflight`).
    pub max_requests_inflight: usize,
    /// Mutating requests in flight at once (`--max-mutating-requests-inflight`).
    pub max_mutating_requests_inflight: usize,
    /// How long a request that is not long-running may take (`--request-timeout`).
    pub request_timeout: Duration,
    /// Time to finish the TLS handshake, then to send the first request's headers (Go's
    /// ReadHeaderTimeout as kube-apiserver sets it); later requests' headers count
    /// against `idle_timeout`.
    pub read_header_timeout: Duration,
    /// How long a connection may sit without a request before it is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; `None`: the file-descriptor limit less a reserve, so
    /// the server can always open its own files and answer its own clients.
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            request_timeout: Duration::from_secs(60),
            read_header_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            max_connections: None,
        }
    }
}

/// File descriptors kept free of client connections: the store's files, connections to
/// kubelets and etcd, and new connections of the server's own components.
const FD_RESERVE: usize = 64;

impl Limits {
    /// The cap on open client connections.
    pub fn connection_cap(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let soft = nofile_limit();
            soft.saturating_sub(FD_RESERVE.max(soft / 8)).max(16)
        })
    }
}

/// The soft RLIMIT_NOFILE of this process.
fn nofile_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return 1 << 20;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(1 << 20)
}

/// The two pools of in-flight requests.
pub struct InFlight {
    readonly: std::sync::Arc<Semaphore>,
    mutating: std::sync::Arc<Semaphore>,
}

impl InFlight {
    pub fn new(l: &Limits) -> Self {
        InFlight {
            readonly: std::sync::Arc::new(Semaphore::new(l.max_requests_inflight.max(1))),
            mutating: std::sync::Arc::new(Semaphore::new(l.max_mutating_requests_inflight.max(1))),
        }
    }

    /// A slot for a request, or `None` when its pool is full (the caller answers 429).
    pub fn try_acquire(&self, mutating: bool) -> Option<OwnedSemaphorePermit> {
        let pool = if mutating {
            &self.mutating
        } else {
            &self.readonly
        };
        pool.clone().try_acquire_owned().ok()
    }
}

/// Whether a method changes state (the mutating pool).
pub fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Upstream's long-running requests: watches and the streaming subresources. They are
/// not counted in flight and have no request timeout (their own timeouts bound them).
pub fn is_long_running(info: Option<&RequestInfo>) -> bool {
    info.is_some_and(|i| {
        i.verb == "watch"
            || matches!(
                i.subresource.as_str(),
                "attach" | "exec" | "proxy" | "log" | "portforward"
            )
    })
}

/// Members of system:masters are not limited (as upstream's max-in-flight filter).
pub fn is_exempt(user: Option<&User>) -> bool {
    user.is_some_and(|u| u.groups.iter().any(|g| g == "system:masters"))
}
