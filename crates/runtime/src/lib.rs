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
pub mod records;
pub mod runc_image;
pub mod sandbox;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod stream;

use std::path::{Path, PathBuf};

use digest::Digest;
pub use records::RecordDir;

/// What can go wrong in the runtime; each maps to a gRPC status with a message that says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An image reference that does not parse.
    #[error("invalid image reference {0}")]
    InvalidReference(String),
    /// Content whose digest is not the one expected.
    #[error("{what}: digest mismatch: expected {expected}, got {actual} (corrupted or tampered content was refused)")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest expected.
        expected: Digest,
        /// The digest found.
        actual: Digest,
    },
    /// The registry refused the credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The registry answered with an error.
    #[error("registry: {0}")]
    Registry(String),
    /// The registry could not be reached.
    #[error("network: {0}")]
    Network(String),
    /// A document or archive that is not what it claims.
    #[error("{0}")]
    Format(String),
    /// Something with this name or ID exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// In use (an image a container runs from).
    #[error("busy: {0}")]
    Busy(String),
    /// Took too long.
    #[error("{0}")]
    Timeout(String),
    /// The host lacks a tool or kernel feature; the message says what to install.
    #[error("{0}")]
    HostMissing(String),
    /// A file operation failed: what, and why.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// Maps an I/O error to `Error::Io` naming the path.
pub fn io_err(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(p.display().to_string(), e)
}

/// The tmpfs that holds every runtime's volatile state (`Paths::state`).
pub const STATE_MOUNT: &str = "/run/rkube/state";

/// Where the runtime keeps its state, as k3s lays out its agent directory.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `DATA_DIR/agent/runtime`: images, snapshots, and the records of sandboxes and
    /// containers (with their writable layers), which outlive a reboot.
    pub root: PathBuf,
    /// What lives only as long as the containers do: OCI bundles and root mounts, runc's
    /// state, shim sockets and pid files, namespace handles. On tmpfs under `/run`, as
    /// containerd keeps its own in `/run/containerd`: nothing there is worth a disk
    /// write, and a reboot clears it along with the containers it described.
    pub state: PathBuf,
    /// `DATA_DIR/agent/images`: tarballs imported at start (air-gapped installs).
    pub import_dir: PathBuf,
}

impl Paths {
    /// The runtime's directories for an rkube data dir: `root` under it, and `state` at
    /// `/run/rkube/<hash of the data dir>` (under `root` when `/run` is not writable).
    pub fn under(data_dir: &Path) -> Paths {
        let root = data_dir.join("agent/runtime");
        let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let hash = ring::digest::digest(&ring::digest::SHA256, abs.as_os_str().as_encoded_bytes());
        let key: String = hash.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // SAFETY: access on a constant C string.
        let run_writable = unsafe { libc::access(c"/run".as_ptr(), libc::W_OK) } == 0;
        let state = if run_writable {
            PathBuf::from(STATE_MOUNT).join(key)
        } else {
            root.join("state")
        };
        Paths {
            root,
            state,
            import_dir: data_dir.join("agent/images"),
        }
    }

    /// The image store's root.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Creates the state directory and names the data dir it belongs to in it, for
    /// people who find it under `/run`. The volatile state must be gone after a reboot
    /// and is worth no disk write: where `/run` is not a tmpfs (a minimal VM or container
    /// without an init that mounts one), a tmpfs is mounted at `STATE_MOUNT`.
    pub fn create_state(&self) -> Result<(), Error> {
        if self.state.parent() == Some(Path::new(STATE_MOUNT)) {
            ensure_tmpfs(Path::new(STATE_MOUNT))?;
        }
        std::fs::create_dir_all(&self.state).map_err(io_err(&self.state))?;
        let owner = self.state.join("data-dir");
        if !owner.exists() {
            let data_dir = self
                .root
                .parent()
                .and_then(Path::parent)
                .unwrap_or(&self.root);
            let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
            std::fs::write(&owner, format!("{}\n", abs.display())).map_err(io_err(&owner))?;
        }
        Ok(())
    }
}

/// Mounts a tmpfs at `dir` unless it is on one already; a lock beside it keeps two
/// runtimes starting at once from stacking two mounts.
fn ensure_tmpfs(dir: &Path) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let on_tmpfs = |p: &Path| -> Result<bool, Error> {
        let c = cpath(p)?;
        // SAFETY: statfs into a zeroed struct we own, on a valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io_err(p)(std::io::Error::last_os_error()));
        }
        Ok(st.f_type as i64 == TMPFS_MAGIC)
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if on_tmpfs(dir)? {
        return Ok(());
    }
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err(&lock_path)(std::io::Error::last_os_error()));
    }
    if on_tmpfs(dir)? {
        return Ok(());
    }
    mount_fs(
        c"tmpfs",
        dir,
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0711,size=128m",
        &format!(
            "mounting a tmpfs for the runtime's state at {}",
            dir.display()
        ),
    )
}

/// A path as a C string.
pub(crate) fn cpath(p: &Path) -> Result<std::ffi::CString, Error> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Format(format!("bad path {}", p.display())))
}

/// Mounts a filesystem of type `fstype` (also its source name) at `target` with `data`
/// as its options; an error says it was `what`.
pub(crate) fn mount_fs(
    fstype: &std::ffi::CStr,
    target: &Path,
    flags: libc::c_ulong,
    data: &str,
    what: &str,
) -> Result<(), Error> {
    let t = cpath(target)?;
    let d = std::ffi::CString::new(data)
        .map_err(|_| Error::Format(format!("bad mount options {data:?}")))?;
    // SAFETY: valid C strings for source, target, type and data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            flags,
            d.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(Error::Io(what.to_string(), std::io::Error::last_os_error()));
    }
    Ok(())
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
