//! Helpers for tests and benchmarks that need real components on loopback.

pub mod images;
mod kubectl;
pub mod token;

pub use kubectl::{kubectl_version_binary, Kubectl};

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this process runs as root; tests that need it print why they skip.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True as root; otherwise prints that `test` is skipped and why (`needs`), so a run
/// without root skips loudly instead of passing silently.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root ({needs})");
        return false;
    }
    true
}

/// The Python interpreter of the venv `make test` creates (`target/pyvenv`, with the
/// `kubernetes` package from PyPI), if it is there.
pub fn python_client() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyvenv/bin/python");
    p.exists().then_some(p)
}

/// A free TCP port on 127.0.0.1 (free when asked; bind soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// The etcd server binary (`ETCD_BIN`, else Debian's `etcd-server` package), if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A real single-member etcd on 127.0.0.1 with free ports and its own temp dir; killed on
/// drop.
pub struct Etcd {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd in a temp dir under `parent` (so benchmarks can put it on the same disk
    /// as the embedded store) and waits until it accepts connections.
    pub fn start_in(parent: &Path) -> Result<Etcd, String> {
        Self::start_with(parent, &[])
    }

    /// [`Etcd::start_in`] with extra flags (`--quota-backend-bytes=...`).
    pub fn start_with(parent: &Path, extra: &[&str]) -> Result<Etcd, String> {
        let bin = etcd_binary()
            .ok_or("etcd is not installed (apt-get install etcd-server, or `make deps`)")?;
        let dir = tempfile::Builder::new()
            .prefix("etcd-")
            .tempdir_in(parent)
            .map_err(|e| e.to_string())?;
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--experimental-watch-progress-notify-interval=1s")
            .args(extra)
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut etcd = Etcd {
            child,
            endpoint,
            dir,
        };
        wait_for_port(client, &mut etcd.child, "etcd", Duration::from_secs(30))
            .map_err(|e| format!("{e}: {}", etcd.log()))?;
        Ok(etcd)
    }

    /// Starts etcd in the system temp dir.
    pub fn start() -> Result<Etcd, String> {
        Self::start_in(&std::env::temp_dir())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Bytes etcd keeps on disk.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`, failing early if
/// `child` (the server, called `what`) exits.
pub fn wait_for_port(
    port: u16,
    child: &mut Child,
    what: &str,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not start in {}s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Total size of the regular files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
