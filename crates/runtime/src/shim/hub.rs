//! The shim's side of a container's stdio: the CRI log, attached clients (the runtime's
//! streaming server, through `attach.sock`), and the container's stdin and terminal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::frame;

/// Set by SIGUSR1: reopen the log before the next write.
pub static REOPEN: AtomicBool = AtomicBool::new(false);

/// The longest log line written whole; longer lines are split into `P` parts (as
/// containerd's default).
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Where a container's output goes and where its input comes from.
pub struct Hub {
    log: Mutex<LogSink>,
    clients: Mutex<Vec<Client>>,
    /// The write side of the container's stdin (a pipe, or the terminal's master).
    stdin: Mutex<Option<File>>,
    /// Close stdin when the first client that attached it leaves.
    stdin_once: bool,
    /// The terminal's master, for resizes.
    pty: Option<File>,
    /// The container's init, until it has exited.
    init: Mutex<Option<i32>>,
}

struct Client {
    id: u64,
    want: u8,
    conn: UnixStream,
}

impl Hub {
    pub fn new(
        log: Option<PathBuf>,
        stdin: Option<File>,
        stdin_once: bool,
        pty: Option<File>,
        init: i32,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            log: Mutex::new(LogSink::open(log)),
            clients: Mutex::new(Vec::new()),
            stdin: Mutex::new(stdin),
            stdin_once,
            pty,
            init: Mutex::new(Some(init)),
        })
    }

    /// The init process has exited (not yet reaped): no more signals to it.
    pub fn init_exited(&self) {
        *self.init.lock().expect("init lock") = None;
    }

    /// Sends `signal` to the container's init; false if it has already exited.
    fn signal(&self, signal: i32) -> bool {
        let init = self.init.lock().expect("init lock");
        match *init {
            // SAFETY: kill with a live child's pid (it is unreaped while the lock is held).
            Some(pid) => unsafe { libc::kill(pid, signal) == 0 },
            None => false,
        }
    }

    /// Sends output to every client that wants this stream; drops clients that fail.
    fn broadcast(&self, kind: u8, data: &[u8]) {
        let want = if kind == frame::STDERR {
            frame::WANT_STDERR
        } else {
            frame::WANT_STDOUT
        };
        let f = frame::encode(kind, data);
        let mut clients = self.clients.lock().expect("clients lock");
        clients.retain_mut(|c| c.want & want == 0 || c.conn.write_all(&f).is_ok());
    }

    fn log(&self, stream: &str, tag: char, content: &[u8]) {
        self.log
            .lock()
            .expect("log lock")
            .write(stream, tag, content);
    }

    /// Ends every attach session (the container has exited and its output is drained).
    pub fn close_all(&self) {
        for c in self.clients.lock().expect("clients lock").drain(..) {
            let _ = c.conn.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Serves `attach.sock` (relative to the shim's working directory, the container's
    /// directory, which keeps the path short of the unix socket limit).
    pub fn listen(self: &Arc<Hub>) -> io::Result<()> {
        let _ = fs::remove_file(frame::SOCKET);
        let listener = UnixListener::bind(frame::SOCKET)?;
        let hub = self.clone();
        std::thread::spawn(move || {
            let mut next = 0u64;
            for conn in listener.incoming().flatten() {
                next += 1;
                let (hub, id) = (hub.clone(), next);
                std::thread::spawn(move || hub.session(id, conn));
            }
        });
        Ok(())
    }

    /// One connection: its frames until it closes.
    fn session(&self, id: u64, mut conn: UnixStream) {
        let mut wrote_stdin = false;
        loop {
            let mut h = [0u8; 5];
            if conn.read_exact(&mut h).is_err() {
                break;
            }
            let Some((kind, len)) = frame::header(h) else {
                break;
            };
            let mut payload = vec![0u8; len];
            if conn.read_exact(&mut payload).is_err() {
                break;
            }
            match kind {
                frame::ATTACH => {
                    let want = payload.first().copied().unwrap_or(0);
                    wrote_stdin |= want & frame::WANT_STDIN != 0;
                    if let Ok(w) = conn.try_clone() {
                        let _ = w.set_write_timeout(Some(Duration::from_secs(5)));
                        self.clients.lock().expect("clients lock").push(Client {
                            id,
                            want,
                            conn: w,
                        });
                    }
                }
                frame::STDIN => {
                    if let Some(f) = self.stdin.lock().expect("stdin lock").as_mut() {
                        let _ = f.write_all(&payload);
                    }
                }
                // A client's end of input ends the container's only for `stdinOnce`
                // containers (as upstream: others keep stdin for the next attach).
                frame::CLOSE_STDIN if self.stdin_once => {
                    *self.stdin.lock().expect("stdin lock") = None
                }
                frame::RESIZE if payload.len() == 4 => {
                    let w = u16::from_be_bytes([payload[0], payload[1]]);
                    let h = u16::from_be_bytes([payload[2], payload[3]]);
                    if let Some(p) = &self.pty {
                        crate::pty::resize(p, w, h);
                    }
                }
                frame::SIGNAL if payload.len() == 4 => {
                    let sig = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    let sent = self.signal(sig);
                    let _ = conn.write_all(&frame::encode(frame::SIGNAL, &[sent as u8]));
                }
                frame::REOPEN => {
                    {
                        let mut log = self.log.lock().expect("log lock");
                        *log = LogSink::open(log.path.clone());
                    }
                    let _ = conn.write_all(&frame::encode(frame::REOPEN, &[]));
                }
                _ => {}
            }
        }
        self.clients
            .lock()
            .expect("clients lock")
            .retain(|c| c.id != id);
        if wrote_stdin && self.stdin_once {
            *self.stdin.lock().expect("stdin lock") = None;
        }
    }

    /// Copies one output stream to the attached clients and into the log: full lines
    /// tagged `F`, pieces of over-long lines `P`.
    pub fn copier(
        self: &Arc<Hub>,
        mut r: impl Read + Send + 'static,
        kind: u8,
    ) -> std::thread::JoinHandle<()> {
        let hub = self.clone();
        let stream = if kind == frame::STDERR {
            "stderr"
        } else {
            "stdout"
        };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut line: Vec<u8> = Vec::new();
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // A terminal's master reads EIO once the container's side is closed.
                    Err(_) => break,
                };
                hub.broadcast(kind, &buf[..n]);
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let take = rest.len().min(MAX_LOG_LINE - line.len());
                    match rest[..take].iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            line.extend_from_slice(&rest[..i]);
                            hub.log(stream, 'F', &line);
                            line.clear();
                            rest = &rest[i + 1..];
                        }
                        None => {
                            line.extend_from_slice(&rest[..take]);
                            rest = &rest[take..];
                            if line.len() == MAX_LOG_LINE {
                                hub.log(stream, 'P', &line);
                                line.clear();
                            }
                        }
                    }
                }
            }
            if !line.is_empty() {
                // The stream ended inside a line: written as a full line (as containerd).
                hub.log(stream, 'F', &line);
            }
        })
    }
}

/// The CRI log file, reopened on request (after the kubelet rotates it).
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
