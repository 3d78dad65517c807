//! `rkube shim`: one small process per container, as containerd's shim. It asks the OCI
//! runtime to create the container (so the container's init becomes its child, through
//! the subreaper bit), owns the container's stdout/stderr pipes and writes them to the
//! CRI log, waits for the exit and records it in `exit.json`, then deletes the container.
//! It is started in its own session, so the runtime can restart without touching it.
//!
//! It is single-threaded apart from two log copier threads, and uses only blocking calls.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest log line written whole; longer lines are split into `P` parts (as
/// containerd's default).
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// What the shim needs to run one container.
#[derive(Clone, Debug)]
pub struct ShimArgs {
    pub id: String,
    /// The container's state directory (with `bundle/`).
    pub dir: PathBuf,
    pub runc: PathBuf,
    pub runc_root: PathBuf,
    /// The CRI log file, if the kubelet asked for one.
    pub log: Option<PathBuf>,
    /// The container's cgroup path, to read OOM kills from.
    pub cgroup: String,
}

/// How a container ended, written by the shim.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Exit {
    pub exit_code: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

/// Runs the shim; returns the process exit code. Reports `ok PID` or `error MESSAGE` as
/// one line on stdout, then detaches from it.
pub fn run(a: ShimArgs) -> i32 {
    // SAFETY: prctl and signal with constant arguments and a handler that only stores
    // to an atomic.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    match create(&a) {
        Ok((pid, copiers)) => {
            report(&format!("ok {pid}"));
            let code = wait_for(pid);
            // The pid namespace is gone with its init: the pipes reach EOF soon.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for c in copiers {
                    let _ = c.join();
                }
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(5));
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
            let p = a.dir.join("exit.json");
            let tmp = a.dir.join("exit.json.tmp");
            if fs::write(&tmp, serde_json::to_vec(&exit).expect("json")).is_ok() {
                let _ = fs::rename(&tmp, &p);
            }
            let _ = Command::new(&a.runc)
                .arg("--root")
                .arg(&a.runc_root)
                .args(["delete", "--force", &a.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
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

/// `runc create` with the container's stdio on our pipes; starts the log copiers.
fn create(a: &ShimArgs) -> Result<(i32, Copiers), String> {
    let (out_r, out_w) = io::pipe().map_err(|e| e.to_string())?;
    let (err_r, err_w) = io::pipe().map_err(|e| e.to_string())?;
    let pid_file = a.dir.join("init.pid");
    let runc_log = a.dir.join("runc.log");
    let status = Command::new(&a.runc)
        .arg("--root")
        .arg(&a.runc_root)
        .arg("--log")
        .arg(&runc_log)
        .arg("create")
        .arg("--bundle")
        .arg(a.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&a.id)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .status()
        .map_err(|e| {
            format!(
                "running {}: {e} (is runc installed? apt-get install runc)",
                a.runc.display()
            )
        })?;
    if !status.success() {
        let log = fs::read_to_string(&runc_log).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("level=error") || l.contains("\"error\""))
            .unwrap_or(log.lines().last().unwrap_or(""));
        return Err(format!("runc create failed ({status}): {last}"));
    }
    let pid: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or("runc wrote no pid file")?;
    let sink = Arc::new(Mutex::new(LogSink::open(a.log.clone())));
    let copiers = vec![
        copier(out_r, "stdout", sink.clone()),
        copier(err_r, "stderr", sink),
    ];
    Ok((pid, copiers))
}

/// Reaps children (we are their subreaper) until `pid` exits; its exit code, or 128 plus
/// the signal that killed it.
fn wait_for(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status we own.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return 255;
        }
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
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

/// The CRI log file, reopened on SIGUSR1 (after the kubelet rotates it).
struct LogSink {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl LogSink {
    fn open(path: Option<PathBuf>) -> LogSink {
        let file = path.as_ref().and_then(|p| {
            if let Some(d) = p.parent() {
                let _ = fs::create_dir_all(d);
            }
            OpenOptions::new().create(true).append(true).open(p).ok()
        });
        LogSink { path, file }
    }

    fn write(&mut self, stream: &str, tag: char, content: &[u8]) {
        if REOPEN.swap(false, Ordering::SeqCst) {
            *self = LogSink::open(self.path.clone());
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let mut line = Vec::with_capacity(content.len() + 48);
        line.extend_from_slice(format!("{} {stream} {tag} ", timestamp()).as_bytes());
        line.extend_from_slice(content);
        line.push(b'\n');
        let _ = f.write_all(&line);
    }
}

/// Now in RFC 3339 with nanoseconds, UTC (the CRI log format's timestamp).
pub fn timestamp() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        .to_string()
}

/// Copies one stream into the log: full lines tagged `F`, pieces of over-long lines `P`.
fn copier(
    r: io::PipeReader,
    stream: &'static str,
    sink: Arc<Mutex<LogSink>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(MAX_LOG_LINE, r);
        let mut line: Vec<u8> = Vec::new();
        loop {
            let buf = match r.fill_buf() {
                Ok([]) => break,
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let room = MAX_LOG_LINE - line.len();
            let take = buf.len().min(room);
            match buf[..take].iter().position(|b| *b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&buf[..i]);
                    r.consume(i + 1);
                    sink.lock().expect("log lock").write(stream, 'F', &line);
                    line.clear();
                }
                None => {
                    line.extend_from_slice(&buf[..take]);
                    r.consume(take);
                    if line.len() == MAX_LOG_LINE {
                        sink.lock().expect("log lock").write(stream, 'P', &line);
                        line.clear();
                    }
                }
            }
        }
        if !line.is_empty() {
            // The stream ended inside a line: written as a full line (as containerd).
            sink.lock().expect("log lock").write(stream, 'F', &line);
        }
    })
}
