//! The built-in `bridge` plugin with `host-local` IPAM, for machines without the CNI plugin
//! binaries: the same behaviour (a bridge as the pods' gateway, a veth per pod, addresses
//! from the pod CIDR, a default route) and the same on-disk allocation format as
//! host-local (one file per IP holding `ID\r\nIFNAME`, `last_reserved_ip.0`, a `lock`
//! file), so either implementation can take over from the other.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::netlink::{exists_ok, Netlink};
use crate::Error;

/// The plugin types built in.
pub fn supports(kind: &str) -> bool {
    matches!(kind, "bridge" | "host-local")
}

/// A subnet: its network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Subnet {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Option<Subnet> {
        let (ip, p) = s.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = p.parse().ok().filter(|p| (8..=30).contains(p))?;
        let mask = u32::MAX << (32 - prefix);
        Some(Subnet {
            net: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }

    /// The gateway: the first address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    /// The addresses pods get: after the gateway, before the broadcast address.
    fn hosts(&self) -> (u32, u32) {
        let first = u32::from(self.net) + 2;
        let last = u32::from(self.net) + (1u32 << (32 - self.prefix)) - 2;
        (first, last)
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Network(format!("{what}: {e}"))
}

/// host-local's allocation directory for a network.
struct Allocations {
    dir: PathBuf,
    _lock: fs::File,
}

impl Allocations {
    fn open(data_dir: &Path, network: &str) -> Result<Allocations, Error> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(crate::io_err(&dir))?;
        let lock = fs::File::create(dir.join("lock")).map_err(crate::io_err(&dir))?;
        // SAFETY: flock on an fd we own; released when the file closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Io(
                "locking IP allocations".into(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Allocations { dir, _lock: lock })
    }

    /// Reserves the next free address after the last one handed out.
    fn reserve(&self, subnet: Subnet, id: &str, ifname: &str) -> Result<Ipv4Addr, Error> {
        let (first, last) = subnet.hosts();
        let last_file = self.dir.join("last_reserved_ip.0");
        let start = fs::read_to_string(&last_file)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .map(|ip| if ip == last { first } else { ip + 1 })
            .unwrap_or(first);
        let count = last - first + 1;
        for i in 0..count {
            let ip = Ipv4Addr::from(first + (start - first + i) % count);
            let p = self.dir.join(ip.to_string());
            match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(mut f) => {
                    f.write_all(format!("{}\r\n{ifname}", id.trim()).as_bytes())
                        .map_err(crate::io_err(&p))?;
                    fs::write(&last_file, ip.to_string()).map_err(crate::io_err(&last_file))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::Io(p.display().to_string(), e)),
            }
        }
        Err(Error::Network(format!(
            "no free address left in {}/{}",
            subnet.net, subnet.prefix
        )))
    }

    /// Releases what `id` holds on `ifname`.
    fn release(&self, id: &str, ifname: &str) {
        let want = format!("{}\r\n{ifname}", id.trim());
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_err() {
                continue;
            }
            if fs::read_to_string(e.path()).is_ok_and(|s| s.trim() == want || s.trim() == id.trim())
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// What the built-in bridge reads of its config.
struct BridgeConf {
    network: String,
    bridge: String,
    subnet: Subnet,
    data_dir: PathBuf,
}

fn bridge_conf(conf: &Value) -> Result<BridgeConf, Error> {
    let subnet = conf["ipam"]["ranges"][0][0]["subnet"]
        .as_str()
        .or(conf["ipam"]["subnet"].as_str())
        .and_then(Subnet::parse)
        .ok_or_else(|| {
            Error::Network("built-in bridge: ipam needs an IPv4 subnet (/8 to /30)".into())
        })?;
    Ok(BridgeConf {
        network: conf["name"].as_str().unwrap_or("rkube").to_string(),
        bridge: conf["bridge"].as_str().unwrap_or("cni0").to_string(),
        subnet,
        data_dir: conf["ipam"]["dataDir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/lib/cni/networks".into()),
    })
}

/// Fails when the bridge's subnet is routed through another interface.
pub fn check_routes(conf: &Value) -> Result<(), Error> {
    let c = bridge_conf(conf)?;
    super::routes::check(c.subnet, &c.bridge)
}

/// The host side's name for a pod's veth (stable per sandbox, within 15 bytes).
fn host_veth(id: &str) -> String {
    format!("veth{}", &id[..id.len().min(8)])
}

/// ADD: address, bridge, veth, routes; the CNI 1.0 result.
pub fn add(conf: &Value, id: &str, netns: &Path, ifname: &str) -> Result<Value, Error> {
    let c = bridge_conf(conf)?;
    let ip = Allocations::open(&c.data_dir, &c.network)?.reserve(c.subnet, id, ifname)?;
    let res = attach(&c, ip, id, netns, ifname);
    if res.is_err() {
        if let Ok(a) = Allocations::open(&c.data_dir, &c.network) {
            a.release(id, ifname);
        }
    }
    res
}

fn attach(
    c: &BridgeConf,
    ip: Ipv4Addr,
    id: &str,
    netns: &Path,
    ifname: &str,
) -> Result<Value, Error> {
    let gw = c.subnet.gateway();
    let mut nl = Netlink::open().map_err(io("netlink"))?;
    exists_ok(nl.add_bridge(&c.bridge)).map_err(io("creating the bridge"))?;
    exists_ok(nl.add_address(&c.bridge, gw, c.subnet.prefix))
        .map_err(io("the bridge's address"))?;
    nl.up(&c.bridge).map_err(io("bridge up"))?;
    let host = host_veth(id);
    let ns = fs::File::open(netns).map_err(crate::io_err(netns))?;
    nl.add_veth(&host, ifname, &ns)
        .map_err(io("creating the veth pair"))?;
    nl.set_master(&host, &c.bridge)
        .map_err(io("attaching the veth to the bridge"))?;
    nl.up(&host).map_err(io("veth up"))?;
    let (ifn, prefix) = (ifname.to_string(), c.subnet.prefix);
    crate::namespaces::in_netns(Some(netns.to_path_buf()), move || {
        let mut nl = Netlink::open().map_err(io("netlink in the pod"))?;
        nl.add_address(&ifn, ip, prefix)
            .map_err(io("the pod's address"))?;
        nl.up(&ifn).map_err(io("pod interface up"))?;
        nl.add_default_route(gw)
            .map_err(io("the pod's default route"))
    })?;
    // Forwarding between pods and out of the node, as the bridge plugin's isGateway does.
    let _ = fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    Ok(json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": c.bridge},
            {"name": host},
            {"name": ifname, "sandbox": netns},
        ],
        "ips": [{"address": format!("{ip}/{}", c.subnet.prefix), "gateway": gw.to_string(), "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }))
}

/// DEL: the pod's veth and address go (idempotent).
pub fn del(conf: &Value, id: &str, netns: &Path, ifname: &str) -> Result<(), Error> {
    let c = bridge_conf(conf)?;
    if netns.exists() {
        let ifn = ifname.to_string();
        let _ = crate::namespaces::in_netns(Some(netns.to_path_buf()), move || {
            if let Ok(mut nl) = Netlink::open() {
                let _ = nl.delete(&ifn);
            }
            Ok(())
        });
    }
    Allocations::open(&c.data_dir, &c.network)?.release(id, ifname);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.9.3.77/24").unwrap();
        assert_eq!((s.net, s.prefix), (Ipv4Addr::new(10, 9, 3, 0), 24));
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 9, 3, 1));
        assert_eq!(
            s.hosts(),
            (
                u32::from(Ipv4Addr::new(10, 9, 3, 2)),
                u32::from(Ipv4Addr::new(10, 9, 3, 254))
            )
        );
        assert!(Subnet::parse("fd00::/64").is_none());
        assert!(Subnet::parse("10.0.0.0/31").is_none());
    }

    #[test]
    fn allocations_as_host_local_keeps_them() {
        let d = tempfile::tempdir().unwrap();
        let s = Subnet::parse("10.9.3.0/29").unwrap(); // .2 to .6
        let a = Allocations::open(d.path(), "net").unwrap();
        let ips: Vec<Ipv4Addr> = (0..5)
            .map(|i| a.reserve(s, &format!("c{i}"), "eth0").unwrap())
            .collect();
        assert_eq!(ips.first(), Some(&Ipv4Addr::new(10, 9, 3, 2)));
        assert_eq!(ips.last(), Some(&Ipv4Addr::new(10, 9, 3, 6)));
        assert_eq!(
            fs::read_to_string(d.path().join("net/10.9.3.4")).unwrap(),
            "c2\r\neth0"
        );
        assert!(a
            .reserve(s, "c5", "eth0")
            .unwrap_err()
            .to_string()
            .contains("no free address"));
        a.release("c1", "eth0");
        // The freed address is found again, after the last one handed out.
        assert_eq!(
            a.reserve(s, "c6", "eth0").unwrap(),
            Ipv4Addr::new(10, 9, 3, 3)
        );
    }
}
