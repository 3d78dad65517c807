//! A minimal rtnetlink client: just what the built-in bridge network needs (create a
//! bridge or a veth pair, addresses, link state and master, a default route, delete a
//! link). Requests run in the network namespace of the calling thread.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

/// An rtnetlink socket in the current thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// Appends an attribute (padded to 4 bytes).
fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute whose body `f` writes.
fn nested(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&ty.to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn name(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.push(0);
    v
}

/// An `ifinfomsg` for interface `index` with `flags` under `change`.
fn ifinfo(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut v = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    v.extend_from_slice(&index.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&change.to_ne_bytes());
    v
}

/// The index of interface `n` in this thread's namespace.
pub fn index(n: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(n).map_err(|_| io::Error::other("bad interface name"))?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i as i32)
}

impl Netlink {
    /// A route netlink socket.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: socket returns a new fd or -1; bind gets a zeroed sockaddr_nl.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            if libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(Netlink { fd, seq: 0 })
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(NLMSG_HDR + body.len());
        msg.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: send/recv with our buffers and their lengths.
        unsafe {
            if libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 8192];
            loop {
                let n = libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut off = 0usize;
                while off + NLMSG_HDR <= n as usize {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                    let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                    let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4"));
                    if mty == NLMSG_ERROR && seq == self.seq && off + 20 <= n as usize {
                        let err =
                            i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                        return if err == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-err))
                        };
                    }
                    if len < NLMSG_HDR {
                        break;
                    }
                    off += len.next_multiple_of(4);
                }
            }
        }
    }

    /// Creates a bridge (EEXIST if it is there).
    pub fn add_bridge(&mut self, bridge: &str) -> io::Result<()> {
        let mut b = ifinfo(0, 0, 0);
        attr(&mut b, IFLA_IFNAME, &name(bridge));
        nested(&mut b, IFLA_LINKINFO, |b| {
            attr(b, IFLA_INFO_KIND, &name("bridge"))
        });
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &b)
    }

    /// Creates a veth pair: `host` here, `peer` in the namespace open as `netns`.
    pub fn add_veth(&mut self, host: &str, peer: &str, netns: &impl AsRawFd) -> io::Result<()> {
        let mut b = ifinfo(0, 0, 0);
        attr(&mut b, IFLA_IFNAME, &name(host));
        nested(&mut b, IFLA_LINKINFO, |b| {
            attr(b, IFLA_INFO_KIND, &name("veth"));
            nested(b, IFLA_INFO_DATA, |b| {
                nested(b, VETH_INFO_PEER, |b| {
                    b.extend_from_slice(&ifinfo(0, 0, 0));
                    attr(b, IFLA_IFNAME, &name(peer));
                    attr(b, IFLA_NET_NS_FD, &(netns.as_raw_fd() as u32).to_ne_bytes());
                });
            });
        });
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &b)
    }

    /// Sets a link up.
    pub fn up(&mut self, link: &str) -> io::Result<()> {
        let up = libc::IFF_UP as u32;
        self.request(RTM_NEWLINK, 0, &ifinfo(index(link)?, up, up))
    }

    /// Enslaves `link` to `master` (a bridge port).
    pub fn set_master(&mut self, link: &str, master: &str) -> io::Result<()> {
        let mut b = ifinfo(index(link)?, 0, 0);
        attr(&mut b, IFLA_MASTER, &(index(master)? as u32).to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &b)
    }

    /// Deletes a link (a veth takes its peer with it).
    pub fn delete(&mut self, link: &str) -> io::Result<()> {
        self.request(RTM_DELLINK, 0, &ifinfo(index(link)?, 0, 0))
    }

    /// Adds `ip/prefix` to a link (EEXIST if it has it).
    pub fn add_address(&mut self, link: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut b = vec![libc::AF_INET as u8, prefix, 0, 0];
        b.extend_from_slice(&(index(link)? as u32).to_ne_bytes());
        attr(&mut b, IFA_LOCAL, &ip.octets());
        attr(&mut b, IFA_ADDRESS, &ip.octets());
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &b)
    }

    /// Adds the default route through `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut b = vec![
            libc::AF_INET as u8,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            0,
            RTN_UNICAST,
        ];
        b.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut b, RTA_GATEWAY, &gateway.octets());
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &b)
    }
}

/// Treats "already exists" as success (idempotent setup).
pub fn exists_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn attributes_are_padded_and_nested() {
        let mut b = Vec::new();
        super::nested(&mut b, 18, |b| super::attr(b, 1, b"veth\0"));
        // 4 (outer header) + 4 (inner header) + 5 bytes, padded to 16.
        assert_eq!(b.len(), 16);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 16);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 9);
    }
}
