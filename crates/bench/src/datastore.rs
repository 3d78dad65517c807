//! `rkube-bench datastore`: the embedded store beside a real etcd on the same disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use rkube_store::{
    EmbeddedOptions, EmbeddedStore, EtcdStore, KeySpan, RangeRequest, Store, WatchResponse,
};

/// One backend's figures.
#[derive(Default)]
struct Figures {
    puts_1: f64,
    puts_64: f64,
    range_ms: f64,
    watch_p50_ms: f64,
    watch_p99_ms: f64,
}

pub async fn datastore(
    dir: PathBuf,
    etcd_endpoint: Option<String>,
    scale: f64,
) -> anyhow::Result<()> {
    let n = |x: f64| ((x * scale) as usize).max(1);
    let tmp = tempfile::Builder::new()
        .prefix("rkube-bench-")
        .tempdir_in(&dir)
        .context("bench dir")?;
    println!(
        "datastore benchmark: stores under {} ({} cores)",
        dir.display(),
        num_cpus()
    );

    let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(
        tmp.path().join("embedded"),
        EmbeddedOptions::default(),
    )?);
    eprintln!("embedded store ...");
    let e = measure(embedded.clone(), &n).await?;
    drop(embedded);

    let _etcd;
    let endpoint = match etcd_endpoint {
        Some(ep) => ep,
        None => {
            _etcd = rkube_testkit::Etcd::start_in(tmp.path()).map_err(anyhow::Error::msg)?;
            _etcd.endpoint.clone()
        }
    };
    eprintln!("etcd at {endpoint} ...");
    let etcd: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[endpoint]).await?);
    let d = measure(etcd, &n).await?;

    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.1}x", a / b)
        } else {
            "-".into()
        }
    };
    println!();
    println!("| figure | embedded | etcd | embedded / etcd |");
    println!("|---|---:|---:|---:|");
    println!(
        "| 1 KiB durable puts/s, 1 writer | {:.0} | {:.0} | {} |",
        e.puts_1,
        d.puts_1,
        ratio(e.puts_1, d.puts_1)
    );
    println!(
        "| 1 KiB durable puts/s, 64 writers | {:.0} | {:.0} | {} |",
        e.puts_64,
        d.puts_64,
        ratio(e.puts_64, d.puts_64)
    );
    println!(
        "| range of 10,000 keys, ms | {:.1} | {:.1} | {} |",
        e.range_ms,
        d.range_ms,
        ratio(d.range_ms, e.range_ms)
    );
    println!(
        "| watch delivery, 1,000 watchers, p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | |",
        e.watch_p50_ms, e.watch_p99_ms, d.watch_p50_ms, d.watch_p99_ms
    );
    println!();
    println!("(range: embedded / etcd is etcd's time over the embedded store's; watch: from the write call to the event in each watcher)");
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kib_value(i: usize) -> Bytes {
    let mut v = format!("{i:>16}").into_bytes();
    v.resize(1024, b'x');
    Bytes::from(v)
}

async fn measure(s: Arc<dyn Store>, n: &impl Fn(f64) -> usize) -> anyhow::Result<Figures> {
    let mut f = Figures::default();

    // Durable puts, one writer.
    let count = n(2000.0);
    let start = Instant::now();
    for i in 0..count {
        s.create(format!("/bench/one/{i:08}").as_bytes(), kib_value(i), None)
            .await?;
    }
    f.puts_1 = count as f64 / start.elapsed().as_secs_f64();
    eprintln!("  1 writer: {:.0} puts/s", f.puts_1);

    // Durable puts, 64 writers.
    let per = n(400.0);
    let start = Instant::now();
    parallel_puts(&s, 64, 64 * per, "/bench/many/").await?;
    f.puts_64 = (64 * per) as f64 / start.elapsed().as_secs_f64();
    eprintln!("  64 writers: {:.0} puts/s", f.puts_64);

    // Range of 10,000 keys (1 KiB each), median of 5.
    let keys = n(10_000.0);
    parallel_puts(&s, 16, keys, "/bench/range/").await?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let r = s.range(RangeRequest::prefix("/bench/range/")).await?;
        times.push(start.elapsed());
        anyhow::ensure!(
            r.kvs.len() == keys,
            "range returned {} keys, expected {keys}",
            r.kvs.len()
        );
    }
    times.sort();
    f.range_ms = times[2].as_secs_f64() * 1000.0;
    eprintln!("  range: {:.1} ms", f.range_ms);

    // Watch delivery latency with 1,000 watchers.
    let (p50, p99) = watch_latency(s.clone(), n(1000.0), n(200.0)).await?;
    f.watch_p50_ms = p50;
    f.watch_p99_ms = p99;
    eprintln!("  watch: p50 {p50:.2} ms, p99 {p99:.2} ms");
    Ok(f)
}

/// Creates `count` 1 KiB keys `PREFIX{i:08}` from `writers` concurrent tasks.
async fn parallel_puts(
    s: &Arc<dyn Store>,
    writers: usize,
    count: usize,
    prefix: &'static str,
) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in (w..count).step_by(writers) {
                    s.create(format!("{prefix}{i:08}").as_bytes(), kib_value(i), None)
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Starts `watchers` watches, makes `writes` paced writes whose values carry their start
/// time, and returns the p50 and p99 of write-start → event-received, in ms.
async fn watch_latency(
    s: Arc<dyn Store>,
    watchers: usize,
    writes: usize,
) -> anyhow::Result<(f64, f64)> {
    let base = Instant::now();
    let from = s.current_revision().await?;
    let mut handles = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let mut w = s.watch(KeySpan::prefix("/bench/watch/"), from).await?;
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(writes);
            while lat.len() < writes {
                match tokio::time::timeout(Duration::from_secs(60), w.next()).await {
                    Ok(Some(Ok(WatchResponse::Events(ev)))) => {
                        let now = base.elapsed().as_nanos() as u64;
                        for e in ev {
                            let sent =
                                u64::from_le_bytes(e.kv.value[..8].try_into().unwrap_or_default());
                            lat.push(now.saturating_sub(sent));
                        }
                    }
                    Ok(Some(Ok(WatchResponse::Progress(_)))) => {}
                    other => anyhow::bail!("watch stopped after {} events: {other:?}", lat.len()),
                }
            }
            Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..writes {
        let mut v = (base.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        v.resize(128, b'w');
        s.create(
            format!("/bench/watch/{i:08}").as_bytes(),
            Bytes::from(v),
            None,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = Vec::with_capacity(watchers * writes);
    for h in handles {
        all.extend(h.await??);
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1e6;
    Ok((pct(0.50), pct(0.99)))
}
