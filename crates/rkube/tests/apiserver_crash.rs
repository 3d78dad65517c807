//! Kill -9 the server during a stream of creates: after a restart every acknowledged
//! object is there and resourceVersions keep increasing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

const WRITERS: usize = 8;
const ROUNDS: usize = 3;

struct Server {
    child: Child,
    url: String,
    client: reqwest::blocking::Client,
    /// The CA and admin certificate the kubeconfig carried.
    credentials: (Vec<u8>, Vec<u8>),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path) -> Server {
    let kubeconfig = data.join("kubeconfig.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rkube"))
        .args([
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--bind-address",
            "127.0.0.1",
        ])
        .args([
            "--https-listen-port",
            "0",
            "--write-kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--disable-agent",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("API at ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server started");
    let cfg = std::fs::read_to_string(&kubeconfig).unwrap();
    let field = |name: &str| {
        let line = cfg
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap();
        let b64 = line.split_once(": ").unwrap().1.trim();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let (ca, cert, key) = (
        field("certificate-authority-data"),
        field("client-certificate-data"),
        field("client-key-data"),
    );
    let credentials = (ca.clone(), cert.clone());
    let identity = reqwest::Identity::from_pem(&[cert, key].concat()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .identity(identity)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Server {
        child,
        url,
        client,
        credentials,
    }
}

#[test]
fn acknowledged_creates_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut last_rv = 0;
    let mut first_credentials = None;
    for round in 0..ROUNDS {
        let mut server = start(&data);
        // A restart keeps the CA and the admin certificate: old kubeconfigs keep working.
        let first = first_credentials.get_or_insert_with(|| server.credentials.clone());
        assert_eq!(
            *first, server.credentials,
            "round {round}: the restart kept the certificates"
        );
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, url, acked) = (server.client.clone(), server.url.clone(), acked.clone());
            writers.push(std::thread::spawn(move || {
                for i in 0.. {
                    let name = format!("r{round}-w{w}-{i}");
                    let body =
                        json!({"metadata": {"name": name}, "data": {"round": round.to_string()}});
                    let resp = client
                        .post(format!("{url}/api/v1/namespaces/default/configmaps"))
                        .json(&body)
                        .send();
                    match resp {
                        Ok(r) if r.status().as_u16() == 201 => {
                            let v: Value = r.json().unwrap();
                            let rv = v["metadata"]["resourceVersion"]
                                .as_str()
                                .unwrap()
                                .parse()
                                .unwrap();
                            acked.lock().unwrap().push((name, rv));
                        }
                        Ok(r) => panic!("create answered {}", r.status()),
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(500 + fastrand::u64(0..1000)));
        // SIGKILL: no chance to flush anything.
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for w in writers {
            w.join().unwrap();
        }
        drop(server);

        let server = start(&data);
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: some creates were acknowledged"
        );
        let list: Value = server
            .client
            .get(format!(
                "{}/api/v1/namespaces/default/configmaps",
                server.url
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let present: std::collections::HashMap<String, i64> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let m = &i["metadata"];
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["resourceVersion"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        for (name, rv) in &acked {
            assert_eq!(
                present.get(name),
                Some(rv),
                "round {round}: acknowledged {name} at {rv}"
            );
        }
        let max_acked = acked.iter().map(|(_, rv)| *rv).max().unwrap();
        let r: Value = server
            .client
            .post(format!(
                "{}/api/v1/namespaces/default/configmaps",
                server.url
            ))
            .json(&json!({"metadata": {"generateName": "after-"}}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let rv: i64 = r["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            rv > max_acked && rv > last_rv,
            "round {round}: resourceVersion {rv} after {max_acked}"
        );
        last_rv = rv;
        eprintln!(
            "round {round}: {} acknowledged creates, all present; next resourceVersion {rv}",
            acked.len()
        );
    }
}
