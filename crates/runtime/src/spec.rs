//! Turns a CRI container config into an OCI runtime spec (`config.json` for runc), on top
//! of oci-spec's defaults and the image's config.

use std::path::Path;

use k8s_cri::v1 as cri;
use serde_json::{json, Value};

use crate::images::oci::ImageConfig;
use crate::sandbox::Sandbox;
use crate::Error;

/// The capabilities a container gets unless told otherwise (as containerd and CRI-O).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (privileged containers).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What the spec is built from.
pub struct Input<'a> {
    /// The container ID.
    pub id: &'a str,
    /// Its sandbox.
    pub sandbox: &'a Sandbox,
    /// The sandbox's directory (hosts, resolv.conf).
    pub sandbox_dir: &'a Path,
    /// The kubelet's configuration of the container.
    pub config: &'a cri::ContainerConfig,
    /// The image's configuration.
    pub image: &'a ImageConfig,
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    /// The container's cgroup (cgroupfs path).
    pub cgroup: String,
}

/// The process arguments: CRI command/args over the image's Entrypoint/Cmd, as the
/// kubelet and containerd define it.
pub fn process_args(config: &cri::ContainerConfig, image: &ImageConfig) -> Vec<String> {
    let run = image.config.clone().unwrap_or_default();
    let (command, args) = if config.command.is_empty() {
        let args = if config.args.is_empty() {
            run.cmd.unwrap_or_default()
        } else {
            config.args.clone()
        };
        (run.entrypoint.unwrap_or_default(), args)
    } else {
        (config.command.clone(), config.args.clone())
    };
    command.into_iter().chain(args).collect()
}

/// The environment: the image's, then the container's (later keys win).
fn env(config: &cri::ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        out.retain(|(ek, _)| ek != k);
        out.push((k.to_string(), v.to_string()));
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    set("HOSTNAME", hostname);
    for e in image
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
    {
        let (k, v) = e.split_once('=').unwrap_or((&e, ""));
        set(k, v);
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid/gid for a user spec (`name`, `uid`, `uid:gid`, `name:group`) from the rootfs's
/// /etc/passwd and /etc/group.
fn lookup_user(rootfs: &Path, spec: &str) -> Result<(u32, u32), Error> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let entry = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
    };
    let (uid, mut gid) = match user.parse::<u32>() {
        Ok(n) => (
            n,
            passwd
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[2] == user)
                        .then(|| f[3].parse().ok())
                        .flatten()
                })
                .unwrap_or(0),
        ),
        Err(_) => match entry(user) {
            Some((Some(u), Some(g))) => (u, g),
            _ => {
                return Err(Error::Format(format!(
                    "user {user:?} is not in the image's /etc/passwd"
                )))
            }
        },
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => std::fs::read_to_string(rootfs.join("etc/group"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse().ok())
                        .flatten()
                })
                .ok_or_else(|| {
                    Error::Format(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }
    Ok((uid, gid))
}

/// Builds `config.json`.
pub fn build(input: &Input) -> Result<Value, Error> {
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).expect("default spec");
    let config = input.config;
    let linux = config.linux.clone().unwrap_or_default();
    let sec = linux.security_context.clone().unwrap_or_default();
    let args = process_args(config, input.image);
    if args.is_empty() {
        return Err(Error::Format(
            "no command: the container has none and the image has no Entrypoint or Cmd".into(),
        ));
    }
    let hostname = if input.sandbox.host_network {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string()
    } else {
        input.sandbox.config.hostname.clone()
    };
    // User: the security context wins over the image.
    let image_user = input
        .image
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let (mut uid, mut gid) = if let Some(u) = &sec.run_as_user {
        let (_, g) = lookup_user(input.rootfs, &u.value.to_string()).unwrap_or((0, 0));
        (u.value as u32, g)
    } else if !sec.run_as_username.is_empty() {
        lookup_user(input.rootfs, &sec.run_as_username)?
    } else if !image_user.is_empty() {
        lookup_user(input.rootfs, &image_user)?
    } else {
        (0, 0)
    };
    if let Some(g) = &sec.run_as_group {
        gid = g.value as u32;
    }
    if uid == u32::MAX {
        uid = 0;
    }
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        input
            .image
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or("/".into())
    };
    let caps: Vec<String> = if sec.privileged {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        let c = sec.capabilities.clone().unwrap_or_default();
        let norm = |s: &String| {
            let u = s.to_ascii_uppercase();
            if u.starts_with("CAP_") {
                u
            } else {
                format!("CAP_{u}")
            }
        };
        let drop: Vec<String> = c.drop_capabilities.iter().map(norm).collect();
        let mut caps: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") {
            Vec::new()
        } else {
            DEFAULT_CAPS
                .iter()
                .map(|s| s.to_string())
                .filter(|s| !drop.contains(s))
                .collect()
        };
        for a in c.add_capabilities.iter().map(norm) {
            if a == "CAP_ALL" {
                caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
            } else if !caps.contains(&a) {
                caps.push(a);
            }
        }
        caps
    };
    let capset = json!({"bounding": caps, "effective": caps, "permitted": caps});
    spec["process"] = json!({
        "terminal": config.tty,
        "user": {
            "uid": uid,
            "gid": gid,
            "additionalGids": sec.supplemental_groups,
        },
        "args": args,
        "env": env(config, input.image, &hostname),
        "cwd": cwd,
        "capabilities": capset,
        "noNewPrivileges": sec.no_new_privs,
        "oomScoreAdj": crate::host::allowed_oom_score_adj(
            linux.resources.as_ref().map(|r| r.oom_score_adj).unwrap_or(0)
        ),
    });
    spec["root"] = json!({"path": input.rootfs, "readonly": sec.readonly_rootfs});
    // A host-network pod shares the host's UTS namespace: its hostname is the host's, and
    // runc refuses to set one without a private namespace (the default spec names one).
    match input.sandbox.host_network {
        false => spec["hostname"] = json!(hostname),
        true => {
            if let Some(o) = spec.as_object_mut() {
                o.remove("hostname");
            }
        }
    }
    // Mounts: the defaults, the sandbox's files, then the kubelet's (which win on the same
    // destination).
    let mut mounts: Vec<Value> = spec["mounts"].as_array().cloned().unwrap_or_default();
    if sec.privileged {
        for m in mounts.iter_mut() {
            if m["destination"] == "/sys" {
                m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
            }
        }
    }
    let bind = |dst: &str, src: &Path, ro: bool| {
        json!({"destination": dst, "type": "bind", "source": src,
               "options": ["rbind", "rprivate", if ro { "ro" } else { "rw" }]})
    };
    let mut extra = vec![
        bind(
            "/etc/resolv.conf",
            &input.sandbox_dir.join("resolv.conf"),
            false,
        ),
        bind("/etc/hostname", &input.sandbox_dir.join("hostname"), false),
    ];
    for m in &config.mounts {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(Error::Format(format!(
                "mount path {:?} must be absolute",
                m.container_path
            )));
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
            Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
            _ => "rprivate",
        };
        extra.push(
            json!({"destination": m.container_path, "type": "bind", "source": m.host_path,
            "options": ["rbind", propagation, if m.readonly { "ro" } else { "rw" }]}),
        );
    }
    for e in extra {
        mounts.retain(|m| m["destination"] != e["destination"]);
        mounts.push(e);
    }
    // The kubelet mounts /etc/hosts etc.; a cgroup mount is kept read-only as runc's.
    spec["mounts"] = json!(mounts);
    // Namespaces: the sandbox's network, UTS and IPC; PID and mount of the container's own.
    let mut ns = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    for (kind, path) in [
        ("network", &input.sandbox.netns),
        ("uts", &input.sandbox.utsns),
        ("ipc", &input.sandbox.ipcns),
    ] {
        if let Some(p) = path {
            ns.push(json!({"type": kind, "path": p}));
        }
    }
    spec["linux"]["namespaces"] = json!(ns);
    spec["linux"]["cgroupsPath"] = json!(input.cgroup);
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(r) = &linux.resources {
        limits(r, &mut resources);
    }
    if sec.privileged {
        resources["devices"] = json!([{"allow": true, "access": "rwm"}]);
        spec["linux"]["maskedPaths"] = json!([]);
        spec["linux"]["readonlyPaths"] = json!([]);
    } else {
        if !sec.masked_paths.is_empty() {
            spec["linux"]["maskedPaths"] = json!(sec.masked_paths);
        }
        if !sec.readonly_paths.is_empty() {
            spec["linux"]["readonlyPaths"] = json!(sec.readonly_paths);
        }
    }
    spec["linux"]["resources"] = resources;
    let devices: Vec<Value> = config
        .devices
        .iter()
        .filter_map(|d| device(&d.host_path, &d.container_path, &d.permissions))
        .collect();
    if !devices.is_empty() {
        let allow: Vec<Value> = devices
            .iter()
            .map(|d| json!({"allow": true, "type": d["type"], "major": d["major"], "minor": d["minor"], "access": "rwm"}))
            .collect();
        spec["linux"]["devices"] = json!(devices);
        if let Some(a) = spec["linux"]["resources"]["devices"].as_array_mut() {
            a.extend(allow);
        }
    }
    // Check the result has the spec's shape before runc sees it.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| Error::Format(format!("building the OCI spec: {e}")))?;
    Ok(spec)
}

/// A host device node as an OCI device entry.
fn device(host: &str, container: &str, _perms: &str) -> Option<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(host).ok()?;
    let kind = if m.file_type().is_char_device() {
        "c"
    } else if m.file_type().is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = m.rdev();
    Some(json!({
        "path": if container.is_empty() { host } else { container },
        "type": kind,
        "major": libc::major(rdev),
        "minor": libc::minor(rdev),
        "fileMode": m.mode() & 0o777,
        "uid": 0, "gid": 0,
    }))
}

/// The OCI `linux.resources` CPU and memory limits (and unified cgroup v2 settings) for
/// CRI resources, written into `out`; used for new containers and by
/// `UpdateContainerResources` (`runc update`).
pub fn limits(r: &cri::LinuxContainerResources, out: &mut Value) {
    let mut cpu = json!({});
    if r.cpu_shares > 0 {
        cpu["shares"] = json!(r.cpu_shares);
    }
    if r.cpu_quota > 0 {
        cpu["quota"] = json!(r.cpu_quota);
        cpu["period"] = json!(if r.cpu_period > 0 {
            r.cpu_period
        } else {
            100_000
        });
    }
    if !r.cpuset_cpus.is_empty() {
        cpu["cpus"] = json!(r.cpuset_cpus);
    }
    if !r.cpuset_mems.is_empty() {
        cpu["mems"] = json!(r.cpuset_mems);
    }
    out["cpu"] = cpu;
    if r.memory_limit_in_bytes > 0 {
        let mut mem = json!({"limit": r.memory_limit_in_bytes});
        if r.memory_swap_limit_in_bytes > 0 {
            mem["swap"] = json!(r.memory_swap_limit_in_bytes);
        }
        out["memory"] = mem;
    }
    if !r.unified.is_empty() {
        out["unified"] = json!(r.unified);
    }
}
