//! rkube's built-in container runtime, served over CRI v1: an image store (registry pulls,
//! tarball imports, layers unpacked once into overlay snapshots) and, as they land, pod
//! sandboxes and containers run by an OCI runtime under a per-container shim.

pub mod cni;
pub mod container;
pub mod cri;
pub mod digest;
pub mod exec;
pub mod gate;
pub mod host;
pub mod hostport;
pub mod images;
pub mod namespaces;
pub mod netlink;
pub mod pty;
pub mod sandbox;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod stream;

use std::path::{Path, PathBuf};

use digest::Digest;

/// What can go wrong in the runtime; each maps to a gRPC status with a message that says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid image reference {0}")]
    InvalidReference(String),
    #[error("{what}: digest mismatch: expected {expected}, got {actual} (corrupted or tampered content was refused)")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("network: {0}")]
    Network(String),
    #[error("{0}")]
    Format(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("{0}")]
    Timeout(String),
    /// The host lacks a tool or kernel feature; the message says what to install.
    #[error("{0}")]
    HostMissing(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// Maps an I/O error to `Error::Io` naming the path.
pub fn io_err(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(p.display().to_string(), e)
}

/// Where the runtime keeps its state, as k3s lays out its agent directory.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `DATA_DIR/agent/runtime`: images, snapshots, containers.
    pub root: PathBuf,
    /// `DATA_DIR/agent/images`: tarballs imported at start (air-gapped installs).
    pub import_dir: PathBuf,
}

impl Paths {
    /// The runtime's directories under an rkube data dir.
    pub fn under(data_dir: &Path) -> Paths {
        Paths {
            root: data_dir.join("agent/runtime"),
            import_dir: data_dir.join("agent/images"),
        }
    }

    /// The image store's root.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
}

/// A new 64-hex-digit ID for a sandbox or container.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Nanoseconds since the epoch, as CRI timestamps are.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The full ID of the entry in `dir` named `id` or uniquely starting with it (as crictl
/// accepts ID prefixes).
pub fn resolve_id(dir: &Path, id: &str) -> Option<String> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return None;
    }
    if dir.join(id).is_dir() {
        return Some(id.to_string());
    }
    let mut hits = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(id));
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

/// A directory of `<id>/<file>` JSON records (sandboxes, containers), read fresh from disk
/// so a restarted runtime sees exactly what was there.
#[derive(Clone, Debug)]
pub struct RecordDir {
    pub dir: PathBuf,
    file: &'static str,
    /// What a record is, for errors ("pod sandbox", "container").
    what: &'static str,
}

impl RecordDir {
    pub fn open(dir: PathBuf, file: &'static str, what: &'static str) -> Result<RecordDir, Error> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(RecordDir { dir, file, what })
    }

    /// The record with this ID or unique ID prefix.
    pub fn get<T: serde::de::DeserializeOwned>(&self, id: &str) -> Result<T, Error> {
        let missing = || Error::NotFound(format!("{} {id}", self.what));
        let full = resolve_id(&self.dir, id).ok_or_else(missing)?;
        let p = self.dir.join(full).join(self.file);
        let b = std::fs::read(&p).map_err(|_| missing())?;
        serde_json::from_slice(&b).map_err(|e| Error::Format(format!("{}: {e}", p.display())))
    }

    /// Every readable record.
    pub fn list<T: serde::de::DeserializeOwned>(&self) -> Vec<T> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| std::fs::read(e.path().join(self.file)).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// Writes a record atomically.
    pub fn save<T: serde::Serialize>(&self, id: &str, record: &T) -> Result<(), Error> {
        let p = self.dir.join(id).join(self.file);
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(record).expect("json"))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io_err(&p))
    }
}
