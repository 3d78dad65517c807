//! `rkube shim`: one small process per container, as containerd's shim. It asks the OCI
//! runtime to run the container detached (`runc run -d`: one runc process, and the
//! container's init becomes the shim's child through the subreaper bit), owns the container's stdio (pipes, or the terminal's master for a
//! TTY container) and writes the output to the CRI log and to attached clients, waits for
//! the exit and records it in `exit.json`, then deletes the container. It is started in
//! its own session, so the runtime can restart without touching it.
//!
//! It uses only blocking calls and a few threads: output copiers and attach sessions.

pub mod frame;
mod hub;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use hub::{timestamp, MAX_LOG_LINE};
use hub::{Hub, REOPEN};

/// What the shim needs to run one container.
#[derive(Clone, Debug)]
pub struct ShimArgs {
    /// The container ID.
    pub id: String,
    /// The container's volatile directory (with `bundle/`): the shim's working directory,
    /// where its pid file, socket and runc's files go.
    pub dir: PathBuf,
    /// The container's lasting directory: `container.json` is read from it and
    /// `exit.json` written to it.
    pub record_dir: PathBuf,
    /// The OCI runtime binary.
    pub runc: PathBuf,
    /// The runtime's sealed copy of runc (`/proc/PID/fd/N`), run instead of `runc`.
    pub runc_image: Option<PathBuf>,
    /// The OCI runtime's state directory (`--root`).
    pub runc_root: PathBuf,
    /// The CRI log file, if the kubelet asked for one.
    pub log: Option<PathBuf>,
    /// The container's cgroup path, to read OOM kills from.
    pub cgroup: String,
}

/// How a container ended, written by the shim.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Exit {
    /// The exit code.
    pub exit_code: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
    /// What the termination message says, if anything.
    #[serde(default)]
    pub message: String,
}

extern "C" fn on_usr1(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

/// Runs the shim; returns the process exit code. Reports `ok PID` or `error MESSAGE` as
/// one line on stdout, then detaches from it.
pub fn run(mut a: ShimArgs) -> i32 {
    // SAFETY: setsid, prctl and signal with constant arguments and a handler that only
    // stores to an atomic.
    unsafe {
        // Our own session: the runtime that started us can restart, or be sent a signal
        // for its process group, without touching the container.
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // Sockets are bound by relative names here: full paths can pass the 108-byte limit.
    if let Err(e) = std::env::set_current_dir(&a.dir) {
        report(&format!("error entering {}: {e}", a.dir.display()));
        return 1;
    }
    let _ = fs::write("shim.pid", std::process::id().to_string());
    // Held for the shim's life: `runc delete` at the end runs from it too, long after the
    // runtime that made it may have restarted.
    let image = a
        .runc_image
        .as_deref()
        .and_then(|p| crate::runc_image::RuncImage::open(p).ok());
    if let Some(i) = &image {
        a.runc = i.exe();
    }
    match run_container(&a) {
        Ok((pid, hub, copiers)) => {
            report(&format!("ok {pid}"));
            let code = wait_for(pid, &hub);
            // The pid namespace is gone with its init: the pipes reach EOF soon.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for c in copiers {
                    let _ = c.join();
                }
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(5));
            hub.close_all();
            let oom = oom_kills(&a.cgroup) > 0;
            let exit = Exit {
                exit_code: code,
                finished_at: crate::now_nanos(),
                reason: if oom {
                    "OOMKilled".into()
                } else if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                message: String::new(),
            };
            // runc's record goes first: once exit.json exists, the container is gone.
            let _ = crate::runc_image::command(&a.runc)
                .arg("--root")
                .arg(&a.runc_root)
                .args(["delete", "--force", &a.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let p = a.record_dir.join("exit.json");
            let tmp = a.record_dir.join("exit.json.tmp");
            if fs::write(&tmp, serde_json::to_vec(&exit).expect("json")).is_ok() {
                let _ = fs::rename(&tmp, &p);
            }
            0
        }
        Err(e) => {
            report(&format!("error {}", e.replace('\n', " ")));
            1
        }
    }
}

/// Writes the one status line and points stdout and stderr at /dev/null.
fn report(line: &str) {
    let mut out = io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors of this process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

type Copiers = Vec<std::thread::JoinHandle<()>>;

/// Where runc sends a TTY container's terminal (relative to the container's directory).
const CONSOLE_SOCKET: &str = "bundle/console.sock";

/// The stdio a container asked for, from its record.
fn wants(dir: &Path) -> (bool, bool, bool) {
    let rec: Option<crate::container::Container> = fs::read(dir.join("container.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    rec.map(|c| (c.config.tty, c.config.stdin, c.config.stdin_once))
        .unwrap_or_default()
}

/// `runc run --detach` with the container's stdio on our pipes (or a terminal received
/// over the console socket); starts the output copiers and the attach socket.
fn run_container(a: &ShimArgs) -> Result<(i32, Arc<Hub>, Copiers), String> {
    let (tty, stdin, stdin_once) = wants(&a.record_dir);
    let pid_file = a.dir.join("init.pid");
    let runc_log = a.dir.join("runc.log");
    let mut cmd = crate::runc_image::command(&a.runc);
    cmd.arg("--root")
        .arg(&a.runc_root)
        .arg("--log")
        .arg(&runc_log)
        .arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(a.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file);
    let mut outputs: Vec<(u8, File)> = Vec::new();
    let mut stdin_w: Option<File> = None;
    let console = if tty {
        // runc resolves the socket's name in the bundle, where it changes directory.
        let _ = fs::remove_file(CONSOLE_SOCKET);
        let l = UnixListener::bind(CONSOLE_SOCKET).map_err(|e| format!("console socket: {e}"))?;
        cmd.args(["--console-socket", "console.sock"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Some(l)
    } else {
        let (out_r, out_w) = io::pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = io::pipe().map_err(|e| e.to_string())?;
        outputs.push((frame::STDOUT, File::from(std::os::fd::OwnedFd::from(out_r))));
        outputs.push((frame::STDERR, File::from(std::os::fd::OwnedFd::from(err_r))));
        if stdin {
            let (in_r, in_w) = io::pipe().map_err(|e| e.to_string())?;
            stdin_w = Some(File::from(std::os::fd::OwnedFd::from(in_w)));
            cmd.stdin(in_r);
        } else {
            cmd.stdin(Stdio::null());
        }
        cmd.stdout(out_w).stderr(err_w);
        None
    };
    cmd.arg(&a.id);
    let status = cmd.status().map_err(|e| {
        format!(
            "running {}: {e} (is runc installed? apt-get install runc)",
            a.runc.display()
        )
    })?;
    // Our copies of the container's ends must go, or the pipes never reach EOF.
    drop(cmd);
    if !status.success() {
        let log = fs::read_to_string(&runc_log).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("level=error") || l.contains("\"error\""))
            .unwrap_or(log.lines().last().unwrap_or(""));
        return Err(format!("runc run failed ({status}): {last}"));
    }
    let pid: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("runc wrote no pid file")?;
    let mut pty = None;
    if let Some(l) = console {
        // runc has connected and sent the master before it returned.
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (conn, _) = l
            .accept()
            .map_err(|e| format!("runc sent no terminal: {e}"))?;
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        let master = File::from(crate::pty::recv_fd(&conn).map_err(|e| e.to_string())?);
        let _ = fs::remove_file(CONSOLE_SOCKET);
        outputs.push((
            frame::STDOUT,
            master.try_clone().map_err(|e| e.to_string())?,
        ));
        if stdin {
            stdin_w = Some(master.try_clone().map_err(|e| e.to_string())?);
        }
        pty = Some(master);
    }
    let hub = Hub::new(a.log.clone(), stdin_w, stdin_once, pty, pid);
    hub.listen()
        .map_err(|e| format!("attach socket in {}: {e}", a.dir.display()))?;
    let copiers = outputs
        .into_iter()
        .map(|(kind, r)| hub.copier(r, kind))
        .collect();
    Ok((pid, hub, copiers))
}

/// Reaps children (we are their subreaper) until `pid` exits; its exit code, or 128 plus
/// the signal that killed it. The hub learns of the exit before `pid` is reaped, so a
/// signal it sends can never reach a recycled pid.
fn wait_for(pid: i32, hub: &Hub) -> i32 {
    loop {
        // SAFETY: waitid writes the siginfo we own; WNOWAIT leaves the child unreaped.
        let exited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            if libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) != 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return 255;
            }
            info.si_pid()
        };
        if exited == pid {
            hub.init_exited();
        }
        let mut status = 0;
        // SAFETY: waitpid writes the status we own.
        if unsafe { libc::waitpid(exited, &mut status, 0) } != exited || exited != pid {
            continue;
        }
        if libc::WIFEXITED(status) {
            return libc::WEXITSTATUS(status);
        }
        if libc::WIFSIGNALED(status) {
            return 128 + libc::WTERMSIG(status);
        }
    }
}

/// OOM kills recorded for the cgroup (v1 `memory.oom_control`, v2 `memory.events`).
fn oom_kills(cgroup: &str) -> u64 {
    let rel = cgroup.trim_start_matches('/');
    let files = [
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        Path::new("/sys/fs/cgroup/unified")
            .join(rel)
            .join("memory.events"),
    ];
    files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0)
}
