//! What the runtime needs from the host, checked up front so a missing piece is one clear
//! message naming what to install, not a cryptic failure deep in a mount or an exec.

use std::path::Path;

/// Why containers cannot run here, if they cannot: the OCI runtime binary and overlayfs.
pub fn runtime_problem(runc: &Path) -> Option<String> {
    runc_problem(runc).or_else(overlay_problem)
}

/// Whether the OCI runtime binary is there and executable.
pub fn runc_problem(runc: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(runc) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => None,
        _ => Some(format!(
            "the OCI runtime {} is not installed: install Debian's runc package (apt-get install runc) or point --runc at crun",
            runc.display()
        )),
    }
}

/// Whether the kernel offers overlayfs (container root filesystems).
pub fn overlay_problem() -> Option<String> {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return None;
    }
    // Not loaded yet: the module may still be there.
    let loaded = std::process::Command::new("modprobe")
        .arg("overlay")
        .status()
        .is_ok_and(|s| s.success());
    (!loaded).then(|| {
        "the kernel has no overlayfs (container root filesystems need it): load it with `modprobe overlay`, or use a kernel built with CONFIG_OVERLAY_FS".to_string()
    })
}

/// The OOM score adjustment a container may be given. Lowering it below this process's
/// own needs CAP_SYS_RESOURCE, which some hosts (containers, restricted VMs) withhold; there
/// our own score is the floor (containerd's `restrict_oom_score_adj` does the same), so a
/// Guaranteed pod still starts instead of failing in runc.
pub fn allowed_oom_score_adj(requested: i64) -> i64 {
    static OWN: std::sync::OnceLock<(i64, bool)> = std::sync::OnceLock::new();
    let (own, may_lower) = *OWN.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let caps = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = caps
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        const CAP_SYS_RESOURCE: u64 = 24;
        (own, eff & (1 << CAP_SYS_RESOURCE) != 0)
    });
    if may_lower {
        requested
    } else {
        requested.max(own)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_runc_names_the_package() {
        let msg = super::runc_problem(std::path::Path::new("/nonexistent/runc")).unwrap();
        assert!(msg.contains("apt-get install runc"), "{msg}");
        assert!(super::runc_problem(std::path::Path::new("/bin/sh")).is_none());
    }
}
