//! Container and pod statistics for the kubelet (`ContainerStats`, `PodSandboxStats`), read
//! from cgroups (v1 as on this machine, or a v2 unified hierarchy), the writable layer and
//! the pod's network namespace.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_cri::v1 as cri;

use crate::container::Container;

/// CPU, memory and process figures of one cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, page cache included, in bytes.
    pub memory_usage: u64,
    /// Usage minus inactive file cache (what the kubelet evicts by).
    pub working_set: u64,
    /// Anonymous memory in bytes.
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// The memory limit, if any.
    pub limit: Option<u64>,
    /// Processes in the cgroup.
    pub processes: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.cpu_ns += o.cpu_ns;
        self.memory_usage += o.memory_usage;
        self.working_set += o.working_set;
        self.rss += o.rss;
        self.page_faults += o.page_faults;
        self.major_page_faults += o.major_page_faults;
        self.processes += o.processes;
        self.limit = match (self.limit, o.limit) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
}

const V1: &str = "/sys/fs/cgroup";

fn read_u64(p: PathBuf) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn stat_file(p: PathBuf) -> HashMap<String, u64> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads a cgroup's usage; None when the cgroup does not exist.
pub fn cgroup_usage(cgroup: &str) -> Option<Usage> {
    let rel = cgroup.trim_start_matches('/');
    let v1 = Path::new(V1);
    if v1.join("memory").is_dir() {
        let mem = v1.join("memory").join(rel);
        if !mem.is_dir() {
            return None;
        }
        let usage = read_u64(mem.join("memory.usage_in_bytes")).unwrap_or(0);
        let st = stat_file(mem.join("memory.stat"));
        let inactive = st.get("total_inactive_file").copied().unwrap_or(0);
        // v1 reports "no limit" as a huge page-aligned number.
        let limit = read_u64(mem.join("memory.limit_in_bytes")).filter(|l| *l < (1 << 62));
        Some(Usage {
            cpu_ns: read_u64(v1.join("cpuacct").join(rel).join("cpuacct.usage")).unwrap_or(0),
            memory_usage: usage,
            working_set: usage.saturating_sub(inactive),
            rss: st.get("total_rss").copied().unwrap_or(0),
            page_faults: st.get("total_pgfault").copied().unwrap_or(0),
            major_page_faults: st.get("total_pgmajfault").copied().unwrap_or(0),
            limit,
            processes: read_u64(v1.join("pids").join(rel).join("pids.current")).unwrap_or(0),
        })
    } else {
        let dir = v1.join(rel);
        if !dir.is_dir() {
            return None;
        }
        let usage = read_u64(dir.join("memory.current")).unwrap_or(0);
        let st = stat_file(dir.join("memory.stat"));
        let cpu = stat_file(dir.join("cpu.stat"));
        Some(Usage {
            cpu_ns: cpu.get("usage_usec").copied().unwrap_or(0) * 1000,
            memory_usage: usage,
            working_set: usage.saturating_sub(st.get("inactive_file").copied().unwrap_or(0)),
            rss: st.get("anon").copied().unwrap_or(0),
            page_faults: st.get("pgfault").copied().unwrap_or(0),
            major_page_faults: st.get("pgmajfault").copied().unwrap_or(0),
            limit: read_u64(dir.join("memory.max")),
            processes: read_u64(dir.join("pids.current")).unwrap_or(0),
        })
    }
}

/// Bytes and inodes used under a directory (a container's writable layer).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// Per-interface counters from `/proc/net/dev` as seen in the network namespace at
/// `netns` (loopback left out).
pub fn interfaces(netns: Option<PathBuf>) -> Vec<cri::NetworkInterfaceUsage> {
    let text = crate::namespaces::in_netns(netns, || {
        fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(|e| crate::Error::Io("/proc/thread-self/net/dev".into(), e))
    })
    .unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let name = name.trim();
            (name != "lo" && f.len() >= 11).then(|| cri::NetworkInterfaceUsage {
                name: name.to_string(),
                rx_bytes: val(f[0]),
                rx_errors: val(f[2]),
                tx_bytes: val(f[8]),
                tx_errors: val(f[10]),
            })
        })
        .collect()
}

fn val(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// Turns cumulative CPU time into a rate (nanocores) between calls, per key.
#[derive(Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuRates {
    /// The rate since the previous sample of `key`, if there was one.
    pub fn rate(&self, key: &str, now: i64, cpu_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().expect("cpu rates lock");
        let prev = last.insert(key.to_string(), (now, cpu_ns));
        let (t0, c0) = prev?;
        let dt = now.checked_sub(t0).filter(|d| *d > 0)? as u128;
        Some(((cpu_ns.saturating_sub(c0) as u128) * 1_000_000_000 / dt) as u64)
    }

    /// Forgets keys not in `keep` (removed containers and pods).
    pub fn retain(&self, keep: &[String]) {
        self.last
            .lock()
            .expect("cpu rates lock")
            .retain(|k, _| keep.contains(k));
    }
}

/// The CRI CPU and memory messages for a usage sample.
pub fn cri_usage(
    u: &Usage,
    now: i64,
    nano_cores: Option<u64>,
) -> (cri::CpuUsage, cri::MemoryUsage) {
    (
        cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: val(u.cpu_ns),
            usage_nano_cores: nano_cores.and_then(val),
        },
        cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: val(u.working_set),
            available_bytes: u.limit.and_then(|l| val(l.saturating_sub(u.working_set))),
            usage_bytes: val(u.memory_usage),
            rss_bytes: val(u.rss),
            page_faults: val(u.page_faults),
            major_page_faults: val(u.major_page_faults),
        },
    )
}

/// The attributes block of a container's stats.
pub fn attributes(c: &Container) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_needs_two_samples() {
        let r = CpuRates::default();
        assert_eq!(r.rate("a", 1_000_000_000, 0), None);
        // Half a core over one second.
        assert_eq!(r.rate("a", 2_000_000_000, 500_000_000), Some(500_000_000));
        r.retain(&[]);
        assert_eq!(r.rate("a", 3_000_000_000, 600_000_000), None);
    }

    #[test]
    fn usage_adds_up() {
        let mut a = Usage {
            cpu_ns: 1,
            memory_usage: 10,
            limit: Some(100),
            ..Default::default()
        };
        a += Usage {
            cpu_ns: 2,
            memory_usage: 5,
            limit: None,
            ..Default::default()
        };
        assert_eq!((a.cpu_ns, a.memory_usage, a.limit), (3, 15, None));
    }

    #[test]
    fn a_missing_cgroup_has_no_usage() {
        assert_eq!(cgroup_usage("/rkube-no-such-cgroup-xyz"), None);
    }
}
