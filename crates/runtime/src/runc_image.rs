//! A sealed in-memory copy of the runc binary, which every runc command runs from.
//!
//! Before it starts a container's init (for `runc run` and `runc exec`), runc copies its
//! own binary into a sealed memfd and re-executes from it, so a container can never
//! reach the host's binary through `/proc/self/exe` (CVE-2019-5736) — unless it already
//! runs from a sealed memfd, which it accepts as just as safe. One copy shared by every
//! command spares a 9 MB copy, and the page faults of a fresh binary, for each container
//! and each exec probe. runc documents this as its `memfd-bind` option. A runc upgraded
//! on disk is picked up when the runtime restarts.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The seals runc checks for, exactly: no more seals, no shrinking, growing or writing.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// A sealed memfd holding a copy of the OCI runtime's binary.
#[derive(Debug)]
pub struct RuncImage {
    fd: OwnedFd,
}

impl RuncImage {
    /// Copies `binary` into a new sealed memfd.
    pub fn seal(binary: &Path) -> io::Result<RuncImage> {
        let name = CString::new("runc").expect("no NUL");
        let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: memfd_create with a valid C string; MFD_EXEC (kernels from 6.3 on, which
        // may otherwise warn or refuse executable memfds) is retried without on EINVAL.
        let mut raw = unsafe { libc::memfd_create(name.as_ptr(), base | libc::MFD_EXEC) };
        if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // SAFETY: as above.
            raw = unsafe { libc::memfd_create(name.as_ptr(), base) };
        }
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor memfd_create just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut copy = File::from(fd);
        io::copy(&mut File::open(binary)?, &mut copy)?;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RuncImage { fd: copy.into() })
    }

    /// Opens another process's image through its `/proc/PID/fd/N` path, and checks that
    /// it is sealed as runc requires.
    pub fn open(path: &Path) -> io::Result<RuncImage> {
        let fd = OwnedFd::from(File::open(path)?);
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals != SEALS {
            return Err(io::Error::other(format!(
                "{} is not a sealed copy of the runtime",
                path.display()
            )));
        }
        Ok(RuncImage { fd })
    }

    /// The path this process executes the copy by.
    pub fn exe(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The path another process opens the copy by (`RuncImage::open`), while this one
    /// lives.
    pub fn shared(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }
}

/// A command that runs the OCI runtime at `exe` (a path on disk or `RuncImage::exe`),
/// named `runc` in its argv so `ps` shows what it is, not `/proc/self/fd/N`.
pub fn command(exe: &Path) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(exe);
    if exe.starts_with("/proc") {
        c.arg0("runc");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::RuncImage;

    #[test]
    fn a_sealed_copy_runs_and_refuses_writes() {
        let img = RuncImage::seal(std::path::Path::new("/bin/echo")).unwrap();
        let out = std::process::Command::new(img.exe())
            .arg("from memory")
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"from memory\n");
        let again = RuncImage::open(&img.shared()).unwrap();
        let out = std::process::Command::new(again.exe())
            .arg("x")
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"x\n");
        // Sealed: not writable, even by its owner.
        let w = std::fs::OpenOptions::new().write(true).open(img.exe());
        assert!(w.is_err() || std::io::Write::write_all(&mut w.unwrap(), b"x").is_err());
        // Anything else is refused.
        assert!(RuncImage::open(std::path::Path::new("/bin/echo")).is_err());
    }
}
