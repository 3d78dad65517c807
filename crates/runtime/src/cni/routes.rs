//! Whether the pod subnet is already routed elsewhere. A bridge left by another cluster
//! (or an earlier run) with an address in the same subnet makes the host send pod
//! traffic there: pods start, but the kubelet's probes and the node's connections reach
//! another bridge (connection refused, or no answer). Better to say so and not be Ready.

use std::net::Ipv4Addr;

use super::builtin::Subnet;

/// One IPv4 route of the main table.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub iface: String,
    pub net: Ipv4Addr,
    pub prefix: u8,
}

/// Parses `/proc/net/route` (destination and mask as hex words in memory order).
pub fn parse(table: &str) -> Vec<Route> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let net = Ipv4Addr::from(word(f.get(1)?)?);
            let mask = u32::from(Ipv4Addr::from(word(f.get(7)?)?));
            Some(Route {
                iface: f.first()?.to_string(),
                net,
                prefix: mask.leading_ones() as u8,
            })
        })
        .collect()
}

/// A route that takes traffic for `subnet` away from `bridge`: as specific as the pod
/// subnet or more, overlapping it, through another interface.
pub fn conflict<'a>(routes: &'a [Route], subnet: Subnet, bridge: &str) -> Option<&'a Route> {
    let mask = u32::MAX << (32 - subnet.prefix);
    routes.iter().find(|r| {
        r.iface != bridge
            && r.prefix >= subnet.prefix
            && u32::from(r.net) & mask == u32::from(subnet.net)
    })
}

/// The error for a conflicting route, if `/proc/net/route` has one.
pub fn check(subnet: Subnet, bridge: &str) -> Result<(), crate::Error> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return Ok(());
    };
    let routes = parse(&table);
    match conflict(&routes, subnet, bridge) {
        None => Ok(()),
        Some(r) => Err(crate::Error::Network(format!(
            "the pod subnet {}/{} is already routed through {} ({}/{}), not the pod bridge {bridge}: pods would be unreachable from this node. Delete that interface if another cluster or an earlier run left it (`ip link delete {}`), or give this node another pod CIDR",
            subnet.net, subnet.prefix, r.iface, r.net, r.prefix, r.iface
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
rkk1-1\t0000970A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
flannel\t00002A0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn routes_parse_and_conflicts_are_found() {
        let routes = parse(TABLE);
        assert_eq!(
            routes[2],
            Route {
                iface: "rkk1-1".into(),
                net: Ipv4Addr::new(10, 151, 0, 0),
                prefix: 24
            }
        );
        let ours = Subnet::parse("10.151.0.0/24").unwrap();
        assert_eq!(conflict(&routes, ours, "rkk2-1").unwrap().iface, "rkk1-1");
        // Our own bridge's route is no conflict; a wider route (the cluster CIDR through
        // an overlay) or the default route is shadowed by ours.
        assert!(conflict(&routes, ours, "rkk1-1").is_none());
        let other = Subnet::parse("10.42.0.0/24").unwrap();
        assert!(conflict(&routes, other, "rkube0").is_none());
        // A more specific route inside our subnet takes part of it.
        let wide = Subnet::parse("10.151.0.0/16").unwrap();
        assert_eq!(conflict(&routes, wide, "rkube0").unwrap().iface, "rkk1-1");
    }
}
