//! `rkube-bench apiserver`: the API server's figures through the real API, from a kube-rs
//! client, against a server process of this binary on an embedded store.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

/// A server process (the scheduler disabled: benchmarks start their own), killed on drop.
pub(crate) struct ServerProcess {
    pub child: Child,
    pub client: kube::Client,
    /// A plain HTTPS client with the admin certificate, and the server's URL.
    http: reqwest::Client,
    url: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn rss_mib(&self) -> f64 {
        rss_of(self.child.id()) as f64 / 1024.0
    }
}

/// VmRSS of a process in KiB.
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(String::from)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

pub(crate) async fn start_server(dir: &Path) -> anyhow::Result<ServerProcess> {
    start_server_with(dir, &["--disable-agent", "--disable-scheduler"]).await
}

/// A server process on `dir/data` with these extra flags.
pub(crate) async fn start_server_with(dir: &Path, extra: &[&str]) -> anyhow::Result<ServerProcess> {
    let kubeconfig = dir.join("kubeconfig.yaml");
    let mut child = Command::new(crate::rkube_binary())
        .args([
            "server",
            "--data-dir",
            dir.join("data").to_str().unwrap_or_default(),
            "--bind-address",
            "127.0.0.1",
        ])
        .args([
            "--https-listen-port",
            "0",
            "--write-kubeconfig",
            kubeconfig.to_str().unwrap_or_default(),
        ])
        .args(extra)
        .env("RKUBE_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the server")?;
    let stderr = child.stderr.take().context("server stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("API at") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .context("the server did not start")?;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let url = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .context("no server in the kubeconfig")?;
    let tls = dir.join("data/server/tls");
    let ca = std::fs::read(tls.join("server-ca.crt"))?;
    let mut identity = std::fs::read(tls.join("client-admin.crt"))?;
    identity.extend(std::fs::read(tls.join("client-admin.key"))?);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .identity(reqwest::Identity::from_pem(&identity)?)
        .build()?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    config.read_timeout = Some(Duration::from_secs(600));
    let client = kube::Client::try_from(config)?;
    Ok(ServerProcess {
        child,
        client,
        http,
        url,
    })
}

/// The `p` quantile of sorted latencies, in ms, by nearest rank: the smallest sample with
/// at least `p` of all samples at or below it (upstream's e2e framework and clusterloader2
/// take their pod startup percentiles this way; of 20 pods, p50 is the 10th).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Runs `total` operations over `concurrency` tasks; returns ops/s and sorted latencies.
async fn load<F, Fut>(total: usize, concurrency: usize, op: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return lat;
                }
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench", "shard": (name.bytes().map(u32::from).sum::<u32>() % 7).to_string()}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"],
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))
    .expect("pod literal")
}

pub async fn apiserver(dir: PathBuf, scale: f64) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let n = |x: f64| ((x * scale) as usize).max(1);
    let tmp = tempfile::Builder::new()
        .prefix("rkube-bench-api-")
        .tempdir_in(&dir)?;
    let srv = start_server(tmp.path()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = srv.rss_mib();
    let cms: Api<ConfigMap> = Api::namespaced(srv.client.clone(), "default");
    println!(
        "apiserver benchmark: server process on an embedded store in {} ({} cores)",
        tmp.path().display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("{:<58} {:>12}", "figure", "value");
    println!("{:<58} {:>12.1}", "server RSS idle (MiB)", idle_rss);

    // Creates and gets with 64 concurrent clients.
    let creates = n(20_000.0);
    let api = cms.clone();
    let (rate, lat) = load(creates, 64, move |i| {
        let api = api.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}),
            )
            .expect("literal");
            api.create(&PostParams::default(), &cm)
                .await
                .expect("create");
        }
    })
    .await;
    println!("{:<58} {:>12.0}", "creates/s, 64 concurrent clients", rate);
    println!(
        "{:<58} {:>6.2}/{:>5.2}",
        "  create latency p50/p99 (ms)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let api = cms.clone();
    let (rate, lat) = load(creates, 64, move |i| {
        let api = api.clone();
        async move {
            api.get(&format!("cm-{}", i % creates)).await.expect("get");
        }
    })
    .await;
    println!("{:<58} {:>12.0}", "gets/s, 64 concurrent clients", rate);
    println!(
        "{:<58} {:>6.2}/{:>5.2}",
        "  get latency p50/p99 (ms)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // Mutating latency at a steady 1,000 writes/s.
    let secs = (10.0 * scale).max(1.0) as usize;
    let mut lat = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..secs * 1000 {
        tick.tick().await;
        let (api, tx) = (cms.clone(), tx.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let p = Patch::Merge(json!({"data": {"k": i.to_string()}}));
            let ok = api
                .patch(&format!("cm-{}", i % creates), &PatchParams::default(), &p)
                .await
                .is_ok();
            let _ = tx.send((ok, t.elapsed()));
        });
    }
    drop(tx);
    let mut failed = 0;
    while let Some((ok, d)) = rx.recv().await {
        if ok {
            lat.push(d);
        } else {
            failed += 1;
        }
    }
    lat.sort();
    println!(
        "{:<58} {:>6.2}/{:>5.2}",
        "mutating latency p50/p99 at 1,000 writes/s (ms)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    if failed > 0 {
        println!("  ({failed} writes failed)");
    }

    // Watch fan-out: 1,000 watchers, delivery latency of each write to every watcher.
    let watchers = n(1000.0).min(1000);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let ns_api: Api<ConfigMap> = Api::namespaced(srv.client.clone(), "kube-public");
    let rv = ns_api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let (api, tx, rv) = (ns_api.clone(), tx.clone(), rv.clone());
        handles.push(tokio::spawn(async move {
            let Ok(stream) = api.watch(&WatchParams::default().timeout(290), &rv).await else {
                return;
            };
            let mut stream = stream.boxed();
            while let Some(Ok(ev)) = stream.next().await {
                if let WatchEvent::Added(o) = ev {
                    let _ = tx.send((o.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = 20;
    let mut sent = std::collections::HashMap::new();
    for i in 0..writes {
        let name = format!("fan-{i}");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        let t = Instant::now();
        ns_api.create(&PostParams::default(), &cm).await?;
        sent.insert(name, t);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lat.len() < watchers * writes && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((name, at))) => {
                if let Some(t) = sent.get(&name) {
                    lat.push(at.saturating_duration_since(*t));
                }
            }
            _ => break,
        }
    }
    for h in handles {
        h.abort();
    }
    lat.sort();
    println!(
        "{:<58} {:>6.2}/{:>5.2}",
        format!("watch delivery p50/p99, {watchers} watchers (ms)"),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "{:<58} {:>12}",
        "  events delivered / expected",
        format!("{}/{}", lat.len(), watchers * writes)
    );

    // LIST of 100,000 pods.
    let pods_n = n(100_000.0);
    let pods: Api<Pod> = Api::namespaced(srv.client.clone(), "default");
    let api = pods.clone();
    let (rate, _) = load(pods_n, 64, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &pod(&format!("pod-{i:06}")))
                .await
                .expect("create pod");
        }
    })
    .await;
    println!(
        "{:<58} {:>12.0}",
        format!("pod creates/s while loading {pods_n} pods"),
        rate
    );
    // The server's part: the whole response received by a plain HTTPS client that
    // counts the bytes and keeps none.
    let mut raw_times = Vec::new();
    let mut bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let mut resp = srv
            .http
            .get(format!("{}/api/v1/namespaces/default/pods", srv.url))
            .send()
            .await?
            .error_for_status()?;
        bytes = 0;
        while let Some(chunk) = resp.chunk().await? {
            bytes += chunk.len();
        }
        raw_times.push(t.elapsed());
    }
    raw_times.sort();
    println!(
        "{:<58} {:>12.0}",
        format!(
            "LIST {pods_n} pods ({} MiB), received by HTTPS client, median of 3 (ms)",
            bytes >> 20
        ),
        raw_times[1].as_secs_f64() * 1000.0
    );
    // The same through kube-rs, as bytes (hyper + rustls + collected into one String).
    let mut raw_times = Vec::new();
    for _ in 0..3 {
        let req = http::Request::get("/api/v1/namespaces/default/pods").body(Vec::new())?;
        let t = Instant::now();
        srv.client.request_text(req).await?;
        raw_times.push(t.elapsed());
    }
    raw_times.sort();
    println!(
        "{:<58} {:>12.0}",
        format!("LIST {pods_n} pods as one string by kube-rs, median of 3 (ms)"),
        raw_times[1].as_secs_f64() * 1000.0
    );
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let list = pods.list(&ListParams::default()).await?;
        times.push(t.elapsed());
        anyhow::ensure!(
            list.items.len() == pods_n,
            "listed {} pods, expected {pods_n}",
            list.items.len()
        );
    }
    times.sort();
    println!(
        "{:<58} {:>12.0}",
        format!("LIST {pods_n} pods decoded by kube-rs, median of 3 (ms)"),
        times[1].as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let sel = pods.list(&ListParams::default().labels("shard=3")).await?;
    println!(
        "{:<58} {:>12.0}",
        format!(
            "LIST with a label selector ({} of {pods_n} match) (ms)",
            sel.items.len()
        ),
        t.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "{:<58} {:>12.1}",
        format!("server RSS holding {pods_n} pods (MiB)"),
        srv.rss_mib()
    );
    drop(srv);
    burst(&dir).await
}

/// The "burst" figure: server RSS before, at its peak in each of two rounds of 300
/// updates of a 1 MiB ConfigMap, and after, while one watcher has stopped reading (a fresh server, so nothing else is
/// in its memory). Budgets: 128 MiB of store history, 64 MiB of watch-cache history per
/// resource, 32 MiB of backlog per watcher.
async fn burst(dir: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("rkube-bench-burst-")
        .tempdir_in(dir)?;
    let srv = start_server(tmp.path()).await?;
    let url = format!("{}/api/v1/namespaces/default/configmaps", srv.url);
    let cm = |i: usize| {
        let mut data = "x".repeat((1 << 20) - 16);
        data.push_str(&format!("{i:>16}"));
        json!({"metadata": {"name": "big"}, "data": {"k": data}})
    };
    let r = srv.http.post(&url).json(&cm(0)).send().await?;
    anyhow::ensure!(r.status().as_u16() == 201, "create: {}", r.status());
    // Headers read, body never: the server's writes to it back up.
    let stalled = srv.http.get(format!("{url}?watch=1")).send().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = srv.rss_mib();
    // Two rounds of 300: memory that the budgets bound stops growing after the first.
    let mut peaks = [before; 2];
    let t = Instant::now();
    for i in 1..=600 {
        let r = srv
            .http
            .put(format!("{url}/big"))
            .json(&cm(i))
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 200, "update {i}: {}", r.status());
        let p = &mut peaks[(i - 1) / 300];
        *p = p.max(srv.rss_mib());
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = srv.rss_mib();
    drop(stalled);
    println!(
        "{:<58} {:>12.1}",
        "burst: 2 x 300 x 1 MiB updates, one stalled watcher (s)",
        took.as_secs_f64()
    );
    println!("{:<58} {:>12.1}", "burst: server RSS before (MiB)", before);
    println!(
        "{:<58} {:>12.1}",
        "burst: server RSS peak, updates 1-300 (MiB)", peaks[0]
    );
    println!(
        "{:<58} {:>12.1}",
        "burst: server RSS peak, updates 301-600 (MiB)", peaks[1]
    );
    println!(
        "{:<58} {:>12.1}",
        "burst: server RSS 2 s after (MiB)", after
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let twenty = ms(&(1..=20).collect::<Vec<_>>());
        assert_eq!(percentile(&twenty, 0.5), 10.0);
        assert_eq!(percentile(&twenty, 0.9), 18.0);
        assert_eq!(percentile(&twenty, 0.99), 20.0);
        assert_eq!(percentile(&twenty, 1.0), 20.0);
        assert_eq!(percentile(&ms(&[7]), 0.5), 7.0);
        assert_eq!(percentile(&ms(&[7, 9, 30]), 0.5), 9.0);
        assert_eq!(percentile(&ms(&[7, 9, 30]), 0.0), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let many = ms(&(1..=10_000).collect::<Vec<_>>());
        assert_eq!(percentile(&many, 0.99), 9_900.0);
    }
}
