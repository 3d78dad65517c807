//! Exec and attach sessions: a process started with `runc exec` (on pipes, or on a
//! terminal for TTY sessions), or the container's own stdio through its shim.

use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::channel::{self, Session, Ws};
use crate::cri::Runtime;
use crate::shim::frame;

/// Ends a session that could not start: the reason on the error channel.
async fn fail(ws: Ws, protocol: &str, msg: String) {
    let (_out_tx, output) = mpsc::channel(1);
    let (done_tx, done) = oneshot::channel();
    let _ = done_tx.send(Some(channel::error_status(&msg)));
    drop(_out_tx);
    channel::pump(
        ws,
        protocol,
        Session {
            stdin: None,
            resize: None,
            output,
            done,
        },
    )
    .await;
}

/// Copies a reader into the output channel until it ends.
fn forward(mut r: impl AsyncRead + Unpin + Send + 'static, ch: u8, tx: mpsc::Sender<(u8, Bytes)>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((ch, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

/// Writes client stdin into `w` until the client ends it.
fn feed(mut w: impl AsyncWrite + Unpin + Send + 'static) -> mpsc::Sender<Option<Bytes>> {
    let (tx, mut rx) = mpsc::channel::<Option<Bytes>>(16);
    tokio::spawn(async move {
        while let Some(Some(b)) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
            let _ = w.flush().await;
        }
        let _ = w.shutdown().await;
    });
    tx
}

/// `kubectl exec`: runs the command and reports its exit code on the error channel.
pub async fn exec(rt: Arc<Runtime>, ws: Ws, protocol: &'static str, req: cri::ExecRequest) {
    let cmd = match rt.containers.exec_command(&req.container_id, &req.cmd) {
        Ok(c) => c,
        Err(e) => return fail(ws, protocol, e.to_string()).await,
    };
    let (out_tx, output) = mpsc::channel(64);
    let (done_tx, done) = oneshot::channel();
    let mut session = Session {
        stdin: None,
        resize: None,
        output,
        done,
    };
    let mut command = cmd.command(req.tty);
    let child = if req.tty {
        let (master, slave) = match crate::pty::open() {
            Ok(p) => p,
            Err(e) => return fail(ws, protocol, format!("opening a terminal: {e}")).await,
        };
        let stdio = |f: &std::fs::File| f.try_clone().map(Stdio::from);
        match (stdio(&slave), stdio(&slave), stdio(&slave)) {
            (Ok(i), Ok(o), Ok(e)) => {
                command.stdin(i).stdout(o).stderr(e);
            }
            _ => return fail(ws, protocol, "duplicating the terminal".into()).await,
        }
        crate::exec::on_terminal(&mut command);
        let child = command.spawn();
        drop(command);
        drop(slave);
        let master = match AsyncPty::new(master) {
            Ok(m) => Arc::new(m),
            Err(e) => return fail(ws, protocol, format!("terminal: {e}")).await,
        };
        if req.stdout {
            forward(PtyHalf(master.clone()), channel::STDOUT, out_tx.clone());
        }
        if req.stdin {
            session.stdin = Some(feed(PtyHalf(master.clone())));
        }
        let (rs_tx, mut rs_rx) = mpsc::channel::<(u16, u16)>(4);
        let m = master.clone();
        tokio::spawn(async move {
            while let Some((w, h)) = rs_rx.recv().await {
                crate::pty::resize(m.fd.get_ref(), w, h);
            }
        });
        session.resize = Some(rs_tx);
        child
    } else {
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        command
            .stdin(pipe(req.stdin))
            .stdout(pipe(req.stdout))
            .stderr(pipe(req.stderr));
        let mut child = command.spawn();
        if let Ok(c) = child.as_mut() {
            if let Some(o) = c.stdout.take() {
                forward(o, channel::STDOUT, out_tx.clone());
            }
            if let Some(e) = c.stderr.take() {
                forward(e, channel::STDERR, out_tx.clone());
            }
            if let Some(i) = c.stdin.take() {
                session.stdin = Some(feed(i));
            }
        }
        child
    };
    drop(out_tx);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(ws, protocol, format!("running runc exec: {e}")).await,
    };
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(st) => channel::exit_status(crate::exec::exit_code(st)),
            Err(e) => channel::error_status(&format!("waiting for the process: {e}")),
        };
        cmd.cleanup();
        let _ = done_tx.send(Some(status));
    });
    channel::pump(ws, protocol, session).await;
}

/// `kubectl attach`: the container's own stdio, through its shim's attach socket.
pub async fn attach(rt: Arc<Runtime>, ws: Ws, protocol: &'static str, req: cri::AttachRequest) {
    let conn = match connect_shim(&rt, &req.container_id).await {
        Ok(c) => c,
        Err(e) => return fail(ws, protocol, e.to_string()).await,
    };
    let (mut r, w) = conn.into_split();
    let w = Arc::new(tokio::sync::Mutex::new(w));
    let mut want = 0;
    for (on, bit) in [
        (req.stdin, frame::WANT_STDIN),
        (req.stdout, frame::WANT_STDOUT),
        (req.stderr, frame::WANT_STDERR),
    ] {
        if on {
            want |= bit;
        }
    }
    if w.lock()
        .await
        .write_all(&frame::encode(frame::ATTACH, &[want]))
        .await
        .is_err()
    {
        return fail(
            ws,
            protocol,
            "the container's shim closed the attach".into(),
        )
        .await;
    }
    let (out_tx, output) = mpsc::channel(64);
    let (done_tx, done) = oneshot::channel();
    // Output until the shim ends the session (the container exited).
    tokio::spawn(async move {
        loop {
            let mut h = [0u8; 5];
            if r.read_exact(&mut h).await.is_err() {
                break;
            }
            let Some((kind, len)) = frame::header(h) else {
                break;
            };
            let mut payload = vec![0u8; len];
            if r.read_exact(&mut payload).await.is_err() {
                break;
            }
            let ch = if kind == frame::STDERR {
                channel::STDERR
            } else {
                channel::STDOUT
            };
            if out_tx.send((ch, payload.into())).await.is_err() {
                break;
            }
        }
        drop(out_tx);
        let _ = done_tx.send(None);
    });
    let stdin = req.stdin.then(|| {
        let (tx, mut rx) = mpsc::channel::<Option<Bytes>>(16);
        let w = w.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let f = match b {
                    Some(b) => frame::encode(frame::STDIN, &b),
                    None => frame::encode(frame::CLOSE_STDIN, &[]),
                };
                if w.lock().await.write_all(&f).await.is_err() {
                    break;
                }
            }
        });
        tx
    });
    let (rs_tx, mut rs_rx) = mpsc::channel::<(u16, u16)>(4);
    tokio::spawn(async move {
        while let Some((width, height)) = rs_rx.recv().await {
            let mut p = width.to_be_bytes().to_vec();
            p.extend_from_slice(&height.to_be_bytes());
            if w.lock()
                .await
                .write_all(&frame::encode(frame::RESIZE, &p))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    channel::pump(
        ws,
        protocol,
        Session {
            stdin,
            resize: Some(rs_tx),
            output,
            done,
        },
    )
    .await;
}

/// Connects to a running container's shim socket.
pub async fn connect_shim(
    rt: &Runtime,
    container_id: &str,
) -> Result<tokio::net::UnixStream, crate::Error> {
    let c = rt.containers.get(container_id)?;
    if rt.containers.state(&c).0 != crate::container::State::Running {
        return Err(crate::Error::Format(format!(
            "container {} is not running",
            c.id
        )));
    }
    let sock = rt.containers.shim_socket(&c.id)?;
    let conn = tokio::net::UnixStream::connect(&sock.path).await;
    drop(sock);
    conn.map_err(|e| crate::Error::Io(format!("connecting to the shim of container {}", c.id), e))
}

/// A terminal master driven by the reactor (non-blocking fd).
struct AsyncPty {
    fd: tokio::io::unix::AsyncFd<std::fs::File>,
}

impl AsyncPty {
    fn new(master: std::fs::File) -> std::io::Result<AsyncPty> {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        // SAFETY: the File owns its fd, which stays open and the same for its lifetime.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(master) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(AsyncPty { fd })
    }
}

/// One user of a shared terminal master (reader or writer).
struct PtyHalf(Arc<AsyncPty>);

impl AsyncRead for PtyHalf {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        loop {
            let mut guard = std::task::ready!(self.0.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                // EIO: every process on the terminal's side has closed it (the end).
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return std::task::Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyHalf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        loop {
            let mut guard = std::task::ready!(self.0.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
