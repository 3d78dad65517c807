//! Pseudo-terminals: opening a pair, resizing, and receiving a container's terminal master
//! from runc over its console socket (SCM_RIGHTS).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// A new terminal: (master, slave).
pub fn open() -> io::Result<(File, File)> {
    // SAFETY: posix_openpt returns a new fd or -1; grantpt/unlockpt/ptsname_r act on it
    // and write only into the buffer we pass with its length.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = File::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((master, File::from_raw_fd(s)))
    }
}

/// Sets a terminal's size (the kernel signals SIGWINCH to its foreground process group).
pub fn resize(t: &impl AsRawFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass.
    unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Receives one file descriptor sent with SCM_RIGHTS (runc's `--console-socket`).
pub fn recv_fd(conn: &UnixStream) -> io::Result<OwnedFd> {
    let mut data = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for one control message holding one fd, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr points at our live buffers with their lengths; CMSG_* walk only the
    // control buffer the kernel filled.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        if libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return Ok(OwnedFd::from_raw_fd(fd));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Err(io::Error::other(
        "no file descriptor in the console socket message",
    ))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    #[test]
    fn pair_carries_bytes_and_size() {
        let (mut m, s) = super::open().unwrap();
        super::resize(&m, 100, 30);
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::TIOCGWINSZ,
                &mut ws,
            )
        };
        assert_eq!((ws.ws_col, ws.ws_row), (100, 30));
        let mut s2 = s.try_clone().unwrap();
        s2.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = m.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"hi"), "{:?}", &buf[..n]);
    }
}
