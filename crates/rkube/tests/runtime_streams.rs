//! The runtime's exec, attach and port-forward (CRI calls and the WebSocket streaming
//! server), stats, resource updates and log reopening, against real containers. Root only.

mod cri_node;

use std::time::{Duration, Instant};

use cri_node::*;
use futures::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: &str, protocol: &str) -> Ws {
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], protocol);
    ws
}

fn frame(ch: u8, data: &[u8]) -> Message {
    let mut v = vec![ch];
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// What a session sent, by channel, until it closed.
#[derive(Default, Debug)]
struct Collected {
    channels: std::collections::BTreeMap<u8, Vec<u8>>,
}

impl Collected {
    fn text(&self, ch: u8) -> String {
        String::from_utf8_lossy(self.channels.get(&ch).map(|v| &v[..]).unwrap_or(&[])).into()
    }
    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.text(3)).unwrap_or_default()
    }
}

async fn collect(ws: &mut Ws) -> Collected {
    let mut c = Collected::default();
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                if let Some((ch, rest)) = b.split_first() {
                    c.channels.entry(*ch).or_default().extend_from_slice(rest);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the session ended");
    c
}

/// Reads channel `ch` until its text contains `want` (sending `poke` every half second,
/// if given); what was read.
async fn read_until(ws: &mut Ws, ch: u8, want: &str, poke: Option<Message>) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !String::from_utf8_lossy(&got).contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} on channel {ch}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        if let Some(p) = &poke {
            ws.send(p.clone()).await.unwrap();
        }
        let until = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(until);
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Binary(b))) if b.first() == Some(&ch) => got.extend_from_slice(&b[1..]),
                    Some(Ok(_)) => {}
                    _ => panic!("the session closed before {want:?}; got {:?}", String::from_utf8_lossy(&got)),
                },
                _ = &mut until => break,
            }
        }
    }
    String::from_utf8_lossy(&got).into()
}

fn resize(w: u16, h: u16) -> Message {
    frame(4, format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes())
}

/// The streams a request asks for (stdout always).
struct Io {
    tty: bool,
    stdin: bool,
    stderr: bool,
}

fn exec_req(id: String, cmd: Vec<String>, io: Io) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id,
        cmd,
        tty: io.tty,
        stdin: io.stdin,
        stdout: true,
        stderr: io.stderr,
    }
}

fn attach_req(id: String, io: Io) -> cri::AttachRequest {
    cri::AttachRequest {
        container_id: id,
        stdin: io.stdin,
        tty: io.tty,
        stdout: true,
        stderr: io.stderr,
    }
}

async fn exec_url(c: &mut RuntimeServiceClient<Channel>, req: cri::ExecRequest) -> String {
    c.exec(req).await.unwrap().into_inner().url
}

#[test]
fn exec_attach_port_forward_stats_and_updates() {
    if !root_or_skip("exec_attach_port_forward_stats_and_updates") {
        return;
    }
    let node = Node::new(14);
    node.rt.block_on(async {
        let mut c = node.client().await;
        // Ready, with a pod CIDR and the CNI plugins.
        let st = c
            .status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
        let conds: Vec<(String, bool)> = st
            .status
            .unwrap()
            .conditions
            .into_iter()
            .map(|c| (c.r#type, c.status))
            .collect();
        assert_eq!(
            conds,
            vec![("RuntimeReady".into(), true), ("NetworkReady".into(), true)]
        );

        let mut cfg = sandbox_config(&node, "streams");
        // A hostPort: any free port here.
        let host_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cfg.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: host_port as i32,
            host_ip: String::new(),
        }];
        let pod = run_pod(&mut c, &cfg).await;
        let web = run_container(
            &mut c,
            &pod,
            &cfg,
            container_config(
                "web",
                "echo hello-stream > /var/www/index.html; exec httpd -f -p 8080 -h /var/www",
            ),
        )
        .await;

        // ExecSync: both streams and the exit code.
        let out = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: web.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo out; echo err >&2; exit 3".into(),
                ],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
            (&b"out\n"[..], &b"err\n"[..], 3)
        );
        // A timeout ends in DeadlineExceeded, and the process is gone.
        let err = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: web.clone(),
                cmd: vec!["sleep".into(), "31".into()],
                timeout: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        let ps = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: web.clone(),
                cmd: vec!["ps".into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            !String::from_utf8_lossy(&ps.stdout).contains("sleep 31"),
            "{}",
            String::from_utf8_lossy(&ps.stdout)
        );
        // Bad requests.
        let err = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: "nope".into(),
                cmd: vec!["true".into()],
                timeout: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let err = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: web.clone(),
                cmd: vec![],
                timeout: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = c
            .exec(exec_req(
                web.clone(),
                vec!["sh".into()],
                Io {
                    tty: true,
                    stdin: true,
                    stderr: true,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        // Streaming exec on pipes: stdin in, its end (v5 close), both outputs, exit code.
        let url = exec_url(
            &mut c,
            exec_req(
                web.clone(),
                vec!["sh".into(), "-c".into(), "cat; echo bye >&2; exit 5".into()],
                Io {
                    tty: false,
                    stdin: true,
                    stderr: true,
                },
            ),
        )
        .await;
        let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
        ws.send(frame(0, b"hello\n")).await.unwrap();
        ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
        let got = collect(&mut ws).await;
        assert_eq!(
            (got.text(1).as_str(), got.text(2).as_str()),
            ("hello\n", "bye\n"),
            "{got:?}"
        );
        let exit = got.status();
        assert_eq!(exit["reason"], "NonZeroExitCode", "{exit}");
        assert_eq!(exit["details"]["causes"][0]["message"], "5", "{exit}");
        // The URL was for one use.
        let again = reqwest::get(&url).await.unwrap();
        assert_eq!(again.status(), 404);
        // v4, success.
        let url = exec_url(
            &mut c,
            exec_req(
                web.clone(),
                vec!["hostname".into()],
                Io {
                    tty: false,
                    stdin: false,
                    stderr: true,
                },
            ),
        )
        .await;
        let got = collect(&mut ws_connect(&url, "v4.channel.k8s.io").await).await;
        assert_eq!(got.text(1), "streams\n");
        assert_eq!(got.status()["status"], "Success");
        // Not a WebSocket: a clear 400.
        let url = exec_url(
            &mut c,
            exec_req(
                web.clone(),
                vec!["true".into()],
                Io {
                    tty: false,
                    stdin: false,
                    stderr: false,
                },
            ),
        )
        .await;
        let plain = reqwest::get(&url).await.unwrap();
        assert_eq!(plain.status(), 400);
        assert!(plain.text().await.unwrap().contains("v5.channel.k8s.io"));

        // Streaming exec on a terminal, with resize.
        let url = exec_url(
            &mut c,
            exec_req(
                web.clone(),
                vec!["sh".into()],
                Io {
                    tty: true,
                    stdin: true,
                    stderr: false,
                },
            ),
        )
        .await;
        let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
        ws.send(resize(123, 45)).await.unwrap();
        read_until(&mut ws, 1, "45 123", Some(frame(0, b"stty size\n"))).await;
        ws.send(frame(0, b"exit 7\n")).await.unwrap();
        let got = collect(&mut ws).await;
        assert_eq!(
            got.status()["details"]["causes"][0]["message"],
            "7",
            "{got:?}"
        );

        // Attach to a container's stdin and stdout (no terminal).
        let mut talk = container_config("talk", "while read l; do echo got-$l; done");
        talk.stdin = true;
        let talk = run_container(&mut c, &pod, &cfg, talk).await;
        let url = c
            .attach(attach_req(
                talk.clone(),
                Io {
                    tty: false,
                    stdin: true,
                    stderr: true,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .url;
        let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
        ws.send(frame(0, b"one\n")).await.unwrap();
        read_until(&mut ws, 1, "got-one", None).await;
        drop(ws);
        let log = node.logs().join("streams/talk/0.log");
        assert!(
            log_lines(&log).iter().any(|l| l.2 == "got-one"),
            "{:?}",
            log_lines(&log)
        );
        // The kubelet rotates the log and asks for a reopen: new output goes to a new file.
        std::fs::rename(&log, log.with_extension("log.1")).unwrap();
        c.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: talk.clone(),
        })
        .await
        .unwrap();
        assert!(log.exists(), "reopen created the new log");
        let url = c
            .attach(attach_req(
                talk.clone(),
                Io {
                    tty: false,
                    stdin: true,
                    stderr: false,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .url;
        let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
        ws.send(frame(0, b"two\n")).await.unwrap();
        read_until(&mut ws, 1, "got-two", None).await;
        drop(ws);
        let lines: Vec<String> = log_lines(&log).into_iter().map(|l| l.2).collect();
        assert_eq!(lines, vec!["got-two".to_string()]);

        // Attach to a terminal container: resize, input, and the end when it exits.
        let mut term = container_config("term", "");
        term.command = vec!["sh".into()];
        term.tty = true;
        term.stdin = true;
        let term = run_container(&mut c, &pod, &cfg, term).await;
        let url = c
            .attach(attach_req(
                term.clone(),
                Io {
                    tty: true,
                    stdin: true,
                    stderr: false,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .url;
        let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
        ws.send(resize(99, 33)).await.unwrap();
        read_until(&mut ws, 1, "33 99", Some(frame(0, b"stty size\n"))).await;
        ws.send(frame(0, b"exit 4\n")).await.unwrap();
        collect(&mut ws).await;
        let st = wait_exit(&mut c, &term).await;
        assert_eq!(st.exit_code, 4, "{st:?}");

        // Port forwarding into the pod's network namespace.
        let url = c
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![8080, 9],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
        ws.send(frame(0, b"GET / HTTP/1.0\r\n\r\n")).await.unwrap();
        let got = collect(&mut ws).await;
        let data = got.channels.get(&0).cloned().unwrap_or_default();
        assert_eq!(&data[..2], &8080u16.to_le_bytes(), "the port comes first");
        assert!(
            String::from_utf8_lossy(&data).contains("hello-stream"),
            "{got:?}"
        );
        let refused = got.channels.get(&3).cloned().unwrap_or_default();
        assert_eq!(&refused[..2], &9u16.to_le_bytes());
        assert!(
            String::from_utf8_lossy(&refused).contains("error forwarding port 9"),
            "{got:?}"
        );

        // Stats from the cgroups, the writable layer and the pod's interfaces.
        let s = c
            .container_stats(cri::ContainerStatsRequest {
                container_id: web.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let v = |x: Option<cri::UInt64Value>| x.map(|v| v.value).unwrap_or(0);
        assert!(v(s.cpu.unwrap().usage_core_nano_seconds) > 0, "{s:?}");
        assert!(v(s.memory.unwrap().working_set_bytes) > 0, "{s:?}");
        assert!(v(s.writable_layer.clone().unwrap().used_bytes) > 0, "{s:?}");
        // A second sample gives a CPU rate.
        let s2 = c
            .container_stats(cri::ContainerStatsRequest {
                container_id: web.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert!(s2.cpu.unwrap().usage_nano_cores.is_some());
        let all = c
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .stats;
        let ids: Vec<String> = all
            .iter()
            .map(|s| s.attributes.clone().unwrap().id)
            .collect();
        assert!(
            ids.contains(&web) && ids.contains(&talk) && !ids.contains(&term),
            "running ones only: {ids:?}"
        );
        let ps = c
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let linux = ps.linux.unwrap();
        let eth0 = linux.network.unwrap().default_interface.expect("eth0");
        assert!(v(eth0.rx_bytes) > 0 && v(eth0.tx_bytes) > 0, "{eth0:?}");
        assert!(v(linux.process.unwrap().process_count) >= 2);
        assert_eq!(linux.containers.len(), 2);

        // New limits on a running container, in its cgroup and its status.
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: web.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_shares: 256,
                ..Default::default()
            }),
            windows: None,
            annotations: Default::default(),
        })
        .await
        .unwrap();
        let cg = format!("rkube-test/streams-{}/{web}", std::process::id());
        let read = |p: String| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
            assert_eq!(
                read(format!("/sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes")),
                (96u64 << 20).to_string()
            );
            assert_eq!(read(format!("/sys/fs/cgroup/cpu/{cg}/cpu.shares")), "256");
        } else {
            assert_eq!(
                read(format!("/sys/fs/cgroup/{cg}/memory.max")),
                (96u64 << 20).to_string()
            );
        }
        let st = status(&mut c, &web).await;
        assert_eq!(
            st.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
            96 << 20
        );
        // The hostPort reaches the pod, from 127.0.0.1 too; a second pod cannot take it.
        let body = retry_http(&format!("127.0.0.1:{host_port}"));
        assert!(body.contains("hello-stream"), "{body}");
        let mut other = sandbox_config(&node, "other");
        other.port_mappings = cfg.port_mappings.clone();
        let err = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(other),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
        // Streams to a container that is not running are refused up front.
        let err = c
            .exec(exec_req(
                term.clone(),
                vec!["true".into()],
                Io {
                    tty: false,
                    stdin: false,
                    stderr: false,
                },
            ))
            .await
            .unwrap_err();
        assert!(err.message().contains("not running"), "{err:?}");
        // Removing the pod removes its host port rules.
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        let table = rkube_runtime::hostport::table(&node.bridge);
        let listed = std::process::Command::new("nft")
            .args(["list", "table", "ip", &table])
            .output()
            .unwrap();
        assert!(
            !listed.status.success(),
            "{table} left: {}",
            String::from_utf8_lossy(&listed.stdout)
        );
        assert!(http_get(&format!("127.0.0.1:{host_port}")).is_none());
    });
}
