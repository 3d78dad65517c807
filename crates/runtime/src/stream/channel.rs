//! The Kubernetes WebSocket channel protocol: every binary message starts with a channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize); v5 adds 255, "close channel N".
//! Also the WebSocket handshake, and the pump between a socket and a session's streams.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::Response;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[255, N]` closes channel N (stdin's EOF).
pub const CLOSE: u8 = 255;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// Exec and attach, best first.
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[V5, V4, "channel.k8s.io"];
/// Port forwarding.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &[V4, "portforward.k8s.io"];

/// Checks a WebSocket upgrade request and picks the best protocol both sides speak: the
/// 101 response and that protocol, or what is wrong.
pub fn accept<B>(
    req: &hyper::Request<B>,
    offered: &[&'static str],
) -> Result<(Response<Full<Bytes>>, &'static str), String> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let speaks = offered.join(", ");
    if !h("upgrade").eq_ignore_ascii_case("websocket") {
        return Err(format!(
            "this streaming server speaks WebSocket ({speaks}); send an Upgrade: websocket request"
        ));
    }
    let key = h("sec-websocket-key");
    if key.is_empty() {
        return Err("Sec-WebSocket-Key is missing".into());
    }
    let asked: Vec<&str> = h("sec-websocket-protocol")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = offered.iter().find(|p| asked.contains(p)).ok_or_else(|| {
        format!("no common subprotocol: asked {asked:?}, this server speaks {speaks}")
    })?;
    let resp = Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .header("sec-websocket-protocol", *protocol)
        .body(Full::new(Bytes::new()))
        .expect("response");
    Ok((resp, protocol))
}

/// Completes the upgrade into a server-side WebSocket.
pub async fn upgrade(req: hyper::Request<hyper::body::Incoming>) -> Result<Ws, hyper::Error> {
    let up = hyper::upgrade::on(req).await?;
    Ok(
        WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(up), Role::Server, None)
            .await,
    )
}

/// A client frame's bytes, channel byte first. Upstream accepts text frames on every
/// channel as it does binary ones (the Python client writes `str` stdin as text).
pub fn frame_bytes(m: Message) -> Option<bytes::Bytes> {
    match m {
        Message::Binary(b) => Some(b),
        Message::Text(t) => Some(bytes::Bytes::from(t)),
        _ => None,
    }
}

/// One binary message on a channel.
pub fn message(ch: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(ch);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// The final status on the error channel, as the kubelet writes it: success, or a failure
/// whose cause carries the exit code.
pub fn exit_status(code: i32) -> String {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"}).to_string();
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
    .to_string()
}

/// An internal error on the error channel.
pub fn error_status(msg: &str) -> String {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": msg,
        "reason": "InternalError",
        "code": 500,
    })
    .to_string()
}

/// A session's side of the pump: where client input goes, where output comes from, and
/// the final status.
pub struct Session {
    /// Client stdin; `None` is its end.
    pub stdin: Option<mpsc::Sender<Option<Bytes>>>,
    /// Terminal sizes (width, height).
    pub resize: Option<mpsc::Sender<(u16, u16)>>,
    /// Output by channel; ends when every output stream has ended.
    pub output: mpsc::Receiver<(u8, Bytes)>,
    /// The status JSON to write on the error channel at the end (None: none).
    pub done: oneshot::Receiver<Option<String>>,
}

/// A close frame with code 1000: clients (client-go's gorilla websocket) read an empty
/// close frame as 1005 "no status" and report an error instead of the end of the streams.
pub fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// How long output may keep coming after the process ended (a background child that holds
/// the pipes must not keep the session open forever).
const DRAIN: Duration = Duration::from_secs(2);

/// Moves bytes between the socket and the session until the session is done.
pub async fn pump(ws: Ws, protocol: &str, mut s: Session) {
    let v5 = protocol == V5;
    let (mut tx, mut rx) = ws.split();
    let stdin = s.stdin.take();
    let resize = s.resize.take();
    let reader = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Close(_) => break,
                m => match frame_bytes(m) {
                    Some(b) => b,
                    None => continue,
                },
            };
            match data.first() {
                Some(&STDIN) => {
                    if let Some(s) = &stdin {
                        let _ = s.send(Some(data.slice(1..))).await;
                    }
                }
                Some(&RESIZE) => {
                    let size: serde_json::Value =
                        serde_json::from_slice(&data[1..]).unwrap_or_default();
                    let dim = |k: &str| size.get(k).and_then(|v| v.as_u64()).map(|v| v as u16);
                    if let (Some(r), Some(w), Some(h)) = (&resize, dim("Width"), dim("Height")) {
                        let _ = r.send((w, h)).await;
                    }
                }
                Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => {
                    if let Some(s) = stdin.take() {
                        let _ = s.send(None).await;
                    }
                }
                _ => {}
            }
        }
        // The client went away: its stdin has ended.
        if let Some(s) = stdin {
            let _ = s.send(None).await;
        }
    });
    let mut done = s.done;
    let mut status: Option<Option<String>> = None;
    // Once the process has ended, output still buffered gets a little while to arrive.
    let drain = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            out = s.output.recv() => match out {
                Some((ch, b)) if tx.send(message(ch, &b)).await.is_ok() => {}
                _ => break,
            },
            st = &mut done, if status.is_none() => {
                status = Some(st.unwrap_or(None));
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            _ = &mut drain, if status.is_some() => break,
        }
    }
    let status = match status {
        Some(s) => s,
        None => done.await.unwrap_or(None),
    };
    if let Some(st) = status {
        let _ = tx.send(message(ERROR, st.as_bytes())).await;
    }
    let _ = tx.send(normal_close()).await;
    let _ = tx.flush().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let ok: serde_json::Value = serde_json::from_str(&exit_status(0)).unwrap();
        assert_eq!(ok["status"], "Success");
        let bad: serde_json::Value = serde_json::from_str(&exit_status(3)).unwrap();
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(bad["details"]["causes"][0]["message"], "3");
    }

    #[test]
    fn handshake_picks_the_best_common_protocol() {
        let req = hyper::Request::builder()
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header(
                "sec-websocket-protocol",
                "v4.channel.k8s.io, v5.channel.k8s.io",
            )
            .body(())
            .unwrap();
        let (resp, p) = accept(&req, REMOTE_COMMAND_PROTOCOLS).unwrap();
        assert_eq!(p, V5);
        assert_eq!(
            resp.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let plain = hyper::Request::builder().body(()).unwrap();
        assert!(accept(&plain, REMOTE_COMMAND_PROTOCOLS).is_err());
        let other = hyper::Request::builder()
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "x")
            .header("sec-websocket-protocol", "base64.channel.k8s.io")
            .body(())
            .unwrap();
        assert!(accept(&other, REMOTE_COMMAND_PROTOCOLS)
            .unwrap_err()
            .contains("no common subprotocol"));
    }
}
