//! `hostPort`: a pod's port mappings as DNAT rules in one nftables table, rewritten whole
//! in one atomic `nft -f` transaction from every ready sandbox's mappings (the way
//! kube-proxy's nftables mode syncs), so rules never go stale.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use k8s_cri::v1 as cri;

use crate::sandbox::Sandbox;
use crate::Error;

/// The nftables table of the pod network on `bridge` (one per bridge, so runtimes on
/// different bridges keep their own rules).
pub fn table(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("rkube_hostports_{safe}")
}

/// One mapping from a host port to a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    /// Only traffic to this host address (None: any local address).
    pub host_ip: Option<Ipv4Addr>,
    /// The port on the node.
    pub host_port: u16,
    /// The pod's address.
    pub pod_ip: Ipv4Addr,
    /// The port in the pod.
    pub container_port: u16,
    /// The sandbox the mapping belongs to.
    pub sandbox: String,
}

impl Mapping {
    /// What two mappings must not share.
    fn key(&self) -> (&'static str, u16) {
        (self.protocol, self.host_port)
    }
}

fn protocol(p: i32) -> &'static str {
    match cri::Protocol::try_from(p) {
        Ok(cri::Protocol::Udp) => "udp",
        Ok(cri::Protocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

/// The host-port mappings a sandbox asks for (IPv4 pods; host ports 1-65535).
pub fn mappings(sb: &Sandbox) -> Vec<Mapping> {
    let Some(IpAddr::V4(pod_ip)) = sb.ip() else {
        return Vec::new();
    };
    if sb.host_network || !sb.ready {
        return Vec::new();
    }
    sb.config
        .port_mappings
        .iter()
        .filter(|m| (1..=65535).contains(&m.host_port) && (1..=65535).contains(&m.container_port))
        .map(|m| Mapping {
            protocol: protocol(m.protocol),
            host_ip: m
                .host_ip
                .parse()
                .ok()
                .filter(|ip: &Ipv4Addr| !ip.is_unspecified()),
            host_port: m.host_port as u16,
            pod_ip,
            container_port: m.container_port as u16,
            sandbox: sb.id.clone(),
        })
        .collect()
}

/// Refuses a new sandbox whose host ports others already hold.
pub fn check_free(config: &cri::PodSandboxConfig, others: &[Sandbox]) -> Result<(), Error> {
    let held: BTreeMap<(&'static str, u16), String> = others
        .iter()
        .flat_map(mappings)
        .map(|m| (m.key(), m.sandbox))
        .collect();
    for m in &config.port_mappings {
        if let Some(owner) = held.get(&(protocol(m.protocol), m.host_port as u16)) {
            return Err(Error::AlreadyExists(format!(
                "host port {}/{} is already mapped to pod sandbox {owner}",
                m.host_port,
                protocol(m.protocol)
            )));
        }
    }
    Ok(())
}

/// The whole table for these mappings. Locally generated traffic (to 127.0.0.1 too) is
/// DNAT'ed on output and masqueraded on its way to the pod bridge.
pub fn ruleset(all: &[Mapping], bridge: &str) -> String {
    let t = table(bridge);
    let mut s = format!("table ip {t}\ndelete table ip {t}\n");
    if all.is_empty() {
        return s;
    }
    s.push_str(&format!("table ip {t} {{\n"));
    s.push_str("  chain hostports {\n");
    for m in all {
        let dst = m
            .host_ip
            .map(|ip| format!("ip daddr {ip} "))
            .unwrap_or_default();
        s.push_str(&format!(
            "    {dst}{p} dport {hp} dnat to {ip}:{cp} comment \"{sb}\"\n",
            p = m.protocol,
            hp = m.host_port,
            ip = m.pod_ip,
            cp = m.container_port,
            sb = &m.sandbox[..12.min(m.sandbox.len())],
        ));
    }
    s.push_str("  }\n");
    s.push_str("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump hostports\n  }\n");
    s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump hostports\n  }\n");
    s.push_str(&format!(
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr 127.0.0.0/8 oifname \"{bridge}\" masquerade\n  }}\n"
    ));
    s.push_str("}\n");
    s
}

/// Applies the table for every ready sandbox's mappings. `present` says whether the
/// table may exist (this process has not yet removed it); with no mappings and no table
/// there is nothing to run, so pods without host ports cost no `nft` call.
pub fn sync(sandboxes: &[Sandbox], bridge: &str, present: &mut bool) -> Result<(), Error> {
    let all: Vec<Mapping> = sandboxes.iter().flat_map(mappings).collect();
    if all.is_empty() && !*present {
        return Ok(());
    }
    let nft = crate::cri::which("nft");
    let Some(nft) = nft else {
        if all.is_empty() {
            return Ok(());
        }
        return Err(Error::HostMissing(
            "hostPort needs nftables: install Debian's nftables package (apt-get install nftables)"
                .into(),
        ));
    };
    if !all.is_empty() {
        // Traffic from 127.0.0.1 may only be routed to the bridge with route_localnet.
        let p = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
        let _ = std::fs::write(p, "1");
    }
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Io("running nft".into(), e))?;
    if let Some(mut w) = child.stdin.take() {
        let _ = w.write_all(ruleset(&all, bridge).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Io("running nft".into(), e))?;
    if out.status.success() {
        *present = !all.is_empty();
    } else {
        return Err(Error::Format(format!(
            "nft rejected the host port rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, ip: &str, ports: &[(i32, i32, &str)]) -> Sandbox {
        Sandbox {
            id: id.into(),
            config: cri::PodSandboxConfig {
                port_mappings: ports
                    .iter()
                    .map(|(h, c, host_ip)| cri::PortMapping {
                        protocol: cri::Protocol::Tcp as i32,
                        container_port: *c,
                        host_port: *h,
                        host_ip: host_ip.to_string(),
                    })
                    .collect(),
                ..Default::default()
            },
            created_at: 0,
            ready: true,
            host_network: false,
            attachment: Some(crate::cni::Attachment {
                ips: vec![ip.parse().unwrap()],
                result: serde_json::Value::Null,
            }),
            netns: None,
            utsns: None,
            ipcns: None,
        }
    }

    #[test]
    fn rules_and_conflicts() {
        let a = sandbox(
            "aaaaaaaaaaaaaaaa",
            "10.1.0.2",
            &[(8080, 80, ""), (0, 81, ""), (9090, 90, "127.0.0.1")],
        );
        let m = mappings(&a);
        assert_eq!(m.len(), 2, "port 0 is not a host port: {m:?}");
        let rules = ruleset(&m, "br0");
        assert!(
            rules.contains("tcp dport 8080 dnat to 10.1.0.2:80"),
            "{rules}"
        );
        assert!(
            rules.contains("ip daddr 127.0.0.1 tcp dport 9090 dnat to 10.1.0.2:90"),
            "{rules}"
        );
        assert!(rules.contains("oifname \"br0\" masquerade"), "{rules}");
        // No mappings: the table goes.
        assert_eq!(
            ruleset(&[], "br-0"),
            "table ip rkube_hostports_br_0\ndelete table ip rkube_hostports_br_0\n"
        );
        let b = sandbox("b", "10.1.0.3", &[(8080, 80, "")]);
        let err = check_free(&b.config, std::slice::from_ref(&a)).unwrap_err();
        assert!(err.to_string().contains("8080/tcp"), "{err}");
        let c = sandbox("c", "10.1.0.4", &[(8081, 80, "")]);
        check_free(&c.config, &[a]).unwrap();
    }
}
