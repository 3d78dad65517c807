//! WATCH semantics through the shared fan-out: many watchers see the same changes,
//! selectors turn objects leaving the selection into DELETED, a compacted
//! resourceVersion is 410, and "0" starts with the current objects.

mod common;

use std::io::{BufRead, BufReader};

use common::TestServer;
use serde_json::{json, Value};

/// Event types and names of a watch that ends after `timeoutSeconds`.
fn events(c: &reqwest::blocking::Client, url: &str) -> Vec<(String, String)> {
    let r = c.get(url).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    BufReader::new(r)
        .lines()
        .map_while(Result::ok)
        .map(|l| {
            let v: Value = serde_json::from_str(&l).unwrap();
            let name = v["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let code = v["object"]["code"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_default();
            (
                v["type"].as_str().unwrap().to_string(),
                if name.is_empty() { code } else { name },
            )
        })
        .collect()
}

#[test]
fn watchers_share_events_and_selectors_filter_them() {
    let srv = TestServer::start();
    let c = srv.client();
    let base = format!("{}/api/v1/namespaces/default/configmaps", srv.url());
    let list: Value = c.get(&base).send().unwrap().json().unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let mut plain = Vec::new();
    for _ in 0..40 {
        let (c, url) = (
            c.clone(),
            format!("{base}?watch=1&resourceVersion={rv}&timeoutSeconds=3"),
        );
        plain.push(std::thread::spawn(move || events(&c, &url)));
    }
    let selected = {
        let (c, url) = (
            c.clone(),
            format!("{base}?watch=1&resourceVersion={rv}&timeoutSeconds=3&labelSelector=a%3Db"),
        );
        std::thread::spawn(move || events(&c, &url))
    };
    let other_ns = {
        let url = format!("{}/api/v1/namespaces/kube-public/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=3", srv.url());
        let c = c.clone();
        std::thread::spawn(move || events(&c, &url))
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let post = |body: Value| {
        assert_eq!(
            c.post(&base).json(&body).send().unwrap().status().as_u16(),
            201
        )
    };
    post(json!({"metadata": {"name": "x", "labels": {"a": "b"}}}));
    let patch = c
        .patch(format!("{base}/x"))
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"metadata": {"labels": {"a": "c"}}}"#)
        .send()
        .unwrap();
    assert_eq!(patch.status().as_u16(), 200);
    assert_eq!(
        c.delete(format!("{base}/x"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    let want: Vec<(String, String)> = [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for w in plain {
        assert_eq!(w.join().unwrap(), want);
    }
    let sel: Vec<(String, String)> =
        vec![("ADDED".into(), "x".into()), ("DELETED".into(), "x".into())];
    assert_eq!(
        selected.join().unwrap(),
        sel,
        "leaving the selection is a DELETED"
    );
    assert!(
        other_ns.join().unwrap().is_empty(),
        "other namespaces see nothing"
    );

    // "0": the current objects first.
    post(json!({"metadata": {"name": "y"}}));
    let got = events(
        &c,
        &format!("{base}?watch=1&resourceVersion=0&timeoutSeconds=1"),
    );
    assert_eq!(got, vec![("ADDED".to_string(), "y".to_string())]);

    // A resourceVersion behind the compaction point: an ERROR event with 410.
    let y: Value = c.get(format!("{base}/y")).send().unwrap().json().unwrap();
    let now: i64 = y["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    srv.compact(now);
    let got = events(
        &c,
        &format!("{base}?watch=1&resourceVersion={rv}&timeoutSeconds=1"),
    );
    assert_eq!(got, vec![("ERROR".to_string(), "410".to_string())]);
}
