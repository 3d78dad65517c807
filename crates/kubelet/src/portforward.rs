//! kubectl port-forward (`portforward.k8s.io` over SPDY/3.1, plain or tunneled in
//! WebSocket): each forwarded connection is a pair of streams (error and data) sharing a
//! requestID; its bytes go to the pod's port through the runtime's port-forward stream,
//! so the connection lands on localhost inside the pod's network namespace.

use crate::error::StreamError;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::spdy::{Decoder, Encoder, Frame};
use crate::Kubelet;

/// One forwarded connection's streams.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    /// Client bytes for the pod, once the connection runs.
    to_pod: Option<mpsc::Sender<Bytes>>,
    started: bool,
}

/// What goes out on the connection: encoded frames, or a SYN_REPLY to encode (the
/// compressor lives with the writer, so replies are encoded in order).
pub enum Out {
    /// Frames already encoded.
    Raw(Bytes),
    /// A SYN_REPLY for this stream.
    Reply(u32),
}

/// Runs a port-forward session: `input` carries the client's bytes, `output` takes ours.
pub async fn session(
    k: Arc<Kubelet>,
    sandbox_id: String,
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Out>,
) {
    let mut dec = Decoder::default();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // data stream id → requestID
    let mut by_stream: HashMap<u32, String> = HashMap::new();
    while let Some(chunk) = input.recv().await {
        dec.push(&chunk);
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward: protocol error");
                    return;
                }
            };
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    let get = |n: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(n))
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let _ = output.send(Out::Reply(stream)).await;
                    let request = get("requestid");
                    let port: u16 = match get("port").parse() {
                        Ok(p) if p > 0 => p,
                        _ => {
                            let _ = output.send(Out::Raw(Encoder::rst_stream(stream, 1))).await;
                            continue;
                        }
                    };
                    let pair = pairs.entry(request.clone()).or_default();
                    pair.port = port;
                    match get("streamtype").as_str() {
                        "error" => pair.error = Some(stream),
                        "data" => pair.data = Some(stream),
                        _ => {
                            let _ = output.send(Out::Raw(Encoder::rst_stream(stream, 1))).await;
                            continue;
                        }
                    }
                    by_stream.insert(stream, request.clone());
                    if let (Some(err), Some(data), false) = (pair.error, pair.data, pair.started) {
                        pair.started = true;
                        let (tx, rx) = mpsc::channel(32);
                        pair.to_pod = Some(tx);
                        tokio::spawn(forward(
                            k.clone(),
                            sandbox_id.clone(),
                            pair.port,
                            err,
                            data,
                            rx,
                            output.clone(),
                        ));
                    }
                }
                Frame::Data { stream, fin, data } => {
                    let Some(req) = by_stream.get(&stream) else {
                        continue;
                    };
                    let Some(pair) = pairs.get_mut(req) else {
                        continue;
                    };
                    if pair.data == Some(stream) {
                        if let Some(tx) = &pair.to_pod {
                            if !data.is_empty() {
                                let _ = tx.send(data).await;
                            }
                        }
                        if fin {
                            // The client is done sending; the pod side finishes on its own.
                            pair.to_pod = None;
                        }
                    }
                }
                Frame::RstStream { stream, .. } => {
                    if let Some(req) = by_stream.remove(&stream) {
                        if let Some(p) = pairs.get_mut(&req) {
                            p.to_pod = None;
                        }
                    }
                }
                Frame::Ping(id) => {
                    let _ = output.send(Out::Raw(Encoder::ping(id))).await;
                }
                Frame::GoAway { .. } => return,
                Frame::SynReply { .. } | Frame::Ignored(_) => {}
            }
        }
    }
}

/// One connection: a runtime port-forward stream to `port`, bytes both ways.
async fn forward(
    k: Arc<Kubelet>,
    sandbox_id: String,
    port: u16,
    err_stream: u32,
    data_stream: u32,
    mut from_client: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Out>,
) {
    let fail = |msg: String| {
        let output = output.clone();
        async move {
            let _ = output
                .send(Out::Raw(Encoder::data(err_stream, true, msg.as_bytes())))
                .await;
            let _ = output
                .send(Out::Raw(Encoder::data(data_stream, true, b"")))
                .await;
        }
    };
    let url = match k
        .cri
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox_id.clone(),
            port: vec![port as i32],
        })
        .await
    {
        Ok(url) => url,
        Err(e) => {
            return fail(format!(
                "error forwarding port {port} to pod {sandbox_id}: {}",
                e.message()
            ))
            .await
        }
    };
    let ws = match connect(&url, "v4.channel.k8s.io").await {
        Ok(ws) => ws,
        Err(e) => {
            return fail(format!(
                "error forwarding port {port} to pod {sandbox_id}: {e}"
            ))
            .await
        }
    };
    let (mut sink, mut source) = ws.split();
    let up = tokio::spawn(async move {
        while let Some(b) = from_client.recv().await {
            let mut m = Vec::with_capacity(b.len() + 1);
            m.push(0u8);
            m.extend_from_slice(&b);
            if sink.send(Message::Binary(m.into())).await.is_err() {
                break;
            }
        }
        sink
    });
    // The first message on each channel starts with the port (2 bytes, little-endian).
    let mut prefixed = [false, false];
    let mut error_text = Vec::new();
    while let Some(Ok(m)) = source.next().await {
        let b = match m {
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some(&ch) = b.first() else { continue };
        let mut payload = b.slice(1..);
        if ch <= 1 && !prefixed[ch as usize] {
            prefixed[ch as usize] = true;
            payload = payload.slice(payload.len().min(2)..);
        }
        if ch == 1 {
            error_text.extend_from_slice(&payload);
        } else if ch == 0
            && !payload.is_empty()
            && output
                .send(Out::Raw(Encoder::data(data_stream, false, &payload)))
                .await
                .is_err()
        {
            break;
        }
    }
    up.abort();
    if !error_text.is_empty() {
        let _ = output
            .send(Out::Raw(Encoder::data(err_stream, false, &error_text)))
            .await;
    }
    let _ = output
        .send(Out::Raw(Encoder::data(data_stream, true, b"")))
        .await;
    let _ = output
        .send(Out::Raw(Encoder::data(err_stream, true, b"")))
        .await;
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket client connection to the runtime's streaming URL speaking `protocol`.
pub(crate) async fn connect(url: &str, protocol: &'static str) -> Result<Ws, StreamError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| StreamError::Url(url.into()))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    let mut req = format!("ws://{rest}").into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        http::HeaderValue::from_static(protocol),
    );
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok(ws)
}

/// The writer side: encodes replies and sends frames through `send` in order.
pub async fn writer<F, Fut>(mut rx: mpsc::Receiver<Out>, mut send: F)
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut enc = Encoder::default();
    while let Some(o) = rx.recv().await {
        let bytes = match o {
            Out::Raw(b) => b,
            Out::Reply(stream) => enc.syn_reply(stream, false, &[]),
        };
        if !send(bytes).await {
            break;
        }
    }
}
