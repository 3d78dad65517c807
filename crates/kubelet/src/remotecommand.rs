//! exec and attach over SPDY/3.1 (kubectl's fallback when WebSockets are off): the
//! client's streams (stdin, stdout, stderr, error, resize) are carried to and from the
//! runtime's WebSocket stream (`v5.channel.k8s.io`), whose channels are the same five.

use std::collections::HashMap;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::portforward::Out;
use crate::spdy::{Decoder, Encoder, Frame};

/// The SPDY sub-protocols we accept, best first (X-Stream-Protocol-Version).
pub const PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The WebSocket channel of a SPDY stream type.
fn channel(stream_type: &str) -> Option<u8> {
    Some(match stream_type {
        "stdin" => 0,
        "stdout" => 1,
        "stderr" => 2,
        "error" => 3,
        "resize" => 4,
        _ => return None,
    })
}

/// Which streams the client will open, from the request's flags.
pub struct Expect {
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr.
    pub stderr: bool,
    /// A terminal (stdout and stderr merged, resize messages).
    pub tty: bool,
}

impl Expect {
    fn count(&self, protocol: &str) -> usize {
        // stderr is not a separate stream under a TTY; resize exists from v3 with a TTY.
        let resize = self.tty && !matches!(protocol, "v2.channel.k8s.io" | "channel.k8s.io");
        1 + self.stdin as usize
            + self.stdout as usize
            + (self.stderr && !self.tty) as usize
            + resize as usize
    }
}

/// Runs one session: SPDY frames in `input`, ours out through `output`; `url` is the
/// runtime's streaming URL for this exec or attach.
pub async fn session(
    url: String,
    protocol: String,
    expect: Expect,
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Out>,
) {
    let mut dec = Decoder::default();
    // SPDY stream id → channel, and channel → stream id for our writes.
    let mut streams: HashMap<u32, u8> = HashMap::new();
    let mut by_channel: HashMap<u8, u32> = HashMap::new();
    let wanted = expect.count(&protocol);
    // Frames wait here until the runtime stream is connected.
    let mut ws_tx: Option<mpsc::Sender<Message>> = None;
    let mut pending: Vec<Message> = Vec::new();
    let mut done: Option<tokio::task::JoinHandle<()>> = None;
    let mut input_open = true;
    loop {
        let chunk = tokio::select! {
            c = input.recv(), if input_open => c,
            _ = async { if let Some(d) = done.as_mut() { let _ = d.await; } }, if done.is_some() => {
                return;
            }
        };
        let Some(chunk) = chunk else {
            input_open = false;
            if done.is_none() {
                return;
            }
            continue;
        };
        dec.push(&chunk);
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "exec over SPDY: protocol error");
                    return;
                }
            };
            let mut send = |m: Message| {
                if let Some(tx) = &ws_tx {
                    let _ = tx.try_send(m);
                } else {
                    pending.push(m);
                }
            };
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    let ty = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("streamtype"))
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("");
                    let _ = output.send(Out::Reply(stream)).await;
                    if let Some(ch) = channel(ty) {
                        streams.insert(stream, ch);
                        by_channel.insert(ch, stream);
                    }
                }
                Frame::Data { stream, fin, data } => match streams.get(&stream) {
                    Some(0) => {
                        if !data.is_empty() {
                            let mut m = Vec::with_capacity(data.len() + 1);
                            m.push(0);
                            m.extend_from_slice(&data);
                            send(Message::Binary(m.into()));
                        }
                        if fin {
                            // v5: close stdin.
                            send(Message::Binary(vec![255, 0].into()));
                        }
                    }
                    Some(4) => {
                        // Resize events are JSON objects, possibly several in one frame.
                        for obj in serde_json::Deserializer::from_slice(&data)
                            .into_iter::<serde_json::Value>()
                            .flatten()
                        {
                            let mut m = vec![4u8];
                            m.extend_from_slice(obj.to_string().as_bytes());
                            send(Message::Binary(m.into()));
                        }
                    }
                    _ => {}
                },
                Frame::Ping(id) => {
                    let _ = output.send(Out::Raw(Encoder::ping(id))).await;
                }
                Frame::GoAway { .. } => return,
                _ => {}
            }
        }
        // Every expected stream is there: connect the runtime and start.
        if ws_tx.is_none() && streams.len() >= wanted {
            let ws = match crate::portforward::connect(&url, "v5.channel.k8s.io").await {
                Ok(ws) => ws,
                Err(e) => {
                    if let Some(&err) = by_channel.get(&3) {
                        let msg = format!("connecting to the container runtime: {e}");
                        let _ = output
                            .send(Out::Raw(Encoder::data(err, true, msg.as_bytes())))
                            .await;
                    }
                    return;
                }
            };
            let (mut sink, mut source) = ws.split();
            let (tx, mut rx) = mpsc::channel::<Message>(64);
            for m in pending.drain(..) {
                let _ = tx.try_send(m);
            }
            ws_tx = Some(tx);
            tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
            });
            let out = output.clone();
            let chans = by_channel.clone();
            done = Some(tokio::spawn(async move {
                while let Some(Ok(m)) = source.next().await {
                    let b = match m {
                        Message::Binary(b) => b,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    let Some((&ch, payload)) = b.split_first() else {
                        continue;
                    };
                    // Under a TTY stderr is merged; anything for a stream the client
                    // did not open is dropped.
                    if let Some(&stream) = chans.get(&ch) {
                        if !payload.is_empty() {
                            let _ = out
                                .send(Out::Raw(Encoder::data(stream, false, payload)))
                                .await;
                        }
                    }
                }
                // The end: every stream of ours is finished.
                for (&ch, &stream) in &chans {
                    if ch != 0 && ch != 4 {
                        let _ = out.send(Out::Raw(Encoder::data(stream, true, b""))).await;
                    }
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_streams_follow_the_flags() {
        let e = Expect {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(e.count("v4.channel.k8s.io"), 4);
        let t = Expect {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        };
        assert_eq!(
            t.count("v4.channel.k8s.io"),
            4,
            "error, stdin, stdout, resize"
        );
        assert_eq!(t.count("channel.k8s.io"), 3);
        assert_eq!(channel("resize"), Some(4));
        assert_eq!(channel("weird"), None);
    }
}
