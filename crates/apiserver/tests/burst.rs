//! A burst of large writes with a watcher that stops reading: the server's memory stays
//! within its budgets (store history, watch-cache history, a watcher's backlog) instead
//! of holding every change for the retention period. The server runs in this process,
//! alone, so the process's RSS is the server's.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{connect_tls, tls_config, TestServer};
use serde_json::json;

fn rss_mib() -> u64 {
    common::rss_bytes() >> 20
}

#[test]
fn a_write_burst_with_a_stalled_watcher_stays_within_budget() {
    let srv = TestServer::start();
    let http = srv.client();
    let url = format!("{}/api/v1/namespaces/default/configmaps", srv.url());
    let mib = 1 << 20;
    let cm = |i: usize| {
        let mut data = "x".repeat(mib - 16);
        data.push_str(&format!("{i:>16}"));
        json!({"metadata": {"name": "big"}, "data": {"k": data}})
    };
    let r = http.post(&url).json(&cm(0)).send().unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // A watcher that reads its response headers, then nothing more.
    let (_, cert, key) = srv.pems();
    let mut stalled = connect_tls(&srv, tls_config(&srv, Some((&cert, &key))));
    stalled
        .write_all(b"GET /api/v1/namespaces/default/configmaps?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let before = rss_mib();
    let mut peak = before;
    for i in 1..=300 {
        let r = http.put(format!("{url}/big")).json(&cm(i)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "update {i}");
        if i % 10 == 0 {
            peak = peak.max(rss_mib());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_mib();
    eprintln!(
        "300 x 1 MiB updates, one stalled watcher: RSS {before} MiB before, peak {peak}, after {after}"
    );
    // Budgets: 128 MiB of store history, 64 MiB of watch-cache history, 32 MiB of
    // backlog per watcher, plus buffers and the allocator's slack. Without them the
    // burst keeps all 300 MiB twice over, and the stalled watcher all of it again.
    assert!(
        peak - before < 400,
        "RSS grew by {} MiB during 300 MiB of writes",
        peak - before
    );
    // The stalled watcher was let go; the data is intact.
    let r = http.get(format!("{url}/big")).send().unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert!(v["data"]["k"].as_str().unwrap().ends_with("300"));
}
