//! Port forwarding over WebSocket (`v4.channel.k8s.io`): port i of the request gets data
//! channel 2i and error channel 2i+1; the first message on each starts with the port as a
//! little-endian u16. Connections go to localhost inside the pod's network namespace.

use std::net::TcpStream;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::channel::{message, Ws};
use crate::cri::Runtime;
use crate::Error;

/// The `port` query parameters of a port-forward URL.
pub fn query_ports(query: &str) -> Vec<i32> {
    form_pairs(query)
        .filter(|(k, _)| k == "port")
        .filter_map(|(_, v)| v.parse().ok())
        .collect()
}

fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        Some((k.to_string(), v.to_string()))
    })
}

/// Connects to `port` on localhost in the network namespace at `netns` (None: the host's).
pub fn connect_in(netns: Option<std::path::PathBuf>, port: u16) -> Result<TcpStream, Error> {
    crate::namespaces::in_netns(netns, move || {
        TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| Error::Io(format!("connecting to localhost:{port} in the pod"), e))
    })
}

/// Serves one WebSocket of forwarded ports until every connection has ended.
pub async fn serve(rt: Arc<Runtime>, ws: Ws, sandbox_id: &str, ports: Vec<i32>) {
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.send(super::channel::normal_close()).await;
    });
    let sandbox = rt.sandboxes.get(sandbox_id);
    let mut inputs: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, err) = ((2 * i) as u8, (2 * i + 1) as u8);
        let p = (*port as u16).to_le_bytes();
        let _ = out_tx.send(message(data, &p)).await;
        let _ = out_tx.send(message(err, &p)).await;
        let conn = match &sandbox {
            Err(e) => Err(Error::Format(e.to_string())),
            Ok(_) if !(1..=65535).contains(port) => {
                Err(Error::Format(format!("invalid port {port}")))
            }
            Ok(sb) => {
                let (ns, port) = (sb.netns.clone(), *port as u16);
                tokio::task::spawn_blocking(move || connect_in(ns, port))
                    .await
                    .unwrap_or_else(|e| Err(Error::Format(e.to_string())))
            }
        };
        let conn = match conn.and_then(|c| {
            c.set_nonblocking(true)
                .and_then(|_| tokio::net::TcpStream::from_std(c))
                .map_err(|e| Error::Io("port-forward socket".into(), e))
        }) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
                let _ = out_tx.send(message(err, msg.as_bytes())).await;
                inputs.push(None);
                continue;
            }
        };
        let (mut r, mut w) = conn.into_split();
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(in_tx));
        tokio::spawn(async move {
            while let Some(b) = in_rx.recv().await {
                if w.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        });
        let tx = out_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(message(data, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(out_tx);
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            let b = match m {
                Message::Close(_) => break,
                m => match super::channel::frame_bytes(m) {
                    Some(b) => b,
                    None => continue,
                },
            };
            let Some(&ch) = b.first() else { continue };
            if ch % 2 == 0 {
                if let Some(Some(tx)) = inputs.get((ch / 2) as usize) {
                    let _ = tx.send(b.slice(1..)).await;
                }
            }
        }
    });
    for t in tasks {
        let _ = t.await;
    }
    reader.abort();
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_from_the_query() {
        assert_eq!(
            super::query_ports("port=80&x=1&port=8080&port=bad"),
            vec![80, 8080]
        );
        assert!(super::query_ports("").is_empty());
    }
}
