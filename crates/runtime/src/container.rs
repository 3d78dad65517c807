//! Containers: an overlay root over the image's snapshots, an OCI bundle, and, once
//! started, a shim (`rkube shim`) that runs it under runc. What must outlive a reboot lives
//! in `ROOT/containers/<id>/`: `container.json` and `started` from the runtime, `exit.json`
//! from the shim, and the writable layer (`upper/`, `work/`), so a restarted runtime
//! reports exactly what it did before. The rest lives in `STATE/containers/<id>/`: the
//! bundle and its root mount, the shim's pid file, socket and log, runc's pid file and log.
//!
//! CreateContainer prepares the root filesystem and the bundle only; StartContainer
//! starts the shim, which runs the container with one `runc run --detach`. (A runc
//! `create` then `start` costs a third Go process per container, a large share of a
//! pod's start-up on a small machine.)

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use crate::images::ImageStore;
use crate::sandbox::Sandbox;
use crate::shim::Exit;
use crate::{io_err, Error};

/// A container's record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Container {
    /// The container ID.
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// The kubelet's configuration of it.
    pub config: cri::ContainerConfig,
    /// The image ID (config digest).
    pub image_id: String,
    /// What the kubelet shows as imageID: a repo digest when known, else the ID.
    pub image_ref: String,
    /// When it was created (ns since the epoch).
    pub created_at: i64,
    /// The CRI log file ("" for none).
    pub log_path: String,
    /// Its cgroup path.
    pub cgroup: String,
    /// The signal `StopContainer` sends first (the image's StopSignal, else SIGTERM).
    pub stop_signal: String,
}

/// A container's state as CRI names it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// It has exited.
    Exited,
}

/// Start times (and exits) of containers already read, by ID: neither changes once known.
type Settled = Arc<Mutex<HashMap<String, (i64, Option<Exit>)>>>;

/// What runs containers: runc, the shim binary, and where their state goes.
#[derive(Clone, Debug)]
pub struct Containers {
    records: crate::RecordDir<Container>,
    /// `STATE/containers`.
    state: PathBuf,
    /// The OCI runtime binary (runc, crun, youki).
    pub runc: PathBuf,
    /// The sealed copy of runc that commands run from, when one could be made.
    image: Option<Arc<crate::runc_image::RuncImage>>,
    runc_root: PathBuf,
    shim: PathBuf,
    settled: Settled,
}

impl Containers {
    /// Loads the container records under `root`, with their volatile state under `state`.
    pub fn open(
        root: &Path,
        state: &Path,
        runc: PathBuf,
        shim: PathBuf,
    ) -> Result<Containers, Error> {
        let runc_root = state.join("runc");
        let state = state.join("containers");
        for d in [&runc_root, &state] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let is_runc = runc
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("runc"));
        let image = is_runc
            .then(|| crate::runc_image::RuncImage::seal(&runc))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!("running runc from disk: no sealed copy: {e}"))
                    .ok()
            })
            .map(Arc::new);
        Ok(Containers {
            image,
            state,
            records: crate::RecordDir::open(
                root.join("containers"),
                "container.json",
                "container",
            )?,
            runc,
            runc_root,
            shim,
            settled: Default::default(),
        })
    }

    /// What this process runs runc by: the sealed copy, else the binary on disk.
    pub fn runc_exe(&self) -> PathBuf {
        self.image
            .as_ref()
            .map_or_else(|| self.runc.clone(), |i| i.exe())
    }

    /// A container's directory that outlives a reboot: its record, start and exit, and
    /// its writable layer.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.records.dir.join(id)
    }

    /// A container's directory of volatile state: bundle, shim and runc files.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.state.join(id)
    }

    /// The address of a container's shim socket (`attach.sock`), valid while the returned
    /// guard lives: a short /proc/self/fd path, since the full path can pass the 108-byte
    /// limit of unix socket addresses.
    pub fn shim_socket(&self, id: &str) -> Result<ShimSocket, Error> {
        use std::os::fd::AsRawFd;
        let dir = self.run_dir(id);
        let d = fs::File::open(&dir).map_err(io_err(&dir))?;
        let path = format!(
            "/proc/self/fd/{}/{}",
            d.as_raw_fd(),
            crate::shim::frame::SOCKET
        );
        Ok(ShimSocket { _dir: d, path })
    }

    /// Sends `signal` to a running container's init through its shim; false if it had
    /// already exited.
    fn signal(&self, id: &str, signal: i32) -> Result<bool, Error> {
        use crate::shim::frame;
        use std::io::{Read, Write};
        let sock = self.shim_socket(id)?;
        let io = |e| Error::Io(format!("signalling container {id} through its shim"), e);
        let mut conn = std::os::unix::net::UnixStream::connect(&sock.path).map_err(io)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io)?;
        conn.write_all(&frame::encode(frame::SIGNAL, &signal.to_be_bytes()))
            .map_err(io)?;
        let mut reply = [0u8; 6];
        conn.read_exact(&mut reply).map_err(io)?;
        Ok(reply[5] == 1)
    }

    /// Sends a signal: through the shim, or runc when the shim cannot be reached.
    fn kill(&self, id: &str, signal: &str) {
        let sent = signal_number(signal).map(|n| self.signal(id, n));
        if !matches!(sent, Some(Ok(_))) {
            let _ = self.runc(&["kill", id, signal]);
        }
    }

    /// runc's state root (`--root`).
    pub fn runc_root(&self) -> &Path {
        &self.runc_root
    }

    /// The record of a container (full ID or unique prefix).
    pub fn get(&self, id: &str) -> Result<Container, Error> {
        self.records.get(id)
    }

    /// Every container.
    pub fn list(&self) -> Vec<Container> {
        let mut v: Vec<Container> = self.records.list();
        v.sort_by_key(|c| c.created_at);
        v
    }

    /// The containers for which `keep` holds, oldest first.
    pub fn filter(&self, keep: impl Fn(&Container) -> bool) -> Vec<Container> {
        let mut v = self.records.filter(keep);
        v.sort_by_key(|c| c.created_at);
        v
    }

    /// State, start time and exit of a container.
    pub fn state(&self, c: &Container) -> (State, i64, Option<Exit>) {
        let known = self
            .settled
            .lock()
            .expect("settled lock")
            .get(&c.id)
            .cloned();
        if let Some((started, Some(exit))) = known {
            return (State::Exited, started, Some(exit));
        }
        let dir = self.dir(&c.id);
        let recorded: Option<i64> = match known {
            Some((t, _)) => Some(t),
            None => fs::read_to_string(dir.join("started"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        };
        let started = recorded
            // A runtime that stopped between the shim's start and this record: the shim's
            // own file tells when.
            .or_else(|| {
                let m = fs::metadata(self.run_dir(&c.id).join("shim.pid"))
                    .ok()?
                    .modified()
                    .ok()?;
                let d = m.duration_since(std::time::UNIX_EPOCH).ok()?;
                i64::try_from(d.as_nanos()).ok()
            })
            .unwrap_or(0);
        let exit: Option<Exit> = fs::read(dir.join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .or_else(|| self.lost(c, recorded));
        let state = match (&exit, started) {
            (Some(_), _) => State::Exited,
            (None, 0) => State::Created,
            (None, _) => State::Running,
        };
        if let (Some(t), true) = (recorded, known.is_none() || exit.is_some()) {
            self.settled
                .lock()
                .expect("settled lock")
                .insert(c.id.clone(), (t, exit.clone()));
        }
        (state, started, exit)
    }

    /// The exit of a container that was started but whose volatile state is gone (the
    /// machine restarted under it), as containerd reports one: code 255, reason Unknown.
    fn lost(&self, c: &Container, started: Option<i64>) -> Option<Exit> {
        let started = started?;
        if self.run_dir(&c.id).exists() {
            return None;
        }
        Some(Exit {
            exit_code: 255,
            finished_at: started,
            reason: "Unknown".into(),
            message: "the container's runtime state is gone: the machine restarted".into(),
        })
    }

    /// Creates a container in `sandbox` from `config`: its root filesystem and bundle.
    pub fn create(
        &self,
        sandbox: &Sandbox,
        sandbox_dir: &Path,
        config: cri::ContainerConfig,
        images: &ImageStore,
    ) -> Result<Container, Error> {
        if !sandbox.ready {
            return Err(Error::Format(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        if let Some(problem) = crate::host::runtime_problem(&self.runc) {
            return Err(Error::HostMissing(problem));
        }
        let name = config.metadata.clone().unwrap_or_default();
        if name.name.is_empty() {
            return Err(Error::Format("container metadata.name is required".into()));
        }
        let clash = self.records.filter(|c| {
            let m = c.config.metadata.as_ref();
            c.sandbox_id == sandbox.id
                && m.is_some_and(|m| m.name == name.name && m.attempt == name.attempt)
        });
        if let Some(c) = clash.first() {
            return Err(Error::AlreadyExists(format!(
                "container {} (attempt {}) exists in the pod as {}",
                name.name, name.attempt, c.id
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let record = images
            .resolve(&image_name)?
            .ok_or_else(|| Error::NotFound(format!("image {image_name:?} (pull it first)")))?;
        let image = images.config(&record.id)?;
        let id = crate::new_id();
        let dir = self.dir(&id);
        let res = self.create_in(
            &id,
            &dir,
            sandbox,
            sandbox_dir,
            config,
            images,
            &record,
            &image,
        );
        if res.is_err() {
            self.cleanup(&id, images);
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn create_in(
        &self,
        id: &str,
        dir: &Path,
        sandbox: &Sandbox,
        sandbox_dir: &Path,
        config: cri::ContainerConfig,
        images: &ImageStore,
        record: &crate::images::ImageRecord,
        image: &crate::images::oci::ImageConfig,
    ) -> Result<Container, Error> {
        let bundle = self.run_dir(id).join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in [rootfs.clone(), dir.join("upper"), dir.join("work")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        images.lease(id, &record.chain)?;
        let lowers: Vec<String> = images
            .lower_dirs(record)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        mount_overlay(&rootfs, &opts)?;
        let parent = sandbox
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/rkube".into());
        let cgroup = format!("{}/{id}", parent.trim_end_matches('/'));
        let spec = crate::spec::build(&crate::spec::Input {
            id,
            sandbox,
            sandbox_dir,
            config: &config,
            image,
            rootfs: &rootfs,
            cgroup: cgroup.clone(),
        })?;
        let spec_path = bundle.join("config.json");
        fs::write(&spec_path, serde_json::to_vec_pretty(&spec).expect("json"))
            .map_err(io_err(&spec_path))?;
        let log_dir = &sandbox.config.log_directory;
        let log_path = if log_dir.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(log_dir)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let image_ref = images
            .status(&record.name)?
            .and_then(|i| i.repo_digests.first().cloned())
            .unwrap_or_else(|| record.id.to_string());
        let c = Container {
            id: id.to_string(),
            sandbox_id: sandbox.id.clone(),
            config,
            image_id: record.id.to_string(),
            image_ref,
            created_at: crate::now_nanos(),
            log_path,
            cgroup,
            stop_signal: image
                .config
                .as_ref()
                .and_then(|c| c.stop_signal.clone())
                .unwrap_or_else(|| "SIGTERM".into()),
        };
        self.records.save(id, &c)?;
        Ok(c)
    }

    /// Starts `rkube shim` in its own session and waits for its report: the container runs.
    fn start_shim(&self, c: &Container) -> Result<(), Error> {
        let dir = self.run_dir(&c.id);
        let shim_log = fs::File::create(dir.join("shim.log")).map_err(io_err(&dir))?;
        let mut cmd = Command::new(&self.shim);
        cmd.arg("shim")
            .arg("--id")
            .arg(&c.id)
            .arg("--dir")
            .arg(&dir)
            .arg("--record-dir")
            .arg(self.dir(&c.id))
            .arg("--runc")
            .arg(&self.runc)
            .arg("--runc-root")
            .arg(&self.runc_root)
            .arg("--cgroup")
            .arg(&c.cgroup);
        if !c.log_path.is_empty() {
            cmd.arg("--log").arg(&c.log_path);
        }
        if let Some(image) = &self.image {
            cmd.arg("--runc-image").arg(image.shared());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .env("RKUBE_LOG", "warn");
        // The shim leaves our session itself (`shim::run`), so signals to the runtime's
        // process group never reach it. Without a pre_exec hook, std spawns it with
        // posix_spawn (vfork) rather than fork, which copied this large process's page
        // tables for every container.
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Io(format!("starting the shim {}", self.shim.display()), e))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        // Reap the shim whenever it ends (a restarted runtime is no longer its parent).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        match line.trim().split_once(' ') {
            Some(("ok", _)) => Ok(()),
            Some(("error", msg)) => Err(Error::Format(format!("starting the container: {msg}"))),
            _ => Err(Error::Format(format!(
                "the shim exited without a report; see {}",
                dir.join("shim.log").display()
            ))),
        }
    }

    fn runc(&self, args: &[&str]) -> Result<(), Error> {
        self.runc_with(args, None)
    }

    /// Runs runc with `input` on its stdin, if any; its stderr becomes the error.
    fn runc_with(&self, args: &[&str], input: Option<&[u8]>) -> Result<(), Error> {
        use std::io::Write;
        let mut child = crate::runc_image::command(&self.runc_exe())
            .arg("--root")
            .arg(&self.runc_root)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Io(format!("running {}", self.runc.display()), e))?;
        if let (Some(data), Some(mut w)) = (input, child.stdin.take()) {
            let _ = w.write_all(data);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Io(format!("running {}", self.runc.display()), e))?;
        if !out.status.success() {
            return Err(Error::Format(format!(
                "runc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Changes a running container's CPU and memory limits (`runc update`) and records
    /// them, so `ContainerStatus` reports what is in force.
    pub fn update_resources(&self, id: &str, r: cri::LinuxContainerResources) -> Result<(), Error> {
        let mut c = self.get(id)?;
        if self.state(&c).0 == State::Exited {
            return Err(Error::Format(format!("container {} has exited", c.id)));
        }
        let mut res = serde_json::json!({});
        crate::spec::limits(&r, &mut res);
        if self.has_shim(&c.id) {
            let input = serde_json::to_vec(&res).expect("json");
            self.runc_with(&["update", "--resources", "-", &c.id], Some(&input))?;
        } else {
            // Not running yet: the bundle's spec carries the limits to `runc run`.
            let p = self.run_dir(&c.id).join("bundle/config.json");
            let mut spec: serde_json::Value = fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| Error::Format(format!("{}: unreadable spec", p.display())))?;
            let linux = &mut spec["linux"]["resources"];
            if !linux.is_object() {
                *linux = serde_json::json!({});
            }
            for (k, v) in res.as_object().into_iter().flatten() {
                linux[k] = v.clone();
            }
            fs::write(&p, serde_json::to_vec_pretty(&spec).expect("json")).map_err(io_err(&p))?;
        }
        c.config
            .linux
            .get_or_insert_with(Default::default)
            .resources = Some(r);
        self.records.save(&c.id, &c)
    }

    /// Starts a created container.
    pub fn start(&self, id: &str) -> Result<(), Error> {
        let c = self.get(id)?;
        match self.state(&c).0 {
            State::Created => {}
            State::Running => {
                return Err(Error::Format(format!(
                    "container {} is already running",
                    c.id
                )))
            }
            State::Exited => {
                return Err(Error::Format(format!(
                    "container {} has exited; create a new one",
                    c.id
                )))
            }
        }
        if self.has_shim(&c.id) {
            return Err(Error::Format(format!(
                "container {} is being started",
                c.id
            )));
        }
        // Taken before the start: a quick container may be finished by the time the shim
        // reports, and startedAt must not come after finishedAt.
        let started = crate::now_nanos();
        if let Err(e) = self.start_shim(&c) {
            // As containerd reports it: exited with 128, reason StartError.
            let exit = Exit {
                exit_code: 128,
                finished_at: crate::now_nanos(),
                reason: "StartError".into(),
                message: e.to_string(),
            };
            let p = self.dir(&c.id).join("exit.json");
            let _ = fs::write(&p, serde_json::to_vec(&exit).expect("json"));
            return Err(e);
        }
        let p = self.dir(&c.id).join("started");
        fs::write(&p, started.to_string()).map_err(io_err(&p))
    }

    /// Whether the container's shim was started (its `shim.pid`): from then on runc
    /// knows the container.
    fn has_shim(&self, id: &str) -> bool {
        self.run_dir(id).join("shim.pid").exists()
    }

    /// Stops a container: its stop signal, up to `timeout` for it to exit, then SIGKILL.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        let c = self.get(id)?;
        if self.state(&c).0 == State::Exited {
            return Ok(());
        }
        if !self.has_shim(&c.id) {
            // Created, never started: nothing runs; it ends as a killed one would.
            let exit = Exit {
                exit_code: 137,
                finished_at: crate::now_nanos(),
                reason: "Error".into(),
                message: "stopped before it was started".into(),
            };
            let p = self.dir(&c.id).join("exit.json");
            return fs::write(&p, serde_json::to_vec(&exit).expect("json")).map_err(io_err(&p));
        }
        let exited = |limit: Duration| {
            let start = Instant::now();
            loop {
                if self.dir(&c.id).join("exit.json").exists() {
                    return true;
                }
                let waited = start.elapsed();
                if waited >= limit {
                    return false;
                }
                // Fine-grained at first: most containers die within milliseconds of KILL.
                let step = if waited < Duration::from_millis(200) {
                    2
                } else {
                    20
                };
                std::thread::sleep(Duration::from_millis(step));
            }
        };
        if !timeout.is_zero() {
            self.kill(&c.id, &c.stop_signal);
            if exited(timeout) {
                return Ok(());
            }
        }
        // The container has its own pid namespace: killing its init ends every process in
        // it; `--all` (freeze, signal each, thaw) is the fallback.
        self.kill(&c.id, "SIGKILL");
        if exited(Duration::from_secs(2)) {
            return Ok(());
        }
        let _ = self.runc(&["kill", "--all", &c.id, "KILL"]);
        if exited(Duration::from_secs(8)) {
            return Ok(());
        }
        // The shim is gone (killed by hand?): record the end ourselves.
        let exit = Exit {
            exit_code: 137,
            finished_at: crate::now_nanos(),
            reason: "Error".into(),
            message: "the container's shim disappeared; killed".into(),
        };
        let _ = self.runc(&["delete", "--force", &c.id]);
        let p = self.dir(&c.id).join("exit.json");
        fs::write(&p, serde_json::to_vec(&exit).expect("json")).map_err(io_err(&p))
    }

    /// Removes a container, stopping it first; leaves nothing behind.
    pub fn remove(&self, id: &str, images: &ImageStore) -> Result<(), Error> {
        let Ok(c) = self.get(id) else {
            return Ok(());
        };
        self.stop(&c.id, Duration::ZERO)?;
        self.cleanup(&c.id, images);
        Ok(())
    }

    fn cleanup(&self, id: &str, images: &ImageStore) {
        let dir = self.dir(id);
        // The shim deletes the runc container before it records the exit; without a shim
        // runc never knew it.
        if self.has_shim(id) && !dir.join("exit.json").exists() {
            let _ = self.runc(&["delete", "--force", id]);
        }
        let run = self.run_dir(id);
        unmount(&run.join("bundle/rootfs"));
        let _ = fs::remove_dir_all(&run);
        images.release(id);
        self.settled.lock().expect("settled lock").remove(id);
        let _ = self.records.remove(id);
    }
}

/// A shim socket address and the directory handle that keeps it valid.
pub struct ShimSocket {
    _dir: fs::File,
    /// The socket's path, through the directory handle.
    pub path: String,
}

/// A signal's number from its name (`SIGTERM`, `TERM`) or number (`15`).
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let n = match name.trim_start_matches("SIG") {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => return None,
    };
    Some(n)
}

fn mount_overlay(target: &Path, opts: &str) -> Result<(), Error> {
    if opts.len() >= 4096 {
        return Err(Error::Format(
            "too many image layers for one overlay mount".into(),
        ));
    }
    crate::mount_fs(
        c"overlay",
        target,
        0,
        opts,
        &format!(
            "mounting the container's overlay root at {} (needs root and overlayfs)",
            target.display()
        ),
    )
}

fn unmount(target: &Path) {
    if let Ok(t) = crate::cpath(target) {
        // SAFETY: valid C string; failure (not mounted) is fine.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

#[cfg(test)]
mod tests {
    use super::{Container, Containers, State};

    fn record(id: &str) -> Container {
        Container {
            id: id.into(),
            sandbox_id: "sb".into(),
            config: Default::default(),
            image_id: String::new(),
            image_ref: String::new(),
            created_at: 1,
            log_path: String::new(),
            cgroup: String::new(),
            stop_signal: "SIGTERM".into(),
        }
    }

    /// What a container's files say about it, and what a reboot (its volatile state gone)
    /// leaves: a started container that never recorded an exit ends as Unknown.
    #[test]
    fn states_from_the_record_and_the_volatile_state() {
        let d = tempfile::tempdir().unwrap();
        let (root, state) = (d.path().join("root"), d.path().join("run"));
        let open = || Containers::open(&root, &state, "runc".into(), "shim".into()).unwrap();
        let cs = open();
        for id in ["created", "running", "lost"] {
            std::fs::create_dir_all(cs.dir(id)).unwrap();
            std::fs::create_dir_all(cs.run_dir(id)).unwrap();
            cs.records.save(id, &record(id)).unwrap();
        }
        for id in ["running", "lost"] {
            std::fs::write(cs.dir(id).join("started"), "42").unwrap();
        }
        assert_eq!(cs.state(&cs.get("created").unwrap()).0, State::Created);
        assert_eq!(cs.state(&cs.get("running").unwrap()).0, State::Running);
        assert_eq!(cs.state(&cs.get("lost").unwrap()).0, State::Running);
        // The shim records an exit: seen at once, though the start time was cached.
        std::fs::write(
            cs.dir("running").join("exit.json"),
            r#"{"exit_code":3,"finished_at":50,"reason":"Error"}"#,
        )
        .unwrap();
        let (st, started, exit) = cs.state(&cs.get("running").unwrap());
        assert_eq!(
            (st, started, exit.map(|e| e.exit_code)),
            (State::Exited, 42, Some(3))
        );
        // A reboot: /run is empty, the records remain.
        std::fs::remove_dir_all(&state).unwrap();
        let cs = open();
        let (st, _, exit) = cs.state(&cs.get("lost").unwrap());
        let exit = exit.unwrap();
        assert_eq!(
            (st, exit.exit_code, exit.reason.as_str()),
            (State::Exited, 255, "Unknown")
        );
        assert_eq!(cs.state(&cs.get("created").unwrap()).0, State::Created);
        assert_eq!(
            cs.state(&cs.get("running").unwrap()).2.unwrap().exit_code,
            3
        );
    }

    #[test]
    fn signal_numbers() {
        use super::signal_number;
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("QUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
    }
}
