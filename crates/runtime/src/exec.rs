//! Processes run inside running containers with `runc exec`: `ExecSync` (exec probes)
//! and interactive sessions for the streaming server, on pipes or on a terminal.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::container::{Containers, State};
use crate::Error;

/// The most output `ExecSync` keeps of each stream (the rest is dropped, as a probe only
/// needs the start).
pub const MAX_SYNC_OUTPUT: usize = 4 << 20;

/// What `ExecSync` returns.
#[derive(Debug, Default)]
pub struct SyncOutput {
    /// What the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Its exit code.
    pub exit_code: i32,
}

/// How to start a process in a container.
#[derive(Clone, Debug)]
pub struct ExecCommand {
    runc: PathBuf,
    runc_root: PathBuf,
    id: String,
    cmd: Vec<String>,
    /// Where runc writes the process's pid (for the timeout kill).
    pid_file: PathBuf,
}

impl Containers {
    /// The `runc exec` for `cmd` in a running container (full ID or unique prefix).
    pub fn exec_command(&self, id: &str, cmd: &[String]) -> Result<ExecCommand, Error> {
        if cmd.is_empty() {
            return Err(Error::Format("cmd is required".into()));
        }
        let c = self.get(id)?;
        if self.state(&c).0 != State::Running {
            return Err(Error::Format(format!("container {} is not running", c.id)));
        }
        Ok(ExecCommand {
            runc: self.runc_exe(),
            runc_root: self.runc_root().to_path_buf(),
            pid_file: self
                .run_dir(&c.id)
                .join(format!("exec-{}.pid", &crate::new_id()[..12])),
            id: c.id,
            cmd: cmd.to_vec(),
        })
    }
}

impl ExecCommand {
    /// The runc command line; `tty` asks runc for a terminal on its own stdio.
    pub fn command(&self, tty: bool) -> tokio::process::Command {
        let mut c = crate::runc_image::command(&self.runc);
        c.arg("--root").arg(&self.runc_root).arg("exec");
        if tty {
            c.arg("--tty");
        }
        c.arg("--pid-file")
            .arg(&self.pid_file)
            .arg(&self.id)
            .args(&self.cmd);
        tokio::process::Command::from(c)
    }

    /// Kills the exec'd process (runc passes signals on, but SIGKILL cannot be caught).
    pub fn kill(&self) {
        let pid: Option<i32> = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            // SAFETY: kill with a pid runc just wrote for this exec.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Removes the pid file.
    pub fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// Runs to completion with no stdin, collecting output; `timeout` zero means none.
    pub async fn run_sync(&self, timeout: Duration) -> Result<SyncOutput, Error> {
        let mut child = self
            .command(false)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Io(format!("running {}", self.runc.display()), e))?;
        let out = read_capped(child.stdout.take());
        let err = read_capped(child.stderr.take());
        let all = async {
            let (o, e, st) = tokio::join!(out, err, child.wait());
            (o, e, st)
        };
        let res = if timeout.is_zero() {
            Ok(all.await)
        } else {
            tokio::time::timeout(timeout, all).await
        };
        let res = match res {
            Ok(r) => r,
            Err(_) => {
                self.kill();
                self.cleanup();
                return Err(Error::Timeout(format!(
                    "command {:?} timed out after {}s",
                    self.cmd,
                    timeout.as_secs_f64()
                )));
            }
        };
        self.cleanup();
        let (stdout, stderr, status) = res;
        let status = status.map_err(|e| Error::Io("waiting for runc exec".into(), e))?;
        Ok(SyncOutput {
            stdout,
            stderr,
            exit_code: exit_code(status),
        })
    }
}

/// An exit status as a shell shows it: the code, or 128 plus the signal.
pub fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut r) = r else {
        return out;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_SYNC_OUTPUT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

/// Makes a terminal the controlling terminal of a new session in the child (runc then
/// follows its size through SIGWINCH).
pub fn on_terminal(cmd: &mut tokio::process::Command) {
    // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
}
