//! Pod namespaces without a pause process: a short-lived thread unshares the network, UTS
//! and IPC namespaces, sets them up (hostname, loopback up, sysctls) and bind-mounts them
//! to files that keep them alive; containers join them by path. (A thread may unshare
//! these in a multi-threaded process; nothing forks.)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{cpath, io_err, Error};

/// The namespaces a pod shares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// The network namespace.
    Net,
    /// The hostname namespace.
    Uts,
    /// The IPC namespace.
    Ipc,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Uts => "uts",
            Kind::Ipc => "ipc",
        }
    }
    fn flag(self) -> libc::c_int {
        match self {
            Kind::Net => libc::CLONE_NEWNET,
            Kind::Uts => libc::CLONE_NEWUTS,
            Kind::Ipc => libc::CLONE_NEWIPC,
        }
    }
}

/// Creates the namespaces `kinds` as files `dir/<net|uts|ipc>`; sets the hostname (UTS),
/// brings `lo` up (net) and applies `sysctls` inside. Returns the paths.
pub fn create(
    dir: &Path,
    kinds: &[Kind],
    hostname: &str,
    sysctls: &[(String, String)],
) -> Result<Vec<(Kind, PathBuf)>, Error> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut out = Vec::new();
    for k in kinds {
        let p = dir.join(k.name());
        fs::write(&p, b"").map_err(io_err(&p))?;
        out.push((*k, p));
    }
    let targets = out.clone();
    let hostname = hostname.to_string();
    let sysctls = sysctls.to_vec();
    let res = std::thread::spawn(move || -> Result<(), Error> {
        let flags = targets.iter().fold(0, |f, (k, _)| f | k.flag());
        // SAFETY: unshare affects only this thread, which exits right after.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(os_err("unsharing pod namespaces (needs root)"));
        }
        if targets.iter().any(|(k, _)| *k == Kind::Uts) && !hostname.is_empty() {
            // SAFETY: pointer and length of a live buffer.
            if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
                return Err(os_err("setting the pod hostname"));
            }
        }
        if targets.iter().any(|(k, _)| *k == Kind::Net) {
            loopback_up()?;
        }
        for (key, value) in &sysctls {
            let p = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            fs::write(&p, value).map_err(|e| {
                Error::Format(format!(
                    "sysctl {key}={value}: {e} (not a namespaced sysctl?)"
                ))
            })?;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        for (k, target) in &targets {
            let src = format!("/proc/self/task/{tid}/ns/{}", k.name());
            bind(Path::new(&src), target)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| Error::Format("namespace thread panicked".into()))?;
    if let Err(e) = res {
        remove(dir);
        return Err(e);
    }
    Ok(out)
}

/// Unmounts and deletes the namespace files under `dir` (the namespaces die with their
/// last process).
pub fn remove(dir: &Path) {
    for k in [Kind::Net, Kind::Uts, Kind::Ipc] {
        let p = dir.join(k.name());
        if let Ok(c) = cpath(&p) {
            // SAFETY: valid C string; failure (not mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_file(&p);
    }
}

fn os_err(what: &str) -> Error {
    Error::Io(what.to_string(), io::Error::last_os_error())
}

/// Bind-mounts `src` on `dst`.
pub fn bind(src: &Path, dst: &Path) -> Result<(), Error> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: valid C strings; null fs type and data are allowed for MS_BIND.
    if unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(os_err(&format!(
            "bind-mounting {} on {}",
            src.display(),
            dst.display()
        )));
    }
    Ok(())
}

/// Sets `lo` up in the current thread's network namespace.
fn loopback_up() -> Result<(), Error> {
    // SAFETY: plain socket/ioctl on a zeroed ifreq naming "lo"; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os_err("socket for loopback setup"));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(Error::Io("bringing lo up".into(), err));
        }
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside the network namespace at `netns` (None: this
/// one). Sockets `f` creates stay in that namespace.
pub fn in_netns<T: Send + 'static>(
    netns: Option<PathBuf>,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    std::thread::spawn(move || -> Result<T, Error> {
        if let Some(ns) = &netns {
            let file = fs::File::open(ns).map_err(io_err(ns))?;
            // SAFETY: setns on this thread only, which exits right after.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) }
                != 0
            {
                return Err(os_err("entering the pod's network namespace"));
            }
        }
        f()
    })
    .join()
    .map_err(|_| Error::Format("network namespace thread panicked".into()))?
}
