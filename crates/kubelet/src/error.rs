//! The kubelet's error types. Most end up as an event's message or a container's
//! waiting message, so each prints as upstream's kubelet words it.

use std::path::PathBuf;

/// A flag, option or query parameter that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseError(pub String);

impl From<String> for ParseError {
    fn from(s: String) -> Self {
        ParseError(s)
    }
}

impl From<&str> for ParseError {
    fn from(s: &str) -> Self {
        ParseError(s.into())
    }
}

/// A SPDY/3.1 stream that does not follow the protocol (exec, attach and port-forward
/// from older clients).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FrameError(pub String);

impl From<String> for FrameError {
    fn from(s: String) -> Self {
        FrameError(s)
    }
}

impl From<&str> for FrameError {
    fn from(s: &str) -> Self {
        FrameError(s.into())
    }
}

/// A file the kubelet could not write or read.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct IoError {
    /// What it was doing (`creating`, `writing`).
    pub what: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

impl IoError {
    /// A closure for `map_err` naming what was done to which path.
    pub fn at(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> IoError {
        let path = path.into();
        move |source| IoError { what, path, source }
    }
}

/// Why a pod's volume could not be set up (the FailedMount event says it).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// One volume failed; upstream's wording around the cause.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    SetUp {
        /// The volume's name.
        volume: String,
        /// Why.
        source: Box<VolumeError>,
    },
    /// A file could not be written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The ConfigMap, Secret or PVC it needs does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// `configmap`, `secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
    },
    /// The API could not be asked for it.
    #[error("reading {name:?}: {source}")]
    Read {
        /// The object's name.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// A downward API item cannot be resolved.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The volume's spec cannot be served (unsupported type, bad path, hostPath type).
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for VolumeError {
    fn from(s: String) -> Self {
        VolumeError::Invalid(s)
    }
}

impl From<&str> for VolumeError {
    fn from(s: &str) -> Self {
        VolumeError::Invalid(s.into())
    }
}

/// Why a container's environment could not be resolved (CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The ConfigMap or Secret it names does not exist.
    #[error("{kind} \"{name}\" not found")]
    NotFound {
        /// `configmap`, `secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
    },
    /// The API could not be asked for it.
    #[error("reading {kind} {name:?}: {source}")]
    Read {
        /// `configmap`, `secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// What the spec asks for cannot be resolved (a missing key, an unsupported
    /// fieldPath or resource).
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for EnvError {
    fn from(s: String) -> Self {
        EnvError::Invalid(s)
    }
}

/// Why a container's configuration could not be made (CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be written (the termination message file).
    #[error(transparent)]
    Io(#[from] IoError),
    /// A volume mount or subPath cannot be served.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The environment cannot be resolved.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// What the spec asks for cannot be done (a missing key, an unsupported fieldPath).
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError::Invalid(s)
    }
}

/// A failed probe or hook: what the check reported, or why it could not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ProbeFailure(pub String);

impl From<String> for ProbeFailure {
    fn from(s: String) -> Self {
        ProbeFailure(s)
    }
}

impl From<&str> for ProbeFailure {
    fn from(s: &str) -> Self {
        ProbeFailure(s.into())
    }
}

/// A pod sync that could not finish; the worker tries again.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The runtime refused or did not answer.
    #[error("container runtime: {}", .0.message())]
    Runtime(#[from] tonic::Status),
    /// A file of the pod could not be written.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The kubelet's serving TLS could not be set up from its certificate, key and CA.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM block that does not parse.
    #[error("{what}: {source}")]
    Pem {
        /// `client CA`, `serving certificate`, `serving key`.
        what: &'static str,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the material.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify.
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A stream to the runtime's streaming server could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The runtime gave a URL that is not plain HTTP.
    #[error("unsupported URL {0}")]
    Url(String),
    /// The connection failed.
    #[error(transparent)]
    Connect(#[from] std::io::Error),
    /// The WebSocket handshake failed.
    #[error(transparent)]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// Image garbage collection could not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The runtime refused or did not answer.
    #[error("container runtime: {}", .0.message())]
    Runtime(#[from] tonic::Status),
    /// The runtime reports no image filesystem to measure.
    #[error("cannot measure the image filesystem at {0}")]
    NoFilesystem(String),
}
