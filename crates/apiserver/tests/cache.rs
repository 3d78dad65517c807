//! The watch cache: LIST and WATCH are served from memory, yet never older than a write
//! acknowledged to any client, even one acknowledged by another apiserver on the same
//! store (the HA case); resourceVersion semantics and paging across cache and store.

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use rkube_apiserver::{ApiServer, Config};
use serde_json::{json, Value};

/// A second apiserver on the first one's store, as two servers share etcd.
fn second_server(a: &TestServer, dir: &std::path::Path) -> ApiServer {
    a.rt.block_on(async {
        let mut config = Config::new(dir.join("server"));
        config.bind_address = "127.0.0.1".parse().unwrap();
        config.port = 0;
        ApiServer::start(config, a.store.clone()).await.unwrap()
    })
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn rv(v: &Value) -> i64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn lists_see_every_acknowledged_write_across_servers() {
    let a = TestServer::start();
    let dir_b = tempfile::tempdir().unwrap();
    let b = second_server(&a, dir_b.path());
    let ca = a.client();
    let cb = common::admin_client((
        b.pki.ca.cert_pem.clone(),
        b.pki.admin.cert_pem.clone(),
        b.pki.admin.key_pem.clone(),
    ));
    let base_a = format!("{}/api/v1/namespaces/default/configmaps", a.url());
    let base_b = format!("{}/api/v1/namespaces/default/configmaps", b.url());
    let get = |c: &reqwest::blocking::Client, url: &str| -> Value {
        let r = c.get(url).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{url}");
        r.json().unwrap()
    };

    let mut last = 0;
    for i in 0..60 {
        let name = format!("cm-{i:03}");
        let body = json!({"metadata": {"name": name, "labels": {"parity": (i % 2).to_string()}}, "data": {"n": i.to_string()}});
        let r = ca.post(&base_a).json(&body).send().unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let created: Value = r.json().unwrap();
        last = rv(&created);
        // The other server's list (from its cache) already has it.
        let list = get(&cb, &base_b);
        assert!(rv(&list) >= last, "list older than an acknowledged write");
        assert!(names(&list).contains(&name), "{name} missing on server B");
        if i % 10 == 9 {
            // An update through B is seen at once through A, with selectors.
            let mut obj = created.clone();
            obj["data"]["n"] = json!("updated");
            let r = cb
                .put(format!("{base_b}/{name}"))
                .json(&obj)
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let one = get(
                &ca,
                &format!("{base_a}?fieldSelector=metadata.name%3D{name}"),
            );
            assert_eq!(one["items"][0]["data"]["n"], "updated");
            // A delete through A is gone from B's list at once.
            let r = ca.delete(format!("{base_a}/{name}")).send().unwrap();
            assert_eq!(r.status().as_u16(), 200);
            last = rv(&r.json::<Value>().unwrap()).max(last);
            assert!(!names(&get(&cb, &base_b)).contains(&name));
        }
    }
    let expected: BTreeSet<String> = (0..60)
        .filter(|i| i % 10 != 9)
        .map(|i| format!("cm-{i:03}"))
        .collect();

    // resourceVersion "0" (any) and "N" (not older than N) come from the cache too.
    let any = get(&cb, &format!("{base_b}?resourceVersion=0"));
    assert_eq!(names(&any).into_iter().collect::<BTreeSet<_>>(), expected);
    let newer = get(&cb, &format!("{base_b}?resourceVersion={last}"));
    assert!(rv(&newer) >= last);
    // A revision that does not exist yet: 504 Timeout after the wait, as upstream.
    let r = cb
        .get(format!("{base_b}?resourceVersion={}", last + 1_000_000))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 504);
    let status: Value = r.json().unwrap();
    assert_eq!(status["reason"], "Timeout");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .starts_with("Too large resource version"));

    // Paging: the first page from the cache, the rest from the store at its revision,
    // consistent even though objects change in between.
    let first = get(&cb, &format!("{base_b}?limit=7"));
    assert_eq!(names(&first).len(), 7);
    assert_eq!(
        first["metadata"]["remainingItemCount"].as_i64(),
        Some(expected.len() as i64 - 7)
    );
    let r = ca
        .post(&base_a)
        .json(&json!({"metadata": {"name": "cm-zzz"}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let mut seen = names(&first);
    let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();
    loop {
        let page = get(&cb, &format!("{base_b}?limit=7&continue={token}"));
        assert_eq!(rv(&page), rv(&first), "pages share the list's revision");
        seen.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(seen.len(), expected.len(), "no item twice");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "items come in key order");

    // Label selectors on the cached labels, with paging.
    let even = get(&cb, &format!("{base_b}?labelSelector=parity%3D0&limit=100"));
    let want: BTreeSet<String> = expected
        .iter()
        .filter(|n| n[3..].parse::<u32>().unwrap() % 2 == 0)
        .cloned()
        .collect();
    assert_eq!(names(&even).into_iter().collect::<BTreeSet<_>>(), want);
    assert!(even["metadata"]["remainingItemCount"].is_null());

    // A watch on B from the revision of a write acknowledged by A sees what follows.
    let start = rv(&get(&ca, &base_a));
    let url = format!("{base_b}?watch=1&resourceVersion={start}&timeoutSeconds=2");
    let watcher = {
        let cb = cb.clone();
        std::thread::spawn(move || cb.get(url).send().unwrap().text().unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = ca
        .post(&base_a)
        .json(&json!({"metadata": {"name": "late"}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let lines = watcher.join().unwrap();
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{lines}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "late");
    drop(b);
}
